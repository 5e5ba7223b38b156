"""Volume nodes <-> numpy arrays indexed [i, j, k] with a 4x4 voxel-to-RAS affine.

Slicer stores voxels as vtkImageData (x fastest), so ``slicer.util.arrayFromVolume`` gives [k, j, i];
the engine works in [i, j, k] (nibabel order). The volume's geometry lives in the node's IJKToRAS matrix
(the vtkImageData origin/spacing are ignored by Slicer), possibly below a parent transform.

Only MRML/VTK classes are used here (no Qt), so everything runs on the ``slicer-core`` wheel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..engine.errors import InputError

BINARY_LABELMAP = "Binary labelmap"


# --------------------------------------------------------------------------------------------------
# matrices
# --------------------------------------------------------------------------------------------------


def vtkMatrixToArray(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def arrayToVtkMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    array = np.asarray(array, dtype=np.float64)
    if array.shape != (4, 4) or not np.all(np.isfinite(array)):
        raise InputError(f"an affine must be a finite 4x4 matrix, got shape {array.shape}")
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _translation(offset) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = offset
    return out


def parentToWorld(node) -> np.ndarray | None:
    """4x4 matrix from the node's local coordinates to world, or None when the transform chain is not
    linear (then only local coordinates are well defined as a matrix)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        return None
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return vtkMatrixToArray(matrix)


def localToLocal(sourceNode, targetNode) -> np.ndarray:
    """Matrix taking ``sourceNode``'s local coordinates to ``targetNode``'s local coordinates.

    Both nodes under the same parent transform (or none) give the identity; otherwise the chain between
    them must be linear, else an InputError says what to do.
    """
    sourceParent = sourceNode.GetParentTransformNode()
    targetParent = targetNode.GetParentTransformNode()
    if sourceParent is targetParent:
        return np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(sourceParent, targetParent, matrix):
        raise InputError(
            f"'{sourceNode.GetName()}' and '{targetNode.GetName()}' are under different, non-linear transforms: "
            "harden the transforms (Data module, right-click > Harden transform) or choose another output."
        )
    return vtkMatrixToArray(matrix)


# --------------------------------------------------------------------------------------------------
# volume nodes
# --------------------------------------------------------------------------------------------------


@dataclass
class VolumeGeometry:
    """Where a volume's voxels sit: ``ijkToLocal`` maps array indices [i, j, k] to the node's own RAS
    (extent start folded in); ``localToWorld`` is the parent transform chain (None when non-linear)."""

    shape: tuple[int, int, int]
    ijkToLocal: np.ndarray
    localToWorld: np.ndarray | None

    @property
    def engineAffine(self) -> np.ndarray:
        """voxel -> RAS affine handed to the engine: world coordinates when they are linear (so that a
        registration transform on the volume is honoured), the node's own RAS otherwise."""
        if self.localToWorld is None:
            return self.ijkToLocal.copy()
        return self.localToWorld @ self.ijkToLocal


def checkScalarVolumeNode(volumeNode, role: str = "input volume") -> None:
    """Raise InputError with a readable message unless ``volumeNode`` is a usable 3D scalar volume."""
    if volumeNode is None:
        raise InputError(f"No {role} selected: choose a scalar volume (e.g. an MRI or CT image).")
    if not hasattr(volumeNode, "IsA") or not volumeNode.IsA("vtkMRMLVolumeNode"):
        kind = volumeNode.GetClassName() if hasattr(volumeNode, "GetClassName") else type(volumeNode).__name__
        raise InputError(f"The {role} must be a scalar volume node, got a {kind}.")
    name = volumeNode.GetName()
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(
            f"'{name}' is a labelmap volume, not an image: choose the scalar (grey-value) volume as {role}."
        )
    if volumeNode.IsA("vtkMRMLTensorVolumeNode"):
        raise InputError(
            f"'{name}' is a vector/tensor (multi-component) volume; the {role} must be a single-channel "
            "3D scalar volume (extract one component first)."
        )
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetPointData() is None or imageData.GetPointData().GetScalars() is None:
        raise InputError(f"'{name}' holds no voxels: load image data into it first.")
    components = imageData.GetNumberOfScalarComponents()
    if components != 1:
        raise InputError(
            f"'{name}' has {components} components per voxel (a 4D or colour image); the {role} must be a "
            "single-channel 3D scalar volume."
        )
    dims = imageData.GetDimensions()
    if min(dims) < 1 or int(np.prod(dims)) == 0:
        raise InputError(f"'{name}' is empty (dimensions {dims}).")


def volumeGeometry(volumeNode) -> VolumeGeometry:
    imageData = volumeNode.GetImageData()
    extent = imageData.GetExtent()
    shape = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    ijkToLocal = vtkMatrixToArray(ijkToRas) @ _translation((extent[0], extent[2], extent[4]))
    return VolumeGeometry(shape=shape, ijkToLocal=ijkToLocal, localToWorld=parentToWorld(volumeNode))


def arrayFromVolumeNode(volumeNode) -> tuple[np.ndarray, VolumeGeometry]:
    """A float32 *copy* of the voxels as [i, j, k] and the volume's geometry. The node is not touched."""
    checkScalarVolumeNode(volumeNode)
    geometry = volumeGeometry(volumeNode)
    scalars = volumeNode.GetImageData().GetPointData().GetScalars()
    kji = numpy_support.vtk_to_numpy(scalars).reshape(geometry.shape[::-1])
    return np.ascontiguousarray(kji.transpose(2, 1, 0), dtype=np.float32), geometry


def _imageDataFromArray(array: np.ndarray, vtkType: int, extentStart=(0, 0, 0)) -> vtk.vtkImageData:
    """vtkImageData holding ``array`` ([i, j, k]) starting at index ``extentStart``; data are copied."""
    array = np.asarray(array)
    ni, nj, nk = array.shape
    i0, j0, k0 = (int(v) for v in extentStart)
    imageData = vtk.vtkImageData()
    imageData.SetExtent(i0, i0 + ni - 1, j0, j0 + nj - 1, k0, k0 + nk - 1)
    imageData.AllocateScalars(vtkType, 1)
    target = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars())
    target[:] = np.ascontiguousarray(array.transpose(2, 1, 0)).ravel()
    return imageData


def createScalarVolumeNode(scene, name: str, array: np.ndarray, affine: np.ndarray):
    """Add a new scalar volume node holding ``array`` [i, j, k] with voxel->RAS ``affine`` to ``scene``."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"volume '{name}': expected a 3D array, got {array.ndim}D")
    vtkType = numpy_support.get_vtk_array_type(array.dtype) if array.dtype != np.float64 else vtk.VTK_DOUBLE
    imageData = _imageDataFromArray(array, vtkType)
    volumeNode = slicer.vtkMRMLScalarVolumeNode()
    volumeNode.SetName(scene.GenerateUniqueName(name) if hasattr(scene, "GenerateUniqueName") else name)
    volumeNode.SetIJKToRASMatrix(arrayToVtkMatrix(affine))
    volumeNode.SetAndObserveImageData(imageData)
    scene.AddNode(volumeNode)
    volumeNode.CreateDefaultDisplayNodes()
    return volumeNode


# --------------------------------------------------------------------------------------------------
# oriented images (segment representations)
# --------------------------------------------------------------------------------------------------


def orientedImageFromMask(mask: np.ndarray, ijkToLocal: np.ndarray, crop: bool = True):
    """A uint8 0/1 vtkOrientedImageData for the boolean ``mask`` [i, j, k] placed by ``ijkToLocal``.

    With ``crop`` the image covers only the mask's bounding box (index extent offset, same grid), which is
    how Slicer stores segments too. An all-zero mask gives an empty image on the same grid.
    """
    mask = np.asarray(mask, dtype=bool)
    oriented = slicer.vtkOrientedImageData()
    if crop:
        nonzero = [
            np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)
        ]
        if any(len(n) == 0 for n in nonzero):
            oriented.SetExtent(0, -1, 0, -1, 0, -1)
            oriented.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            oriented.SetImageToWorldMatrix(arrayToVtkMatrix(ijkToLocal))
            return oriented
        lo = [int(n[0]) for n in nonzero]
        hi = [int(n[-1]) + 1 for n in nonzero]
        sub = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        imageData = _imageDataFromArray(sub.astype(np.uint8), vtk.VTK_UNSIGNED_CHAR, extentStart=lo)
    else:
        imageData = _imageDataFromArray(mask.astype(np.uint8), vtk.VTK_UNSIGNED_CHAR)
    oriented.ShallowCopy(imageData)
    oriented.SetImageToWorldMatrix(arrayToVtkMatrix(ijkToLocal))
    return oriented


def referenceOrientedImage(shape, ijkToLocal: np.ndarray):
    """An all-zero uint8 oriented image defining the grid (shape, ijkToLocal) that masks are resampled onto."""
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(0, int(shape[0]) - 1, 0, int(shape[1]) - 1, 0, int(shape[2]) - 1)
    reference.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    reference.SetImageToWorldMatrix(arrayToVtkMatrix(ijkToLocal))
    return reference


def maskOnGrid(oriented, shape, ijkToLocal: np.ndarray) -> np.ndarray:
    """Boolean [i, j, k] array of ``oriented`` (nonzero voxels) resampled (nearest) onto the grid given by
    ``shape`` and ``ijkToLocal`` (both in the same coordinate frame as ``oriented``)."""
    reference = referenceOrientedImage(shape, ijkToLocal)
    extent = oriented.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return np.zeros(tuple(int(s) for s in shape), dtype=bool)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        oriented, reference, resampled, False
    ):
        raise InputError("cannot resample a segment onto the reference grid")
    out = np.zeros(tuple(int(s) for s in shape), dtype=bool)
    ext = resampled.GetExtent()
    if ext[1] < ext[0] or ext[3] < ext[2] or ext[5] < ext[4] or resampled.GetPointData().GetScalars() is None:
        return out
    dims = (ext[1] - ext[0] + 1, ext[3] - ext[2] + 1, ext[5] - ext[4] + 1)
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(dims[::-1])
    values = values.transpose(2, 1, 0) != 0
    # place the resampled block (its extent may be a sub-box of the reference extent) into the full grid
    lo = [max(ext[2 * a], 0) for a in range(3)]
    hi = [min(ext[2 * a + 1], int(shape[a]) - 1) for a in range(3)]
    if any(high < low for low, high in zip(lo, hi)):
        return out
    src = values[
        lo[0] - ext[0] : hi[0] - ext[0] + 1,
        lo[1] - ext[2] : hi[1] - ext[2] + 1,
        lo[2] - ext[4] : hi[2] - ext[4] + 1,
    ]
    out[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = src
    return out

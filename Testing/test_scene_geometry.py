"""Volume/segment geometry on real MRML (slicer-core): [k,j,i] <-> [i,j,k], IJK-to-RAS, masks on grids."""

import numpy as np
import pytest
import slicer  # slicer-core: a missing wheel fails the run, never skips it
import vtk  # noqa: E402
from scene_fixtures import obliqueAffine  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from LabelSharingSegLib.engine.errors import InputError  # noqa: E402
from LabelSharingSegLib.scene import geometry as geo  # noqa: E402
from LabelSharingSegLib.scene import segments as seg  # noqa: E402


def _volume(scene, array_kji, ijk_to_ras, cls=None):
    """A volume node built with plain VTK/MRML calls (independent of the code under test)."""
    node = (cls or slicer.vtkMRMLScalarVolumeNode)()
    image = vtk.vtkImageData()
    k, j, i = array_kji.shape[:3]
    image.SetDimensions(i, j, k)
    components = array_kji.shape[3] if array_kji.ndim == 4 else 1
    image.AllocateScalars(numpy_support.get_vtk_array_type(array_kji.dtype), components)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array_kji.reshape(
        -1, components
    ).squeeze()
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(geo.arrayToVtkMatrix(ijk_to_ras))
    scene.AddNode(node)
    return node


def test_array_order_and_affine_match_slicer():
    scene = slicer.vtkMRMLScene()
    kji = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(np.float32)
    affine = obliqueAffine()
    node = _volume(scene, kji, affine)
    array, geometry = geo.arrayFromVolumeNode(node)
    assert array.shape == (7, 6, 5)
    np.testing.assert_array_equal(array, slicer.util.arrayFromVolume(node).transpose(2, 1, 0))
    np.testing.assert_allclose(geometry.ijkToLocal, affine)
    np.testing.assert_allclose(geometry.engineAffine, affine)
    # voxel (i, j, k) sits where Slicer's own IJK->RAS puts it
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = matrix.MultiplyPoint((3, 2, 4, 1))
    np.testing.assert_allclose(geometry.engineAffine @ [3, 2, 4, 1], ras, atol=1e-9)
    # the returned array is a copy: writing it leaves the node alone
    array[:] = 0
    assert np.abs(slicer.util.arrayFromVolume(node)).sum() > 0


def test_parent_transform_is_folded_into_engine_affine():
    scene = slicer.vtkMRMLScene()
    node = _volume(scene, np.zeros((3, 4, 5), np.int16), np.diag([2.0, 3.0, 4.0, 1.0]))
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    shift = np.eye(4)
    shift[:3, 3] = (10, -5, 3)
    transform.SetMatrixTransformToParent(geo.arrayToVtkMatrix(shift))
    node.SetAndObserveTransformNodeID(transform.GetID())
    geometry = geo.volumeGeometry(node)
    np.testing.assert_allclose(geometry.ijkToLocal, np.diag([2.0, 3.0, 4.0, 1.0]))
    np.testing.assert_allclose(geometry.engineAffine, shift @ np.diag([2.0, 3.0, 4.0, 1.0]))


def test_created_volume_round_trips():
    scene = slicer.vtkMRMLScene()
    ijk = np.random.default_rng(2).normal(size=(6, 5, 4)).astype(np.float32)
    affine = obliqueAffine(lps=False)
    node = geo.createScalarVolumeNode(scene, "atlas", ijk, affine)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), ijk.transpose(2, 1, 0))
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    np.testing.assert_allclose(geo.vtkMatrixToArray(matrix), affine)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda s: _volume(s, np.zeros((3, 4, 5), np.int16), np.eye(4), slicer.vtkMRMLLabelMapVolumeNode),
            "labelmap",
        ),
        (
            lambda s: _volume(
                s, np.zeros((3, 4, 5, 3), np.float32), np.eye(4), slicer.vtkMRMLVectorVolumeNode
            ),
            "multi-component",
        ),
        (lambda s: _volume(s, np.zeros((3, 4, 5, 2), np.float32), np.eye(4)), "components"),
        (lambda s: s.AddNode(slicer.vtkMRMLScalarVolumeNode()), "no voxels"),
        (lambda s: None, "No input volume"),
        (lambda s: s.AddNode(slicer.vtkMRMLSegmentationNode()), "scalar volume node"),
    ],
)
def test_unusable_volumes_are_rejected_with_a_message(make, message):
    scene = slicer.vtkMRMLScene()
    node = make(scene)
    with pytest.raises(InputError, match=message):
        geo.arrayFromVolumeNode(node)


def test_mask_written_as_segment_reads_back_on_other_grids():
    scene = slicer.vtkMRMLScene()
    slicer.vtkSlicerSegmentationsModuleLogic()
    affine = obliqueAffine()
    mask = np.zeros((9, 8, 7), bool)
    mask[2:6, 3:7, 1:4] = True
    mask[7, 1, 6] = True
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    ids = seg.writeSegments(node, [seg.SegmentSpec("A", (1.0, 0.0, 0.0), mask)], affine)
    # the stored labelmap is cropped to the bounding box but keeps the grid
    stored = slicer.vtkOrientedImageData()
    node.GetBinaryLabelmapRepresentation(ids[0], stored)
    assert stored.GetExtent() == (2, 7, 1, 6, 1, 6)
    np.testing.assert_array_equal(seg.segmentMask(node, ids[0], mask.shape, affine), mask)
    # onto a grid twice as fine along i, shifted by a quarter voxel so that nearest neighbour has no ties:
    # fine voxels 2m and 2m+1 sit at coarse positions m -/+ 0.25, so each coarse voxel becomes two
    shift = np.eye(4)
    shift[0, 3] = -0.25
    fine = affine @ shift @ np.diag([0.5, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(seg.segmentMask(node, ids[0], (18, 8, 7), fine), np.repeat(mask, 2, axis=0))


def test_terminology_dict_is_serialised_for_slicer():
    text = seg.terminologyString(
        {
            "category": ["SCT", "123037004", "Anatomical Structure"],
            "type": ["SCT", "12738006", "Brain"],
            "anatomicRegion": ["SCT", "39607008", "Lung"],
        }
    )
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(text, entry)
    assert entry.GetTypeObject().GetCodeMeaning() == "Brain"
    assert entry.GetCategoryObject().GetCodeValue() == "123037004"
    assert seg.terminologyString({"type": ["SCT", "1", "x"]}) is None
    assert seg.terminologyString(None) is None

"""`.seg.nrrd` files written without Slicer open in Slicer's own reader (slicer-core) with names, colours and
geometry intact."""

from __future__ import annotations

import numpy as np
import pytest

from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.labels import LabelInfo
from lsseg_training.segnrrd import write_seg_nrrd

slicer = pytest.importorskip("slicer")


def test_slicer_reads_names_colours_and_geometry(tmp_path):
    labelmap = np.zeros((12, 10, 8), np.int16)
    labelmap[2:5, 3:7, 1:4] = 1
    labelmap[8, 1, 6] = 3
    affine = np.array([[0.0, -1.5, 0.0, 10.0], [1.2, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0, 0, 0, 1.0]])
    labels = [LabelInfo(1, "liver | left", (1.0, 0.5, 0.0)), LabelInfo(3, "spot", (0.0, 0.0, 1.0))]
    path = write_seg_nrrd(tmp_path / "out.seg.nrrd", labelmap, affine, labels)

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("liver / left"))
    assert segment is not None
    assert segment.GetColor() == pytest.approx((1.0, 0.5, 0.0))
    # the voxel (8, 1, 6) of label 3 sits at the same world position in Slicer's segment
    spot = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("spot"))
    image = spot.GetRepresentation("Binary labelmap")
    import vtk

    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    extent = image.GetExtent()
    from vtk.util.numpy_support import vtk_to_numpy

    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).transpose(2, 1, 0)
    ijk = np.argwhere(voxels == image.GetLabelValue() if hasattr(image, "GetLabelValue") else voxels > 0)
    found = [ijk_to_ras @ np.array([i + extent[0], j + extent[2], k + extent[4], 1.0]) for i, j, k in ijk
             if voxels[i, j, k] == 3 or voxels[i, j, k] == 1 and False]
    expected = affine @ np.array([8, 1, 6, 1.0])
    assert any(np.allclose(p, expected, atol=1e-4) for p in found)


def test_bad_paths_and_shapes(tmp_path):
    with pytest.raises(InputError, match=".seg.nrrd"):
        write_seg_nrrd(tmp_path / "x.nrrd", np.zeros((2, 2, 2)), np.eye(4), [])
    with pytest.raises(InputError, match="3D"):
        write_seg_nrrd(tmp_path / "x.seg.nrrd", np.zeros((2, 2)), np.eye(4), [])

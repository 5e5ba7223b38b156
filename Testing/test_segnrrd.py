"""`.seg.nrrd` files written without Slicer open in Slicer's own reader (slicer-core) with names, colours and
geometry intact."""

from __future__ import annotations

import numpy as np
import pytest
import slicer  # slicer-core: a missing wheel fails the run, never skips it

from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.labels import LabelInfo
from lsseg_training.segnrrd import write_seg_nrrd


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
    # every voxel keeps its world position: look the written voxels up in Slicer's segment images
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    for name, voxel in (("spot", (8, 1, 6)), ("liver / left", (3, 4, 2))):
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
        image = segment.GetRepresentation("Binary labelmap")
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        extent = image.GetExtent()
        dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
        values = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).transpose(2, 1, 0)
        world = affine @ np.array([*voxel, 1.0])
        ijk = np.linalg.solve(ijk_to_ras, world)[:3].round().astype(int) - np.array(extent[::2])
        assert values[tuple(ijk)] == segment.GetLabelValue(), name
        assert (values == segment.GetLabelValue()).sum() == (labelmap == (3 if name == "spot" else 1)).sum()


def test_bad_paths_and_shapes(tmp_path):
    with pytest.raises(InputError, match=".seg.nrrd"):
        write_seg_nrrd(tmp_path / "x.nrrd", np.zeros((2, 2, 2)), np.eye(4), [])
    with pytest.raises(InputError, match="3D"):
        write_seg_nrrd(tmp_path / "x.seg.nrrd", np.zeros((2, 2)), np.eye(4), [])

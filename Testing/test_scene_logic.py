"""SegmentationSceneLogic on a real vtkMRMLScene (slicer-core) with real engine bundles (random weights)."""

import threading

import numpy as np
import pytest
import scene_fixtures as demo  # noqa: E402
import slicer  # slicer-core: a missing wheel fails the run, never skips it
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from LabelSharingSegLib.engine import inference  # noqa: E402
from LabelSharingSegLib.engine.bundle import load_bundle  # noqa: E402
from LabelSharingSegLib.engine.errors import CancelledError, InputError, LabelSharingSegError  # noqa: E402
from LabelSharingSegLib.scene import geometry as geo  # noqa: E402
from LabelSharingSegLib.scene import segments as seg  # noqa: E402
from LabelSharingSegLib.scene.logic import SegmentationSceneLogic  # noqa: E402

TARGET_SHAPE = (22, 19, 15)  # [i, j, k]


# ---------------------------------------------------------------------------------------------- helpers


def _target(scene, name="target", affine=None, shape=TARGET_SHAPE, seed=3):
    rng = np.random.default_rng(seed)
    image = rng.normal(50, 20, size=shape).astype(np.float32)
    return geo.createScalarVolumeNode(scene, name, image, demo.obliqueAffine() if affine is None else affine)


def _segment_names(node):
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def _voxels(node):
    return slicer.util.arrayFromVolume(node).copy()


def _ijk_to_ras(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return geo.vtkMatrixToArray(matrix)


_snapshot = demo.sceneSnapshot


def _world_voxels(segmentation_node, segment_id):
    """World (RAS) positions of a segment's voxels, computed from its stored labelmap and transforms."""
    image = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image)
    extent = image.GetExtent()
    if extent[1] < extent[0]:
        return np.zeros((0, 3))
    dims = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    values = (
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).transpose(2, 1, 0)
    )
    ijk = np.argwhere(values != 0) + np.array([extent[0], extent[2], extent[4]])
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    local = geo.vtkMatrixToArray(matrix) @ np.c_[ijk, np.ones(len(ijk))].T
    return (geo.parentToWorld(segmentation_node) @ local)[:3].T


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(1)


@pytest.fixture(scope="module")
def demo_bundle_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene_bundles")
    return {
        "ls": demo.writeTinyLabelSharingBundle(folder / "ls"),
        "other_lcs": demo.writeTinyAtlasBundle(folder / "other_lcs", seed=5),
    }


def _logic(scene, path):
    logic = SegmentationSceneLogic(scene, device="cpu")
    logic.loadBundle(path)
    return logic


# ---------------------------------------------------------------------------------------------- task flow


def test_segment_task_on_oblique_volume_sits_on_the_anatomy(scene, ls_bundle_path):
    logic = _logic(scene, ls_bundle_path)
    task = logic.taskNames()[1]
    volume = _target(scene)
    voxels_before, matrix_before = _voxels(volume), _ijk_to_ras(volume)
    progress = []
    output = logic.segmentTask(volume, task, progress=lambda f, m: progress.append((f, m)))

    assert output.GetName() == f"target {task}"
    assert _segment_names(output) == [label.name for label in logic.taskLabels(task)]
    colors = [
        tuple(round(c, 4) for c in output.GetSegmentation().GetNthSegment(i).GetColor())
        for i in range(len(_segment_names(output)))
    ]
    assert colors == [tuple(round(c, 4) for c in label.color) for label in logic.taskLabels(task)]
    assert progress[-1][0] == 1.0 and all(0.0 <= f <= 1.0 for f, _ in progress)
    assert [f for f, _ in progress] == sorted(f for f, _ in progress)
    # the input node is untouched
    np.testing.assert_array_equal(_voxels(volume), voxels_before)
    np.testing.assert_array_equal(_ijk_to_ras(volume), matrix_before)

    # independent check: every segment voxel lands, in world coordinates, on a voxel centre of the input
    # where the engine (run directly on the same arrays) predicted that label
    image, geometry = geo.arrayFromVolumeNode(volume)
    expected = inference.segment_task(
        load_bundle(ls_bundle_path), image, geometry.engineAffine, task, device="cpu"
    )
    ras_to_ijk = np.linalg.inv(matrix_before)
    seen = 0
    for index, label in enumerate(logic.taskLabels(task)):
        segment_id = output.GetSegmentation().GetNthSegmentID(index)
        world = _world_voxels(output, segment_id)
        ijk = (ras_to_ijk @ np.c_[world, np.ones(len(world))].T)[:3].T
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-6)
        ijk = np.round(ijk).astype(int)
        assert len(ijk) == int((expected.labelmap == label.value).sum())
        assert np.all(expected.labelmap[tuple(ijk.T)] == label.value)
        seen += len(ijk)
    assert seen > 0, "random weights produced no foreground at all; the geometry check would be vacuous"


def test_volume_under_a_transform_gives_output_under_the_same_transform(scene, ls_bundle_path):
    logic = _logic(scene, ls_bundle_path)
    volume = _target(scene, affine=np.diag([1.5, 1.2, 2.5, 1.0]))
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    moved = demo.obliqueAffine(spacing=(1, 1, 1), origin=(5, 6, -7), lps=False)
    transform.SetMatrixTransformToParent(geo.arrayToVtkMatrix(moved))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    output = logic.segmentTask(volume, logic.taskNames()[0])
    assert output.GetParentTransformNode() is transform
    world_to_ijk = np.linalg.inv(moved @ _ijk_to_ras(volume))
    for segment_id in seg.segmentIds(output):
        world = _world_voxels(output, segment_id)
        ijk = (world_to_ijk @ np.c_[world, np.ones(len(world))].T)[:3].T
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-6)


def test_terminology_reaches_the_segments(scene, demo_bundle_paths):
    logic = _logic(scene, demo_bundle_paths["ls"])
    output = logic.segmentTask(_target(scene), "Brain")
    segmentation = output.GetSegmentation()
    white = segmentation.GetSegment(seg.segmentIdsByName(output, "White matter")[0])
    assert "68523003" in seg.segmentTerminology(white)
    # a label without codes keeps Slicer's default terminology, not another label's
    csf = seg.segmentTerminology(segmentation.GetSegment(seg.segmentIdsByName(output, "CSF")[0]))
    assert csf is None or "68523003" not in csf


def test_existing_output_keeps_unrelated_segments_and_replaces_matched_ones(scene, ls_bundle_path):
    logic = _logic(scene, ls_bundle_path)
    task = logic.taskNames()[0]
    labels = logic.taskLabels(task)
    volume = _target(scene)
    output = seg.createSegmentationNode(scene, "my work", volume)
    keep = np.zeros(TARGET_SHAPE, bool)
    keep[3:9, 4:8, 2:6] = True
    stale = np.ones(TARGET_SHAPE, bool)
    ijk_to_ras = _ijk_to_ras(volume)
    ids = seg.writeSegments(
        output,
        [
            seg.SegmentSpec("my tumour", (0.1, 0.9, 0.1), keep),
            seg.SegmentSpec(labels[0].name, (0.5, 0.5, 0.5), stale),
        ],
        ijk_to_ras,
    )
    result = logic.segmentTask(volume, task, outputSegmentationNode=output)
    assert result is output
    names = _segment_names(output)
    assert names[:2] == ["my tumour", labels[0].name]  # replaced in place, same position
    assert sorted(names) == sorted(["my tumour"] + [label.name for label in labels])
    assert output.GetSegmentation().GetNthSegmentID(1) == ids[1]
    np.testing.assert_array_equal(seg.segmentMask(output, ids[0], TARGET_SHAPE, ijk_to_ras), keep)
    replaced = seg.segmentMask(output, ids[1], TARGET_SHAPE, ijk_to_ras)
    assert not replaced.all()  # the all-ones stale segment is gone
    assert tuple(round(c, 4) for c in output.GetSegmentation().GetSegment(ids[1]).GetColor()) == tuple(
        round(c, 4) for c in labels[0].color
    )
    # running again does not duplicate segments
    logic.segmentTask(volume, task, outputSegmentationNode=output)
    assert sorted(_segment_names(output)) == sorted(names)


def test_cancel_mid_run_leaves_the_scene_unchanged(scene, ls_bundle_path):
    logic = _logic(scene, ls_bundle_path)
    volume = _target(scene)
    existing = seg.createSegmentationNode(scene, "existing", volume)
    seg.writeSegments(
        existing,
        [
            seg.SegmentSpec(
                logic.taskLabels(logic.taskNames()[0])[0].name, (1, 0, 0), np.ones(TARGET_SHAPE, bool)
            )
        ],
        _ijk_to_ras(volume),
    )
    before = _snapshot(scene)
    stop = threading.Event()
    polls = []

    def cancel():
        polls.append(1)
        return len(polls) > 2  # a few chunks in

    with pytest.raises(CancelledError):
        logic.segmentTask(volume, logic.taskNames()[0], progress=lambda f, m: None, cancel=cancel)
    with pytest.raises(CancelledError):
        logic.segmentTask(
            volume,
            logic.taskNames()[0],
            outputSegmentationNode=existing,
            progress=lambda f, m: stop.set() if f > 0.05 else None,
            cancel=stop,
        )
    assert _snapshot(scene) == before


def test_a_real_ct_volume_is_refused_by_the_shipped_mr_bundle_and_nothing_is_added(scene):
    """A clinician loads a head CT and picks the shipped (T1 MR) bundle: one message with the evidence, the
    scene as it was, the volume untouched."""
    from lsseg_training.data import sources
    from lsseg_training.demo import LS_BUNDLE, shipped_bundles_dir

    image, affine = sources.load_ct_head()
    volume = geo.createScalarVolumeNode(scene, "Cranium CT", image, affine)
    logic = _logic(scene, shipped_bundles_dir() / LS_BUNDLE)
    voxels, before = _voxels(volume), _snapshot(scene)
    with pytest.raises(InputError, match="'Cranium CT': looks like a CT, not an MR scan: 58% of its voxels"):
        logic.prepareSegmentTask(volume, "AxialTissue")  # at once, before the module starts a worker
    with pytest.raises(InputError, match="looks like a CT, not an MR scan"):
        logic.segmentTask(volume, "AxialTissue")
    assert _snapshot(scene) == before
    np.testing.assert_array_equal(_voxels(volume), voxels)


def test_a_real_series_with_no_pose_on_the_reference_is_refused_and_nothing_is_added(scene):
    """A real proton-density series (scripts/system_data.sh) with the shipped T1 bundle: its alignment is refused
    and its scanner coordinates match the template no better, so the run stops with the engine's message
    (Testing/test_realscan.py) and the scene is as it was, where labels were once added."""
    from LabelSharingSegLib.engine.scan_io import load_scan
    from lsseg_training.data import sources
    from lsseg_training.demo import LS_BUNDLE, shipped_bundles_dir

    series = load_scan(sources.dicom_series_path())
    volume = geo.createScalarVolumeNode(scene, "FSE PD AXIAL OBL", series.image, series.affine)
    logic = _logic(scene, shipped_bundles_dir() / LS_BUNDLE)
    voxels, before = _voxels(volume), _snapshot(scene)
    with pytest.raises(LabelSharingSegError, match="do not place it there either, so nothing was segmented"):
        logic.segmentTask(volume, "SagittalLobes")
    assert _snapshot(scene) == before
    np.testing.assert_array_equal(_voxels(volume), voxels)


def test_failed_run_leaves_the_scene_unchanged(scene, ls_bundle_path):
    logic = _logic(scene, ls_bundle_path)
    volume = _target(scene)
    before = _snapshot(scene)

    def broken_cancel():
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        logic.segmentTask(volume, logic.taskNames()[0], cancel=broken_cancel)
    assert _snapshot(scene) == before


# ---------------------------------------------------------------------------------------------- atlas flow


def test_atlas_flow_with_a_newly_drawn_segment(scene, lcs_bundle_path):
    logic = _logic(scene, lcs_bundle_path)
    # the flow, with the paper's network: the engine's default (deformable registration) refuses a noise target
    logic.atlasMethodOptions = {"method": "lcs"}
    slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)
    atlas_volume, atlas_segmentation = logic.loadAtlas()
    atlas_image, atlas_affine = logic.bundle.atlas_image()
    labelmap, _, atlas_labels = logic.bundle.atlas_labels()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(atlas_volume), atlas_image.transpose(2, 1, 0))
    np.testing.assert_allclose(_ijk_to_ras(atlas_volume), atlas_affine)
    assert _segment_names(atlas_segmentation) == [label.name for label in atlas_labels]
    assert logic.loadAtlas() == (atlas_volume, atlas_segmentation)  # reused, not duplicated

    drawn = np.zeros(atlas_image.shape, bool)
    drawn[6:14, 8:16, 6:12] = True
    new_id = demo.draw_segment(atlas_segmentation, "hand drawn", drawn, atlas_affine, color=(0.2, 0.7, 0.9))
    # what the logic reads back is exactly the drawing, on the atlas grid
    masks, chosen, names, colors, _ = logic.atlasSegmentMasks(atlas_segmentation, [new_id])
    np.testing.assert_array_equal(masks[0], drawn)
    first_id = seg.segmentIds(atlas_segmentation)[0]
    masks, *_ = logic.atlasSegmentMasks(atlas_segmentation, [first_id])
    np.testing.assert_array_equal(masks[0], labelmap == atlas_labels[0].value)

    atlas_before = [s for s in _snapshot(scene) if s[0] in (atlas_volume.GetID(), atlas_segmentation.GetID())]
    target = _target(scene, affine=demo.obliqueAffine(spacing=(2.2, 1.8, 2.4), origin=(-20, -25, -18)))
    output = logic.segmentAtlasLabels(target, atlas_segmentation, [first_id, new_id])
    assert _segment_names(output) == [atlas_labels[0].name, "hand drawn"]
    color = output.GetSegmentation().GetSegment(seg.segmentIdsByName(output, "hand drawn")[0]).GetColor()
    np.testing.assert_allclose(color, (0.2, 0.7, 0.9), atol=1e-6)
    assert output.GetName() == "target atlas labels"
    atlas_after = [s for s in _snapshot(scene) if s[0] in (atlas_volume.GetID(), atlas_segmentation.GetID())]
    assert atlas_after == atlas_before


def test_atlas_segments_by_name_and_all_by_default(scene, lcs_bundle_path):
    logic = _logic(scene, lcs_bundle_path)
    _, atlas_segmentation = logic.loadAtlas()
    names = _segment_names(atlas_segmentation)
    masks, chosen, *_ = logic.atlasSegmentMasks(atlas_segmentation, [names[-1]])
    assert chosen == [seg.segmentIdsByName(atlas_segmentation, names[-1])[0]]
    masks, chosen, *_ = logic.atlasSegmentMasks(atlas_segmentation)
    assert len(chosen) == len(names) and masks.shape[0] == len(names)


# ---------------------------------------------------------------------------------------------- bad input


def test_no_bundle_loaded(scene):
    logic = SegmentationSceneLogic(scene)
    volume = _target(scene)
    before = _snapshot(scene)
    with pytest.raises(InputError, match="No model bundle loaded"):
        logic.segmentTask(volume, "anything")
    with pytest.raises(InputError, match="No model bundle loaded"):
        logic.loadAtlas()
    assert _snapshot(scene) == before


def test_bundle_kind_mismatch(scene, ls_bundle_path, lcs_bundle_path):
    volume = _target(scene)
    lcs_logic = _logic(scene, lcs_bundle_path)
    _, atlas_segmentation = lcs_logic.loadAtlas()
    before = _snapshot(scene)
    with pytest.raises(InputError, match="atlas-conditioned"):
        lcs_logic.segmentTask(volume, "brain")
    ls_logic = _logic(scene, ls_bundle_path)
    with pytest.raises(InputError, match="without an atlas"):
        ls_logic.segmentAtlasLabels(volume, atlas_segmentation)
    with pytest.raises(InputError, match="without an atlas"):
        ls_logic.loadAtlas()
    with pytest.raises(InputError, match="unknown task"):
        ls_logic.segmentTask(volume, "no such task")
    assert _snapshot(scene) == before


def test_failed_bundle_load_keeps_the_previous_bundle(scene, ls_bundle_path, tmp_path):
    from LabelSharingSegLib.engine.errors import BundleError

    logic = _logic(scene, ls_bundle_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError):
        logic.loadBundle(tmp_path)
    assert logic.bundle is not None and logic.taskNames()


def test_2d_and_4d_and_labelmap_inputs(scene, ls_bundle_path):
    logic = _logic(scene, ls_bundle_path)
    flat = geo.createScalarVolumeNode(scene, "one slice", np.ones((20, 18, 1), np.float32), np.eye(4))
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    labelmap.SetAndObserveImageData(geo._imageDataFromArray(np.ones((8, 8, 8), np.int16), vtk.VTK_SHORT))
    scene.AddNode(labelmap)
    vector = slicer.vtkMRMLVectorVolumeNode()
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 8)
    image.AllocateScalars(vtk.VTK_FLOAT, 3)
    vector.SetAndObserveImageData(image)
    scene.AddNode(vector)
    before = _snapshot(scene)
    task = logic.taskNames()[0]
    with pytest.raises(InputError, match="2D image"):
        logic.segmentTask(flat, task)
    with pytest.raises(InputError, match="labelmap volume"):
        logic.segmentTask(labelmap, task)
    with pytest.raises(InputError, match="multi-component"):
        logic.segmentTask(vector, task)
    with pytest.raises(InputError, match="No input volume"):
        logic.segmentTask(None, task)
    assert _snapshot(scene) == before


def test_empty_drawn_segment_and_foreign_atlas(scene, lcs_bundle_path, demo_bundle_paths):
    other = _logic(scene, demo_bundle_paths["other_lcs"])
    _, foreign_segmentation = other.loadAtlas()
    logic = _logic(scene, lcs_bundle_path)
    slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)
    _, atlas_segmentation = logic.loadAtlas()
    empty_id = atlas_segmentation.GetSegmentation().AddEmptySegment("", "not drawn yet", (1, 1, 0))
    target = _target(scene)
    plain = seg.createSegmentationNode(scene, "plain")
    before = _snapshot(scene)
    with pytest.raises(InputError, match="'not drawn yet' is empty"):
        logic.segmentAtlasLabels(target, atlas_segmentation, [empty_id])
    with pytest.raises(InputError, match="another bundle"):
        logic.segmentAtlasLabels(target, foreign_segmentation)
    with pytest.raises(InputError, match="not an atlas segmentation"):
        logic.segmentAtlasLabels(target, plain)
    with pytest.raises(InputError, match="no segment 'nonexistent'"):
        logic.segmentAtlasLabels(target, atlas_segmentation, ["nonexistent"])
    with pytest.raises(InputError, match="never overwritten"):
        logic.segmentAtlasLabels(
            target,
            atlas_segmentation,
            seg.segmentIds(atlas_segmentation)[:1],
            outputSegmentationNode=atlas_segmentation,
        )
    assert _snapshot(scene) == before


def test_device_choice_is_validated(scene):
    logic = SegmentationSceneLogic(scene)
    for name in ("auto", "cpu", "cuda", "mps"):
        logic.device = name
        assert logic.device == name
    with pytest.raises(InputError, match="unknown device"):
        logic.device = "tpu"
    logic.device = "cuda"
    import torch

    if not torch.cuda.is_available():
        assert "CPU" in logic.deviceNote()

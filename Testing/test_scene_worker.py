"""The module's background path on slicer-core: prepare on the scene, compute in a real worker process,
apply on the calling thread. Equal to the synchronous console path; killing the worker changes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import scene_fixtures as fixtures
import slicer  # slicer-core: a missing wheel fails the run, never skips it

from LabelSharingSegLib.engine.errors import CancelledError
from LabelSharingSegLib.scene import geometry as geo
from LabelSharingSegLib.scene import segments as seg
from LabelSharingSegLib.scene.logic import SegmentationSceneLogic

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TASK_BUNDLE = ROOT / "LabelSharingSeg" / "Resources" / "Bundles" / "labelsharing-multitask"
TIMEOUT_S = 300


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(1)


def _volume(scene, shape=(40, 36, 3)):
    image = np.random.default_rng(7).normal(100, 30, size=shape).astype(np.float32)
    image[10:30, 8:28] += 150
    return geo.createScalarVolumeNode(scene, "scan", image, fixtures.obliqueAffine(spacing=(1.5, 1.5, 3.0)))


def _masks(node, shape, ijkToLocal):
    return {
        node.GetSegmentation().GetSegment(s).GetName(): seg.segmentMask(node, s, shape, ijkToLocal)
        for s in seg.segmentIds(node)
    }


def _same_segments(a, b, run):
    shape, ijk = tuple(run.volumeGeometry.shape), run.volumeGeometry.ijkToLocal
    ma, mb = _masks(a, shape, ijk), _masks(b, shape, ijk)
    assert list(ma) == list(mb)
    for name in ma:
        np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)


def test_task_in_a_worker_process_equals_the_console_path(scene):
    logic = SegmentationSceneLogic(scene, device="cpu")
    logic.loadBundle(SHIPPED_TASK_BUNDLE / "bundle.json")  # picked in the Browse dialog: taken as its folder
    volume = _volume(scene)
    task = logic.taskNames()[0]
    run = logic.prepareSegmentTask(volume, task)
    before = fixtures.sceneSnapshot(scene)
    worker = logic.startWorker(run)
    fractions = []
    while not worker.wait(0.05):
        fractions.append(worker.poll().fraction)
    assert fixtures.sceneSnapshot(scene) == before, "the worker never touches the scene"
    output = logic.applyRun(run, worker.result())
    assert fractions == sorted(fractions)
    expected = logic.segmentTask(volume, task)
    _same_segments(output, expected, run)
    assert [output.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)][:1] == [
        logic.taskLabels(task)[0].name
    ]


def test_atlas_labels_in_a_worker_process_equal_the_console_path(scene, lcs_bundle_path):
    logic = SegmentationSceneLogic(scene, device="cpu")
    logic.loadBundle(lcs_bundle_path)
    # without registration: the comparison is about the worker, and random weights magnify any tiny
    # difference of an affine (SimpleITK's multi-threaded metric) into many flipped voxels
    logic.align = False
    # the paper's network (the engine's default carries labels by registration, which a noise target refuses)
    logic.atlasMethodOptions = {"method": "lcs"}
    atlasVolume, atlasSegmentation = logic.loadAtlas()
    shape, affine = logic.atlasGeometry()
    mask = np.zeros(shape, bool)
    mask[5:12, 8:16, 6:14] = True
    drawn = atlasSegmentation.GetSegmentation().AddEmptySegment("", "Drawn today", (0.2, 0.7, 0.9))
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        geo.orientedImageFromMask(mask, affine),
        atlasSegmentation,
        drawn,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
    )
    target = fixtures.obliqueAffine(spacing=(2.2, 1.8, 2.4), origin=(-20, -25, -18))
    image = np.random.default_rng(4).normal(40, 10, size=(22, 19, 15)).astype(np.float32)
    volume = geo.createScalarVolumeNode(scene, "target", image, target)
    run = logic.prepareSegmentAtlasLabels(volume, atlasSegmentation, [drawn, "left blob"])
    assert run.methodOptions == {"align": False, "method": "lcs"}
    worker = logic.startWorker(run)
    output = logic.applyRun(run, worker.result(TIMEOUT_S))
    expected = logic.segmentAtlasLabels(volume, atlasSegmentation, [drawn, "left blob"])
    _same_segments(output, expected, run)
    segment = output.GetSegmentation().GetNthSegment(0)
    assert segment.GetName() == "Drawn today" and np.allclose(segment.GetColor(), (0.2, 0.7, 0.9))


def test_killing_the_worker_leaves_the_scene_untouched_and_no_files(scene):
    logic = SegmentationSceneLogic(scene, device="cpu")
    logic.loadBundle(SHIPPED_TASK_BUNDLE)
    volume = _volume(scene)
    existing = seg.createSegmentationNode(scene, "my work", volume)
    run = logic.prepareSegmentTask(volume, logic.taskNames()[1], existing)
    before = fixtures.sceneSnapshot(scene)
    worker = logic.startWorker(run)
    deadline = time.monotonic() + TIMEOUT_S
    while worker.poll().message == "Starting the worker" and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.cancel()
    output = Path(worker.job.request.output)
    with pytest.raises(CancelledError):
        worker.result()
    assert not output.exists() and not worker.job.workDir.exists()
    assert fixtures.sceneSnapshot(scene) == before


@pytest.mark.parametrize(
    "accepted, confident, note",
    [(True, True, None), (False, True, "alignment refused"), (True, False, "alignment uncertain")],
)
def test_the_status_line_says_when_the_alignment_needs_checking(accepted, confident, note):
    """The module's status after a run: where the output went, and a refused or uncertain automatic alignment
    (otherwise only in the log, which a clinician does not watch)."""
    from LabelSharingSegLib.worker.client import ReportedAlignment, WorkerResult

    alignment = ReportedAlignment("summary", accepted, confident)
    result = WorkerResult(np.zeros((2, 2, 2)), np.eye(4), [], 1.0, None, alignment)
    message = SegmentationSceneLogic.finishedMessage("out", 2.04, result)
    assert message.startswith("Done in 2.0 s: 'out'.")
    assert (note is None) == (message == "Done in 2.0 s: 'out'.")
    assert note is None or (f"Automatic {note}" in message and "check the result" in message)
    no_alignment = WorkerResult(np.zeros((2, 2, 2)), np.eye(4), [], 1.0, None, None)
    assert SegmentationSceneLogic.finishedMessage("out", 2.04, no_alignment) == "Done in 2.0 s: 'out'."

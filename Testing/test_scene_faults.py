"""Scene writes are all or nothing: a fault anywhere inside writing segments (a new output node, loadAtlas,
replacing segments of an existing output) leaves the scene exactly as it was. Faults are injected into the
real write path on slicer-core."""

from __future__ import annotations

import numpy as np
import pytest
import scene_fixtures as fixtures
import slicer  # slicer-core: a missing wheel fails the run, never skips it

from LabelSharingSegLib.scene import geometry as geo
from LabelSharingSegLib.scene import segments as seg
from LabelSharingSegLib.scene.logic import SegmentationSceneLogic


class InjectedFault(RuntimeError):
    pass


def _fail_on_call(function, call: int, after: bool = False):
    """``function`` that raises on its ``call``-th call (1-based), before or after doing its work."""
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call and not after:
            raise InjectedFault(f"fault before call {call} of {function.__name__}")
        result = function(*args, **kwargs)
        if count["n"] == call and after:
            raise InjectedFault(f"fault after call {call} of {function.__name__}")
        return result

    return wrapper


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(1)


def _volume(scene, shape=(22, 19, 15)):
    image = np.random.default_rng(3).normal(50, 20, size=shape).astype(np.float32)
    return geo.createScalarVolumeNode(scene, "target", image, fixtures.obliqueAffine())


@pytest.fixture(scope="module")
def task_result(ls_bundle_path):
    """One computed task run (reused: the faults are in the write, not the compute)."""
    scene = slicer.vtkMRMLScene()
    logic = SegmentationSceneLogic(scene, device="cpu")
    logic.loadBundle(ls_bundle_path)
    volume = _volume(scene)
    run = logic.prepareSegmentTask(volume, "brain")
    return run.compute(), logic.bundle


def _prepared(scene, task_result, output=None):
    result, bundle = task_result
    logic = SegmentationSceneLogic(scene, device="cpu")
    logic.bundle = bundle
    volume = _volume(scene)
    return logic, logic.prepareSegmentTask(volume, "brain", output), result


FAULTS = {
    "node created, then fault": ("createSegmentationNode", 1, True),
    "fault before the first segment": ("segmentIdsByName", 1, False),
    "fault after one segment was replaced": ("segmentIdsByName", 2, False),
    "fault after all segments were written": ("writeSegments", 1, True),
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_new_output_node_fault_leaves_no_node(scene, task_result, monkeypatch, fault):
    name, call, after = FAULTS[fault]
    logic, run, result = _prepared(scene, task_result)
    before = fixtures.sceneSnapshot(scene)
    monkeypatch.setattr(seg, name, _fail_on_call(getattr(seg, name), call, after))
    with pytest.raises(InjectedFault):
        logic.applyRun(run, result)
    assert fixtures.sceneSnapshot(scene) == before


@pytest.mark.parametrize("fault", [f for f in FAULTS if f != "node created, then fault"])
def test_existing_output_fault_restores_every_segment(scene, task_result, monkeypatch, fault):
    name, call, after = FAULTS[fault]
    output = seg.createSegmentationNode(scene, "my work")
    logic, run, result = _prepared(scene, task_result, output)
    labels = [label.name for label in run.bundle.task_labels("brain")]
    shape = tuple(run.volumeGeometry.shape)
    mine = np.zeros(shape, bool)
    mine[2:7, 3:9, 1:5] = True
    seg.writeSegments(
        output,
        [
            seg.SegmentSpec(labels[0], (0.5, 0.5, 0.5), np.ones(shape, bool)),  # will be replaced
            seg.SegmentSpec(
                "my own",
                (0.1, 0.9, 0.1),
                mine,
                seg.terminologyString(fixtures.DEMO_TERMINOLOGY["White matter"]),
            ),
            seg.SegmentSpec(labels[1], (0.2, 0.2, 0.2), mine),  # will be replaced
        ],
        run.volumeGeometry.ijkToLocal,
    )
    before = fixtures.sceneSnapshot(scene)
    monkeypatch.setattr(seg, name, _fail_on_call(getattr(seg, name), call, after))
    with pytest.raises(InjectedFault):
        logic.applyRun(run, result)
    assert fixtures.sceneSnapshot(scene) == before
    # and the restored node still works: a clean run replaces exactly the matched segments
    monkeypatch.undo()
    logic.applyRun(run, result)
    names = [
        output.GetSegmentation().GetNthSegment(i).GetName()
        for i in range(output.GetSegmentation().GetNumberOfSegments())
    ]
    assert names[:3] == [labels[0], "my own", labels[1]] and sorted(names) == sorted(labels + ["my own"])


ATLAS_FAULTS = {
    "atlas volume created, then fault": (geo, "createScalarVolumeNode", 1, True),
    "atlas segmentation created, then fault": (seg, "createSegmentationNode", 1, True),
    "fault after the first atlas segment": (seg, "segmentIdsByName", 2, False),
    "fault after the atlas segments were written": (seg, "writeSegments", 1, True),
}


@pytest.mark.parametrize("fault", ATLAS_FAULTS, ids=list(ATLAS_FAULTS))
def test_load_atlas_fault_leaves_the_scene_as_it_was(scene, lcs_bundle_path, monkeypatch, fault):
    module, name, call, after = ATLAS_FAULTS[fault]
    logic = SegmentationSceneLogic(scene, device="cpu")
    logic.loadBundle(lcs_bundle_path)
    _volume(scene)
    before = fixtures.sceneSnapshot(scene)
    monkeypatch.setattr(module, name, _fail_on_call(getattr(module, name), call, after))
    with pytest.raises(InjectedFault):
        logic.loadAtlas()
    assert fixtures.sceneSnapshot(scene) == before
    monkeypatch.undo()
    volume, segmentation = logic.loadAtlas()  # a clean retry works and finds no leftovers
    assert logic.findAtlasNodes() == (volume, segmentation)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 3

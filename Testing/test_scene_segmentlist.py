"""The atlas segment checklist follows real segmentation events on slicer-core: add, rename, recolour and
remove are reflected; new segments start ticked; ticks survive refreshes."""

from __future__ import annotations

import pytest
import slicer  # slicer-core: a missing wheel fails the run, never skips it

from LabelSharingSegLib.scene import segments as seg
from LabelSharingSegLib.scene.segmentlist import SegmentChecklist


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    logic = (
        slicer.vtkSlicerSegmentationsModuleLogic()
    )  # registers the representation converters, as in the app
    logic.SetMRMLScene(scene)
    yield scene
    scene.Clear(1)


def _names(checklist):
    return [(entry.name, entry.checked) for entry in checklist.entries]


def test_list_follows_add_rename_recolour_remove(scene):
    node = seg.createSegmentationNode(scene, "atlas labels")
    segmentation = node.GetSegmentation()
    first = segmentation.AddEmptySegment("", "Hippocampus", (1.0, 0.0, 0.0))
    changes = []
    checklist = SegmentChecklist(onChanged=lambda: changes.append(1))
    checklist.setSegmentationNode(node)
    assert _names(checklist) == [("Hippocampus", True)]

    checklist.setChecked(first, False)
    assert checklist.checkedIds() == []
    calls = len(changes)
    drawn = segmentation.AddEmptySegment("", "Drawn today", (0.2, 0.7, 0.9))  # Segment Editor's Add
    assert len(changes) > calls, "SegmentAdded was not observed"
    assert _names(checklist) == [("Hippocampus", False), ("Drawn today", True)]  # new: ticked; old tick kept
    assert checklist.checkedIds() == [drawn]

    segmentation.GetSegment(drawn).SetName("Amygdala")
    assert _names(checklist)[1] == ("Amygdala", True)
    segmentation.GetSegment(drawn).SetColor(0.1, 0.2, 0.3)
    assert checklist.entries[1].color == pytest.approx((0.1, 0.2, 0.3))

    segmentation.RemoveSegment(first)
    assert _names(checklist) == [("Amygdala", True)]
    segmentation.RemoveSegment(drawn)
    assert checklist.entries == [] and checklist.checkedIds() == []


def test_switching_nodes_stops_observing_the_old_one(scene):
    old = seg.createSegmentationNode(scene, "old")
    new = seg.createSegmentationNode(scene, "new")
    new.GetSegmentation().AddEmptySegment("", "A", (1, 1, 1))
    checklist = SegmentChecklist()
    checklist.setSegmentationNode(old)
    checklist.setSegmentationNode(new)
    old.GetSegmentation().AddEmptySegment("", "ghost", (1, 1, 1))
    assert _names(checklist) == [("A", True)]
    checklist.setAllChecked(False)
    assert checklist.checkedIds() == []
    checklist.setAllChecked(True)
    assert len(checklist.checkedIds()) == 1
    checklist.setSegmentationNode(None)
    assert checklist.entries == []
    new.GetSegmentation().AddEmptySegment("", "B", (1, 1, 1))
    assert checklist.entries == []
    checklist.close()

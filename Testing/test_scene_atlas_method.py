"""The atlas-label method a Slicer user picks: the choices follow the loaded bundle (its default first), a wrong
choice is refused with one line, a new bundle drops a choice it cannot run, and the choice reaches the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import slicer

from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.scene.logic import SegmentationSceneLogic

BUNDLES = Path(__file__).resolve().parents[1] / "LabelSharingSeg" / "Resources" / "Bundles"


@pytest.fixture
def logic():
    return SegmentationSceneLogic(slicer.vtkMRMLScene(), device="cpu")


def _methods(logic):
    return [method for method, _ in logic.atlasMethodChoices()]


def test_choices_follow_the_bundle(logic):
    assert logic.atlasMethodChoices() == []  # nothing loaded
    logic.loadBundle(BUNDLES / "lcs-brain-aal")
    assert _methods(logic) == ["register-deformable", "register-affine", "lcs"]
    assert logic.atlasMethodChoices()[0][1].endswith("(default)")
    logic.loadBundle(BUNDLES / "lcs-refine-brain-aal")
    assert _methods(logic) == ["lcs-refine", "register-deformable", "register-affine"]
    logic.loadBundle(BUNDLES / "labelsharing-multitask")
    assert logic.atlasMethodChoices() == []


def test_choice_is_checked_kept_and_dropped_when_the_bundle_cannot_run_it(logic):
    logic.loadBundle(BUNDLES / "lcs-brain-aal")
    logic.atlasMethodOptions = {"memory_budget_mb": 512}
    logic.setAtlasMethod("lcs")
    assert logic.atlasMethodOptions == {"memory_budget_mb": 512, "method": "lcs"}
    with pytest.raises(InputError, match="'lcs-refine' is not available for this bundle"):
        logic.setAtlasMethod("lcs-refine")
    assert logic.atlasMethodOptions["method"] == "lcs"  # a refused choice changes nothing
    logic.loadBundle(BUNDLES / "lcs-brain-aal")
    assert logic.atlasMethodOptions["method"] == "lcs"  # still valid: kept
    logic.loadBundle(BUNDLES / "lcs-refine-brain-aal")  # its network is not the paper's LCS
    assert logic.atlasMethodOptions == {"memory_budget_mb": 512}
    logic.setAtlasMethod("register-affine")
    logic.setAtlasMethod(None)  # back to the bundle's default
    assert "method" not in logic.atlasMethodOptions


def test_the_choice_reaches_the_engine(logic):
    logic.loadBundle(BUNDLES / "lcs-refine-brain-aal")
    logic.setAtlasMethod("register-affine")
    atlas_volume, atlas_segmentation = logic.loadAtlas()
    first = atlas_segmentation.GetSegmentation().GetNthSegmentID(0)
    run = logic.prepareSegmentAtlasLabels(atlas_volume, atlas_segmentation, [first])
    assert run.methodName == "lcs" and run.methodOptions["method"] == "register-affine"
    logic.setAtlasMethod(None)
    run = logic.prepareSegmentAtlasLabels(atlas_volume, atlas_segmentation, [first])
    assert "method" not in run.methodOptions  # the engine applies the bundle's default

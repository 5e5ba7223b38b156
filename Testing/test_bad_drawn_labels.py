"""Bad drawn atlas labels and a diverging registration (issue 12, "Bad input"): a label outside the atlas's field
of view, an empty label, a one-voxel label and a deformable registration that diverges each give one clear error
in `lsseg segment`, the engine's Python API and the Slicer logic (console call and worker process, slicer-core).

The diverging registration is real: the test bundle's atlas is a noisy phantom, and diffeomorphic demons on it
moved by one voxel makes the images less alike (correlation about 0.80) than the affine alignment (about 0.96).
"""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
import slicer  # slicer-core: a missing wheel fails the run, never skips it
from scene_fixtures import draw_segment

from LabelSharingSegLib.engine.atlas_segmentation import segment_atlas_labels
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError, LabelSharingSegError, RegistrationError
from LabelSharingSegLib.engine.labels import LabelInfo
from LabelSharingSegLib.engine.propagation import labelmap_on_atlas_grid
from LabelSharingSegLib.scene import geometry as geo
from LabelSharingSegLib.scene import segments as seg
from LabelSharingSegLib.scene.logic import SegmentationSceneLogic
from lsseg_training.cli import main

OUTSIDE = r"reach(es)? outside the atlas's field of view"
EMPTY = r"empty"
ONE_VOXEL = r"single voxel"
DIVERGED = r"deformable registration diverged: the images match worse"


@pytest.fixture(scope="module")
def atlas(lcs_bundle_path):
    bundle = load_bundle(lcs_bundle_path)
    image, affine = bundle.atlas_image()
    return bundle, np.asarray(image, np.float32), affine


def _drawn(shape, kind: str) -> np.ndarray:
    """A label map on the atlas grid: a good blob (value 1) plus the bad case (value 2)."""
    labelmap = np.zeros(shape, np.int16)
    labelmap[6:12, 8:14, 6:10] = 1
    if kind == "one voxel":
        labelmap[16, 18, 10] = 2
    return labelmap


def _moved_out(affine: np.ndarray) -> np.ndarray:
    """The same label map placed 28 mm further along x: the blob (x voxels 6-11) now straddles the atlas's far
    x face (voxel 23), so part of it would be silently lost."""
    moved = affine.copy()
    moved[0, 3] += 28.0 * np.sign(affine[0, 0])
    return moved


def test_lsseg_segment(atlas, lcs_bundle_path, tmp_path, capsys):
    bundle, image, affine = atlas
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(scan))
    rolled = tmp_path / "rolled.nii.gz"
    nib.save(nib.Nifti1Image(np.roll(image, 1, axis=1), affine), str(rolled))
    maps = {
        "outside": (_drawn(image.shape, "outside"), _moved_out(affine)),
        "empty": (np.zeros(image.shape, np.int16), affine),
        "one voxel": (_drawn(image.shape, "one voxel"), affine),
    }
    runs = [
        ("outside", scan, OUTSIDE),
        ("empty", scan, EMPTY),
        ("one voxel", scan, ONE_VOXEL),
        ("good", rolled, DIVERGED),
    ]
    for name, target, message in runs:
        labels = tmp_path / f"{name.replace(' ', '_')}.nii.gz"
        drawn, drawn_affine = maps.get(name, (_drawn(image.shape, "good"), affine))
        nib.save(nib.Nifti1Image(drawn, drawn_affine), str(labels))
        out = tmp_path / "out.nii.gz"
        args = [
            "segment",
            str(lcs_bundle_path),
            "-i",
            str(target),
            "-o",
            str(out),
            "--atlas-labels",
            str(labels),
        ]
        assert main([*args, "--quiet", "--method", "register-deformable"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("lsseg: error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert re.search(message, err), (name, err)
        assert not out.exists() and not out.with_suffix("").with_suffix(".csv").exists()


def test_engine_api(atlas):
    bundle, image, affine = atlas
    infos = [LabelInfo(1, "blob", (1, 0, 0)), LabelInfo(2, "dot", (0, 1, 0))]
    with pytest.raises(InputError, match=OUTSIDE):
        labelmap_on_atlas_grid(_drawn(image.shape, "good"), _moved_out(affine), image.shape, affine)
    with pytest.raises(InputError, match=EMPTY):
        labelmap_on_atlas_grid(np.zeros(image.shape, np.int16), affine, image.shape, affine)
    one = _drawn(image.shape, "one voxel")
    masks = np.stack([one == 1, one == 2])
    for method in ("register-deformable", "register-affine", "lcs"):
        with pytest.raises(InputError, match=ONE_VOXEL):
            segment_atlas_labels(bundle, image, affine, masks, infos, device="cpu", method=method)
        with pytest.raises(InputError, match=EMPTY):
            segment_atlas_labels(bundle, image, affine, masks & False, infos, device="cpu", method=method)
    with pytest.raises(RegistrationError, match=DIVERGED):
        segment_atlas_labels(bundle, np.roll(image, 1, axis=1), affine, masks[:1], infos[:1], device="cpu")


def test_slicer_logic(atlas, lcs_bundle_path):
    bundle, image, affine = atlas
    scene = slicer.vtkMRMLScene()
    try:
        slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)
        logic = SegmentationSceneLogic(scene, device="cpu")
        logic.loadBundle(lcs_bundle_path)
        _, atlas_segmentation = logic.loadAtlas()
        blob = _drawn(image.shape, "good") == 1
        good = draw_segment(atlas_segmentation, "blob", blob, affine)
        outside = draw_segment(atlas_segmentation, "outside", blob, _moved_out(affine))
        assert seg.segmentVoxelsOutside(atlas_segmentation, outside, image.shape, affine) > 0
        assert seg.segmentVoxelsOutside(atlas_segmentation, good, image.shape, affine) == 0
        empty = atlas_segmentation.GetSegmentation().AddEmptySegment("", "empty", (1, 1, 0))
        dot = np.zeros(image.shape, bool)
        dot[16, 18, 10] = True
        one_voxel = draw_segment(atlas_segmentation, "dot", dot, affine)
        target = geo.createScalarVolumeNode(scene, "target", image, affine)
        rolled = geo.createScalarVolumeNode(scene, "moved", np.roll(image, 1, axis=1), affine)
        before = len(seg.segmentIds(atlas_segmentation)), scene.GetNumberOfNodes()
        for chosen, volume, message in (
            ([good, outside], target, OUTSIDE),
            ([good, empty], target, EMPTY),
            ([good, one_voxel], target, ONE_VOXEL),
            ([good], rolled, DIVERGED),
        ):
            with pytest.raises(LabelSharingSegError, match=message):  # the console call, synchronous
                logic.segmentAtlasLabels(volume, atlas_segmentation, chosen)
        assert (len(seg.segmentIds(atlas_segmentation)), scene.GetNumberOfNodes()) == before
        # the same diverging run in the worker process (what the module's widget starts)
        run = logic.prepareSegmentAtlasLabels(rolled, atlas_segmentation, [good])
        with pytest.raises(LabelSharingSegError, match=DIVERGED):
            logic.startWorker(run).result(timeout=300)
        assert scene.GetNumberOfNodes() == before[1]
    finally:
        scene.Clear(1)

"""Multi-atlas registration (training/multi_atlas.py) and ``lsseg evaluate --atlas-baselines``: several annotated
cases registered onto a scan and their labels fused by weighted vote, the baseline an LCS bundle is measured
against besides deformable propagation of its own atlas."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from train_helpers import TINY, lsseg

from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.propagation import carry_labels, register_atlas
from lsseg_training.datasets import as_volume, load_case, read_dataset
from lsseg_training.metrics import dice
from lsseg_training.multi_atlas import AtlasCase, fuse_atlases


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    """Real brain-aal cases at 8 mm (3 training, 1 test): small enough to register in a second."""
    from lsseg_training.data.build import build_set

    (root,) = build_set(
        "brain-aal", tmp_path_factory.mktemp("data"), cases=3, test_cases=1, spacing=8.0, progress=None
    )
    return root


def _case(case) -> AtlasCase:
    image, label, affine = load_case(case)
    return AtlasCase(case.case_id, as_volume(image[0]), as_volume(label).astype(np.int64), affine)


def _carried(atlas: AtlasCase, values, scan, affine) -> np.ndarray:
    """One atlas carried onto the scan as `register-deformable` carries the bundle's atlas."""
    masks = np.stack([atlas.labelmap == v for v in values])
    found = register_atlas(atlas.image, atlas.affine, scan, affine)
    return carry_labels(masks, values, atlas.affine, found, scan.shape, affine)


def _mean_dice(prediction, truth, values) -> float:
    scores = [dice(prediction == v, truth == v) for v in values]
    return float(np.nanmean([s for s in scores if not math.isnan(s)]))


def test_the_vote_outweighs_an_atlas_whose_labels_are_wrong(brain):
    dataset = read_dataset(brain)
    first, second, _ = (_case(c) for c in dataset.training)
    scan, truth, affine = load_case(dataset.test[0])
    scan, truth = as_volume(scan[0]), as_volume(truth).astype(np.int64)
    values = sorted(int(v) for v in np.unique(first.labelmap) if v)
    # the first atlas again, its labels swapped in pairs (1<->2, 3<->4, ...): every label wrong, same image
    swapped = first.labelmap.copy()
    for a, b in zip(values[0::2], values[1::2]):
        swapped[first.labelmap == a], swapped[first.labelmap == b] = b, a
    wrong = AtlasCase("swapped", first.image, swapped, first.affine)

    fused, notes = fuse_atlases([first, second, wrong], values, scan, affine)
    assert notes == [] and fused is not None and fused.shape == scan.shape
    alone = _carried(wrong, values, scan, affine)
    # two atlases that agree outvote the one that is wrong everywhere
    assert _mean_dice(fused, truth, values) > _mean_dice(alone, truth, values) + 0.2
    # one atlas fused is that atlas carried as `register-deformable` carries it (the same rule)
    single, _ = fuse_atlases([first], values, scan, affine)
    assert np.array_equal(single, _carried(first, values, scan, affine))
    assert set(np.unique(fused)) <= {0, *values}


def test_an_atlas_that_cannot_be_registered_is_left_out_with_a_note(brain):
    dataset = read_dataset(brain)
    good = _case(dataset.training[1])
    scan, _, affine = load_case(dataset.test[0])
    scan = as_volume(scan[0])
    blank = AtlasCase("blank", np.zeros_like(good.image), good.labelmap, good.affine)
    values = [1, 2, 3]
    fused, notes = fuse_atlases([blank, good], values, scan, affine)
    assert fused is not None and len(notes) == 1 and notes[0].startswith("atlas case blank left out:")
    nothing, notes = fuse_atlases([blank], values, scan, affine)
    assert nothing is None and len(notes) == 1
    with pytest.raises(InputError, match="at least one atlas"):
        fuse_atlases([], values, scan, affine)
    with pytest.raises(InputError, match="at least one label"):
        fuse_atlases([good], [], scan, affine)
    cut = AtlasCase("cut", good.image, good.labelmap[:-1], good.affine)
    with pytest.raises(InputError, match="atlas case cut: label map"):
        fuse_atlases([cut], values, scan, affine)


def test_evaluate_reports_registration_with_one_and_with_n_atlases(brain, tmp_path, capsys):
    lcs = tmp_path / "lcs"
    hierarchy = brain / "label_hierarchy.json"
    assert (
        lsseg("train", "lcs", "--data", brain, "--out", lcs, "--steps", 1, "--coarse-map", hierarchy, *TINY)
        == 0
    )
    report = tmp_path / "report"
    args = ("--data", brain, "--device", "cpu", "--no-hd95")
    assert lsseg("evaluate", lcs, *args, "--atlas-baselines", 3, "--out", report) == 0
    with open(report / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_method: dict[str, list[dict]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    assert set(by_method) == {"lcs", "lcs: deformable propagation", "lcs: multi-atlas x3"}
    # the same trained (coarse) labels and test case for each, scored against the same truth
    labels = {(r["case"], r["label_value"]) for r in by_method["lcs"]}
    for method in ("lcs: deformable propagation", "lcs: multi-atlas x3"):
        assert {(r["case"], r["label_value"]) for r in by_method[method]} == labels
        assert all(r["kind"] == "registration" for r in by_method[method])
        assert np.nanmean([float(r["dice"]) for r in by_method[method]]) > 0.3
    summary = (report / "summary.md").read_text()
    assert "| lcs: multi-atlas x3 |" in summary and "| lcs: deformable propagation |" in summary

    capsys.readouterr()
    assert lsseg("evaluate", lcs, *args, "--atlas-baselines", 4, "--out", tmp_path / "r1") == 2
    assert "has only 3 training case(s) to use as atlases" in capsys.readouterr().err
    assert (
        lsseg("evaluate", lcs, *args, "--atlas-baselines", 2, "--align", "off", "--out", tmp_path / "r2") == 2
    )
    assert "cannot be used with --align off" in capsys.readouterr().err
    assert lsseg("evaluate", lcs, *args, "--atlas-baselines", -1, "--out", tmp_path / "r3") == 2
    assert "must be 0 or more" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("r1", "r2", "r3"))

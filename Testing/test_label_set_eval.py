"""A second label set scored on a refine bundle (training/label_set_eval.py) starts every registration method from
the alignment ``lsseg segment`` uses: the scan registered to the bundle's network reference, carried to the atlas
by the fixed pose (engine atlas_segmentation.reference_alignment), not a registration straight to the atlas case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import lsseg

from LabelSharingSegLib.engine.atlas_segmentation import segment_atlas_labels
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.labels import LabelInfo
from LabelSharingSegLib.engine.propagation import MIN_LABEL_VOXELS, Propagation, carry_independently
from LabelSharingSegLib.engine.registered import atlas_propagation
from lsseg_training.metrics import dice


def test_second_label_set_on_a_refine_bundle_aligns_as_segment_does(tmp_path):
    from lsseg_training.data.build import build_set
    from lsseg_training.datasets import as_volume, load_case, read_dataset
    from lsseg_training.label_set_eval import atlas_case_of, evaluate_label_set, labels_on_atlas_grid
    from lsseg_training.sidebyside import AFFINE, DEFORMABLE, REFINE

    aal, nmm = (
        build_set(name, tmp_path / "data", cases=3, test_cases=1, spacing=4.0, progress=None)[0]
        for name in ("brain-aal", "brain-nmm")
    )
    out = tmp_path / "refine"
    args = ["--data", aal, "--coarse-map", aal / "label_hierarchy.json", "--arch", "lcs_refine"]
    args += [
        "--reference",
        aal / "reference_template.nii.gz",
        "--channels",
        "4,6",
        "--patch",
        "8",
        "--spacing",
        "8,8,8",
    ]
    assert lsseg("train", "lcs", *args, "--out", out, "--steps", 1, "--device", "cpu", "--quiet") == 0
    bundle = load_bundle(out)
    assert bundle.manifest.reference_image is not None
    dataset = read_dataset(nmm)
    rows, notes = evaluate_label_set(
        bundle, "refine", dataset, bundle.build_network("cpu"), torch.device("cpu")
    )
    assert {r["method"] for r in rows} >= {AFFINE, DEFORMABLE, REFINE}, notes

    # what `lsseg segment --method register-affine` computes for the same labels on the same scan
    case_id, _ = atlas_case_of(bundle, dataset)
    atlas_image, atlas_affine = bundle.atlas_image()
    fine_atlas = labels_on_atlas_grid(dataset, case_id, atlas_affine, atlas_image.shape)
    names = dataset.foreground_labels()
    values = [v for v in sorted(names) if np.count_nonzero(fine_atlas == v) >= MIN_LABEL_VOXELS]
    masks = np.stack([fine_atlas == v for v in values])
    infos = [LabelInfo(v, names[v], (1.0, 0.0, 0.0)) for v in values]
    image, truth, affine = load_case(dataset.test[0])
    volume, truth = as_volume(image[0]), as_volume(truth).astype(np.int64)
    segmented = segment_atlas_labels(bundle, volume, affine, masks, infos, method="register-affine")
    alignment = segmented.alignment
    assert alignment is not None
    # the test means something only where the reference's alignment differs from one straight to the atlas
    direct = atlas_propagation(bundle, volume, affine, "affine", None).alignment
    assert not np.allclose(direct.matrix, alignment.matrix, atol=1e-3)

    carried = carry_independently(masks, atlas_affine, Propagation(alignment), volume.shape, affine)
    expected = [dice(mask, truth == v) for mask, v in zip(carried, values)]
    scored = {r["fine_value"]: r["dice"] for r in rows if r["method"] == AFFINE}
    np.testing.assert_allclose([scored[v] for v in values], expected, equal_nan=True)


def test_methods_of_several_bundles_are_named_apart_and_compared_on_their_own_atlas(tmp_path):
    """Two bundles on different atlases (e.g. 3 mm and 2 mm grids) each have their own registration rows; one
    refine bundle shares the first atlas. Averaged together the rows would describe neither."""
    from lsseg_training.demo_report import report_numbers
    from lsseg_training.sidebyside import AFFINE, DEFORMABLE, LCS, REFINE, headline, summary_lines

    scores = {  # bundle -> method -> Dice of labels 1 and 2
        "paper": {AFFINE: (0.5, 0.5), DEFORMABLE: (0.6, 0.6), LCS: (0.3, 0.3)},
        "refine3": {REFINE: (0.55, 0.65)},
        "refine2": {AFFINE: (0.7, 0.1), DEFORMABLE: (0.8, 0.8), REFINE: (0.9, 0.05)},
    }
    rows = [
        {
            "bundle": bundle,
            "task": "T",
            "case": "0",
            "fine_value": v,
            "fine_name": f"l{v}",
            "method": m,
            "dice": d,
        }
        for bundle, methods in scores.items()
        for m, dices in methods.items()
        for v, d in zip((1, 2), dices)
    ]
    lines = "\n".join(summary_lines(rows, [], []))
    # own atlas: refine2 beats its own affine on label 1 only; refine3 is compared with paper's (first) affine
    assert "| deformable propagation (paper) | 0.6000 | 2 of 2 |" in lines
    assert "| deformable propagation (refine2) | 0.8000 | 2 of 2 |" in lines
    assert "| LCS refine (refine3) | 0.6000 | 2 of 2 |" in lines
    assert "| LCS refine (refine2) | 0.4750 | 1 of 2 |" in lines
    assert "| LCS (Ma et al. 2022) | 0.3000 | 0 of 2 |" in lines  # one bundle: its name unchanged
    assert headline(rows) == ("deformable propagation (refine2)", pytest.approx(0.8))
    # the demo report reads the same split from fine_methods.csv
    from lsseg_training.csv_tables import write_csv

    lcs = tmp_path / "evaluation" / "lcs"
    lcs.mkdir(parents=True)
    write_csv(lcs / "fine_methods.csv", rows)
    for name in ("metrics.csv", "table1.csv"):
        write_csv(
            lcs / name,
            [
                {
                    "method": "paper",
                    "case": "0",
                    "label_value": 1,
                    "fine_value": 3,
                    "dice": 0.5,
                    "fine_dice": 0.3,
                    "naive_dice": 0.1,
                }
            ],
        )
    offatlas = tmp_path / "results" / "offatlas"
    offatlas.mkdir(parents=True)
    write_csv(offatlas / "offatlas.csv", [{"mode": "aligned", "dice": 0.7}])
    (tmp_path / "evaluation" / "labelsharing").mkdir()
    write_csv(
        tmp_path / "evaluation" / "labelsharing" / "metrics.csv",
        [{"task": "A", "case": "0", "label_value": 1, "dice": 0.5}],
    )
    means = report_numbers(tmp_path)["fine_methods"]
    assert means["LCS refine (refine2)"] == pytest.approx(0.475) and means[LCS] == pytest.approx(0.3)

"""A second label set scored on a refine bundle (training/label_set_eval.py) starts every registration method from
the alignment ``lsseg segment`` uses: the scan registered to the bundle's network reference, carried to the atlas
by the fixed pose (engine inference.reference_alignment), not a registration straight to the atlas case."""

from __future__ import annotations

import numpy as np
import torch
from train_helpers import lsseg

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.inference import segment_atlas_labels
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

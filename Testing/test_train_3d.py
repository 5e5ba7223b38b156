"""3D end to end on the CPU: a label-sharing model trains a few steps on tiny 3D phantoms, `lsseg segment`
accepts its bundle for a 3D scan (label map on the input's grid) and `lsseg evaluate` scores it."""

from __future__ import annotations

import csv
import math

import numpy as np
from train_helpers import TINY, lsseg, phantoms

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.nifti_io import load_nifti


def test_3d_labelsharing_trains_segments_and_evaluates(tmp_path):
    data = phantoms(tmp_path / "data", tasks=2, dims=3, size=18, cases=3, test_cases=1)
    out = tmp_path / "ls3d"
    assert lsseg("train", "labelsharing", "--data", *data, "--out", out, "--steps", 3, *TINY) == 0
    bundle = load_bundle(out)
    assert bundle.preprocessing.spatial_dims == 3 and bundle.network_config.spatial_dims == 3
    assert bundle.label_space.n_shared == 3 and bundle.task_names() == ["Phantom0", "Phantom1"]
    assert len(bundle.preprocessing.patch_size) == 3

    for folder, task in zip(data, bundle.task_names()):
        case = sorted((folder / "imagesTs").iterdir())[0]
        seg = tmp_path / f"{task}.nii.gz"
        assert lsseg("segment", out, "-i", case, "-o", seg, "--task", task, "--device", "cpu", "--quiet") == 0
        labelmap, affine = load_nifti(seg, dtype=np.int32)
        image, image_affine = load_nifti(case)
        assert labelmap.shape == image.shape == (18, 18, 18)
        assert np.allclose(affine, image_affine)
        assert set(np.unique(labelmap)) <= {0} | {label.value for label in bundle.task_labels(task)}

    report = tmp_path / "report"
    assert lsseg("evaluate", out, "--data", *data, "--out", report, "--device", "cpu") == 0
    with open(report / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    n_labels = sum(len(bundle.task_labels(t)) for t in bundle.task_names())
    assert len(rows) == n_labels  # one test case per task, one row per label
    assert {r["task"] for r in rows} == {"Phantom0", "Phantom1"}
    for r in rows:
        value = float(r["dice"])
        assert math.isnan(value) or 0.0 <= value <= 1.0
        assert int(r["true_voxels"]) > 0
    assert "Phantom0" in (report / "summary.md").read_text()
    assert (report / "paired_Phantom1.png").read_bytes()[:4] == b"\x89PNG"

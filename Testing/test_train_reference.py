"""`--reference`: a 3D task bundle stores a reference image, `lsseg segment` aligns scans to it by default,
and add-task carries it over; 2D bundles and bad images are refused before any training."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from train_helpers import TINY, lsseg, phantoms

from LabelSharingSegLib.engine.bundle import load_bundle


def test_reference_is_stored_used_and_carried_over(tmp_path, capsys):
    data = phantoms(tmp_path / "data", tasks=2, dims=3, size=18, cases=3, test_cases=1)
    reference = sorted((data[0] / "imagesTr").iterdir())[0]
    out = tmp_path / "ls3d"
    assert (
        lsseg(
            "train",
            "labelsharing",
            "--data",
            data[0],
            "--out",
            out,
            "--steps",
            2,
            "--reference",
            reference,
            *TINY,
        )
        == 0
    )
    bundle = load_bundle(out)
    assert bundle.has_reference()
    stored, affine = bundle.reference_image()
    np.testing.assert_allclose(stored, np.asarray(nib.load(str(reference)).dataobj), atol=1e-6)
    capsys.readouterr()
    case = sorted((data[0] / "imagesTs").iterdir())[0]
    assert (
        lsseg(
            "segment", out, "-i", case, "-o", tmp_path / "seg.nii.gz", "--task", "Phantom0", "--device", "cpu"
        )
        == 0
    )
    assert "aligned the scan to the bundle's reference" in capsys.readouterr().out
    assert (
        lsseg(
            "segment",
            out,
            "-i",
            case,
            "-o",
            tmp_path / "seg.nii.gz",
            "--task",
            "Phantom0",
            "--align",
            "off",
            "--device",
            "cpu",
            "--overwrite",
        )
        == 0
    )
    assert "aligned" not in capsys.readouterr().out
    grown = tmp_path / "grown"
    assert lsseg("add-task", out, "--data", data[1], "--out", grown, "--steps", 1, *TINY) == 0
    assert load_bundle(grown).has_reference()


def test_bad_references_are_refused_before_training(tmp_path, capsys):
    data2d = phantoms(tmp_path / "d2", tasks=1, dims=2, size=32, cases=3, test_cases=1)
    reference = sorted((data2d[0] / "imagesTr").iterdir())[0]
    assert (
        lsseg(
            "train",
            "labelsharing",
            "--data",
            data2d[0],
            "--out",
            tmp_path / "b",
            "--steps",
            1,
            "--reference",
            reference,
            *TINY,
        )
        == 2
    )
    assert "a reference must be a 3D image" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()

"""``lsseg train lcs --align-cases affine``: each training case is registered to the atlas before the network sees
it, and what the network sees equals what inference feeds it for that scan (the scan registered to the bundle's
atlas by the same function, then resampled onto the atlas grid). A case that cannot be registered is left out and
named; options that cannot go together are refused before anything is written."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import atlas_volume
from train_helpers import lsseg, phantoms, record_training

from LabelSharingSegLib.engine.atlas_segmentation import PreparedLCS
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.registration_cache import affine_alignment
from lsseg_training.api import LCSRunConfig
from lsseg_training.datasets import load_case, make_case_folders, read_dataset, write_case, write_dataset_json

TINY_3D = ["--channels", "4,8,16", "--device", "cpu", "--quiet", "--batch", "2", "--val-fraction", "0.25"]
SHIFTS_MM = ((0, 0, 0), (6, 0, 0), (0, -6, 4), (-4, 4, 0), (4, 2, -4))  # case 0 is the atlas


def _shifted_cases(root, blank_case: bool = False):
    """The same anatomy at different world positions (its affine translated), as scans lie in their scanners;
    ``blank_case`` adds a training case that shows nothing but one bright voxel, which no registration can place."""
    image, labels, affine, names = atlas_volume()
    folder = root / "Dataset901_Shifted"
    folder.mkdir(parents=True)
    make_case_folders(folder)
    for i, shift in enumerate(SHIFTS_MM):
        moved = affine.copy()
        moved[:3, 3] += shift
        rng = np.random.default_rng(i)
        noisy = (image + rng.normal(0, 1, image.shape)).astype(np.float32)
        write_case(folder, "train", f"shifted_{i:03d}", noisy, labels, moved)
    if blank_case:
        blank = np.zeros(image.shape, np.float32)
        blank[3, 3, 3] = 100.0
        write_case(folder, "train", "shifted_blank", blank, labels, affine)
    write_dataset_json(
        folder,
        name="Shifted",
        labels={"background": 0, **{info.name: info.value for info in names}},
        channel_names={"0": "T1"},
        num_training=len(SHIFTS_MM) + blank_case,
    )
    return folder


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_aligned_cases_are_what_inference_shows_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("LSSEG_CACHE_DIR", str(tmp_path / "cache"))
    data = _shifted_cases(tmp_path)
    seen = record_training(monkeypatch)
    out = tmp_path / "aligned"
    assert (
        lsseg("train", "lcs", "--data", data, "--out", out, "--steps", 1, "--align-cases", "affine", *TINY_3D)
        == 0
    )
    method = seen["method"]
    bundle = load_bundle(out)
    assert bundle.manifest.training["align_cases"] == "affine"
    assert "left_out_cases" not in bundle.manifest.training
    atlas = method.crop(method.atlas_label[None])[0]
    by_id = {c.case_id: c for c in read_dataset(data).training}
    items = method.items + seen["val_items"]
    assert len(items) == len(SHIFTS_MM) - 1  # every case but the atlas
    atlas_image, atlas_affine = bundle.reference_image()
    for item in items:
        # registered, every shifted case lies on the atlas
        assert _dice(method.crop(item["label"][None])[0], atlas) > 0.95, item["case"].case_id
        image, _, affine = load_case(by_id[item["case"].case_id])
        alignment = affine_alignment(image[0], affine, atlas_image, atlas_affine)
        prepared = PreparedLCS(bundle, image[0], alignment.aligned_affine(affine), torch.device("cpu"))
        assert torch.allclose(item["image"], prepared.target[0, 0], atol=1e-5), item["case"].case_id

    # the registrations were kept, so a machine without SimpleITK (the lent GPU's) trains from them
    cache = tmp_path / "aligned.training" / "registrations"
    assert len(list(cache.glob("*.npz"))) == len(SHIFTS_MM) - 1
    seen.clear()
    sitk = sys.modules.get("SimpleITK")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # any import of it now fails
    again = ["--data", data, "--out", tmp_path / "again", "--steps", 1, "--align-cases", "affine"]
    assert lsseg("train", "lcs", *again, "--registration-cache", cache, *TINY_3D) == 0
    pairs = zip(seen["method"].items, method.items, strict=True)
    assert all(torch.equal(a["image"], b["image"]) for a, b in pairs)
    # without SimpleITK and without the registrations: one clear line, nothing written
    fresh = ["--data", data, "--out", tmp_path / "fresh", "--steps", 1, "--align-cases", "affine"]
    assert lsseg("train", "lcs", *fresh, "--registration-cache", tmp_path / "empty", *TINY_3D) == 2
    assert not (tmp_path / "fresh").exists()
    monkeypatch.setitem(sys.modules, "SimpleITK", sitk)

    # trained as the paper trains, the same cases sit where their world coordinates put them: shifted off the atlas
    seen.clear()
    out = tmp_path / "as_placed"
    assert lsseg("train", "lcs", "--data", data, "--out", out, "--steps", 1, *TINY_3D) == 0
    assert load_bundle(out).manifest.training["align_cases"] == "none"
    shifted = [
        seen["method"].crop(item["label"][None])[0] for item in seen["method"].items + seen["val_items"]
    ]
    assert min(_dice(label, atlas) for label in shifted) < 0.8


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_case_that_cannot_be_registered_is_left_out_and_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LSSEG_CACHE_DIR", str(tmp_path / "cache"))
    data = _shifted_cases(tmp_path, blank_case=True)
    seen = record_training(monkeypatch)
    out = tmp_path / "aligned"
    assert (
        lsseg("train", "lcs", "--data", data, "--out", out, "--steps", 1, "--align-cases", "affine", *TINY_3D)
        == 0
    )
    assert "left out: shifted_blank" in capsys.readouterr().out
    used = {item["case"].case_id for item in seen["method"].items + seen["val_items"]}
    assert "shifted_blank" not in used and len(used) == len(SHIFTS_MM) - 1
    assert load_bundle(out).manifest.training["left_out_cases"] == ["shifted_blank"]


def test_align_cases_is_refused_where_it_cannot_apply(tmp_path, capsys):
    data3d = _shifted_cases(tmp_path)
    reference = sorted((data3d / "imagesTr").iterdir())[0]
    data2d = phantoms(tmp_path / "flat", tasks=1, dims=2, size=24, cases=3, test_cases=1)[0]
    refused = {
        "reference": ["--data", data3d, "--reference", reference],
        "refine": ["--data", data3d, "--arch", "lcs_refine"],
        "2D": ["--data", data2d],
    }
    for name, args in refused.items():
        out = tmp_path / f"out_{name}"
        assert (
            lsseg("train", "lcs", *args, "--align-cases", "affine", "--out", out, "--steps", 1, *TINY_3D) == 2
        ), name
        assert not out.exists(), name
    err = capsys.readouterr().err
    assert "leave out --reference" in err and "options of --arch lcs, not lcs_refine" in err
    assert "needs 3D data" in err
    with pytest.raises(InputError, match="--align-cases must be one of none, affine, deformable"):
        LCSRunConfig(data3d, tmp_path / "out", align_cases="rigid")

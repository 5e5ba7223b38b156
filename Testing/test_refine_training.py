"""Training the LCS that refines registration: samples (splits applied to atlas and target alike, deterministic,
patches that compute what full-volume inference computes), the registration cache, and ``lsseg train lcs --arch
lcs_refine`` -> ``lsseg segment --method lcs-refine`` -> ``lsseg evaluate`` end to end on tiny 3D volumes."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from conftest import atlas_volume
from train_helpers import lsseg

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.deformable import Deformation
from LabelSharingSegLib.engine.network_config import REFINE_HALO, RefineLCSConfig
from LabelSharingSegLib.engine.networks import build_network
from LabelSharingSegLib.engine.preprocessing_config import IntensityConfig
from LabelSharingSegLib.engine.propagation import Propagation
from LabelSharingSegLib.engine.registration import Alignment
from lsseg_training.datasets import make_case_folders, write_case, write_dataset_json
from lsseg_training.pair_registrations import cached_registration
from lsseg_training.refine_method import RefineMethod, make_pair


def _identity_pair(displacement_mm: float = 0.0, intensity: str = "zscore"):
    """The atlas registered onto itself (identity alignment, a uniform displacement along the first axis)."""
    image, labels, affine, _ = atlas_volume()
    field = np.zeros((3, *image.shape), np.float32)
    field[0] = displacement_mm
    deformation = Deformation(field, affine, "demons", 1.0, 1.0, 1.0, 0.0)
    propagation = Propagation(Alignment(np.eye(4), float("nan")), deformation)
    lut = torch.arange(4)
    pair = make_pair(
        "self", image, labels, affine, image, affine, IntensityConfig(intensity), lut, propagation
    )
    return pair, image, labels, affine


def _method(labels, affine, patch=8, **kwargs):
    return RefineMethod(
        torch.as_tensor(labels), [1, 2, 3], affine, RefineLCSConfig(channels=(4, 6)), patch, **kwargs
    )


def test_pair_is_built_on_the_atlas_grid_as_inference_builds_it():
    pair, image, labels, affine = _identity_pair()
    assert pair.inputs.shape == (2, *image.shape) and torch.equal(pair.target, torch.as_tensor(labels).long())
    # the scan and the atlas are the same image here: both channels equal
    torch.testing.assert_close(pair.inputs[0], pair.inputs[1])
    # the atlas seen 2 voxels further along the first axis (no normalisation, so values compare directly)
    still, *_ = _identity_pair(intensity="none")
    shifted, *_ = _identity_pair(displacement_mm=4.0, intensity="none")
    torch.testing.assert_close(shifted.inputs[1][:-2], still.inputs[1][2:], atol=1e-4, rtol=0)
    torch.testing.assert_close(shifted.inputs[0], still.inputs[0])


def test_splits_and_merges_apply_to_atlas_and_target_alike():
    pair, _, labels, affine = _identity_pair()
    method = _method(labels, affine, split_prob=1.0, max_parts=4, merge_prob=0.5)
    sizes = set()
    for seed in range(12):
        atlas, truth = method.condition(np.random.default_rng(seed), pair)
        assert torch.equal(atlas, truth)  # the case is the atlas itself: the same cell on both
        assert atlas.any()
        sizes.add(int(atlas.sum()))
    assert len(sizes) > 3  # cells differ from sample to sample
    whole = {int((torch.as_tensor(labels) == v).sum()) for v in (1, 2, 3)}
    assert not sizes <= whole  # labels really were split


def test_batches_are_deterministic_and_patches_compute_what_the_full_volume_computes():
    pair, _, labels, affine = _identity_pair()
    method = _method(labels, affine)
    method.make_sampler([pair])
    first, again, other = method.batch(0, 0, 5, 2), method.batch(0, 0, 5, 2), method.batch(0, 0, 6, 2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["mask"], other["mask"])
    edge = 8 + 2 * method.margin
    assert first["image"].shape == (2, 2, edge, edge, edge) and first["target"].shape == (2, 1, 8, 8, 8)

    torch.manual_seed(0)
    net = build_network(RefineLCSConfig(channels=(4, 6))).eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.correction.weight, std=0.5)
    small = _method(labels, affine, patch=4)  # patches inside the grid (no zero padding) for this check
    for seed in range(50):
        rng = np.random.default_rng(seed)
        atlas, _ = small.condition(rng, pair)
        region, window, pads = small._windows(rng, atlas)
        if all(p == (0, 0) for p in pads):
            break
    assert all(p == (0, 0) for p in pads)
    carried = small.propagated(pair, atlas[None])
    with torch.no_grad():
        full = net(pair.inputs[None, :1], pair.inputs[None, 1:], carried[None])[0, 0]
        patch = net(
            pair.inputs[None, :1][(..., *window)],
            pair.inputs[None, 1:][(..., *window)],
            carried[None][(..., *window)],
        )[0, 0]
    m = method.margin
    torch.testing.assert_close(patch[m:-m, m:-m, m:-m], full[region], atol=1e-5, rtol=0)
    assert method.margin == RefineLCSConfig(channels=(4, 6)).encoder_halo + REFINE_HALO

    loss = method.loss(net.train(), first, torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss) and net.correction.weight.grad.abs().sum() > 0


def test_refine_validation_decides_cells_as_segment_does():
    """Validation scores what `segment` decides (each voxel its most probable cell, background below 0.5, zero
    outside each cell's box), not each cell alone: the kept weights are the best at what users get."""
    from LabelSharingSegLib.engine.registered import refined_in_boxes
    from lsseg_training.metrics import dice

    pair, _, labels, affine = _identity_pair(displacement_mm=2.0)
    method = _method(labels, affine)
    torch.manual_seed(0)
    net = build_network(RefineLCSConfig(channels=(4, 6))).eval()
    with torch.no_grad():
        net.correction.bias.fill_(5.0)  # above the prior gain (4): every box voxel >= 0.5, boxes compete
    cells, truths = method.validation_conditions(pair)
    carried = method.propagated(pair, cells)
    with torch.no_grad():
        features = net.encode(pair.inputs[None, :1], pair.inputs[None, 1:])
        probabilities = np.zeros(carried.shape, np.float32)
        for k, box, probs in refined_in_boxes(net, features, carried, chunk=8):
            probabilities[(k, *box)] = probs.numpy()
    winner = probabilities.argmax(axis=0)
    decided = [(winner == k) & (probabilities.max(axis=0) >= 0.5) for k in range(len(cells))]
    truths = truths.numpy()
    expected = np.nanmean([dice(d, t) for d, t in zip(decided, truths)])
    alone = np.nanmean([dice(p >= 0.5, t) for p, t in zip(probabilities, truths)])
    assert abs(expected - alone) > 0.01  # the two decisions really differ here
    assert method.validate(net, [pair], torch.device("cpu")) == pytest.approx(expected, abs=1e-6)
    # the registration's own answer is decided the same way
    winner = carried.numpy().argmax(axis=0)
    propagated = [(winner == k) & (carried.numpy().max(axis=0) >= 0.5) for k in range(len(cells))]
    expected = np.nanmean([dice(d, t) for d, t in zip(propagated, truths)])
    assert method.validate(net, [pair], torch.device("cpu"), refine=False) == pytest.approx(
        expected, abs=1e-6
    )


def test_registration_cache_reuses_and_repairs(tmp_path):
    image, _, affine, _ = atlas_volume()
    # a registration that diverges (here: the deformable stage matches worse than affine) is not kept
    assert cached_registration(tmp_path, image, affine, np.roll(image, 1, axis=0), affine) is None
    assert not list(tmp_path.glob("*.npz"))
    moved = image + np.random.default_rng(1).normal(0, 1, image.shape).astype(np.float32)
    first = cached_registration(tmp_path, image, affine, moved, affine)
    files = list(tmp_path.glob("*.npz"))
    assert first is not None and len(files) == 1
    again = cached_registration(tmp_path, image, affine, moved, affine)
    np.testing.assert_array_equal(again.deformation.displacement, first.deformation.displacement)
    np.testing.assert_allclose(again.alignment.matrix, first.alignment.matrix)
    files[0].write_bytes(b"damaged")
    repaired = cached_registration(tmp_path, image, affine, moved, affine)
    np.testing.assert_allclose(repaired.deformation.displacement, first.deformation.displacement, atol=1e-4)
    assert len(list(tmp_path.glob("*.npz"))) == 1


def _tiny_brains(root):
    """A 3D dataset of the conftest atlas with noise of its own per case: 4 training + 1 test case, and a coarse
    map merging the two blobs (their fine labels are never trained)."""
    image, labels, affine, names = atlas_volume()
    folder = root / "Dataset990_TinyAtlas"
    folder.mkdir(parents=True)
    make_case_folders(folder)
    for i, (split, shift) in enumerate(
        (("train", 0), ("train", 1), ("train", -1), ("train", 2), ("test", 1))
    ):
        rng = np.random.default_rng(i)
        moved = np.roll(image, shift, axis=0) + rng.normal(0, 1, image.shape).astype(np.float32)
        write_case(
            folder, split, f"tiny_{i:03d}", moved.astype(np.float32), np.roll(labels, shift, axis=0), affine
        )
    write_dataset_json(
        folder,
        name="TinyAtlas",
        labels={"background": 0, **{info.name: info.value for info in names}},
        channel_names={"0": "T1"},
        num_training=4,
    )
    coarse = root / "coarse.csv"
    coarse.write_text("1,1,blobs\n2,1,blobs\n3,3,box\n")
    return folder, coarse


def _side_rows(report):
    with open(report / "fine_methods.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_refine_trains_segments_and_is_evaluated_beside_every_method(tmp_path, monkeypatch):
    data, coarse = _tiny_brains(tmp_path)
    out = tmp_path / "refine"
    common = ["--data", data, "--coarse-map", coarse, "--device", "cpu", "--quiet", "--batch", "2"]
    args = [
        "train",
        "lcs",
        *common,
        "--out",
        out,
        "--arch",
        "lcs_refine",
        "--channels",
        "4,6",
        "--patch",
        "8",
    ]
    assert lsseg(*args, "--steps", 2, "--val-fraction", "0.34") == 0
    bundle = load_bundle(out)
    assert bundle.network_config.arch == "lcs_refine" and bundle.network_config.channels == (4, 6)
    training = bundle.manifest.training
    assert training["method"] == "lcs_refine" and training["device"].lower().startswith("cpu")
    assert training["registration_seconds"] >= 0 and training["validation_cases"]
    assert len(list((tmp_path / "refine.training" / "registrations").glob("*.npz"))) == 3  # the atlas is not

    scan = sorted((data / "imagesTs").iterdir())[0]
    seg = tmp_path / "seg.nii.gz"
    assert (
        lsseg("segment", out, "-i", scan, "-o", seg, "--atlas-labels", "bundle", "--method", "lcs-refine")
        == 0
    )
    assert seg.is_file()

    report = tmp_path / "report"
    assert lsseg("evaluate", out, "--data", data, "--out", report, "--device", "cpu", "--no-hd95") == 0
    side = _side_rows(report)
    methods = {r["method"] for r in side}
    assert {"affine propagation", "deformable propagation", "LCS refine"} <= methods
    assert "LCS (Ma et al. 2022)" not in methods  # a refine bundle has no paper network
    refine = [float(r["dice"]) for r in side if r["method"] == "LCS refine"]
    assert len(refine) == 3 and min(refine) > 0.5  # two steps from registration: still close to it
    assert "| LCS refine |" in (report / "summary.md").read_text()

    # beside the paper's LCS on the same atlas: every method once per (case, fine label)
    paper = tmp_path / "paper"
    assert lsseg("train", "lcs", *common, "--out", paper, "--channels", "4,8,16", "--steps", 1) == 0
    both = tmp_path / "both"
    assert lsseg("evaluate", paper, out, "--data", data, "--out", both, "--device", "cpu", "--no-hd95") == 0
    side = _side_rows(both)
    for method in ("naive (world)", "affine propagation", "deformable propagation", "LCS (Ma et al. 2022)"):
        assert sum(r["method"] == method for r in side) == 3, method
    assert [float(r["dice"]) for r in side if r["method"] == "LCS refine"] == refine

    # a scan whose deformable registration diverges is refused by `lsseg segment`: scored empty and named
    from lsseg_training import sidebyside

    monkeypatch.setattr(
        sidebyside, "deformable_registration", lambda *args: (None, "diverged (stood in here)")
    )
    refused = tmp_path / "refused"
    assert lsseg("evaluate", out, "--data", data, "--out", refused, "--device", "cpu", "--no-hd95") == 0
    with open(refused / "metrics.csv", newline="") as handle:
        scored = [float(r["dice"]) for r in csv.DictReader(handle)]
    assert scored and all(value == 0.0 or math.isnan(value) for value in scored) and 0.0 in scored
    assert (
        "refine refused the scan, scored as an empty segmentation (diverged (stood in here))"
        in (refused / "summary.md").read_text()
    )

    # invalid refine options are refused with one line
    assert lsseg(*args, "--steps", 1, "--split-prob", "1.5") == 2
    assert lsseg(*args, "--steps", 1, "--max-parts", "1") == 2

"""The LCS network sees the same input in training as at inference: the target, the atlas image and the atlas
masks that ``lsseg train lcs`` feeds the network equal what ``PreparedLCS`` (the inference path Slicer uses)
builds for the same image - same centred padding, same intensity normalisation - within 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import TINY, lsseg, phantoms

import lsseg_training.run_session as run_session
from LabelSharingSegLib.engine.atlas_segmentation import PreparedLCS
from LabelSharingSegLib.engine.bundle import load_bundle
from lsseg_training.datasets import as_volume, load_case, read_dataset
from lsseg_training.methods import LCSMethod
from lsseg_training.samples import ToAtlasGrid, cache_items


@pytest.mark.parametrize("dims,size", [(2, 30), (3, 18)])
def test_training_lcs_input_equals_inference_input(tmp_path, monkeypatch, dims, size):
    # 30 (2D) and 18 (3D) are not multiples of the pooling factor 4: two voxels of padding per axis, which
    # inference splits (1, 1); padding at the far end (0, 2) would shift every voxel by one
    data = phantoms(tmp_path / "data", tasks=1, dims=dims, size=size, cases=3, test_cases=1)
    seen = {}
    real_train = run_session.train

    def recording_train(method, model, val_items, options, ctx, *args, **kwargs):
        seen["method"], seen["val_items"] = method, val_items
        return real_train(method, model, val_items, options, ctx, *args, **kwargs)

    monkeypatch.setattr(run_session, "train", recording_train)
    out = tmp_path / "lcs"
    assert lsseg("train", "lcs", "--data", data[0], "--out", out, "--steps", 1, *TINY) == 0
    method: LCSMethod = seen["method"]
    bundle = load_bundle(out)
    assert method.pads == [(1, 1)] * dims

    dataset = read_dataset(data[0])
    by_id = {c.case_id: c for c in dataset.training + dataset.test}
    checked = 0
    for item in method.items + seen["val_items"]:
        case = item["case"]
        image, label, affine = load_case(by_id[case.case_id])
        prepared = PreparedLCS(bundle, as_volume(image[0]), affine, torch.device("cpu"))
        assert item["image"].shape == prepared.target[0].shape
        assert torch.allclose(item["image"], prepared.target[0], atol=1e-5), case.case_id
        checked += 1
    assert checked == 3 - 1  # every training and validation case except the atlas

    # the atlas image and its masks, as the network's conditioning receives them
    assert method.atlas_image.shape == prepared.atlas[0].shape
    assert torch.allclose(method.atlas_image, prepared.atlas[0], atol=1e-5)
    atlas_labels, _, infos = bundle.atlas_labels()
    masks = np.stack([atlas_labels == info.value for info in infos])
    inference_masks = prepared.masks_tensor(masks)[:, 0]
    training_masks = torch.stack([(method.atlas_label == info.value).float() for info in infos])
    assert torch.equal(training_masks, inference_masks)

    # the padding is centred: the first and last voxel of every padded axis are zero, the content is unshifted
    unpadded = method.crop(method.atlas_label[None])[0]
    expected = torch.as_tensor(atlas_labels[..., 0] if dims == 2 else atlas_labels).long()
    assert torch.equal(unpadded, expected)
    for axis in range(dims):
        assert not method.atlas_label.select(axis, 0).any() and not method.atlas_label.select(axis, -1).any()


def test_lcs_input_for_a_new_image_matches_prepared_lcs(tmp_path):
    """The training transform applied to a test case (never seen in training) equals the inference input."""
    data = phantoms(tmp_path / "data", tasks=1, dims=2, size=30, cases=3, test_cases=1)
    out = tmp_path / "lcs"
    assert (
        lsseg(
            "train", "lcs", "--data", data[0], "--out", out, "--steps", 1, "--intensity", "percentile", *TINY
        )
        == 0
    )
    bundle = load_bundle(out)
    atlas_raw, atlas_affine = bundle.atlas_image()
    atlas_labels, _, infos = bundle.atlas_labels()
    prep = bundle.preprocessing
    assert prep.intensity.mode == "percentile"
    method = LCSMethod(
        torch.as_tensor(atlas_raw),
        torch.as_tensor(atlas_labels),
        [i.value for i in infos],
        bundle.network_config,
        prep,
    )
    case = read_dataset(data[0]).test[0]
    item = method.prepare_items(cache_items([(case, 0)], ToAtlasGrid(prep, atlas_affine, atlas_raw.shape)))[0]
    image, _, affine = load_case(case)
    prepared = PreparedLCS(bundle, as_volume(image[0]), affine, torch.device("cpu"))
    assert torch.allclose(item["image"], prepared.target[0], atol=1e-5)
    assert torch.allclose(method.atlas_image, prepared.atlas[0], atol=1e-5)
    # and the value range really is the percentile one (normalisation applied once, not twice or never)
    assert float(item["image"].max()) <= 1.0 + 1e-6 and float(item["image"].min()) >= 0.0


def test_lcs_validation_decides_labels_as_segment_does(tmp_path):
    """Validation scores what inference decides (every label decoded, argmax, background below 0.5), so the
    weights a run keeps are the best at what `segment` does; ``val_labels`` only caps the labels scored."""
    from LabelSharingSegLib.engine.atlas_segmentation import (
        LCS_THRESHOLD,
        keep_most_probable,
        lcs_probabilities_chunks,
    )
    from lsseg_training.metrics import dice

    data = phantoms(tmp_path / "data", tasks=1, dims=2, size=30, cases=3, test_cases=1)
    out = tmp_path / "lcs"
    assert lsseg("train", "lcs", "--data", data[0], "--out", out, "--steps", 3, *TINY) == 0
    bundle = load_bundle(out)
    atlas_raw, atlas_affine = bundle.atlas_image()
    atlas_labels, _, infos = bundle.atlas_labels()
    values = [i.value for i in infos]
    network = bundle.build_network("cpu").eval()
    case = read_dataset(data[0]).test[0]
    image, _, affine = load_case(case)
    prepared = PreparedLCS(bundle, as_volume(image[0]), affine, torch.device("cpu"))
    masks = np.stack([atlas_labels == v for v in values])
    best = torch.zeros(prepared.atlas_shape)
    index = torch.zeros(prepared.atlas_shape, dtype=torch.int32)
    for start, probs in lcs_probabilities_chunks(network, prepared, masks, 2, lambda *a: None):
        best, index = keep_most_probable(best, index, probs, start)
    decided = torch.where(best >= LCS_THRESHOLD, torch.tensor(values)[index.long()], 0)[..., 0]

    for scored in (values, values[1:]):
        method = LCSMethod(torch.as_tensor(atlas_raw), torch.as_tensor(atlas_labels), values,
                           bundle.network_config, bundle.preprocessing, val_labels=scored)  # fmt: skip
        item = method.prepare_items(
            cache_items([(case, 0)], ToAtlasGrid(bundle.preprocessing, atlas_affine, atlas_raw.shape))
        )[0]
        truth = method.crop(item["label"])
        expected = [dice((decided == v).numpy(), (truth == v).numpy()) for v in scored]
        expected = [d for d in expected if not np.isnan(d)]
        assert method.validate(network, [item], torch.device("cpu")) == pytest.approx(
            np.mean(expected), abs=1e-6
        )


def test_which_conditioning_lcs_trains_with(tmp_path):
    """`lsseg train lcs` conditions every decoder level unless told otherwise; the setting is settled when the run
    is configured (checkpoints record what trained), and the refining network has no such option."""
    from lsseg_training.api import LCSRunConfig

    def conditioning(**options) -> str | None:
        return LCSRunConfig("d", "o", **options).conditioning

    assert conditioning() == "every-level"
    assert conditioning(conditioning="bottleneck") == "bottleneck"
    assert conditioning(arch="lcs_refine") == "bottleneck"
    assert LCSRunConfig("d", "o").lcs_variant_options() == {"conditioning": "every-level"}
    data = phantoms(tmp_path / "data", tasks=1, dims=2, size=24, cases=3, test_cases=1)
    for given, expected in (([], "every-level"), (["--conditioning", "bottleneck"], "bottleneck")):
        out = tmp_path / f"lcs_{expected}"
        assert lsseg("train", "lcs", "--data", data[0], "--out", out, "--steps", 1, *given, *TINY) == 0
        assert load_bundle(out).network_config.conditioning == expected

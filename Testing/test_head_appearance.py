"""Whole-head appearance (``--appearance head``): layers painted outside the brain in the order and at the
distance asked for, the brain's own intensities kept up to the final z-score, labels never changed, and image,
brain mask and labels kept aligned through the device pipeline's crop, margin shift and warp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from LabelSharingSegLib.engine.network_config import network_config_from_dict
from LabelSharingSegLib.engine.preprocessing_config import Preprocessing
from lsseg_training.appearance import AppearanceAugment, AppearanceParams
from lsseg_training.head_appearance import HeadParams, brain_distance, brain_mask
from lsseg_training.methods import LCSMethod
from lsseg_training.pipeline import LCSBatches, PipelineSettings, TaskBatches
from lsseg_training.samples import PatchSampler

# every random choice fixed: rings of known thickness and intensity, nothing else
FIXED = HeadParams(
    csf_mm=(2.0, 2.0),
    skull_mm=(4.0, 4.0),
    scalp_mm=(4.0, 4.0),
    wobble_mm=0.0,
    csf_level=(0.2, 0.2),
    skull_level=(0.05, 0.05),
    marrow_prob=0.0,
    scalp_level=(1.2, 1.2),
    tissue_prob=0.0,
    texture_max=0.0,
    background_level=(0.0, 0.0),
    noise_max=0.0,
    cut_prob=0.0,
)
ALWAYS = AppearanceParams(head_prob=1.0)


def _brain(dims: int, size: int = 40, batch: int = 2):
    """Brain-only phantoms: a ball (white matter 1.0) with a grey shell (0.6) and a dark ventricle (0.1),
    background noise; labels: the grey shell 1, the ventricle 2."""
    rng = np.random.default_rng(0)
    grid = np.indices((size,) * dims) - (size - 1) / 2
    radius = np.sqrt((grid**2).sum(0))
    brain = radius < size / 4
    image = np.where(brain, 1.0, 0.0) - 0.4 * ((radius > size / 4 - 2) & brain) - 0.9 * (radius < 3)
    label = np.where(brain & (radius > size / 4 - 2), 1, 0) + 2 * (radius < 3)
    images = np.stack([image + np.abs(rng.normal(0, 0.02, image.shape)) for _ in range(batch)])
    labels = np.stack([label] * batch)
    distance = ndimage.distance_transform_edt(~brain).astype(np.float32)  # 1 mm voxels
    return (
        torch.as_tensor(images[:, None], dtype=torch.float32),
        torch.as_tensor(labels),
        torch.as_tensor(np.stack([brain] * batch)),
        torch.as_tensor(np.stack([distance] * batch)),
    )


def test_brain_mask_ignores_background_noise_and_fills_the_ventricles():
    image, _, brain, distance = _brain(3)
    found = brain_mask(image[0, 0].numpy())
    assert found.dtype == bool and (found == brain[0].numpy()).mean() > 0.99
    assert found[20, 20, 20]  # the dark ventricle is inside the brain
    measured = brain_distance(image[0, 0].numpy(), 2.0)  # millimetres on a 2 mm grid
    assert np.abs(measured - 2.0 * distance[0].numpy()).max() <= 2.0 * np.sqrt(3)  # at most a voxel off


@pytest.mark.parametrize("dims", [2, 3])
def test_layers_are_painted_outside_the_brain_in_order_and_labels_never_change(dims):
    image, label, brain, distance = _brain(dims)
    before = label.clone()
    augment = AppearanceAugment(("head",), ALWAYS, spacing_mm=1.0, head=FIXED)
    out = augment(np.random.default_rng(1), torch.Generator().manual_seed(1), image.clone(), label, distance)
    assert torch.equal(label, before) and out.shape == image.shape
    for b in range(2):
        sample = out[b, 0]
        assert abs(float(sample.mean())) < 1e-4 and abs(float(sample.std()) - 1.0) < 1e-3  # z-scored whole
        # the brain keeps its intensities up to one affine map
        x, y = image[b, 0][brain[b]].double(), sample[brain[b]].double()
        slope, intercept = np.polyfit(x.numpy(), y.numpy(), 1)
        assert np.abs(slope * x.numpy() + intercept - y.numpy()).max() < 1e-4 and slope > 0
        rings = {
            "csf": (distance[b] > 0) & (distance[b] <= 2),
            "skull": (distance[b] > 2) & (distance[b] <= 6),
            "scalp": (distance[b] > 6) & (distance[b] <= 10),
            "background": distance[b] > 10,
        }
        value = {}
        for name, ring in rings.items():
            assert ring.any(), name
            assert float(sample[ring].std()) < 1e-5 if ring.sum() > 1 else True  # one level per ring
            value[name] = float(sample[ring].mean())
        assert value["scalp"] > value["csf"] > value["skull"] > value["background"]
        # levels relative to the brain's bright level: scalp 1.2, CSF 0.2 above the (zero) background
        ratio = (value["scalp"] - value["background"]) / (value["csf"] - value["background"])
        assert abs(ratio - 6.0) < 1e-3


def test_head_is_reproducible_and_random_settings_vary():
    image, label, _, distance = _brain(2, batch=4)
    augment = AppearanceAugment(("head",), ALWAYS, spacing_mm=1.0)

    def run(seed):
        return augment(
            np.random.default_rng(seed), torch.Generator().manual_seed(seed), image, label, distance
        )

    assert torch.equal(run(5), run(5))
    out = run(5)
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # thickness, levels, texture differ per sample
    # without a given mask the brain is found from the image itself, with the same result here
    found = augment(np.random.default_rng(5), torch.Generator().manual_seed(5), image, label)
    assert float(((found - out).abs() > 1e-4).float().mean()) < 0.01


def _slices(cases: int = 4, size: int = 40) -> list[dict]:
    """Cached 2D items as the task methods hold them: (1, X, Y, 1) z-scored slices of a uniform brain on a noisy
    background and (X, Y, 1) labels where label 1 is exactly the brain."""
    image, _, brain, _ = _brain(2, size=size, batch=cases)
    image = brain[:, None].float() + 0.02 * torch.rand(
        image.shape, generator=torch.Generator().manual_seed(0)
    )
    items = []
    for k in range(cases):
        shifted = torch.roll(image[k, 0], shifts=(k - 2, 2 - k), dims=(0, 1))
        mask = torch.roll(brain[k], shifts=(k - 2, 2 - k), dims=(0, 1))
        normalised = (shifted - shifted.mean()) / shifted.std()
        items.append({"image": normalised[None, ..., None], "label": mask.long()[..., None], "task": 0})
    return items


def test_task_patches_keep_image_brain_and_label_aligned_through_margin_and_warp():
    sampler = PatchSampler(_slices(), (32, 32), 2, foreground_prob=0.5)
    batches = TaskBatches(
        sampler, PipelineSettings(appearance=("head",)), torch.device("cpu"), spacing_mm=1.0
    )
    assert batches.margin == 30 and batches.images[0].shape == (1, 100, 100, 1)
    # dark head layers only, so that the brain stays the brightest thing in every patch
    dark = HeadParams(
        csf_level=(0.0, 0.1), skull_level=(0.0, 0.1), scalp_level=(0.1, 0.3), marrow_prob=0.0,
        tissue_level=(0.1, 0.3), texture_max=0.0, noise_max=0.01,
    )  # fmt: skip
    batches.appearance = AppearanceAugment(("head",), ALWAYS, spacing_mm=1.0, head=dark)
    dice, empty = [], 0
    for step in range(12):
        batch = batches(0, 0, step, 4)
        for b in range(4):
            target = batch["target"][b] > 0
            if not target.any():
                empty += 1  # a patch in the margin: head and background only
                continue
            sample = batch["image"][b, 0]
            bright = sample > _midpoint(sample, target)
            score = 2 * float((bright & target).sum()) / float(bright.sum() + target.sum())
            dice.append((int(target.sum()), score))
    large = [score for size, score in dice if size >= 50]  # small pieces: boundary voxels dominate
    assert min(large) > 0.9 and np.mean(large) > 0.97 and len(large) > 12 and empty + len(dice) == 48


def _midpoint(sample: torch.Tensor, target: torch.Tensor) -> float:
    """Halfway between the brain's median and the median of everything outside it."""
    inside = torch.median(sample[target])
    outside = torch.median(sample[~target]) if (~target).any() else inside - 1
    return float((inside + outside) / 2)


def test_lcs_head_acts_on_the_atlas_grid_and_keeps_the_network_padding_zero():
    image, label, _, _ = _brain(3, size=18, batch=3)
    items = [
        {"image": ((image[k] - image[k].mean()) / image[k].std()), "label": label[k], "task": 0}
        for k in range(3)
    ]
    prep = Preprocessing.from_dict({"spatial_dims": 3, "spacing": [2, 2, 2], "patch_size": [20, 20, 20]})
    config = network_config_from_dict(
        {"arch": "lcs", "spatial_dims": 3, "out_channels": 1, "channels": [4, 8, 16]}
    )
    method = LCSMethod(items[0]["image"][0], items[0]["label"], [1, 2], config, prep)
    method.prepare_items(items[1:])
    batches = LCSBatches(method, items[1:], PipelineSettings(appearance=("head",)), torch.device("cpu"), 2.0)
    batches.appearance = AppearanceAugment(("head",), ALWAYS, spacing_mm=2.0)
    batch = batches(0, 0, 0, 2)
    assert batch["image"].shape == (2, 1, 20, 20, 20) and method.pads == [(1, 1)] * 3
    frame = torch.ones(20, 20, 20, dtype=torch.bool)
    frame[1:-1, 1:-1, 1:-1] = False
    assert torch.equal(batch["image"][:, 0][:, frame], torch.zeros(2, int(frame.sum())))
    inner = batch["image"][:, 0, 1:-1, 1:-1, 1:-1]
    assert torch.allclose(inner.mean(dim=(1, 2, 3)), torch.zeros(2), atol=0.2)  # z-scored on the atlas grid
    labels = [item["label"] for item in items[1:]]  # padded by prepare_items
    for b in range(2):  # labels untouched: the target is the chosen labels of one cached volume
        chosen = method.atlas_label[batch["atlas_mask"][b, 0].bool()].unique()
        target = batch["target"][b, 0].bool()
        assert any(torch.equal(target, torch.isin(label, chosen)) for label in labels)

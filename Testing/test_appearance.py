"""Appearance augmentation (bias field, gamma, thick slices, noise, label-map synthesis): each keeps the labels
untouched and changes the intensities as specified."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from LabelSharingSegLib.engine.errors import InputError
from lsseg_training.appearance import (
    APPEARANCE_CHOICES,
    AppearanceAugment,
    AppearanceParams,
    bias_field,
    blur,
    gamma,
    parse_appearance,
    synthesize,
    thick_slices,
)


def _phantom(dims: int = 3, batch: int = 2, size: int = 24):
    """Non-negative image of two structures on a textured background, and its label map."""
    rng = np.random.default_rng(0)
    shape = (size,) * dims
    grid = np.indices(shape)
    label = np.zeros((batch, *shape), dtype=np.int64)
    label[:, ((grid - size / 2) ** 2).sum(0) < (size / 4) ** 2] = 1
    label[(slice(None),) + tuple(slice(2, 8) for _ in range(dims))] = 2
    image = 1.0 + 0.5 * label + rng.uniform(0, 0.2, size=label.shape)
    return torch.as_tensor(image[:, None], dtype=torch.float32), torch.as_tensor(label)


def test_bias_field_multiplies_by_a_smooth_positive_field():
    image, _ = _phantom()
    control = np.full((2, 1, 4, 4, 4), 0.2)
    torch.testing.assert_close(bias_field(image, control), image * np.exp(0.2))  # constant log field
    control = np.random.default_rng(1).normal(0, 0.3, size=(2, 1, 4, 4, 4))
    ratio = torch.log(bias_field(image, control) / image)
    assert ratio.min() >= control.min() - 1e-5 and ratio.max() <= control.max() + 1e-5  # interpolated field
    step = (ratio[..., 1:] - ratio[..., :-1]).abs().max()
    assert step < 0.5 * (control.max() - control.min()) / 4  # smooth: small change between neighbours


def test_gamma_keeps_order_and_range_and_changes_contrast():
    image, _ = _phantom(dims=2)
    out = gamma(image, np.array([[2.0], [1.0]]))
    top = image[0].max()
    torch.testing.assert_close(out[0], top * (image[0] / top) ** 2)
    torch.testing.assert_close(out[1], image[1])  # gamma 1: unchanged
    assert torch.equal(torch.argsort(out[0].flatten()), torch.argsort(image[0].flatten()))


@pytest.mark.parametrize("dims", [2, 3])
def test_thick_slices_blur_one_axis_only(dims):
    size = 16
    axis_values = torch.arange(size, dtype=torch.float32)
    along_other = axis_values.view(1, 1, 1, size, *([1] * (dims - 2))).expand(
        1, 1, size, size, *([size] * (dims - 2))
    )
    # constant along axis 0: thick slices along axis 0 change nothing
    torch.testing.assert_close(thick_slices(along_other.clone(), 0, 4.0), along_other, atol=1e-5, rtol=0)
    alternating = (-1.0) ** torch.arange(size, dtype=torch.float32)
    stripes = alternating.view(1, 1, size, *([1] * (dims - 1))).expand(1, 1, *([size] * dims))
    out = thick_slices(stripes.clone(), 0, 4.0)
    assert out.abs().mean() < 0.2 * stripes.abs().mean()  # detail finer than the slice is lost


def test_blur_keeps_constant_images_and_sigma_zero():
    image, _ = _phantom(dims=2)
    torch.testing.assert_close(blur(image, np.zeros((2, 1))), image)
    flat = torch.full((2, 1, 10, 10), 3.0)
    torch.testing.assert_close(blur(flat, np.array([[1.0], [0.5]])), flat)
    blurred = blur(image, np.array([[1.0], [0.0]]))
    assert blurred[0].std() < image[0].std() and torch.equal(blurred[1], image[1])


def test_synthesis_draws_each_label_from_its_own_distribution():
    image, label = _phantom(size=32)
    means = np.array([[[0.0, 0.2, 0.8]], [[0.0, 0.9, 0.1]]])
    stds = np.array([[[0.0, 0.05, 0.02]], [[0.0, 0.03, 0.04]]])
    generator = torch.Generator().manual_seed(0)
    out = synthesize(image, label, means, stds, generator)
    for b in range(2):
        for k in (1, 2):
            values = out[b, 0][label[b] == k]
            assert abs(float(values.mean()) - means[b, 0, k]) < 0.01
            assert abs(float(values.std()) - stds[b, 0, k]) < 0.01
        background = label[b] == 0
        torch.testing.assert_close(out[b, 0][background], (image[b, 0] / image[b, 0].max())[background])


def _all_on(**kwargs) -> AppearanceParams:
    probs = {f"{n}_prob": 1.0 for n in APPEARANCE_CHOICES}
    return AppearanceParams(**{**probs, **kwargs})


@pytest.mark.parametrize("name", [n for n in APPEARANCE_CHOICES if n != "head"])  # head: test_head_appearance
def test_each_augmentation_keeps_labels_and_normalised_scale(name):
    image, label = _phantom()
    image = (image - image.mean()) / image.std()  # as the model grid holds it (z-score)
    before_label = label.clone()
    augment = AppearanceAugment((name,), _all_on())
    generator = torch.Generator().manual_seed(3)
    out = augment(np.random.default_rng(3), generator, image.clone(), label)
    assert torch.equal(label, before_label)
    assert out.shape == image.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, image, atol=1e-3)
    dims = (2, 3, 4)
    if name == "noise":
        sigma = (out - image).std(dim=dims)
        assert float(sigma.max()) <= 0.1 * 1.1  # std drawn in [0, noise_max]
        assert abs(float((out - image).mean())) < 0.01
    else:  # scanner-like changes are mapped back to the sample's own mean and std
        torch.testing.assert_close(out.mean(dim=dims), image.mean(dim=dims), atol=1e-4, rtol=0)
        torch.testing.assert_close(out.std(dim=dims), image.std(dim=dims), atol=1e-4, rtol=1e-4)


def test_probability_zero_changes_nothing_and_parse():
    image, label = _phantom(dims=2)
    off = AppearanceParams(**{f"{n}_prob": 0.0 for n in APPEARANCE_CHOICES})
    out = AppearanceAugment(APPEARANCE_CHOICES, off)(
        np.random.default_rng(0), torch.Generator(), image, label
    )
    assert torch.equal(out, image)
    assert parse_appearance("none") == () and parse_appearance("all") == APPEARANCE_CHOICES
    assert parse_appearance("synth, bias") == ("bias", "synth")
    with pytest.raises(InputError, match="unknown appearance augmentation fog"):
        parse_appearance("bias,fog")

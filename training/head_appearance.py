"""Whole-head appearance around a brain-only training image (``--appearance head``), batched on the device.

Training images are brain-only templates: the brain on a near-empty background. A scan as it comes from the
scanner shows the brain inside layers that the network has never seen: a rim of cerebrospinal fluid, the skull
(dark on T1, often with bright marrow between its tables), the scalp (bright fat, medium muscle), and beyond it
air with noise, or the neck and face cut by the field of view. This module paints such layers outside the
brain of each chosen sample, with random thickness, a smooth random wobble of every boundary, random intensity
per layer and random texture (domain randomisation as SynthSeg does it, Billot et al. 2023), then z-scores
the whole sample as inference z-scores a whole-head scan. Voxels of the brain keep their intensities up to
that affine renormalisation, and labels never change.

Layers are placed by the Euclidean distance from the brain, found once per cached training image on the CPU
(:func:`brain_distances`) and carried with the image through cropping and warping, so that each step only
draws and paints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class HeadParams:
    # layer thickness ranges (mm), outward from the brain
    csf_mm: tuple[float, float] = (0.5, 3.0)
    skull_mm: tuple[float, float] = (3.0, 9.0)
    scalp_mm: tuple[float, float] = (3.0, 10.0)
    wobble_mm: float = 1.5  # std of the smooth random displacement of every layer boundary
    # intensity ranges relative to the brain's bright level (its 99th percentile, white matter on T1)
    csf_level: tuple[float, float] = (0.03, 0.4)
    skull_level: tuple[float, float] = (0.0, 0.25)
    marrow_prob: float = 0.5  # bright marrow between the skull's tables
    marrow_level: tuple[float, float] = (0.3, 1.0)
    scalp_level: tuple[float, float] = (0.4, 1.5)
    tissue_prob: float = 0.6  # neck / face: soft tissue beyond the scalp on one random side
    tissue_level: tuple[float, float] = (0.15, 0.9)
    texture_max: float = 0.35  # relative amplitude of the smooth texture inside the painted layers
    background_level: tuple[float, float] = (0.0, 0.05)
    noise_max: float = 0.05  # Rician noise std outside the brain
    cut_prob: float = 0.3  # field of view cut: nothing but zeros beyond a random plane (outside the brain)
    margin_mm: float = 30.0  # 2D/3D task patches may reach this far past the training image (head space)


def brain_mask(image: np.ndarray) -> np.ndarray:
    """The brain of one brain-only training image (2D or 3D): above a tenth of its bright level both as it is
    and after a light smoothing (the background holds noise), the largest connected part, holes (ventricles)
    filled."""
    from scipy import ndimage

    x = np.asarray(image, dtype=np.float32)
    x = x - x.min()
    smooth = ndimage.gaussian_filter(x, 1.0)
    top = float(np.percentile(smooth, 99.0))
    threshold = 0.1 * (top if top > 0 else 1.0)
    mask = (smooth > threshold) & (x > threshold)  # smoothed: no noise specks; raw: no blur-grown rim
    parts, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, parts, index=range(1, count + 1))
        mask = parts == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def brain_distance(image: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Distance (mm) of every voxel of one brain-only image (2D or 3D) from its brain, 0 inside."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~brain_mask(image), sampling=spacing_mm).astype(np.float32)


def brain_distances(images: list[torch.Tensor], spatial_dims: int, spacing_mm: float) -> list[torch.Tensor]:
    """Brain distance maps (X, Y[, Z]) of cached (C, X, Y, Z) images from channel 0, found once when the
    cache is built (the layers follow them at every step); 2D bundles hold slices along the third axis, each
    found on its own."""
    maps = []
    for image in images:
        volume = image[0].cpu().numpy()
        if spatial_dims == 2:
            found = np.stack(
                [brain_distance(volume[..., k], spacing_mm) for k in range(volume.shape[-1])], axis=-1
            )
        else:
            found = brain_distance(volume, spacing_mm)
        maps.append(torch.as_tensor(found))
    return maps


def smooth_field(
    rng: np.random.Generator, batch: int, shape: tuple[int, ...], points: int, device: torch.device
) -> torch.Tensor:
    """(B, *S) smooth random field of unit standard deviation at the control points."""
    control = rng.normal(0.0, 1.0, size=(batch, 1) + (points,) * len(shape)).astype(np.float32)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(torch.as_tensor(control, device=device), size=shape, mode=mode, align_corners=True)[
        :, 0
    ]


def _coords(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(dims, *S) voxel coordinates scaled to -1..1."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], size) -> np.ndarray:
    return rng.uniform(bounds[0], bounds[1], size=size)


def add_head(
    rng: np.random.Generator,
    generator: torch.Generator,
    image: torch.Tensor,
    distance: torch.Tensor,
    params: HeadParams = HeadParams(),
) -> torch.Tensor:
    """Paint a random head around the brain of every sample of (B, C, *S) ``image`` and z-score each sample
    and channel; ``distance``: (B, *S) millimetres from the brain, 0 inside it. See the module docstring."""
    p = params
    batch, channels, *spatial = image.shape
    shape = tuple(spatial)
    device = image.device
    dims = tuple(range(2, image.ndim))
    brain = distance <= 0
    x = image.float() - image.float().amin(dim=dims, keepdim=True)
    levels = torch.ones(batch, channels, device=device)
    for b in range(batch):
        inside = brain[b]
        for c in range(channels):
            if int(inside.sum()) < 16:  # (almost) no brain in the patch: its brightest voxel sets the scale
                levels[b, c] = x[b, c].max().clamp_min(1e-6)
                continue
            values = x[b, c][inside]
            values = values[:: max(1, values.numel() // 20_000)]  # a strided sample: quantiles sort
            levels[b, c] = torch.quantile(values, 0.99).clamp_min(1e-6)
    x = x / levels.view(batch, channels, *([1] * len(shape)))
    distance = distance + p.wobble_mm * smooth_field(rng, batch, shape, 5, device)
    distance = torch.where(brain, torch.zeros_like(distance), distance.clamp_min(1e-3))

    csf = _uniform(rng, p.csf_mm, batch)
    skull = _uniform(rng, p.skull_mm, batch)
    scalp = _uniform(rng, p.scalp_mm, batch)
    marrow = rng.random(batch) < p.marrow_prob
    tissue = rng.random(batch) < p.tissue_prob
    direction = rng.normal(0.0, 1.0, size=(batch, len(shape)))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-12
    offset = rng.uniform(-0.3, 0.6, size=batch)
    cut = rng.random(batch) < p.cut_prob
    cut_axis = rng.integers(len(shape), size=batch)
    cut_side = rng.choice([-1.0, 1.0], size=batch)
    cut_at = rng.uniform(0.5, 1.0, size=batch)
    layer_levels = {
        name: _uniform(rng, bounds, (batch, channels))
        for name, bounds in (
            ("csf", p.csf_level),
            ("skull", p.skull_level),
            ("marrow", p.marrow_level),
            ("scalp", p.scalp_level),
            ("tissue", p.tissue_level),
            ("background", p.background_level),
        )
    }
    texture = _uniform(rng, (0.0, p.texture_max), (batch, channels))
    noise = _uniform(rng, (0.0, p.noise_max), batch)

    def view(values) -> torch.Tensor:
        """(B,) or (B, C) values -> a tensor broadcasting over (B, C, *S)."""
        t = torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)
        if t.ndim == 1:
            t = t[:, None]
        return t.view(batch, t.shape[1], *([1] * len(shape)))

    d = distance[:, None]  # (B, 1, *S)
    e1, e2, e3 = view(csf), view(csf + skull), view(csf + skull + scalp)
    painted = view(layer_levels["background"]).expand(batch, channels, *shape)
    coords = _coords(shape, device)  # (dims, *S)
    side = torch.einsum(
        "bd,d...->b...", torch.as_tensor(direction, dtype=torch.float32, device=device), coords
    )
    neck = (side[:, None] > view(offset)) & view(tissue).bool()
    painted = torch.where(neck, view(layer_levels["tissue"]), painted)
    painted = torch.where(d <= e3, view(layer_levels["scalp"]), painted)
    painted = torch.where(d <= e2, view(layer_levels["skull"]), painted)
    in_marrow = (d > e1 + view(skull / 3.0)) & (d <= e2 - view(skull / 3.0)) & view(marrow).bool()
    painted = torch.where(in_marrow, view(layer_levels["marrow"]), painted)
    painted = torch.where(d <= e1, view(layer_levels["csf"]), painted)
    grain = smooth_field(rng, batch * channels, shape, 8, device).view(batch, channels, *shape)
    painted = painted * (1.0 + view(texture) * grain).clamp_min(0.0)
    sigma = view(noise)
    real = painted + torch.randn(painted.shape, generator=generator, device=device) * sigma
    imaginary = torch.randn(painted.shape, generator=generator, device=device) * sigma
    painted = torch.sqrt(real * real + imaginary * imaginary)
    if cut.any():
        position = coords[torch.as_tensor(cut_axis, device=device)][:, None]  # (B, 1, *S)
        dropped = (position * view(cut_side) > view(cut_at)) & view(cut).bool()
        painted = torch.where(dropped, torch.zeros_like(painted), painted)
    out = torch.where(brain[:, None], x, painted)
    centred = out - out.mean(dim=dims, keepdim=True)
    return centred / centred.std(dim=dims, keepdim=True).clamp_min(1e-6)

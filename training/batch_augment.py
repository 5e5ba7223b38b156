"""Batched augmentation on the training device: one ``grid_sample`` warps a whole batch (random rotation, scaling
and a smooth elastic displacement), image and label through the *same* grid (image linear, label nearest, so a
label value is never invented), then batched intensity noise, scale and shift.

Every random parameter of a sample is drawn from the step's numpy generator (small arrays: angles, factors,
coarse elastic control points), so they are the same on every device; only full-size noise is drawn on the
device, from a ``torch.Generator`` seeded from the same step generator. A sample that draws no transform is
returned bit-identical.

The ranges match the per-sample MONAI pipeline they replace (``samples.build_augmentation``): rotation up to
0.26 rad per axis and scaling by up to 15 % with probability 0.3, Gaussian noise (std 0.05, probability 0.15),
intensity scale (up to 15 %) and shift (up to 0.1), each with probability 0.3; the elastic displacement is new.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SpatialParams:
    prob: float = 0.3  # chance a sample is rotated and scaled
    rotate: float = 0.26  # radians, each axis
    scale: float = 0.15  # factor 1 +- scale, each axis
    elastic_prob: float = 0.2  # chance a sample gets an elastic displacement
    elastic_voxels: float = 2.0  # std of the control-point displacement, voxels
    elastic_points: int = 5  # control points per axis


@dataclass(frozen=True)
class IntensityParams:
    noise_prob: float = 0.15
    noise_std: float = 0.05
    scale_prob: float = 0.3
    scale: float = 0.15
    shift_prob: float = 0.3
    shift: float = 0.1


def device_generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded from the step's generator (for full-size noise)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(rng.integers(2**62)))
    return generator


def _rotation(rng: np.random.Generator, dims: int, limit: float) -> np.ndarray:
    if dims == 2:
        a = rng.uniform(-limit, limit)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    matrix = np.eye(3)
    for axis in range(3):
        a = rng.uniform(-limit, limit)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        matrix = matrix @ r
    return matrix


def _centred_coords(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(dims, *shape) voxel coordinates relative to the patch centre."""
    axes = [torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2.0 for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def grid_from_voxel_map(source: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, dims, *shape) centred source voxel coordinates -> a ``grid_sample`` grid (B, *shape, dims) with
    ``align_corners=True`` (grid_sample wants the last axis first)."""
    dims = len(shape)
    half = torch.tensor([max((n - 1) / 2.0, 0.5) for n in shape], device=source.device)
    normalised = source / half.view(1, dims, *([1] * dims))
    return normalised.movedim(1, -1).flip(-1)


def random_spatial_grid(
    rng: np.random.Generator,
    batch: int,
    shape: tuple[int, ...],
    device: torch.device,
    params: SpatialParams = SpatialParams(),
) -> tuple[torch.Tensor | None, np.ndarray]:
    """The (B,) bool mask of the samples that draw a spatial transform and a ``grid_sample`` grid for those
    samples only (None when there are none). Output voxel p samples the input at ``M p + d(p)`` about the patch
    centre (M: rotation and scaling, d: the elastic displacement)."""
    dims = len(shape)
    matrices = np.repeat(np.eye(dims)[None], batch, axis=0)
    affine = rng.random(batch) < params.prob
    elastic = rng.random(batch) < params.elastic_prob
    control = np.zeros((batch, dims) + (params.elastic_points,) * dims, dtype=np.float32)
    for b in range(batch):
        if affine[b]:
            scale = np.diag(rng.uniform(1.0 - params.scale, 1.0 + params.scale, size=dims))
            matrices[b] = _rotation(rng, dims, params.rotate) @ scale
        if elastic[b]:
            control[b] = rng.normal(0.0, params.elastic_voxels, size=control.shape[1:])
    moved = affine | elastic
    if not moved.any():
        return None, moved
    chosen = np.flatnonzero(moved)
    coords = _centred_coords(shape, device).reshape(dims, -1)
    m = torch.as_tensor(matrices[chosen], dtype=torch.float32, device=device)
    source = (m @ coords).reshape(len(chosen), dims, *shape)
    if elastic[chosen].any():
        mode = "bilinear" if dims == 2 else "trilinear"
        field = F.interpolate(
            torch.as_tensor(control[chosen], device=device), size=shape, mode=mode, align_corners=True
        )
        source = source + field
    return grid_from_voxel_map(source, shape), moved


def warp(
    image: torch.Tensor, label: torch.Tensor, grid: torch.Tensor | None, moved: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp the ``moved`` samples of image (B, C, *S) linearly and of label (B, *S) by nearest neighbour
    through the same grid (one row per moved sample); the other samples are returned unchanged."""
    if grid is None:
        return image, label
    index = torch.as_tensor(np.flatnonzero(moved), device=image.device)
    warped = F.grid_sample(
        image[index].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    warped_label = F.grid_sample(
        label[index][:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True
    )[:, 0]
    image = image.float().index_copy(0, index, warped)
    label = label.index_copy(0, index, warped_label.round().to(label.dtype))
    return image, label


def vary_intensity(
    rng: np.random.Generator,
    generator: torch.Generator,
    image: torch.Tensor,
    params: IntensityParams = IntensityParams(),
) -> torch.Tensor:
    """Per-sample Gaussian noise, intensity scale and shift on a (B, C, *S) batch."""
    batch = image.shape[0]
    view = (batch,) + (1,) * (image.ndim - 1)
    noisy = rng.random(batch) < params.noise_prob
    scaled = rng.random(batch) < params.scale_prob
    factors = np.where(scaled, 1.0 + rng.uniform(-params.scale, params.scale, size=batch), 1.0)
    shifted = rng.random(batch) < params.shift_prob
    offsets = np.where(shifted, rng.uniform(-params.shift, params.shift, size=batch), 0.0)
    out = image
    if noisy.any():
        std = torch.as_tensor(np.where(noisy, params.noise_std, 0.0), dtype=image.dtype, device=image.device)
        noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
        out = out + noise * std.view(view)
    if scaled.any():
        out = out * torch.as_tensor(factors, dtype=image.dtype, device=image.device).view(view)
    if shifted.any():
        out = out + torch.as_tensor(offsets, dtype=image.dtype, device=image.device).view(view)
    return out

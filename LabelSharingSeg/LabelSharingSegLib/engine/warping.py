"""Sampling volumes at world points: the one resampling primitive registration-based propagation uses.

Grids are given by a 4x4 voxel -> RAS mm affine; arrays are indexed [i, j, k]. Points outside a grid read zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def grid_points(shape: Sequence[int], affine: np.ndarray) -> torch.Tensor:
    """World coordinates (float64, (*shape, 3)) of every voxel centre of a grid."""
    axes = [torch.arange(int(s), dtype=torch.float64) for s in shape]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return apply_affine(np.asarray(affine, dtype=np.float64), ijk)


def apply_affine(matrix: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """Apply a 4x4 matrix to points (..., 3)."""
    m = torch.as_tensor(np.asarray(matrix, dtype=np.float64))
    return points.double() @ m[:3, :3].T + m[:3, 3]


def sample(volumes: torch.Tensor, affine: np.ndarray, world: torch.Tensor, *, mode: str) -> torch.Tensor:
    """Sample (C, X, Y, Z) volumes on the grid ``affine`` at world points (*shape, 3) -> (C, *shape)."""
    voxel = apply_affine(np.linalg.inv(np.asarray(affine, dtype=np.float64)), world)
    size = torch.tensor(volumes.shape[1:], dtype=torch.float64)
    # grid_sample wants (x, y, z) = (last, middle, first) array axis, in [-1, 1] with align_corners=True
    normalised = (2.0 * voxel / (size - 1).clamp(min=1) - 1.0).flip(-1).float()
    out = F.grid_sample(
        volumes[None].float(), normalised[None], mode=mode, padding_mode="zeros", align_corners=True
    )
    return out[0]


def displaced_points(
    points: torch.Tensor, displacement: np.ndarray, field_affine: np.ndarray
) -> torch.Tensor:
    """``points + u(points)`` for a displacement field (3, X, Y, Z) in RAS mm on the grid ``field_affine``."""
    field = torch.as_tensor(np.asarray(displacement, dtype=np.float32))
    offsets = sample(field, field_affine, points, mode="bilinear")
    return points + offsets.movedim(0, -1).double()


def jacobian_determinant(displacement: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """det(I + du/dx) per voxel of a displacement field (3, X, Y, Z) in RAS mm; <= 0 where space folds."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    # derivatives along the array axes, then chained to world axes: du/dx = du/dijk @ inv(A)
    per_axis = np.stack(
        [np.stack(list(np.gradient(np.asarray(u, np.float64))), axis=-1) for u in displacement], axis=-2
    )
    world = per_axis @ np.linalg.inv(linear)
    return np.linalg.det(np.eye(3) + world)

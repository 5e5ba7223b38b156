"""Whether drawn voxels lie inside a grid's field of view (numpy only, so the Slicer scene can use it without
torch): a label drawn partly outside the atlas would otherwise lose that part without a word."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def outside_grid(
    mask: np.ndarray, affine: np.ndarray, grid_shape: Sequence[int], grid_affine: np.ndarray
) -> np.ndarray:
    """Boolean array (mask's shape): voxels of ``mask`` whose centre lies outside the grid (``grid_shape``,
    ``grid_affine``), i.e. beyond the outer faces of its outermost voxels. Only the mask's voxels are mapped."""
    mask = np.asarray(mask, dtype=bool)
    where = np.argwhere(mask)
    outside = np.zeros(mask.shape, dtype=bool)
    if not len(where):
        return outside
    to_grid = np.linalg.inv(np.asarray(grid_affine, np.float64)) @ np.asarray(affine, np.float64)
    index = where @ to_grid[:3, :3].T + to_grid[:3, 3]
    upper = np.asarray(grid_shape, np.float64) - 0.5
    beyond = ((index < -0.5 - 1e-6) | (index > upper + 1e-6)).any(axis=1)
    outside[tuple(where[beyond].T)] = True
    return outside

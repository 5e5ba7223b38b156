"""Anatomical planes of 2D tasks: which world axes a slice's two array axes and its normal follow.

A 2D task is trained on slices of one plane, with the slice array axes along fixed world (RAS) directions
(the convention of ``lsseg data build``): axial (R, A; normal S), sagittal (A, S; normal R), coronal (R, S;
normal A). To segment a volume, whatever its voxel order or obliquity, it is resampled onto a grid whose axes
follow these directions, cut into slices along the normal, and the result is resampled back onto the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PLANES = ("axial", "sagittal", "coronal")
# context kept around the imaged object when a grid is limited to it: windows of pure background, which no
# training slice had, are where a 2D network draws stray labels
OBJECT_MARGIN_MM = 10.0
# world axes (0 = R, 1 = A, 2 = S) of the slice's first array axis, second array axis and normal
PLANE_AXES: dict[str, tuple[int, int, int]] = {
    "axial": (0, 1, 2),
    "sagittal": (1, 2, 0),
    "coronal": (0, 2, 1),
}


def plane_grid(
    affine: np.ndarray,
    shape: Sequence[int],
    plane: str,
    in_plane_spacing: Sequence[float],
    within: np.ndarray | None = None,
    margin_mm: float = OBJECT_MARGIN_MM,
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(affine, shape) of a grid covering the volume (``affine``, ``shape``) with its axes along ``plane``'s
    world directions: ``in_plane_spacing`` in the slice, the volume's own spacing along the normal (the
    voxel axis closest to it). The grid starts at the volume's lowest world corner, so a volume already in
    that plane keeps its slice positions. ``within``: a mask of the volume's voxels to cover (the imaged
    object); the grid then spans only them plus ``margin_mm``, on the same lattice of slice positions."""
    u, v, n = PLANE_AXES[plane]
    affine = np.asarray(affine, dtype=np.float64)
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    low, high = world.min(axis=1), world.max(axis=1)
    origin = low.copy()  # the lattice of slice positions starts at the volume's lowest corner
    if within is not None and within.any():
        voxels = np.argwhere(within).T.astype(np.float64)
        inside = affine[:3, :3] @ voxels + affine[:3, 3:4]
        low = np.maximum(low, inside.min(axis=1) - margin_mm)
        high = np.minimum(high, inside.max(axis=1) + margin_mm)
    columns = affine[:3, :3]
    normal_axis = int(np.argmax(np.abs(columns[n]) / np.linalg.norm(columns, axis=0)))
    spacing = {u: float(in_plane_spacing[0]), v: float(in_plane_spacing[1])}
    spacing[n] = float(np.linalg.norm(columns[:, normal_axis]))
    out = np.zeros((4, 4))
    out[3, 3] = 1.0
    size = []
    for column, axis in enumerate((u, v, n)):
        start = origin[axis] + np.floor((low[axis] - origin[axis]) / spacing[axis] + 1e-3) * spacing[axis]
        out[axis, column] = spacing[axis]
        out[axis, 3] = start
        size.append(int(np.floor((high[axis] - start) / spacing[axis] + 1e-3)) + 1)
    return out, (size[0], size[1], size[2])

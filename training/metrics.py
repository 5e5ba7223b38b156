"""Segmentation metrics on label maps: Dice and the 95th-percentile symmetric Hausdorff distance (HD95) in mm.

Conventions (also in the evaluation summary):

* Dice of a label = 2|P & T| / (|P| + |T|); when the label is absent from both prediction and truth it is
  undefined and reported as NaN (skipped by means), never as 1.
* HD95 = the 95th percentile of the pooled surface-to-surface distances in both directions, in millimetres,
  honouring the voxel spacing (the affine's column lengths). NaN when both are empty, +inf when exactly one
  is empty (no surface to measure against).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def voxel_spacing(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel edge lengths in mm (column norms of the affine's 3x3 part)."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    p = np.asarray(prediction, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    eroded = ndimage.binary_erosion(
        mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0
    )
    return mask & ~eroded


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing=None) -> float:
    """95th percentile symmetric surface distance in mm; NaN if both empty, inf if one is empty."""
    p = np.asarray(prediction, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    spacing = tuple(spacing) if spacing is not None else (1.0,) * p.ndim
    if not p.any() and not t.any():
        return float("nan")
    if not p.any() or not t.any():
        return float("inf")
    surface_p, surface_t = _surface(p), _surface(t)
    # distance of every voxel to the nearest surface voxel of the other mask
    to_t = ndimage.distance_transform_edt(~surface_t, sampling=spacing)
    to_p = ndimage.distance_transform_edt(~surface_p, sampling=spacing)
    distances = np.concatenate([to_t[surface_p], to_p[surface_t]])
    return float(np.percentile(distances, 95))


def label_metrics(
    prediction: np.ndarray, truth: np.ndarray, values, spacing=None, *, with_hd95: bool = True
) -> dict[int, dict[str, float]]:
    """Per label value: dice, hd95 (mm), voxel counts of prediction and truth."""
    out = {}
    for value in values:
        p, t = prediction == value, truth == value
        out[int(value)] = {
            "dice": dice(p, t),
            "hd95": hd95(p, t, spacing) if with_hd95 else float("nan"),
            "pred_voxels": int(p.sum()),
            "true_voxels": int(t.sum()),
        }
    return out


def nanmean(values) -> float:
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(finite) / len(finite) if finite else float("nan")

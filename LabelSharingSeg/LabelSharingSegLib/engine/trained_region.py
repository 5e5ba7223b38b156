"""The region of its reference's world a task was trained on, and keeping a segmentation inside it.

Training cases built by ``lsseg data build`` lie in one world, the reference's (MNI): 2D tasks on slices cut
in a slab along their plane's normal, every case within the brain's box. A network shown only that region
labels the rest of a whole head too (face, neck, skull; on the real whole-head scan 85-95% of a 2D task's
labelled voxels lay outside its slab), so an aligned scan is segmented only inside the region. The region is
a union of boxes, each given by its low and high world position (mm) along x (R), y (A) and z (S).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .config_checks import check_number_tuple, shown
from .errors import ConfigError
from .planes import PLANE_AXES

Interval = tuple[float, float]
Box = tuple[Interval, Interval, Interval]
Region = tuple[Box, ...]
MAX_BOXES = 16
WORLD_LIMIT_MM = 1e4
# the coordinate that gives a position along each world axis, as brain atlases name it
AXIS_NAMES = ("x", "y", "z")


def read_region(where: str, value: Any) -> Region:
    """A region from JSON: a list of 1 to MAX_BOXES boxes [[x low, x high], [y ...], [z ...]]; () when absent."""
    if value is None:
        return ()
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_BOXES:
        raise ConfigError(f"{where} must be a list of 1 to {MAX_BOXES} boxes (got {shown(value)})")
    boxes = []
    for number, box in enumerate(value):
        at = f"{where}[{number}]"
        if not isinstance(box, list) or len(box) != 3:
            raise ConfigError(
                f"{at} must be [[x low, x high], [y low, y high], [z low, z high]] (got {shown(box)})"
            )
        intervals = []
        for axis, interval in zip(AXIS_NAMES, box):
            low, high = check_number_tuple(
                f"{at}.{axis}", interval, range(2, 3), -WORLD_LIMIT_MM, WORLD_LIMIT_MM
            )
            if low > high:
                raise ConfigError(f"{at}.{axis}: low {low:g} is above high {high:g}")
            intervals.append((low, high))
        boxes.append((intervals[0], intervals[1], intervals[2]))
    return tuple(boxes)


def region_to_json(region: Region) -> list:
    return [[list(interval) for interval in box] for box in region]


def _intervals(intervals: Sequence[Interval]) -> str:
    return " and ".join(f"{low:g} to {high:g}" for low, high in dict.fromkeys(intervals))


def region_text(region: Region, plane: str | None) -> str:
    """E.g. 'coronal slices at y -22 to -6 mm (x -74 to 74, z -74 to 84)', or for a 3D task 'x -74 to 74, ...'."""
    if plane is None:
        return "; ".join(
            ", ".join(f"{name} {_intervals([interval])}" for name, interval in zip(AXIS_NAMES, box)) + " mm"
            for box in region
        )
    normal = PLANE_AXES[plane][2]
    across = [a for a in range(3) if a != normal]
    within = ", ".join(f"{AXIS_NAMES[a]} {_intervals([box[a] for box in region])}" for a in across)
    return (
        f"{plane} slices at {AXIS_NAMES[normal]} {_intervals([box[normal] for box in region])} mm ({within})"
    )


def positions_in(region: Region, axis: int, positions: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
    """Which ``positions`` (mm along world ``axis``) some box of ``region`` spans, widened by ``margin_mm``."""
    inside = np.zeros(np.shape(positions), dtype=bool)
    for box in region:
        low, high = box[axis]
        inside |= (positions >= low - margin_mm) & (positions <= high + margin_mm)
    return inside


def voxels_in(region: Region, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Which voxels of a grid (``affine``: voxel -> world of the region) lie in ``region``; one float32 volume of
    positions at a time rather than a (3, N) coordinate array (a whole head at 1 mm)."""
    affine = np.asarray(affine, dtype=np.float64)
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape)
    inside = np.zeros(tuple(shape), dtype=bool)
    for box in region:
        in_box = np.ones(tuple(shape), dtype=bool)
        for axis, (low, high) in enumerate(box):
            row = affine[axis]
            position = (
                np.float32(row[0]) * i[:, None, None]
                + np.float32(row[1]) * j[None, :, None]
                + (np.float32(row[2]) * k + np.float32(row[3]))[None, None, :]
            )
            in_box &= (position >= low) & (position <= high)
        inside |= in_box
    return inside

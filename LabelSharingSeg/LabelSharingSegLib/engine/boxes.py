"""Label-dependent work in a box around each label: cost follows the labels' size, not their number.

A refine head (networks.RefineLCSNet) only looks ``REFINE_HALO`` voxels around each output voxel, so running it
on a box = the label's bounding box + the halo gives, inside the label's bounding box, exactly what running it
on the whole grid gives. Boxes start on even voxels and have even sizes (the head pools by 2 once, and its
pooling cells must coincide with those of the full grid). Labels are batched: sorted by box volume, a chunk of
labels shares one box size (each box grown to the chunk's largest, inside the grid), so the head runs once per
chunk on a stacked batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

Box = tuple[slice, ...]


def even_grid_pads(shape: Sequence[int]) -> list[tuple[int, int]]:
    """Zero padding at the end of each axis making every size even (the full grid boxes live in)."""
    return [(0, int(s) % 2) for s in shape]


def _round_even(value: int, up: bool) -> int:
    return value + (value % 2) if up else value - (value % 2)


def label_box(weights: torch.Tensor, halo: int) -> tuple[list[int], list[int]] | None:
    """(start, size) per axis of the box around the non-zero voxels of one (*grid) weight map, or None if empty.
    The grid's sizes must be even."""
    grid = list(weights.shape)
    nonzero = torch.nonzero(weights > 0)
    if nonzero.shape[0] == 0:
        return None
    low = (nonzero.min(dim=0).values - halo).clamp(min=0).tolist()
    high = (nonzero.max(dim=0).values + 1 + halo).tolist()
    starts = [_round_even(int(lo), up=False) for lo in low]
    stops = [min(g, _round_even(int(hi), up=True)) for hi, g in zip(high, grid)]
    return starts, [stop - start for start, stop in zip(starts, stops)]


def chunked_boxes(weights: torch.Tensor, halo: int, chunk: int) -> Iterator[tuple[list[int], list[Box]]]:
    """For weights (K, *grid) yield (label indices, boxes of one common size) per chunk; empty labels skipped."""
    grid = list(weights.shape[1:])
    candidates = [(k, label_box(weights[k], halo)) for k in range(weights.shape[0])]
    found = [(k, box) for k, box in candidates if box is not None]
    found.sort(key=lambda item: int(torch.tensor(item[1][1]).prod()))
    for first in range(0, len(found), chunk):
        part = found[first : first + chunk]
        size = [max(box[1][axis] for _, box in part) for axis in range(len(grid))]
        boxes = []
        for _, (starts, _) in part:
            # grow to the common size inside the grid; grid and size are even, so starts stay even
            starts = [min(start, g - s) for start, g, s in zip(starts, grid, size)]
            boxes.append(tuple(slice(start, start + s) for start, s in zip(starts, size)))
        yield [k for k, _ in part], boxes


def crop(volume: torch.Tensor, box: Box) -> torch.Tensor:
    """The box of the trailing spatial axes of ``volume``."""
    where: tuple[Any, ...] = (Ellipsis, *box)
    return volume[where]

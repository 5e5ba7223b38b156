"""Label-dependent work in a box around each label: cost follows the labels' size, not their number.

A refine head (networks.RefineLCSNet) only looks ``REFINE_HALO`` voxels around each output voxel, so running it
on a box = the label's bounding box + the halo gives, inside the label's bounding box, exactly what running it
on the whole grid gives. Labels are batched: sorted by box volume, a chunk of labels shares one box size (each
box grown to the chunk's largest, inside the grid), so the head runs once per chunk on a stacked batch. Chunks
hold boxes of similar volume (a chunk is closed when its common box would grow a member's box more than
``MAX_GROWTH`` times), so batching never multiplies the work of small labels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

Box = tuple[slice, ...]
MAX_GROWTH = 1.5


def label_box(weights: torch.Tensor, halo: int) -> tuple[list[int], list[int]] | None:
    """(start, size) per axis of the box around the non-zero voxels of one (*grid) weight map plus ``halo``
    voxels each side (inside the grid), or None if the map is empty."""
    grid = list(weights.shape)
    nonzero = torch.nonzero(weights > 0)
    if nonzero.shape[0] == 0:
        return None
    starts = (nonzero.min(dim=0).values - halo).clamp(min=0).tolist()
    stops = [min(g, int(hi)) for hi, g in zip((nonzero.max(dim=0).values + 1 + halo).tolist(), grid)]
    return [int(s) for s in starts], [stop - int(start) for start, stop in zip(starts, stops)]


def _volume(size: Sequence[int]) -> int:
    out = 1
    for s in size:
        out *= int(s)
    return out


def chunked_boxes(weights: torch.Tensor, halo: int, chunk: int) -> Iterator[tuple[list[int], list[Box]]]:
    """For weights (K, *grid) yield (label indices, boxes of one common size) per chunk of at most ``chunk``
    labels; empty labels skipped."""
    grid = list(weights.shape[1:])
    candidates = [(k, label_box(weights[k], halo)) for k in range(weights.shape[0])]
    found = [(k, box) for k, box in candidates if box is not None]
    found.sort(key=lambda item: _volume(item[1][1]))
    part: list = []
    for item in found + [None]:
        if part and (
            item is None
            or len(part) == chunk
            or _volume([max(a, b) for a, b in zip(_common(part), item[1][1])])
            > MAX_GROWTH * _volume(part[0][1][1])
        ):
            yield _boxes_of(part, grid)
            part = []
        if item is not None:
            part.append(item)


def _common(part) -> list[int]:
    return [max(box[1][axis] for _, box in part) for axis in range(len(part[0][1][1]))]


def _boxes_of(part, grid: list[int]) -> tuple[list[int], list[Box]]:
    size = _common(part)
    boxes = []
    for _, (starts, _) in part:
        starts = [min(start, g - s) for start, g, s in zip(starts, grid, size)]  # grow inside the grid
        boxes.append(tuple(slice(start, start + s) for start, s in zip(starts, size)))
    return [k for k, _ in part], boxes


def crop(volume: torch.Tensor, box: Box) -> torch.Tensor:
    """The box of the trailing spatial axes of ``volume``."""
    where: tuple[Any, ...] = (Ellipsis, *box)
    return volume[where]

"""Multi-atlas registration: the labels of several annotated cases carried onto a scan and fused by weighted vote.

This is what a clinician with a handful of annotated scans could do without any network (``lsseg evaluate
--atlas-baselines N``): every atlas case is registered onto the scan exactly as ``register-deformable`` registers
the bundle's atlas (engine/propagation.py: affine, then deformable demons), each label's mask is carried onto the
scan's grid with linear interpolation, and a voxel takes the label with the largest mean weight over the atlases,
or background where the mean weight of "no label" outweighs it (the rule ``carry_labels`` applies to one atlas).
Labels are fused a chunk at a time, so memory holds each atlas's sampling points and one chunk of weights, not
every label of every atlas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from LabelSharingSegLib.engine.errors import InputError, LabelSharingSegError
from LabelSharingSegLib.engine.propagation import register_atlas
from LabelSharingSegLib.engine.warping import sample


@dataclass(frozen=True)
class AtlasCase:
    """An annotated case used as an atlas: its image, label map (same grid) and affine, and a name for notes."""

    name: str
    image: np.ndarray
    labelmap: np.ndarray
    affine: np.ndarray


def fuse_atlases(
    atlases: Sequence[AtlasCase],
    values: Sequence[int],
    image: np.ndarray,
    affine: np.ndarray,
    chunk: int = 16,
) -> tuple[np.ndarray | None, list[str]]:
    """(label map on the scan's grid, notes). An atlas whose registration diverges is left out with a note; None
    when every one did."""
    if not atlases:
        raise InputError("multi-atlas registration needs at least one atlas case")
    if not values:
        raise InputError("multi-atlas registration needs at least one label value")
    shape = tuple(image.shape)
    points, used, notes = [], [], []
    for atlas in atlases:
        if atlas.labelmap.shape != atlas.image.shape:
            raise InputError(
                f"atlas case {atlas.name}: label map {atlas.labelmap.shape} and image {atlas.image.shape} differ"
            )
        try:
            found = register_atlas(atlas.image, atlas.affine, image, affine, stage="deformable")
        except LabelSharingSegError as error:
            notes.append(f"atlas case {atlas.name} left out: {error}")
            continue
        points.append(found.atlas_points(shape, affine))
        used.append(atlas)
    if not used:
        return None, notes

    def mean_weight(wanted: list[int], union: bool = False) -> torch.Tensor:
        """(n, *scan) mean carried weight over the atlases of each wanted label, or (1, *scan) of their union."""
        total = None
        for atlas, where in zip(used, points):
            found = [np.isin(atlas.labelmap, wanted)] if union else [atlas.labelmap == v for v in wanted]
            masks = torch.as_tensor(np.stack(found), dtype=torch.float32)
            weight = sample(masks, atlas.affine, where, mode="bilinear")
            total = weight if total is None else total + weight
        assert total is not None
        return total / len(used)

    best = torch.zeros(shape)
    best_index = torch.zeros(shape, dtype=torch.long)
    for start in range(0, len(values), chunk):
        part = list(values[start : start + chunk])
        weights = mean_weight(part)
        value, index = weights.max(dim=0)
        better = value > best
        best = torch.where(better, value, best)
        best_index = torch.where(better, index + start, best_index)
    labelled_weight = mean_weight(list(values), union=True)[0]
    lookup = torch.tensor([int(v) for v in values], dtype=torch.int32)
    labelled = (best > 0) & (best >= 1.0 - labelled_weight)
    fused = torch.where(labelled, lookup[best_index], torch.zeros_like(best_index, dtype=torch.int32))
    return fused.numpy(), notes

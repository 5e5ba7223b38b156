"""Atlas propagation by registration: carry labels drawn on an atlas onto a scan (no network).

Two stages: the affine alignment of :mod:`registration` (scan -> atlas image), then optionally a deformable
stage (:mod:`deformable`) on the atlas grid. A scan voxel at world point ``p`` sees the atlas at
``q + u(q)`` with ``q = inv(M) p`` (``M`` = alignment matrix, ``u`` = displacement, zero for affine only).
Labels travel as one-hot channels with linear interpolation, then each voxel takes the label with the
largest interpolated weight unless the background (1 - weight of the union of labels) outweighs it;
``interpolation="nearest"`` samples the masks at the nearest atlas voxel instead. Chunks of labels are
sampled at a time, keeping only the running best, so memory does not grow with the number of labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .deformable import Deformation
from .errors import InputError
from .field_of_view import outside_grid
from .registration import Alignment
from .registration_cache import affine_alignment, deformable_registration
from .warping import apply_affine, displaced_points, grid_points, sample

PROPAGATION_STAGES = ("none", "affine", "deformable")
MIN_LABEL_VOXELS = 2


@dataclass(frozen=True)
class Propagation:
    """How the atlas maps into a scan: the affine alignment (None: world coordinates) and an optional deformation."""

    alignment: Alignment | None
    deformation: Deformation | None = None

    @property
    def stage(self) -> str:
        if self.deformation is not None:
            return "deformable"
        return "affine" if self.alignment is not None else "none"

    def atlas_points(self, shape: Sequence[int], affine: np.ndarray) -> torch.Tensor:
        """World points (RAS mm, float64, (*shape, 3)) in atlas space seen by every voxel of a grid."""
        world = grid_points(shape, affine)
        if self.alignment is not None:
            world = apply_affine(np.linalg.inv(self.alignment.matrix), world)
        if self.deformation is not None:
            world = displaced_points(world, self.deformation.displacement, self.deformation.affine)
        return world


def check_drawn_masks(masks: np.ndarray, names: Sequence[str]) -> None:
    """A label of a single voxel cannot be carried anywhere meaningfully (and usually is a stray click)."""
    # one mask at a time: masks may be made lazily from a label map (memory follows one label, not K)
    counts = [int(np.count_nonzero(masks[k])) for k in range(len(names))]
    tiny = [f"{name} ({int(c)} voxel)" for name, c in zip(names, counts) if 0 < c < MIN_LABEL_VOXELS]
    if tiny:
        raise InputError(
            f"atlas label(s) of a single voxel: {', '.join(tiny[:5])}; draw at least {MIN_LABEL_VOXELS} voxels"
        )


def labelmap_on_atlas_grid(
    labelmap: np.ndarray, affine: np.ndarray, atlas_shape: Sequence[int], atlas_affine: np.ndarray
) -> tuple[np.ndarray, list[int]]:
    """A label map drawn on any grid (e.g. a resampled or cropped copy of the atlas) -> (the label map on the
    atlas grid, nearest neighbour; its label values). Refused with one line each: an empty map, a label reaching
    outside the atlas's field of view (its part outside would be silently lost) and a label too small to keep a
    voxel on the atlas grid. Memory follows one label map, not the number of labels."""
    labelmap = np.asarray(labelmap)
    if labelmap.ndim != len(atlas_shape):
        raise InputError(
            f"the drawn label map has {labelmap.ndim} dimensions; the atlas has {len(atlas_shape)}"
        )
    values = [int(v) for v in np.unique(labelmap) if v != 0]
    if not values:
        raise InputError("the drawn atlas label map is empty (no non-zero voxels)")
    leaving = sorted(
        {int(v) for v in np.unique(labelmap[outside_grid(labelmap != 0, affine, atlas_shape, atlas_affine)])}
    )
    if leaving:
        raise InputError(
            f"label(s) {', '.join(map(str, leaving[:8]))} reach outside the atlas's field of view; draw them "
            "inside the atlas image"
        )
    if tuple(labelmap.shape) == tuple(atlas_shape) and np.allclose(affine, atlas_affine, atol=1e-3):
        return labelmap, values
    on_atlas = (
        sample(
            torch.as_tensor(labelmap.astype(np.float32))[None],
            affine,
            grid_points(atlas_shape, atlas_affine),
            mode="nearest",
        )[0]
        .round()
        .numpy()
        .astype(labelmap.dtype)
    )
    lost = sorted(set(values) - {int(v) for v in np.unique(on_atlas)})
    if lost:
        raise InputError(
            f"label(s) {', '.join(map(str, lost[:8]))} keep no voxel on the atlas grid (smaller than its "
            "voxels); draw them larger"
        )
    return on_atlas, values


def register_atlas(
    atlas_image: np.ndarray,
    atlas_affine: np.ndarray,
    image: np.ndarray,
    affine: np.ndarray,
    *,
    stage: str = "deformable",
    alignment: Alignment | None = None,
    deformable_method: str = "demons",
    progress: Callable[[float, str], None] | None = None,
) -> Propagation:
    """Register the atlas onto a scan up to ``stage`` ('none', 'affine' or 'deformable'); an ``alignment``
    from an earlier run on the same scan is reused. Raises RegistrationError when a stage diverges.
    Registrations are remembered by content (registration_cache.py)."""
    if stage not in PROPAGATION_STAGES:
        raise InputError(f"propagation stage must be one of {', '.join(PROPAGATION_STAGES)}, got {stage!r}")
    if stage == "none":
        return Propagation(None)
    if alignment is None:
        alignment = affine_alignment(
            image,
            affine,
            atlas_image,
            atlas_affine,
            progress=lambda f, m: progress and progress(0.4 * f, m),
        )
    if stage == "affine":
        return Propagation(alignment)
    if progress:
        progress(0.4, "deformable registration")
    aligned = sample(
        torch.as_tensor(np.asarray(image, dtype=np.float32))[None],
        affine,
        apply_affine(alignment.matrix, grid_points(atlas_image.shape, atlas_affine)),
        mode="bilinear",
    )[0].numpy()
    deformation = deformable_registration(aligned, atlas_image, atlas_affine, method=deformable_method)
    return Propagation(alignment, deformation)


def carried_chunks(
    masks: np.ndarray,
    atlas_affine: np.ndarray,
    propagation: Propagation,
    shape: Sequence[int],
    affine: np.ndarray,
    *,
    interpolation: str = "linear",
    chunk: int = 16,
    points: torch.Tensor | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first index, weights (n, *shape)) of the atlas masks carried onto a grid, ``chunk`` labels at a time."""
    if interpolation not in ("linear", "nearest"):
        raise InputError(f"label interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    mode = "bilinear" if interpolation == "linear" else "nearest"
    if points is None:
        points = propagation.atlas_points(shape, affine)
    for start in range(0, masks.shape[0], chunk):
        part = torch.as_tensor(np.asarray(masks[start : start + chunk], dtype=np.float32))
        yield start, sample(part, atlas_affine, points, mode=mode)


def carry_labels(
    masks: np.ndarray,
    values: Sequence[int],
    atlas_affine: np.ndarray,
    propagation: Propagation,
    shape: Sequence[int],
    affine: np.ndarray,
    *,
    interpolation: str = "linear",
    chunk: int = 16,
) -> np.ndarray:
    """One label map on the grid (shape, affine): the best-weighted label, background where it outweighs all."""
    points = propagation.atlas_points(shape, affine)
    best = torch.zeros(tuple(shape))
    best_index = torch.zeros(tuple(shape), dtype=torch.long)
    union = np.zeros((1, *np.shape(masks[0])), dtype=bool)
    for k in range(len(masks)):  # one mask at a time, as above
        union[0] |= np.asarray(masks[k], dtype=bool)
    for start, weights in carried_chunks(
        masks,
        atlas_affine,
        propagation,
        shape,
        affine,
        interpolation=interpolation,
        chunk=chunk,
        points=points,
    ):
        value, index = weights.max(dim=0)
        better = value > best
        best = torch.where(better, value, best)
        best_index = torch.where(better, index + start, best_index)
    union_weight = next(
        carried_chunks(
            union, atlas_affine, propagation, shape, affine, interpolation=interpolation, points=points
        )
    )[1][0]
    lookup = torch.tensor(list(values), dtype=torch.int32)
    labelled = (best > 0) & (best >= 1.0 - union_weight)
    return torch.where(labelled, lookup[best_index], torch.zeros_like(best_index, dtype=torch.int32)).numpy()


def carry_independently(
    masks: np.ndarray,
    atlas_affine: np.ndarray,
    propagation: Propagation,
    shape: Sequence[int],
    affine: np.ndarray,
    *,
    interpolation: str = "linear",
) -> np.ndarray:
    """Each mask carried on its own (weight >= 0.5): bool (K, *shape), overlaps allowed (as LCS Table 1)."""
    points = propagation.atlas_points(shape, affine)
    out = np.zeros((masks.shape[0], *shape), dtype=bool)
    for start, weights in carried_chunks(
        masks, atlas_affine, propagation, shape, affine, interpolation=interpolation, points=points
    ):
        out[start : start + weights.shape[0]] = (weights >= 0.5).numpy()
    return out

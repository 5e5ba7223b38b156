"""Drawn atlas labels segmented through registration: carried by it (``register-affine``,
``register-deformable``) or carried and then corrected by a refine network (``lcs-refine``); see
propagation.py, deformable.py, boxes.py and networks.RefineLCSNet. Entry point: atlas_segmentation.segment_atlas_labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .atlas_brain import atlas_brain, background_level, keep_brain
from .atlas_segmentation import LCS_THRESHOLD, _default_budget_mb, check_atlas_masks, keep_most_probable
from .boxes import chunked_boxes, crop
from .bundle import Bundle
from .device import resolve_device
from .errors import InputError
from .inference import SegmentationResult, _autocast, _Reporter
from .networks import REFINE_HALO
from .preprocessing import check_image, normalise_intensity
from .propagation import Propagation, carried_chunks, carry_labels, check_drawn_masks, register_atlas
from .registration import Alignment
from .warping import apply_affine, grid_points, sample


def atlas_propagation(
    bundle: Bundle,
    image: np.ndarray,
    affine: np.ndarray,
    stage: str,
    align: bool | Alignment | None,
    report=None,
) -> Propagation:
    """Register the bundle's atlas onto a scan up to ``stage`` ('affine' or 'deformable'; see propagation.py).
    ``align=False`` starts from world coordinates; an ``Alignment`` is reused."""
    atlas_image, atlas_affine = bundle.atlas_image()
    alignment = align if isinstance(align, Alignment) else None
    if align is False:
        alignment = Alignment(np.eye(4), float("nan"))
    return register_atlas(
        atlas_image, atlas_affine, image, affine, stage=stage, alignment=alignment, progress=report
    )


def refine_inputs(
    atlas_image: np.ndarray,
    atlas_affine: np.ndarray,
    intensity,
    image: np.ndarray,
    affine: np.ndarray,
    propagation: Propagation,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scan, atlas warped onto it) on the atlas grid in scan space, normalised: (1, 1, *grid) each. Grid point q
    shows the scan at M q and the atlas at q + u(q) (see propagation.py); the scan only inside the warped
    atlas's brain (plus the margin), its background level elsewhere. Training builds its inputs with this
    same function (lsseg_training.refine_data)."""
    points = grid_points(atlas_image.shape, atlas_affine)
    # no alignment means world coordinates: the identity
    matrix = propagation.alignment.matrix if propagation.alignment is not None else np.eye(4)
    scan_points = apply_affine(matrix, points)
    scan = sample(torch.as_tensor(np.asarray(image, np.float32))[None], affine, scan_points, mode="bilinear")[
        0
    ]
    # the grid seen in scan space has affine M @ atlas_affine, so its atlas points are q + u(q)
    atlas_points = propagation.atlas_points(atlas_image.shape, matrix @ atlas_affine)
    warped = sample(
        torch.as_tensor(np.asarray(atlas_image, np.float32))[None],
        atlas_affine,
        atlas_points,
        mode="bilinear",
    )[0]
    # a whole-head scan shows skull, scalp and neck that no brain-only training scan had: it is seen through the
    # warped atlas's brain grown by a margin, as LCS sees it (atlas_brain.py). On the real whole-head scan, 116
    # fine AAL labels, the 3 mm refine bundle: 0.597 without the window, 0.640 with it (deformable 0.624)
    scan = keep_brain(scan, atlas_brain(warped.numpy(), atlas_affine), background_level(image))
    return (
        normalise_intensity(scan, intensity)[None, None],
        normalise_intensity(warped, intensity)[None, None],
    )


def refined_in_boxes(network, features: torch.Tensor, propagated: torch.Tensor, chunk: int):
    """Yield (label index, box, probabilities in the box) of a refine network run in a box around each
    propagated mask (K, *grid), batched by chunks of similar boxes; features (1, F, *grid)."""
    with torch.no_grad():
        for indices, boxes in chunked_boxes(propagated, REFINE_HALO, chunk):
            feats = torch.cat([crop(features, box) for box in boxes])
            masks = torch.stack([crop(propagated[k], box)[None] for k, box in zip(indices, boxes)])
            logits = network.refine(feats, masks.to(feats.device)).float().cpu()
            for k, box, logit in zip(indices, boxes, logits):
                yield k, box, torch.sigmoid(logit[0])


@dataclass
class _Refined:
    """Probabilities of each label on the atlas grid in scan space (zero outside the label's box)."""

    image: np.ndarray
    affine: np.ndarray
    propagation: Propagation
    probabilities: torch.Tensor  # (K, *atlas grid)
    note: str | None
    report: _Reporter

    def on_scan(self, atlas_affine: np.ndarray) -> Iterator[tuple[int, torch.Tensor]]:
        """(first index, probabilities (n, *scan)) carried back onto the scan's grid, a chunk at a time."""
        scan_to_grid = Propagation(self.propagation.alignment)
        points = scan_to_grid.atlas_points(self.image.shape, self.affine)
        yield from carried_chunks(
            self.probabilities.numpy(),
            atlas_affine,
            scan_to_grid,
            self.image.shape,
            self.affine,
            points=points,
        )


def _refine(
    bundle,
    image,
    affine,
    masks,
    labels,
    align,
    device,
    progress,
    cancel,
    network,
    memory_budget_mb,
    propagation=None,
):
    if bundle.kind != "lcs" or bundle.network_config.arch != "lcs_refine":
        raise InputError(f"{bundle.path}: method 'lcs-refine' needs an LCS bundle with a refine network")
    image, affine = check_image(image, affine)
    atlas_image, atlas_affine = bundle.atlas_image()
    masks = check_atlas_masks(masks, atlas_image.shape, labels)
    check_drawn_masks(masks, [label.name for label in labels])
    report = _Reporter(progress, cancel)
    torch_device, note = resolve_device(device)
    if propagation is None:  # evaluation passes the registration it already computed for this scan
        report(0.0, "registering the atlas to the scan (deformable)")
        propagation = atlas_propagation(
            bundle, image, affine, "deformable", align, lambda f, m: report(0.5 * f, m)
        )
    scan, warped = refine_inputs(
        atlas_image, atlas_affine, bundle.preprocessing.intensity, image, affine, propagation
    )
    net = network if network is not None else bundle.build_network(torch_device)
    grid = tuple(atlas_image.shape)
    # the masks carried by the deformation onto the grid, where the network corrects them
    grid_affine = propagation.alignment.matrix @ atlas_affine
    points = propagation.atlas_points(atlas_image.shape, grid_affine)
    propagated = torch.zeros((masks.shape[0], *grid))
    for start, weights in carried_chunks(
        masks, atlas_affine, propagation, atlas_image.shape, grid_affine, points=points
    ):
        propagated[start : start + weights.shape[0]] = weights
    with torch.no_grad(), _autocast(torch_device):
        features = net.encode(scan.to(torch_device), warped.to(torch_device))
    probabilities = torch.zeros((masks.shape[0], *grid))
    budget = memory_budget_mb if memory_budget_mb is not None else _default_budget_mb(torch_device)
    chunk = max(1, int(budget * 1024**2 // (40 * features.shape[1] * 4 * np.prod(grid) / 8)))
    for done, (k, box, probs) in enumerate(
        refined_in_boxes(net, features, propagated.to(torch_device), chunk)
    ):
        report(0.55 + 0.35 * done / masks.shape[0], f"label {done + 1} of {masks.shape[0]}")
        where: tuple[Any, ...] = (k, *box)
        probabilities[where] = probs
    report(0.9, "mapping back onto the input grid")
    return _Refined(image, affine, propagation, probabilities, note, report)


def segment_by_refinement(
    bundle,
    image,
    affine,
    masks,
    labels,
    align,
    device,
    progress,
    cancel,
    network,
    memory_budget_mb,
    propagation=None,
):
    refined = _refine(
        bundle,
        image,
        affine,
        masks,
        labels,
        align,
        device,
        progress,
        cancel,
        network,
        memory_budget_mb,
        propagation,
    )
    image, affine = refined.image, refined.affine
    values = [label.value for label in labels]
    best = torch.zeros(image.shape)
    best_index = torch.zeros(image.shape, dtype=torch.int32)
    for start, weights in refined.on_scan(bundle.atlas_image()[1]):
        best, best_index = keep_most_probable(best, best_index, weights, start)
    lookup = torch.tensor(values, dtype=torch.int32)
    labelmap = torch.where(best >= LCS_THRESHOLD, lookup[best_index.long()], torch.zeros_like(best_index))
    labelmap = labelmap.numpy().astype(np.int16 if max(values) < 32768 else np.int32)
    refined.report(1.0, "done")
    alignment = refined.propagation.alignment if align is not False else None
    return SegmentationResult(
        labelmap, affine.copy(), list(labels), refined.note, alignment, refined.propagation, "lcs-refine"
    )


def refined_independently(
    bundle: Bundle,
    image: np.ndarray,
    affine: np.ndarray,
    masks: np.ndarray,
    labels,
    *,
    align: bool | Alignment | None = None,
    device: str = "auto",
    network=None,
    memory_budget_mb: float | None = None,
    propagation: Propagation | None = None,
) -> tuple[np.ndarray, Propagation]:
    """Each drawn label refined and decided on its own (p >= 0.5, overlaps allowed): bool (K, *image shape),
    and the registration used. For evaluation (as Ma et al. 2022, Table 1); users want segment_by_refinement."""
    refined = _refine(
        bundle,
        image,
        affine,
        masks,
        labels,
        align,
        device,
        None,
        None,
        network,
        memory_budget_mb,
        propagation,
    )
    out = np.zeros((len(labels), *refined.image.shape), dtype=bool)
    for start, weights in refined.on_scan(bundle.atlas_image()[1]):
        out[start : start + weights.shape[0]] = (weights >= LCS_THRESHOLD).numpy()
    return out, refined.propagation


def segment_by_registration(bundle, image, affine, masks, labels, stage, align, progress, cancel):
    if bundle.kind != "lcs":
        raise InputError(
            f"{bundle.path}: a {bundle.kind} bundle has no atlas; atlas labels need an LCS bundle"
        )
    image, affine = check_image(image, affine)
    atlas_image, atlas_affine = bundle.atlas_image()
    masks = check_atlas_masks(masks, atlas_image.shape, labels)
    check_drawn_masks(masks, [label.name for label in labels])
    report = _Reporter(progress, cancel)
    report(0.0, f"registering the atlas to the scan ({stage})")
    propagation = atlas_propagation(bundle, image, affine, stage, align, lambda f, m: report(0.8 * f, m))
    report(0.8, "carrying the labels onto the scan")
    values = [label.value for label in labels]
    labelmap = carry_labels(masks, values, atlas_affine, propagation, image.shape, affine)
    labelmap = labelmap.astype(np.int16 if max(values) < 32768 else np.int32)
    empty = [label.name for label in labels if not (labelmap == label.value).any()]
    if len(empty) == len(labels):
        raise InputError("every drawn label lands outside the scan's field of view; nothing to segment")
    report(1.0, "done")
    alignment = propagation.alignment if align is not False else None
    result = SegmentationResult(
        labelmap, affine.copy(), list(labels), None, alignment, propagation, f"register-{stage}"
    )
    return result

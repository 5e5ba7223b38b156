"""Inference for every bundle kind, on numpy arrays + affines (no Slicer here).

Task bundles (label sharing, multi-channel, individual, DoD-Net): the image is brought onto the bundle's
grid, the network runs by sliding window (3D) or slice by slice (2D), only the chosen task's channels and
background compete (softmax over those channels only), the probabilities are resampled back onto the
input grid and the argmax is mapped from channel to the task's own label values.

LCS bundles: the target is resampled onto the atlas grid, the label-independent encoder runs once, the
conditioned bottleneck + decoder runs batched over chunks of atlas masks sized to a memory budget.
**Combining labels**: each label k gives a sigmoid probability p_k per voxel. A voxel is background when
max_k p_k < 0.5 (no label claims it); otherwise it takes argmax_k p_k. This is the same decision as
normalising the probabilities to sum to one per voxel (Ma et al. 2022), which does not change the argmax, plus
an explicit background rule, because LCS has no background channel. Only the running maximum and its
index are kept, so memory does not grow with the number of labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .atlas_methods import ATLAS_METHODS, DEFAULT_ATLAS_METHOD
from .boxes import chunked_boxes, crop, even_grid_pads
from .bundle import Bundle
from .device import resolve_device
from .errors import CancelledError, InputError
from .labels import LabelInfo
from .networks import REFINE_HALO, downsample_factor
from .preprocessing import (
    centred_pad_amounts,
    check_image,
    crop_spatial,
    normalise_intensity,
    pad_spatial,
    resample_to_grid,
    to_model_grid,
)
from .propagation import Propagation, carried_chunks, carry_labels, check_drawn_masks, register_atlas
from .registration import Alignment, register_affine
from .warping import apply_affine, grid_points, sample

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]

LCS_THRESHOLD = 0.5
TASK_KINDS = ("labelsharing", "multichannel", "individual", "dodnet")


@dataclass
class SegmentationResult:
    """A label map on the input grid (same shape and affine as the input) and its label descriptions."""

    labelmap: np.ndarray
    affine: np.ndarray
    labels: list[LabelInfo]
    device_note: str | None = None
    alignment: Alignment | None = None  # set when the scan was aligned to the bundle's reference first
    propagation: Propagation | None = None  # set by the registration methods (carries the deformation)
    method: str | None = None  # atlas labels: the method that produced the result


class _Reporter:
    """Wraps the optional progress callback and cancel check."""

    def __init__(self, progress: ProgressCallback | None, cancel):
        self._progress = progress
        if cancel is not None and hasattr(cancel, "is_set"):
            cancel = cancel.is_set
        self._cancel = cancel

    def __call__(self, fraction: float, message: str) -> None:
        self.check()
        if self._progress is not None:
            self._progress(float(min(max(fraction, 0.0), 1.0)), message)

    def check(self) -> None:
        if self._cancel is not None and self._cancel():
            raise CancelledError("cancelled by the user; nothing was written")


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, enabled=False)


def _align(bundle: Bundle, image: np.ndarray, affine: np.ndarray, align, report: _Reporter):
    """(working affine, alignment or None). ``align=None`` aligns when the bundle carries a reference image;
    an :class:`Alignment` from an earlier call on the same scan is reused (no second registration)."""
    if isinstance(align, Alignment):
        return align.aligned_affine(affine), align
    if align is None:
        align = bundle.has_reference()
    if not align:
        return affine, None
    if not bundle.has_reference():
        raise InputError(
            f"{bundle.path}: this bundle carries no reference image to align to; turn alignment off"
        )
    reference, reference_affine = bundle.reference_image()
    alignment = register_affine(
        image, affine, reference, reference_affine, progress=lambda f, m: report(0.02 + 0.08 * f, m)
    )
    return alignment.aligned_affine(affine), alignment


def _window_count(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    count = 1
    for size, r in zip(shape, roi):
        step = max(1, int(r * (1 - overlap)))
        count *= 1 if size <= r else math.ceil((size - r) / step) + 1
    return count


def _predict_logits(network, x: torch.Tensor, prep: dict, device, report: _Reporter, task_index: int | None):
    """Sliding-window logits for a (1, X, Y, Z) model-grid tensor -> (C, X, Y, Z) on the CPU."""
    from monai.inferers import sliding_window_inference

    dims = prep["spatial_dims"]
    roi = [int(r) for r in prep["patch_size"]]
    overlap = float(prep.get("overlap", 0.5))
    batch = int(prep.get("sw_batch_size", 2 if dims == 3 else 16))
    if dims == 3:
        inputs = x[None]  # (1, 1, X, Y, Z)
    else:
        inputs = x.permute(3, 0, 1, 2)  # slices as a batch: (Z, 1, X, Y)
    total = max(1, math.ceil(_window_count(inputs.shape[2:], roi, overlap) * inputs.shape[0] / batch))
    done = [0]

    def predictor(patch: torch.Tensor) -> torch.Tensor:
        report(done[0] / total * 0.9 + 0.05, "running the network")
        with torch.no_grad(), _autocast(device):
            patch = patch.to(device)
            if task_index is None:
                out = network(patch)
            else:
                out = network(patch, torch.full((patch.shape[0],), task_index, device=device))
        done[0] += 1
        return out.float()

    with torch.no_grad():
        logits = sliding_window_inference(
            inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs,
            roi_size=roi,
            sw_batch_size=batch,
            predictor=predictor,
            overlap=overlap,
            mode="gaussian",
            sw_device=device,
            device=torch.device("cpu"),
        )
    return logits[0] if dims == 3 else logits.permute(1, 2, 3, 0)


def segment_task(
    bundle: Bundle,
    image: np.ndarray,
    affine: np.ndarray,
    task: str,
    *,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    network: torch.nn.Module | None = None,
    align: bool | Alignment | None = None,
) -> SegmentationResult:
    """Segment ``task`` on ``image`` (3D [i, j, k], affine voxel -> RAS mm); result on the input grid.

    ``align``: first register the scan to the bundle's reference image (None: when the bundle has one; an
    ``Alignment`` from an earlier result on the same scan is reused).
    """
    if bundle.kind not in TASK_KINDS:
        raise InputError(
            f"{bundle.path}: an {bundle.kind} bundle segments atlas labels, not tasks "
            "(use segment_atlas_labels / --atlas-labels)"
        )
    info = bundle.task(task)
    image, affine = check_image(image, affine)
    report = _Reporter(progress, cancel)
    torch_device, note = resolve_device(device)
    report(0.0, "preparing the image")
    prep = bundle.preprocessing
    working_affine, alignment = _align(bundle, image, affine, align, report)
    x = to_model_grid(image, working_affine, prep)
    model_affine = x.affine.numpy()
    net = network if network is not None else bundle.build_network(torch_device)
    task_index = info.index if bundle.kind == "dodnet" else None
    logits = _predict_logits(net, x, prep, torch_device, report, task_index)
    values = [label.value for label in info.labels]
    channels = [0] + [info.channels[v] for v in values]
    probabilities = torch.softmax(logits[channels].float(), dim=0)
    report(0.95, "mapping back onto the input grid")
    back = resample_to_grid(
        probabilities, working_affine, image.shape, mode="bilinear", src_affine=model_affine
    )
    winner = back.argmax(dim=0).numpy()
    lookup = np.array([0] + values, dtype=np.int32)
    labelmap = lookup[winner].astype(np.uint16 if max(values) > 32767 else np.int16)
    report(1.0, "done")
    return SegmentationResult(labelmap, affine.copy(), list(info.labels), note, alignment)


# ---------------------------------------------------------------------------------------------- LCS


def check_atlas_masks(
    masks: np.ndarray, atlas_shape: tuple[int, ...], labels: Sequence[LabelInfo]
) -> np.ndarray:
    """Validate masks (K, *atlas_shape) against the atlas grid and the label list; returns a bool array."""
    masks = np.asarray(masks)
    if masks.ndim == len(atlas_shape):
        masks = masks[None]
    if masks.ndim != len(atlas_shape) + 1 or tuple(masks.shape[1:]) != tuple(atlas_shape):
        raise InputError(
            f"atlas masks of shape {tuple(masks.shape[1:])} do not lie on the atlas grid {tuple(atlas_shape)}; "
            "draw them on the bundle's atlas (or resample them onto it)"
        )
    if len(labels) != masks.shape[0]:
        raise InputError(f"{masks.shape[0]} atlas masks but {len(labels)} label descriptions")
    values = [label.value for label in labels]
    if len(set(values)) != len(values) or any(v <= 0 for v in values):
        raise InputError("atlas label values must be distinct positive integers")
    masks = masks.astype(bool)
    empty = [labels[k].name for k in range(masks.shape[0]) if not masks[k].any()]
    if empty:
        raise InputError(f"empty atlas mask(s): {', '.join(empty)}; draw something on the atlas first")
    return masks


def lcs_chunk_size(network_config: dict, grid_shape: Sequence[int], budget_mb: float) -> int:
    """Masks per batch so that decoder activations stay within ``budget_mb`` (rough, conservative)."""
    voxels = float(np.prod(grid_shape))
    channels = network_config["channels"]
    dims = network_config["spatial_dims"]
    per_mask = 0.0
    for level, c in enumerate(channels):
        # up-conv output, concatenation, conv + norm outputs, kept in float32
        per_mask += 6 * c * voxels / (2 ** (dims * level)) * 4
    return max(1, int(budget_mb * 1024**2 // per_mask))


def _default_budget_mb(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.5 * free / 1024**2
    return 1024.0


class PreparedLCS:
    """Target and atlas on the padded atlas grid, ready for conditioned decoding (used by inference and tests)."""

    def __init__(self, bundle: Bundle, image: np.ndarray, affine: np.ndarray, device: torch.device):
        prep = bundle.preprocessing
        atlas_image, atlas_affine = bundle.atlas_image()
        self.atlas_shape = atlas_image.shape
        self.atlas_affine = atlas_affine
        self.dims = prep["spatial_dims"]
        target = resample_to_grid(
            torch.as_tensor(image)[None], atlas_affine, atlas_image.shape, mode="bilinear", src_affine=affine
        )[0]
        target = normalise_intensity(target, prep.get("intensity", {}))
        atlas = normalise_intensity(atlas_image, prep.get("intensity", {}))
        if self.dims == 2:  # 2D atlas stored as (X, Y, 1)
            target, atlas = target[..., 0], atlas[..., 0]
        self.pads = centred_pad_amounts(target.shape, downsample_factor(bundle.network_config))
        self.device = device
        self.target = pad_spatial(target[None, None], self.pads).to(device)
        self.atlas = pad_spatial(atlas[None, None], self.pads).to(device)

    def masks_tensor(self, masks: np.ndarray) -> torch.Tensor:
        m = torch.as_tensor(masks[..., 0] if self.dims == 2 else masks)[:, None].float()
        return pad_spatial(m, self.pads).to(self.device)


def lcs_probabilities_chunks(
    network, prepared: PreparedLCS, masks: np.ndarray, chunk: int, report: _Reporter
):
    """Yield (first index, probabilities (n, *atlas grid)) per chunk; the encoder runs once."""
    with torch.no_grad(), _autocast(prepared.device):
        encoded = network.encode(prepared.target)
        for start in range(0, masks.shape[0], chunk):
            report(
                0.1 + 0.8 * start / masks.shape[0],
                f"labels {start + 1}-{min(start + chunk, masks.shape[0])} of {masks.shape[0]}",
            )
            conditioning = network.condition(
                prepared.atlas, prepared.masks_tensor(masks[start : start + chunk])
            )
            logits = network.decode_conditioned(encoded, conditioning)
            probs = crop_spatial(torch.sigmoid(logits.float())[:, 0], prepared.pads).cpu()
            if prepared.dims == 2:
                probs = probs[..., None]
            yield start, probs


@dataclass
class _LCSRun:
    """What both LCS entry points set up: checked inputs, alignment, the target on the atlas grid, the network
    and the number of masks per batch."""

    image: np.ndarray
    affine: np.ndarray
    masks: np.ndarray
    report: _Reporter
    note: str | None
    working_affine: np.ndarray
    alignment: Alignment | None
    prepared: PreparedLCS
    network: torch.nn.Module
    chunk: int


def _lcs_setup(
    bundle, image, affine, masks, labels, device, progress, cancel, memory_budget_mb, network, align
) -> _LCSRun:
    if bundle.kind != "lcs":
        raise InputError(
            f"{bundle.path}: a {bundle.kind} bundle has no atlas; atlas labels need an LCS bundle"
        )
    image, affine = check_image(image, affine)
    atlas_image, _ = bundle.atlas_image()
    masks = check_atlas_masks(masks, atlas_image.shape, labels)
    check_drawn_masks(masks, [label.name for label in labels])
    report = _Reporter(progress, cancel)
    torch_device, note = resolve_device(device)
    report(0.0, "bringing the target onto the atlas grid")
    working_affine, alignment = _align(bundle, image, affine, align, report)
    prepared = PreparedLCS(bundle, image, working_affine, torch_device)
    net = network if network is not None else bundle.build_network(torch_device)
    budget = memory_budget_mb if memory_budget_mb is not None else _default_budget_mb(torch_device)
    chunk = lcs_chunk_size(bundle.network_config, prepared.target.shape[2:], budget)
    return _LCSRun(image, affine, masks, report, note, working_affine, alignment, prepared, net, chunk)


def segment_atlas_labels(
    bundle: Bundle,
    image: np.ndarray,
    affine: np.ndarray,
    masks: np.ndarray,
    labels: Sequence[LabelInfo],
    *,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    memory_budget_mb: float | None = None,
    network: torch.nn.Module | None = None,
    align: bool | Alignment | None = None,
    method: str | None = None,
) -> SegmentationResult:
    """Segment the structures that ``masks`` (K, *atlas grid) outline on the atlas, on a target image.

    ``method`` (one of ``ATLAS_METHODS``, default ``DEFAULT_ATLAS_METHOD``): carry the masks by affine or
    affine + deformable registration, or condition the bundle's LCS network on them (Ma et al. 2022).
    ``align``: first register the scan to the atlas image (None: on, for 3D bundles; False: world
    coordinates; an ``Alignment`` from an earlier result on the same scan is reused).
    """
    method = DEFAULT_ATLAS_METHOD if method is None else method
    if method not in ATLAS_METHODS:
        raise InputError(f"unknown atlas-label method {method!r} (choose {', '.join(ATLAS_METHODS)})")
    if method.startswith("register-"):
        return _segment_by_registration(
            bundle, image, affine, masks, labels, method.removeprefix("register-"), align, progress, cancel
        )
    if method == "lcs-refine":
        return _segment_by_refinement(
            bundle, image, affine, masks, labels, align, device, progress, cancel, network, memory_budget_mb
        )
    if bundle.kind == "lcs" and bundle.network_config["arch"] != "lcs":
        raise InputError(
            f"{bundle.path}: this bundle's network refines registration; use method 'lcs-refine'"
        )
    run = _lcs_setup(
        bundle, image, affine, masks, labels, device, progress, cancel, memory_budget_mb, network, align
    )
    best = torch.zeros(run.prepared.atlas_shape)
    best_index = torch.zeros(run.prepared.atlas_shape, dtype=torch.int32)
    for start, probs in lcs_probabilities_chunks(run.network, run.prepared, run.masks, run.chunk, run.report):
        value, index = probs.max(dim=0)
        better = value > best
        best = torch.where(better, value, best)
        best_index = torch.where(better, index.to(torch.int32) + start, best_index)
    lookup = torch.tensor([label.value for label in labels], dtype=torch.int32)
    on_atlas = torch.where(best >= LCS_THRESHOLD, lookup[best_index.long()], torch.zeros_like(best_index))
    run.report(0.95, "mapping back onto the input grid")
    back = resample_to_grid(
        on_atlas[None].float(),
        run.working_affine,
        run.image.shape,
        mode="nearest",
        src_affine=run.prepared.atlas_affine,
    )[0]
    labelmap = back.round().numpy().astype(np.int32)
    labelmap = labelmap.astype(np.int16 if labelmap.max(initial=0) < 32768 else np.int32)
    run.report(1.0, "done")
    return SegmentationResult(
        labelmap, run.affine.copy(), list(labels), run.note, run.alignment, method="lcs"
    )


def atlas_propagation(
    bundle: Bundle,
    image: np.ndarray,
    affine: np.ndarray,
    stage: str,
    align: bool | Alignment | None,
    report: ProgressCallback | None = None,
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


def refine_inputs(bundle: Bundle, image: np.ndarray, affine: np.ndarray, propagation: Propagation):
    """(scan, atlas warped onto it) on the atlas grid in scan space, normalised, padded to even sizes:
    (1, 1, *grid) each. Grid point q shows the scan at M q and the atlas at q + u(q) (see propagation.py)."""
    atlas_image, atlas_affine = bundle.atlas_image()
    intensity = bundle.preprocessing.get("intensity", {})
    points = grid_points(atlas_image.shape, atlas_affine)
    scan_points = apply_affine(propagation.alignment.matrix, points)
    scan = sample(torch.as_tensor(np.asarray(image, np.float32))[None], affine, scan_points, mode="bilinear")[
        0
    ]
    # the grid seen in scan space has affine M @ atlas_affine, so its atlas points are q + u(q)
    atlas_points = propagation.atlas_points(atlas_image.shape, propagation.alignment.matrix @ atlas_affine)
    warped = sample(torch.as_tensor(atlas_image)[None], atlas_affine, atlas_points, mode="bilinear")[0]
    pads = even_grid_pads(atlas_image.shape)
    return (
        pad_spatial(normalise_intensity(scan, intensity)[None, None], pads),
        pad_spatial(normalise_intensity(warped, intensity)[None, None], pads),
    )


def refined_in_boxes(network, features: torch.Tensor, propagated: torch.Tensor, chunk: int):
    """Yield (label index, box, probabilities in the box) of a refine network run in a box around each
    propagated mask (K, *grid), batched by chunks of equally sized boxes; features (1, F, *grid)."""
    with torch.no_grad():
        for indices, boxes in chunked_boxes(propagated, REFINE_HALO, chunk):
            feats = torch.cat([crop(features, box) for box in boxes])
            masks = torch.stack([crop(propagated[k], box)[None] for k, box in zip(indices, boxes)])
            logits = network.refine(feats, masks.to(feats.device)).float().cpu()
            for k, box, logit in zip(indices, boxes, logits):
                yield k, box, torch.sigmoid(logit[0])


def _segment_by_refinement(
    bundle, image, affine, masks, labels, align, device, progress, cancel, network, memory_budget_mb
):
    if bundle.kind != "lcs" or bundle.network_config["arch"] != "lcs_refine":
        raise InputError(f"{bundle.path}: method 'lcs-refine' needs an LCS bundle with a refine network")
    image, affine = check_image(image, affine)
    atlas_image, atlas_affine = bundle.atlas_image()
    masks = check_atlas_masks(masks, atlas_image.shape, labels)
    check_drawn_masks(masks, [label.name for label in labels])
    report = _Reporter(progress, cancel)
    torch_device, note = resolve_device(device)
    report(0.0, "registering the atlas to the scan (deformable)")
    propagation = atlas_propagation(
        bundle, image, affine, "deformable", align, lambda f, m: report(0.5 * f, m)
    )
    scan, warped = refine_inputs(bundle, image, affine, propagation)
    net = network if network is not None else bundle.build_network(torch_device)
    pads = even_grid_pads(atlas_image.shape)
    grid = tuple(s + p for s, (_, p) in zip(atlas_image.shape, pads))
    # the masks carried by the deformation onto the grid, where the network corrects them
    grid_affine = propagation.alignment.matrix @ atlas_affine
    points = propagation.atlas_points(atlas_image.shape, grid_affine)
    propagated = torch.zeros((masks.shape[0], *grid))
    for start, weights in carried_chunks(
        masks, atlas_affine, propagation, atlas_image.shape, grid_affine, points=points
    ):
        propagated[(slice(start, start + weights.shape[0]), *[slice(0, s) for s in atlas_image.shape])] = (
            weights
        )
    with torch.no_grad(), _autocast(torch_device):
        features = net.encode(scan.to(torch_device), warped.to(torch_device))
    probabilities = torch.zeros((masks.shape[0], *grid))
    budget = memory_budget_mb if memory_budget_mb is not None else _default_budget_mb(torch_device)
    chunk = max(1, int(budget * 1024**2 // (40 * features.shape[1] * 4 * np.prod(grid) / 8)))
    for done, (k, box, probs) in enumerate(
        refined_in_boxes(net, features, propagated.to(torch_device), chunk)
    ):
        report(0.55 + 0.35 * done / masks.shape[0], f"label {done + 1} of {masks.shape[0]}")
        probabilities[(k, *box)] = probs
    report(0.9, "mapping back onto the input grid")
    scan_to_grid = Propagation(propagation.alignment)
    values = [label.value for label in labels]
    best = torch.zeros(image.shape)
    best_index = torch.zeros(image.shape, dtype=torch.long)
    cropped = probabilities[(slice(None), *[slice(0, s) for s in atlas_image.shape])]
    scan_points = scan_to_grid.atlas_points(image.shape, affine)
    for start, weights in carried_chunks(
        cropped.numpy(), atlas_affine, scan_to_grid, image.shape, affine, points=scan_points
    ):
        value, index = weights.max(dim=0)
        better = value > best
        best = torch.where(better, value, best)
        best_index = torch.where(better, index + start, best_index)
    lookup = torch.tensor(values, dtype=torch.int32)
    labelmap = torch.where(
        best >= LCS_THRESHOLD, lookup[best_index], torch.zeros_like(best_index, dtype=torch.int32)
    )
    labelmap = labelmap.numpy().astype(np.int16 if max(values) < 32768 else np.int32)
    report(1.0, "done")
    alignment = propagation.alignment if align is not False else None
    return SegmentationResult(
        labelmap, affine.copy(), list(labels), note, alignment, propagation, "lcs-refine"
    )


def _segment_by_registration(bundle, image, affine, masks, labels, stage, align, progress, cancel):
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


def atlas_labels_independently(
    bundle: Bundle,
    image: np.ndarray,
    affine: np.ndarray,
    masks: np.ndarray,
    labels: Sequence[LabelInfo],
    *,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    memory_budget_mb: float | None = None,
    network: torch.nn.Module | None = None,
    align: bool | Alignment | None = None,
) -> tuple[np.ndarray, Alignment | None]:
    """Each atlas label decided on its own (p >= 0.5, overlaps allowed), as when conditioning on one label at
    a time, but with the encoder run once and the labels batched. Returns (bool masks (K, *input shape) on
    the input grid, alignment). Used by evaluation (Ma et al. 2022, Table 1); users want :func:`segment_atlas_labels`.
    """
    run = _lcs_setup(
        bundle, image, affine, masks, labels, device, progress, cancel, memory_budget_mb, network, align
    )
    out = np.zeros((run.masks.shape[0], *run.image.shape), dtype=bool)
    for start, probs in lcs_probabilities_chunks(run.network, run.prepared, run.masks, run.chunk, run.report):
        decided = (probs >= LCS_THRESHOLD).float()
        back = resample_to_grid(
            decided, run.working_affine, run.image.shape, mode="nearest", src_affine=run.prepared.atlas_affine
        )
        out[start : start + decided.shape[0]] = back.numpy() > 0.5
    run.report(1.0, "done")
    return out, run.alignment

"""Segmenting atlas labels with an atlas bundle, on numpy arrays + affines (no Slicer here): the structures
drawn on the bundle's atlas (masks, or one label map) are segmented on a target scan by the bundle's LCS network
(Ma et al. 2022), or by registration (registered.py); ``segment_atlas_labels`` chooses by method
(atlas_methods.py). Task bundles: inference.py, which also holds what both share (result, progress, alignment).

LCS bundles: the target is resampled onto the atlas grid, the label-independent encoder runs once, the
conditioned bottleneck + decoder runs batched over chunks of atlas masks sized to a memory budget.
**Combining labels**: each label k gives a sigmoid probability p_k per voxel. A voxel is background when
max_k p_k < 0.5 (no label claims it); otherwise it takes argmax_k p_k. This is the same decision as
normalising the probabilities to sum to one per voxel (Ma et al. 2022), which does not change the argmax, plus
an explicit background rule, because LCS has no background channel. Only the running maximum and its
index are kept, so memory does not grow with the number of labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .atlas_brain import background_level, keep_brain, network_brain, network_pose
from .atlas_methods import ATLAS_METHODS, default_atlas_method
from .atlas_warp import warp_image, warp_masks, warped_points
from .bundle import Bundle
from .device import resolve_device
from .errors import BundleError, InputError
from .inference import (
    CancelCheck,
    ProgressCallback,
    SegmentationResult,
    _align,
    _autocast,
    _Reporter,
    _require_usable_scan,
)
from .labels import LabelInfo
from .network_config import NetworkConfig
from .preprocessing import (
    centred_pad_amounts,
    check_image,
    crop_spatial,
    normalise_intensity,
    pad_spatial,
    resample_to_grid,
)
from .propagation import check_drawn_masks, register_atlas
from .registration import Alignment

LCS_THRESHOLD = 0.5


def reference_alignment(bundle: Bundle, image, affine, progress=None, cancel=None) -> Alignment | None:
    """The alignment the registration methods (and the refine network) start from, as LCS does: the scan registered
    to the bundle's network reference (the undeformed template, closer to any scan than the deformed atlas case),
    carried to the atlas by the fixed pose. Measured better than registering to the atlas directly
    (docs/DEMO.md). None (they register to the atlas themselves) when the bundle has no reference or the quality
    check refuses it. ``lsseg evaluate`` starts from the same alignment as ``segment_atlas_labels``."""
    if bundle.manifest.reference_image is None:
        return None
    report = _Reporter(progress, cancel)
    # a scan this leaves with no pose is not refused here: the registration methods then register it to the
    # atlas themselves, with checks of their own
    _, alignment = _align(bundle, image, affine, True, report, network=True, require_pose=False)
    return alignment if alignment is not None and alignment.accepted else None


def _reference_alignment(bundle: Bundle, image, affine, masks, labels, progress, cancel) -> Alignment | None:
    atlas = bundle.atlas_image()
    masks = check_atlas_masks(masks, atlas[0].shape, labels)  # bad drawings fail before any registration
    check_drawn_masks(masks, [label.name for label in labels])
    return reference_alignment(bundle, image, affine, progress, cancel)


class LabelMapMasks:
    """Atlas masks given as one label map on the atlas grid and the values to segment: mask k is
    ``labelmap == values[k]``, made only for the chunk of labels the decoder runs, so memory stays one label
    map whatever the number of labels (a (K, grid) boolean array took 2.1 GB for 2000 labels). Indexing and
    ``shape`` behave as the (K, *grid) boolean array would."""

    def __init__(self, labelmap: np.ndarray, values: Sequence[int]):
        self.labelmap = np.asarray(labelmap)
        self.values = np.asarray([int(v) for v in values], dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.values), *self.labelmap.shape)

    @property
    def ndim(self) -> int:
        return self.labelmap.ndim + 1

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.labelmap == self.values[index]
        if not isinstance(index, slice):
            raise TypeError("LabelMapMasks supports an integer or a slice of labels")
        chosen = self.values[index]
        return self.labelmap[None] == chosen.reshape((-1,) + (1,) * self.labelmap.ndim)


def _check_label_map_masks(masks: LabelMapMasks, atlas_shape: tuple[int, ...], labels: Sequence[LabelInfo]):
    if tuple(masks.labelmap.shape) != tuple(atlas_shape):
        raise InputError(
            f"atlas label map of shape {tuple(masks.labelmap.shape)} does not lie on the atlas grid "
            f"{tuple(atlas_shape)}; draw it on the bundle's atlas (or resample it onto it)"
        )
    if len(labels) != len(masks):
        raise InputError(f"{len(masks)} atlas masks but {len(labels)} label descriptions")
    absent = sorted(set(masks.values.tolist()) - set(np.unique(masks.labelmap).tolist()))
    if absent:
        raise InputError(f"empty atlas mask(s) for value(s) {absent[:10]}; draw something on the atlas first")
    return masks


def check_atlas_masks(
    masks: np.ndarray | LabelMapMasks, atlas_shape: tuple[int, ...], labels: Sequence[LabelInfo]
) -> np.ndarray | LabelMapMasks:
    """Validate masks (K, *atlas_shape) against the atlas grid and the label list; returns a bool array
    (or the :class:`LabelMapMasks` it was given, still unexpanded)."""
    values = [label.value for label in labels]
    if len(set(values)) != len(values) or any(v <= 0 for v in values):
        raise InputError("atlas label values must be distinct positive integers")
    if isinstance(masks, LabelMapMasks):
        return _check_label_map_masks(masks, atlas_shape, labels)
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
    masks = masks.astype(bool)
    empty = [labels[k].name for k in range(masks.shape[0]) if not masks[k].any()]
    if empty:
        raise InputError(f"empty atlas mask(s): {', '.join(empty)}; draw something on the atlas first")
    return masks


def lcs_chunk_size(network_config: NetworkConfig, grid_shape: Sequence[int], budget_mb: float) -> int:
    """Masks per batch so that decoder activations stay within ``budget_mb`` (rough, conservative)."""
    voxels = float(np.prod(grid_shape))
    channels = network_config.channels
    dims = network_config.spatial_dims
    extra = getattr(network_config, "decoder_extra", 0)  # every-level conditioning channels
    per_mask = 0.0
    for level, c in enumerate(channels):
        # up-conv output, concatenation, conv + norm outputs (+ the level's conditioning, pooled and
        # concatenated), kept in float32
        per_mask += (6 * c + 2 * extra) * voxels / (2 ** (dims * level)) * 4
    return max(1, int(budget_mb * 1024**2 // per_mask))


def _default_budget_mb(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.5 * free / 1024**2
    return 1024.0


class PreparedLCS:
    """Target and atlas on the padded atlas grid, ready for conditioned decoding (used by inference and tests)."""

    def __init__(
        self,
        bundle: Bundle,
        image: np.ndarray,
        affine: np.ndarray,
        device: torch.device,
        brain_window: bool = False,
        atlas_points: torch.Tensor | None = None,
    ):
        """``brain_window``: keep only the atlas's brain of the (aligned) target, see ``atlas_brain``;
        ``atlas_points``: where the atlas is read for each voxel of the target (``atlas_warp.warped_points``), for a
        network conditioned on the atlas carried onto the scan; None: the atlas as it lies."""
        prep = bundle.preprocessing
        atlas_image, atlas_affine = bundle.atlas_image()
        self.atlas_points = atlas_points
        if atlas_points is not None:
            atlas_image = warp_image(torch.as_tensor(atlas_image), atlas_affine, atlas_points).numpy()
        self.atlas_shape = atlas_image.shape
        self.atlas_affine = atlas_affine
        self.dims = prep.spatial_dims
        target = resample_to_grid(
            torch.as_tensor(image)[None], atlas_affine, atlas_image.shape, mode="bilinear", src_affine=affine
        )[0]
        if brain_window:
            target = keep_brain(target, network_brain(bundle), background_level(image))
        target = normalise_intensity(target, prep.intensity)
        atlas = normalise_intensity(atlas_image, prep.intensity)
        if self.dims == 2:  # 2D atlas stored as (X, Y, 1)
            target, atlas = target[..., 0], atlas[..., 0]
        self.pads = centred_pad_amounts(target.shape, bundle.network_config.downsample_factor)
        self.device = device
        self.target = pad_spatial(target[None, None], self.pads).to(device)
        self.atlas = pad_spatial(atlas[None, None], self.pads).to(device)

    def masks_tensor(self, masks: np.ndarray) -> torch.Tensor:
        m = torch.as_tensor(masks[..., 0] if self.dims == 2 else masks).float()
        if self.atlas_points is not None:
            m = warp_masks(m, self.atlas_affine, self.atlas_points)
        return pad_spatial(m[:, None], self.pads).to(self.device)


def scan_atlas_points(
    bundle: Bundle,
    atlas: tuple[np.ndarray, np.ndarray],
    image: np.ndarray,
    affine: np.ndarray,
    alignment: Alignment | None,
    report,
) -> torch.Tensor | None:
    """For a network conditioned on the atlas carried onto the scan (``network.atlas_warp``), where it reads the
    atlas: the deformable registration of the atlas onto the aligned scan, as training registered every case
    (``lsseg train lcs --align-cases deformable``). ``atlas``: the bundle's atlas image and affine, as loaded by
    the caller. None for every other network."""
    if getattr(bundle.network_config, "atlas_warp", "none") == "none":
        return None
    if alignment is None or not alignment.accepted:
        raise InputError(
            f"{bundle.path}: this network reads the atlas registered onto the scan, and the scan was not registered "
            "to the atlas (alignment refused or turned off); use the method 'register-deformable'"
        )
    if bundle.network_reference() is not None:
        raise BundleError(
            f"{bundle.path}: a network that reads the atlas registered onto the scan cannot have a separate "
            "network reference"
        )
    report(0.1, "registering the atlas onto the scan (deformable)")
    atlas_image, atlas_affine = atlas
    found = register_atlas(atlas_image, atlas_affine, image, affine, stage="deformable", alignment=alignment)
    assert found.deformation is not None
    return warped_points(found.deformation, atlas_image.shape, atlas_affine)


def atlas_label_codes(bundle: Bundle, masks, labels: Sequence[LabelInfo]) -> list[int] | None:
    """The label code each mask is decoded with, for a network trained with codes (None otherwise): code k for
    a mask that is exactly the bundle's k-th atlas label (atlas_labels.csv order, as training numbered them) under
    its value, 0 ("no code") for anything else - a label drawn or edited on the atlas, a merged one."""
    count = getattr(bundle.network_config, "label_codes", 0)
    if not count:
        return None
    labelmap, _, infos = bundle.atlas_labels()
    if len(infos) != count:
        raise BundleError(
            f"{bundle.path}: the network has {count} label codes but the atlas {len(infos)} labels"
        )
    code_of = {info.value: k + 1 for k, info in enumerate(infos)}
    codes = []
    for index, label in enumerate(labels):
        code = code_of.get(label.value, 0)
        if code and not np.array_equal(np.asarray(masks[index], dtype=bool), labelmap == label.value):
            code = 0  # the value of a trained label, but not its atlas outline
        codes.append(code)
    return codes


def lcs_probabilities_chunks(
    network, prepared: PreparedLCS, masks: np.ndarray, chunk: int, report: _Reporter, codes=None
):
    """Yield (first index, probabilities (n, *atlas grid)) per chunk; the encoder runs once. ``codes``: one
    label code per mask (``atlas_label_codes``), or None."""
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
            # without codes, the two-argument call of the paper's network (which any stand-in network may have)
            if codes is None:
                logits = network.decode_conditioned(encoded, conditioning)
            else:
                logits = network.decode_conditioned(
                    encoded, conditioning, torch.tensor(codes[start : start + chunk])
                )
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
    codes: list[int] | None


def _lcs_setup(
    bundle, image, affine, masks, labels, device, progress, cancel, memory_budget_mb, network, align
) -> _LCSRun:
    if not bundle.kind.has_atlas:
        raise InputError(
            f"{bundle.path}: a {bundle.kind} bundle has no atlas; atlas labels need an LCS bundle"
        )
    image, affine = check_image(image, affine)
    _require_usable_scan(bundle, image)
    atlas = bundle.atlas_image()
    masks = check_atlas_masks(masks, atlas[0].shape, labels)
    check_drawn_masks(masks, [label.name for label in labels])
    report = _Reporter(progress, cancel)
    torch_device, note = resolve_device(device)
    report(0.0, "bringing the target onto the atlas grid")
    working_affine, alignment = _align(bundle, image, affine, align, report, network=True)
    # a scan aligned to the atlas is seen in the network's own position (a stored reference's, else the
    # atlas's) through that position's brain: skull, scalp and neck set to background (atlas_brain.py)
    window = alignment is not None and alignment.accepted
    if window:
        working_affine = np.linalg.inv(alignment.matrix @ network_pose(bundle)) @ np.asarray(affine, float)
    points = scan_atlas_points(bundle, atlas, image, affine, alignment, report)
    prepared = PreparedLCS(
        bundle, image, working_affine, torch_device, brain_window=window, atlas_points=points
    )
    net = network if network is not None else bundle.build_network(torch_device)
    budget = memory_budget_mb if memory_budget_mb is not None else _default_budget_mb(torch_device)
    chunk = lcs_chunk_size(bundle.network_config, prepared.target.shape[2:], budget)
    codes = atlas_label_codes(bundle, masks, labels)
    return _LCSRun(image, affine, masks, report, note, working_affine, alignment, prepared, net, chunk, codes)


def keep_most_probable(
    best: torch.Tensor, best_index: torch.Tensor, probs: torch.Tensor, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a chunk of label probabilities (n, ...), labels ``start``.. ``start + n - 1``, into the running
    maximum and its label index (int32; ties keep the earlier label). Training validation decides the same way."""
    value, index = probs.max(dim=0)
    better = value > best
    return torch.where(better, value, best), torch.where(better, index.to(torch.int32) + start, best_index)


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

    ``method`` (one of ``ATLAS_METHODS``; default ``atlas_methods.default_atlas_method``: 'register-deformable',
    'lcs' for 2D bundles): carry the masks by affine or
    affine + deformable registration, or condition the bundle's LCS network on them (Ma et al. 2022).
    ``align``: first register the scan to the atlas image (None: on, for 3D bundles; False: world
    coordinates; an ``Alignment`` from an earlier result on the same scan is reused).
    """
    if method is None:  # registration needs 3D scans; 2D bundles keep the paper's network
        method = default_atlas_method(bundle.network_config.arch, bundle.preprocessing.spatial_dims)
    if method not in ATLAS_METHODS:
        raise InputError(f"unknown atlas-label method {method!r} (choose {', '.join(ATLAS_METHODS)})")
    _require_usable_scan(bundle, check_image(image, affine)[0])  # every method, registration included
    if method != "lcs" and align is None and bundle.manifest.reference_image is not None:
        align = _reference_alignment(bundle, image, affine, masks, labels, progress, cancel)
    if method.startswith("register-"):
        from .registered import segment_by_registration

        return segment_by_registration(
            bundle, image, affine, masks, labels, method.removeprefix("register-"), align, progress, cancel
        )
    if method == "lcs-refine":
        from .registered import segment_by_refinement

        return segment_by_refinement(
            bundle, image, affine, masks, labels, align, device, progress, cancel, network, memory_budget_mb
        )
    if bundle.kind == "lcs" and bundle.network_config.arch != "lcs":
        raise InputError(
            f"{bundle.path}: this bundle's network refines registration; use method 'lcs-refine'"
        )
    run = _lcs_setup(
        bundle, image, affine, masks, labels, device, progress, cancel, memory_budget_mb, network, align
    )
    best = torch.zeros(run.prepared.atlas_shape)
    best_index = torch.zeros(run.prepared.atlas_shape, dtype=torch.int32)
    for start, probs in lcs_probabilities_chunks(
        run.network, run.prepared, run.masks, run.chunk, run.report, run.codes
    ):
        best, best_index = keep_most_probable(best, best_index, probs, start)
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
    for start, probs in lcs_probabilities_chunks(
        run.network, run.prepared, run.masks, run.chunk, run.report, run.codes
    ):
        decided = (probs >= LCS_THRESHOLD).float()
        back = resample_to_grid(
            decided, run.working_affine, run.image.shape, mode="nearest", src_affine=run.prepared.atlas_affine
        )
        out[start : start + decided.shape[0]] = back.numpy() > 0.5
    run.report(1.0, "done")
    return out, run.alignment

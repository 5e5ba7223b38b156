"""Segmenting a task with a task bundle, on numpy arrays + affines (no Slicer here), and what every
segmentation entry point shares (the result, progress and cancel, mixed precision, aligning the scan to the
bundle's reference image). Atlas labels with an LCS bundle: atlas_segmentation.py.

Task bundles (label sharing, multi-channel, individual, DoD-Net): the image is brought onto the bundle's
grid, the network runs by sliding window (3D) or slice by slice (2D), only the chosen task's channels and
background compete (softmax over those channels only), the probabilities are resampled back onto the
input grid and the argmax is mapped from channel to the task's own label values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .atlas_brain import network_pose
from .bundle import Bundle
from .device import resolve_device
from .errors import CancelledError, InputError, UnplacedScanError
from .labels import LabelInfo
from .manifest import TaskInfo
from .modality import check_scan_modality
from .planes import PLANE_AXES, plane_grid
from .preprocessing import check_image, normalise_intensity, resample_to_grid, to_model_grid
from .preprocessing_config import Preprocessing
from .propagation import Propagation
from .registration import PEAK_CONFIDENT, Alignment, can_register, foreground_mask, robust_scale
from .registration_cache import affine_alignment
from .trained_region import Region, positions_in, region_text, voxels_in

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


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
    coverage: str | None = None  # set when only part of the scan was segmented: which part, and why


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


def _align(
    bundle: Bundle,
    image: np.ndarray,
    affine: np.ndarray,
    align,
    report: _Reporter,
    network: bool = False,
    require_pose: bool = True,
):
    """(working affine, alignment or None). ``align=None`` aligns when the bundle carries a reference image;
    an :class:`Alignment` from an earlier call on the same scan is reused (no second registration).
    ``network``: LCS with a network reference registers the scan to that reference (where the network
    expects it) and returns the alignment to the atlas through the fixed pose between them (atlas_brain.py).
    ``require_pose``: refuse a scan the alignment leaves with no trusted pose (:func:`require_scan_pose`);
    False for callers that fall back on a registration of their own."""
    if isinstance(align, Alignment):
        if require_pose:
            require_scan_pose(align)
        return align.aligned_affine(affine), align
    # a 2D bundle also takes single slices and thin stacks of them: those are not aligned unless asked for
    thin = bundle.preprocessing.spatial_dims == 2 and not can_register(image)
    if align is None:
        align = bundle.has_reference() and not thin
    if not align:
        return affine, None
    if thin:
        raise InputError(
            f"image: {image.shape[2]} slice(s) cannot be registered to a 3D reference; turn alignment off"
        )
    if not bundle.has_reference():
        raise InputError(
            f"{bundle.path}: this bundle carries no reference image to align to; turn alignment off"
        )
    stored = bundle.network_reference() if network else None
    reference, reference_affine = stored if stored is not None else bundle.reference_image()
    alignment = affine_alignment(
        image, affine, reference, reference_affine, progress=lambda f, m: report(0.02 + 0.08 * f, m)
    )
    if require_pose:
        require_scan_pose(alignment)
    if stored is not None and alignment.accepted:  # scan <- reference, as scan <- atlas for every other use
        alignment = replace(alignment, matrix=alignment.matrix @ np.linalg.inv(network_pose(bundle)))
    return alignment.aligned_affine(affine), alignment


def require_scan_pose(alignment: Alignment) -> None:
    """Refuse a scan whose alignment was refused while its world coordinates match the reference no better: it
    would be segmented in a pose known to be wrong (seen: a real proton-density series, given to a T1 bundle,
    came back with labels and exit status 0). Stored in the reference's space already, it is kept as it is."""
    if alignment.places_scan:
        return
    sharpness = max(alignment.identity_sharpness, 0.0)
    raise UnplacedScanError(
        f"the scan could not be aligned to the bundle's reference, and its own world coordinates do not place it "
        f"there either, so nothing was segmented: {alignment.warning}; the match in world coordinates is "
        f"{100 * sharpness:.0f}% as sharp as the images' own ({100 * PEAK_CONFIDENT:.0f}% or more where they "
        f"place a scan). A scan of another kind than the bundle's (see its 'Input') fails this way; one that "
        f"already lies in the reference's space can be segmented with automatic alignment off"
    )


def _require_usable_scan(bundle: Bundle, image: np.ndarray) -> None:
    """A 3D bundle needs a volume: a single slice would be stretched over the whole grid (as the Slicer logic
    says); and the scan must be of the kind the bundle was trained on, where it declares one (CT vs MR)."""
    if bundle.network_config.spatial_dims == 3 and min(image.shape) < 2:
        raise InputError(
            f"image: a 2D image (shape {tuple(image.shape)}) cannot be segmented by a 3D bundle; give a 3D volume"
        )
    check_scan_modality(image, bundle.preprocessing.scan_modality)


def _window_count(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    count = 1
    for size, r in zip(shape, roi):
        step = max(1, int(r * (1 - overlap)))
        count *= 1 if size <= r else math.ceil((size - r) / step) + 1
    return count


def _predict_logits(
    network, x: torch.Tensor, prep: Preprocessing, device, report: _Reporter, task_index: int | None
):
    """Sliding-window logits for a (1, X, Y, Z) model-grid tensor -> (C, X, Y, Z) on the CPU."""
    from monai.inferers import sliding_window_inference

    dims = prep.spatial_dims
    roi = list(prep.patch_size)
    overlap = prep.overlap
    batch = 2 if dims == 3 else 16
    if dims == 3:
        inputs = x[None]  # (1, 1, X, Y, Z)
    else:
        inputs = x.permute(3, 0, 1, 2)  # slices as a batch: (Z, 1, X, Y)
    total = max(1, math.ceil(_window_count(inputs.shape[2:], roi, overlap) * inputs.shape[0] / batch))
    done = [0]

    def predictor(patch: torch.Tensor) -> torch.Tensor:
        report(0.1 + 0.85 * done[0] / total, "running the network")  # after alignment (0.02-0.1)
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
    assert isinstance(logits, torch.Tensor)  # one network output, not a tuple or dict
    return logits[0] if dims == 3 else logits.permute(1, 2, 3, 0)


def _imaged_object(image: np.ndarray) -> np.ndarray:
    """The imaged object's voxels (head, body), for grids that should not span empty background."""
    return foreground_mask(robust_scale(image))


def _task_model_grid(image: np.ndarray, affine: np.ndarray, prep: Preprocessing, plane: str | None):
    """(model-grid tensor (1, X, Y, Z), its affine). A 2D task with a plane cuts a volume along that plane in
    world orientation; without a plane (older bundles), or for a single slice, along the third voxel axis."""
    if prep.spatial_dims != 2 or plane is None or image.shape[2] == 1:
        x = to_model_grid(image, affine, prep)
        return x, x.affine.numpy()
    grid_affine, grid_shape = plane_grid(
        affine, image.shape, plane, prep.spacing, within=_imaged_object(image)
    )
    on_grid = resample_to_grid(
        torch.as_tensor(image)[None], grid_affine, grid_shape, mode="bilinear", src_affine=affine
    )
    # normalised over the whole volume, as a volume without a plane is (per slice measured no better on the
    # real whole-head scan: sagittal lobes 0.326 vs 0.329, coronal deep grey 0.137 vs 0.146), with statistics of
    # the scan's own voxels: a grid turned against the scan reaches outside it, and its zero padding shifted
    # the statistics (on the tilted real scan, once aligned: sagittal lobes 0.565 with it)
    return normalise_intensity(on_grid, prep.intensity, statistics_of=image), grid_affine


def predict_logits(
    network, x: torch.Tensor, prep: Preprocessing, device: torch.device, task_index: int | None = None
) -> torch.Tensor:
    """Sliding-window logits of a model-grid image (C, X, Y, Z) -> (K, X, Y, Z) on the CPU, exactly as
    ``segment_task`` predicts them; training validates through this so its scores are the real prediction's."""
    return _predict_logits(network, x, prep, device, _Reporter(None, None), task_index)


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
    all_slices: bool = False,
) -> SegmentationResult:
    """Segment ``task`` on ``image`` (3D [i, j, k], affine voxel -> RAS mm); result on the input grid.

    ``align``: first register the scan to the bundle's reference image (None: when the bundle has one; an
    ``Alignment`` from an earlier result on the same scan is reused).
    ``all_slices``: a task that records the region it was trained on (trained_region.py) segments an aligned
    volume only there (the result's ``coverage`` says so); True segments it all. On the real whole-head scan,
    85-95% of a 2D task's labelled voxels lay outside its slab of slices (face, neck, skull), and a slice 6-10 mm
    beyond the slab scored 0.48 and 0.14 where the slab scored 0.78 and 0.60 (sagittal lobes, coronal deep grey;
    docs/DEMO.md).
    """
    if not bundle.kind.segments_tasks:
        raise InputError(
            f"{bundle.path}: an {bundle.kind} bundle segments atlas labels, not tasks "
            "(use segment_atlas_labels / --atlas-labels)"
        )
    info = bundle.task(task)
    image, affine = check_image(image, affine)
    _require_usable_scan(bundle, image)
    report = _Reporter(progress, cancel)
    torch_device, note = resolve_device(device)
    report(0.0, "preparing the image")
    prep = bundle.preprocessing
    working_affine, alignment = _align(bundle, image, affine, align, report)
    x, model_affine = _task_model_grid(image, working_affine, prep, info.plane)
    region = () if all_slices or alignment is None or image.shape[2] == 1 else info.region_mm
    kept = _slices_in_region(model_affine, x.shape[-1], info, region)
    net = network if network is not None else bundle.build_network(torch_device)
    task_index = info.index if bundle.network_config.TAKES_TASK else None
    logits = _predict_logits(net, x if kept is None else x[..., kept], prep, torch_device, report, task_index)
    values = [label.value for label in info.labels]
    channels = [0] + [info.channels[v] for v in values]
    probabilities = torch.softmax(logits[channels].float(), dim=0)
    if kept is not None:  # the slices not run are background
        computed, probabilities = probabilities, torch.zeros((len(channels),) + tuple(x.shape[1:]))
        probabilities[0] = 1.0
        probabilities[..., kept] = computed
    report(0.95, "mapping back onto the input grid")
    inside = voxels_in(region, working_affine, image.shape) if region else np.ones(image.shape, dtype=bool)
    winner = np.zeros(image.shape, dtype=np.int64)
    # mapped back onto the voxels around the region only: a whole head times every label otherwise
    if inside.any():
        start, stop = np.argwhere(inside).min(axis=0), np.argwhere(inside).max(axis=0) + 1
        around = tuple(slice(a, b) for a, b in zip(start, stop))
        sub_affine = working_affine.copy()
        sub_affine[:3, 3] = working_affine[:3, :3] @ start + working_affine[:3, 3]
        back = resample_to_grid(
            probabilities, sub_affine, tuple(stop - start), mode="bilinear", src_affine=model_affine
        )
        winner[around] = back.argmax(dim=0).numpy() * inside[around]
    coverage = None
    if region:
        coverage = (
            f"segmented only inside the region task {info.name} was trained on, {region_text(region, info.plane)} "
            "in the bundle's reference (the network was never shown the rest); the rest of the scan is left empty"
        )
    lookup = np.array([0] + values, dtype=np.int32)
    labelmap = lookup[winner].astype(np.uint16 if max(values) > 32767 else np.int16)
    report(1.0, "done")
    return SegmentationResult(labelmap, affine.copy(), list(info.labels), note, alignment, coverage=coverage)


def _slices_in_region(
    model_affine: np.ndarray, count: int, info: TaskInfo, region: Region
) -> torch.Tensor | None:
    """Indices of a 2D task's model-grid slices to run when the result is kept to its trained ``region`` (None:
    all): those in its slab and one slice beyond, so that the voxels inside get the same interpolated result as
    from every slice. A scan that does not reach the slab is refused: there is nothing of the task in it."""
    if not region or info.plane is None:
        return None
    normal = PLANE_AXES[info.plane][2]
    step = float(model_affine[normal, 2])
    positions = model_affine[normal, 3] + step * np.arange(count)
    if not positions_in(region, normal, positions, margin_mm=abs(step) / 2).any():
        raise InputError(
            f"task {info.name} was trained on {region_text(region, info.plane)} of the bundle's reference, and "
            f"the aligned scan does not reach them (its slices lie at {positions.min():.0f} to "
            f"{positions.max():.0f} mm), so there is nothing to segment; every slice is segmented only on request "
            "(lsseg segment --all-slices, all_slices=True)"
        )
    return torch.as_tensor(np.flatnonzero(positions_in(region, normal, positions, margin_mm=abs(step))))

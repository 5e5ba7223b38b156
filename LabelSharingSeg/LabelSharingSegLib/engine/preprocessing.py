"""Input checks, geometry and intensity normalisation as a bundle's ``preprocessing`` section describes
(the typed :class:`.preprocessing_config.Preprocessing`).

Geometry (MONAI transforms on MetaTensors carrying the affine, no hand-written resampler):

* 3D bundles: the image is reoriented to ``orientation`` (default RAS) and resampled to ``spacing``; the
  network output is resampled back onto the input's exact grid (its shape and affine) with
  ``SpatialResample``, so any input affine (oblique, LPS-derived, anisotropic) round-trips.
* 2D bundles: voxel axes are kept (no reorientation, as nnU-Net does for 2D data); the first two axes are
  resampled to ``spacing`` and the network runs slice by slice along the third axis.
* LCS bundles: the target is resampled straight onto the atlas grid (atlas affine and shape).

Intensity ``mode``: ``zscore`` (mean/std over non-zero voxels when ``nonzero``), ``percentile`` (clip to
the ``lower``/``upper`` percentiles, scale to 0..1), ``ct_window`` (clip to ``window`` [lo, hi] HU, scale
to 0..1) or ``none``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .errors import InputError
from .preprocessing_config import IntensityConfig, Preprocessing


def check_image(
    image: np.ndarray, affine: np.ndarray, *, what: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """Return (float32 3D array, float64 4x4 affine) or raise InputError saying what is wrong.

    A 2D array (X, Y) becomes (X, Y, 1); a 4D array is accepted only with a trailing singleton axis.
    The caller's arrays are never modified (copies are made where values change).
    """
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise InputError(f"{what}: expected a 2D or 3D scalar image, got shape {tuple(np.shape(image))}")
    if min(array.shape) < 1 or array.size == 0:
        raise InputError(f"{what}: empty image of shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{what}: voxel type {array.dtype} is not a real number type")
    array = array.astype(np.float32, copy=True)
    bad = ~np.isfinite(array)
    if bad.any():
        raise InputError(
            f"{what}: {int(bad.sum())} voxel(s) are NaN or Inf; fix or mask them before segmenting"
        )
    if float(array.min()) == float(array.max()):
        raise InputError(
            f"{what}: every voxel has the value {float(array.min()):g}, so there is nothing to segment "
            "(is it the right image?)"
        )
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError(f"{what}: affine must be a finite 4x4 matrix")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-9 or not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise InputError(f"{what}: affine is singular or not a voxel-to-world transform")
    return array, matrix


def _as_float_tensor(array: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array) if isinstance(array, np.ndarray) else array).float().clone()


def normalise_intensity(
    array: torch.Tensor | np.ndarray,
    config: IntensityConfig,
    statistics_of: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Apply the bundle's intensity normalisation (returns a new float32 tensor). ``statistics_of``: take the
    mean/std or percentiles from this array instead (the scan itself when ``array`` is a resampling of it whose
    grid reaches outside the scan: the zero padding is not image content)."""
    x = _as_float_tensor(array)
    source = x if statistics_of is None else _as_float_tensor(statistics_of)
    mode = config.mode
    if mode == "zscore":
        values = source[source != 0] if config.nonzero and bool((source != 0).any()) else source.flatten()
        std = float(values.std()) if values.numel() > 1 else 0.0
        return (x - float(values.mean())) / (std if std > 1e-8 else 1.0)
    if mode == "percentile":
        flat = source.flatten().double()
        if flat.numel() > 2_000_000:  # quantile of a strided sample keeps this fast on big volumes
            flat = flat[:: flat.numel() // 1_000_000]
        lo, hi = (float(torch.quantile(flat, q / 100.0)) for q in (config.lower, config.upper))
        return ((x.clamp(lo, hi) - lo) / (hi - lo if hi - lo > 1e-8 else 1.0)).float()
    if mode == "ct_window":
        lo, hi = config.window
        return (x.clamp(lo, hi) - lo) / (hi - lo)
    return x


def _meta_tensor(array: np.ndarray | torch.Tensor, affine: np.ndarray):
    from monai.data import MetaTensor

    data = torch.as_tensor(array)
    if data.ndim == 3:
        data = data[None]
    return MetaTensor(data.float(), affine=torch.as_tensor(affine, dtype=torch.float64))


def to_model_grid(image: np.ndarray, affine: np.ndarray, prep: Preprocessing):
    """Image (3D, checked) -> MetaTensor (1, X', Y', Z') on the bundle's grid, intensity-normalised."""
    from monai.transforms import Orientation, Spacing

    tensor = _meta_tensor(image, affine)
    spacing = list(prep.spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI deprecation chatter about argument names
        if prep.spatial_dims == 3:
            tensor = Orientation(axcodes=prep.orientation)(tensor)
            tensor = Spacing(pixdim=spacing, mode="bilinear", padding_mode="border")(tensor)
        else:
            # non-positive pixdim keeps that axis' spacing: resample in-plane only
            tensor = Spacing(pixdim=spacing[:2] + [-1.0], mode="bilinear", padding_mode="border")(tensor)
    tensor.array = normalise_intensity(tensor.as_tensor(), prep.intensity)  # type: ignore[attr-defined]  # a MONAI MetaTensor
    return tensor


def resample_to_grid(data, dst_affine: np.ndarray, dst_shape: tuple[int, ...], *, mode: str, src_affine=None):
    """Resample a channel-first MetaTensor (or tensor + ``src_affine``) onto a grid given by affine and shape."""
    from monai.transforms import SpatialResample

    if src_affine is not None:
        data = _meta_tensor(data, src_affine) if data.ndim == 3 else _meta_tensor_channels(data, src_affine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = SpatialResample(mode=mode, padding_mode="zeros" if mode == "nearest" else "border")(
            data,
            dst_affine=torch.as_tensor(dst_affine, dtype=torch.float64),
            spatial_size=tuple(int(s) for s in dst_shape),
        )
    return out.as_tensor() if hasattr(out, "as_tensor") else out


def _meta_tensor_channels(data: torch.Tensor, affine: np.ndarray):
    from monai.data import MetaTensor

    return MetaTensor(torch.as_tensor(data).float(), affine=torch.as_tensor(affine, dtype=torch.float64))


def centred_pad_amounts(shape: Sequence[int], factor: int) -> list[tuple[int, int]]:
    """(before, after) zero padding per spatial axis making each size divisible by ``factor``, centred."""
    pads = []
    for size in shape:
        extra = (-size) % factor
        pads.append((extra // 2, extra - extra // 2))
    return pads


def pad_spatial(t: torch.Tensor, pads: list[tuple[int, int]]) -> torch.Tensor:
    """Zero-pad the trailing spatial axes of ``t`` by ``pads`` (from :func:`centred_pad_amounts`)."""
    flat = [p for pair in reversed(pads) for p in pair]
    return torch.nn.functional.pad(t, flat)


def crop_spatial(t: torch.Tensor, pads: list[tuple[int, int]]) -> torch.Tensor:
    """Undo :func:`pad_spatial`."""
    index = [slice(None)] * (t.ndim - len(pads)) + [
        slice(lo, t.shape[t.ndim - len(pads) + i] - hi) for i, (lo, hi) in enumerate(pads)
    ]
    return t[tuple(index)]

"""Appearance augmentation for scans as they come from the scanner (batched on the training device): a whole
head painted around the brain (``head``, see ``head_appearance``), a smooth multiplicative bias field, gamma (non-linear contrast), resolution / thick-slice simulation, noise, and
SynthSeg-style random-contrast synthesis from the label map (Billot et al. 2023).

Each is chosen by name (``--appearance head,bias,gamma,noise,resolution,synth``) and applied to a random subset
of the batch. The head comes first (the scanner sees the whole head, so every later change acts on it too). The scanner-like operations act on the intensities above each sample's minimum (as on raw scan
values); afterwards every sample and channel is mapped back to its original mean and standard deviation, so the
network still sees normalised inputs, then noise is added in normalised units. Labels are never changed.

Synthesis: the task methods' label maps hold only the task's own structures, so voxels of label 0 keep the
sample's own (rescaled) intensities and each labelled structure gets a random mean and standard deviation, then a
Gaussian blur of random width: the network must find the structure by shape and context, not by its intensity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from LabelSharingSegLib.engine.errors import InputError

from .head_appearance import HeadParams, add_head, brain_distance

APPEARANCE_CHOICES = ("head", "bias", "gamma", "noise", "resolution", "synth")


def parse_appearance(text: str) -> tuple[str, ...]:
    """'bias,gamma' -> ('bias', 'gamma') in canonical order; 'none' or '' -> (); 'all' -> every one."""
    text = (text or "").strip().lower()
    if text in ("", "none"):
        return ()
    names = APPEARANCE_CHOICES if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = sorted(set(names) - set(APPEARANCE_CHOICES))
    if unknown:
        raise InputError(
            f"unknown appearance augmentation {', '.join(unknown)}; choose from "
            f"{', '.join(APPEARANCE_CHOICES)}, 'all' or 'none'"
        )
    return tuple(n for n in APPEARANCE_CHOICES if n in names)


@dataclass(frozen=True)
class AppearanceParams:
    head_prob: float = 0.7  # the head's own settings: head_appearance.HeadParams
    bias_prob: float = 0.5
    bias_std: float = 0.3  # std of the log field at the control points
    bias_points: int = 4  # control points per axis
    gamma_prob: float = 0.5
    gamma_log_std: float = 0.3  # gamma = exp(N(0, std))
    resolution_prob: float = 0.3
    resolution_max: float = 4.0  # slice thickness up to this many voxels
    noise_prob: float = 0.5
    noise_max: float = 0.1  # std in normalised units, uniform in [0, max]
    synth_prob: float = 0.5
    synth_std_max: float = 0.1  # within-structure std, uniform in [0.01, max]
    synth_blur_max: float = 1.0  # Gaussian blur sigma in voxels, uniform in [0, max]


def _view(values, like: torch.Tensor) -> torch.Tensor:
    """(B, C) values -> a tensor broadcasting over (B, C, *S)."""
    t = torch.as_tensor(np.asarray(values), dtype=like.dtype, device=like.device)
    return t.view(*t.shape, *([1] * (like.ndim - t.ndim)))


def bias_field(image: torch.Tensor, control: np.ndarray) -> torch.Tensor:
    """Multiply (B, C, *S) non-negative intensities by exp(smooth field); ``control`` (B, C, P, P[, P]) holds the
    log field at a coarse control grid, interpolated over the patch."""
    spatial = tuple(image.shape[2:])
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    field = F.interpolate(
        torch.as_tensor(control, dtype=image.dtype, device=image.device),
        size=spatial,
        mode=mode,
        align_corners=True,
    )
    return image * torch.exp(field)


def gamma(image: torch.Tensor, gammas: np.ndarray) -> torch.Tensor:
    """``max * (x / max) ** gamma`` per (sample, channel) on non-negative intensities: keeps the order of the
    intensities and their range, changes the contrast between them."""
    dims = tuple(range(2, image.ndim))
    top = image.amax(dim=dims, keepdim=True).clamp_min(1e-6)
    return top * (image / top).clamp_min(0.0) ** _view(gammas, image)


def thick_slices(image: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """One sample (1, C, *S): average blocks of ``factor`` voxels along spatial ``axis`` and interpolate back,
    as a scan with thick slices along that axis looks after resampling."""
    spatial = list(image.shape[2:])
    low = list(spatial)
    low[axis] = max(1, int(round(spatial[axis] / factor)))
    if low[axis] == spatial[axis]:
        return image
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    down = F.interpolate(image, size=low, mode="area")
    return F.interpolate(down, size=spatial, mode=mode, align_corners=False)


def _gaussian_kernels(sigmas: np.ndarray, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernels = np.zeros((len(sigmas), x.size))
    for i, s in enumerate(sigmas):
        if s <= 1e-3:
            kernels[i, radius] = 1.0
        else:
            k = np.exp(-0.5 * (x / s) ** 2)
            kernels[i] = k / k.sum()
    return kernels.astype(np.float32)


def blur(image: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, *S) with one sigma per (sample, channel), as one grouped convolution
    per axis over the whole batch."""
    batch, channels, *spatial = image.shape
    flat_sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if not (flat_sigmas > 1e-3).any():
        return image
    radius = max(1, int(np.ceil(3 * flat_sigmas.max())))
    kernels = torch.as_tensor(_gaussian_kernels(flat_sigmas, radius), dtype=image.dtype, device=image.device)
    conv = F.conv2d if len(spatial) == 2 else F.conv3d
    out = image.reshape(1, batch * channels, *spatial)
    for axis in range(len(spatial)):
        shape = [1] * len(spatial)
        shape[axis] = 2 * radius + 1
        weight = kernels.view(batch * channels, 1, *shape)
        pad = [0, 0] * len(spatial)
        pad[2 * (len(spatial) - 1 - axis)] = pad[2 * (len(spatial) - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), weight, groups=batch * channels)
    return out.reshape(image.shape)


def synthesize(
    image: torch.Tensor,
    label: torch.Tensor,
    means: np.ndarray,
    stds: np.ndarray,
    generator: torch.Generator,
) -> torch.Tensor:
    """Random-contrast image from the label map: label k of sample b, channel c gets N(means[b, c, k],
    stds[b, c, k]); label 0 keeps the sample's own intensities rescaled to [0, 1]."""
    batch, channels = image.shape[:2]
    flat = label.reshape(batch, 1, -1).expand(batch, channels, -1)
    mu = torch.gather(_view(means, image).reshape(batch, channels, -1), 2, flat)
    sd = torch.gather(_view(stds, image).reshape(batch, channels, -1), 2, flat)
    noise = torch.randn(mu.shape, generator=generator, device=image.device, dtype=image.dtype)
    synthetic = (mu + sd * noise).reshape(image.shape)
    dims = tuple(range(2, image.ndim))
    own = image / image.amax(dim=dims, keepdim=True).clamp_min(1e-6)
    return torch.where((label == 0)[:, None], own, synthetic)


def _restore_moments(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(2, image.ndim))
    centred = image - image.mean(dim=dims, keepdim=True)
    return centred / centred.std(dim=dims, keepdim=True).clamp_min(1e-6) * std + mean


class AppearanceAugment:
    """The chosen appearance augmentations for a (B, C, *S) image batch with its (B, *S) label batch.

    ``spacing_mm``: the model grid's voxel size (the head's layers are drawn in millimetres)."""

    def __init__(
        self,
        names: tuple[str, ...],
        params: AppearanceParams = AppearanceParams(),
        spacing_mm: float = 1.0,
        head: HeadParams | None = None,
    ):
        self.names = tuple(names)
        self.params = params
        self.spacing_mm = float(spacing_mm)
        self.head = head or HeadParams()

    def __bool__(self) -> bool:
        return bool(self.names)

    def __call__(
        self,
        rng: np.random.Generator,
        generator: torch.Generator,
        image: torch.Tensor,
        label: torch.Tensor,
        distance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``distance``: (B, *S) millimetres from the brain, 0 inside it, for ``head`` (found from the image
        when not given)."""
        if not self.names:
            return image
        p = self.params
        batch, channels, *spatial = image.shape
        dims = tuple(range(2, image.ndim))
        image = image.float()
        if "head" in self.names:
            chosen = rng.random(batch) < p.head_prob
            if chosen.any():
                if distance is None:
                    found = [brain_distance(image[b, 0].cpu().numpy(), self.spacing_mm) for b in range(batch)]
                    distance = torch.as_tensor(np.stack(found), device=image.device)
                index = torch.as_tensor(np.flatnonzero(chosen), device=image.device)
                headed = add_head(rng, generator, image[index], distance[index], self.head)
                image = image.index_copy(0, index, headed)
        mean, std = image.mean(dim=dims, keepdim=True), image.std(dim=dims, keepdim=True)
        low = image.amin(dim=dims, keepdim=True)
        x = image - low
        changed = np.zeros(batch, dtype=bool)
        if "synth" in self.names:
            chosen = rng.random(batch) < p.synth_prob
            if chosen.any():
                levels = int(label.max()) + 1
                means = rng.uniform(0.0, 1.0, size=(batch, channels, levels))
                stds = rng.uniform(0.01, p.synth_std_max, size=(batch, channels, levels))
                sigmas = np.where(chosen[:, None], rng.uniform(0.0, p.synth_blur_max, (batch, channels)), 0.0)
                synthetic = blur(synthesize(x, label, means, stds, generator), sigmas)
                x = torch.where(_view(chosen, x).bool(), synthetic, x)
                changed |= chosen
        if "bias" in self.names:
            chosen = rng.random(batch) < p.bias_prob
            if chosen.any():
                control = rng.normal(
                    0.0, p.bias_std, size=(batch, channels) + (p.bias_points,) * len(spatial)
                )
                control[~chosen] = 0.0
                x = bias_field(x, control)
                changed |= chosen
        if "gamma" in self.names:
            chosen = rng.random(batch) < p.gamma_prob
            if chosen.any():
                gammas = np.exp(rng.normal(0.0, p.gamma_log_std, size=(batch, channels)))
                gammas[~chosen] = 1.0
                x = torch.where(_view(chosen, x).bool(), gamma(x, gammas), x)
                changed |= chosen
        if "resolution" in self.names:
            chosen = rng.random(batch) < p.resolution_prob
            axes = rng.integers(len(spatial), size=batch)
            factors = rng.uniform(1.5, p.resolution_max, size=batch)
            if chosen.any():
                x = torch.cat(
                    [
                        thick_slices(x[b : b + 1], int(axes[b]), float(factors[b]))
                        if chosen[b]
                        else x[b : b + 1]
                        for b in range(batch)
                    ]
                )
                changed |= chosen
        if changed.any():
            restored = _restore_moments(x, mean, std)
            image = torch.where(_view(changed, image).bool(), restored, image)
        if "noise" in self.names:
            chosen = rng.random(batch) < p.noise_prob
            if chosen.any():
                sigma = np.where(chosen, rng.uniform(0.0, p.noise_max, size=batch), 0.0)
                noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
                image = image + noise * _view(sigma, image)
        return image

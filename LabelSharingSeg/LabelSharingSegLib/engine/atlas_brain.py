"""The atlas's brain as a window on the scan: what an LCS network sees of an aligned scan.

LCS bundles are trained on brain-only images, and their atlas image is brain-only too. A scan as it comes from
the scanner shows skull, scalp, eyes and neck around the brain, which the network has never seen and which
shift the intensity normalisation. Once the scan is aligned to the atlas, the atlas's own brain (its
foreground, plus a small margin for the difference between two brains) marks where the scan's brain is; every
voxel of the atlas grid outside it is set to the scan's background level before normalisation, so the network
sees a brain-only image as in training. Measured on a real whole-head scan (docs/DEMO.md): LCS coarse
structures 0.556 -> 0.749 mean Dice. Without an accepted alignment the window is not used: the atlas's brain
would not lie over the scan's.

The network's own position: an LCS network is trained on one atlas case (a randomly deformed template) and
targets scattered around the template's position (MNI space); it learns that position. A scan aligned to the
atlas case sits where no training target sat on average. When the bundle stores a reference image in the
targets' position (``Bundle.network_reference``), the scan is registered to that reference and shown to the
network there, through the reference's brain. The alignment it returns still maps the atlas onto the scan
(scan <- reference <- atlas, through the fixed atlas <- reference pose registered once per bundle), so every
other method reuses it unchanged. Measured on the demo's test cases: registering the scan to the atlas and
composing with the pose scored lower (one case 0.719 against 0.794 registered to the reference directly).
"""

from __future__ import annotations

import numpy as np
import torch

from .registration import foreground_mask, register_affine, robust_scale

BRAIN_MARGIN_MM = 4.0  # two brains aligned by an affine differ by a few millimetres at the surface
BACKGROUND_PERCENTILE = (
    0.5  # the scan's background level: air and noise of a scan, zero of a brain-only image
)


def atlas_brain(
    atlas_image: np.ndarray, atlas_affine: np.ndarray, margin_mm: float = BRAIN_MARGIN_MM
) -> np.ndarray:
    """Boolean mask on the atlas grid: the atlas image's foreground grown by ``margin_mm``."""
    from scipy import ndimage

    brain = foreground_mask(robust_scale(np.asarray(atlas_image, dtype=np.float32)))
    if margin_mm <= 0:
        return brain
    spacing = np.linalg.norm(np.asarray(atlas_affine, dtype=np.float64)[:3, :3], axis=0)
    return ndimage.distance_transform_edt(~brain, sampling=spacing) <= margin_mm


def background_level(image: np.ndarray) -> float:
    """The scan's background intensity (a low percentile: robust to a few very dark voxels)."""
    values = np.asarray(image, dtype=np.float32).ravel()
    if values.size > 2_000_000:  # a strided sample keeps this fast on big scans
        values = values[:: values.size // 1_000_000]
    return float(np.percentile(values, BACKGROUND_PERCENTILE))


def keep_brain(target: torch.Tensor, brain: np.ndarray, background: float) -> torch.Tensor:
    """``target`` (raw intensities on the atlas grid) with every voxel outside ``brain`` set to ``background``."""
    inside = torch.as_tensor(np.asarray(brain, dtype=bool), device=target.device)
    return torch.where(inside, target, torch.full_like(target, background))


def network_brain(bundle) -> np.ndarray:
    """The window on the atlas grid: the network reference's brain when the bundle stores one, else the
    atlas's (both grown by the margin)."""
    from .preprocessing import resample_to_grid

    atlas_image, atlas_affine = bundle.atlas_image()
    reference = bundle.network_reference()
    if reference is None:
        return atlas_brain(atlas_image, atlas_affine)
    brain = torch.as_tensor(atlas_brain(*reference).astype(np.float32))[None]
    on_grid = resample_to_grid(
        brain, atlas_affine, atlas_image.shape, mode="bilinear", src_affine=reference[1]
    )
    return on_grid[0].numpy() > 0.5


def network_pose(bundle) -> np.ndarray:
    """4x4 RAS matrix from the bundle's network reference to its atlas (identity without a stored reference)."""
    reference = bundle.network_reference()
    if reference is None:
        return np.eye(4)
    return _pose(bundle.bundle_id, bundle.atlas_image(), reference).copy()


_POSES: dict[str, np.ndarray] = {}  # bundle id -> pose: one registration per bundle and process


def _pose(
    key: str, atlas: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Registered once per bundle (two brain-only images of one template: an affine fits them well)."""
    if key not in _POSES:
        alignment = register_affine(atlas[0], atlas[1], reference[0], reference[1])
        _POSES[key] = alignment.matrix if alignment.accepted else np.eye(4)
    return _POSES[key]

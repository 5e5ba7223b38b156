"""Scans placed off the atlas: a volume moved by a random affine transform, resampled onto an oblique,
anisotropic, cropped grid - what a real acquisition looks like next to a template. Used by the demo and the
tests of automatic alignment; the ground truth labels are moved identically (nearest neighbour)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from LabelSharingSegLib.engine.preprocessing import resample_to_grid


@dataclass(frozen=True)
class OffAtlasScan:
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    transform: np.ndarray  # reference world (RAS mm) -> scan world


def random_transform(
    rng: np.random.Generator, degrees: float = 15.0, shift: float = 15.0, scale: float = 0.08
) -> np.ndarray:
    """Rotation (per-axis uniform in +-degrees), anisotropic scaling (1 +- scale) and shift (+-shift mm)."""
    from scipy.spatial.transform import Rotation

    transform = np.eye(4)
    rotation = Rotation.from_euler("xyz", rng.uniform(-degrees, degrees, 3), degrees=True).as_matrix()
    transform[:3, :3] = rotation @ np.diag(rng.uniform(1 - scale, 1 + scale, 3))
    transform[:3, 3] = rng.uniform(-shift, shift, 3)
    return transform


def move_off_atlas(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    transform: np.ndarray,
    spacing=(2.0, 2.4, 2.0),
    crop: float = 0.15,
) -> OffAtlasScan:
    """Resample ``image``/``labels`` (on ``affine``), moved by ``transform``, onto a scan grid with ``spacing``
    that crops ``crop`` of the field of view at the start of every axis."""
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    extent = np.array(image.shape) * voxel
    shape = tuple(max(4, int(e * (1 - crop) / s)) for e, s in zip(extent, spacing))
    scan_in_reference = np.array(affine, dtype=np.float64)
    scan_in_reference[:3, :3] = affine[:3, :3] / voxel * np.array(spacing)
    scan_in_reference[:3, 3] = affine[:3, 3] + affine[:3, :3] @ (np.array(image.shape) * crop)
    scan_affine = transform @ scan_in_reference
    moved = transform @ affine
    scan = resample_to_grid(
        torch.as_tensor(np.asarray(image, np.float32))[None],
        scan_affine,
        shape,
        mode="bilinear",
        src_affine=moved,
    )[0].numpy()
    truth = (
        resample_to_grid(
            torch.as_tensor(np.asarray(labels, np.float32))[None],
            scan_affine,
            shape,
            mode="nearest",
            src_affine=moved,
        )[0]
        .numpy()
        .round()
        .astype(np.int16)
    )
    return OffAtlasScan(scan.astype(np.float32), truth, scan_affine, transform)

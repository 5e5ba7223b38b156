"""Deformable registration of an atlas image onto a scan that is already affinely aligned (SimpleITK).

Everything happens on one grid in atlas space (the atlas image's own grid): the scan is resampled there
through the affine alignment, and we look for a displacement field ``u`` on that grid such that the atlas
seen at ``q + u(q)`` matches the aligned scan at ``q``. Two algorithms, chosen by measurement (docs/DEMO.md):

* ``demons``  - diffeomorphic demons after histogram matching, two resolution levels (default: measured
  best on the demo's held-out brains, and fast);
* ``bspline`` - a B-spline free-form deformation (control points every ``spacing_mm``) optimised for
  Mattes mutual information with L-BFGS-B.

Divergence is detected, never silently used: a field that folds space (Jacobian determinant <= 0 on more than
``MAX_FOLDED_FRACTION`` of the brain) or that leaves the images less alike than the affine alignment did
raises :class:`RegistrationError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError, RegistrationError
from .registration import _to_sitk, robust_scale
from .warping import displaced_points, grid_points, jacobian_determinant, sample

DEFORMABLE_METHODS = ("demons", "bspline")
MAX_FOLDED_FRACTION = 1e-3
# the deformable stage may not make the images less alike (normalised cross-correlation) than affine did
MAX_SIMILARITY_LOSS = 0.02
_RAS_SIGN = np.array([-1.0, -1.0, 1.0])  # ITK displacement vectors are LPS


@dataclass(frozen=True)
class Deformation:
    """``displacement`` (3, *shape) in RAS mm on the grid ``affine``: atlas point = q + displacement(q)."""

    displacement: np.ndarray
    affine: np.ndarray
    method: str
    similarity_affine: float  # NCC of atlas and aligned scan inside the brain, affine only
    similarity: float  # the same after the deformable stage
    min_jacobian: float
    folded_fraction: float


def similarity(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Normalised cross-correlation of two arrays inside a boolean region (1 = identical up to scale)."""
    x = np.asarray(a, dtype=np.float64)[region]
    y = np.asarray(b, dtype=np.float64)[region]
    if x.size < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def brain_region(atlas: np.ndarray) -> np.ndarray:
    """Where the atlas image shows anatomy (above 10% of its robust range): the region checks look at."""
    return robust_scale(atlas) > 0.1


def register_deformable(
    aligned_scan: np.ndarray,
    atlas: np.ndarray,
    grid_affine: np.ndarray,
    *,
    method: str = "demons",
    iterations: int = 60,
    smoothing_mm: float = 6.0,
    spacing_mm: float = 20.0,
) -> Deformation:
    """Displacement field (atlas space) carrying ``atlas`` onto ``aligned_scan``; both on the grid ``grid_affine``."""
    import SimpleITK as sitk

    if method not in DEFORMABLE_METHODS:
        raise InputError(
            f"deformable registration: unknown method {method!r} (choose {', '.join(DEFORMABLE_METHODS)})"
        )
    aligned_scan, atlas = np.asarray(aligned_scan), np.asarray(atlas)
    if aligned_scan.shape != atlas.shape or atlas.ndim != 3 or min(atlas.shape) < 8:
        raise InputError(
            "deformable registration needs two 3D images on one grid, at least 8 voxels per axis"
        )
    fixed = _to_sitk(robust_scale(aligned_scan), grid_affine)
    moving = _to_sitk(robust_scale(atlas), grid_affine)
    if method == "demons":
        field = _demons(fixed, moving, iterations, smoothing_mm)
    else:
        field = _bspline(fixed, moving, spacing_mm, iterations)
    displacement = sitk.GetArrayFromImage(field).transpose(3, 2, 1, 0) * _RAS_SIGN[:, None, None, None]
    result = assess_deformation(displacement, grid_affine, aligned_scan, atlas, method)
    check_deformation(result)
    return result


def assess_deformation(
    displacement: np.ndarray,
    grid_affine: np.ndarray,
    aligned_scan: np.ndarray,
    atlas: np.ndarray,
    method: str,
) -> Deformation:
    """Measure a displacement field (3, *grid) in RAS mm: folding (Jacobian) and image similarity before/after."""
    displacement = np.asarray(displacement, dtype=np.float32)
    region = brain_region(atlas)
    jacobian = jacobian_determinant(displacement, grid_affine)
    points = grid_points(atlas.shape, grid_affine)
    atlas01 = torch.as_tensor(robust_scale(atlas))[None]
    warped = sample(
        atlas01, grid_affine, displaced_points(points, displacement, grid_affine), mode="bilinear"
    )
    scan01 = robust_scale(aligned_scan)
    return Deformation(
        displacement=displacement,
        affine=np.asarray(grid_affine, dtype=np.float64),
        method=method,
        similarity_affine=similarity(scan01, atlas01[0].numpy(), region),
        similarity=similarity(scan01, warped[0].numpy(), region),
        min_jacobian=float(jacobian[region].min()) if region.any() else float(jacobian.min()),
        folded_fraction=float((jacobian[region] <= 0).mean()) if region.any() else 0.0,
    )


def check_deformation(deformation: Deformation) -> None:
    """Raise :class:`RegistrationError` when a deformation folds space or made the images less alike."""
    if not np.isfinite(deformation.displacement).all():
        raise RegistrationError(
            "deformable registration diverged (non-finite displacements); use affine propagation"
        )
    if deformation.folded_fraction > MAX_FOLDED_FRACTION:
        raise RegistrationError(
            f"deformable registration diverged: it folds space on {100 * deformation.folded_fraction:.2f}% of "
            f"the brain (Jacobian determinant down to {deformation.min_jacobian:.3f}); use affine propagation"
        )
    if deformation.similarity < deformation.similarity_affine - MAX_SIMILARITY_LOSS:
        raise RegistrationError(
            f"deformable registration diverged: the images match worse after it (correlation "
            f"{deformation.similarity:.3f}) than after the affine alignment ({deformation.similarity_affine:.3f}); "
            "use affine propagation"
        )


def _demons(fixed, moving, iterations: int, smoothing_mm: float):
    """Diffeomorphic demons after histogram matching, coarse (2x shrunk) then full resolution."""
    import SimpleITK as sitk

    moving = sitk.HistogramMatching(moving, fixed, numberOfHistogramLevels=64, numberOfMatchPoints=15)
    field = None
    for shrink in (2, 1):
        f = sitk.Shrink(fixed, [shrink] * 3) if shrink > 1 else fixed
        m = sitk.Shrink(moving, [shrink] * 3) if shrink > 1 else moving
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(iterations)
        demons.SetSmoothDisplacementField(True)
        # the field's smoothing is given in voxels; keep it constant in millimetres across levels
        demons.SetStandardDeviations(max(0.5, smoothing_mm / float(f.GetSpacing()[0])))
        if field is None:
            field = demons.Execute(f, m)
        else:
            initial = sitk.Resample(field, f, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())
            field = demons.Execute(f, m, initial)
    return sitk.Cast(field, sitk.sitkVectorFloat64)


def _bspline(fixed, moving, spacing_mm: float, iterations: int):
    """B-spline free-form deformation, Mattes mutual information, L-BFGS-B, two levels; as a dense field."""
    import SimpleITK as sitk

    extent = [sz * sp for sz, sp in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(1, int(round(e / spacing_mm))) for e in extent]
    transform = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=iterations)
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SetInitialTransform(transform, inPlace=True)
    try:
        method.Execute(fixed, moving)
    except RuntimeError as exc:
        raise RegistrationError(f"B-spline registration failed ({str(exc).splitlines()[-1][:200]})") from None
    converter = sitk.TransformToDisplacementFieldFilter()
    converter.SetReferenceImage(fixed)
    converter.SetOutputPixelType(sitk.sitkVectorFloat64)
    return converter.Execute(transform)

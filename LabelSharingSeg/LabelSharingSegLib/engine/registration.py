"""Automatic affine alignment of a scan to a bundle's reference image (SimpleITK, not a hand-written optimiser).

A real scan is rarely in the bundle's template/atlas space (other position, orientation, field of view).
We register the scan (moving) to the reference (fixed): centre-of-mass initialisation, a rigid stage, then
an affine stage, both with Mattes mutual information over a 3-level pyramid. The result is a 4x4 matrix
``M`` in RAS millimetres mapping reference world points to scan world points. Because inference always
resamples through affines, aligning a scan needs nothing but a corrected affine: a scan voxel sits at
``inv(M) @ scan_affine`` in reference space, so the usual pipeline segments it there and writes the result
back onto the scan's own grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import InputError

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # ITK works in LPS, our affines are RAS


@dataclass(frozen=True)
class Alignment:
    """``matrix`` maps reference (RAS mm) to scan (RAS mm); ``metric`` is the final MI value (lower is better)."""

    matrix: np.ndarray
    metric: float

    def aligned_affine(self, scan_affine: np.ndarray) -> np.ndarray:
        """The scan's voxel -> reference-space affine."""
        return np.linalg.inv(self.matrix) @ np.asarray(scan_affine, dtype=np.float64)


def _to_sitk(array: np.ndarray, affine: np.ndarray):
    import SimpleITK as sitk

    lps = _LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(
        np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0))
    )
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in lps[:3, 3]])
    image.SetDirection([float(d) for d in (lps[:3, :3] / spacing).flatten()])
    return image


def _transform_to_ras_matrix(transform) -> np.ndarray:
    """An ITK affine-like transform (fixed LPS -> moving LPS) as a 4x4 RAS matrix."""
    dim = 3
    matrix = np.array(transform.GetMatrix()).reshape(dim, dim)
    centre = np.array(transform.GetCenter())
    translation = np.array(transform.GetTranslation())
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + centre - matrix @ centre
    return _LPS @ lps @ _LPS


def register_affine(
    scan: np.ndarray,
    scan_affine: np.ndarray,
    reference: np.ndarray,
    reference_affine: np.ndarray,
    *,
    stages: tuple[str, ...] = ("rigid", "affine"),
    seed: int = 1,
    progress: Callable[[float, str], None] | None = None,
) -> Alignment:
    """Register ``scan`` to ``reference`` (both 3D arrays [i, j, k] with RAS affines); see module docstring."""
    import SimpleITK as sitk

    if np.asarray(scan).ndim != 3 or np.asarray(reference).ndim != 3 or min(np.shape(scan)) < 4:
        raise InputError("automatic alignment needs a 3D scan (at least 4 voxels along each axis)")
    unknown = set(stages) - {"rigid", "affine"}
    if unknown or not stages:
        raise InputError(f"alignment stages must be 'rigid' and/or 'affine', got {stages}")
    fixed = _to_sitk(_robust_scale(reference), reference_affine)
    moving = _to_sitk(_robust_scale(scan), scan_affine)
    transform = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    metric = float("nan")
    for number, stage in enumerate(stages):
        if progress:
            progress(number / len(stages), f"aligning the scan to the reference ({stage})")
        if stage == "affine":
            affine = sitk.AffineTransform(3)
            affine.SetMatrix(transform.GetMatrix())
            affine.SetTranslation(transform.GetTranslation())
            affine.SetCenter(transform.GetCenter())
            transform = affine
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        # a fixed non-zero seed: SimpleITK reads seed 0 as "use the wall clock", which made results vary
        method.SetMetricSamplingPercentage(0.15, max(1, int(seed)))
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0,
            minStep=1e-4,
            numberOfIterations=200,
            relaxationFactor=0.6,
            gradientMagnitudeTolerance=1e-6,
        )
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([4, 2, 1])
        method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        method.SetInitialTransform(transform, inPlace=True)
        try:
            method.Execute(fixed, moving)
        except RuntimeError as exc:
            raise InputError(
                f"automatic alignment failed ({str(exc).splitlines()[-1][:200]}); check that the scan "
                "shows the same anatomy as the bundle's reference, or turn alignment off"
            ) from None
        metric = float(method.GetMetricValue())
    if progress:
        progress(1.0, "alignment done")
    return Alignment(_transform_to_ras_matrix(transform), metric)


def _robust_scale(array: np.ndarray) -> np.ndarray:
    """Clip to the 1st-99th percentile and scale to 0..1: MI is robust, this just tames outliers."""
    array = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(array, [1, 99])
    return np.clip((array - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)

"""Automatic affine alignment of a scan to a bundle's reference image (SimpleITK, not a hand-written optimiser).

A real scan is rarely in the bundle's template/atlas space: other position, orientation and field of view,
and often a whole head (skull, scalp, neck) where the reference is brain only, or the reverse. We register
the scan (moving) to the reference (fixed) with Mattes mutual information, restricted to both images'
foreground masks (so a brain-only image is compared with the brain of a whole head, never with its skull,
scalp or background), from many starting poses (tilts up to 30 degrees about left-right and 15 about the
other axes, combined, each placed by the top of the imaged object along its tilted superior axis; scored on
binned images, the best few tried briefly, the best kept), then a rigid and an affine stage over a 3-level
pyramid.

The result is a 4x4 matrix ``M`` in RAS millimetres mapping reference world points to scan world points.
Because inference always resamples through affines, aligning a scan needs nothing but a corrected affine: a
scan voxel sits at ``inv(M) @ scan_affine`` in reference space, so the usual pipeline segments it there and
writes the result back onto the scan's own grid.

Quality check: the same masked metric is evaluated with no alignment (world coordinates as stored). An
alignment scoring worse than that is refused: the result then keeps the world coordinates (identity
matrix), ``accepted`` is False and ``warning`` says why. How sharp a match those world coordinates are is then
measured too (``identity_sharpness``, as the confidence check below measures a found pose). A scan stored in
the reference's space already keeps them (``places_scan``). One that is not (the registration failed and the
stored pose matches nothing either, as on a real proton-density series) has no pose to segment it in, and the
segmentation entry points refuse it (inference.py).

Confidence check: a true alignment is a sharp optimum (moving the reference a little off it loses nearly as
much of the match as moving either image off itself), a wrong one found from a poor start a flat hollow (see
PEAK_CONFIDENT; `lsseg bench alignment` measures both). A flat result is searched again from a wider grid of
starting poses (tilts up to 45 degrees about left-right and 30 about the other axes), and its result kept when
it matches both better and clearly more sharply; one that stays flat is kept but marked ``confident=False``,
with a ``warning`` to check the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import InputError

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # ITK works in LPS, our affines are RAS
# Starting poses tried before the full optimisation, rotations in degrees about the R, A, S axes. The full
# optimisation recovers about 10 degrees and 10 mm from where it starts, so the starts must fall that close.
# Single-axis tilts, each combined with every translation of _start_translations:
_START_ROTATIONS = ((0, 0, 0), (15, 0, 0), (-15, 0, 0), (0, 0, 15), (0, 0, -15), (0, 15, 0), (0, -15, 0))
# and a grid of combined tilts, each with the translations of _slab_translations (which follow the rotation).
# A head in a scanner is tilted most about the left-right axis (nodding; scans planned on other landmarks).
_GRID_PITCH = (-30, -15, 0, 15, 30)
_GRID_ROLL_YAW = (-15, 0, 15)
# Searched when the first search ends in a flat optimum (see the confidence check): tilts up to 45 degrees about
# left-right and 30 about the other axes (a head turned 55 degrees in all was found only from these).
_WIDE_PITCH = (-45, -30, -15, 0, 15, 30, 45)
_WIDE_ROLL_YAW = (-30, -15, 0, 15, 30)
_REFINED_STARTS = 4  # best-scoring starting poses refined before choosing one
_UNTILTED_SHIFTS = ("world", "centres")  # with no tilt, refined whatever they score
_SCORE_SHRINK = 2  # starting poses are scored on images binned by this factor (about 9x faster)
_SCALP_MM = 12.0  # between the top of the brain and the top of the head
# Raised whenever the search can find another alignment for the same images: part of the registration cache's
# key, so an alignment found by an earlier search is not reused (2: the tilted grid of starting poses; 3: the
# confidence check and its wider search; 4: the sharpness of a refused alignment's world coordinates).
SEARCH_REVISION = 4
# The confidence check moves the reference off the found pose by a sixth of its foreground's RMS radius (10 mm
# for a brain) along each axis and turns it by 10 degrees about each axis, both ways, and measures the share of
# the match lost; each image moved off itself the same way loses more (most for a sharp, textured image, less
# for a smooth or coarse one). The found pose is confident when it loses at least PEAK_CONFIDENT of what the
# less sharp of the two loses against itself. Measured (`lsseg bench alignment`, Testing/test_alignment.py):
# true alignments of two real heads 0.57-0.75 (to the shipped template 0.69-0.75, to an LCS atlas case directly
# 0.57-0.65), wrong ones 0.09-0.34 (and 0.43-0.45 for one 7 mm off); on a smooth phantom 0.80-0.90 and 0.48-0.51.
_PEAK_SHIFT_FRACTION = 1 / 6
_PEAK_TURN_DEG = 10.0
PEAK_CONFIDENT = 0.55
_SHARPER_BY = 0.1  # the wider search's result replaces a flat one only when at least this much sharper
_WORKING_SPACING_MM = 2.0  # finer references are compared at this spacing: enough for an affine
MIN_REGISTRATION_VOXELS = 4


@dataclass(frozen=True)
class Alignment:
    """``matrix`` maps reference (RAS mm) to scan (RAS mm).

    ``metric``: the final masked mutual information (lower is better); ``identity_metric``: the same without
    alignment; ``overlap``: fraction of the reference's foreground that falls inside the scan's foreground
    after alignment (``identity_overlap``: without). ``accepted`` is False when the quality check refused the
    registration; ``matrix`` is then the identity and ``warning`` explains. ``peak_sharpness``: the share of the
    match lost when the reference is moved a little off the found pose, relative to what the images lose moved
    off themselves; ``confident`` is False when that is below PEAK_CONFIDENT (a flat optimum, as wrong
    alignments are), ``warning`` then says to check the result. ``identity_sharpness``: the same for the scan's
    own world coordinates, measured when the alignment is refused (NaN otherwise).
    """

    matrix: np.ndarray
    metric: float
    identity_metric: float = float("nan")
    overlap: float = float("nan")
    identity_overlap: float = float("nan")
    accepted: bool = True
    warning: str | None = None
    start: str = ""
    peak_sharpness: float = float("nan")
    confident: bool = True
    identity_sharpness: float = float("nan")

    @property
    def places_scan(self) -> bool:
        """Whether the scan has a pose on the reference: the alignment's, or, when it was refused, the world
        coordinates it keeps, unless they were measured to match the reference less sharply than true
        alignments do (never measured, NaN: kept, as an alignment built by hand or elsewhere may be)."""
        return self.accepted or not self.identity_sharpness < PEAK_CONFIDENT

    def aligned_affine(self, scan_affine: np.ndarray) -> np.ndarray:
        """The scan's voxel -> reference-space affine."""
        return np.linalg.inv(self.matrix) @ np.asarray(scan_affine, dtype=np.float64)

    def summary(self) -> str:
        """One line for logs and reports."""
        quality = (
            f"mutual information {self.metric:.3f} (no alignment {self.identity_metric:.3f}), "
            f"reference foreground inside the scan {_percent(self.overlap)} "
            f"(no alignment {_percent(self.identity_overlap)})"
        )
        # the sharpness of a refused pose says nothing about the world coordinates kept instead; below zero (the
        # match improves off the pose: no optimum at all) it reads as 0%
        if not math.isnan(self.peak_sharpness) and self.accepted:
            quality += (
                f", sharpness of the match {_percent(max(self.peak_sharpness, 0.0))} of the images' own"
            )
        if not math.isnan(self.identity_sharpness) and not self.accepted:
            quality += (
                f", sharpness of the match in world coordinates {_percent(max(self.identity_sharpness, 0.0))} "
                f"of the images' own"
            )
        if not self.accepted:
            return f"alignment refused, world coordinates kept: {self.warning}; {quality}"
        if not self.confident:
            return f"aligned the scan to the bundle's reference, UNCERTAIN: {self.warning}; {quality}"
        return f"aligned the scan to the bundle's reference: {quality}"


def can_register(image: np.ndarray) -> bool:
    """Whether ``image`` is enough of a volume to be registered (a few slices are not)."""
    return np.ndim(image) == 3 and min(np.shape(image)) >= MIN_REGISTRATION_VOXELS


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.0f}%"


def _to_sitk(array: np.ndarray, affine: np.ndarray):
    import SimpleITK as sitk

    lps = _LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in lps[:3, 3]])
    image.SetDirection([float(d) for d in (lps[:3, :3] / spacing).flatten()])
    return image


def _transform_to_ras_matrix(transform) -> np.ndarray:
    """An ITK affine-like transform (fixed LPS -> moving LPS) as a 4x4 RAS matrix."""
    matrix = np.array(transform.GetMatrix()).reshape(3, 3)
    centre = np.array(transform.GetCenter())
    translation = np.array(transform.GetTranslation())
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + centre - matrix @ centre
    return _LPS @ lps @ _LPS


def _ras_matrix_to_transform(matrix: np.ndarray, centre):
    """A 4x4 RAS reference -> scan matrix as an ITK AffineTransform centred at ``centre`` (LPS)."""
    import SimpleITK as sitk

    lps = _LPS @ np.asarray(matrix, dtype=np.float64) @ _LPS
    transform = sitk.AffineTransform(3)
    transform.SetCenter([float(c) for c in centre])
    transform.SetMatrix([float(v) for v in lps[:3, :3].flatten()])
    c = np.asarray(centre, dtype=np.float64)
    transform.SetTranslation([float(v) for v in lps[:3, 3] + lps[:3, :3] @ c - c])
    return transform


def robust_scale(array: np.ndarray) -> np.ndarray:
    """Clip to the 1st-99th percentile of the non-zero voxels and scale to 0..1 (tames outliers)."""
    array = np.asarray(array, dtype=np.float32)
    values = array[array != 0]
    if values.size < 16:
        values = array.ravel()
    lo, hi = np.percentile(values, [1, 99])
    lo = min(float(lo), 0.0)
    return np.clip((array - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)


def foreground_mask(scaled: np.ndarray) -> np.ndarray:
    """The imaged object (head or brain) of a 0..1 scaled image: above a tenth of the bright level (MR
    background and noise stay below it), the largest connected part, holes filled (dark CSF, sinuses)."""
    from scipy import ndimage

    mask = scaled > 0.1
    parts, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, parts, index=range(1, count + 1))
        mask = parts == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def _working_grid(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Downsample (block averaging) a fine image so that no axis is finer than _WORKING_SPACING_MM."""
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    factors = [max(1, int(_WORKING_SPACING_MM / s + 1e-6)) for s in spacing]
    if all(f == 1 for f in factors):
        return array, affine
    shape = [n // f for n, f in zip(array.shape, factors)]
    cut = array[: shape[0] * factors[0], : shape[1] * factors[1], : shape[2] * factors[2]]
    blocks = cut.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    out = np.asarray(affine, dtype=np.float64).copy()
    out[:3, :3] = out[:3, :3] * np.array(factors)
    # the centre of a block of voxels 0..f-1 is at voxel (f - 1) / 2
    out[:3, 3] = np.asarray(affine)[:3, :3] @ ((np.array(factors) - 1) / 2.0) + np.asarray(affine)[:3, 3]
    return blocks.mean(axis=(1, 3, 5)).astype(np.float32), out


@dataclass
class _Pair:
    """Both images prepared for SimpleITK: scaled intensities, foreground masks, their centres (LPS mm)."""

    fixed: Any  # SimpleITK.Image (SimpleITK is imported lazily)
    moving: Any
    fixed_mask: Any
    moving_mask: Any
    fixed_centre: np.ndarray
    moving_centre: np.ndarray
    fixed_top: float  # highest superior (S) coordinate of the foreground, RAS mm
    moving_top: float
    fixed_points: np.ndarray  # (N, 3) LPS mm of (a sample of) the foreground voxels
    moving_points: np.ndarray


def _prepare(scan, scan_affine, reference, reference_affine) -> _Pair:
    import SimpleITK as sitk

    def one(array, affine):
        array, affine = _working_grid(np.asarray(array, dtype=np.float32), affine)
        scaled = robust_scale(array)
        mask = foreground_mask(scaled)
        if mask.sum() < 8:
            raise InputError("automatic alignment found no object in the image (it is blank or constant)")
        index = np.argwhere(mask)
        world = affine[:3, :3] @ index.T + affine[:3, 3:4]
        centre = (_LPS[:3, :3] @ world.mean(axis=1)).astype(np.float64)
        top = float(np.percentile(world[2], 99.5))
        step = max(1, len(index) // 50_000)  # a sample is enough for centroids and percentiles
        points = (_LPS[:3, :3] @ world[:, ::step]).T
        image = _to_sitk(scaled.astype(np.float32), affine)
        mask_image = sitk.Cast(_to_sitk(mask.astype(np.uint8), affine), sitk.sitkUInt8)
        return image, mask_image, centre, top, points

    fixed, fixed_mask, fixed_centre, fixed_top, fixed_points = one(reference, reference_affine)
    moving, moving_mask, moving_centre, moving_top, moving_points = one(scan, scan_affine)
    return _Pair(
        fixed,
        moving,
        fixed_mask,
        moving_mask,
        fixed_centre,
        moving_centre,
        fixed_top,
        moving_top,
        fixed_points,
        moving_points,
    )


def _binned(pair: _Pair) -> _Pair:
    """The pair on images binned by _SCORE_SHRINK, for scoring many starting poses (the pair itself when the
    reference is too small to bin)."""
    import SimpleITK as sitk

    if min(pair.fixed.GetSize()) // _SCORE_SHRINK < 16:
        return pair
    factors = [_SCORE_SHRINK] * 3
    return replace(
        pair,
        fixed=sitk.BinShrink(pair.fixed, factors),
        moving=sitk.BinShrink(pair.moving, factors),
        fixed_mask=sitk.Shrink(pair.fixed_mask, factors),
        moving_mask=sitk.Shrink(pair.moving_mask, factors),
    )


def _method(pair: _Pair, seed: int, *, shrink, sigmas, iterations: int, percentage: float = 0.15):
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricFixedMask(pair.fixed_mask)
    method.SetMetricMovingMask(pair.moving_mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # a fixed non-zero seed: SimpleITK reads seed 0 as "use the wall clock", which made results vary
    method.SetMetricSamplingPercentage(percentage, max(1, int(seed)))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-4,
        numberOfIterations=iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    # a level is only worth it while the fixed image keeps at least 8 voxels along its shortest axis
    smallest = min(pair.fixed.GetSize())
    levels = [(f, s) for f, s in zip(shrink, sigmas) if f == 1 or smallest // f >= 8] or [(1, 0.0)]
    method.SetShrinkFactorsPerLevel([f for f, _ in levels])
    method.SetSmoothingSigmasPerLevel([s for _, s in levels])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _evaluate(pair: _Pair, transform, seed: int, percentage: float = 0.3) -> float:
    """Masked MI of ``transform`` at full working resolution (0.0, the worst, when nothing overlaps)."""
    method = _method(pair, seed, shrink=[1], sigmas=[0.0], iterations=1, percentage=percentage)
    method.SetInitialTransform(transform, inPlace=False)
    try:
        return float(method.MetricEvaluate(pair.fixed, pair.moving))
    except RuntimeError:
        return 0.0


def _overlap(pair: _Pair, transform) -> float:
    """Fraction of the reference's foreground that lands inside the scan's foreground under ``transform``."""
    import SimpleITK as sitk

    carried = sitk.Resample(pair.moving_mask, pair.fixed_mask, transform, sitk.sitkNearestNeighbor, 0)
    fixed = sitk.GetArrayViewFromImage(pair.fixed_mask) > 0
    inside = sitk.GetArrayViewFromImage(carried) > 0
    return float((fixed & inside).sum() / max(1, fixed.sum()))


def _euler(pair: _Pair, rotation_deg, translation_lps):
    import SimpleITK as sitk

    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(c) for c in pair.fixed_centre])
    # ITK's Euler angles are about the LPS axes; R/A flips only change the sign of the first two angles
    rx, ry, rz = (math.radians(a) for a in rotation_deg)
    transform.SetRotation(-rx, -ry, rz)
    transform.SetTranslation([float(t) for t in translation_lps])
    return transform


def _start_translations(pair: _Pair) -> dict[str, np.ndarray]:
    """Candidate shifts (LPS mm, fixed -> moving): centres of the foregrounds matched; and the tops of the
    foregrounds matched (a brain-only image against a whole head with neck: the centres differ, the top of the
    head is just above the top of the brain), with an allowance for the scalp and skull."""
    centres = pair.moving_centre - pair.fixed_centre
    top = centres.copy()
    top[2] = pair.moving_top - pair.fixed_top
    candidates = {"centres": centres, "tops": top}
    candidates["tops-scalp-down"] = top - np.array([0.0, 0.0, _SCALP_MM])
    candidates["tops-scalp-up"] = top + np.array([0.0, 0.0, _SCALP_MM])
    candidates["world"] = np.zeros(3)
    return candidates


def _slab_translations(pair: _Pair, rotation_deg) -> dict[str, np.ndarray]:
    """Shifts (LPS mm, fixed -> moving) for a starting rotation: the reference's foreground centre onto the
    centre of the scan's top slab as tall as the reference's foreground, "top" along the reference's superior
    axis as the rotation carries it into the scan. A brain-only reference then lands on the brain of a whole
    head in any tilt (its neck and shoulders below the slab), and a brain on a brain."""
    rotation = np.array(_euler(pair, rotation_deg, np.zeros(3)).GetMatrix()).reshape(3, 3)
    up = rotation @ np.array([0.0, 0.0, 1.0])  # LPS: +z is superior
    low, high = np.percentile(pair.fixed_points[:, 2], [0.5, 99.5])
    heights = pair.moving_points @ up
    top = float(np.percentile(heights, 99.5))
    shifts = {}
    for name, below_top in (("top slab", 0.0), ("top slab-scalp-down", _SCALP_MM)):
        inside = (heights <= top - below_top) & (heights >= top - below_top - (high - low))
        if np.count_nonzero(inside) >= 8:
            shifts[name] = pair.moving_points[inside].mean(axis=0) - pair.fixed_centre
    return shifts


def _pose_name(shift_name: str, rotation) -> str:
    """A starting pose's name, as ``Alignment.start`` reports it."""
    return f"{shift_name}, rotation {tuple(rotation)}"


def _grid_poses(pair: _Pair, pitches, roll_yaws, skip=frozenset()) -> list[tuple[str, object]]:
    """(name, transform) of a grid of combined tilts (degrees about R; about A and S), each with the translations
    that follow the tilt; rotations in ``skip`` are left out."""
    rotations = ((r, a, s) for r in pitches for a in roll_yaws for s in roll_yaws)
    return [
        (_pose_name(name, rotation), _euler(pair, rotation, shift))
        for rotation in rotations
        if rotation not in skip
        for name, shift in _slab_translations(pair, rotation).items()
    ]


def _start_poses(pair: _Pair) -> list[tuple[str, object]]:
    """(name, transform) of every starting pose of the first search: the single-axis tilts with the fixed
    translations, and the grid of combined tilts with the translations that follow each tilt."""
    poses = [
        (_pose_name(name, rotation), _euler(pair, rotation, shift))
        for name, shift in _start_translations(pair).items()
        for rotation in _START_ROTATIONS
    ]
    return poses + _grid_poses(pair, _GRID_PITCH, _GRID_ROLL_YAW)


def _wide_start_poses(pair: _Pair) -> list[tuple[str, object]]:
    """The wider grid searched after a flat first result, less the tilts the first search already tried."""
    tried = frozenset((r, a, s) for r in _GRID_PITCH for a in _GRID_ROLL_YAW for s in _GRID_ROLL_YAW)
    return _grid_poses(pair, _WIDE_PITCH, _WIDE_ROLL_YAW, skip=tried)


def _best_start(pair: _Pair, seed: int, progress, poses, always=frozenset()) -> tuple[object, str]:
    """Every starting pose of ``poses`` is scored as it is, on binned images; the few best (and those named in
    ``always``) get a short coarse rigid registration each, and the one that ends with the best metric wins
    (scoring all poses first keeps this fast)."""
    binned = _binned(pair)
    scored = sorted(poses, key=lambda pose: _evaluate(binned, pose[1], seed, percentage=0.2))
    refined = scored[:_REFINED_STARTS] + [pose for pose in scored[_REFINED_STARTS:] if pose[0] in always]
    best, best_value, best_name = None, math.inf, ""
    for number, (name, transform) in enumerate(refined):
        if progress:
            progress(0.4 * number / len(refined), "aligning the scan: trying starting poses")
        method = _method(pair, seed, shrink=[4], sigmas=[2.0], iterations=40)
        method.SetInitialTransform(transform, inPlace=True)
        try:
            method.Execute(pair.fixed, pair.moving)
        except RuntimeError:
            continue  # this pose leaves too little overlap; another will do
        value = _evaluate(pair, transform, seed)
        if value < best_value:
            best, best_value, best_name = transform, value, name
    if best is None:  # no short run succeeded (e.g. a tiny image): the full stages start from the best score
        best_name, best = scored[0]
    return best, best_name


def _run_stages(pair: _Pair, transform, stages, seed: int, progress) -> tuple[object, str | None]:
    """The rigid and/or affine stages over the pyramid from ``transform``; returns the transform and why it
    failed (None when it did not)."""
    import SimpleITK as sitk

    for number, stage in enumerate(stages):
        if progress:
            progress(0.4 + 0.6 * number / len(stages), f"aligning the scan to the reference ({stage})")
        if stage == "affine" and not isinstance(transform, sitk.AffineTransform):
            affine = sitk.AffineTransform(3)
            affine.SetCenter(transform.GetCenter())
            affine.SetMatrix(transform.GetMatrix())
            affine.SetTranslation(transform.GetTranslation())
            transform = affine
        elif stage == "rigid" and isinstance(transform, sitk.AffineTransform):
            continue  # a given general affine start is refined by the affine stage only
        method = _method(pair, seed, shrink=[4, 2, 1], sigmas=[2.0, 1.0, 0.0], iterations=200)
        method.SetInitialTransform(transform, inPlace=True)
        try:
            method.Execute(pair.fixed, pair.moving)
        except RuntimeError as exc:  # e.g. the images drifted apart: refused below, like any bad result
            return transform, f"the registration failed ({str(exc).strip().splitlines()[-1][:160]})"
    return transform, None


def _match(pair: _Pair, transform, fixed_values: np.ndarray, fixed_inside: np.ndarray) -> float:
    """Mutual information (nats, 32 x 32 bins) between the reference's foreground and the scan carried onto it
    by ``transform``, where the scan's foreground lands. Our own histogram, not ITK's metric: resampling onto
    the reference's grid costs what the reference costs, where ITK's set-up grows with the scan."""
    import SimpleITK as sitk

    # copies, not views: a view would outlive the resampled image it points into
    moved = sitk.GetArrayFromImage(sitk.Resample(pair.moving, pair.fixed, transform, sitk.sitkLinear, 0.0))
    lands = sitk.Resample(pair.moving_mask, pair.fixed, transform, sitk.sitkNearestNeighbor, 0)
    inside = fixed_inside & (sitk.GetArrayFromImage(lands) > 0)
    if np.count_nonzero(inside) < 64:
        return 0.0
    joint = np.histogram2d(fixed_values[inside], moved[inside], bins=32, range=((0, 1), (0, 1)))[0]
    joint /= joint.sum()
    outer = np.outer(joint.sum(axis=1), joint.sum(axis=0))
    used = joint > 0
    return float((joint[used] * np.log(joint[used] / outer[used])).sum())


def _peak_drop(pair: _Pair, transform) -> float:
    """The mean share of the match lost when the reference is moved off ``transform``'s pose by
    _PEAK_SHIFT_FRACTION of its foreground's RMS radius along each axis or turned by _PEAK_TURN_DEG about each
    axis, both ways (12 poses); 0.0 when the found pose matches nothing."""
    import SimpleITK as sitk
    from scipy.spatial.transform import Rotation

    fixed_values = sitk.GetArrayFromImage(pair.fixed)
    fixed_inside = sitk.GetArrayFromImage(pair.fixed_mask) > 0
    found = _match(pair, transform, fixed_values, fixed_inside)
    if not found > 0:
        return 0.0
    matrix = _transform_to_ras_matrix(transform)
    centre = _LPS[:3, :3] @ pair.fixed_centre  # RAS mm
    radius = float(np.sqrt(((pair.fixed_points - pair.fixed_centre) ** 2).sum(axis=1).mean()))
    moves = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            shift = np.eye(4)
            shift[axis, 3] = sign * _PEAK_SHIFT_FRACTION * radius
            turn = np.eye(4)
            turn[:3, :3] = Rotation.from_rotvec(
                sign * math.radians(_PEAK_TURN_DEG) * np.eye(3)[axis]
            ).as_matrix()
            turn[:3, 3] = centre - turn[:3, :3] @ centre  # about the reference's centre
            moves += [shift, turn]
    moved = [
        _match(pair, _ras_matrix_to_transform(matrix @ m, pair.fixed_centre), fixed_values, fixed_inside)
        for m in moves
    ]
    return float(1.0 - np.mean(moved) / found)


def _peak_sharpness(pair: _Pair, transform) -> float:
    """How sharp the match is at ``transform``, as a share of how sharp each image's match with itself is, the
    less sharp of the two (a coarse or blurred scan cannot match sharply; see PEAK_CONFIDENT)."""
    import SimpleITK as sitk

    reference_alone = replace(pair, moving=pair.fixed, moving_mask=pair.fixed_mask)
    # the scan where it lands on the reference's grid, against the scan itself moved the same ways
    landed = sitk.Resample(pair.moving, pair.fixed, transform, sitk.sitkLinear, 0.0)
    scan_alone = replace(pair, fixed=landed)
    own = min(_peak_drop(reference_alone, sitk.AffineTransform(3)), _peak_drop(scan_alone, transform))
    return _peak_drop(pair, transform) / max(own, 1e-6)


def register_affine(
    scan: np.ndarray,
    scan_affine: np.ndarray,
    reference: np.ndarray,
    reference_affine: np.ndarray,
    *,
    stages: tuple[str, ...] = ("rigid", "affine"),
    seed: int = 1,
    progress: Callable[[float, str], None] | None = None,
    initial: np.ndarray | None = None,
    check: bool = True,
) -> Alignment:
    """Register ``scan`` to ``reference`` (both 3D arrays [i, j, k] with RAS affines); see module docstring.

    ``initial``: a 4x4 RAS reference -> scan matrix to start from instead of the multi-start search.
    ``check``: refuse a result that scores worse than no alignment (False: return it anyway, flagged).
    """
    import SimpleITK as sitk

    if np.asarray(reference).ndim != 3 or not can_register(scan):
        raise InputError(
            f"automatic alignment needs a 3D scan (at least {MIN_REGISTRATION_VOXELS} voxels along each axis)"
        )
    unknown = set(stages) - {"rigid", "affine"}
    if unknown or not stages:
        raise InputError(f"alignment stages must be 'rigid' and/or 'affine', got {stages}")
    pair = _prepare(scan, scan_affine, reference, reference_affine)
    if initial is not None:
        start_transform, start = _ras_matrix_to_transform(initial, pair.fixed_centre), "given"
    else:
        # the untilted starts are always tried: among many tilted poses a near-symmetric object can crowd them
        # out of the best few, and a scan already close to the reference must not end farther from it
        untilted = frozenset(_pose_name(name, (0, 0, 0)) for name in _UNTILTED_SHIFTS)
        start_transform, start = _best_start(pair, seed, progress, _start_poses(pair), always=untilted)
    transform, failure = _run_stages(pair, start_transform, stages, seed, progress)
    metric = _evaluate(pair, transform, seed)
    sharpness = _peak_sharpness(pair, transform) if failure is None else float("nan")
    wide_poses = (
        _wide_start_poses(pair) if initial is None and failure is None and sharpness < PEAK_CONFIDENT else []
    )
    if wide_poses:
        if progress:
            progress(0.9, "aligning the scan: the match is flat, trying more starting poses")
        wide_start, wide_name = _best_start(pair, seed, None, wide_poses)
        wide, wide_failure = _run_stages(pair, wide_start, stages, seed, None)
        if wide_failure is None:
            wide_metric, wide_sharpness = _evaluate(pair, wide, seed), _peak_sharpness(pair, wide)
            # taken only when it matches better and clearly more sharply: on a smooth, ambiguous image another
            # pose can match a hair better and be no truer (seen: 0.3% better MI, equally flat, 4 mm elsewhere)
            if wide_metric < metric and wide_sharpness > sharpness + _SHARPER_BY:
                transform, start, metric, sharpness = wide, wide_name, wide_metric, wide_sharpness
    identity = sitk.AffineTransform(3)
    identity_metric = _evaluate(pair, identity, seed)
    result = Alignment(
        _transform_to_ras_matrix(transform),
        metric,
        identity_metric,
        _overlap(pair, transform),
        _overlap(pair, identity),
        start=start,
        peak_sharpness=sharpness,
    )
    if progress:
        progress(1.0, "alignment done")
    if metric < identity_metric and failure is None:
        if sharpness >= PEAK_CONFIDENT:
            return result
        return replace(
            result,
            confident=False,
            warning=f"the match is flat around the found pose (its sharpness is {_percent(sharpness)} of the "
            f"images' own; true alignments measured 57% or more), so the alignment may be wrong; check the "
            f"result over the scan, or place the scan near the reference first",
        )
    warning = failure or (
        f"the registration scored worse than the scan's own world coordinates (mutual information "
        f"{metric:.3f} vs {identity_metric:.3f})"
    )
    warning += "; check that the scan shows the reference's anatomy, or place it near the reference first"
    # whether the world coordinates kept instead are a pose to segment in (Alignment.places_scan)
    result = replace(result, warning=warning, identity_sharpness=_peak_sharpness(pair, identity))
    if not check:
        return result
    return replace(result, matrix=np.eye(4), accepted=False)

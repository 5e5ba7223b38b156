"""``lsseg bench alignment``: how reliably a whole-head scan is aligned to a bundle's reference, over head
poses and slice thicknesses (timings never asserted in tests; numbers go to docs/DEMO.md).

The scan is Colin 27 (a real whole head that no training case was made from, realscan.py), or with
``--scan second-head`` pycortex's subject S1 (another person, data/sources.py), in the demo's scanner pose and in
``--poses - 1`` more poses: that pose tilted by a random rotation (uniform in +-``--degrees`` about each axis)
and shifted (+-``--shift`` mm), each resampled onto every grid of ``--grids``.
``--cut-top`` takes the top of the head off each scan (a field of view ending below the vertex). Each is
registered as ``lsseg segment`` does (to the bundle's network reference where it has one, else to its
reference image or atlas), and the result is compared with the pose that made the scan. The error is the mean
distance (mm) between where the reference's foreground voxels land under the registration and under the true
pose; the true pose assumes the reference in MNI space (the shipped templates), so a few mm remain where
Colin 27's brain differs from the template's. Bundles whose reference is not in MNI space (an atlas case) read
the error against the first pose's result (``--against first``) instead: a failure shows in either as tens of
mm. An alignment refused by the quality check or marked uncertain by the confidence check is "flagged" (the user
is told to check it); the summary counts the failures that were not.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.registration import foreground_mask, register_affine, robust_scale

from .data.sources import load_second_head
from .realscan import scan_in_pose, scanner_transform

FAILED_MM = 10.0  # an error above this is counted as a failed alignment
# name: (spacing mm per voxel axis, the world axis each voxel axis runs along)
GRIDS = {
    "2mm-sagittal": ((2.0, 2.0, 2.4), ("A", "S", "R")),
    "axial-1x1x5": ((1.0, 1.0, 5.0), ("R", "A", "S")),
    "axial-1x1x7": ((1.0, 1.0, 7.0), ("R", "A", "S")),
    "4mm": ((4.0, 4.0, 4.0), ("R", "A", "S")),
    "6mm": ((6.0, 6.0, 6.0), ("R", "A", "S")),
}


def register(sub) -> None:
    bench = sub.add_parser(
        "alignment",
        help="automatic alignment of a real whole-head scan over head poses and slice thicknesses",
    )
    bench.add_argument("bundle", type=Path, help="bundle whose reference the scan is aligned to")
    bench.add_argument("--poses", type=int, default=8, help="head poses (the first is the demo's; default 8)")
    bench.add_argument(
        "--grids",
        default="2mm-sagittal,axial-1x1x5,4mm",
        help=f"comma-separated scan grids from {', '.join(GRIDS)} (default: 2mm-sagittal,axial-1x1x5,4mm)",
    )
    bench.add_argument("--degrees", type=float, default=20.0, help="random tilt about each axis, +- degrees")
    bench.add_argument("--shift", type=float, default=25.0, help="random shift along each axis, +- mm")
    bench.add_argument("--seed", type=int, default=0, help="seed of the random poses")
    bench.add_argument(
        "--cut-top",
        type=float,
        default=0.0,
        help="cut this many mm off the top of the head (a field of view ending below the vertex)",
    )
    bench.add_argument(
        "--against",
        choices=("pose", "first"),
        default="pose",
        help="pose: error against the true pose (reference in MNI space); first: against the first pose's result",
    )
    bench.add_argument(
        "--to",
        choices=("segment", "atlas"),
        default="segment",
        help="segment: what lsseg segment aligns to (default); atlas: an LCS bundle's atlas image, as for a "
        "bundle without a reference (use with --against first)",
    )
    bench.add_argument(
        "--scan",
        choices=("colin27", "second-head"),
        default="colin27",
        help="colin27: Colin 27, in MNI space (default); second-head: pycortex's subject S1, another person "
        "without a known pose (needs --against first)",
    )
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.set_defaults(func=run_alignment)


def head_poses(count: int, degrees: float, shift: float, seed: int) -> list[np.ndarray]:
    """MNI world -> scanner world: the demo's scanner pose, then that pose moved by ``count - 1`` random rigid
    transforms (a rotation about the MNI origin, near the centre of the brain, and a shift)."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    poses = [scanner_transform()]
    for _ in range(count - 1):
        extra = np.eye(4)
        extra[:3, :3] = Rotation.from_euler(
            "xyz", rng.uniform(-degrees, degrees, 3), degrees=True
        ).as_matrix()
        extra[:3, 3] = rng.uniform(-shift, shift, 3)
        poses.append(extra @ scanner_transform())
    return poses


def _reference(bundle, to: str) -> tuple[np.ndarray, np.ndarray]:
    """What ``lsseg segment`` aligns a scan to: the network reference of an LCS bundle, else the reference;
    or (``to="atlas"``) an LCS bundle's atlas image."""
    if to == "atlas":
        return bundle.atlas_image()
    if not bundle.has_reference():
        raise InputError(f"{bundle.path}: this bundle carries no reference image, so scans are not aligned")
    stored = bundle.network_reference()
    return stored if stored is not None else bundle.reference_image()


def cut_top(image: np.ndarray, axes, spacing, millimetres: float) -> np.ndarray:
    """``image`` without its top ``millimetres`` of imaged head (along the voxel axis that runs along S, as
    every grid of GRIDS has one); the voxels kept keep their affine."""
    if millimetres <= 0:
        return image
    axis = list(axes).index("S")
    others = tuple(a for a in range(3) if a != axis)
    rows = np.nonzero(foreground_mask(robust_scale(image)).any(axis=others))[0]
    keep = max(1, int(rows.max()) + 1 - int(round(millimetres / spacing[axis])))
    return np.take(image, np.arange(keep), axis=axis)


def _mean_distance(points: np.ndarray, found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm((points @ found.T - points @ expected.T)[:, :3], axis=1).mean())


def _unflagged(row: dict) -> bool:
    return row["accepted"] and row["confident"]


def run_alignment(args: argparse.Namespace) -> int:
    unknown = [g for g in args.grids.split(",") if g not in GRIDS]
    if unknown or args.poses < 1:
        raise InputError(
            f"--grids from {', '.join(GRIDS)} and --poses >= 1, got {args.grids!r}, {args.poses}"
        )
    if args.scan == "second-head" and args.against != "first":
        raise InputError("--scan second-head has no known pose: use --against first")
    head = load_second_head() if args.scan == "second-head" else None
    reference, reference_affine = _reference(load_bundle(args.bundle), args.to)
    index = np.argwhere(foreground_mask(robust_scale(reference)))[::7]
    points = np.c_[index, np.ones(len(index))] @ np.asarray(reference_affine).T  # reference world, RAS mm
    poses = head_poses(args.poses, args.degrees, args.shift, args.seed)
    rows = []
    for grid in args.grids.split(","):
        spacing, axes = GRIDS[grid]
        first = None
        for number, pose in enumerate(poses):
            scan = scan_in_pose(pose, spacing, axes, head)
            image = cut_top(scan.image, axes, spacing, args.cut_top)
            start = time.perf_counter()
            alignment = register_affine(image, scan.affine, reference, reference_affine)
            seconds = time.perf_counter() - start
            if first is None:
                first = alignment.matrix
            # scan world <- MNI: the pose; against the first pose's result: this pose relative to the first
            expected = pose if args.against == "pose" else pose @ np.linalg.inv(poses[0]) @ first
            error = _mean_distance(points, alignment.matrix, expected)
            rows.append(
                {
                    "grid": grid,
                    "pose": number,
                    "error_mm": round(error, 2),
                    "failed": error > FAILED_MM,
                    "accepted": alignment.accepted,
                    "confident": alignment.confident,
                    "places_scan": alignment.places_scan,  # False: segmenting would refuse the scan
                    "peak_sharpness": round(alignment.peak_sharpness, 3),
                    "mutual_information": round(alignment.metric, 4),
                    "no_alignment_mutual_information": round(alignment.identity_metric, 4),
                    "start": alignment.start,
                    "seconds": round(seconds, 1),
                }
            )
            if not args.json:
                flag = "" if alignment.accepted and alignment.confident else " (flagged)"
                flag = flag if alignment.places_scan else " (refused: no pose, not segmented)"
                print(
                    f"{grid} pose {number}: {error:.1f} mm{flag}, start {alignment.start} ({seconds:.1f} s)"
                )
    summary = {
        grid: {
            "failed": sum(r["failed"] for r in rows if r["grid"] == grid),
            # a flagged alignment was refused or marked uncertain: the user is told to check it
            "failed_unflagged": sum(_unflagged(r) and r["failed"] for r in rows if r["grid"] == grid),
            "flagged": sum(not _unflagged(r) for r in rows if r["grid"] == grid),
            "poses": len(poses),
            "median_error_mm": round(float(np.median([r["error_mm"] for r in rows if r["grid"] == grid])), 2),
            "mean_seconds": round(float(np.mean([r["seconds"] for r in rows if r["grid"] == grid])), 1),
        }
        for grid in args.grids.split(",")
    }
    if args.json:
        print(json.dumps({"bundle": str(args.bundle), "rows": rows, "summary": summary}, indent=1))
    else:
        for grid, s in summary.items():
            print(
                f"{grid}: {s['failed']} of {s['poses']} poses failed (> {FAILED_MM:.0f} mm; "
                f"{s['failed_unflagged']} of them unflagged), {s['flagged']} flagged, median error "
                f"{s['median_error_mm']:.1f} mm, {s['mean_seconds']:.1f} s per alignment"
            )
    return 0

"""``lsseg bench region``: what keeping a task to the region it was trained on changes on a real whole head -
labelled voxels outside the region, and time - against segmenting every slice (``all_slices``), in one run on
one machine (timings never asserted in tests; numbers go to docs/DEMO.md).

The scan is Colin 27 in the demo's scanner pose (realscan.py), or with ``--scan second-head`` pycortex's subject
S1 as stored (another person, 1 mm, 256 slices). It is aligned once, as ``lsseg segment`` does; every task of the
bundle is then segmented from that alignment, both ways, ``--repeats`` times, and the median times compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.inference import segment_task
from LabelSharingSegLib.engine.trained_region import voxels_in

from .data.sources import load_second_head
from .realscan import scanner_scan


def register(sub) -> None:
    bench = sub.add_parser(
        "region",
        help="a task kept to its trained region vs every slice, on a real whole head (labels outside, time)",
    )
    bench.add_argument(
        "bundle", type=Path, help="task bundle whose tasks record a region (the shipped 2D one)"
    )
    bench.add_argument(
        "--scan",
        choices=("colin27", "second-head"),
        default="colin27",
        help="colin27: Colin 27 in the demo's scanner pose (default); second-head: pycortex's subject S1 as stored",
    )
    bench.add_argument("--spacing", type=float, default=2.0, help="Colin 27's scanner grid, mm (default 2)")
    bench.add_argument("--repeats", type=int, default=3, help="runs of each way per task; the median is kept")
    bench.add_argument("--device", default="cpu", help="device of the network (default cpu)")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.set_defaults(func=run_region)


def _timed(function, repeats: int):
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def run_region(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.spacing <= 0:
        raise InputError(f"--repeats >= 1 and --spacing > 0, got {args.repeats}, {args.spacing}")
    bundle = load_bundle(args.bundle)
    tasks = [task for task in bundle.tasks if task.region_mm]
    if not tasks:
        raise InputError(f"{args.bundle}: none of its tasks records the region it was trained on")
    if args.scan == "second-head":
        image, affine = load_second_head()
    else:
        scan = scanner_scan(args.spacing)
        image, affine = scan.image, scan.affine
    alignment = segment_task(bundle, image, affine, tasks[0].name, device=args.device).alignment
    if alignment is None:
        raise InputError(
            f"{args.bundle}: no reference to align the scan to; the region applies to aligned scans"
        )
    network = bundle.build_network(args.device)
    rows = []
    for task in tasks:
        inside = voxels_in(task.region_mm, alignment.aligned_affine(affine), image.shape)

        def run(every: bool, name: str = task.name):
            return segment_task(
                bundle,
                image,
                affine,
                name,
                device=args.device,
                network=network,
                align=alignment,
                all_slices=every,
            )

        every, every_s = _timed(lambda: run(True), args.repeats)
        kept, kept_s = _timed(lambda: run(False), args.repeats)
        labelled = every.labelmap > 0
        rows.append(
            {
                "task": task.name,
                "labelled_every_slice": int(labelled.sum()),
                "outside_every_slice": int(np.count_nonzero(labelled & ~inside)),
                "labelled_region": int(np.count_nonzero(kept.labelmap)),
                "outside_region": int(np.count_nonzero((kept.labelmap > 0) & ~inside)),
                "same_inside": bool(np.array_equal(kept.labelmap[inside], every.labelmap[inside])),
                "seconds_every_slice": round(every_s, 2),
                "seconds_region": round(kept_s, 2),
                "speedup": round(every_s / kept_s, 2),
            }
        )
    if args.json:
        print(json.dumps({"bundle": str(args.bundle), "scan": args.scan, "rows": rows}, indent=1))
        return 0
    for r in rows:
        share = 100 * r["outside_every_slice"] / max(r["labelled_every_slice"], 1)
        print(
            f"{r['task']}: every slice labels {r['labelled_every_slice']} voxels, {share:.0f}% outside its region; "
            f"kept to the region {r['labelled_region']} ({r['outside_region']} outside), the same labels inside: "
            f"{'yes' if r['same_inside'] else 'NO'}; {r['seconds_every_slice']:.2f} s vs {r['seconds_region']:.2f} s "
            f"({r['speedup']:.1f}x faster, median of {args.repeats})"
        )
    return 0

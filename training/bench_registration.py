"""``lsseg bench registration``: the deformable registration methods side by side, and what the registration
cache saves, on real test cases (never asserted in tests; numbers go to docs/DEMO.md).

For each of the first ``--cases`` test cases of the first ``--data`` folder, the bundle's atlas is aligned to the
scan (affine, timed), then registered by each deformable method (timed, from the same alignment). Every label of
every ``--data`` folder drawn on the bundle's atlas case (label_set_eval.py) is carried onto the scan by each
method, each label decided on its own, and scored by Dice. Then the cache: the whole registration again with the
process's memory cleared (as the next ``lsseg segment`` or Slicer worker would: read from the cache folder), and
again in the same process; reported as ratios against the cold registration, measured in this run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine import registration_cache
from LabelSharingSegLib.engine.deformable import DEFORMABLE_METHODS
from LabelSharingSegLib.engine.errors import InputError, LabelSharingSegError
from LabelSharingSegLib.engine.propagation import (
    MIN_LABEL_VOXELS,
    Propagation,
    carry_independently,
    register_atlas,
)

from .datasets import as_volume, load_case, require_valid_dataset
from .label_set_eval import atlas_case_of, labels_on_atlas_grid
from .metrics import dice, nanmean


def register(sub) -> None:
    bench = sub.add_parser(
        "registration", help="deformable registration methods (Dice, time) and the registration cache"
    )
    bench.add_argument("bundle", type=Path, help="LCS bundle whose atlas is registered")
    bench.add_argument(
        "--data",
        nargs="+",
        required=True,
        type=Path,
        help="datasets whose labels are drawn on its atlas case",
    )
    bench.add_argument("--cases", type=int, default=2, help="first N test cases (default 2)")
    bench.add_argument(
        "--methods", default=",".join(DEFORMABLE_METHODS), help="deformable methods to compare"
    )
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.set_defaults(func=run_registration)


def _label_sets(bundle, folders):
    """[(task, values, masks on the atlas grid (K, *grid))] for every dataset drawn on the bundle's atlas."""
    atlas_image, atlas_affine = bundle.atlas_image()
    sets = []
    for folder in folders:
        dataset = require_valid_dataset(folder)
        case_id, why = atlas_case_of(bundle, dataset)
        if case_id is None:
            raise InputError(why)
        drawn = labels_on_atlas_grid(dataset, case_id, atlas_affine, atlas_image.shape)
        values = [
            v for v in sorted(dataset.foreground_labels()) if np.count_nonzero(drawn == v) >= MIN_LABEL_VOXELS
        ]
        sets.append((dataset, values, np.stack([drawn == v for v in values])))
    return sets


def _timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def run_registration(args: argparse.Namespace) -> int:
    from LabelSharingSegLib.engine.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    if not bundle.kind.has_atlas:
        raise InputError(f"{args.bundle}: a {bundle.kind} bundle has no atlas to register")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(DEFORMABLE_METHODS))
    if unknown:
        raise InputError(
            f"unknown deformable method(s) {unknown}; choose from {', '.join(DEFORMABLE_METHODS)}"
        )
    atlas_image, atlas_affine = bundle.atlas_image()
    sets = _label_sets(bundle, args.data)
    cases = [c for c in sets[0][0].test if c.label_path is not None][: args.cases]
    if not cases:
        raise InputError(f"{args.data[0]}: no labelled test cases")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lsseg-bench-cache-") as folder:
        for case in cases:
            rows.append(_one_case(case, sets, methods, atlas_image, atlas_affine, Path(folder)))
    result = {"bundle": str(args.bundle), "cases": rows, "mean": _means(rows, methods)}
    print(json.dumps(result, indent=2) if args.json else _text(result, methods))
    return 0


def _one_case(case, sets, methods, atlas_image, atlas_affine, folder: Path) -> dict:
    image, _, affine = load_case(case)
    volume = as_volume(image[0])
    truths = {}
    position = [c.case_id for c in sets[0][0].test].index(case.case_id)
    for dataset, _, _ in sets:  # every dataset holds the same scans (same_scan_cases), each with its labels
        twin_image, twin_truth, _ = load_case(dataset.test[position])
        if not np.array_equal(twin_image, image):
            raise InputError(
                f"{dataset.root}: test case {dataset.test[position].case_id} is not the scan {case.case_id}; "
                "give datasets built on the same scans (e.g. brain-aal and brain-nmm with one seed and spacing)"
            )
        truths[dataset.task_name()] = as_volume(twin_truth).astype(np.int64)
    row: dict = {"case": case.case_id, "seconds": {}, "dice": {}}

    def registered(stage: str, method: str = "demons", alignment=None) -> Propagation:
        return register_atlas(
            atlas_image,
            atlas_affine,
            volume,
            affine,
            stage=stage,
            alignment=alignment,
            deformable_method=method,
        )

    with _cache_in(folder):
        registration_cache.clear_memory()
        affine_only, row["seconds"]["affine"] = _timed(lambda: registered("affine"))
        propagations = {"affine": affine_only}
        for method in methods:
            start = time.perf_counter()
            try:
                propagations[method] = registered("deformable", method, affine_only.alignment)
            except LabelSharingSegError as exc:  # diverged: reported with its time, never scored
                row.setdefault("failed", {})[method] = str(exc)
            row["seconds"][method] = time.perf_counter() - start
        for dataset, values, masks in sets:
            task = dataset.task_name()
            for name, propagation in propagations.items():
                carried = carry_independently(masks, atlas_affine, propagation, volume.shape, affine)
                scores = [dice(carried[k], truths[task] == v) for k, v in enumerate(values)]
                row["dice"].setdefault(task, {})[name] = nanmean(scores)
        # the cache: a new process reads the file; the same process remembers it
        cold = row["seconds"]["affine"] + row["seconds"].get("demons", float("nan"))
        registration_cache.clear_memory()
        _, from_disk = _timed(lambda: registered("deformable"))
        _, in_memory = _timed(lambda: registered("deformable"))
        row["cache"] = {"cold_s": cold, "from_disk_s": from_disk, "in_memory_s": in_memory}
    return row


@contextlib.contextmanager
def _cache_in(folder: Path) -> Iterator[None]:
    """Point the registration cache at ``folder`` for a block (the bench never touches the user's cache)."""
    before = os.environ.get(registration_cache.CACHE_DIR_ENV)
    os.environ[registration_cache.CACHE_DIR_ENV] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(registration_cache.CACHE_DIR_ENV, None)
        else:
            os.environ[registration_cache.CACHE_DIR_ENV] = before
        registration_cache.clear_memory()


def _means(rows, methods) -> dict:
    names = ["affine", *methods]
    tasks = list(rows[0]["dice"])
    return {
        "seconds": {n: nanmean(r["seconds"].get(n, float("nan")) for r in rows) for n in names},
        "dice": {
            t: {n: nanmean(r["dice"][t].get(n, float("nan")) for r in rows) for n in names} for t in tasks
        },
        "cache_speedup_from_disk": nanmean(r["cache"]["cold_s"] / r["cache"]["from_disk_s"] for r in rows),
        "cache_speedup_in_memory": nanmean(r["cache"]["cold_s"] / r["cache"]["in_memory_s"] for r in rows),
    }


def _text(result: dict, methods) -> str:
    mean = result["mean"]
    lines = [
        f"deformable registration on {len(result['cases'])} test case(s) (bundle {result['bundle']})",
        "",
    ]
    names = ["affine", *methods]
    lines.append("| | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for task, scores in mean["dice"].items():
        lines.append(f"| mean fine Dice, {task} | " + " | ".join(f"{scores[n]:.3f}" for n in names) + " |")
    lines.append("| seconds per scan | " + " | ".join(f"{mean['seconds'][n]:.1f}" for n in names) + " |")
    lines.append("")
    for row in result["cases"]:
        cache = row["cache"]
        lines.append(
            f"{row['case']}: registration (affine + demons) {cache['cold_s']:.1f} s cold, "
            f"{cache['from_disk_s']:.2f} s from the cache folder, {cache['in_memory_s']:.3f} s in memory"
            + "".join(f"; {m} failed: {why}" for m, why in row.get("failed", {}).items())
        )
    lines.append(
        f"cache speed-up: {mean['cache_speedup_from_disk']:.0f}x from disk, "
        f"{mean['cache_speedup_in_memory']:.0f}x in memory"
    )
    return "\n".join(lines)

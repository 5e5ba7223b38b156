"""``lsseg data build | phantom | check``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..datasets import check_dataset


def _build(args: argparse.Namespace) -> int:
    from .build import build_set

    written = build_set(
        args.set,
        args.out,
        cases=args.cases,
        test_cases=args.test_cases,
        seed=args.seed,
        spacing=args.spacing,
        overwrite=args.force,
        progress=print,
    )
    print(f"Built {len(written)} dataset folder(s):")
    for path in written:
        print(f"  {path}")
    return 0


def _phantom(args: argparse.Namespace) -> int:
    from .phantom import make_phantom_tasks

    written = make_phantom_tasks(
        args.out,
        tasks=args.tasks,
        dims=args.dims,
        size=args.size,
        cases=args.cases,
        test_cases=args.test_cases,
        seed=args.seed,
        overwrite=args.force,
        progress=print,
    )
    print(f"Wrote {len(written)} phantom task folder(s):")
    for path in written:
        print(f"  {path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    bad = 0
    total = 0
    for folder in args.dirs:
        problems = check_dataset(folder)
        total += len(problems)
        if problems:
            bad += 1
            print(f"{folder}: {len(problems)} problem(s)")
            for line in problems:
                print(f"  {line}")
        else:
            print(f"{folder}: OK")
    summary = f"{len(args.dirs)} dataset(s) checked, {len(args.dirs) - bad} clean, {bad} with problems"
    print(summary + (f" ({total} problem(s) in all)" if total else ""), file=sys.stdout)
    return 1 if bad else 0


def register(subparsers) -> None:
    from .build import DEFAULT_SPACING_MM, SET_ALIASES, set_names

    data = subparsers.add_parser(
        "data",
        help="build, generate and check datasets (nnU-Net v2 raw layout)",
        description="Datasets in the nnU-Net v2 raw layout: build them offline from real "
        "atlases shipped in Python packages, generate phantoms, check folders.",
    )
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    build = commands.add_parser(
        "build", help="build a dataset set from packaged real T1 templates and atlases"
    )
    build.add_argument(
        "--set",
        required=True,
        choices=(*set_names(), *SET_ALIASES),
        help="which set to build (brain-neuromorphometrics: the older name of brain-nmm)",
    )
    build.add_argument("--out", required=True, type=Path, help="folder that receives the dataset folder(s)")
    build.add_argument(
        "--cases",
        type=int,
        default=None,
        help="training cases per dataset (default 20 for 3D sets, 40 per 2D task)",
    )
    build.add_argument(
        "--test-cases",
        type=int,
        default=None,
        help="test cases per dataset, from the held-out template (default max(2, cases/4))",
    )
    build.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same data")
    build.add_argument(
        "--spacing",
        type=float,
        default=DEFAULT_SPACING_MM,
        help=f"output voxel size in mm (default {DEFAULT_SPACING_MM}; 2-4 for small CPU runs)",
    )
    build.add_argument(
        "--force",
        action="store_true",
        help="replace existing dataset folders of the same name (only folders with a dataset.json)",
    )
    build.set_defaults(func=_build)

    phantom = commands.add_parser("phantom", help="write small synthetic tasks for tests and CI")
    phantom.add_argument("--out", required=True, type=Path, help="folder that receives the task folders")
    phantom.add_argument("--tasks", type=int, required=True, help="number of tasks (datasets) to write")
    phantom.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2D slices or 3D volumes")
    phantom.add_argument("--size", type=int, default=None, help="image size in voxels (default 64 2D, 32 3D)")
    phantom.add_argument("--cases", type=int, default=8, help="training cases per task")
    phantom.add_argument("--test-cases", type=int, default=2, help="test cases per task")
    phantom.add_argument("--seed", type=int, default=0, help="random seed")
    phantom.add_argument("--force", action="store_true", help="replace existing phantom folders")
    phantom.set_defaults(func=_phantom)

    check = commands.add_parser(
        "check",
        help="validate dataset folders and list every problem",
        description="Validate nnU-Net v2 raw dataset folders. Prints every problem, one "
        "per line; exit status 0 only when all folders are clean, 1 otherwise.",
    )
    check.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="dataset folder(s)")
    check.set_defaults(func=_check)

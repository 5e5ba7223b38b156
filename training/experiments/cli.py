"""``lsseg experiment labelsharing`` and ``lsseg experiment lcs``: the papers' claims, one command each."""

from __future__ import annotations

import argparse
from pathlib import Path

from LabelSharingSegLib.engine.errors import InputError

from ..run_config import DICE_POOLINGS, HEADS, PUBLISHED_HEAD
from ..train_cli import _float_list, _int_list
from .labelsharing import EXPERIMENT_DICE_POOLING
from .variants import VARIANTS, variants_over_any_head


def _budget_options(p: argparse.ArgumentParser, steps: int) -> None:
    g = p.add_argument_group("budget (the same for every compared method)")
    g.add_argument("--steps", type=int, default=steps, help=f"optimiser steps per method (default {steps})")
    g.add_argument("--batch", type=int, default=2, help="samples per step (default 2)")
    g.add_argument("--seed", type=int, help="seed of every run (weights, split, sampling; default 0)")
    g.add_argument(
        "--channels", type=_int_list, default=[8, 16, 32, 64, 128], help="U-Net channels per level"
    )
    g.add_argument("--patch", type=_int_list, help="training patch (default: the data's grid, capped)")
    g.add_argument(
        "--spacing", type=_float_list, help="model grid spacing in mm (default: the data's median)"
    )
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--val-fraction", type=float, default=0.2)
    g.add_argument("--no-augment", action="store_true")
    v = p.add_argument_group("validation (the same for every compared method)")
    v.add_argument(
        "--val-labels",
        type=int,
        help="score at most N labels in each validation, a fixed sample drawn with --seed, the same for every "
        "method (default: all; LCS decodes every label either way, as segment decides by the most probable)",
    )
    v.add_argument(
        "--val-every", type=int, default=0, help="validate every N steps (default: 10 times a run)"
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument(
        "--threads", type=int, help="CPU threads for torch (default: the cores this process may use)"
    )
    p.add_argument("--out", required=True, type=Path, help="experiment folder (rerun to continue it)")
    p.add_argument("--verbose", action="store_true", help="show each run's training output")


def register(subparsers) -> None:
    exp = subparsers.add_parser(
        "experiment",
        help="measure the papers' claims under equal compute; one report per experiment",
        description="Train and evaluate every compared method under one stated budget and write report.md.",
    )
    sub = exp.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    ls = sub.add_parser(
        "labelsharing",
        help="label sharing vs one model per task, multi-channel and DoD-Net; add-task and forgetting",
        description="Anand et al. 2024: all methods under the same steps x batch; incremental learning with "
        "and without replay for each held-out task.",
    )
    ls.add_argument("--data", nargs="+", required=True, type=Path, help="task dataset folders")
    ls.add_argument(
        "--add-steps", type=int, help="add-task fine-tuning steps (default: --steps / number of tasks)"
    )
    ls.add_argument(
        "--holdout",
        nargs="*",
        help="tasks held out for incremental learning (default: every task; none given: skip; more may be added "
        "to a finished experiment)",
    )
    ls.add_argument(
        "--variants",
        nargs="*",
        metavar="VARIANT",
        help="label-sharing variants to train with the same budget, each testing one reason it may trail: "
        f"{', '.join(name for name in VARIANTS if name != 'reseeded')}; reseeded is the seed-to-seed control "
        "(variants may be added to a finished experiment)",
    )
    ls.add_argument(
        "--new-task-share",
        nargs="+",
        metavar="P",
        help="add-task with replay: the new task's share of the samples, one add-task run per value (a fraction "
        "between 0 and 1, e.g. 0.5 or 1/3, or 'equal': every task as often; default: add-task's default; more "
        "may be added to a finished experiment)",
    )
    ls.add_argument(
        "--matched-share",
        nargs="+",
        metavar="P",
        help="also add the held-out task with replay at these shares with more steps: --add-steps / P, so the new "
        "task gets as many samples as its own model (more compute than the other add-task runs; stated apart)",
    )
    ls.add_argument(
        "--head",
        choices=HEADS,
        default=PUBLISHED_HEAD,
        help="label sharing's output head in this experiment, its incremental runs included: linear (default), as "
        "published (Anand et al. 2024), the paper's claims; dynamic, `lsseg train labelsharing`'s default "
        f"(with another head, --variants {', '.join(variants_over_any_head())} change label sharing with that "
        "head; the head variants and task-code need linear)",
    )
    ls.add_argument(
        "--dice-pooling",
        choices=DICE_POOLINGS,
        default=EXPERIMENT_DICE_POOLING,
        help="every method's soft Dice: channel (default), one Dice per output channel over the batch, as the "
        "experiments before this option; task, one per label of each task over that task's samples, `lsseg "
        "train`'s default (differs only where tasks share channels: label sharing and DoD-Net)",
    )
    ls.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        help="run the whole experiment once per seed into OUT/seed_<SEED> and compare the seeds in OUT/seeds.md "
        "(instead of --seed)",
    )
    _budget_options(ls, 1000)
    ls.set_defaults(func=cmd_labelsharing)

    lcs = sub.add_parser(
        "lcs",
        help="LCS vs multi-channel: Dice and memory against the label count; coarse-to-fine table",
        description="Ma, Lee, Sabuncu 2022: LCS and a multi-channel U-Net with the same budget at several "
        "label counts, the coarse-to-fine table, and training/inference memory of both.",
    )
    lcs.add_argument("--data", required=True, type=Path, help="one dataset with many labels")
    lcs.add_argument(
        "--label-counts",
        type=_int_list,
        help="label counts to train at (the first K labels by value; default: 2, 4, 8, ... and all)",
    )
    lcs.add_argument(
        "--memory-label-counts",
        type=_int_list,
        help="label counts for the memory measurement (default: 2, 4, ..., 128 and the data's count)",
    )
    lcs.add_argument(
        "--coarse-map",
        type=Path,
        help="fine->coarse CSV or label_hierarchy.json (default: the dataset's label_hierarchy.json, else "
        "neighbouring label values merged in pairs)",
    )
    lcs.add_argument(
        "--variants",
        nargs="*",
        metavar="VARIANT",
        help="LCS variants at the dataset's full label count, each testing one reason LCS may trail: no-merge, "
        "labels-per-image, every-level, dice-bce, wide, long (4x the steps), every-level-long, combined "
        "(every-level, no-merge and labels-per-image together); reseeded is the seed-to-seed control, "
        "every-level-reseeded its pair; every-level-aligned: every-level on training cases registered to the atlas "
        "first (3D data); aligned-k4: that with 4 labels per image; aligned-k4-competing: those 4 labels competing "
        "in one softmax, drawn among atlas neighbours; aligned-codes: every-level-aligned with a learned code per "
        "trained label; aligned-deformable: every-level-aligned conditioned on the atlas carried onto each case by "
        "deformable registration (variants may be added to a finished experiment)",
    )
    lcs.add_argument(
        "--atlas-baselines",
        nargs="*",
        type=int,
        metavar="N",
        help="3D data: also score, at the full label count, deformable propagation of LCS's atlas and multi-atlas "
        "registration of N training cases (`lsseg evaluate --atlas-baselines`), one row per N: what registration "
        "alone gives with one and with N annotated cases (may be added to a finished experiment)",
    )
    _budget_options(lcs, 1000)
    lcs.set_defaults(func=cmd_lcs)


def _budget(args):
    from ..threads import configure_threads
    from .runner import Budget

    # set once per command (as training does per process), so reruns report and train with the same count
    configure_threads(args.threads)
    return Budget(
        steps=args.steps,
        batch=args.batch,
        seed=0 if args.seed is None else args.seed,
        channels=tuple(args.channels),
        patch=tuple(args.patch) if args.patch else None,
        spacing=tuple(args.spacing) if args.spacing else None,
        lr=args.lr,
        device=args.device,
        val_fraction=args.val_fraction,
        augment=not args.no_augment,
        quiet=not args.verbose,
        val_labels=args.val_labels,
        val_every=args.val_every,
    )


def cmd_labelsharing(args) -> int:
    from .labelsharing import run_labelsharing
    from .seeds import run_seeds

    options = {
        "add_steps": args.add_steps,
        "holdout": args.holdout,
        "variants": args.variants,
        "new_task_shares": args.new_task_share,
        "matched_shares": args.matched_share,
        "head": args.head,
        "dice_pooling": args.dice_pooling,
    }
    if args.seeds and args.seed is not None:
        raise InputError("--seed and --seeds: give one of them")
    if args.seeds:
        report = run_seeds(args.data, args.out, _budget(args), args.seeds, **options)
    else:
        report = run_labelsharing(args.data, args.out, _budget(args), **options)
    print(report.read_text(encoding="utf-8"))
    print(f"Report: {report}")
    return 0


def cmd_lcs(args) -> int:
    from .lcs import run_lcs

    report = run_lcs(
        args.data,
        args.out,
        _budget(args),
        label_counts=args.label_counts,
        memory_label_counts=args.memory_label_counts,
        coarse_map=args.coarse_map,
        variants=args.variants,
        atlas_baselines=args.atlas_baselines,
    )
    print(report.read_text(encoding="utf-8"))
    print(f"Report: {report}")
    return 0

"""``lsseg train {labelsharing,lcs,individual,multichannel,dodnet}``, ``lsseg add-task`` and ``lsseg evaluate``:
the argparse layer over the training API (``api.py``). It only turns arguments into typed run configurations
(``config_from_args``) and calls ``run_training``; every check and every file written happens behind the API.

Run on several GPUs (or CPU processes) with ``torchrun --nproc_per_node N -m lsseg_training.cli train ...``.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from LabelSharingSegLib.engine.device import DEVICE_CHOICES

from .appearance import APPEARANCE_CHOICES
from .pipeline import PIPELINES
from .run_config import (
    AMP_MODES,
    BUNDLE_WEIGHTS,
    DEFAULT_CHANNELS,
    DEFAULT_NEW_TASK_SHARE,
    DICE_POOLINGS,
    EQUAL_SHARE,
    HEADS,
    INTENSITY_MODES,
    LABEL_MAPPINGS,
    LCS_ARCHS,
    LCS_CASE_ALIGNMENTS,
    LCS_CONDITIONINGS,
    LCS_LABEL_DRAWS,
    LCS_LOSSES,
    OPTIMIZERS,
    SCHEDULES,
    TASK_SAMPLING,
    AddTaskConfig,
    LCSRunConfig,
    RunConfig,
    TaskRunConfig,
    TrainSettings,
)
from .threads import THREADS_ENV
from .trainer import StepCallback, TrainingError, TrainingInterrupted

# ------------------------------------------------------------------------------------------------ options


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 64,64,64, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,1,1, got {text!r}") from None


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes like 30 or 0.5, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"the time limit must be a positive number of minutes, got {text!r}")
    return value


def _add_budget_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("budget and optimisation")
    g.add_argument(
        "--steps",
        type=int,
        help="optimiser steps (default 1000; overrides --epochs). With --resume it "
        "may be raised to extend a run; the learning-rate schedule is then recomputed for the new total",
    )
    g.add_argument(
        "--time-limit",
        type=_minutes,
        metavar="MINUTES",
        help="stop the training loop after MINUTES (checked after every step): validate once more, keep "
        "the best weights, write the checkpoint and the bundle, and report the step reached. Counts "
        "loop time of this invocation (not data loading); `individual` shares it between the tasks",
    )
    g.add_argument(
        "--epochs", type=int, help="passes over the training cases (steps = epochs x cases / global batch)"
    )
    g.add_argument("--batch", type=int, default=2, help="samples per step and process (default 2)")
    g.add_argument(
        "--patch",
        type=_int_list,
        help="patch size, e.g. 64,64,64 (3D) or 128,128 (2D); "
        "divisible by the network's pooling factor (default: the data's grid, capped at 128/64)",
    )
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    g.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    g.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, split, patches and augmentation")
    g.add_argument("--device", default="auto", help=f"{', '.join(DEVICE_CHOICES)} or cuda:N")
    g.add_argument(
        "--amp",
        choices=AMP_MODES,
        default="auto",
        help="mixed precision: auto = bfloat16 on CUDA GPUs that support it (else float16 with a gradient "
        "scaler), none on CPU; bf16 = bfloat16 autocast (CPU too)",
    )
    g.add_argument(
        "--foreground-prob",
        type=float,
        default=0.5,
        help="chance a patch is centred on a label (drawn uniformly among labels, so small ones are found)",
    )
    g.add_argument("--no-augment", action="store_true", help="switch off augmentation")
    g.add_argument("--cache-workers", type=int, default=0, help="threads preprocessing cases into the cache")
    _add_speed_options(p)
    d = p.add_argument_group("network and preprocessing")
    d.add_argument(
        "--channels",
        type=_int_list,
        default=list(DEFAULT_CHANNELS),
        help="feature channels per U-Net level (default 8,16,32,64,128)",
    )
    d.add_argument(
        "--spacing", type=_float_list, help="model grid spacing in mm (default: median of the data)"
    )
    d.add_argument("--intensity", choices=INTENSITY_MODES, default="zscore")
    ls = p.add_argument_group("label sharing variants (measuring why it trails, issue #15)")
    ls.add_argument(
        "--task-sampling",
        choices=TASK_SAMPLING,
        default="uniform",
        help="uniform: each task drawn equally often (default); labels: in proportion to its label count",
    )
    ls.add_argument(
        "--label-mapping",
        choices=LABEL_MAPPINGS,
        default="rank",
        help="rank: labels share output channels by relative size rank (Anand et al. 2024, default); "
        "shuffled: a random mapping drawn with --seed",
    )
    ls.add_argument(
        "--task-film",
        action="store_true",
        help="give the label-sharing U-Net a per-task scale and shift of its decoder features (no extra outputs)",
    )
    ls.add_argument(
        "--head",
        choices=HEADS,
        default=None,
        help="label sharing's output head over its n*+1 shared channels: dynamic (default), DoD-Net's head, three "
        "1x1 convolutions whose weights a controller generates from the task code and the image; linear, one 1x1 "
        "convolution as published (Anand et al. 2024; the default with --task-film); task, from the task code only; "
        "image, from the image only; mlp, the same head for every task; dynamic-detached and image-detached, "
        "dynamic and image with no gradient from the controller into the U-Net (an ablation)",
    )
    ls.add_argument(
        "--dice-pooling",
        choices=DICE_POOLINGS,
        default=None,
        help="task methods: what one soft Dice of the loss pools over: task, one label of one task across the "
        "batch's samples of that task (default); channel, an output channel across the batch (the default before "
        "2026-12). They differ only where tasks share output channels (labelsharing, dodnet)",
    )
    v = p.add_argument_group("validation, checkpoints, logs")
    v.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of each task's training cases held out for validation (never test cases)",
    )
    v.add_argument(
        "--val-every", type=int, default=0, help="validate every N steps (default: 10 times per run)"
    )
    v.add_argument(
        "--val-labels",
        type=int,
        help="score at most N labels in validation, a fixed sample drawn with --seed (default: all; "
        "makes LCS validation affordable at many labels)",
    )
    v.add_argument(
        "--bundle-weights",
        choices=BUNDLE_WEIGHTS,
        default="best",
        help="the weights the bundle holds: best, those of the best validation (the last without validation "
        "cases); last, those the run ended with. With --resume on a finished run and a new --out, writes a "
        "bundle of its other weights without training",
    )
    v.add_argument(
        "--checkpoint-every", type=int, default=50, help="write the resumable checkpoint every N steps"
    )
    v.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="checkpoints, config.json and log.csv (default: OUT + '.training'); a new run needs a folder that "
        "does not exist or is empty, so nothing of yours is ever overwritten",
    )
    v.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --checkpoint-dir (same command; a larger --steps extends a finished run; "
        "a run killed while writing its bundle only writes the bundle)",
    )
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs")
    p.add_argument("--name", default="", help="bundle name shown in Slicer")
    p.add_argument("--sync-data-timing", action="store_true", help=argparse.SUPPRESS)  # lsseg bench train


def _workers(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number of processes, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected auto or 0 or more processes, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _add_speed_options(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("input pipeline and speed (see docs/PERFORMANCE.md)")
    s.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default="device",
        help="device (default): cached volumes on the training device, patches sampled and augmented batched "
        "there; legacy: per-sample MONAI transforms on the CPU (kept for comparison)",
    )
    s.add_argument(
        "--appearance",
        default="none",
        metavar="LIST",
        help="appearance augmentation for real scans, comma-separated from "
        f"{','.join(APPEARANCE_CHOICES)} (or all / none, the default); --pipeline device only",
    )
    s.add_argument(
        "--no-elastic",
        dest="elastic",
        action="store_false",
        help="no elastic deformation in the device pipeline's augmentation",
    )
    s.add_argument(
        "--loader-workers",
        type=_workers,
        default=None,
        metavar="N",
        help="processes building batches ahead of the loop from a host-memory cache (default auto: none when "
        "the cache fits on the training device, else up to 4)",
    )
    s.add_argument(
        "--threads",
        type=_positive_int,
        help="torch threads of this process (default: the cores of its CPU affinity divided by torchrun's "
        f"LOCAL_WORLD_SIZE; or ${THREADS_ENV})",
    )
    s.add_argument(
        "--compile", action="store_true", help="torch.compile the network (first steps are slower)"
    )
    s.add_argument("--channels-last", action="store_true", help="channels-last memory layout (GPU)")
    s.add_argument(
        "--fused-optimizer",
        choices=("auto", "on", "off"),
        default="auto",
        help="fused Adam/AdamW kernel (default auto: on CUDA)",
    )
    s.add_argument(
        "--loss-sync-every",
        type=int,
        default=0,
        metavar="N",
        help="read the loss back to the host (log, progress, non-finite check) every N steps; each read waits for "
        "the GPU (default 0: automatic, 1 on the CPU, 16 on GPUs)",
    )


def register(subparsers) -> None:
    train_p = subparsers.add_parser(
        "train",
        help="train a model and write a bundle",
        description="Train one of the methods and write a model bundle.",
    )
    methods = train_p.add_subparsers(dest="method", metavar="METHOD")
    helps = {
        "labelsharing": "one network, shared labels over several tasks (Anand et al. 2024)",
        "individual": "baseline: one network (bundle) per task; --out is a folder receiving one bundle per task",
        "multichannel": "baseline: one output channel per label of all tasks together",
        "dodnet": "baseline: task-conditioned dynamic head (DoD-Net)",
    }
    for kind, text in helps.items():
        p = methods.add_parser(kind, help=text, description=text)
        p.add_argument(
            "--data", nargs="+", required=True, type=Path, help="task dataset folders (nnU-Net layout)"
        )
        p.add_argument("--out", required=True, type=Path, help="bundle folder to write (must not exist)")
        p.add_argument(
            "--reference",
            type=Path,
            metavar="IMAGE.nii.gz",
            help="3D image stored in the bundle as its reference: scans are aligned (affine) to it "
            "before segmenting (lsseg segment --align, on by default; a 2D bundle then cuts the aligned volume "
            "in each task's plane of the reference); e.g. a training case or template",
        )
        _add_budget_options(p)
        p.set_defaults(func=run_training_entry, kind=kind)
    p = methods.add_parser(
        "lcs",
        help="label conditioned segmentation with an atlas (Ma et al. 2022)",
        description="Train an atlas-conditioned LCS network on one dataset with many labels.",
    )
    p.add_argument("--data", required=True, type=Path, help="one dataset folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--atlas-case", help="training case id used as the atlas (default: the first)")
    p.add_argument(
        "--coarse-map",
        type=Path,
        help="CSV fine_value,coarse_value[,coarse_name], or a dataset's label_hierarchy.json: train "
        "on the merged (coarse) labels",
    )
    p.add_argument(
        "--merge-prob", type=float, default=0.5, help="chance a sample merges two labels (default 0.5)"
    )
    variants = p.add_argument_group(
        "variants of Ma et al. 2022 (--arch lcs; measured by `lsseg experiment lcs --variants`, docs/EXPERIMENTS.md)"
    )
    variants.add_argument(
        "--conditioning",
        choices=LCS_CONDITIONINGS,
        default=None,
        help="where the atlas image and mask join the U-Net: also every decoder level on its own grid (default "
        "with --arch lcs; measured above the paper's, docs/EXPERIMENTS.md) or the bottleneck only (Ma et al. 2022)",
    )
    variants.add_argument(
        "--labels-per-image",
        type=int,
        default=1,
        metavar="K",
        help="labels conditioned on each sampled image per step: one encoder pass serves K decoder passes "
        "(default 1, the paper)",
    )
    variants.add_argument(
        "--loss",
        choices=LCS_LOSSES,
        default="dice",
        help="dice: soft Dice on each conditioned label alone (the paper, default); dice-bce: plus binary "
        "cross-entropy; competing: the K labels of one image (--labels-per-image) compete in one softmax with a "
        "fixed 'none of them' logit, which is how `lsseg segment` decides between labels, then soft Dice",
    )
    variants.add_argument(
        "--label-draw",
        choices=LCS_LABEL_DRAWS,
        default="random",
        help="with --labels-per-image K > 1, how the labels beyond the first are drawn: random (distinct, "
        "anywhere; default) or neighbours (among the atlas labels bordering the first, where decisions between "
        "labels happen; filled at random when it has fewer)",
    )
    variants.add_argument(
        "--align-cases",
        choices=LCS_CASE_ALIGNMENTS,
        default="none",
        help="none: training cases where their world coordinates place them (the paper, default); affine: each "
        "registered to the atlas first, as `lsseg segment` registers a scan; deformable: that, and the atlas image "
        "and masks carried onto each case by deformable registration before they condition the network (which "
        "then corrects a registration; `lsseg segment` registers each scan the same way). Both need SimpleITK, or "
        "the registrations in --registration-cache; not with --reference",
    )
    variants.add_argument(
        "--label-codes",
        action="store_true",
        help="give the network a learned code per trained atlas label beside its mask (scaling and shifting every "
        "decoder level; not in the paper): a voxel's label is then known by name as well as by its atlas mask. "
        "Merged pairs and a quarter of the single labels train without a code, the path labels drawn on the atlas "
        "later take",
    )
    refine = p.add_argument_group(
        "refining registration (--arch lcs_refine; see docs/TRAINING.md)",
    )
    refine.add_argument(
        "--arch",
        choices=LCS_ARCHS,
        default="lcs",
        help="lcs: Ma et al. 2022 (default); lcs_refine: a network that corrects the masks registration "
        "carries (--channels ENCODER,HEAD widths, e.g. 16,16; --patch N: scored patch edge, default 24)",
    )
    refine.add_argument(
        "--split-prob",
        type=float,
        default=0.5,
        help="chance a sample's label is split into random Voronoi cells (default 0.5)",
    )
    refine.add_argument(
        "--max-parts", type=int, default=8, help="at most this many cells per split (default 8)"
    )
    refine.add_argument(
        "--max-cases",
        type=int,
        help="use only the first N training cases besides the atlas (each costs a registration, ~1 min on a CPU)",
    )
    refine.add_argument(
        "--registration-cache",
        type=Path,
        metavar="DIR",
        help="where the registrations of the training cases are kept and reused (default CHECKPOINT_DIR/registrations)",
    )
    p.add_argument(
        "--reference",
        type=Path,
        metavar="IMAGE.nii.gz",
        help="3D image in the position the training targets scatter around (lsseg data build writes "
        "reference_template.nii.gz: the template in MNI space); stored in the bundle, aligned scans are "
        "shown to the network in its position",
    )
    _add_budget_options(p)
    p.set_defaults(func=run_training_entry, kind="lcs")
    train_p.set_defaults(func=lambda args: (train_p.print_help(), 2)[1])

    p = subparsers.add_parser(
        "add-task",
        help="add a task to a label-sharing bundle (incremental learning)",
        description="Place a new task on the bundle's size table and fine-tune; the old "
        "bundle is left untouched.",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--data", required=True, type=Path, help="the new task's dataset folder")
    p.add_argument("--out", required=True, type=Path, help="the new bundle")
    p.add_argument("--replay", nargs="*", type=Path, default=[], help="old tasks' dataset folders to mix in")
    p.add_argument(
        "--widen", action="store_true", help="allow more labels than the space holds (adds shared labels)"
    )
    p.add_argument(
        "--new-task-share",
        metavar="P",
        help="with --replay: the new task's share of the training samples, a fraction between 0 and 1 (e.g. "
        f"0.4 or 1/3; the replayed tasks share the rest), or '{EQUAL_SHARE}': drawn like each replayed task (by "
        f"--task-sampling). Default: {DEFAULT_NEW_TASK_SHARE}. A larger share learns the new task faster and "
        "forgets more of the old ones (docs/EXPERIMENTS.md)",
    )
    _add_budget_options(p)
    p.set_defaults(func=run_training_entry, kind="add-task")

    p = subparsers.add_parser(
        "evaluate",
        help="Dice/HD95 of bundles on the datasets' test cases",
        description="Segment every test case through the inference code Slicer uses; write "
        "metrics.csv, summary.md and plots.",
    )
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--data", nargs="+", required=True, type=Path)
    p.add_argument(
        "--out", required=True, type=Path, help="report folder to write (its parent folder must exist)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.add_argument("--device", default="auto", help=f"{', '.join(DEVICE_CHOICES)} or cuda:N")
    p.add_argument("--no-hd95", action="store_true", help="skip HD95 (faster)")
    p.add_argument(
        "--align",
        choices=("auto", "off"),
        default="auto",
        help="auto: register each test case to the bundle's reference first, as `lsseg segment` does; off: "
        "segment them as they are, as the network saw its training cases (no SimpleITK needed; registration "
        "baselines left out)",
    )
    p.add_argument(
        "--atlas-baselines",
        type=int,
        default=0,
        metavar="N",
        help="LCS bundles: also segment the trained labels by deformable propagation of the bundle's atlas and by "
        "multi-atlas registration of N training cases of the data (each registered onto the scan, labels fused "
        "by weighted vote), as methods of their own: what registration alone gives with one and with N "
        "annotated cases",
    )
    p.set_defaults(func=cmd_evaluate)


# ------------------------------------------------------------------------------------------------ to the API


# TrainSettings fields whose option has another name
_OPTION_OF_FIELD = {"time_limit_min": "time_limit"}


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The options every train command shares, checked (InputError) before anything is read or written."""
    values = {
        f.name: getattr(args, _OPTION_OF_FIELD.get(f.name, f.name))
        for f in fields(TrainSettings)
        if f.name != "augment"
    }
    return TrainSettings(augment=not args.no_augment, **values)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The typed run configuration a parsed ``lsseg train ...`` / ``lsseg add-task`` command line asks for."""
    settings = settings_from_args(args)
    if args.kind == "lcs":
        return LCSRunConfig(
            args.data,
            args.out,
            settings,
            atlas_case=args.atlas_case,
            coarse_map=args.coarse_map,
            merge_prob=args.merge_prob,
            arch=args.arch,
            split_prob=args.split_prob,
            max_parts=args.max_parts,
            max_cases=args.max_cases,
            registration_cache=args.registration_cache,
            reference=args.reference,
            conditioning=args.conditioning,
            labels_per_image=args.labels_per_image,
            loss=args.loss,
            label_draw=args.label_draw,
            align_cases=args.align_cases,
            label_codes=args.label_codes,
        )
    if args.kind == "add-task":
        return AddTaskConfig(
            args.bundle,
            args.data,
            args.out,
            settings,
            replay=tuple(args.replay),
            widen=args.widen,
            new_task_share=args.new_task_share,
        )
    return TaskRunConfig(args.kind, tuple(args.data), args.out, settings, reference=args.reference)


def run_config(config: RunConfig, on_step: StepCallback | None = None) -> int:
    """Run a configuration as a command: exit 0, or 130 after Ctrl-C (the checkpoint is saved)."""
    from .api import run_training

    try:
        run_training(config, on_step)
    except TrainingInterrupted as exc:
        print(f"lsseg: {exc}")
        return 130
    return 0


def run_training_entry(args: argparse.Namespace) -> int:
    return run_config(config_from_args(args))


# ------------------------------------------------------------------------------------------------ evaluate


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    report = evaluate(
        args.bundles,
        args.data,
        args.out,
        device=args.device,
        with_hd95=not args.no_hd95,
        overwrite=args.overwrite,
        align=args.align == "auto",
        atlas_baselines=args.atlas_baselines,
    )
    print(report)
    return 0


__all__ = ["config_from_args", "register", "run_config", "run_training_entry", "TrainingError"]

"""``lsseg train {labelsharing,lcs,individual,multichannel,dodnet}``, ``lsseg add-task`` and ``lsseg evaluate``.

Run on several GPUs (or CPU processes) with ``torchrun --nproc_per_node N -m lsseg_training.cli train ...``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from LabelSharingSegLib.engine.datasets import NnUNetDataset, require_valid_dataset
from LabelSharingSegLib.engine.errors import InputError, LabelSpaceError
from LabelSharingSegLib.engine.labels import LabelInfo, default_color
from LabelSharingSegLib.engine.labelspace import SharedLabelSpace, average_relative_sizes
from LabelSharingSegLib.engine.networks import build_network
from LabelSharingSegLib.engine.nifti_io import load_nifti
from LabelSharingSegLib.engine.preprocessing_config import Preprocessing

from . import bundle_factory as factory
from .checkpoint import LAST, fingerprint
from .distributed import setup as setup_distributed
from .methods import LCSMethod, TaskMethod
from .samples import ToAtlasGrid, ToModelGrid, cache_items, spacing_in_model_axes
from .trainer import TrainingError, TrainingInterrupted, TrainOptions, train

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
    g.add_argument("--optimizer", choices=("adamw", "adam"), default="adamw")
    g.add_argument("--schedule", choices=("cosine", "poly", "constant"), default="cosine")
    g.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, split, patches and augmentation")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument(
        "--amp",
        choices=("auto", "bf16", "off"),
        default="auto",
        help="mixed precision: auto = float16 on CUDA, none on CPU; bf16 = bfloat16 autocast (CPU too)",
    )
    g.add_argument(
        "--foreground-prob",
        type=float,
        default=0.5,
        help="chance a patch is centred on a label (drawn uniformly among labels, so small ones are found)",
    )
    g.add_argument("--no-augment", action="store_true", help="switch off augmentation")
    g.add_argument("--cache-workers", type=int, default=0, help="threads preprocessing cases into the cache")
    d = p.add_argument_group("network and preprocessing")
    d.add_argument(
        "--channels",
        type=_int_list,
        default=[8, 16, 32, 64, 128],
        help="feature channels per U-Net level (default 8,16,32,64,128)",
    )
    d.add_argument(
        "--spacing", type=_float_list, help="model grid spacing in mm (default: median of the data)"
    )
    d.add_argument("--intensity", choices=("zscore", "percentile", "ct_window", "none"), default="zscore")
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
        "--checkpoint-every", type=int, default=50, help="write the resumable checkpoint every N steps"
    )
    v.add_argument("--checkpoint-dir", type=Path, help="default: OUT + '.training'")
    v.add_argument("--resume", action="store_true", help="continue the run saved in --checkpoint-dir")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs")
    p.add_argument("--name", default="", help="bundle name shown in Slicer")
    p.add_argument("--sleep-per-step", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--weights-hash-dir", type=Path, help=argparse.SUPPRESS)


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
            "before segmenting (lsseg segment --align, on by default); e.g. a training case or template",
        )
        _add_budget_options(p)
        p.set_defaults(func=lambda args, kind=kind: cmd_train_tasks(args, kind))
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
    _add_budget_options(p)
    p.set_defaults(func=cmd_train_lcs)
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
    _add_budget_options(p)
    p.set_defaults(func=cmd_add_task)

    p = subparsers.add_parser(
        "evaluate",
        help="Dice/HD95 of bundles on the datasets' test cases",
        description="Segment every test case through the inference code Slicer uses; write "
        "metrics.csv, summary.md and plots.",
    )
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--data", nargs="+", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-hd95", action="store_true", help="skip HD95 (faster)")
    p.set_defaults(func=cmd_evaluate)


# ------------------------------------------------------------------------------------------------ helpers


def load_datasets(paths: list[Path]) -> list[NnUNetDataset]:
    datasets = [require_valid_dataset(p) for p in paths]
    names = [d.task_name() for d in datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(
            f"task names must be unique, but {', '.join(repeated)} appear(s) more than once "
            "(set a distinct 'name' in each dataset.json)"
        )
    return datasets


def split_cases(cases, fraction: float, seed: int):
    """(train, validation) split of training cases, deterministic in the seed; at least one of each when the
    fraction is positive and there are 3 or more cases."""
    cases = list(cases)
    if fraction <= 0 or len(cases) < 3:
        return cases, []
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(len(cases) - 1, max(1, int(round(fraction * len(cases)))))
    val = {int(i) for i in order[:n_val]}
    return [c for i, c in enumerate(cases) if i not in val], [c for i, c in enumerate(cases) if i in val]


def _label_maps(dataset: NnUNetDataset):
    for case in dataset.training:
        yield load_nifti(case.label_path, dtype=np.int32)[0]


def task_sizes(dataset: NnUNetDataset):
    return average_relative_sizes(_label_maps(dataset), dataset.foreground_labels(), dataset.task_name())


def detect_dims(dataset: NnUNetDataset) -> tuple[int, list[float], list[int]]:
    """(spatial dims, median spacing on the model axes, median shape) over the training cases."""
    import nibabel as nib

    shapes, spacings = [], []
    for case in dataset.training:
        header = nib.load(str(case.image_paths[0]))
        shape = list(header.shape[:3]) + [1] * (3 - len(header.shape[:3]))
        shapes.append(shape)
        spacings.append(header.affine)
    dims = 2 if all(s[2] == 1 for s in shapes) else 3
    spacing = np.median([spacing_in_model_axes(a, dims) for a in spacings], axis=0).tolist()
    return dims, [float(s) for s in spacing], [int(s) for s in np.median(shapes, axis=0)]


def _preprocessing(args, datasets, factor: int, *, patch_override=None) -> Preprocessing:
    dims, spacing, shape = detect_dims(datasets[0])
    for other in datasets[1:]:
        if detect_dims(other)[0] != dims:
            raise InputError("all tasks must be 2D or all 3D; mixed dimensionality found")
    spacing = args.spacing or spacing
    if len(spacing) != dims:
        raise InputError(f"--spacing needs {dims} values for {dims}D data")
    patch = patch_override or args.patch
    if patch is None:
        cap = 128 if dims == 2 else 64
        patch = [min(cap, s + (-s) % factor) for s in shape[:dims]]
    if len(patch) != dims:
        raise InputError(f"--patch needs {dims} values for {dims}D data")
    return factory.make_preprocessing(dims, spacing, patch, {"mode": args.intensity}, factor=factor)


def _options(args, out: Path, n_train: int, world: int, time_limit_s: float | None = None) -> TrainOptions:
    """TrainOptions from the command line; ``time_limit_s`` overrides ``--time-limit`` (``individual``'s share)."""
    if time_limit_s is None and args.time_limit is not None:
        time_limit_s = args.time_limit * 60.0
    if args.steps is not None:
        steps = args.steps
    elif args.epochs is not None:
        steps = args.epochs * max(1, -(-n_train // (args.batch * world)))
    else:
        steps = 1000
    if steps < 1 or args.batch < 1:
        raise InputError("--steps/--epochs and --batch must be positive")
    return TrainOptions(
        steps=steps,
        batch=args.batch,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        schedule=args.schedule,
        warmup=args.warmup,
        seed=args.seed,
        amp=args.amp,
        val_every=args.val_every or max(1, steps // 10),
        checkpoint_every=args.checkpoint_every,
        checkpoint_dir=args.checkpoint_dir or out.with_name(out.name + ".training"),
        resume=args.resume,
        quiet=args.quiet,
        tensorboard=args.tensorboard,
        sleep_per_step=args.sleep_per_step,
        weights_hash_dir=args.weights_hash_dir,
        time_limit=None if time_limit_s is None else max(0.0, time_limit_s),
    )


def _check_out(out: Path, args=None) -> None:
    if out.exists():
        hint = "choose a new --out"
        if args is not None and args.resume and args.checkpoint_dir is None:
            # the default checkpoint folder follows --out: extending a finished run names the old one
            hint = (
                f"to extend the finished run into a new bundle, pass a new --out and --checkpoint-dir "
                f"{out.with_name(out.name + '.training')} with --resume and a larger --steps"
            )
        raise InputError(f"{out}: already exists (bundles are never overwritten; {hint})")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: output folder does not exist; create it first")


# What ``--resume`` may change: how long to train and how the run is watched. They are never part of the run
# configuration, so they are not fingerprinted; everything in ``run_config`` (method, network, preprocessing,
# tasks, case split, batch, optimiser, lr, schedule kind, warm-up, seed, amp, world size, sampling, augmentation)
# must match the checkpoint. A larger --steps continues the run; the lr schedule is recomputed for the new total.
RESUME_MAY_CHANGE = (
    "steps",
    "epochs",
    "time_limit",
    "val_every",
    "checkpoint_every",
    "quiet",
    "tensorboard",
    "name",
    "out",
    "device",
    "cache_workers",
)


def _run(method, model, val_items, options: TrainOptions, ctx, run_config: dict):
    """The shared part of every command: checkpoint folder, fingerprint, loop."""
    leaked = sorted(set(run_config) & set(RESUME_MAY_CHANGE))
    if leaked:  # a programming error: these would make extending a run impossible
        raise TrainingError(f"internal: run configuration must not hold {', '.join(leaked)}")
    config_path = Path(options.checkpoint_dir) / "config.json"
    saved = None
    if options.resume and config_path.is_file():
        saved = json.loads(config_path.read_text(encoding="utf-8"))
    if ctx.is_main:
        Path(options.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        if not options.resume and not (Path(options.checkpoint_dir) / "last.safetensors").exists():
            config_path.write_text(json.dumps(run_config, indent=2, default=str), encoding="utf-8")
    ctx.barrier()
    if ctx.device_note and ctx.is_main and not options.quiet:
        print(ctx.device_note)

    def describe(_state):
        if saved is None:
            return ""
        current = json.loads(json.dumps(run_config, default=str))
        differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        return "differing settings: " + ", ".join(differ) if differ else ""

    return train(method, model, val_items, options, ctx, fingerprint(run_config), describe)


def _summary(ctx, result, out, options: TrainOptions, extra: str = "") -> None:
    if not ctx.is_main:
        return
    best = (
        f"{result.best_val:.4f} (step {result.best_step})"
        if result.best_step > 0
        else "n/a (no validation cases)"
    )
    stopped = ""
    if result.stopped_by_time:
        stopped = (
            f"Time limit ({options.time_limit / 60:g} min) reached: stopped at step {result.steps} of "
            f"{result.planned_steps}; the bundle holds the best weights so far (continue with a new --out, "
            f"--checkpoint-dir {options.checkpoint_dir} --resume)\n"
        )
    print(
        f"{stopped}Trained {result.steps} steps in {result.seconds:.1f} s; loss {result.first_loss:.4f} -> "
        f"{result.last_loss:.4f}; best validation Dice {best}\nBundle: {out}\n"
        f"Checkpoints and log.csv: {options.checkpoint_dir}{extra}"
    )


def _training_meta(method: str, result, options: TrainOptions, datasets, val_ids, ctx, **extra) -> dict:
    return {
        "method": method,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "batch": options.batch,
        "world_size": ctx.world_size,
        "lr": options.lr,
        "optimizer": options.optimizer,
        "schedule": options.schedule,
        "seed": options.seed,
        "datasets": ", ".join(str(d.root) for d in datasets),
        "validation_cases": sorted(val_ids),
        "planned_steps": result.planned_steps,
        "stopped_by": "time_limit" if result.stopped_by_time else "steps",
        "time_limit_min": None if options.time_limit is None else round(options.time_limit / 60.0, 4),
        "metrics": {
            "best_val_dice": result.best_val,
            "best_step": result.best_step,
            "final_loss": result.last_loss,
        },
        **extra,
    }


def _interruptible(fn):
    def wrapper(*args):
        try:
            return fn(*args)
        except TrainingInterrupted as exc:
            print(f"lsseg: {exc}")
            return 130

    return wrapper


# ------------------------------------------------------------------------------------------------ task methods


def _task_infos(kind: str, datasets) -> tuple[list, SharedLabelSpace | None]:
    task_labels = {d.task_name(): d.foreground_labels() for d in datasets}
    if kind == "labelsharing":
        space = SharedLabelSpace.build([task_sizes(d) for d in datasets])
        return factory.labelsharing_tasks(space), space
    if kind == "multichannel":
        return factory.multichannel_tasks(task_labels), None
    return factory.per_task_rank_tasks(task_labels), None


def _reference_image(args, prep: Preprocessing):
    """(image, affine) of ``--reference``, checked before any training time is spent; None without it."""
    path = getattr(args, "reference", None)
    if path is None:
        return None
    image, affine = load_nifti(path)
    if prep.spatial_dims != 3 or image.ndim != 3 or min(image.shape) < 4:
        raise InputError(
            f"{path}: a reference must be a 3D image for a 3D bundle (this bundle is "
            f"{prep.spatial_dims}D, the image has shape {image.shape})"
        )
    if not np.all(np.isfinite(image)):
        raise InputError(f"{path}: the reference image holds NaN/Inf voxels")
    return image, affine


def _train_task_model(
    kind,
    datasets,
    tasks,
    space,
    args,
    ctx,
    out: Path,
    *,
    prep=None,
    config=None,
    init_state=None,
    extra_config=None,
    time_limit_s=None,
    reference=None,
):
    channels = list(args.channels)
    config = config or factory.network_config_for(kind, tasks, 2, channels)
    prep = prep or _preprocessing(args, datasets, config.downsample_factor)
    config = config.replace(spatial_dims=prep.spatial_dims)
    reference = reference if reference is not None else _reference_image(args, prep)
    index_of = {t.name: t.index for t in tasks}
    train_cases, val_cases = [], []
    for d in datasets:
        tr, va = split_cases(d.training, args.val_fraction, args.seed)
        train_cases += [(c, index_of[d.task_name()]) for c in tr]
        val_cases += [(c, index_of[d.task_name()]) for c in va]
    options = _options(args, out, len(train_cases), ctx.world_size, time_limit_s)
    method = TaskMethod(kind, tasks, config, prep)
    items = method.prepare_items(cache_items(train_cases, ToModelGrid(prep), args.cache_workers))
    val_items = (
        method.prepare_items(cache_items(val_cases, ToModelGrid(prep), args.cache_workers))
        if ctx.is_main
        else []
    )
    method.make_sampler(items, args.foreground_prob, not args.no_augment)
    torch.manual_seed(args.seed)
    model = build_network(config)
    if init_state is not None:
        model.load_state_dict(init_state)
    run_config = {
        "method": kind,
        "network": config.to_dict(),
        "preprocessing": prep.to_dict(),
        "tasks": [t.to_dict() for t in tasks],
        "train_cases": [c.case_id for c, _ in train_cases],
        "val_cases": [c.case_id for c, _ in val_cases],
        "batch": options.batch,
        "lr": options.lr,
        "weight_decay": options.weight_decay,
        "optimizer": options.optimizer,
        "schedule": options.schedule,
        "warmup": options.warmup,
        "seed": options.seed,
        "amp": options.amp,
        "world_size": ctx.world_size,
        "foreground_prob": args.foreground_prob,
        "augment": not args.no_augment,
        **(extra_config or {}),
    }
    result = _run(method, model, val_items, options, ctx, run_config)
    if ctx.is_main:
        meta = _training_meta(
            kind, result, options, datasets, [c.case_id for c, _ in val_cases], ctx, **(extra_config or {})
        )
        factory.write_task_bundle(
            out,
            kind,
            tasks,
            prep,
            label_space=space,
            state_dict=result.state_dict,
            network_config=config,
            name=args.name or out.name,
            training=meta,
            reference=reference,
        )
    ctx.barrier()
    return result, options


@_interruptible
def cmd_train_tasks(args, kind: str) -> int:
    # individual: --out is a folder of per-task bundles; a resumed run continues in it and skips finished tasks
    continuing = (
        kind == "individual" and args.resume and args.out.is_dir() and not (args.out / "bundle.json").exists()
    )
    if not continuing:
        _check_out(args.out, args)
    datasets = load_datasets(args.data)
    ctx = setup_distributed(args.device)
    try:
        if kind == "individual":
            if ctx.is_main:
                args.out.mkdir(exist_ok=continuing)
            ctx.barrier()
            base_ckpt = args.checkpoint_dir or args.out.with_name(args.out.name + ".training")
            deadline = None if args.time_limit is None else time.time() + args.time_limit * 60.0
            resume_requested = args.resume
            for k, d in enumerate(datasets):
                tasks, _ = _task_infos(kind, [d])
                args.checkpoint_dir = base_ckpt / d.task_name()
                out = args.out / d.task_name()
                if continuing and (out / "bundle.json").is_file():
                    if ctx.is_main:
                        print(f"{d.task_name()}: already trained in {out}, skipping")
                    continue
                # tasks the killed run never reached start fresh; the interrupted one continues
                args.resume = resume_requested and (args.checkpoint_dir / LAST).is_file()
                # each task gets an equal share of what is left, so time a task does not use passes on
                share = None if deadline is None else (deadline - time.time()) / (len(datasets) - k)
                result, options = _train_task_model(
                    kind, [d], tasks, None, args, ctx, out, time_limit_s=share
                )
                _summary(ctx, result, out, options)
            return 0
        tasks, space = _task_infos(kind, datasets)
        if space is not None and ctx.is_main and not args.quiet:
            print(space.format_table())
        result, options = _train_task_model(kind, datasets, tasks, space, args, ctx, args.out)
        _summary(ctx, result, args.out, options)
        return 0
    finally:
        ctx.close()


# ------------------------------------------------------------------------------------------------ add-task


def _widen_state(old_state: dict, new_model: torch.nn.Module) -> dict:
    """Old weights in the new (possibly wider) network: equal shapes copied; the head's old channels kept."""
    state = new_model.state_dict()
    for key, value in old_state.items():
        if key not in state:
            continue
        if state[key].shape == value.shape:
            state[key] = value.clone()
        elif key.startswith("head.") and value.shape[1:] == state[key].shape[1:]:
            state[key][: value.shape[0]] = value
    return state


@_interruptible
def cmd_add_task(args) -> int:
    from LabelSharingSegLib.engine.bundle import load_bundle

    _check_out(args.out, args)
    bundle = load_bundle(args.bundle)
    if bundle.kind != "labelsharing":
        raise InputError(f"{args.bundle}: add-task needs a labelsharing bundle, not {bundle.kind}")
    new = load_datasets([args.data])[0]
    replay = load_datasets(args.replay) if args.replay else []
    for d in replay:
        if d.task_name() not in bundle.task_names():
            raise InputError(
                f"--replay {d.root}: task {d.task_name()!r} is not in the bundle "
                f"(its tasks: {', '.join(bundle.task_names())})"
            )
    if new.task_name() in bundle.task_names():
        raise LabelSpaceError(f"task {new.task_name()!r} is already in {args.bundle}; rename the new dataset")
    space = bundle.label_space.place_task(task_sizes(new), widen=args.widen)
    colors = {t.name: {label.value: label.color for label in t.labels} for t in bundle.tasks}
    tasks = factory.labelsharing_tasks(space, colors)
    config = bundle.network_config.replace(out_channels=space.n_shared + 1)
    model = build_network(config)
    init = _widen_state(bundle.state_dict, model)
    ctx = setup_distributed(args.device)
    try:
        if ctx.is_main and not args.quiet:
            print(space.format_table())
        result, options = _train_task_model(
            "labelsharing",
            [new] + replay,
            tasks,
            space,
            args,
            ctx,
            args.out,
            prep=bundle.preprocessing,
            config=config,
            init_state=init,
            extra_config={"base_bundle": bundle.bundle_id},
            reference=bundle.reference_image() if bundle.has_reference() else None,
        )
        _summary(ctx, result, args.out, options, f"\nOld bundle untouched: {args.bundle}")
        return 0
    finally:
        ctx.close()


# ------------------------------------------------------------------------------------------------ LCS


def read_coarse_map(path: Path) -> tuple[dict[int, int], dict[int, str]]:
    """CSV fine_value,coarse_value[,coarse_name] (header optional), or the ``label_hierarchy.json`` that
    ``lsseg data build`` writes beside dataset.json -> (fine->coarse, coarse names)."""
    if not path.is_file():
        raise InputError(f"{path}: coarse map not found")
    if path.suffix.lower() == ".json":
        return _read_hierarchy_json(path)
    mapping, names = {}, {}
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if not row or not "".join(row).strip():
                continue
            try:
                fine, coarse = int(row[0]), int(row[1])
            except (ValueError, IndexError):
                if number == 1:
                    continue  # header
                raise InputError(f"{path}:{number}: expected fine_value,coarse_value[,coarse_name]") from None
            if fine <= 0 or coarse <= 0:
                raise InputError(f"{path}:{number}: label values must be positive")
            mapping[fine] = coarse
            if len(row) > 2 and row[2].strip():
                names[coarse] = row[2].strip()
    if not mapping:
        raise InputError(f"{path}: the coarse map holds no rows")
    return mapping, names


def _read_hierarchy_json(path: Path) -> tuple[dict[int, int], dict[int, str]]:
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
        mapping = {int(fine): int(coarse) for fine, coarse in table["fine_to_coarse"].items()}
        names = {
            int(value): str(name) for name, value in table.get("coarse_labels", {}).items() if int(value) > 0
        }
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a label hierarchy (expected 'fine_to_coarse'; {exc})") from None
    if not mapping or any(f <= 0 or c <= 0 for f, c in mapping.items()):
        raise InputError(f"{path}: the label hierarchy holds no positive fine -> coarse pairs")
    return mapping, names


@_interruptible
def cmd_train_lcs(args) -> int:
    from LabelSharingSegLib.engine.datasets import load_case
    from LabelSharingSegLib.engine.preprocessing import resample_to_grid, to_model_grid

    _check_out(args.out, args)
    dataset = load_datasets([args.data])[0]
    fine_labels = dataset.foreground_labels()
    coarse_map, coarse_names = read_coarse_map(args.coarse_map) if args.coarse_map else ({}, {})
    unknown = sorted(set(coarse_map) - set(fine_labels))
    if unknown:
        raise InputError(f"{args.coarse_map}: fine values {unknown} are not labels of {dataset.root}")
    labels: dict[int, str] = {}
    for value, name in fine_labels.items():
        target = coarse_map.get(value, value)
        labels[target] = coarse_names.get(target) or (
            name if target == value else labels.get(target, f"coarse_{target}")
        )
    max_value = max(list(fine_labels) + list(labels))
    lut = torch.arange(max_value + 1)
    for fine, coarse in coarse_map.items():
        lut[fine] = coarse
    ids = [c.case_id for c in dataset.training]
    atlas_id = args.atlas_case or ids[0]
    if atlas_id not in ids:
        raise InputError(
            f"--atlas-case {atlas_id!r} is not a training case of {dataset.root}; "
            f"choose one of: {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}"
        )
    atlas_case = dataset.training[ids.index(atlas_id)]
    channels = list(args.channels)
    dims, spacing, _ = detect_dims(dataset)
    config = factory.network_config_for("lcs", [], dims, channels)
    factor = config.downsample_factor
    spacing = args.spacing or spacing
    image, label, affine = load_case(atlas_case)
    raw = image[0][..., None] if image[0].ndim == 2 else image[0]
    label = label[..., None] if label.ndim == 2 else label
    # only the grid is wanted here: no normalisation, and the patch size is not used
    probe_prep = factory.make_preprocessing(dims, spacing, [factor] * dims, {"mode": "none"}, factor=factor)
    grid = to_model_grid(raw, affine, probe_prep)
    grid_affine, grid_shape = grid.affine.numpy(), tuple(grid.shape[1:])
    atlas_raw = resample_to_grid(
        torch.as_tensor(raw)[None], grid_affine, grid_shape, mode="bilinear", src_affine=affine
    )[0]
    atlas_fine = (
        resample_to_grid(
            torch.as_tensor(label.astype(np.float32))[None],
            grid_affine,
            grid_shape,
            mode="nearest",
            src_affine=affine,
        )[0]
        .round()
        .long()
    )
    atlas_labels = lut[atlas_fine]
    patch = [s + (-s) % factor for s in grid_shape[:dims]]
    prep = factory.make_preprocessing(dims, spacing, patch, {"mode": args.intensity}, factor=factor)
    present = sorted(set(torch.unique(atlas_labels).tolist()) - {0})
    if not present:
        raise InputError(f"atlas case {atlas_id!r} has no labels on the model grid")
    others = [c for c in dataset.training if c.case_id != atlas_id] or [atlas_case]
    train_cases, val_cases = split_cases(others, args.val_fraction, args.seed)
    method = LCSMethod(atlas_raw, atlas_labels, present, config, prep, merge_prob=args.merge_prob)
    transform = ToAtlasGrid(prep, grid_affine, grid_shape)

    def mapped(items):
        for item in items:
            item["label"] = lut[item["label"].clamp(0, max_value)]
        return method.prepare_items(items)

    ctx = setup_distributed(args.device)
    try:
        items = mapped(cache_items([(c, 0) for c in train_cases], transform, args.cache_workers))
        val_items = (
            mapped(cache_items([(c, 0) for c in val_cases], transform, args.cache_workers))
            if ctx.is_main
            else []
        )
        method.make_sampler(items, args.foreground_prob, not args.no_augment)
        options = _options(args, args.out, len(train_cases), ctx.world_size)
        torch.manual_seed(args.seed)
        model = build_network(config)
        run_config = {
            "method": "lcs",
            "network": config.to_dict(),
            "preprocessing": prep.to_dict(),
            "atlas_case": atlas_id,
            "coarse_map": {str(k): v for k, v in sorted(coarse_map.items())},
            "labels": present,
            "train_cases": [c.case_id for c in train_cases],
            "val_cases": [c.case_id for c in val_cases],
            "batch": options.batch,
            "lr": options.lr,
            "weight_decay": options.weight_decay,
            "optimizer": options.optimizer,
            "schedule": options.schedule,
            "warmup": options.warmup,
            "seed": options.seed,
            "amp": options.amp,
            "world_size": ctx.world_size,
            "merge_prob": args.merge_prob,
            "augment": not args.no_augment,
        }
        result = _run(method, model, val_items, options, ctx, run_config)
        if ctx.is_main:
            infos = [LabelInfo(v, labels[v], default_color(v)) for v in present]
            meta = _training_meta(
                "lcs",
                result,
                options,
                [dataset],
                [c.case_id for c in val_cases],
                ctx,
                atlas_case=atlas_id,
                coarse_map=[[f, c] for f, c in sorted(coarse_map.items())],
                fine_labels=[[v, n] for v, n in sorted(fine_labels.items())],
            )
            factory.write_lcs_bundle(
                args.out,
                atlas_raw.numpy(),
                atlas_labels.numpy().astype(np.int16),
                grid_affine,
                infos,
                prep,
                channels=channels,
                state_dict=result.state_dict,
                name=args.name or args.out.name,
                training=meta,
            )
        ctx.barrier()
        _summary(ctx, result, args.out, options)
        return 0
    finally:
        ctx.close()


# ------------------------------------------------------------------------------------------------ evaluate


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    report = evaluate(args.bundles, args.data, args.out, device=args.device, with_hd95=not args.no_hd95)
    print(report)
    return 0


__all__ = ["register", "TrainingError"]

"""What every training run does around the loop: refuse outputs it must not touch, own its checkpoint folder,
resume (also a run killed while it wrote its bundle), run ``trainer.train`` and report.

The checkpoint folder is the run's own: a new run only starts in a folder that does not exist, is empty, or was
made by an earlier ``lsseg train`` that never wrote a checkpoint. ``training_folder.json`` marks it ours and
records the bundle once it is written, so ``--resume`` can tell "finished" from "killed while writing the
bundle" (then the bundle is written again from the saved weights, without training).
"""

from __future__ import annotations

import csv
import json
import math
import platform
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from LabelSharingSegLib.engine.atomic import write_text_atomic
from LabelSharingSegLib.engine.errors import InputError

from .checkpoint import BEST, LAST, CheckpointError, load_checkpoint, read_checkpoint
from .distributed import DistContext
from .run_config import TrainSettings
from .run_identity import CONFIG_FILE, RunIdentity, read_saved_identity
from .trainer import StepCallback, TrainingError, TrainOptions, TrainResult, train

FOLDER_FILE = "training_folder.json"
FOLDER_FORMAT = "labelsharingseg.training-folder/1"


@dataclass(frozen=True)
class TrainedBundle:
    """One bundle a run wrote, with the loop's result and where its checkpoints are."""

    out: Path
    result: TrainResult
    options: TrainOptions

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.options.checkpoint_dir)


# ------------------------------------------------------------------------------------------------ outputs


def check_new_output(out: Path, settings: TrainSettings) -> None:
    """Bundles are never overwritten, and their folder's parent must exist (as for every lsseg output)."""
    if out.exists():
        hint = "choose a new --out"
        if settings.resume and settings.checkpoint_dir is None:
            # the default checkpoint folder follows --out: extending a finished run names the old one
            hint = (
                f"to extend the finished run into a new bundle, pass a new --out and --checkpoint-dir "
                f"{out.with_name(out.name + '.training')} with --resume and a larger --steps"
            )
        raise InputError(f"{out}: already exists (bundles are never overwritten; {hint})")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: output folder does not exist; create it first")


def claim_outputs(out: Path, settings: TrainSettings) -> Path:
    """Check the bundle path and the checkpoint folder of a one-bundle run; returns the checkpoint folder."""
    checkpoint_dir = settings.checkpoint_dir_for(out)
    check_new_output(out, settings)
    check_checkpoint_dir(checkpoint_dir, settings.resume)
    return checkpoint_dir


def _ours(folder: Path) -> bool:
    try:
        return json.loads((folder / FOLDER_FILE).read_text(encoding="utf-8")).get("format") == FOLDER_FORMAT
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def check_checkpoint_dir(folder: Path, resume: bool) -> None:
    """Refuse, before anything is written, a folder a run must not use (see the module docstring)."""
    if resume:
        if not (folder / LAST).is_file():
            raise CheckpointError(f"{folder / LAST}: no checkpoint to resume from (start without --resume)")
        return
    if (folder / LAST).exists():
        raise TrainingError(
            f"{folder / LAST}: a checkpoint of an earlier run exists; pass --resume to continue it "
            "or choose another --checkpoint-dir"
        )
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: the checkpoint folder is a file; choose another --checkpoint-dir")
    if folder.is_dir() and any(folder.iterdir()) and not _ours(folder):
        raise InputError(
            f"{folder}: the checkpoint folder already holds files that training did not write; training never "
            "overwrites them: choose a new or empty --checkpoint-dir (or pass --resume to continue a run there)"
        )
    if not folder.parent.is_dir():
        raise InputError(f"{folder.parent}: folder of the checkpoint folder does not exist; create it first")


def _write_folder_file(folder: Path, bundle: Path | None, weights: str = "best") -> None:
    content = {"format": FOLDER_FORMAT, "bundle": None if bundle is None else str(bundle)}
    if bundle is not None:
        content["weights"] = weights
    write_text_atomic(folder / FOLDER_FILE, json.dumps(content, indent=2) + "\n")


def _bundle_written(folder: Path) -> tuple[str | None, str]:
    """The last bundle the folder's run wrote (None: none yet) and which weights it holds (best before
    ``--bundle-weights`` existed)."""
    try:
        content = json.loads((folder / FOLDER_FILE).read_text(encoding="utf-8"))
        return content.get("bundle"), str(content.get("weights", "best"))
    except (OSError, ValueError, AttributeError, RecursionError):
        return None, "best"


def claim_folder(folder: Path) -> None:
    """Create the checkpoint folder (if needed) and mark it as a training folder."""
    folder.mkdir(exist_ok=True)
    if not _ours(folder):
        _write_folder_file(folder, None)


def mark_bundle_written(folder: Path, bundle: Path, weights: str) -> None:
    _write_folder_file(folder, bundle, weights)


# ------------------------------------------------------------------------------------------------ the loop


_SETTINGS_FIELDS = {f.name for f in fields(TrainSettings)} - {"steps", "val_every", "checkpoint_dir"}


def train_options(
    settings: TrainSettings,
    checkpoint_dir: Path,
    n_train: int,
    world_size: int,
    time_limit_s: float | None = None,
) -> TrainOptions:
    """The loop's options; ``time_limit_s`` overrides the settings' limit (``individual``'s share per task)."""
    if time_limit_s is None and settings.time_limit_min is not None:
        time_limit_s = settings.time_limit_min * 60.0
    steps = settings.total_steps(n_train, world_size)
    # the loop's options that the settings hold under the same name (batch, lr, optimiser, seed, amp, ...)
    same = {f.name: getattr(settings, f.name) for f in fields(TrainOptions) if f.name in _SETTINGS_FIELDS}
    return TrainOptions(
        **{**same, "steps": steps, "val_every": settings.val_every or max(1, steps // 10)},
        checkpoint_dir=checkpoint_dir,
        time_limit=None if time_limit_s is None else max(0.0, time_limit_s),
    )


def _logged_losses(folder: Path) -> list[float]:
    try:
        with open(folder / "log.csv", newline="", encoding="utf-8") as handle:
            return [float(row["loss"]) for row in csv.DictReader(handle)]
    except (OSError, ValueError, KeyError):
        return []


def _result_of_finished_run(
    model, options: TrainOptions, identity: RunIdentity, describe
) -> TrainResult | None:
    """The saved result when the checkpoint already reached ``options.steps`` and its bundle was never written
    (killed while writing it) or is asked for with the other weights (``--bundle-weights``); None when training
    has to run."""
    folder = Path(options.checkpoint_dir)
    _, metadata = read_checkpoint(folder / LAST)
    step = int(metadata["state"]["step"])
    delivered, delivered_weights = _bundle_written(folder)
    if step < options.steps or (delivered and delivered_weights == options.bundle_weights):
        return None  # more steps to train, or finished and delivered so: ``train`` explains
    state = load_checkpoint(folder / LAST, model, None, identity.fingerprint(), describe)
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    best_step = int(state["best_step"])
    if best_step > 0 and options.bundle_weights == "best" and (folder / BEST).is_file():
        tensors, _ = read_checkpoint(folder / BEST)
        weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    losses = _logged_losses(folder)
    return TrainResult(
        weights,
        step,
        0.0,
        float(state["best_val"]),
        best_step,
        losses[0] if losses else math.nan,
        losses[-1] if losses else math.nan,
        losses,
        planned_steps=options.steps,
        weights=options.bundle_weights,
    )


def run_loop(
    method,
    model: torch.nn.Module,
    val_items: list[dict],
    options: TrainOptions,
    ctx: DistContext,
    identity: RunIdentity,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Own the checkpoint folder, then train (or only collect a finished run's weights)."""
    folder = Path(options.checkpoint_dir)
    saved = read_saved_identity(folder) if options.resume else None

    def describe(_state) -> str:
        return identity.differences(saved)

    if options.resume:
        finished = _result_of_finished_run(model, options, identity, describe)
        if finished is not None:
            if ctx.is_main:
                print(
                    f"{folder}: the run had finished {finished.steps} steps; writing its bundle again "
                    f"(the weights of step {finished.weights_step})"
                )
            return finished
    if ctx.is_main:
        claim_folder(folder)
        if not options.resume:
            write_text_atomic(folder / CONFIG_FILE, json.dumps(identity.to_dict(), indent=2) + "\n")
    ctx.barrier()
    if ctx.device_note and ctx.is_main and not options.quiet:
        print(ctx.device_note)
    return train(method, model, val_items, options, ctx, identity.fingerprint(), describe, on_step)


# ------------------------------------------------------------------------------------------------ reporting


def print_summary(ctx: DistContext, trained: TrainedBundle, extra: str = "") -> None:
    if not ctx.is_main:
        return
    result, out, options = trained.result, trained.out, trained.options
    best = (
        f"{result.best_val:.4f} (step {result.best_step})"
        if result.best_step > 0
        else "n/a (no validation cases)"
    )
    which = (
        "the best weights so far" if result.weights_step == result.best_step else "the last step's weights"
    )
    stopped = ""
    if result.stopped_by_time:
        stopped = (
            f"Time limit ({options.time_limit / 60:g} min) reached: stopped at step {result.steps} of "
            f"{result.planned_steps}; the bundle holds {which} (continue with a new --out, "
            f"--checkpoint-dir {options.checkpoint_dir} --resume)\n"
        )
    print(
        f"{stopped}Trained {result.steps} steps in {result.seconds:.1f} s; loss {result.first_loss:.4f} -> "
        f"{result.last_loss:.4f}; best validation Dice {best}\nBundle: {out} (the weights of step "
        f"{result.weights_step})\n"
        f"Checkpoints and log.csv: {options.checkpoint_dir}{extra}"
    )


def training_device(device: torch.device, world_size: int) -> str:
    """What the run trained on, in words: the GPU's name or the CPU model, with the threads per process."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_model() or platform.machine() or "CPU"
        name = f"CPU {name}, {torch.get_num_threads()} thread(s)"
    return name if world_size == 1 else f"{world_size} x {name}"


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def training_meta(
    method: str,
    result: TrainResult,
    options: TrainOptions,
    datasets,
    val_ids,
    world_size: int,
    *,
    device: torch.device | None = None,
    appearance: tuple[str, ...] = (),
    **extra,
) -> dict:
    """The ``training`` section of the bundle manifest: the run's settings and results, the device it ran
    on and the appearance augmentation it was trained for (the scans it should be robust to)."""
    return {
        "device": None if device is None else training_device(device, world_size),
        "appearance": list(appearance),
        "method": method,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "batch": options.batch,
        "world_size": world_size,
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
        # which weights the bundle holds (--bundle-weights; the last without validation) and their step
        "weights": result.weights if result.best_step > 0 else "last",
        "weights_step": result.weights_step,
        **extra,
    }


def elapsed_share(deadline: float | None, tasks_left: int) -> float | None:
    """Equal share of the time left for each remaining task, so time a task does not use passes on."""
    return None if deadline is None else (deadline - time.time()) / max(1, tasks_left)

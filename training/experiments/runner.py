"""The experiments' one door into training and evaluation.

Every experiment trains and evaluates only through the functions here, so the experiments stay the same when the
training code behind them changes (it calls the typed training API, ``lsseg_training.api``, and nothing else of training). Each call is *resumable*: a finished bundle or evaluation is kept and skipped, a run killed
mid-way continues from its checkpoint (bit-identical to an uninterrupted run, see docs/TRAINING.md).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from LabelSharingSegLib.engine.errors import InputError

from .. import api
from ..api import AddTaskConfig, LCSRunConfig, TaskRunConfig, TrainSettings
from ..checkpoint import LAST
from ..evaluate import evaluate
from ..run_config import PUBLISHED_HEAD, PUBLISHED_LCS_CONDITIONING


@dataclass(frozen=True)
class Budget:
    """What one training run may spend, plus the settings every compared method shares."""

    steps: int
    batch: int = 2
    seed: int = 0
    channels: tuple[int, ...] = (8, 16, 32, 64, 128)
    patch: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None  # model grid in mm (default: the data's median)
    lr: float = 1e-3
    device: str = "auto"
    val_fraction: float = 0.2
    augment: bool = True
    quiet: bool = True
    # validation (not training compute): a seeded sample of at most ``val_labels`` labels, the same for every
    # method (validation_labels.py), every ``val_every`` steps (0: ten times a run)
    val_labels: int | None = None
    val_every: int = 0
    extra: dict = field(default_factory=dict)  # any further `lsseg train` option by its argparse name

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1:
            raise InputError(f"a budget needs steps >= 1 and batch >= 1, got {self.steps} x {self.batch}")
        if self.val_labels is not None and self.val_labels < 1:
            raise InputError(f"--val-labels must be >= 1, got {self.val_labels}")
        if self.val_every < 0:
            raise InputError(f"--val-every must be >= 0, got {self.val_every}")

    @property
    def samples(self) -> int:
        return self.steps * self.batch

    def with_steps(self, steps: int) -> Budget:
        return Budget(**{**self.__dict__, "steps": steps})

    def with_extra(self, **options) -> Budget:
        return Budget(**{**self.__dict__, "extra": {**self.extra, **options}})

    def to_args(self) -> list[str]:
        """The `lsseg experiment` options that give this budget (for the report's reproduce line)."""
        args = ["--steps", str(self.steps), "--batch", str(self.batch), "--seed", str(self.seed)]
        args += ["--channels", ",".join(map(str, self.channels)), "--lr", str(self.lr)]
        args += ["--val-fraction", str(self.val_fraction), "--device", self.device]
        args += ["--patch", ",".join(map(str, self.patch))] if self.patch else []
        args += ["--spacing", ",".join(map(str, self.spacing))] if self.spacing else []
        args += ["--val-labels", str(self.val_labels)] if self.val_labels is not None else []
        args += ["--val-every", str(self.val_every)] if self.val_every else []
        return args + ([] if self.augment else ["--no-augment"])

    def to_dict(self) -> dict:
        out = {
            **self.__dict__,
            "channels": list(self.channels),
            "patch": list(self.patch or []),
            "spacing": list(self.spacing or []),
        }
        # validation settings are recorded only when set, so experiments written before they existed continue
        for key, default in (("val_labels", None), ("val_every", 0)):
            if out[key] == default:
                del out[key]
        return out


# ------------------------------------------------------------------------------------------------ runs


def checkpoint_dir(out: Path) -> Path:
    return out.with_name(out.name + ".training")


def is_bundle(path: Path) -> bool:
    """A finished bundle: bundles are written atomically, so the manifest exists only when all of it does."""
    return (Path(path) / "bundle.json").is_file()


def _settings(budget: Budget, checkpoints: Path, resume: bool | None = None) -> TrainSettings:
    """The training API's settings for one run of ``budget``; a run interrupted before its bundle was written
    continues from its checkpoint."""
    return TrainSettings(
        steps=budget.steps,
        batch=budget.batch,
        seed=budget.seed,
        channels=tuple(budget.channels),
        patch=tuple(budget.patch) if budget.patch else None,
        spacing=tuple(budget.spacing) if budget.spacing else None,
        lr=budget.lr,
        device=budget.device,
        val_fraction=budget.val_fraction,
        val_labels=budget.val_labels,
        val_every=budget.val_every,
        augment=budget.augment,
        quiet=budget.quiet,
        checkpoint_dir=checkpoints,
        resume=(checkpoints / LAST).is_file() if resume is None else resume,
        # the count the experiment command set (cli.py), so every run and the report's device line agree
        threads=torch.get_num_threads(),
        # the papers' claims are about label sharing as published; the default head is the dynamic-head variant
        head=PUBLISHED_HEAD,
    ).with_changes(**budget.extra)


def train_tasks(kind: str, data: list[Path], out: Path, budget: Budget) -> bool:
    """Label sharing or a joint baseline over all ``data``. True when it trained, False when already done."""
    if kind == "individual":
        raise InputError("train one-model-per-task runs one task at a time (train_individual per task)")
    if is_bundle(out):
        return False
    api.train_tasks(
        TaskRunConfig(kind, data=tuple(data), out=out, settings=_settings(budget, checkpoint_dir(out)))
    )
    return True


def train_individual(data: Path, out: Path, budget: Budget) -> bool:
    """One model for one task, as a plain bundle at ``out`` (the `individual` method of the training API)."""
    if is_bundle(out):
        return False
    # `individual` writes FOLDER/<task>: train into a staging folder, then move the one bundle into place. A killed
    # run left the staging folder: continue in it (a finished task is skipped, an interrupted one resumed).
    staging = out.with_name(out.name + ".individual")
    settings = _settings(budget, checkpoint_dir(out), resume=staging.is_dir())
    api.train_tasks(TaskRunConfig("individual", data=(data,), out=staging, settings=settings))
    bundles = [p for p in staging.iterdir() if is_bundle(p)]
    if len(bundles) != 1:
        raise InputError(f"{staging}: expected one task bundle, found {len(bundles)}")
    bundles[0].rename(out)
    staging.rmdir()
    return True


def add_task(
    base: Path,
    data: Path,
    out: Path,
    budget: Budget,
    replay: list[Path] = (),
    new_task_share: float | str | None = None,
) -> bool:
    """`add-task` with ``widen``: it only acts when the task has more labels than the shared space (those get new
    shared labels; otherwise a held-out task larger than the others could not be added at all).
    ``new_task_share``: the new task's share of the samples with replay (None: add-task's default)."""
    if is_bundle(out):
        return False
    settings = _settings(budget, checkpoint_dir(out)).with_changes(head=None)  # the base bundle's network
    config = AddTaskConfig(
        base, data, out, settings=settings, replay=tuple(replay), widen=True, new_task_share=new_task_share
    )
    api.add_task(config)
    return True


def train_lcs(data: Path, out: Path, budget: Budget, coarse_map: Path | None = None, **options) -> bool:
    """LCS on one dataset, optionally on the coarse labels of ``coarse_map``; ``options``: further
    ``LCSRunConfig`` settings (the LCS variants)."""
    if is_bundle(out):
        return False
    settings = _settings(budget, checkpoint_dir(out))
    # the experiment measures the paper's network unless a variant changes the conditioning
    options = {"conditioning": PUBLISHED_LCS_CONDITIONING, **options}
    api.train_lcs(LCSRunConfig(data, out, settings=settings, coarse_map=coarse_map, **options))
    return True


# ------------------------------------------------------------------------------------------------ evaluation


def validation_labels_of(bundle: Path) -> list[int] | None:
    """The label values a finished run validated on when they were capped (``--val-labels``); None otherwise.
    A task bundle records them per task: the union is returned (one task in the LCS experiment)."""
    manifest = json.loads((Path(bundle) / "bundle.json").read_text(encoding="utf-8"))
    chosen = manifest.get("training", {}).get("validation_labels")
    if chosen is None:
        return None
    if isinstance(chosen, dict):
        return sorted({int(v) for values in chosen.values() for v in values})
    return sorted(int(v) for v in chosen)


def fine_methods(evaluation: Path) -> list[dict]:
    """Every way of segmenting the fine atlas labels that `lsseg evaluate` measured for a coarse LCS bundle
    (naive, affine and deformable propagation, LCS; ``fine_methods.csv``); [] when it measured none."""
    path = Path(evaluation) / "fine_methods.csv"
    return read_csv(path) if path.is_file() else []


def evaluate_bundle(
    bundle: Path, data: list[Path], out: Path, method: str, device: str = "auto", **options
) -> list[dict]:
    """Dice rows of one bundle on the datasets' test cases, the ``method`` column set to our name (registration
    baselines, ``options`` ``atlas_baselines``: ``"<method>: <baseline>"``).

    Kept in ``out`` (metrics.csv, and table1.csv for coarse LCS bundles); a finished evaluation is read back."""
    metrics = Path(out) / "metrics.csv"
    if not metrics.is_file():
        evaluate([bundle], data, out, device=device, with_hd95=False, **options)
    return [
        {
            **row,
            "method": f"{method}: {row['method'].split(': ', 1)[1]}"
            if row["kind"] == "registration"
            else method,
        }
        for row in read_csv(metrics)
    ]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows (dicts, the union of their keys as columns) written atomically."""
    import io

    from LabelSharingSegLib.engine.atomic import write_text_atomic

    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())

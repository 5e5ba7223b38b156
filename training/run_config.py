"""Typed run configurations of the training API (``train_tasks``, ``train_lcs``, ``add_task``).

The command line (``train_cli.py``) only turns its arguments into these frozen objects; the demo, experiments and
tests build them directly. Every value is checked here, when the object is made, so a bad option is refused with
one clear line before any file is written.

``TrainSettings`` holds what every run shares: the budget, optimisation, sampling, network and preprocessing
choices, and how the run is watched and checkpointed. Only the watched part (``RESUME_MAY_CHANGE``) may differ on
``--resume``; everything else is part of the run's identity (``run_identity.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from LabelSharingSegLib.engine.bundle_kind import TASK_KINDS as BUNDLE_TASK_KINDS
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.network_config import LCS_CONDITIONINGS

from .appearance import parse_appearance
from .pipeline import PipelineSettings

TASK_KINDS = tuple(kind.value for kind in BUNDLE_TASK_KINDS)
OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "poly", "constant")
AMP_MODES = ("auto", "bf16", "off")
INTENSITY_MODES = ("zscore", "percentile", "ct_window", "none")
TASK_SAMPLING = ("uniform", "labels")
LABEL_MAPPINGS = ("rank", "shuffled")
# label sharing's output head (--head): what the DoD-Net-style controller generates it from (issue #15 item 5)
HEAD_CONTROLLER_INPUTS = {
    "dynamic": "image+task",
    "task": "task",
    "image": "image",
    "mlp": "none",
    # the same heads with no gradient from the controller into the U-Net (why an image-dependent head helps)
    "dynamic-detached": "detached-image+task",
    "image-detached": "detached-image",
}
HEADS = ("linear", *HEAD_CONTROLLER_INPUTS)
# what one soft Dice of the task methods pools over: one label of one task across the batch's samples of that task,
# or an output channel across the batch (they differ only where tasks share channels: label sharing, DoD-Net)
DICE_POOLINGS = ("task", "channel")
# the default: pooled by channel, a thin label (CSF) and a whole lobe sharing a channel were one Dice, which the lobe
# decided. Pooled by task, label sharing gained on its smallest task and its thinnest label on every one of 4 seeds
# (docs/EXPERIMENTS.md, "One Dice per label of each task").
DEFAULT_DICE_POOLING = "task"
# which weights the bundle holds: those of the best validation, or those the run ended with (a small validation
# sample, e.g. --val-labels 16 of 116, picks noisily among weights that keep improving)
BUNDLE_WEIGHTS = ("best", "last")
PUBLISHED_HEAD = (
    "linear"  # one 1x1 convolution (Anand et al. 2024); the only head the baselines and --task-film take
)
# label sharing's default head: DoD-Net's dynamic head over the same n*+1 shared outputs. On the demo tasks it was
# above the published head, one model per task, multi-channel and DoD-Net on every one of 4 seeds at 1200 steps
# (docs/EXPERIMENTS.md, "What DoD-Net has that label sharing lacks").
DEFAULT_LABELSHARING_HEAD = "dynamic"
DEFAULT_CHANNELS = (8, 16, 32, 64, 128)
DEFAULT_STEPS = 1000
LCS_ARCHS = ("lcs", "lcs_refine")
# the atlas image and mask join the bottleneck only (Ma et al. 2022)
PUBLISHED_LCS_CONDITIONING = "bottleneck"
# `lsseg train lcs`'s default: the atlas image and mask also join every decoder level on its own grid. It was above
# the paper's conditioning in all four paired runs (two seeds at 300 and at 1200 steps, +0.10 to +0.17 mean Dice on
# 116 labels) and on never-trained fine labels, for 1.8% more parameters (docs/EXPERIMENTS.md, "LCS").
DEFAULT_LCS_CONDITIONING = "every-level"
# add-task with replay: the new task's share of the training samples (--new-task-share). EQUAL_SHARE draws it like
# every replayed task (by --task-sampling; equally often by default). It stays the default: at a fixed add-task
# budget a larger share trades the old tasks' Dice for the new task's about one for one, and only the equal share
# kept the old tasks within 0.01 (docs/EXPERIMENTS.md, "Incremental learning: the new task's share").
EQUAL_SHARE = "equal"
DEFAULT_NEW_TASK_SHARE: float | str = EQUAL_SHARE
# soft Dice on the conditioned label (Ma et al. 2022), or plus binary cross-entropy, or soft Dice on the labels
# conditioned on one image competing in one softmax with a fixed 'none of them' logit, as inference decides
LCS_LOSSES = ("dice", "dice-bce", "competing")
# how the labels conditioned on one image are drawn beyond the first: anywhere, or among the atlas labels that border
# the first (where inference decides between labels)
LCS_LABEL_DRAWS = ("random", "neighbours")
# none: training cases where their world coordinates put them (Ma et al. 2022); affine: each registered to the atlas
# first, as inference registers a scan (case_alignment.py); deformable: also the atlas carried onto each case by
# deformable registration before it conditions the network (engine/atlas_warp.py)
LCS_CASE_ALIGNMENTS = ("none", "affine", "deformable")
MAX_LABELS_PER_IMAGE = 64

# What ``--resume`` may change: how long to train and how the run is watched. A larger ``steps`` continues the run;
# the lr schedule is then recomputed for the new total. Everything else must match the checkpoint.
RESUME_MAY_CHANGE = (
    "steps",
    "epochs",
    "time_limit_min",
    "val_every",
    "val_labels",
    "bundle_weights",
    "checkpoint_every",
    "quiet",
    "tensorboard",
    "name",
    "out",
    "device",
    "cache_workers",
    "loader_workers",
    "threads",
    "compile",
    "channels_last",
    "fused_optimizer",
    "sync_data_timing",
    "loss_sync_every",
)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _positive_ints(values, what: str) -> tuple[int, ...]:
    values = tuple(values)
    _require(
        bool(values) and all(isinstance(v, int) and v > 0 for v in values),
        f"{what} must be positive integers, got {list(values)}",
    )
    return values


@dataclass(frozen=True)
class TrainSettings:
    """Options shared by every training run (defaults are the command line's)."""

    steps: int | None = None  # None: from ``epochs``, else DEFAULT_STEPS
    epochs: int | None = None
    time_limit_min: float | None = None
    batch: int = 2
    patch: tuple[int, ...] | None = None
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup: int = 0
    device: str = "auto"
    amp: str = "auto"
    foreground_prob: float = 0.5
    # label sharing's options for measuring why it trails (issue #15; defaults: Anand et al. 2024 as published)
    task_sampling: str = (
        "uniform"  # uniform: each task equally often; labels: in proportion to its label count
    )
    label_mapping: str = "rank"  # rank: labels share channels by size rank; shuffled: a seeded random mapping
    task_film: bool = False  # the U-Net gets a per-task scale and shift of its decoder features
    head: str | None = (
        None  # None: the method's default (head_for); linear: as published; else HEAD_CONTROLLER_INPUTS
    )
    dice_pooling: str | None = None  # None: DEFAULT_DICE_POOLING (task methods only); else DICE_POOLINGS
    augment: bool = True
    cache_workers: int = 0
    channels: tuple[int, ...] = DEFAULT_CHANNELS
    spacing: tuple[float, ...] | None = None
    intensity: str = "zscore"
    val_fraction: float = 0.2
    val_every: int = 0  # 0: ten times per run
    val_labels: int | None = None  # score at most this many labels, a seeded sample (validation_labels.py)
    bundle_weights: str = "best"  # BUNDLE_WEIGHTS
    checkpoint_every: int = 50
    checkpoint_dir: Path | None = None  # None: OUT + '.training'
    resume: bool = False
    quiet: bool = False
    tensorboard: bool = False
    name: str = ""
    # input pipeline and speed (pipeline.py, threads.py, docs/PERFORMANCE.md)
    pipeline: str = "device"  # device | legacy
    appearance: tuple[str, ...] = ()  # appearance.APPEARANCE_CHOICES
    elastic: bool = True
    loader_workers: int | None = None  # None: automatic
    threads: int | None = None  # None: affinity / LOCAL_WORLD_SIZE (threads.py)
    compile: bool = False
    channels_last: bool = False
    fused_optimizer: str = "auto"
    sync_data_timing: bool = False  # lsseg bench train: exact data time on CUDA
    loss_sync_every: int = 0  # 0: automatic (trainer.loss_sync_interval)

    def __post_init__(self) -> None:
        for key in ("steps", "epochs"):
            value = getattr(self, key)
            _require(
                value is None or (isinstance(value, int) and value >= 1), f"--{key} must be >= 1, got {value}"
            )
        limit = self.time_limit_min
        _require(
            limit is None or (_finite(limit) and limit > 0),
            f"--time-limit must be a positive number of minutes, got {limit}",
        )
        _require(self.batch >= 1, f"--batch must be >= 1, got {self.batch}")
        if self.patch is not None:
            object.__setattr__(self, "patch", _positive_ints(self.patch, "--patch"))
        _require(_finite(self.lr) and self.lr > 0, f"--lr must be a positive finite number, got {self.lr}")
        _require(
            _finite(self.weight_decay) and self.weight_decay >= 0,
            f"--weight-decay must be a finite number >= 0, got {self.weight_decay}",
        )
        _require(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        _require(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}")
        _require(self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}")
        _require(
            self.intensity in INTENSITY_MODES, f"--intensity must be one of {', '.join(INTENSITY_MODES)}"
        )
        _require(self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}")
        _require(0 <= self.seed < 2**32, f"--seed must be between 0 and 2**32-1, got {self.seed}")
        _require(
            _finite(self.foreground_prob) and 0 <= self.foreground_prob <= 1,
            f"--foreground-prob must be between 0 and 1, got {self.foreground_prob}",
        )
        _require(
            self.task_sampling in TASK_SAMPLING,
            f"--task-sampling must be one of {', '.join(TASK_SAMPLING)}, got {self.task_sampling!r}",
        )
        _require(
            self.label_mapping in LABEL_MAPPINGS,
            f"--label-mapping must be one of {', '.join(LABEL_MAPPINGS)}, got {self.label_mapping!r}",
        )
        _require(
            self.head is None or self.head in HEADS,
            f"--head must be one of {', '.join(HEADS)}, got {self.head!r}",
        )
        _require(
            not (self.task_film and self.head not in (None, PUBLISHED_HEAD)),
            f"--task-film and --head {self.head} are two different label-sharing networks; choose one",
        )
        _require(
            self.dice_pooling is None or self.dice_pooling in DICE_POOLINGS,
            f"--dice-pooling must be one of {', '.join(DICE_POOLINGS)}, got {self.dice_pooling!r}",
        )
        _require(self.cache_workers >= 0, f"--cache-workers must be >= 0, got {self.cache_workers}")
        object.__setattr__(self, "channels", _positive_ints(self.channels, "--channels"))
        _require(len(self.channels) >= 2, f"--channels needs at least 2 levels, got {list(self.channels)}")
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            _require(
                bool(spacing) and all(_finite(s) and s > 0 for s in spacing),
                f"--spacing must be positive millimetres, got {list(spacing)}",
            )
            object.__setattr__(self, "spacing", spacing)
        _require(
            _finite(self.val_fraction) and 0 <= self.val_fraction < 1,
            f"--val-fraction must be at least 0 and below 1, got {self.val_fraction}",
        )
        _require(self.val_every >= 0, f"--val-every must be >= 0, got {self.val_every}")
        _require(
            self.val_labels is None or (isinstance(self.val_labels, int) and self.val_labels >= 1),
            f"--val-labels must be >= 1, got {self.val_labels}",
        )
        _require(
            self.bundle_weights in BUNDLE_WEIGHTS,
            f"--bundle-weights must be one of {', '.join(BUNDLE_WEIGHTS)}, got {self.bundle_weights!r}",
        )
        _require(self.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if self.checkpoint_dir is not None:
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))
        names = self.appearance if isinstance(self.appearance, str) else ",".join(self.appearance)
        object.__setattr__(self, "appearance", parse_appearance(names or "none"))
        _require(self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}")
        _require(
            self.fused_optimizer in ("auto", "on", "off"), "--fused-optimizer must be one of auto, on, off"
        )
        _require(
            isinstance(self.loss_sync_every, int) and self.loss_sync_every >= 0,
            f"--loss-sync-every must be >= 0, got {self.loss_sync_every}",
        )
        self.pipeline_settings()  # checks --pipeline, --loader-workers and --appearance together

    def pipeline_settings(self) -> PipelineSettings:
        return PipelineSettings(
            kind=self.pipeline,
            augment=self.augment,
            elastic=self.elastic,
            appearance=self.appearance,
            loader_workers=self.loader_workers,
        )

    def checkpoint_dir_for(self, out: Path) -> Path:
        return (
            self.checkpoint_dir if self.checkpoint_dir is not None else out.with_name(out.name + ".training")
        )

    def total_steps(self, n_train: int, world_size: int) -> int:
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return self.epochs * max(1, -(-n_train // (self.batch * world_size)))
        return DEFAULT_STEPS

    def with_changes(self, **changes) -> TrainSettings:
        return replace(self, **changes)

    @property
    def head_chosen(self) -> bool:
        """True when the output head is other than the published one (only label sharing takes that)."""
        return self.head not in (None, PUBLISHED_HEAD)

    def head_for(self, kind: str) -> str:
        """The output head ``kind`` trains with: the one asked for, else label sharing's default (the published
        head beside a task code, --task-film) or, for every other method, the published head."""
        if self.head is not None:
            return self.head
        if kind == "labelsharing" and not self.task_film:
            return DEFAULT_LABELSHARING_HEAD
        return PUBLISHED_HEAD


@dataclass(frozen=True)
class TaskRunConfig:
    """``train_tasks``: label sharing or a task baseline over several datasets.

    ``individual`` writes one bundle per task into the folder ``out``."""

    kind: str
    data: tuple[Path, ...]
    out: Path
    settings: TrainSettings = field(default_factory=TrainSettings)
    reference: Path | None = None

    def __post_init__(self) -> None:
        _require(
            self.kind in TASK_KINDS, f"unknown task method {self.kind!r}; choose {', '.join(TASK_KINDS)}"
        )
        object.__setattr__(self, "data", tuple(Path(p) for p in self.data))
        _require(bool(self.data), "--data needs at least one dataset folder")
        object.__setattr__(self, "out", Path(self.out))
        if self.reference is not None:
            object.__setattr__(self, "reference", Path(self.reference))
        # the head is settled here, so checkpoints record it and a resume compares like with like
        object.__setattr__(
            self, "settings", self.settings.with_changes(head=self.settings.head_for(self.kind))
        )


@dataclass(frozen=True)
class LCSRunConfig:
    """``train_lcs``: an atlas-conditioned network on one dataset (Ma et al. 2022)."""

    data: Path
    out: Path
    settings: TrainSettings = field(default_factory=TrainSettings)
    atlas_case: str | None = None
    coarse_map: Path | None = None
    merge_prob: float = 0.5
    # 'lcs' (Ma et al. 2022) or 'lcs_refine' (refines registration; refine_run.py); the rest is refine only
    arch: str = "lcs"
    split_prob: float = 0.5  # chance a sample's label is split into random Voronoi cells
    max_parts: int = 8  # at most this many cells per split
    max_cases: int | None = None  # use only the first N training cases (each costs a registration)
    registration_cache: Path | None = None  # None: CHECKPOINT_DIR/registrations
    reference: Path | None = None  # the position of the training targets (atlas_brain.network_pose)
    # issue #15's LCS variants ('lcs' only): where the conditioning joins the U-Net (LCS_CONDITIONINGS; None:
    # DEFAULT_LCS_CONDITIONING, settled when the object is made), labels conditioned per sampled image per step, and
    # the loss (the defaults of the last two are Ma et al. 2022's)
    conditioning: str | None = None
    labels_per_image: int = 1
    loss: str = "dice"
    label_draw: str = "random"
    align_cases: str = "none"
    label_codes: bool = False  # a learned code per trained atlas label beside its mask (networks.LCSNet)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.coarse_map is not None:
            object.__setattr__(self, "coarse_map", Path(self.coarse_map))
        if self.registration_cache is not None:
            object.__setattr__(self, "registration_cache", Path(self.registration_cache))
        if self.reference is not None:
            object.__setattr__(self, "reference", Path(self.reference))
        if self.conditioning is None:  # settled here, so checkpoints and bundles record what trained
            default = DEFAULT_LCS_CONDITIONING if self.arch == "lcs" else PUBLISHED_LCS_CONDITIONING
            object.__setattr__(self, "conditioning", default)
        _require(
            _finite(self.merge_prob) and 0 <= self.merge_prob <= 1,
            f"--merge-prob must be between 0 and 1, got {self.merge_prob}",
        )
        _require(self.arch in LCS_ARCHS, f"--arch must be one of {', '.join(LCS_ARCHS)}, got {self.arch!r}")
        _require(
            self.conditioning in LCS_CONDITIONINGS,
            f"--conditioning must be one of {', '.join(LCS_CONDITIONINGS)}, got {self.conditioning!r}",
        )
        _require(
            isinstance(self.labels_per_image, int) and 1 <= self.labels_per_image <= MAX_LABELS_PER_IMAGE,
            f"--labels-per-image must be an integer from 1 to {MAX_LABELS_PER_IMAGE}, got {self.labels_per_image}",
        )
        _require(self.loss in LCS_LOSSES, f"--loss must be one of {', '.join(LCS_LOSSES)}, got {self.loss!r}")
        _require(
            self.label_draw in LCS_LABEL_DRAWS,
            f"--label-draw must be one of {', '.join(LCS_LABEL_DRAWS)}, got {self.label_draw!r}",
        )
        # with one label per image both would train exactly the paper's network under another name
        _require(
            self.labels_per_image >= 2 or (self.loss != "competing" and self.label_draw == "random"),
            "--loss competing and --label-draw neighbours decide between the labels of one image: "
            "give --labels-per-image 2 or more",
        )
        _require(
            self.align_cases in LCS_CASE_ALIGNMENTS,
            f"--align-cases must be one of {', '.join(LCS_CASE_ALIGNMENTS)}, got {self.align_cases!r}",
        )
        _require(
            self.arch == "lcs" or self.lcs_variant_options() == {},
            "--conditioning, --labels-per-image, --loss, --label-draw, --align-cases and --label-codes are options "
            f"of --arch lcs, not {self.arch}",
        )
        # a network trained on cases registered to the atlas expects scans registered to the atlas, which is what
        # inference does for a bundle without a reference; a reference would show them elsewhere
        _require(
            self.align_cases == "none" or self.reference is None,
            f"--align-cases {self.align_cases} trains on cases registered to the atlas, and scans are then registered to the "
            "atlas too; leave out --reference",
        )
        _require(
            _finite(self.split_prob) and 0 <= self.split_prob <= 1,
            f"--split-prob must be between 0 and 1, got {self.split_prob}",
        )
        _require(
            isinstance(self.max_parts, int) and self.max_parts >= 2,
            f"--max-parts must be an integer >= 2, got {self.max_parts}",
        )
        _require(
            self.max_cases is None or (isinstance(self.max_cases, int) and self.max_cases >= 1),
            f"--max-cases must be >= 1, got {self.max_cases}",
        )

    def lcs_variant_options(self) -> dict:
        """The LCS variant options that differ from Ma et al. 2022 (recorded in the run and the bundle)."""
        chosen = {
            "conditioning": self.conditioning,
            "labels_per_image": self.labels_per_image,
            "loss": self.loss,
            "label_draw": self.label_draw,
            "align_cases": self.align_cases,
            "label_codes": self.label_codes,
        }
        published = {
            "conditioning": PUBLISHED_LCS_CONDITIONING,
            "labels_per_image": 1,
            "loss": "dice",
            "label_draw": "random",
            "align_cases": "none",
            "label_codes": False,
        }
        return {k: v for k, v in chosen.items() if v != published[k]}


@dataclass(frozen=True)
class AddTaskConfig:
    """``add_task``: place a new task in a label-sharing bundle and fine-tune into a new bundle."""

    bundle: Path
    data: Path
    out: Path
    settings: TrainSettings = field(default_factory=TrainSettings)
    replay: tuple[Path, ...] = ()
    widen: bool = False
    # the new task's share of the samples when replaying: a fraction in (0, 1), EQUAL_SHARE, or None for the
    # default (DEFAULT_NEW_TASK_SHARE); without replay every sample is the new task's, so a value is refused
    new_task_share: float | str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle", Path(self.bundle))
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "replay", tuple(Path(p) for p in self.replay))
        share = self.new_task_share
        if share is None:
            return
        _require(
            bool(self.replay),
            "--new-task-share sets the new task's share of the samples among replayed tasks; without --replay "
            "every sample is the new task's (add --replay or drop the option)",
        )
        object.__setattr__(self, "new_task_share", parse_new_task_share(share))

    def share(self) -> float | str | None:
        """The new task's share this run uses: None without replay (it is the only task)."""
        if not self.replay:
            return None
        return DEFAULT_NEW_TASK_SHARE if self.new_task_share is None else self.new_task_share


def parse_new_task_share(value: float | str) -> float | str:
    """``--new-task-share``: EQUAL_SHARE or a fraction strictly between 0 and 1 (a number or 'A/B', e.g. 1/3)."""
    given = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == EQUAL_SHARE:
            return EQUAL_SHARE
        try:
            top, _, bottom = text.partition("/")
            value = float(top) / float(bottom) if bottom else float(top)
        except (ValueError, ZeroDivisionError):
            value = math.nan
    _require(
        not isinstance(value, bool) and _finite(value) and 0 < value < 1,
        f"--new-task-share must be a fraction between 0 and 1 (exclusive) or '{EQUAL_SHARE}', got {given!r}",
    )
    return float(value)


RunConfig = TaskRunConfig | LCSRunConfig | AddTaskConfig

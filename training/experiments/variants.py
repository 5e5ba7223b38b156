"""Why label sharing trails (issue #15, item 5): label-sharing variants under the same budget, and a look at the
labels that share an output channel.

Each variant changes one thing the issue suspects and keeps what label sharing is (one network, ``n* + 1``
outputs; Anand et al. 2024):

* ``task-code``        - a task embedding: per-task scale and shift of the decoder's features (``--task-film``);
* ``shuffled-mapping`` - the rank mapping: each task's labels take the shared channels in a seeded random order
  instead of by relative size (``--label-mapping shuffled``);
* ``label-sampling``   - task imbalance: tasks drawn in proportion to their label count (``--task-sampling labels``);
* ``wide``             - capacity: twice the channels at every level;
* ``task-dice``        - the loss: the soft Dice of each task's label over that task's samples in the batch, not of
  each output channel over the whole batch, where a thin label and a large one sharing a channel are one Dice
  (``--dice-pooling task``);
* ``dynamic-head``, ``task-head``, ``image-head``, ``mlp-head`` - what DoD-Net has that label sharing lacks, one
  part at a time: DoD-Net's head (a normalisation and three 1x1 convolutions whose weights a controller generates)
  over label sharing's shared outputs, generated from the task code and the image, from the task code only, from
  the image only, or the same head for every task (``--head dynamic|task|image|mlp``);
* ``detached-head``, ``detached-image-head`` - why an image-dependent head helps: the dynamic and image-only heads
  with the pooled image features detached (``--head dynamic-detached|image-detached``), which keeps the head's
  adaptation to each image and removes the gradient path the controller opens into the bottleneck;
* ``reseeded``         - the control: label sharing with the next seed, so a variant's difference can be read
  against the spread between two seeds.

With ``--head`` other than the published one, the variants that leave the head alone (``over_any_head``) change
label sharing with that head.

``conflict_rows`` measures the other suspect, conflicts between look-alike labels sharing a channel: for every
label, how far (in z-scored image intensity) the closest other label on its channel is, next to its Dice deficit
against its own model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError

from ..datasets import as_volume, load_case, read_dataset
from .report import fmt, mean, mean_dice, table
from .runner import Budget


@dataclass(frozen=True)
class Variant:
    name: str
    suspect: str  # the hypothesis this variant tests
    change: str  # what differs from label sharing
    settings: dict = field(default_factory=dict)  # TrainSettings changes
    channel_factor: int = 1
    seed_offset: int = 0

    def budget(self, budget: Budget) -> Budget:
        """The same steps x batch and seed; only the variant's own change differs."""
        channels = tuple(c * self.channel_factor for c in budget.channels)
        extra = {**budget.extra, **self.settings}
        return Budget(
            **{
                **budget.__dict__,
                "channels": channels,
                "seed": budget.seed + self.seed_offset,
                "extra": extra,
            }
        )

    @property
    def over_any_head(self) -> bool:
        """Whether the variant can change label sharing with any ``--head``: not when it sets the head itself, or
        a task code (which only the published head takes)."""
        return "head" not in self.settings and not self.settings.get("task_film")

    @property
    def run(self) -> str:
        return f"labelsharing_{self.name}"

    @property
    def method(self) -> str:
        return f"labelsharing {self.name}"


VARIANTS = {
    v.name: v
    for v in (
        Variant(
            "task-code",
            "no task conditioning",
            "per-task scale and shift of the decoder",
            {"task_film": True},
        ),
        Variant(
            "shuffled-mapping",
            "the rank mapping",
            "labels share channels in random order",
            {"label_mapping": "shuffled"},
        ),
        Variant(
            "label-sampling",
            "task imbalance in sampling",
            "tasks drawn by label count",
            {"task_sampling": "labels"},
        ),
        Variant("wide", "capacity", "2x channels at every level", channel_factor=2),
        Variant(
            "task-dice",
            "one Dice over different tasks' labels sharing a channel",
            "soft Dice per label of each task",
            {"dice_pooling": "task"},
        ),
        # what DoD-Net has that label sharing lacks, one part at a time (rank mapping and shared outputs kept)
        Variant(
            "dynamic-head",
            "DoD-Net's head (task and image conditioned)",
            "DoD-Net's dynamic head over the shared outputs",
            {"head": "dynamic"},
        ),
        Variant(
            "task-head", "a per-task output head", "dynamic head from the task code only", {"head": "task"}
        ),
        Variant(
            "image-head",
            "an image-dependent output head",
            "dynamic head from the image only (no task code)",
            {"head": "image"},
        ),
        # the image-conditioned heads with the pooled features detached: same forward pass, but the controller no
        # longer gives the bottleneck a short gradient path from the loss; what is left is the head's adaptation
        # to each image
        Variant(
            "detached-head",
            "the controller's gradient path into the bottleneck",
            "dynamic head, image features without gradient",
            {"head": "dynamic-detached"},
        ),
        Variant(
            "detached-image-head",
            "the controller's gradient path into the bottleneck",
            "image-only head, image features without gradient",
            {"head": "image-detached"},
        ),
        Variant(
            "mlp-head",
            "DoD-Net's head shape, not its conditioning",
            "norm + three 1x1 convolutions, one for all tasks",
            {"head": "mlp"},
        ),
        Variant("reseeded", "none: run-to-run spread (control)", "label sharing, seed + 1", seed_offset=1),
    )
}


def variants_over_any_head() -> list[str]:
    """The variants that may run with any ``--head`` (the others set the head themselves)."""
    return [name for name, v in VARIANTS.items() if v.over_any_head]


def parse_variants(names: list[str] | None) -> list[Variant]:
    unknown = [n for n in names or [] if n not in VARIANTS]
    if unknown:
        raise InputError(f"--variants {', '.join(unknown)}: unknown (choose from {', '.join(VARIANTS)})")
    return [VARIANTS[n] for n in dict.fromkeys(names or [])]


# ------------------------------------------------------------------------------------------------ conflicts


def label_intensities(dataset_path: Path) -> dict[int, float]:
    """Mean z-scored image intensity inside each label over a task's training cases (what a label looks like)."""
    dataset = read_dataset(dataset_path)
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for case in dataset.training:
        image, label, _ = load_case(case)
        image, label = as_volume(image[0]).astype(np.float64), as_volume(label)
        z = (image - image.mean()) / (image.std() + 1e-8)
        for value in np.unique(label):
            if value == 0:
                continue
            inside = z[label == value]
            sums[int(value)] = sums.get(int(value), 0.0) + float(inside.sum())
            counts[int(value)] = counts.get(int(value), 0) + inside.size
    return {v: sums[v] / counts[v] for v in sums}


def conflict_rows(bundle: Path, data: dict[str, Path], rows: list[dict]) -> list[dict]:
    """Per label of label sharing's shared space: its channel, the channel's other members, the intensity distance to
    the closest of them, and label sharing's Dice minus its own model's (negative: label sharing trails)."""
    space = load_bundle(bundle).label_space
    if space is None:
        return []
    looks = {task: label_intensities(path) for task, path in data.items()}
    out = []
    for task in space.task_names:
        names = space.task(task).labels
        for value, channel in sorted(space.task_to_shared(task).items(), key=lambda kv: kv[1]):
            others = {t: v for t, v in space.members(channel).items() if t != task}
            own = looks[task].get(value, float("nan"))
            distances = [abs(own - looks[t].get(v, float("nan"))) for t, v in others.items()]
            match = {"task": task, "label_value": value}
            out.append(
                {
                    "channel": channel,
                    "task": task,
                    "label": f"{names[value]} ({value})",
                    "shares_with": ", ".join(f"{t}:{space.task(t).labels[v]}" for t, v in others.items()),
                    "closest_intensity_distance": min(distances) if distances else float("nan"),
                    "deficit": mean_dice(rows, method="labelsharing", **match)
                    - mean_dice(rows, method="individual", **match),
                }
            )
    return out


def _spearman(xs: list[float], ys: list[float]) -> float:
    pairs = [(x, y) for x, y in zip(xs, ys) if not (np.isnan(x) or np.isnan(y))]
    if len(pairs) < 3:
        return float("nan")
    rank_x = np.argsort(np.argsort([p[0] for p in pairs]))
    rank_y = np.argsort(np.argsort([p[1] for p in pairs]))
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


# ------------------------------------------------------------------------------------------------ report


def section(
    variants: list[Variant],
    tasks: list[str],
    dice: dict,
    params: dict,
    conflicts: list[dict],
    baseline: str = "as published (Anand et al. 2024)",
) -> list[str]:
    """The report's item-5 section: every variant against label sharing (``baseline`` says which head it has) and
    one model per task, then conflicts."""
    lines = [
        "## Why label sharing trails: variants under the same budget (issue #15, item 5)",
        "",
        "Each variant changes one suspect and keeps one network with `n* + 1` outputs; same steps x batch and seed.",
        "",
    ]
    if variants:
        lines += table(
            ["variant", "suspect tested", "change", "parameters"],
            [["labelsharing", "-", baseline, params["labelsharing"]]]
            + [[v.name, v.suspect, v.change, params[v.method]] for v in variants],
        )
        methods = ["labelsharing", *[v.method for v in variants], "individual"]
        means = {m: mean(dice[m]) for m in methods}
        lines += table(
            ["task", *methods],
            [[t, *[dice[m][i] for m in methods]] for i, t in enumerate(tasks)]
            + [["**mean**", *[means[m] for m in methods]]],
        )
        lines += [
            f"Against label sharing {baseline} (mean Dice; gap = worst task's Dice minus its own model's):",
            "",
        ]
        control = VARIANTS["reseeded"].method
        spread = abs(means[control] - means["labelsharing"]) if control in means else None
        for m in methods[1:-1]:
            gap = min(dice[m][i] - dice["individual"][i] for i in range(len(tasks)))
            change = means[m] - means["labelsharing"]
            noise = ""
            if spread is not None and m != control:
                within = abs(change) <= spread
                noise = f" ({'within' if within else 'beyond'} the seed-to-seed spread of {fmt(spread)})"
            lines.append(f"- {m}: {fmt(change, 3)} mean{noise}; worst gap to one model per task {fmt(gap)}")
        base_gap = min(dice["labelsharing"][i] - dice["individual"][i] for i in range(len(tasks)))
        lines += [f"- (label sharing's own worst gap: {fmt(base_gap)})", ""]
    else:
        lines += ["No variants were run (`--variants` names them).", ""]
    if conflicts:
        for c in conflicts:  # read back from conflicts.csv as text
            c["closest_intensity_distance"] = float(c["closest_intensity_distance"])
            c["deficit"] = float(c["deficit"])
        paired = sum(1 for c in conflicts if not np.isnan(c["closest_intensity_distance"] + c["deficit"]))
        rho = _spearman(
            [c["closest_intensity_distance"] for c in conflicts], [c["deficit"] for c in conflicts]
        )
        lines += [
            "### Look-alike labels sharing a channel",
            "",
            "Per label: the other tasks' labels on its output channel, the distance in mean z-scored image intensity "
            "to the closest of them (small: they look alike), and label sharing's Dice minus its own model's. If "
            "conflicts between look-alikes cost Dice, small distances go with negative deficits (a positive rank "
            f"correlation). Spearman rank correlation over the {paired} labels that share a channel: **{fmt(rho, 2)}**.",
            "",
        ]
        lines += table(
            ["channel", "task", "label", "shares with", "intensity distance", "LS - own model"],
            [
                [
                    c["channel"],
                    c["task"],
                    c["label"],
                    c["shares_with"] or "-",
                    c["closest_intensity_distance"],
                    c["deficit"],
                ]
                for c in conflicts
            ],
        )
    return lines

"""Why LCS trails a multi-channel U-Net at many labels (issue #15): LCS variants at the dataset's full label
count, each changing one thing the issue suspects, under the published LCS's budget.

* ``no-merge``         - label sampling: no merged label pairs (the default merges two labels in half the samples);
* ``labels-per-image`` - labels per step: each sampled image conditioned on 4 labels (one encoder pass, four
  decoder passes; the paper conditions each image on one);
* ``every-level``      - conditioning: the atlas image and mask also join every decoder level on its own grid
  (the paper gives them to the bottleneck only, 8x coarser than the scan at four levels);
* ``dice-bce``         - the loss: soft Dice plus binary cross-entropy (the paper: soft Dice);
* ``wide``             - capacity: twice the channels at every level;
* ``long``             - training length: four times the steps (the only variant that spends more);
* ``every-level-long`` - ``every-level`` with four times the steps: does its lead over ``long`` hold with training;
* ``combined``         - ``every-level``, ``no-merge`` and ``labels-per-image`` together;
* ``reseeded``         - the control: the published LCS with the next seed, so a variant's difference can be
  read against the spread between two seeds;
* ``every-level-reseeded`` - ``every-level`` with the next seed: its difference to ``reseeded`` repeats the
  conditioning comparison on a second seed (a paired comparison; any ``NAME-reseeded`` pairs the same way);
* ``every-level-aligned`` - the cases' pose: ``every-level`` with every training case registered to the atlas
  first (affine), as inference registers a scan (paired with ``every-level``);
* ``aligned-k4``       - labels per step on top of that: ``every-level-aligned`` with 4 labels per image (paired
  with ``every-level-aligned``);
* ``aligned-k4-competing`` - inference's decision between labels: ``aligned-k4`` whose 4 labels compete in one
  softmax, drawn among atlas neighbours (paired with ``aligned-k4``);
* ``aligned-codes``    - knowing the label by name: ``every-level-aligned`` with a learned code per trained label
  beside its mask (``--label-codes``; paired with ``every-level-aligned``);
* ``aligned-deformable`` - correcting a registration: ``every-level-aligned`` conditioned on the atlas carried onto
  each case by deformable registration (``--align-cases deformable``; inference registers each scan the same way;
  paired with ``every-level-aligned``; also trained on the coarse labels for Table 1).

Each image-sample budget (steps x batch) is the published LCS's except ``long``; ``labels-per-image`` spends more
decoder passes per step, so the report gives every run's training seconds beside its Dice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.network_config import network_config_from_dict

from ..label_hierarchy import read_coarse_map
from . import runner
from .budget import BudgetLedger
from .report import curves_plot, fmt, mean_dice, table
from .workspace import Workspace


@dataclass(frozen=True)
class LCSVariant:
    name: str
    suspect: str  # the hypothesis this variant tests
    change: str  # what differs from the published LCS
    options: dict = field(default_factory=dict)  # LCSRunConfig changes (`lsseg train lcs` options)
    channel_factor: int = 1
    step_factor: int = 1  # above 1 only for the training-length variant
    seed_offset: int = 0
    paired_with: str | None = None  # the variant it differs from by one change (None: the published LCS)
    coarse_to_fine: bool = (
        False  # also trained on the coarse labels for Table 1 (fine atlas labels never trained)
    )

    @property
    def run(self) -> str:
        return f"lcs_{self.name}"

    @property
    def method(self) -> str:
        return f"lcs {self.name}"

    @property
    def comparison(self) -> str:
        return "training length" if self.step_factor > 1 else "LCS variants"

    def budget(self, budget: runner.Budget) -> runner.Budget:
        """The published LCS's budget with only the variant's own change."""
        return runner.Budget(
            **{
                **budget.__dict__,
                "channels": tuple(c * self.channel_factor for c in budget.channels),
                "steps": budget.steps * self.step_factor,
                "seed": budget.seed + self.seed_offset,
            }
        )


_ALIGNED = {"conditioning": "every-level", "align_cases": "affine"}  # the best LCS on the CPU so far

LCS_VARIANTS = {
    v.name: v
    for v in (
        LCSVariant("no-merge", "sampling of labels", "no merged label pairs", {"merge_prob": 0.0}),
        LCSVariant(
            "labels-per-image",
            "labels per step",
            "4 labels per sampled image (one encoder pass)",
            {"labels_per_image": 4},
        ),
        LCSVariant(
            "every-level",
            "conditioning",
            "atlas image and mask at every decoder level too (`lsseg train lcs`'s default)",
            {"conditioning": "every-level"},
            coarse_to_fine=True,  # can a never-trained fine mask be read when the decoder sees it at full resolution?
        ),
        LCSVariant("dice-bce", "the loss", "soft Dice + binary cross-entropy", {"loss": "dice-bce"}),
        LCSVariant("wide", "capacity", "2x channels at every level", channel_factor=2),
        LCSVariant("long", "training length", "4x the steps (4x the budget)", step_factor=4),
        LCSVariant(
            "every-level-long",
            "conditioning, with training length",
            "every-level conditioning, 4x the steps (paired with long)",
            {"conditioning": "every-level"},
            step_factor=4,
            paired_with="long",
        ),
        LCSVariant(
            "combined",
            "the helpful changes together",
            "every-level conditioning, no merged pairs, 4 labels per image",
            {"conditioning": "every-level", "merge_prob": 0.0, "labels_per_image": 4},
        ),
        LCSVariant("reseeded", "none: run-to-run spread (control)", "as published, seed + 1", seed_offset=1),
        LCSVariant(
            "every-level-reseeded",
            "conditioning, second seed",
            "every-level conditioning, seed + 1 (paired with reseeded)",
            {"conditioning": "every-level"},
            seed_offset=1,
            paired_with="reseeded",
        ),
        LCSVariant(
            "every-level-aligned",
            "the cases' pose",
            "every-level conditioning, each training case registered to the atlas first (paired with every-level)",
            _ALIGNED,
            paired_with="every-level",
        ),
        LCSVariant(
            "aligned-k4",
            "labels per step, cases registered",
            "every-level-aligned with 4 labels per image (paired with every-level-aligned)",
            {**_ALIGNED, "labels_per_image": 4},
            paired_with="every-level-aligned",
        ),
        LCSVariant(
            "aligned-k4-competing",
            "inference's decision between labels",
            "aligned-k4 with the 4 labels competing in one softmax, drawn among atlas neighbours (paired with "
            "aligned-k4)",
            {**_ALIGNED, "labels_per_image": 4, "loss": "competing", "label_draw": "neighbours"},
            paired_with="aligned-k4",
        ),
        LCSVariant(
            "aligned-codes",
            "knowing the label by name",
            "every-level-aligned with a learned code per trained label beside its mask (paired with "
            "every-level-aligned)",
            {**_ALIGNED, "label_codes": True},
            paired_with="every-level-aligned",
        ),
        LCSVariant(
            "aligned-deformable",
            "correcting a registration",
            "every-level-aligned conditioned on the atlas carried onto each case by deformable registration "
            "(paired with every-level-aligned)",
            {**_ALIGNED, "align_cases": "deformable"},
            paired_with="every-level-aligned",
            coarse_to_fine=True,  # drawn labels: does a network given the registration carry them better than it?
        ),
    )
}


def parse_lcs_variants(names: list[str] | None) -> list[LCSVariant]:
    unknown = [n for n in names or [] if n not in LCS_VARIANTS]
    if unknown:
        raise InputError(f"--variants {', '.join(unknown)}: unknown (choose from {', '.join(LCS_VARIANTS)})")
    return [LCS_VARIANTS[n] for n in dict.fromkeys(names or [])]


def record_budgets(
    ledger: BudgetLedger, variants: list[LCSVariant], budget: runner.Budget, published: str
) -> None:
    """Every variant but ``long`` spends the published LCS's steps x batch (checked with the rest)."""
    if variants:
        ledger.record("LCS variants", "lcs", published, budget.steps, budget.batch)
    for variant in variants:
        vb = variant.budget(budget)
        ledger.record(variant.comparison, variant.method, variant.run, vb.steps, vb.batch)
        if variant.coarse_to_fine:
            ledger.record("coarse-to-fine", variant.method, f"lcs_coarse_{variant.name}", vb.steps, vb.batch)


def _options_for(variant: LCSVariant, label_count: int) -> dict:
    """The variant's training options on data with ``label_count`` labels: labels per image capped at the labels
    there are (`lsseg train lcs` refuses more; on small data every label is then conditioned each step)."""
    options = dict(variant.options)
    if "labels_per_image" in options:
        options["labels_per_image"] = min(options["labels_per_image"], label_count)
    return options


def train_and_evaluate(
    ws: Workspace, data: Path, variants: list[LCSVariant], budget: runner.Budget, label_count: int
) -> list[dict]:
    """Train (or skip, when finished) and evaluate every variant; Dice rows like the label-count runs'."""
    rows: list[dict] = []
    for variant in variants:
        path = ws.run(variant.run)
        ws.timed(f"train {variant.method}", runner.train_lcs, data, path, variant.budget(budget),
                 **_options_for(variant, label_count))  # fmt: skip
        more = runner.evaluate_bundle(path, [data], ws.evaluation(variant.run), variant.method, budget.device)
        rows += [{**r, "label_count": label_count} for r in more]
    return rows


def train_coarse(
    ws: Workspace, data: Path, variants: list[LCSVariant], budget: runner.Budget, coarse_map: Path
) -> dict[str, list[dict]]:
    """The coarse-to-fine variants trained on the coarse labels and evaluated: Table 1 rows by variant method."""
    table1: dict[str, list[dict]] = {}
    coarse_count = len(set(read_coarse_map(coarse_map).fine_to_coarse.values()))
    for variant in (v for v in variants if v.coarse_to_fine):
        run = f"lcs_coarse_{variant.name}"
        ws.timed(f"train {variant.method} on coarse labels", runner.train_lcs, data, ws.run(run),
                 variant.budget(budget), coarse_map, **_options_for(variant, coarse_count))  # fmt: skip
        runner.evaluate_bundle(ws.run(run), [data], ws.evaluation(run), run, budget.device)
        path = ws.evaluation(run) / "table1.csv"
        table1[variant.method] = runner.read_csv(path) if path.is_file() else []
    return table1


def run_facts(bundle: Path) -> dict:
    """Parameters, training seconds, first and last loss and the validation curve of one finished run."""
    manifest = json.loads((Path(bundle) / "bundle.json").read_text(encoding="utf-8"))
    log = runner.read_csv(runner.checkpoint_dir(Path(bundle)) / "log.csv")
    curve = [(int(r["step"]), float(r["val_dice"])) for r in log if r.get("val_dice") not in (None, "")]
    return {
        "parameters": network_config_from_dict(manifest["network"]).parameter_count(),
        "seconds": float(log[-1]["elapsed_s"]) if log else float("nan"),
        "first_loss": float(log[0]["loss"]) if log else float("nan"),
        "last_loss": float(log[-1]["loss"]) if log else float("nan"),
        "curve": curve,
    }


def _best(curve: list[tuple[int, float]]) -> float:
    finite = [v for _, v in curve if not math.isnan(v)]
    return max(finite) if finite else float("nan")


def _baseline_of(method: str, dice: dict) -> str:
    """What a run is compared with: the variant it differs from by one change (``paired_with``) when that ran too,
    else the published LCS."""
    variant = next((v for v in LCS_VARIANTS.values() if v.method == method), None)
    paired = f"lcs {variant.paired_with}" if variant is not None and variant.paired_with else None
    return paired if paired in dice else "lcs"


def section(
    ws: Workspace, variants: list[LCSVariant], rows: list[dict], label_count: int, plots: list[Path]
) -> list[str]:
    """The report's "why LCS trails" section: each variant against the published LCS and the multi-channel U-Net."""
    lines = [f"## Why LCS trails: variants at {label_count} labels (issue #15)", ""]
    if not variants:
        return lines + ["No variants were run (`--variants` names them).", ""]
    runs = [("lcs", f"lcs_{label_count}", "as published (Ma et al. 2022)", "-")]
    runs += [(v.method, v.run, v.change, v.suspect) for v in variants]
    runs.append(("multichannel", f"multichannel_{label_count}", "multi-channel U-Net (baseline)", "-"))
    facts = {method: run_facts(ws.run(run)) for method, run, _, _ in runs}
    dice = {method: mean_dice(rows, method=method, label_count=label_count) for method, *_ in runs}
    control = LCS_VARIANTS["reseeded"].method
    spread = abs(dice[control] - dice["lcs"]) if control in dice else None
    lines += [
        "Each variant changes one suspect of the published LCS; the same steps x batch and seed (except the "
        "`long` ones, 4x the steps, and the `reseeded` ones, the next seed), each compared with the published LCS "
        "trained alike. Test-case mean Dice over all labels; seconds of training on this machine (validation "
        "included).",
        "",
    ]
    entries = []
    for method, _, change, suspect in runs:
        f = facts[method]
        base = _baseline_of(method, dice)
        versus = "" if method in ("lcs", "multichannel") else fmt(dice[method] - dice[base])
        if versus and spread is not None and method != control:
            versus += " (within spread)" if abs(dice[method] - dice[base]) <= spread else " (beyond spread)"
        versus += f" vs {base.removeprefix('lcs ')}" if versus and base != "lcs" else ""
        entries.append(
            [method, suspect, change, f["parameters"], round(f["seconds"]), f"{f['first_loss']:.3f} -> "
             f"{f['last_loss']:.3f}", _best(f["curve"]), dice[method], versus]
        )  # fmt: skip
    lines += table(
        ["run", "suspect tested", "change", "parameters", "seconds", "loss first -> last",
         "best validation Dice", "test mean Dice", "minus the run it changes (published LCS unless named)"],
        entries,
    )  # fmt: skip
    if spread is not None:
        lines += [f"Seed-to-seed spread (published LCS, seeds {fmt(spread)} apart): a difference within it is "
                  "not evidence.", ""]  # fmt: skip
    equal = [v for v in variants if v.step_factor == 1 and v.seed_offset == 0]  # same budget and seed
    best = max(equal, key=lambda v: dice[v.method], default=None)
    if best is not None:
        lines += [
            f"Largest gain at the same budget and seed: `{best.name}` ({best.suspect}), "
            f"{fmt(dice[best.method] - dice['lcs'])} mean Dice; "
            f"multi-channel {fmt(dice['multichannel'])}, published LCS {fmt(dice['lcs'])}.",
            "",
        ]
    for variant in variants:  # NAME-reseeded against reseeded: the same comparison on the next seed
        first = variant.name.removesuffix("-reseeded")
        if (
            variant.name.endswith("-reseeded")
            and first in LCS_VARIANTS
            and {control, f"lcs {first}"} <= set(dice)
        ):
            lines += [
                f"Paired over two seeds, `{first}` minus the published LCS: "
                f"{fmt(dice[f'lcs {first}'] - dice['lcs'])} (seed {ws.config['budget']['seed']}), "
                f"{fmt(dice[variant.method] - dice[control])} (the next seed).",
                "",
            ]
    curves = {method: facts[method]["curve"] for method, *_ in runs if facts[method]["curve"]}
    if curves:
        plots.append(curves_plot(ws.root / "variants_validation.png", curves, "training step",
                                 "validation Dice (sampled labels)", "LCS variants during training"))  # fmt: skip
    return lines

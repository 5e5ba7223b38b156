"""`lsseg experiment lcs`: the claims of Ma, Lee, Sabuncu 2022 measured under equal compute.

1. LCS against a multi-channel U-Net at several label counts (the first K labels of the dataset, the others made
   background), both with the same steps x batch; Dice on the test cases against the label count.
2. The coarse-to-fine table (the paper's Table 1): LCS trained on coarse labels (pairs merged), then conditioned at
   test time on the fine atlas labels it never saw, against the naive use of the coarse prediction. The registration
   baselines join the table when `lsseg evaluate` has them (atlas-labels issue).
3. Memory of both against the label count, for training and inference (memory.py says how it is measured).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.errors import InputError

from .. import planning, sidebyside
from ..datasets import NnUNetDataset
from . import runner
from .budget import BudgetLedger
from .label_subset import write_label_subset
from .lcs_variants import parse_lcs_variants, record_budgets, train_and_evaluate, train_coarse
from .lcs_variants import section as variants_section
from .memory import measure
from .report import fmt, grouped_bars, header, lines_plot, mean, mean_dice, table, write_report, yes
from .workspace import Workspace

METHODS = ("lcs", "multichannel")
PAPER = (
    "Ma et al. 2022 report LCS 0.713 against 0.680 mean Dice on 95 Hammersmith labels (1 mm), where the "
    "multi-channel baseline is ten U-Nets of 9-10 labels each (a single one did not fit on their GPU)"
)


def default_counts(total: int, up_to: int) -> list[int]:
    """2, 4, 8, ... below ``up_to``, then ``up_to`` and the dataset's own count ``total`` (<= ``up_to``)."""
    counts, k = {up_to, total}, 2
    while k < up_to:
        counts.add(k)
        k *= 2
    return sorted(counts)


def pair_coarse_map(dataset: NnUNetDataset, path: Path) -> Path:
    """Neighbouring label values merged in pairs (1,2 -> 1; 3,4 -> 3; ...), written as a fine,coarse CSV."""
    values = list(dataset.foreground_labels())
    names = dataset.foreground_labels()
    rows = ["fine_value,coarse_value,coarse_name"]
    for i in range(0, len(values) - 1, 2):
        first, second = values[i], values[i + 1]
        rows += [f"{v},{first},{names[first]}+{names[second]}" for v in (first, second)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _coarse_map(dataset: NnUNetDataset, given: Path | None, ws: Workspace) -> tuple[Path | None, str]:
    if given is not None:
        return Path(given).resolve(), f"`{given}`"
    hierarchy = Path(dataset.root) / "label_hierarchy.json"
    if hierarchy.is_file():
        return hierarchy, f"the dataset's `{hierarchy.name}`"
    if len(dataset.foreground_labels()) < 2:
        return None, "none (the dataset has a single label)"
    path = pair_coarse_map(dataset, ws.root / "coarse_map.csv")
    return path, "neighbouring label values merged in pairs (`coarse_map.csv`)"


def _memory_size(dataset: NnUNetDataset, budget: runner.Budget) -> tuple[int, int]:
    dims, _, shape = planning.detect_dims(dataset)
    factor = 2 ** (len(budget.channels) - 1)
    edge = max(shape[:dims])
    edge = min(edge + (-edge) % factor, 128 if dims == 2 else 64)
    return dims, max(factor, edge - edge % factor)


def run_lcs(
    data: Path,
    out: Path,
    budget: runner.Budget,
    *,
    label_counts: list[int] | None = None,
    memory_label_counts: list[int] | None = None,
    coarse_map: Path | None = None,
    variants: list[str] | None = None,
    atlas_baselines: list[int] | None = None,
) -> Path:
    """Run (or continue) the experiment into ``out``; returns ``out/report.md``. ``variants``: LCS variants
    (lcs_variants.py) at the dataset's full label count; ``atlas_baselines``: numbers of annotated cases whose
    multi-atlas registration is scored beside LCS at that count (``_atlas_baselines``). Both may be added to a
    finished experiment."""
    chosen = parse_lcs_variants(variants)
    dataset = planning.load_datasets([Path(data)])[0]
    total = len(dataset.foreground_labels())
    counts = sorted(set(label_counts or default_counts(total, total)))
    bad = [k for k in counts if not 1 <= k <= total]
    if bad:
        raise InputError(f"--label-counts {bad}: {dataset.root} has {total} labels (choose 1-{total})")
    memory_counts = sorted(set(memory_label_counts or default_counts(total, max(128, total))))
    if any(k < 1 for k in memory_counts):
        raise InputError("--memory-label-counts must be positive")
    dims, memory_size = _memory_size(dataset, budget)
    aligned = [v.name for v in chosen if v.options.get("align_cases", "none") != "none"]
    if aligned and dims != 3:  # refused before any run trains, not after the others
        raise InputError(f"--variants {', '.join(aligned)} register cases to the atlas: they need 3D data")
    baselines = sorted(set(atlas_baselines or []))
    if baselines and dims != 3:
        raise InputError("--atlas-baselines registers annotated cases onto each scan: it needs 3D data")
    if any(n < 1 or n > len(dataset.training) for n in baselines):
        raise InputError(
            f"--atlas-baselines {' '.join(map(str, baselines))}: choose from 1 to {len(dataset.training)}, "
            f"the training cases of {dataset.root}"
        )
    config = {
        "experiment": "lcs",
        "data": str(Path(dataset.root).resolve()),
        "budget": budget.to_dict(),
        "label_counts": counts,
        "memory_label_counts": memory_counts,
        "coarse_map": str(Path(coarse_map).resolve()) if coarse_map else None,
        **({"variants": [v.name for v in chosen]} if chosen else {}),
        **({"atlas_baselines": baselines} if baselines else {}),
    }
    if chosen and total not in counts:
        raise InputError(f"--variants are trained at all {total} labels: include {total} in --label-counts")
    if baselines and total not in counts:
        raise InputError(
            f"--atlas-baselines are scored at all {total} labels: include {total} in --label-counts"
        )
    ws = Workspace(out, config, echo=not budget.quiet, extendable=("variants", "atlas_baselines"))
    ledger = BudgetLedger()
    for k in counts:
        for method in METHODS:
            ledger.record(f"{k} labels", method, f"{method}_{k}", budget.steps, budget.batch)
    ledger.record("coarse-to-fine", "lcs", "lcs_coarse", budget.steps, budget.batch)
    record_budgets(ledger, chosen, budget, f"lcs_{total}")
    ledger.check_equal()
    ws.log(
        f"lcs experiment: {dataset.task_name()} ({total} labels); {budget.steps} steps x batch {budget.batch}"
    )

    rows: list[dict] = []
    for k in counts:
        path = Path(dataset.root) if k == total else ws.root / "data" / f"{dataset.task_name()}_{k}labels"
        if k != total:
            (ws.root / "data").mkdir(exist_ok=True)
            write_label_subset(dataset, k, path)
        ws.timed(f"train lcs at {k} labels", runner.train_lcs, path, ws.run(f"lcs_{k}"), budget)
        ws.timed(f"train multichannel at {k} labels", runner.train_tasks, "multichannel", [path],
               ws.run(f"multichannel_{k}"), budget)  # fmt: skip
        for method in METHODS:
            more = runner.evaluate_bundle(ws.run(f"{method}_{k}"), [path], ws.evaluation(f"{method}_{k}"), method,
                                          budget.device)  # fmt: skip
            rows += [{**r, "label_count": k} for r in more]
    rows += train_and_evaluate(ws, Path(dataset.root), chosen, budget, total)
    rows += _atlas_baselines(ws, Path(dataset.root), baselines, budget, total)

    map_path, map_source = _coarse_map(dataset, coarse_map, ws)
    table1: list[dict] = []
    side: list[dict] = []
    variant_table1: dict[str, list[dict]] = {}
    if map_path is not None:
        coarse = ws.run("lcs_coarse")
        ws.timed("train lcs on coarse labels", runner.train_lcs, Path(dataset.root), coarse, budget, map_path)
        runner.evaluate_bundle(
            coarse, [Path(dataset.root)], ws.evaluation("lcs_coarse"), "lcs_coarse", budget.device
        )
        table1_path = ws.evaluation("lcs_coarse") / "table1.csv"
        table1 = runner.read_csv(table1_path) if table1_path.is_file() else []
        side = runner.fine_methods(ws.evaluation("lcs_coarse"))
        variant_table1 = train_coarse(ws, Path(dataset.root), chosen, budget, map_path)

    memory = _memory(ws, memory_counts, dims, memory_size, budget)
    runner.write_csv(ws.root / "budget.csv", ledger.rows())
    runner.write_csv(ws.root / "metrics.csv", rows)
    report = _report(
        ws,
        dataset,
        counts,
        budget,
        ledger,
        rows,
        (table1, side, variant_table1),
        map_source,
        memory,
        dims,
        memory_size,
        chosen,
    )
    ws.log(f"report: {report}")
    return report


def _atlas_baselines(
    ws: Workspace, data: Path, atlas_numbers: list[int], budget: runner.Budget, total: int
) -> list[dict]:
    """Registration rows beside LCS at the full label count: deformable propagation of LCS's atlas (once) and
    multi-atlas registration of each N training cases, named ``"registration: ..."``; each evaluation is kept
    in ``evals/`` (the registrations themselves in the engine's registration cache)."""
    rows: list[dict] = []
    for n in atlas_numbers:
        more = ws.timed(f"score registration with {n} annotated case(s)", runner.evaluate_bundle, ws.run(f"lcs_{total}"),
                        [data], ws.evaluation(f"registration_x{n}"), "registration", budget.device,
                        atlas_baselines=n)  # fmt: skip
        single = "registration: deformable propagation"
        rows += [
            {**r, "label_count": total}
            for r in more
            if r["method"] == f"registration: multi-atlas x{n}"
            or (r["method"] == single and n == atlas_numbers[0])
        ]
    return rows


def _memory(ws: Workspace, counts: list[int], dims: int, size: int, budget: runner.Budget) -> list[dict]:
    """Memory rows, measured once per experiment folder (memory.csv is kept and read back)."""
    path = ws.root / "memory.csv"
    if path.is_file():
        return runner.read_csv(path)
    from LabelSharingSegLib.engine.device import resolve_device

    device, _ = resolve_device(budget.device)
    rows = [
        measure(method, k, dims, size, list(budget.channels), budget.batch, str(device))
        for k in counts
        for method in METHODS
    ]
    runner.write_csv(path, rows)
    ws.log(f"memory measured at {len(counts)} label counts on {device}")
    return runner.read_csv(path)


def _report(
    ws, dataset, counts, budget, ledger, rows, fine, map_source, memory, dims, size, variants
) -> Path:
    command = ["lsseg", "experiment", "lcs", "--data", ws.config["data"], "--out", str(ws.root)]
    command += budget.to_args() + ["--label-counts", ",".join(map(str, counts))]
    command += ["--memory-label-counts", ",".join(map(str, ws.config["memory_label_counts"]))]
    command += ["--coarse-map", ws.config["coarse_map"]] if ws.config["coarse_map"] else []
    command += ["--variants", *[v.name for v in variants]] if variants else []
    baselines = ws.config.get("atlas_baselines") or []
    command += ["--atlas-baselines", *map(str, baselines)] if baselines else []
    lines = header("LCS against a multi-channel U-Net (Ma, Lee, Sabuncu 2022)", ws.config, command)
    lines += [
        "## Data, seeds and budgets",
        "",
        f"- dataset `{dataset.task_name()}` ({len(dataset.foreground_labels())} labels): `{ws.config['data']}`; "
        "fewer labels = the first K label values kept, the others made background (copies in `data/`)",
        f"- seed {budget.seed}; network channels {','.join(map(str, budget.channels))}; learning rate {budget.lr}",
        f"- every run: {budget.steps} steps x batch {budget.batch} = {budget.samples} training samples (checked)"
        + ("; the `long` variants 4x that" if any(v.step_factor > 1 for v in variants) else ""),
        *_validation_lines(ws, counts, budget),
        "",
    ]
    dice = {m: [mean_dice(rows, method=m, label_count=k) for k in counts] for m in METHODS}
    top = counts[-1]
    lines += [f"## Mean Dice at {top} labels", ""]
    registration = _registration_rows(rows, top)
    lines += table(["method", "mean Dice"], [[m, dice[m][-1]] for m in METHODS] + registration)
    lines += [f"For comparison: {PAPER}.", ""]
    if registration:
        lines += [
            "Registration rows: no network, the scan's labels carried from annotated cases by the engine's "
            "deformable registration (`lsseg evaluate --atlas-baselines`): LCS's atlas alone, and N training cases "
            "fused by vote - what a clinician with one or N annotated scans gets without training. LCS reads one "
            "annotated case at test time, the multi-channel network learnt from all of them.",
            "",
        ]
    lines += ["## Dice against the label count", ""]
    lines += table(
        ["labels", *METHODS, "LCS - multi-channel"],
        [
            [k, dice["lcs"][i], dice["multichannel"][i], dice["lcs"][i] - dice["multichannel"][i]]
            for i, k in enumerate(counts)
        ],  # fmt: skip
    )
    plots = [
        lines_plot(ws.root / "dice_vs_labels.png", counts, dice, "labels", "mean Dice", "Dice against labels")
    ]
    lines += variants_section(ws, variants, rows, top, plots)
    lines += _coarse_section(*fine, map_source, ws, plots)
    lines += _memory_section(memory, dims, size, ws, plots)
    training = {m: [float(r["training_mb"]) for r in memory if r["method"] == m] for m in METHODS}
    flat = max(training["lcs"]) <= 1.05 * min(training["lcs"])
    grows = max(training["multichannel"]) > 1.05 * min(training["multichannel"])
    lines += [
        "Goals of the issue, on this run:",
        "",
        f"- LCS at least multi-channel at {top} labels: {yes(dice['lcs'][-1] >= dice['multichannel'][-1])} "
        f"({fmt(dice['lcs'][-1])} vs {fmt(dice['multichannel'][-1])})",
        f"- LCS training memory flat in the label count while multi-channel grows: {yes(flat and grows)}",
        *[
            f"- LCS at least {name.removeprefix('registration: ')} (no network) at {top} labels: "
            f"{yes(dice['lcs'][-1] >= value)} ({fmt(dice['lcs'][-1])} vs {fmt(value)})"
            for name, value in registration
        ],
        "",
        "## Plots",
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
        "",
        "## Files",
        "",
        "`metrics.csv` (every Dice, with `label_count`), `memory.csv`, `budget.csv`, `runs/` (bundles and "
        "checkpoints), `evals/` (each evaluation; `evals/lcs_coarse/table1.csv` per case), `log.txt`.",
    ]
    return write_report(ws.root / "report.md", lines)


def _registration_rows(rows: list[dict], label_count: int) -> list[list]:
    """[name, mean Dice] of the registration baselines scored at ``label_count`` (none when not asked for)."""
    names = dict.fromkeys(
        r["method"]
        for r in rows
        if r["method"].startswith("registration: ") and str(r["label_count"]) == str(label_count)
    )
    ordered = sorted(names, key=lambda m: (not m.endswith("deformable propagation"), len(m), m))
    return [[name, mean_dice(rows, method=name, label_count=label_count)] for name in ordered]


def _validation_lines(ws, counts, budget) -> list[str]:
    """How validation chose each run's best weights, and whether both methods scored the same labels."""
    every = f"every {budget.val_every} steps" if budget.val_every else "ten times a run"
    if budget.val_labels is None:
        return [f"- validation (picks each run's best weights): all labels, {every}"]
    lines = [
        f"- validation (picks each run's best weights): a fixed sample of at most {budget.val_labels} labels "
        f"drawn with seed {budget.seed}, the same for both methods, {every}:"
    ]
    for k in counts:
        chosen = {m: runner.validation_labels_of(ws.run(f"{m}_{k}")) for m in METHODS}
        lcs, multichannel = chosen["lcs"] or [], chosen["multichannel"] or []
        same = yes(lcs == multichannel)
        lacking = sorted(set(multichannel) - set(lcs))
        if lacking and set(lcs) <= set(multichannel):  # LCS cannot condition on labels its atlas case lacks
            same += f", except {', '.join(map(str, lacking))}, not on LCS's atlas case"
        shown = ", ".join(map(str, multichannel or lcs))
        lines.append(f"  - {k} labels: {shown or 'all'} (LCS and multi-channel the same: {same})")
    return lines


# the registration baselines of `lsseg evaluate` (sidebyside.py), as columns of the coarse-to-fine table
BASELINES = (
    (sidebyside.NAIVE, "atlas at world coordinates"),
    (sidebyside.AFFINE, "affine propagation"),
    (sidebyside.DEFORMABLE, "deformable propagation"),
)


def _coarse_section(table1, side, variant_table1, map_source, ws, plots) -> list[str]:
    lines = ["## Coarse training labels, fine labels at test time (Table 1 of Ma et al. 2022)", ""]
    if not table1:
        return lines + [
            f"Not measured: coarse map {map_source}; no fine label inside a coarse one on the atlas.",
            "",
        ]
    baselines = [(key, name) for key, name in BASELINES if any(r["method"] == key for r in side)]
    lines += [
        f"LCS trained on coarse labels ({map_source}). *Naive*: the coarse prediction scored against each fine "
        "label inside it. *Fine-grained*: LCS conditioned on the fine atlas label, never trained, against the "
        "fine truth. Registration baselines (`lsseg evaluate`, atlas-labels issue), each fine atlas label carried "
        "onto the scan on its own: *atlas at world coordinates* (no registration), *affine propagation* (the "
        "alignment LCS uses), *deformable propagation* (affine + deformable registration).",
        *(
            [
                "Each LCS variant trained on the coarse labels too (same budget) gets its own naive and fine-grained "
                "columns."
            ]
            if variant_table1
            else []
        ),
        "",
    ]
    keys = sorted({(int(t["coarse_value"]), int(t["fine_value"])) for t in table1})
    entries = []
    for coarse, fine in keys:
        sel = [t for t in table1 if (int(t["coarse_value"]), int(t["fine_value"])) == (coarse, fine)]
        of_variants = []
        for rows in variant_table1.values():
            mine = [t for t in rows if (int(t["coarse_value"]), int(t["fine_value"])) == (coarse, fine)]
            of_variants += [_col(mine, "naive_dice"), _col(mine, "fine_dice")]
        registered = [
            [r for r in side if r["method"] == key and int(r["fine_value"]) == fine] for key, _ in baselines
        ]
        entries.append(
            [f"{sel[0]['coarse_name']} ({coarse})", _col(sel, "coarse_dice"),
             f"{sel[0]['fine_name']} ({fine})", _col(sel, "naive_dice"), _col(sel, "fine_dice"), *of_variants,
             *[_col(r, "dice") for r in registered]]
        )  # fmt: skip
    variant_columns = [
        f"{kind} ({method})" for method in variant_table1 for kind in ("naive", "fine-grained")
    ]
    columns = ["naive", "fine-grained (LCS)", *variant_columns, *[name for _, name in baselines]]
    lines += table(["coarse label", "coarse Dice", "fine label", *columns], entries)
    means = {c: mean([e[3 + i] for e in entries]) for i, c in enumerate(columns)}
    lines += [
        "Mean over fine labels: " + ", ".join(f"{c} {fmt(v)}" for c, v in means.items()) + ".",
        "",
    ]
    if not baselines:
        lines += ["Registration baselines: not measured (`lsseg evaluate` wrote no `fine_methods.csv`).", ""]
    elif len(baselines) < len(BASELINES):
        lines += [
            "Registration baselines missing from the table: see the notes in `evals/lcs_coarse/summary.md` "
            "(2D bundles are not registered; a deformable registration that diverged is left out).",
            "",
        ]
    series = {c: [e[3 + i] for e in entries] for i, c in enumerate(columns)}
    path = ws.root / "coarse_to_fine.png"
    if len(entries) <= 16:
        plots.append(grouped_bars(path, [e[2] for e in entries], series, "Dice against the fine truth",
                                  "Fine labels never trained"))  # fmt: skip
    else:  # one bar group per label would be metres wide: labels on the x axis, sorted by the naive Dice
        order = sorted(
            range(len(entries)), key=lambda k: (math.isnan(series["naive"][k]), series["naive"][k])
        )
        sorted_series = {c: [v[k] for k in order] for c, v in series.items()}
        plots.append(lines_plot(path, list(range(1, len(entries) + 1)), sorted_series,
                                "fine label (sorted by naive Dice)", "Dice against the fine truth",
                                "Fine labels never trained"))  # fmt: skip
    return lines


def _col(rows: list[dict], key: str) -> float:
    values = [float(r[key]) for r in rows if r[key] not in ("", "nan")]
    return float(np.mean(values)) if values else float("nan")


def _memory_section(memory, dims, size, ws, plots) -> list[str]:
    counts = sorted({int(r["labels"]) for r in memory})

    def col(method, key):
        return [
            float(next(r[key] for r in memory if r["method"] == method and int(r["labels"]) == k))
            for k in counts
        ]

    measure_name = memory[0]["measure"] if memory else ""
    lines = [
        "## Memory against the label count",
        "",
        f"One {'x'.join([str(size)] * dims)} volume, batch as trained; {measure_name}; MB. Training: one optimiser "
        "step with the method's loss. Inference: multi-channel one forward pass, LCS the encoder once and the "
        "decoder per label.",
        "",
    ]
    lines += table(
        ["labels", "LCS training", "multi-channel training", "LCS inference", "multi-channel inference",
         "LCS parameters", "multi-channel parameters"],
        zip(counts, col("lcs", "training_mb"), col("multichannel", "training_mb"), col("lcs", "inference_mb"),
            col("multichannel", "inference_mb"), map(int, col("lcs", "parameters")),
            map(int, col("multichannel", "parameters"))),
    )  # fmt: skip
    series = {
        "LCS training": col("lcs", "training_mb"),
        "multi-channel training": col("multichannel", "training_mb"),
        "LCS inference": col("lcs", "inference_mb"),
        "multi-channel inference": col("multichannel", "inference_mb"),
    }
    plots.append(
        lines_plot(
            ws.root / "memory_vs_labels.png", counts, series, "labels", "MB", "Memory against the label count"
        )
    )
    return lines

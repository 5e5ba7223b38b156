"""`lsseg experiment labelsharing`: the claims of Anand et al. 2024 measured side by side under equal compute.

1. Label sharing, one model per task, multi-channel and DoD-Net are trained on the same tasks with the same budget
   (steps x batch per method; one model per task splits its steps between the tasks) and evaluated on every task's
   held-out test cases.
2. Incremental learning: for each held-out task, label sharing is trained on the other tasks (same budget), then the
   task is added with `add-task` with and without replay of the other tasks (the same add-task budget for both). The
   new task is compared with its own model (the one-model-per-task run), and every old task's Dice before and after
   gives the forgetting.
"""

from __future__ import annotations

from pathlib import Path

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError

from .. import planning
from . import runner
from .budget import BudgetLedger, split_steps
from .report import fmt, grouped_bars, header, mean, mean_dice, table, write_report, yes
from .variants import Variant, conflict_rows, parse_variants
from .variants import section as variant_section
from .workspace import Workspace

METHODS = ("labelsharing", "individual", "multichannel", "dodnet")
JOINT_METHODS = ("labelsharing", "multichannel", "dodnet")


def plan_budget(
    tasks: list[str], budget: runner.Budget, add_steps: int, holdout: list[str], variants: list[Variant] = ()
) -> BudgetLedger:
    """Every run's steps and batch, checked for equal compute before anything trains."""
    ledger = BudgetLedger()
    for method in JOINT_METHODS:
        ledger.record("methods", method, method, budget.steps, budget.batch)
    for variant in variants:
        vb = variant.budget(budget)
        ledger.record("methods", variant.method, variant.run, vb.steps, vb.batch)
    for task, steps in zip(tasks, split_steps(budget.steps, len(tasks))):
        ledger.record("methods", "individual", f"individual_{task}", steps, budget.batch)
    for task in holdout:
        ledger.record(f"add {task}", "no replay", f"add_{task}", add_steps, budget.batch)
        ledger.record(f"add {task}", "replay", f"add_{task}_replay", add_steps, budget.batch)
    ledger.check_equal()
    return ledger


def _parameters(bundles: list[Path]) -> tuple[int, int]:
    """(parameters, output channels) summed over a method's bundles."""
    params = outputs = 0
    for path in bundles:
        bundle = load_bundle(path)
        params += sum(p.numel() for p in bundle.build_network("cpu").parameters())
        outputs += int(bundle.network_config.out_channels)
    return params, outputs


def run_labelsharing(
    data: list[Path],
    out: Path,
    budget: runner.Budget,
    *,
    add_steps: int | None = None,
    holdout: list[str] | None = None,
    variants: list[str] | None = None,
) -> Path:
    """Run (or continue) the experiment into ``out``; returns ``out/report.md``. ``variants``: label-sharing
    variants (variants.py) trained with the same budget; they may be added to a finished experiment."""
    chosen = parse_variants(variants)
    datasets = planning.load_datasets([Path(p) for p in data])
    tasks = [d.task_name() for d in datasets]
    folder = {d.task_name(): Path(d.root).resolve() for d in datasets}
    add_steps = add_steps or max(1, budget.steps // len(tasks))
    if holdout is None:
        holdout = tasks if len(tasks) > 1 else []
    unknown = [h for h in holdout if h not in tasks]
    if unknown:
        raise InputError(f"--holdout {', '.join(unknown)}: not a task of --data (tasks: {', '.join(tasks)})")
    if holdout and len(tasks) < 2:
        raise InputError("incremental learning needs at least two tasks (one held out, one to train on)")
    ledger = plan_budget(tasks, budget, add_steps, holdout, chosen)
    config = {
        "experiment": "labelsharing",
        "data": [str(folder[t]) for t in tasks],
        "budget": budget.to_dict(),
        "add_steps": add_steps,
        "holdout": list(holdout),
        **({"variants": [v.name for v in chosen]} if chosen else {}),
    }
    ws = Workspace(out, config, echo=not budget.quiet, extendable=("variants",))
    ws.log(f"labelsharing experiment: tasks {', '.join(tasks)}; {budget.steps} steps x batch {budget.batch}")

    rows: list[dict] = []
    bundles: dict[str, list[Path]] = {}
    for method in JOINT_METHODS:
        path = ws.run(method)
        ws.timed(f"train {method}", runner.train_tasks, method, list(folder.values()), path, budget)
        rows += ws.timed(
            f"evaluate {method}",
            runner.evaluate_bundle,
            path,
            list(folder.values()),
            ws.evaluation(method),
            method,
            budget.device,
        )
        bundles[method] = [path]
    bundles["individual"] = []
    for task, steps in zip(tasks, split_steps(budget.steps, len(tasks))):
        path = ws.run(f"individual_{task}")
        ws.timed(
            f"train individual {task}",
            runner.train_individual,
            folder[task],
            path,
            budget.with_steps(steps),
        )
        rows += ws.timed(
            f"evaluate individual {task}",
            runner.evaluate_bundle,
            path,
            [folder[task]],
            ws.evaluation(f"individual_{task}"),
            "individual",
            budget.device,
        )
        bundles["individual"].append(path)

    for variant in chosen:
        path = ws.run(variant.run)
        ws.timed(f"train {variant.method}", runner.train_tasks, "labelsharing", list(folder.values()), path,
                 variant.budget(budget))  # fmt: skip
        rows += ws.timed(f"evaluate {variant.method}", runner.evaluate_bundle, path, list(folder.values()),
                         ws.evaluation(variant.run), variant.method, budget.device)  # fmt: skip
        bundles[variant.method] = [path]

    incremental = []
    for held in holdout:
        rest = [t for t in tasks if t != held]
        rest_data = [folder[t] for t in rest]
        base = ws.run(f"base_without_{held}")
        ws.timed(
            f"train labelsharing without {held}",
            runner.train_tasks,
            "labelsharing",
            rest_data,
            base,
            budget,
        )
        before = ws.timed(
            f"evaluate base without {held}",
            runner.evaluate_bundle,
            base,
            rest_data,
            ws.evaluation(f"base_without_{held}"),
            "before",
            budget.device,
        )
        after = {}
        for variant, replay in (("no replay", []), ("replay", rest_data)):
            name = f"add_{held}" + ("_replay" if replay else "")
            ws.timed(
                f"add-task {held} ({variant})",
                runner.add_task,
                base,
                folder[held],
                ws.run(name),
                budget.with_steps(add_steps),
                replay,
            )
            after[variant] = ws.timed(
                f"evaluate {name}",
                runner.evaluate_bundle,
                ws.run(name),
                list(folder.values()),
                ws.evaluation(name),
                variant,
                budget.device,
            )
        incremental.append((held, rest, before, after))

    runner.write_csv(ws.root / "budget.csv", ledger.rows())
    runner.write_csv(ws.root / "metrics.csv", rows)
    conflicts = ws.cached_rows(
        "conflicts.csv", lambda: conflict_rows(bundles["labelsharing"][0], folder, rows)
    )
    report = _report(ws, tasks, budget, add_steps, ledger, rows, bundles, incremental, chosen, conflicts)
    ws.log(f"report: {report}")
    return report


def _report(ws, tasks, budget, add_steps, ledger, rows, bundles, incremental, variants, conflicts) -> Path:
    command = ["lsseg", "experiment", "labelsharing", "--data", *ws.config["data"], "--out", str(ws.root)]
    command += budget.to_args() + ["--add-steps", str(add_steps), "--holdout", *ws.config["holdout"]]
    command += ["--variants", *[v.name for v in variants]] if variants else []
    lines = header(
        "Label sharing against its baselines under equal compute (Anand et al. 2024)", ws.config, command
    )
    lines += [
        "## Data, seeds and budgets",
        "",
        *[f"- task `{t}`: `{p}`" for t, p in zip(tasks, ws.config["data"])],
        f"- seed {budget.seed}; network channels {','.join(map(str, budget.channels))}; learning rate {budget.lr}; "
        f"validation fraction {budget.val_fraction}; augmentation {'on' if budget.augment else 'off'}",
        f"- budget per method: {budget.steps} steps x batch {budget.batch} = {budget.samples} training samples "
        "(one model per task splits the steps between its models); add-task: "
        f"{add_steps} steps x batch {budget.batch} with and without replay",
        "",
        "Every run of a comparison spends the same number of training samples (checked before training):",
        "",
        *table(
            ["comparison", "method", "run", "steps", "batch", "samples"],
            [list(r.values()) for r in ledger.rows()],
        ),
    ]
    lines += ["## Dice per task and method", "", "Mean Dice over test cases and labels.", ""]
    dice = {m: [mean_dice(rows, method=m, task=t) for t in tasks] for m in METHODS}
    means = {m: mean(v) for m, v in dice.items()}
    lines += table(
        ["task", *METHODS, "label sharing - one model per task"],
        [
            [t, *[dice[m][i] for m in METHODS], dice["labelsharing"][i] - dice["individual"][i]]
            for i, t in enumerate(tasks)
        ]
        + [["**mean**", *[means[m] for m in METHODS], means["labelsharing"] - means["individual"]]],
    )
    params = {m: _parameters(bundles[m]) for m in METHODS}
    lines += table(
        ["method", "models", "output channels", "parameters", "parameters / label sharing"],
        [
            [m, len(bundles[m]), params[m][1], params[m][0], params[m][0] / params["labelsharing"][0]]
            for m in METHODS
        ],
    )
    gaps = [dice["labelsharing"][i] - dice["individual"][i] for i in range(len(tasks))]
    lines += [
        "Goals of the issue, on this run:",
        "",
        f"- label sharing at least one-model-per-task - 0.02 on every task: {yes(all(g >= -0.02 for g in gaps))} "
        f"(worst gap {fmt(min(gaps))})",
        "- label sharing above multi-channel and DoD-Net (mean): "
        f"{yes(means['labelsharing'] > max(means['multichannel'], means['dodnet']))}",
        "",
    ]
    plots = [
        grouped_bars(
            ws.root / "dice_per_task.png",
            tasks + ["mean"],
            {m: dice[m] + [means[m]] for m in METHODS},
            "mean Dice",
            "Dice per task and method",
        ),
    ]
    methods = [*METHODS, *[v.method for v in variants]]
    all_dice = {m: [mean_dice(rows, method=m, task=t) for t in tasks] for m in methods}
    all_params = {m: _parameters(bundles[m])[0] for m in methods}
    lines += variant_section(variants, tasks, all_dice, all_params, conflicts)
    if variants:
        shown = ["labelsharing", *[v.method for v in variants], "individual"]
        plots.append(
            grouped_bars(ws.root / "variants.png", tasks + ["mean"],
                         {m: all_dice[m] + [mean(all_dice[m])] for m in shown}, "mean Dice",
                         "Label-sharing variants under the same budget")
        )  # fmt: skip
    if incremental:
        lines += _incremental_section(ws, incremental, dice, tasks, plots)
    else:
        lines += [
            "## Incremental learning",
            "",
            "Not run (needs two or more tasks and a held-out choice).",
            "",
        ]
    lines += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    lines += [
        "## Files",
        "",
        "`metrics.csv` (every Dice of every method, task, case and label), `budget.csv`, `runs/` (every bundle, "
        "with its `.training` checkpoints and log.csv), `evals/` (each evaluation's metrics.csv and summary), "
        "`log.txt`.",
    ]
    return write_report(ws.root / "report.md", lines)


def _incremental_section(ws, incremental, dice, tasks, plots) -> list[str]:
    lines = [
        "## Incremental learning (add-task)",
        "",
        "Each held-out task is added to a label-sharing model trained on the other tasks. *Own model*: the "
        "one-model-per-task run of that task. *Drop*: old tasks' mean Dice before minus after (forgetting). "
        "`add-task --widen`: a task with more labels than the shared space gets new shared labels.",
        "",
    ]
    new_rows, old_rows, forgetting = [], [], {"no replay": [], "replay": []}
    pairs = []
    for held, rest, before, after in incremental:
        own = dice["individual"][tasks.index(held)]
        new = {v: mean_dice(after[v], task=held) for v in after}
        new_rows.append([held, new["no replay"], new["replay"], own, new["replay"] - own])
        old_before = mean([mean_dice(before, task=t) for t in rest])
        old_after = {v: mean([mean_dice(after[v], task=t) for t in rest]) for v in after}
        old_rows.append(
            [
                held,
                old_before,
                old_after["no replay"],
                old_after["replay"],
                old_before - old_after["no replay"],
                old_before - old_after["replay"],
            ]
        )
        for t in rest:
            pairs.append(f"+{held}: {t}")
            for v in after:
                forgetting[v].append(mean_dice(before, task=t) - mean_dice(after[v], task=t))
    lines += table(["added task", "no replay", "replay", "own model", "replay - own model"], new_rows)
    lines += table(
        [
            "added task",
            "old tasks before",
            "after (no replay)",
            "after (replay)",
            "drop (no replay)",
            "drop (replay)",
        ],
        old_rows,
    )
    lines += ["Forgetting per old task (Dice before - after):", ""]
    lines += table(
        ["added task: old task", "drop (no replay)", "drop (replay)"],
        [[p, a, b] for p, a, b in zip(pairs, forgetting["no replay"], forgetting["replay"])],
    )
    gaps = [r[4] for r in new_rows]
    drops = [r[5] for r in old_rows]
    lines += [
        f"- added task within 0.03 of its own model (replay): {yes(all(g >= -0.03 for g in gaps))} "
        f"(worst {fmt(min(gaps))})",
        f"- old tasks drop at most 0.01 with replay: {yes(all(d <= 0.01 for d in drops))} (worst {fmt(max(drops))})",
        "",
    ]
    plots.append(
        grouped_bars(
            ws.root / "incremental_new_task.png",
            [r[0] for r in new_rows],
            {
                "no replay": [r[1] for r in new_rows],
                "replay": [r[2] for r in new_rows],
                "own model": [r[3] for r in new_rows],
            },
            "mean Dice",
            "Added task against its own model",
        )
    )
    plots.append(
        grouped_bars(
            ws.root / "forgetting.png",
            pairs,
            forgetting,
            "Dice before - after",
            "Forgetting of old tasks after add-task",
            ylim=None,
        )
    )
    return lines

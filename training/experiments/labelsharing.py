"""`lsseg experiment labelsharing`: the claims of Anand et al. 2024 measured side by side under equal compute.

1. Label sharing, one model per task, multi-channel and DoD-Net are trained on the same tasks with the same budget
   (steps x batch per method; one model per task splits its steps between the tasks) and evaluated on every task's
   held-out test cases.
2. Incremental learning (incremental.py): for each held-out task, label sharing is trained on the other tasks (same
   budget), then the task is added with `add-task` without replay and with replay of the other tasks at each asked
   new-task share (the same add-task budget for all). The new task is compared with its own model (the
   one-model-per-task run), and every old task's Dice before and after gives the forgetting.
"""

from __future__ import annotations

from pathlib import Path

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError

from .. import planning
from ..run_config import DICE_POOLINGS, HEADS, PUBLISHED_HEAD
from . import incremental, runner
from .budget import BudgetLedger, split_steps
from .report import fmt, grouped_bars, header, mean, mean_dice, table, write_report, yes
from .variants import Variant, conflict_rows, parse_variants, variants_over_any_head
from .variants import section as variant_section
from .workspace import Workspace

# the experiment's loss pooling unless --dice-pooling says otherwise: by channel, as every experiment before the option
# (they continue and reproduce unchanged); `lsseg train`'s default is by task (run_config.DEFAULT_DICE_POOLING)
EXPERIMENT_DICE_POOLING = "channel"

METHODS = ("labelsharing", "individual", "multichannel", "dodnet")
# the goal: label sharing at least one model per task minus this, on every task
PER_TASK_GOAL = 0.02
JOINT_METHODS = ("labelsharing", "multichannel", "dodnet")


def plan_budget(
    tasks: list[str],
    budget: runner.Budget,
    add_steps: int,
    holdout: list[str],
    variants: list[Variant] = (),
    shares: list[float | str] = (incremental.EQUAL_SHARE,),
    matched: list[float | str] = (),
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
        for add in incremental.add_runs(task, len(tasks) - 1, add_steps, shares, matched):
            ledger.record(add.comparison, add.variant, add.run, add.steps, budget.batch)
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
    new_task_shares: list[float | str] | None = None,
    matched_shares: list[float | str] | None = None,
    head: str = PUBLISHED_HEAD,
    dice_pooling: str = EXPERIMENT_DICE_POOLING,
) -> Path:
    """Run (or continue) the experiment into ``out``; returns ``out/report.md``. ``variants``: label-sharing
    variants (variants.py) trained with the same budget; ``new_task_shares``: the new task's shares of the samples
    in add-task with replay (default: add-task's default); ``matched_shares``: shares also run with the new task's
    own-model sample count. All may be added to a finished experiment. ``head``: label sharing's output head
    (default: as published), for the labelsharing method and the incremental runs. ``dice_pooling``: the task
    methods' soft Dice pooling (``--dice-pooling``; default: by channel, as the experiments before the option)."""
    chosen = parse_variants(variants)
    if dice_pooling not in DICE_POOLINGS:
        raise InputError(f"--dice-pooling must be one of {', '.join(DICE_POOLINGS)}, got {dice_pooling!r}")
    if head not in HEADS:
        raise InputError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
    if head != PUBLISHED_HEAD:
        # a variant that sets the head itself (or a task code, which only the published head takes) cannot run
        # over another head; the others change one thing of label sharing with the head asked for
        clashing = [v.name for v in chosen if not v.over_any_head]
        if clashing:
            raise InputError(
                f"--variants {', '.join(clashing)}: they change label sharing's head, which --head {head} sets; "
                f"with --head choose from {', '.join(variants_over_any_head())}"
            )
    shares = incremental.parse_shares(new_task_shares)
    matched = incremental.parse_shares(matched_shares) if matched_shares else []
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
    ledger = plan_budget(tasks, budget, add_steps, holdout, chosen, shares, matched)
    config = {
        "experiment": "labelsharing",
        "data": [str(folder[t]) for t in tasks],
        "budget": budget.to_dict(),
        "add_steps": add_steps,
        "holdout": list(holdout),
        **({"variants": [v.name for v in chosen]} if chosen else {}),
        **({"new_task_shares": shares} if holdout else {}),
        **({"matched_shares": matched} if holdout and matched else {}),
        # recorded only when not the published head, so experiments written before the option continue
        **({"head": head} if head != PUBLISHED_HEAD else {}),
        **({"dice_pooling": dice_pooling} if dice_pooling != EXPERIMENT_DICE_POOLING else {}),
    }
    extendable = ("holdout", "variants", "new_task_shares", "matched_shares")
    ws = Workspace(out, config, echo=not budget.quiet, extendable=extendable)
    ws.log(f"labelsharing experiment: tasks {', '.join(tasks)}; {budget.steps} steps x batch {budget.batch}")

    # every run has the experiment's loss; label sharing's runs (the method and the incremental bases) carry the
    # head, the baselines have their own
    budget = budget.with_extra(dice_pooling=dice_pooling)
    ls_budget = budget.with_extra(head=head)
    rows: list[dict] = []
    bundles: dict[str, list[Path]] = {}
    for method in JOINT_METHODS:
        path = ws.run(method)
        trained = ls_budget if method == "labelsharing" else budget
        ws.timed(f"train {method}", runner.train_tasks, method, list(folder.values()), path, trained)
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
        # over the head asked for; the published head stays unrecorded so earlier experiments continue unchanged
        over = ls_budget if head != PUBLISHED_HEAD else budget
        ws.timed(f"train {variant.method}", runner.train_tasks, "labelsharing", list(folder.values()), path,
                 variant.budget(over))  # fmt: skip
        rows += ws.timed(f"evaluate {variant.method}", runner.evaluate_bundle, path, list(folder.values()),
                         ws.evaluation(variant.run), variant.method, budget.device)  # fmt: skip
        bundles[variant.method] = [path]

    added = [
        incremental.run_incremental(ws, held, tasks, folder, ls_budget, add_steps, shares, matched)
        for held in holdout
    ]

    runner.write_csv(ws.root / "budget.csv", ledger.rows())
    runner.write_csv(ws.root / "metrics.csv", rows)
    conflicts = ws.cached_rows(
        "conflicts.csv", lambda: conflict_rows(bundles["labelsharing"][0], folder, rows)
    )
    report = _report(ws, tasks, budget, add_steps, ledger, rows, bundles, added, chosen, conflicts)
    ws.log(f"report: {report}")
    return report


def _report(ws, tasks, budget, add_steps, ledger, rows, bundles, added, variants, conflicts) -> Path:
    command = ["lsseg", "experiment", "labelsharing", "--data", *ws.config["data"], "--out", str(ws.root)]
    command += budget.to_args() + ["--add-steps", str(add_steps), "--holdout", *ws.config["holdout"]]
    command += ["--variants", *[v.name for v in variants]] if variants else []
    shares = ws.config.get("new_task_shares", [])
    command += ["--new-task-share", *map(str, shares)] if shares else []
    matched = ws.config.get("matched_shares", [])
    command += ["--matched-share", *map(str, matched)] if matched else []
    head = ws.config.get("head", PUBLISHED_HEAD)
    command += ["--head", head] if head != PUBLISHED_HEAD else []
    pooling = ws.config.get("dice_pooling", EXPERIMENT_DICE_POOLING)
    command += ["--dice-pooling", pooling] if pooling != EXPERIMENT_DICE_POOLING else []
    lines = header(
        "Label sharing against its baselines under equal compute (Anand et al. 2024)", ws.config, command
    )
    lines += [
        "## Data, seeds and budgets",
        "",
        *[f"- task `{t}`: `{p}`" for t, p in zip(tasks, ws.config["data"])],
        "- label sharing: "
        + (
            "as published (Anand et al. 2024; one 1x1 convolution over the shared outputs)"
            if head == PUBLISHED_HEAD
            else f"`--head {head}` (`lsseg train labelsharing`'s default), over the same n* + 1 shared outputs"
        ),
        "- loss of every method: cross-entropy + soft Dice, "
        + (
            "one Dice per label of each task over that task's samples (`--dice-pooling task`)"
            if pooling == "task"
            else "one Dice per output channel over the batch (`--dice-pooling channel`)"
        ),
        f"- seed {budget.seed}; network channels {','.join(map(str, budget.channels))}; learning rate {budget.lr}; "
        f"validation fraction {budget.val_fraction}; augmentation {'on' if budget.augment else 'off'}",
        f"- budget per method: {budget.steps} steps x batch {budget.batch} = {budget.samples} training samples "
        "(one model per task splits the steps between its models); add-task: "
        f"{add_steps} steps x batch {budget.batch} without replay and with replay at new-task share "
        f"{', '.join(incremental.share_text(x, len(tasks) - 1) for x in shares) or 'none'}"
        + (
            "; also with the steps that give the new task its own model's samples (steps / share) at share "
            f"{', '.join(incremental.share_text(x, len(tasks) - 1) for x in matched)}"
            if matched
            else ""
        ),
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
        f"- label sharing at least one-model-per-task - {PER_TASK_GOAL} on every task: "
        f"{yes(all(g >= -PER_TASK_GOAL for g in gaps))} "
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
    baseline = "as published (Anand et al. 2024)" if head == PUBLISHED_HEAD else f"with `--head {head}`"
    lines += variant_section(variants, tasks, all_dice, all_params, conflicts, baseline)
    if variants:
        shown = ["labelsharing", *[v.method for v in variants], "individual"]
        plots.append(
            grouped_bars(ws.root / "variants.png", tasks + ["mean"],
                         {m: all_dice[m] + [mean(all_dice[m])] for m in shown}, "mean Dice",
                         "Label-sharing variants under the same budget")
        )  # fmt: skip
    if added:
        own = {t: dice["individual"][i] for i, t in enumerate(tasks)}
        lines += incremental.section(ws.root, added, own, plots)
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

"""Incremental learning in `lsseg experiment labelsharing` (Anand et al. 2024): hold a task out, train label sharing
on the others, then `add-task` it without replay and with replay at each asked new-task share.

The new task is compared with its own model (the one-model-per-task run); every old task's Dice before and after
gives the forgetting. ``incremental.csv`` keeps one row per (added task, variant) so ``--seeds`` can put the seeds
side by side (seeds.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..add_task import new_task_fraction, steps_for_samples
from ..run_config import DEFAULT_NEW_TASK_SHARE, EQUAL_SHARE, parse_new_task_share
from . import runner
from .report import fmt, grouped_bars, mean, mean_dice, table, yes

# the goals with replay: the added task within this of its own model, the old tasks dropping at most this
ADDED_TASK_GOAL = 0.03
FORGETTING_GOAL = 0.01

CSV = "incremental.csv"
NO_REPLAY = "no replay"


def parse_shares(shares) -> list[float | str]:
    """``--new-task-share`` of the experiment: each checked, duplicates dropped (default: add-task's default)."""
    parsed: list[float | str] = []
    for share in shares or [DEFAULT_NEW_TASK_SHARE]:
        value = parse_new_task_share(share)
        if value not in parsed:
            parsed.append(value)
    return parsed


def share_text(share: float | str, n_old: int) -> str:
    """A share as the report states it; EQUAL_SHARE with the fraction it gives for ``n_old`` replayed tasks."""
    if share == EQUAL_SHARE:
        return f"equal ({fmt(1.0 / (n_old + 1), 2)})"
    return f"{share:g}"


def variant_name(share: float | str, n_old: int) -> str:
    return f"replay, new task {share_text(share, n_old)}"


def run_name(held: str, share: float | str | None) -> str:
    """The add-task run's folder: the equal share keeps the name runs had before shares could be chosen, so
    experiments of that time continue without redoing it."""
    if share is None:
        return f"add_{held}"
    return f"add_{held}_replay" + ("" if share == EQUAL_SHARE else f"_share{share:g}")


def matched_steps(add_steps: int, share: float | str, n_old: int) -> int:
    """Add-task steps that give the new task as many samples as its own model gets in ``add_steps`` (the
    experiment draws the tasks uniformly)."""
    replayed = {f"old{i}": 1 for i in range(n_old)}  # only their number matters when drawn uniformly
    return steps_for_samples(add_steps, new_task_fraction(1, replayed, share, "uniform"))


@dataclass(frozen=True)
class AddRun:
    """One add-task run of a held-out task."""

    variant: str  # the report's name
    run: str  # its folder in runs/
    share: float | str | None  # None: no replay
    steps: int
    comparison: str  # the budget ledger's comparison (runs of one comparison spend the same samples)


def add_runs(held: str, n_old: int, add_steps: int, shares, matched=()) -> list[AddRun]:
    """Without replay, with replay at each share (all ``add_steps``), and for each ``matched`` share with the steps
    that give the new task its own model's number of samples (more compute, so a comparison of its own)."""
    same = f"add {held}"
    runs = [AddRun(NO_REPLAY, run_name(held, None), None, add_steps, same)]
    runs += [AddRun(variant_name(s, n_old), run_name(held, s), s, add_steps, same) for s in shares]
    for s in matched:
        steps = matched_steps(add_steps, s, n_old)
        variant = f"{variant_name(s, n_old)}, {steps} steps"
        runs.append(AddRun(variant, f"{run_name(held, s)}_steps{steps}", s, steps, f"{same}: {variant}"))
    return runs


@dataclass
class Added:
    """One held-out task's incremental runs: evaluation rows before (base model) and after each variant."""

    held: str
    rest: list[str]
    before: list[dict]
    after: dict[str, list[dict]]  # variant name -> rows


def run_incremental(
    ws, held, tasks, folder, budget: runner.Budget, add_steps: int, shares, matched=()
) -> Added:
    rest = [t for t in tasks if t != held]
    rest_data = [folder[t] for t in rest]
    base = ws.run(f"base_without_{held}")
    ws.timed(
        f"train labelsharing without {held}", runner.train_tasks, "labelsharing", rest_data, base, budget
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
    for add in add_runs(held, len(rest), add_steps, shares, matched):
        ws.timed(
            f"add-task {held} ({add.variant})",
            runner.add_task,
            base,
            folder[held],
            ws.run(add.run),
            budget.with_steps(add.steps),
            rest_data if add.share is not None else [],
            add.share,
        )
        after[add.variant] = ws.timed(
            f"evaluate {add.run}",
            runner.evaluate_bundle,
            ws.run(add.run),
            list(folder.values()),
            ws.evaluation(add.run),
            add.variant,
            budget.device,
        )
    return Added(held, rest, before, after)


def summary_rows(added: list[Added], own: dict[str, float]) -> list[dict]:
    """Per (added task, variant): the new task's Dice against its own model and the old tasks' mean before and
    after. ``own``: each task's one-model-per-task Dice."""
    rows = []
    for a in added:
        old_before = mean([mean_dice(a.before, task=t) for t in a.rest])
        for variant, after in a.after.items():
            new = mean_dice(after, task=a.held)
            old_after = mean([mean_dice(after, task=t) for t in a.rest])
            rows.append(
                {
                    "added_task": a.held,
                    "variant": variant,
                    "new_task": new,
                    "own_model": own[a.held],
                    "new_minus_own": new - own[a.held],
                    "old_before": old_before,
                    "old_after": old_after,
                    "old_drop": old_before - old_after,
                }
            )
    return rows


def section(root: Path, added: list[Added], own: dict[str, float], plots: list[Path]) -> list[str]:
    """The report's incremental section; writes ``incremental.csv`` and the two plots."""
    rows = summary_rows(added, own)
    runner.write_csv(root / CSV, rows)
    lines = [
        "## Incremental learning (add-task)",
        "",
        "Each held-out task is added to a label-sharing model trained on the other tasks, without replay and with "
        "replay of the other tasks' data. *New task share*: the new task's share of the add-task training samples "
        "(`add-task --new-task-share`; the replayed tasks share the rest equally; *equal*: every task as often); "
        "a run named with its steps has more add-task steps, so that the new task gets as many samples as its own "
        "model (`--matched-share`). "
        "*Own model*: the one-model-per-task run of that task. *Drop*: old tasks' mean Dice before minus after "
        "(forgetting). `add-task --widen`: a task with more labels than the shared space gets new shared labels.",
        "",
    ]
    lines += table(
        ["added task", "variant", "added task Dice", "own model", "- own model"],
        [[r["added_task"], r["variant"], r["new_task"], r["own_model"], r["new_minus_own"]] for r in rows],
    )
    lines += table(
        ["added task", "variant", "old tasks before", "old tasks after", "drop"],
        [[r["added_task"], r["variant"], r["old_before"], r["old_after"], r["old_drop"]] for r in rows],
    )
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    pairs, forgetting = [], {v: [] for v in variants}
    for a in added:
        for t in a.rest:
            pairs.append(f"+{a.held}: {t}")
            for v in variants:
                forgetting[v].append(mean_dice(a.before, task=t) - mean_dice(a.after[v], task=t))
    lines += ["Forgetting per old task (Dice before - after):", ""]
    per_pair = [[pair, *[forgetting[v][i] for v in variants]] for i, pair in enumerate(pairs)]
    lines += table(["added task: old task", *variants], per_pair)
    lines += ["Goals of the issue, on this run (with replay):", ""]
    for v in variants[1:]:
        mine = [r for r in rows if r["variant"] == v]
        gaps, drops = [r["new_minus_own"] for r in mine], [r["old_drop"] for r in mine]
        lines += [
            f"- {v}: added task within {ADDED_TASK_GOAL} of its own model: "
            f"{yes(all(g >= -ADDED_TASK_GOAL for g in gaps))} (worst {fmt(min(gaps))}); old tasks drop at most "
            f"{FORGETTING_GOAL}: {yes(all(d <= FORGETTING_GOAL for d in drops))} "
            f"(worst {fmt(max(drops))})",
        ]
    lines += [""]
    series = {v: [r["new_task"] for r in rows if r["variant"] == v] for v in variants}
    series["own model"] = [own[a.held] for a in added]
    plots.append(
        grouped_bars(
            root / "incremental_new_task.png",
            [a.held for a in added],
            series,
            "mean Dice",
            "Added task against its own model",
        )
    )
    plots.append(
        grouped_bars(
            root / "forgetting.png",
            pairs,
            forgetting,
            "Dice before - after",
            "Forgetting of old tasks after add-task",
            ylim=None,
        )
    )
    return lines

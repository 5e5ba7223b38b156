"""`lsseg experiment labelsharing` end to end on phantom tasks: killed mid-way, continued, full report."""

from __future__ import annotations

import csv
import json
import signal
import time
from pathlib import Path

from train_helpers import lsseg, lsseg_process, phantoms, tree_hashes

ARGS = ["--steps", 4, "--batch", 2, "--channels", "4,8,16", "--device", "cpu", "--threads", 1]


def test_killed_experiment_resumes_and_reports_everything(tmp_path):
    data = phantoms(tmp_path / "data", tasks=2, cases=3)
    out = tmp_path / "exp"
    command = ["experiment", "labelsharing", "--data", *data, "--out", out, "--holdout", "Phantom1", *ARGS]
    command += ["--new-task-share", "equal", "0.75"]
    first = out / "runs" / "labelsharing"
    process = lsseg_process(*command)
    try:
        deadline = time.time() + 240
        while not (first / "bundle.json").is_file():
            assert process.poll() is None, process.communicate()
            assert time.time() < deadline, "no bundle written"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        process.communicate()
    assert not (out / "report.md").exists()
    kept = tree_hashes(first)

    assert lsseg(*command) == 0
    assert tree_hashes(first) == kept  # the finished run was not redone
    log = (out / "log.txt").read_text()
    assert "train labelsharing: already done, skipped" in log
    assert "train multichannel: done in" in log

    report = (out / "report.md").read_text()
    for heading in ("## Data, seeds and budgets", "## Dice per task and method", "## Incremental learning"):
        assert heading in report
    for plot in ("dice_per_task", "incremental_new_task", "forgetting"):
        assert (out / f"{plot}.png").stat().st_size > 1000
        assert f"![{plot}]({plot}.png)" in report
    assert "--holdout Phantom1" in report and "8 training samples" in report
    for run in ("labelsharing", "multichannel", "dodnet", "individual_Phantom0", "individual_Phantom1",
                "base_without_Phantom1", "add_Phantom1", "add_Phantom1_replay", "add_Phantom1_replay_share0.75"):  # fmt: skip
        assert (out / "runs" / run / "bundle.json").is_file(), run
    # the report states the new task's share of each replay run, and the command that reproduces it
    assert "--new-task-share equal 0.75" in report.splitlines()[2]
    assert "with replay at new-task share equal (0.50), 0.75" in report
    for variant in ("no replay", "replay, new task equal (0.50)", "replay, new task 0.75"):
        assert f"| Phantom1 | {variant} |" in report, variant
    assert "- replay, new task 0.75: added task within 0.03 of its own model:" in report
    training = json.loads((out / "runs" / "add_Phantom1_replay_share0.75" / "bundle.json").read_text())[
        "training"
    ]
    assert training["new_task_share"] == 0.75
    with open(out / "incremental.csv", newline="") as handle:
        assert [r["variant"] for r in csv.DictReader(handle)] == [
            "no replay", "replay, new task equal (0.50)", "replay, new task 0.75"
        ]  # fmt: skip

    with open(out / "budget.csv", newline="") as handle:
        budget = list(csv.DictReader(handle))
    samples = {}
    for row in budget:
        if row["comparison"] == "methods":
            samples[row["method"]] = samples.get(row["method"], 0) + int(row["samples"])
    assert samples == {"labelsharing": 8, "multichannel": 8, "dodnet": 8, "individual": 8}
    with open(out / "metrics.csv", newline="") as handle:
        metrics = list(csv.DictReader(handle))
    assert {(r["method"], r["task"]) for r in metrics} == {
        (m, t)
        for m in ("labelsharing", "multichannel", "dodnet", "individual")
        for t in ("Phantom0", "Phantom1")
    }

    # a third invocation trains nothing and writes the same tables
    assert lsseg(*command) == 0
    assert (out / "report.md").read_text() == report
    # a share may be added to a finished experiment (only its runs train); dropping one is refused. A matched share
    # also runs with add-steps / share steps (2 / 0.5), so the new task gets its own model's samples
    assert lsseg(*command, "0.5", "--matched-share", "0.5") == 0
    log = (out / "log.txt").read_text()
    assert "add-task Phantom1 (replay, new task 0.75): already done, skipped" in log
    assert "add-task Phantom1 (replay, new task 0.5): done in" in log
    assert "add-task Phantom1 (replay, new task 0.5, 4 steps): done in" in log
    report = (out / "report.md").read_text()
    assert "| Phantom1 | replay, new task 0.5 |" in report
    assert "| Phantom1 | replay, new task 0.5, 4 steps |" in report
    assert "--new-task-share equal 0.75 0.5 --matched-share 0.5" in report.splitlines()[2]
    matched = json.loads((out / "runs" / "add_Phantom1_replay_share0.5_steps4" / "bundle.json").read_text())
    assert matched["training"]["steps"] == 4 and matched["training"]["new_task_share"] == 0.5
    assert lsseg(*command[:-2], "0.75") == 2
    # another held-out task may join too: only its runs train, the finished ones are kept
    kept = tree_hashes(out / "runs" / "add_Phantom1_replay")
    grown = [*command[: command.index("Phantom1") + 1], "Phantom0", *command[command.index("Phantom1") + 1 :]]
    assert lsseg(*grown, "0.5", "--matched-share", "0.5") == 0
    assert tree_hashes(out / "runs" / "add_Phantom1_replay") == kept
    log = (out / "log.txt").read_text()
    assert "train labelsharing without Phantom1: already done, skipped" in log
    assert (out / "runs" / "base_without_Phantom0" / "bundle.json").is_file()
    report = (out / "report.md").read_text()
    assert "| Phantom0 | no replay |" in report and "| Phantom1 | no replay |" in report
    assert "--holdout Phantom1 Phantom0" in report.splitlines()[2]
    assert lsseg(*command, "0.5", "--matched-share", "0.5") == 2  # dropping a held-out task is refused


def test_unknown_holdout_task_is_refused(tmp_path, capsys):
    data = phantoms(tmp_path / "data", tasks=2, cases=3)
    command = ["experiment", "labelsharing", "--data", *data, "--out", tmp_path / "exp", "--holdout", "Nope"]
    assert lsseg(*command, *ARGS) == 2
    assert "--holdout Nope: not a task of --data" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_variants_share_the_budget_and_can_be_added_later(tmp_path):
    data = phantoms(tmp_path / "data", tasks=2, cases=3)
    out = tmp_path / "exp"
    command = ["experiment", "labelsharing", "--data", *data, "--out", out, "--holdout", *ARGS]
    assert lsseg(*command, "--variants", "task-code") == 0
    first = tree_hashes(out / "runs" / "labelsharing")
    # a later invocation adds variants; the finished runs are kept
    assert lsseg(*command, "--variants", "task-code", "wide") == 0
    assert tree_hashes(out / "runs" / "labelsharing") == first
    log = (out / "log.txt").read_text()
    assert "train labelsharing task-code: already done, skipped" in log
    assert "train labelsharing wide: done in" in log

    report = (out / "report.md").read_text()
    assert "## Why label sharing trails: variants under the same budget" in report
    for name in ("task-code", "wide"):
        assert f"- labelsharing {name}: " in report, name
    assert "--variants task-code wide" in report.splitlines()[2]
    with open(out / "budget.csv", newline="") as handle:
        methods = [r for r in csv.DictReader(handle) if r["comparison"] == "methods"]
    totals = {}
    for row in methods:
        totals[row["method"]] = totals.get(row["method"], 0) + int(row["samples"])
    assert set(totals.values()) == {8} and "labelsharing wide" in totals
    # the look-alike table: one row per label of each task, its channel and the deficit against its own model
    assert "### Look-alike labels sharing a channel" in report
    assert (out / "variants.png").stat().st_size > 1000 and "![variants](variants.png)" in report
    with open(out / "conflicts.csv", newline="") as handle:
        conflicts = list(csv.DictReader(handle))
    assert sorted((r["task"], r["channel"]) for r in conflicts) == [
        ("Phantom0", "1"), ("Phantom0", "2"), ("Phantom0", "3"), ("Phantom1", "1"), ("Phantom1", "2")
    ]  # fmt: skip
    from LabelSharingSegLib.engine.bundle import load_bundle

    assert load_bundle(out / "runs" / "labelsharing_task-code").network_config.arch == "unet_film"
    wide = load_bundle(out / "runs" / "labelsharing_wide").network_config.channels
    assert wide == tuple(2 * c for c in load_bundle(out / "runs" / "labelsharing").network_config.channels)
    # dropping a variant is another experiment: refused, nothing lost
    assert lsseg(*command, "--variants", "wide") == 2


def test_unknown_variant_is_refused(tmp_path, capsys):
    data = phantoms(tmp_path / "data", tasks=2, cases=3)
    command = [
        "experiment",
        "labelsharing",
        "--data",
        *data,
        "--out",
        tmp_path / "exp",
        "--variants",
        "deeper",
    ]
    assert lsseg(*command, *ARGS) == 2
    assert "--variants deeper: unknown" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_variant_differences_are_read_against_the_seed_to_seed_spread():
    from lsseg_training.experiments.variants import VARIANTS, section

    chosen = [VARIANTS["task-code"], VARIANTS["reseeded"], VARIANTS["wide"]]
    dice = {
        "labelsharing": [0.5, 0.3],
        "labelsharing task-code": [0.52, 0.3],  # +0.01 mean: within a 0.05 spread
        "labelsharing reseeded": [0.6, 0.3],  # +0.05 mean: the spread
        "labelsharing wide": [0.7, 0.3],  # +0.10 mean: beyond it
        "individual": [0.6, 0.4],
    }
    params = {m: 1000 for m in dice}
    conflicts = [
        {"channel": 1, "task": "a", "label": "x (1)", "shares_with": "b:y", "closest_intensity_distance": d, "deficit": f}
        for d, f in ((0.1, -0.3), (0.2, -0.2), (0.3, -0.1), ("nan", "0.0"))
    ]  # fmt: skip
    text = "\n".join(section(chosen, ["a", "b"], dice, params, conflicts))
    assert "- labelsharing task-code: 0.010 mean (within the seed-to-seed spread of 0.050)" in text
    assert "- labelsharing wide: 0.100 mean (beyond the seed-to-seed spread of 0.050)" in text
    assert "- labelsharing reseeded: 0.050 mean; worst gap" in text
    # look-alikes (small distance) losing more: a perfect positive rank correlation over the 3 paired labels
    assert "over the 3 labels that share a channel: **1.00**" in text


def test_seeds_run_one_experiment_each_and_compare_them(tmp_path, capsys):
    data = phantoms(tmp_path / "data", tasks=2, cases=3)
    out = tmp_path / "seeds"
    command = ["experiment", "labelsharing", "--data", *data, "--out", out, "--holdout", "Phantom1", *ARGS]
    command += ["--new-task-share", "0.75"]
    assert lsseg(*command, "--seeds", 3, 5, "--variants", "mlp-head") == 0
    for seed in (3, 5):  # each seed is a whole experiment, the folder a plain --seed run writes
        report = (out / f"seed_{seed}" / "report.md").read_text()
        assert f"--seed {seed} " in report and "labelsharing mlp-head" in report
    summary = (out / "seeds.md").read_text()
    for heading in ("## Mean Dice per seed", "## Per task", "## Each method against label sharing"):
        assert heading in summary
    assert "--seeds 3 5" in summary and "--seed " not in summary
    assert "--new-task-share 0.75" in summary
    # the incremental part seed by seed: the added task against its own model, the old tasks' drop
    assert "## Incremental learning over the seeds" in summary
    assert summary.count("| Phantom1 | replay, new task 0.75 |") == 2
    assert summary.count("| Phantom1 | no replay |") == 2
    for method in ("individual", "multichannel", "dodnet", "labelsharing mlp-head"):
        assert f"| {method} |" in summary
    with open(out / "seeds.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 * 2 * 2  # methods x seeds x tasks
    # the seeds differ (weights, split, sampling), so the summary compares two different runs
    by_seed = {s: [r["dice"] for r in rows if r["seed"] == s] for s in ("3", "5")}
    assert by_seed["3"] != by_seed["5"]
    # the goals seed by seed, recomputed here from seeds.csv
    dice = {(r["seed"], r["method"], r["task"]): float(r["dice"]) for r in rows}
    met = 0
    for seed in ("3", "5"):
        gaps = {
            t: dice[(seed, "labelsharing", t)] - dice[(seed, "individual", t)]
            for t in ("Phantom0", "Phantom1")
        }
        worst = min(gaps, key=gaps.get)
        means = {
            m: (dice[(seed, m, "Phantom0")] + dice[(seed, m, "Phantom1")]) / 2
            for m in ("labelsharing", "multichannel", "dodnet")
        }
        goals = [gaps[worst] >= -0.02, means["labelsharing"] > means["multichannel"]]
        goals.append(means["labelsharing"] > means["dodnet"])
        met += all(goals)
        cells = " | ".join("**yes**" if g else "**no**" for g in [*goals, all(goals)])
        assert f"| {seed} | {gaps[worst]:.3f} ({worst}) | {cells} |" in summary
    assert (
        "## The issue's goals, seed by seed" in summary
        and f"All three met on **{met} of 2** seeds." in summary
    )
    assert "| seeds within 0.03 |" in summary and "| seeds at most 0.01 |" in summary

    kept = tree_hashes(out / "seed_3" / "runs")
    assert lsseg(*command, "--seeds", 3, 5, "--variants", "mlp-head") == 0  # rerun: nothing retrained
    assert tree_hashes(out / "seed_3" / "runs") == kept
    assert "already done, skipped" in (out / "seed_5" / "log.txt").read_text()
    capsys.readouterr()
    assert lsseg(*command, "--seeds", 3, "--variants", "mlp-head") == 2
    assert "two or more different seeds" in capsys.readouterr().err
    assert lsseg(*command, "--seeds", 3, 4, "--seed", 1) == 2
    assert "--seed and --seeds" in capsys.readouterr().err


def test_the_experiment_measures_label_sharing_with_the_head_asked_for(tmp_path, capsys):
    """Default: as published (the paper's claims); --head dynamic: the product's default head, incremental runs too;
    the baselines are the same either way."""
    from LabelSharingSegLib.engine.bundle import load_bundle

    data = phantoms(tmp_path / "data", tasks=2, cases=3)
    out = tmp_path / "exp"
    command = ["experiment", "labelsharing", "--data", *data, "--out", out, "--holdout", "Phantom1", *ARGS]
    assert lsseg(*command, "--head", "dynamic") == 0
    runs = out / "runs"
    for run in ("labelsharing", "base_without_Phantom1", "add_Phantom1", "add_Phantom1_replay"):
        assert load_bundle(runs / run).network_config.arch == "dodnet", run
    for run in ("multichannel", "individual_Phantom0"):
        assert load_bundle(runs / run).network_config.arch == "unet", run
    assert load_bundle(runs / "dodnet").network_config.controller_inputs == "image+task"
    report = (out / "report.md").read_text()
    assert "--head dynamic" in report.splitlines()[2] and "label sharing: `--head dynamic`" in report
    published = tmp_path / "published"
    assert lsseg("experiment", "labelsharing", "--data", *data, "--out", published, "--holdout", *ARGS) == 0
    assert load_bundle(published / "runs" / "labelsharing").network_config.arch == "unet"
    assert "label sharing: as published" in (published / "report.md").read_text()
    capsys.readouterr()
    refused = ["experiment", "labelsharing", "--data", *data, "--out", tmp_path / "v", "--holdout", *ARGS]
    assert lsseg(*refused, "--head", "dynamic", "--variants", "wide", "task-code", "image-head") == 2
    error = capsys.readouterr().err
    assert "--variants task-code, image-head: they change label sharing's head" in error
    assert not (tmp_path / "v").exists()


def test_variants_run_over_the_head_asked_for(tmp_path):
    """With --head dynamic, a variant that leaves the head alone changes label sharing with that head, and the
    report compares it with label sharing with that head."""
    from LabelSharingSegLib.engine.bundle import load_bundle

    data = phantoms(tmp_path / "data", tasks=2, cases=3)
    out = tmp_path / "exp"
    command = ["experiment", "labelsharing", "--data", *data, "--out", out, "--holdout", *ARGS]
    assert lsseg(*command, "--head", "dynamic", "--variants", "wide") == 0
    base = load_bundle(out / "runs" / "labelsharing").network_config
    wide = load_bundle(out / "runs" / "labelsharing_wide").network_config
    assert (
        wide.arch == base.arch == "dodnet"
        and wide.controller_inputs == base.controller_inputs == "image+task"
    )
    assert wide.channels == tuple(2 * c for c in base.channels)
    report = (out / "report.md").read_text()
    assert "Against label sharing with `--head dynamic`" in report
    assert "--variants wide" in report.splitlines()[2] and "--head dynamic" in report.splitlines()[2]


def test_the_seeds_summary_reproduces_the_head():
    """The multi-seed summary's command line carries --head, or rerunning it would measure another head."""
    from lsseg_training.experiments.seeds import _option_args

    assert _option_args({"head": "dynamic", "holdout": ["A"]}) == ["--holdout", "A", "--head", "dynamic"]
    assert "--head" not in _option_args({"head": "linear"}) and "--head" not in _option_args({})


def test_the_experiment_pools_dice_as_asked_for_every_method(tmp_path):
    """Default: by channel, as the experiments before the option (they continue unchanged); --dice-pooling task:
    every method by task (only label sharing's and DoD-Net's loss change); the task-dice variant: label sharing only."""
    from LabelSharingSegLib.engine.bundle import load_bundle
    from lsseg_training.experiments.seeds import _option_args

    def pooling(run: Path) -> str | None:
        return load_bundle(run).manifest.training.get("dice_pooling")

    data = phantoms(tmp_path / "data", tasks=2, cases=3)
    by_task = tmp_path / "task"
    command = ["experiment", "labelsharing", "--data", *data, "--holdout", *ARGS]
    assert lsseg(*command, "--out", by_task, "--dice-pooling", "task") == 0
    runs = by_task / "runs"
    assert pooling(runs / "labelsharing") == pooling(runs / "dodnet") == "task"
    assert pooling(runs / "multichannel") is None  # its loss is the same either way: nothing recorded
    report = (by_task / "report.md").read_text()
    assert "--dice-pooling task" in report.splitlines()[2] and "(`--dice-pooling task`)" in report
    by_channel = tmp_path / "channel"
    assert lsseg(*command, "--out", by_channel, "--variants", "task-dice") == 0
    runs = by_channel / "runs"
    assert pooling(runs / "labelsharing") is None and pooling(runs / "dodnet") is None
    assert pooling(runs / "labelsharing_task-dice") == "task"
    assert "--dice-pooling" not in (by_channel / "report.md").read_text().splitlines()[2]
    assert _option_args({"dice_pooling": "task"}) == ["--dice-pooling", "task"]
    assert _option_args({"dice_pooling": "channel"}) == []

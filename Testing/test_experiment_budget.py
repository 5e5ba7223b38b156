"""Equal-compute accounting of the experiments and their folders' refusal of mixed configurations."""

from __future__ import annotations

import pytest

from LabelSharingSegLib.engine.errors import InputError
from lsseg_training.experiments.budget import BudgetLedger, split_steps
from lsseg_training.experiments.labelsharing import plan_budget
from lsseg_training.experiments.runner import Budget
from lsseg_training.experiments.workspace import Workspace


def test_split_steps_shares_the_whole_budget():
    assert split_steps(10, 3) == [4, 3, 3]
    assert sum(split_steps(1001, 7)) == 1001
    with pytest.raises(InputError, match="cannot train 3 models"):
        split_steps(2, 3)


def test_labelsharing_plan_spends_the_same_samples_per_method():
    ledger = plan_budget(["A", "B", "C"], Budget(steps=100, batch=3), add_steps=20, holdout=["B"])
    assert ledger.totals("methods") == {
        "labelsharing": 300,
        "multichannel": 300,
        "dodnet": 300,
        "individual": 300,  # 34 + 33 + 33 steps over its three models
    }
    individual = [r for r in ledger.rows() if r["method"] == "individual"]
    assert [r["steps"] for r in individual] == [34, 33, 33]
    assert ledger.totals("add B") == {"no replay": 60, "replay, new task equal (0.33)": 60}
    # one add-task run per asked new-task share, each with the same budget
    ledger = plan_budget(["A", "B", "C"], Budget(steps=100, batch=3), 20, ["B"], shares=["equal", 0.5, 0.75])
    assert ledger.totals("add B") == {
        "no replay": 60,
        "replay, new task equal (0.33)": 60,
        "replay, new task 0.5": 60,
        "replay, new task 0.75": 60,
    }
    runs = [r["run"] for r in ledger.rows() if r["comparison"] == "add B"]
    assert runs == ["add_B", "add_B_replay", "add_B_replay_share0.5", "add_B_replay_share0.75"]
    # a matched share: add-steps / share steps (20 / (1/3) = 60, 20 / 0.5 = 40), each a comparison of its own
    ledger = plan_budget(
        ["A", "B", "C"], Budget(steps=100, batch=3), 20, ["B"], shares=[0.5], matched=["equal", 0.5]
    )
    matched = {r["run"]: r["steps"] for r in ledger.rows() if r["comparison"].startswith("add B: ")}
    assert matched == {"add_B_replay_steps60": 60, "add_B_replay_share0.5_steps40": 40}
    assert ledger.totals("add B") == {"no replay": 60, "replay, new task 0.5": 60}


def test_unequal_budgets_are_refused():
    ledger = BudgetLedger()
    ledger.record("methods", "labelsharing", "ls", 100, 2)
    ledger.record("methods", "individual", "ind_a", 60, 2)
    ledger.record("methods", "individual", "ind_b", 60, 2)
    with pytest.raises(InputError, match="unequal budgets in 'methods'.*individual 240, labelsharing 200"):
        ledger.check_equal()


def test_budget_refuses_empty_runs():
    with pytest.raises(InputError, match="steps >= 1"):
        Budget(steps=0)


def test_workspace_refuses_another_configuration(tmp_path):
    Workspace(tmp_path / "exp", {"steps": 10}, echo=False)
    again = Workspace(tmp_path / "exp", {"steps": 10}, echo=False)
    assert again.resumed
    with pytest.raises(InputError, match=r"other settings \(steps\)"):
        Workspace(tmp_path / "exp", {"steps": 20}, echo=False)
    # --verbose (the budget's quiet) only changes what is shown: a rerun with or without it continues
    quiet = {"budget": Budget(steps=10, quiet=True).to_dict()}
    Workspace(tmp_path / "watched", quiet, echo=False)
    assert Workspace(
        tmp_path / "watched", {"budget": Budget(steps=10, quiet=False).to_dict()}, echo=False
    ).resumed
    with pytest.raises(InputError, match=r"other settings \(budget\)"):
        Workspace(tmp_path / "watched", {"budget": Budget(steps=11, quiet=False).to_dict()}, echo=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not an experiment folder"):
        Workspace(tmp_path / "other", {"steps": 10}, echo=False)


def test_validation_settings_are_recorded_only_when_set():
    plain = Budget(steps=10)
    assert (
        "val_labels" not in plain.to_dict() and "val_every" not in plain.to_dict()
    )  # older folders continue
    capped = Budget(steps=10, val_labels=16, val_every=5)
    assert capped.to_dict()["val_labels"] == 16 and capped.to_dict()["val_every"] == 5
    assert capped.to_args()[-4:] == ["--val-labels", "16", "--val-every", "5"]
    assert capped.with_steps(3).val_labels == 16


def test_variants_may_be_added_to_an_experiment_but_not_dropped(tmp_path):
    Workspace(tmp_path / "exp", {"steps": 10, "variants": ["wide"]}, echo=False, extendable=("variants",))
    grown = {"steps": 10, "variants": ["wide", "task-code"]}
    Workspace(tmp_path / "exp", grown, echo=False, extendable=("variants",))
    assert '"task-code"' in (tmp_path / "exp" / "experiment.json").read_text()
    with pytest.raises(InputError, match=r"other settings \(variants\)"):
        Workspace(tmp_path / "exp", {"steps": 10, "variants": ["wide"]}, echo=False, extendable=("variants",))
    with pytest.raises(InputError, match=r"other settings \(steps\)"):
        Workspace(tmp_path / "exp", {**grown, "steps": 11}, echo=False, extendable=("variants",))


def test_variants_spend_the_same_budget():
    from lsseg_training.experiments.variants import parse_variants

    chosen = parse_variants(["wide", "task-code", "reseeded", "wide"])
    assert [v.name for v in chosen] == ["wide", "task-code", "reseeded"]
    ledger = plan_budget(["a", "b"], Budget(steps=10, batch=2, seed=3), 5, [], chosen)
    assert set(ledger.totals("methods").values()) == {20}
    base = Budget(steps=10, channels=(4, 8), seed=3)
    assert chosen[0].budget(base).channels == (8, 16)
    assert chosen[1].budget(base).extra == {"task_film": True} and chosen[1].budget(base).seed == 3
    assert chosen[2].budget(base).seed == 4

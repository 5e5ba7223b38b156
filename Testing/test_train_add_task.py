"""add-task: the old bundle stays byte-identical, the new task's placement follows the stored size table, too
many labels need --widen, --replay mixes old data in, at the new task's share of the samples."""

from __future__ import annotations

import itertools
import math

import pytest
from train_helpers import TINY, lsseg, phantoms, tree_hashes

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError
from lsseg_training.add_task import new_task_fraction, replay_weights
from lsseg_training.datasets import read_dataset
from lsseg_training.methods import TaskMethod
from lsseg_training.planning import task_sizes
from lsseg_training.run_config import (
    DEFAULT_NEW_TASK_SHARE,
    DEFAULT_STEPS,
    EQUAL_SHARE,
    AddTaskConfig,
    TrainSettings,
)
from lsseg_training.samples import step_rng


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("addtask")
    data = phantoms(root / "data", tasks=3, cases=3)
    base = root / "base3"  # Phantom0: 3 labels
    assert lsseg("train", "labelsharing", "--data", data[0], "--out", base, "--steps", 2, *TINY) == 0
    small = root / "base2"  # Phantom1: 2 labels
    assert lsseg("train", "labelsharing", "--data", data[1], "--out", small, "--steps", 2, *TINY) == 0
    return root, data, base, small


def _best_order_preserving(new_sizes, ref_sizes):
    best = None
    for positions in itertools.combinations(range(len(ref_sizes)), len(new_sizes)):
        cost = sum(abs(math.log(n) - math.log(ref_sizes[p])) for n, p in zip(new_sizes, positions))
        if best is None or cost < best[0] - 1e-12:
            best = (cost, positions)
    return best[1]


def test_add_task_keeps_old_bundle_and_follows_size_table(setup, tmp_path):
    root, data, base, _ = setup
    before = tree_hashes(base)
    out = tmp_path / "plus"
    assert (
        lsseg("add-task", base, "--data", data[1], "--out", out, "--replay", data[0], "--steps", 2, *TINY)
        == 0
    )
    assert tree_hashes(base) == before
    old, new = load_bundle(base), load_bundle(out)
    assert new.task_names() == ["Phantom0", "Phantom1"]
    assert new.label_space.task_to_shared("Phantom0") == old.label_space.task_to_shared("Phantom0")
    # independent check: brute-force the order-preserving placement with the least log-size mismatch
    sizes = task_sizes(read_dataset(data[1]))
    ranked = sizes.ranked()
    reference = old.label_space.reference_sizes()
    positions = _best_order_preserving(
        [sizes.sizes[v] for v in ranked], [reference[s] for s in sorted(reference)]
    )
    expected = {value: position + 1 for value, position in zip(ranked, positions)}
    assert new.label_space.task_to_shared("Phantom1") == expected
    assert new.task("Phantom1").channels == expected
    assert new.manifest.training["base_bundle"] == old.bundle_id


def test_too_many_labels_need_widen(setup, tmp_path, capsys):
    root, data, _, small = setup
    before = tree_hashes(small)
    assert lsseg("add-task", small, "--data", data[0], "--out", tmp_path / "no", "--steps", 1, *TINY) == 2
    assert "--widen" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    out = tmp_path / "wide"
    assert lsseg("add-task", small, "--data", data[0], "--out", out, "--widen", "--steps", 2, *TINY) == 0
    wide = load_bundle(out)
    assert wide.label_space.n_shared == 3 and wide.network_config.out_channels == 4
    assert tree_hashes(small) == before


def test_replay_of_unknown_task_rejected(setup, tmp_path, capsys):
    root, data, base, _ = setup
    assert (
        lsseg("add-task", base, "--data", data[1], "--replay", data[2], "--out", tmp_path / "x", *TINY) == 2
    )
    assert "not in the bundle" in capsys.readouterr().err


# -- the new task's share of the samples with replay (--new-task-share) -------------------------------------


def _drawn_tasks(sampler, seed: int, steps: int, batch: int = 4) -> list[int]:
    """The tasks the sampler draws over ``steps`` steps of ``batch`` samples, each step from its own generator
    (as training draws them: by seed, rank and step)."""
    drawn = []
    for step in range(steps):
        rng = step_rng(seed, 0, step)
        drawn += [sampler.locate(rng)[1] for _ in range(batch)]
    return drawn


def test_replay_weights_give_the_new_task_its_share():
    assert replay_weights("new", {"a": 3, "b": 8}, 0.75, "uniform") == pytest.approx(
        {"new": 0.75, "a": 0.125, "b": 0.125}
    )
    # --task-sampling labels: the replayed tasks split the rest by label count
    assert replay_weights("new", {"a": 3, "b": 9}, 0.5, "labels") == pytest.approx(
        {"new": 0.5, "a": 0.125, "b": 0.375}
    )
    # no replay, or the equal share: every task drawn by --task-sampling, as before the option existed
    assert replay_weights("new", {"a": 3}, EQUAL_SHARE, "uniform") is None
    assert replay_weights("new", {}, 0.5, "uniform") is None
    assert replay_weights("new", {"a": 3}, None, "uniform") is None


def test_add_task_draws_the_new_task_at_its_share_deterministically(setup, tmp_path, monkeypatch):
    """The sampler a real add-task run trains with draws the new task at the asked share, by (seed, rank, step)."""
    root, data, base, _ = setup
    built = []
    make_sampler = TaskMethod.make_sampler

    def keep(self, *args, **kwargs):
        built.append(make_sampler(self, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(TaskMethod, "make_sampler", keep)
    replay = [data[0], data[2]]
    # a base with two old tasks, so the equal share (1/3) differs from every share asked below
    two = tmp_path / "base_two"
    assert lsseg("train", "labelsharing", "--data", data[0], data[2], "--out", two, "--steps", 1, *TINY) == 0
    counts, recorded = {}, {"0.75": 0.75, "1/2": 0.5, "equal": None}
    for share in recorded:
        out = tmp_path / f"plus_{share.replace('/', '_')}"
        args = ["--replay", *replay, "--new-task-share", share, "--steps", 1, "--seed", 3, *TINY]
        assert lsseg("add-task", two, "--data", data[1], "--out", out, *args) == 0
        sampler = built[-1]
        new = load_bundle(out).task("Phantom1").index
        drawn = _drawn_tasks(sampler, seed=3, steps=1000)
        counts[share] = drawn.count(new) / len(drawn)
        assert _drawn_tasks(sampler, seed=3, steps=50) == drawn[:200]  # the same steps draw the same tasks
        assert _drawn_tasks(sampler, seed=4, steps=50) != drawn[:200]
        assert load_bundle(out).manifest.training.get("new_task_share") == recorded[share]
    assert counts["0.75"] == pytest.approx(0.75, abs=0.02)
    assert counts["1/2"] == pytest.approx(0.5, abs=0.02)
    assert counts["equal"] == pytest.approx(1 / 3, abs=0.02)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--new-task-share", "1"], "--new-task-share must be a fraction between 0 and 1"),
        (["--new-task-share", "0"], "--new-task-share must be a fraction between 0 and 1"),
        (["--new-task-share", "nan"], "--new-task-share must be a fraction between 0 and 1"),
        (["--new-task-share", "half"], "got 'half'"),
        (["--new-task-share", "1/0"], "got '1/0'"),
        # the network is the bundle's: options that choose another one are refused, not silently dropped
        (["--head", "linear"], "add-task keeps the bundle's network"),
        (["--task-film"], "add-task keeps the bundle's network"),
        (["--label-mapping", "shuffled"], "add-task keeps the bundle's network"),
    ],
)
def test_bad_new_task_share_is_refused(setup, tmp_path, capsys, args, message):
    root, data, base, _ = setup
    out = tmp_path / "x"
    assert lsseg("add-task", base, "--data", data[1], "--replay", data[0], "--out", out, *args, *TINY) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_new_task_share_without_replay_is_refused(setup, tmp_path, capsys):
    root, data, base, _ = setup
    out = tmp_path / "x"
    assert lsseg("add-task", base, "--data", data[1], "--new-task-share", "0.5", "--out", out, *TINY) == 2
    assert "without --replay every sample is the new task's" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(InputError, match="without --replay"):
        AddTaskConfig(base, data[1], out, new_task_share=0.5)
    assert AddTaskConfig(base, data[1], out).share() is None
    assert AddTaskConfig(base, data[1], out, replay=(data[0],)).share() == DEFAULT_NEW_TASK_SHARE


def test_resume_with_another_new_task_share_is_refused(setup, tmp_path, capsys):
    """The share changes what is trained: a checkpoint of another share is not continued; the same share is."""
    root, data, base, _ = setup
    ckpt = tmp_path / "ck"
    common = ["add-task", base, "--data", data[1], "--replay", data[0], "--checkpoint-dir", ckpt, *TINY]
    assert lsseg(*common, "--out", tmp_path / "a", "--steps", 2, "--new-task-share", "0.75") == 0
    capsys.readouterr()
    resume = ["--steps", 3, "--resume"]
    for other in ("0.5", "equal"):
        assert lsseg(*common, "--out", tmp_path / "b", *resume, "--new-task-share", other) == 2
        assert "different training run" in capsys.readouterr().err
    assert lsseg(*common, "--out", tmp_path / "c", *resume, "--new-task-share", "3/4") == 0


def test_new_task_fraction():
    assert new_task_fraction(2, {}, None, "uniform") == 1.0
    assert new_task_fraction(2, {"a": 3, "b": 8}, EQUAL_SHARE, "uniform") == pytest.approx(1 / 3)
    assert new_task_fraction(2, {"a": 3, "b": 5}, EQUAL_SHARE, "labels") == pytest.approx(0.2)
    assert new_task_fraction(2, {"a": 3}, 0.25, "labels") == 0.25


def test_by_default_the_new_task_gets_the_samples_of_a_model_of_its_own(setup, tmp_path, monkeypatch):
    """Without --steps / --epochs, add-task trains DEFAULT_STEPS / (the new task's share) steps."""
    import lsseg_training.add_task as module

    root, data, base, _ = setup
    seen = []

    class Stop(Exception):
        pass

    def capture(plan, datasets, settings, *args, **kwargs):
        seen.append((settings.steps, settings.epochs))
        raise Stop  # the step count is all this test needs; no training

    monkeypatch.setattr(module, "train_task_model", capture)
    cases = [
        ({}, (DEFAULT_STEPS, None)),  # no replay: every sample is the new task's
        ({"replay": (data[0],)}, (2 * DEFAULT_STEPS, None)),  # equal share of two tasks
        ({"replay": (data[0],), "new_task_share": 0.25}, (4 * DEFAULT_STEPS, None)),
        ({"replay": (data[0],), "settings": TrainSettings(steps=7)}, (7, None)),  # asked for: kept
        ({"replay": (data[0],), "settings": TrainSettings(epochs=2)}, (None, 2)),
    ]
    for i, (options, expected) in enumerate(cases):
        with pytest.raises(Stop):
            module.add_task(AddTaskConfig(base, data[1], tmp_path / f"out{i}", **options))
        assert seen[-1] == expected

"""add-task: the old bundle stays byte-identical, the new task's placement follows the stored size table, too
many labels need --widen, --replay mixes old data in."""

from __future__ import annotations

import itertools
import math

import pytest
from train_helpers import TINY, lsseg, phantoms, tree_hashes

from LabelSharingSegLib.engine.bundle import load_bundle
from lsseg_training.datasets import read_dataset
from lsseg_training.planning import task_sizes


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

"""``--bundle-weights``: the bundle holds the best validation's weights (default) or the last step's, says which,
and a finished run can be bundled again with its other weights without training or touching its checkpoints."""

from __future__ import annotations

import pytest
import torch
from train_helpers import TINY, lsseg, phantoms, tree_hashes

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError
from lsseg_training.checkpoint import BEST, LAST, read_checkpoint
from lsseg_training.run_config import TrainSettings

STEPS = 6
# a learning rate so small that validation Dice never improves after the first validation (the best step is 1)
# while the weights still change every step, so the best and the last weights differ
RUN = ["--steps", STEPS, "--val-every", 1, "--lr", 1e-6, "--seed", 1, *TINY]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantoms(tmp_path_factory.mktemp("phantoms"), tasks=2, cases=5)


def _checkpoint_weights(path) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(path)
    return {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train(data, out, *extra) -> int:
    return lsseg("train", "labelsharing", "--data", *data, "--out", out, *RUN, *extra)


def test_bundle_holds_best_or_last_weights_and_says_which(tmp_path, data, capsys):
    best_out = tmp_path / "best"
    assert _train(data, best_out) == 0
    ckpt = tmp_path / "best.training"
    best, last = _checkpoint_weights(ckpt / BEST), _checkpoint_weights(ckpt / LAST)
    metrics = load_bundle(best_out).manifest.training
    assert metrics["metrics"]["best_step"] < STEPS and not _equal(best, last)  # the two choices differ
    assert _equal(load_bundle(best_out).state_dict, best)
    assert (metrics["weights"], metrics["weights_step"]) == ("best", metrics["metrics"]["best_step"])
    assert f"(the weights of step {metrics['metrics']['best_step']})" in capsys.readouterr().out

    # the same run from the start with --bundle-weights last: its bundle holds what the run ended with
    last_out = tmp_path / "last"
    assert _train(data, last_out, "--bundle-weights", "last") == 0
    assert _equal(load_bundle(last_out).state_dict, last)
    assert _equal(load_bundle(last_out).state_dict, _checkpoint_weights(tmp_path / "last.training" / LAST))
    manifest = load_bundle(last_out).manifest.training
    assert (manifest["weights"], manifest["weights_step"]) == ("last", STEPS)


def test_finished_run_bundled_again_with_its_other_weights(tmp_path, data, capsys):
    first = tmp_path / "first"
    assert _train(data, first) == 0
    ckpt = tmp_path / "first.training"
    checkpoints = {k: v for k, v in tree_hashes(ckpt).items() if k != "training_folder.json"}
    capsys.readouterr()

    again = tmp_path / "again"
    resume = ["--checkpoint-dir", ckpt, "--resume"]
    assert _train(data, again, *resume, "--bundle-weights", "last") == 0
    said = capsys.readouterr().out
    assert f"had finished {STEPS} steps; writing its bundle again (the weights of step {STEPS})" in said
    assert _equal(load_bundle(again).state_dict, _checkpoint_weights(ckpt / LAST))
    assert load_bundle(again).manifest.training["weights"] == "last"
    assert {
        k: v for k, v in tree_hashes(ckpt).items() if k != "training_folder.json"
    } == checkpoints  # no step
    assert _equal(load_bundle(first).state_dict, _checkpoint_weights(ckpt / BEST))  # the first bundle kept

    # asking for the weights the last bundle already holds is an extension without steps: refused, said why
    assert _train(data, tmp_path / "third", *resume, "--bundle-weights", "last") == 2
    err = capsys.readouterr().err
    assert f"already finished {STEPS} steps" in err and "--bundle-weights best" in err
    assert not (tmp_path / "third").exists()
    # and back to the best weights, into yet another bundle
    assert _train(data, tmp_path / "fourth", *resume) == 0
    assert _equal(load_bundle(tmp_path / "fourth").state_dict, _checkpoint_weights(ckpt / BEST))


def test_unknown_bundle_weights_refused(tmp_path, data, capsys):
    with pytest.raises(InputError, match="--bundle-weights must be one of best, last"):
        TrainSettings(bundle_weights="median")
    with pytest.raises(SystemExit):
        _train(data, tmp_path / "x", "--bundle-weights", "median")
    assert "invalid choice: 'median'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_without_validation_the_bundle_says_it_holds_the_last_weights(tmp_path, data):
    out = tmp_path / "noval"
    assert _train(data, out, "--val-fraction", 0) == 0
    training = load_bundle(out).manifest.training
    assert (training["weights"], training["weights_step"], training["metrics"]["best_step"]) == (
        "last",
        STEPS,
        -1,
    )
    assert _equal(load_bundle(out).state_dict, _checkpoint_weights(tmp_path / "noval.training" / LAST))

"""Losses stay on the device between read-backs (``--loss-sync-every``): the run is bit-identical to reading every
step, every step is still logged and reported once and in order, and a non-finite loss is refused before a
checkpoint or validation can keep its weights."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import TINY, log_losses, lsseg, phantoms, tree_hashes

from lsseg_training.api import run_training
from lsseg_training.checkpoint import LAST, read_checkpoint
from lsseg_training.methods import TaskMethod
from lsseg_training.run_config import TaskRunConfig, TrainSettings
from lsseg_training.trainer import TrainingError, TrainOptions, loss_sync_interval

STEPS = 9


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantoms(tmp_path_factory.mktemp("phantoms"), tasks=2, cases=3)


def _train(data, out, *extra):
    args = ["train", "labelsharing", "--data", *data, "--out", out, *TINY, "--steps", STEPS]
    return lsseg(*args, "--seed", 1, "--val-every", 4, "--checkpoint-every", 3, *extra)


def test_batched_read_back_changes_nothing(tmp_path, data):
    assert _train(data, tmp_path / "every") == 0
    assert _train(data, tmp_path / "batched", "--loss-sync-every", 5) == 0
    every, batched = tmp_path / "every.training", tmp_path / "batched.training"
    assert log_losses(batched) == log_losses(every)
    assert len(log_losses(batched)) == STEPS
    bundles = tree_hashes(tmp_path / "every"), tree_hashes(tmp_path / "batched")
    weights = [{k: v for k, v in b.items() if k.endswith(".safetensors")} for b in bundles]
    assert weights[0] and weights[0] == weights[1]


def test_on_step_sees_every_step_once_in_order(tmp_path, data):
    seen = []
    settings = TrainSettings(
        steps=STEPS, batch=2, channels=(4, 8, 16), device="cpu", quiet=True, loss_sync_every=4, val_every=5
    )
    config = TaskRunConfig("labelsharing", data=[*data], out=tmp_path / "ls", settings=settings)
    run_training(
        config, on_step=lambda event: seen.append((event.step, event.last, math.isfinite(event.loss)))
    )
    assert seen == [(step, step == STEPS, True) for step in range(1, STEPS + 1)]


def test_non_finite_loss_is_refused_before_the_checkpoint_keeps_it(tmp_path, data, monkeypatch, capsys):
    real_loss = TaskMethod.loss
    calls = []

    def loss_going_nan_at_step_5(self, model, batch, device):
        calls.append(1)
        value = real_loss(self, model, batch, device)
        return value * float("nan") if len(calls) == 5 else value

    monkeypatch.setattr(TaskMethod, "loss", loss_going_nan_at_step_5)
    assert _train(data, tmp_path / "nan", "--loss-sync-every", 8, "--val-fraction", 0) != 0
    assert "the loss became nan at step 5" in capsys.readouterr().err
    # the checkpoint of step 6 was never written: the last one on disk is step 3 with finite weights
    tensors, meta = read_checkpoint(tmp_path / "nan.training" / LAST)
    assert meta["state"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    assert not (tmp_path / "nan").exists()


def test_interval_is_automatic_per_device_and_checked():
    assert loss_sync_interval(TrainOptions(), torch.device("cpu")) == 1
    assert loss_sync_interval(TrainOptions(), torch.device("cuda")) == 16
    assert loss_sync_interval(TrainOptions(loss_sync_every=3), torch.device("cuda")) == 3
    with pytest.raises(TrainingError):
        loss_sync_interval(TrainOptions(loss_sync_every=-1), torch.device("cpu"))
    assert lsseg("train", "labelsharing", "--data", "x", "--out", "y", "--loss-sync-every", "-2") != 0

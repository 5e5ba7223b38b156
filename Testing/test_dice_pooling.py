"""What one soft Dice of the task methods pools over (``--dice-pooling``): an output channel across the batch, or one
label of one task across that task's samples, where tasks share channels (label sharing, DoD-Net)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from train_helpers import TINY, lsseg, phantoms

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.labels import LabelInfo, default_color
from LabelSharingSegLib.engine.manifest import TaskInfo
from LabelSharingSegLib.engine.network_config import UNetConfig
from LabelSharingSegLib.engine.preprocessing_config import Preprocessing
from lsseg_training.methods import TaskMethod
from lsseg_training.run_config import TrainSettings

SHAPE = (12, 12)


def _task(name: str, index: int, channels: dict[int, int]) -> TaskInfo:
    labels = tuple(LabelInfo(v, f"{name}_{v}", default_color(v)) for v in channels)
    return TaskInfo(name, index, labels, channels)


class FixedLogits(torch.nn.Module):
    """Returns the logits it was given: the loss alone is under test."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits


def _method(tasks: list[TaskInfo], out_channels: int, pooling: str, kind: str = "labelsharing") -> TaskMethod:
    config = UNetConfig(spatial_dims=2, channels=(4, 8), out_channels=out_channels)
    prep = Preprocessing(spatial_dims=2, spacing=(1.0, 1.0), patch_size=SHAPE)
    return TaskMethod(kind, tasks, config, prep, dice_pooling=pooling)


def _batch(tasks: list[int], out_channels: int, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """Task 0 has a thin label on channel 1, task 1 a large one on the same channel."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.zeros((len(tasks), *SHAPE), dtype=torch.int64)
    for i, task in enumerate(tasks):
        if task == 0:
            target[i, 5, 2:10] = 1  # a thin line
            target[i, 8:10, 8:10] = 2
        else:
            target[i, 1:11, 1:11] = 1  # most of the patch
    logits = torch.randn((len(tasks), out_channels, *SHAPE), generator=generator)
    batch = {"image": torch.zeros((len(tasks), 1, *SHAPE)), "target": target, "task": torch.tensor(tasks)}
    return batch, logits


def _masked(method: TaskMethod, logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """The logits with other tasks' channels masked, as the loss sees them."""
    allowed = method.channel_masks[batch["task"]].view(*logits.shape[:2], 1, 1)
    return logits.masked_fill(~allowed, -1.0e4)


def test_pooling_by_task_gives_each_task_the_dice_loss_of_its_own_model():
    tasks = [_task("thin", 0, {1: 1, 2: 2}), _task("large", 1, {1: 1})]
    order = [0, 1, 0, 0]
    batch, logits = _batch(order, 3)
    loss = _method(tasks, 3, "task").loss(FixedLogits(logits), batch, torch.device("cpu"))
    channel = _method(tasks, 3, "channel").loss(FixedLogits(logits), batch, torch.device("cpu"))
    # the same batch, each task's samples scored by a method that holds that task only (channel pooling)
    expected = 0.0
    for index, task in enumerate(tasks):
        rows = [i for i, t in enumerate(order) if t == index]
        alone = {
            "image": batch["image"][rows],
            "target": batch["target"][rows],
            "task": torch.zeros(len(rows), dtype=torch.int64),
        }
        own = _method([_task(task.name, 0, task.channels)], 3, "channel")
        own_loss = own.loss(FixedLogits(logits[rows]), alone, torch.device("cpu"))
        own_ce = F.cross_entropy(_masked(own, logits[rows], alone), alone["target"])
        expected += len(rows) / len(order) * float(own_loss - own_ce)
    ce = float(loss) - expected
    masked = _masked(_method(tasks, 3, "channel"), logits, batch)
    assert ce == pytest.approx(float(F.cross_entropy(masked, batch["target"])), abs=1e-5)
    # pooled by channel, the large label decided channel 1
    assert float(loss) != pytest.approx(float(channel), abs=1e-3)


def test_pooling_by_task_weighs_a_thin_label_as_its_own_model_does():
    """One good and one bad prediction of the shared channel: pooled by channel the large label hides the thin
    label's failure, pooled by task it counts as much as the large label's success."""
    tasks = [_task("thin", 0, {1: 1}), _task("large", 1, {1: 1})]
    batch, _ = _batch([0, 1], 2)
    batch["target"][batch["target"] == 2] = 0  # the thin line only
    logits = F.one_hot(batch["target"], 2).movedim(-1, 1).float() * 20.0  # right everywhere
    logits[0, 0], logits[0, 1] = 20.0, 0.0  # except the thin line: predicted as background
    by_channel = _method(tasks, 2, "channel").loss(FixedLogits(logits), batch, torch.device("cpu"))
    by_task = _method(tasks, 2, "task").loss(FixedLogits(logits), batch, torch.device("cpu"))
    ce = F.cross_entropy(logits, batch["target"])
    assert float(by_channel - ce) < 0.05  # the large label's perfect Dice: (2 * 100 + 1) / (8 + 200 + 1)
    # each task's mean: the thin line's (8 voxels) Dice (0 + 1) / (8 + 1), the large label's 1
    assert float(by_task - ce) == pytest.approx((1 - 1 / 9) / 2, abs=1e-4)


@pytest.mark.parametrize("kind", ["multichannel", "individual"])
def test_pooling_by_task_changes_nothing_where_no_channel_is_shared(kind):
    if kind == "multichannel":  # task b's label takes a channel of its own
        tasks, out, order = [_task("thin", 0, {1: 1, 2: 2}), _task("large", 1, {1: 3})], 4, [0, 1, 1, 0]
    else:
        tasks, out, order = [_task("thin", 0, {1: 1, 2: 2})], 3, [0, 0]
    batch, logits = _batch(order, out, seed=3)
    for i, task in enumerate(order):
        if task == 1:
            batch["target"][i][batch["target"][i] > 0] = 3
    losses = [
        _method(tasks, out, pooling, kind).loss(FixedLogits(logits), batch, torch.device("cpu"))
        for pooling in ("channel", "task")
    ]
    assert torch.equal(losses[0], losses[1])


def test_unknown_pooling_is_refused():
    with pytest.raises(InputError, match="dice pooling must be one of task, channel"):
        _method([_task("a", 0, {1: 1})], 2, "sample")
    with pytest.raises(InputError, match="--dice-pooling must be one of task, channel"):
        TrainSettings(dice_pooling="sample")


def test_label_sharing_pools_by_task_by_default_and_records_it(tmp_path, capsys):
    data = phantoms(tmp_path / "phantoms")
    train = ["train", "labelsharing", "--data", *data]
    assert lsseg(*train, "--out", tmp_path / "ls", "--steps", 2, *TINY) == 0
    assert load_bundle(tmp_path / "ls").manifest.training["dice_pooling"] == "task"
    # by channel, as before the option: nothing recorded, so checkpoints of that time resume with it
    assert lsseg(*train, "--out", tmp_path / "old", "--steps", 2, "--dice-pooling", "channel", *TINY) == 0
    assert "dice_pooling" not in load_bundle(tmp_path / "old").manifest.training
    capsys.readouterr()
    resume = ["--resume", "--checkpoint-dir", tmp_path / "old.training", "--steps", 3, *TINY]
    assert lsseg(*train, "--out", tmp_path / "old3", *resume) != 0  # the loss is part of the run
    assert "resume it with --dice-pooling channel" in capsys.readouterr().err
    assert lsseg(*train, "--out", tmp_path / "old3", "--dice-pooling", "channel", *resume) == 0
    assert load_bundle(tmp_path / "old3").manifest.training["steps"] == 3


def test_methods_without_shared_channels_record_no_pooling(tmp_path):
    """Their loss is the same either way, so their runs (and checkpoints from before the option) are unchanged."""
    data = phantoms(tmp_path / "phantoms")
    out = tmp_path / "mc"
    assert lsseg("train", "multichannel", "--data", *data, "--out", out, "--steps", 2, *TINY) == 0
    assert "dice_pooling" not in load_bundle(out).manifest.training
    config = (tmp_path / "mc.training" / "config.json").read_text()
    assert "dice_pooling" not in config


def test_lcs_refuses_pooling_by_task(tmp_path, capsys):
    data = phantoms(tmp_path / "phantoms")
    out = tmp_path / "lcs"
    command = ["train", "lcs", "--data", data[0], "--out", out, "--steps", 1, "--dice-pooling", "task"]
    assert lsseg(*command, *TINY) != 0
    assert "--dice-pooling are options of task training, not lcs" in capsys.readouterr().err
    assert not out.exists()

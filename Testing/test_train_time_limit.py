"""--time-limit stops the loop cleanly: one more validation, best weights kept, checkpoint and bundle written, the
summary names the step; every train command and add-task accept the option."""

from __future__ import annotations

import csv

import pytest
from train_helpers import TINY, lsseg, lsseg_hooked, phantoms

from LabelSharingSegLib.engine.bundle import load_bundle
from lsseg_training.checkpoint import BEST, LAST, read_checkpoint
from lsseg_training.cli import build_parser


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantoms(tmp_path_factory.mktemp("phantoms"), tasks=2, cases=3)


def test_time_limit_stops_cleanly_and_writes_the_bundle(tmp_path, data, capsys):
    out = tmp_path / "timed"
    # 0.02 min = 1.2 s of loop time at >= 0.3 s per step: a few steps of 500
    assert (
        lsseg_hooked(
            "train",
            "labelsharing",
            "--data",
            *data,
            "--out",
            out,
            "--steps",
            500,
            "--time-limit",
            "0.02",
            "--checkpoint-every",
            1000,
            *TINY,
            sleep_per_step=0.3,
        )
        == 0
    )
    stdout = capsys.readouterr().out
    training = load_bundle(out).manifest.training
    stopped = training["steps"]
    assert 1 <= stopped < 50
    assert f"Time limit (0.02 min) reached: stopped at step {stopped} of 500" in stdout
    assert training["stopped_by"] == "time_limit" and training["planned_steps"] == 500
    assert training["time_limit_min"] == pytest.approx(0.02)
    ckpt = tmp_path / "timed.training"
    assert (
        read_checkpoint(ckpt / LAST)[1]["state"]["step"] == stopped
    )  # written although not a checkpoint step
    with open(ckpt / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, stopped + 1))
    assert rows[-1]["val_dice"] != ""  # validated once more at the stop (the regular interval is 50 steps)
    best = read_checkpoint(ckpt / BEST)[1]["state"]
    assert training["metrics"]["best_step"] == best["step"] <= stopped


def test_no_time_limit_message_when_steps_finish_first(tmp_path, data, capsys):
    out = tmp_path / "quick"
    assert (
        lsseg(
            "train",
            "multichannel",
            "--data",
            data[0],
            "--out",
            out,
            "--steps",
            2,
            "--time-limit",
            "10",
            *TINY,
        )
        == 0
    )
    assert "Time limit" not in capsys.readouterr().out
    training = load_bundle(out).manifest.training
    assert training["steps"] == 2 and training["stopped_by"] == "steps"


@pytest.mark.parametrize(
    "command",
    [
        ["train", "labelsharing"],
        ["train", "individual"],
        ["train", "multichannel"],
        ["train", "dodnet"],
        ["train", "lcs"],
        ["add-task", "old_bundle"],
    ],
)
def test_every_train_command_accepts_time_limit(command):
    data = ["--data", "d"] if command[0] == "add-task" or command[1] == "lcs" else ["--data", "d1", "d2"]
    args = build_parser().parse_args([*command, *data, "--out", "o", "--steps", "9", "--time-limit", "1.5"])
    assert args.time_limit == 1.5 and args.steps == 9
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, *data, "--out", "o", "--time-limit", bad])

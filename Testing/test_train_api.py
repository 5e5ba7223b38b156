"""The typed training API: run configurations are checked when made, runs call ``on_step`` after every step on
every rank, return the bundles they wrote, and never change the configuration they were given."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from train_helpers import phantoms

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError
from lsseg_training.api import TaskRunConfig, TrainSettings, run_training
from lsseg_training.cli import build_parser
from lsseg_training.train_cli import config_from_args

TINY = TrainSettings(steps=2, channels=(4, 8, 16), device="cpu", quiet=True, val_fraction=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantoms(tmp_path_factory.mktemp("phantoms"), tasks=2, cases=3)


def test_individual_run_reports_steps_and_leaves_its_config_alone(tmp_path, data):
    config = TaskRunConfig(
        "individual", tuple(data), tmp_path / "ind", dataclasses.replace(TINY, resume=False)
    )
    before = dataclasses.asdict(config)
    events = []
    trained = run_training(config, on_step=events.append)
    assert dataclasses.asdict(config) == before  # the per-task settings are copies
    assert [b.out for b in trained] == [tmp_path / "ind" / "Phantom0", tmp_path / "ind" / "Phantom1"]
    assert [(e.step, e.last, e.rank) for e in events] == [(1, False, 0), (2, True, 0)] * 2
    assert all(load_bundle(b.out).task_names() == [b.out.name] for b in trained)
    assert trained[1].checkpoint_dir == tmp_path / "ind.training" / "Phantom1"


def test_settings_are_checked_when_made():
    with pytest.raises(InputError, match="--lr must be a positive finite number"):
        TrainSettings(lr=float("nan"))
    with pytest.raises(InputError, match="unknown task method"):
        TaskRunConfig("lcs", (Path("d"),), Path("o"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        TINY.steps = 3  # type: ignore[misc]


def test_command_line_gives_the_same_configuration_as_the_api():
    args = build_parser().parse_args(
        ["train", "labelsharing", "--data", "a", "b", "--out", "o", "--steps", "2", "--channels", "4,8,16"]
        + ["--device", "cpu", "--quiet", "--val-fraction", "0", "--time-limit", "1.5", "--no-augment"]
    )
    expected = dataclasses.replace(TINY, time_limit_min=1.5, augment=False)
    assert config_from_args(args) == TaskRunConfig(
        "labelsharing", (Path("a"), Path("b")), Path("o"), expected
    )

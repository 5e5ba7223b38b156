"""A run killed with SIGKILL resumes exactly from its last checkpoint; checkpoints are never half-written;
resuming another configuration is refused; Ctrl-C stops cleanly with a checkpoint; --resume with a larger
--steps extends a finished run (and recomputes the lr schedule) but still refuses changed semantics."""

from __future__ import annotations

import csv
import signal
import time

import pytest
import torch
from train_helpers import TINY, lsseg, lsseg_process, phantoms, tree_hashes

from LabelSharingSegLib.engine.bundle import load_bundle
from lsseg_training.checkpoint import LAST, read_checkpoint, save_checkpoint
from lsseg_training.trainer import TrainOptions, learning_rate

STEPS = 10
COMMON = ["--steps", STEPS, "--checkpoint-every", 2, "--val-fraction", 0, "--seed", 3]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantoms(tmp_path_factory.mktemp("phantoms"), tasks=2, cases=3)


def _wait_for_checkpoint(path, proc, min_step, timeout=60.0):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before it could be killed: {proc.communicate()}")
        if path.is_file():
            try:
                _, meta = read_checkpoint(path)
                if meta["state"]["step"] >= min_step:
                    return meta["state"]["step"]
            except Exception:
                pass  # a reader racing the rename: retry
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, data):
    reference = tmp_path / "reference"
    assert lsseg("train", "labelsharing", "--data", *data, "--out", reference, *COMMON, *TINY) == 0

    killed = tmp_path / "killed"
    proc = lsseg_process(
        "train", "labelsharing", "--data", *data, "--out", killed, *COMMON, *TINY, sleep_per_step=0.4
    )
    ckpt = tmp_path / "killed.training" / LAST
    step = _wait_for_checkpoint(ckpt, proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists()
    _, meta = read_checkpoint(ckpt)  # the surviving checkpoint is complete and readable
    assert 2 <= meta["state"]["step"] < STEPS and meta["state"]["step"] >= step

    assert lsseg("train", "labelsharing", "--data", *data, "--out", killed, *COMMON, *TINY, "--resume") == 0
    a, b = load_bundle(reference).state_dict, load_bundle(killed).state_dict
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = (tmp_path / "killed.training" / "log.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, STEPS + 1))


def test_resume_of_other_config_or_method_refused(tmp_path, data, capsys):
    first = tmp_path / "first"
    ckpt_dir = tmp_path / "ck"
    assert (
        lsseg(
            "train",
            "labelsharing",
            "--data",
            *data,
            "--out",
            first,
            "--steps",
            2,
            "--checkpoint-dir",
            ckpt_dir,
            *TINY,
        )
        == 0
    )
    capsys.readouterr()
    assert (
        lsseg(
            "train",
            "labelsharing",
            "--data",
            *data,
            "--out",
            tmp_path / "b",
            "--steps",
            4,
            "--lr",
            "0.01",
            "--checkpoint-dir",
            ckpt_dir,
            "--resume",
            *TINY,
        )
        == 2
    )
    assert "different training run" in capsys.readouterr().err
    assert (
        lsseg(
            "train",
            "multichannel",
            "--data",
            *data,
            "--out",
            tmp_path / "c",
            "--steps",
            4,
            "--checkpoint-dir",
            ckpt_dir,
            "--resume",
            *TINY,
        )
        == 2
    )
    assert "different training run" in capsys.readouterr().err
    # without --resume an existing checkpoint is not silently overwritten
    assert (
        lsseg(
            "train",
            "labelsharing",
            "--data",
            *data,
            "--out",
            tmp_path / "d",
            "--steps",
            2,
            "--checkpoint-dir",
            ckpt_dir,
            *TINY,
        )
        == 2
    )
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change", [["--labels-per-image", "2"], ["--conditioning", "bottleneck"], ["--loss", "dice-bce"]]
)
def test_resume_of_lcs_with_another_variant_refused(tmp_path, data, capsys, change):
    """An LCS variant option changes what is trained, so a checkpoint of the default LCS is not resumed with it."""
    ckpt_dir = tmp_path / "ck"
    common = ["train", "lcs", "--data", data[0], "--checkpoint-dir", ckpt_dir, *TINY]
    assert lsseg(*common, "--out", tmp_path / "a", "--steps", 2) == 0
    capsys.readouterr()
    assert lsseg(*common, "--out", tmp_path / "b", "--steps", 4, "--resume", *change) == 2
    assert "different training run" in capsys.readouterr().err


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    import safetensors.torch

    model = torch.nn.Linear(3, 2)
    path = tmp_path / LAST
    save_checkpoint(path, model, None, {"step": 4}, "fp")
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 17)  # half a file
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError):
        save_checkpoint(path, model, None, {"step": 6}, "fp")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [LAST]
    assert read_checkpoint(path)[1]["state"]["step"] == 4


def test_ctrl_c_stops_cleanly_with_checkpoint(tmp_path, data):
    out = tmp_path / "interrupted"
    proc = lsseg_process(
        "train",
        "labelsharing",
        "--data",
        *data,
        "--out",
        out,
        "--steps",
        200,
        "--checkpoint-every",
        1000,
        "--val-fraction",
        0,
        *TINY,
        sleep_per_step=0.2,
    )
    log = tmp_path / "interrupted.training" / "log.csv"
    start = time.time()
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() - start < 240, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted at step" in stdout and "--resume" in stdout
    _, meta = read_checkpoint(tmp_path / "interrupted.training" / LAST)
    assert 2 <= meta["state"]["step"] < 200
    assert not out.exists()


def test_resume_extends_a_finished_run_to_more_steps(tmp_path, data, capsys):
    base = ["--checkpoint-every", 2, "--val-fraction", 0, "--seed", 3, "--schedule", "constant", *TINY]
    straight = tmp_path / "straight"
    assert lsseg("train", "labelsharing", "--data", *data, "--out", straight, "--steps", 5, *base) == 0
    first = tmp_path / "first"
    assert lsseg("train", "labelsharing", "--data", *data, "--out", first, "--steps", 3, *base) == 0
    first_files = tree_hashes(first)
    capsys.readouterr()
    # the finished bundle is never overwritten; the error says how to extend into a new one
    assert (
        lsseg("train", "labelsharing", "--data", *data, "--out", first, "--steps", 5, "--resume", *base) == 2
    )
    err = capsys.readouterr().err
    assert "already exists" in err and "--checkpoint-dir" in err and "first.training" in err

    extended = tmp_path / "extended"
    ckpt = tmp_path / "first.training"
    assert (
        lsseg(
            "train",
            "labelsharing",
            "--data",
            *data,
            "--out",
            extended,
            "--steps",
            5,
            "--checkpoint-dir",
            ckpt,
            "--resume",
            *base,
        )
        == 0
    )
    a, b = load_bundle(straight).state_dict, load_bundle(extended).state_dict
    for key in a:  # 3 steps + 2 more steps == 5 steps in one go
        assert torch.equal(a[key], b[key]), key
    assert load_bundle(extended).manifest.training["steps"] == 5
    assert read_checkpoint(ckpt / LAST)[1]["state"]["step"] == 5
    rows = (ckpt / "log.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4, 5]
    assert tree_hashes(first) == first_files
    capsys.readouterr()

    # as many steps as already trained: nothing to do, said so
    assert (
        lsseg(
            "train",
            "labelsharing",
            "--data",
            *data,
            "--out",
            tmp_path / "x",
            "--steps",
            5,
            "--checkpoint-dir",
            ckpt,
            "--resume",
            *base,
        )
        == 2
    )
    assert "already finished 5 steps" in capsys.readouterr().err
    # more steps do not excuse a change of the run's semantics
    for changed in (["--batch", "1"], ["--lr", "0.002"], ["--seed", "4"], ["--channels", "4,8,8"]):
        assert (
            lsseg(
                "train",
                "labelsharing",
                "--data",
                *data,
                "--out",
                tmp_path / "y",
                "--steps",
                8,
                "--checkpoint-dir",
                ckpt,
                "--resume",
                *base,
                *changed,
            )
            == 2
        )
        err = capsys.readouterr().err
        assert "different training run" in err, changed
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_extended_run_recomputes_the_lr_schedule(tmp_path, data):
    base = ["--val-fraction", 0, "--lr", "0.001", "--schedule", "cosine", *TINY]
    ckpt = tmp_path / "ck"
    assert (
        lsseg(
            "train",
            "multichannel",
            "--data",
            data[0],
            "--out",
            tmp_path / "a",
            "--steps",
            2,
            "--checkpoint-dir",
            ckpt,
            *base,
        )
        == 0
    )
    assert (
        lsseg(
            "train",
            "multichannel",
            "--data",
            data[0],
            "--out",
            tmp_path / "b",
            "--steps",
            4,
            "--checkpoint-dir",
            ckpt,
            "--resume",
            *base,
        )
        == 0
    )
    with open(ckpt / "log.csv", newline="") as handle:
        lrs = [float(r["lr"]) for r in csv.DictReader(handle)]
    old, new = TrainOptions(steps=2, lr=1e-3), TrainOptions(steps=4, lr=1e-3)
    expected = [learning_rate(old, 0), learning_rate(old, 1), learning_rate(new, 2), learning_rate(new, 3)]
    assert lrs == pytest.approx(expected, rel=1e-5)
    assert lrs[2] > 0 and learning_rate(old, 2) == 0.0  # the old 2-step schedule would have ended at 0


def test_individual_killed_between_tasks_resumes_and_skips_finished_ones(tmp_path, data, capsys):
    out = tmp_path / "individual"
    common = ["--steps", 6, "--checkpoint-every", 2, "--val-fraction", 0, "--seed", 3, *TINY]
    proc = lsseg_process("train", "individual", "--data", *data, "--out", out, *common, sleep_per_step=0.4)
    second = tmp_path / "individual.training" / "Phantom1" / LAST
    _wait_for_checkpoint(second, proc, 2, timeout=120.0)  # the first task is done, the second under way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "Phantom0" / "bundle.json").is_file() and not (out / "Phantom1").exists()
    first = tree_hashes(out / "Phantom0")
    capsys.readouterr()
    assert lsseg("train", "individual", "--data", *data, "--out", out, *common, "--resume") == 0
    assert "Phantom0: already trained" in capsys.readouterr().out
    assert tree_hashes(out / "Phantom0") == first  # the finished task is left as it was
    assert load_bundle(out / "Phantom1").task_names() == ["Phantom1"]
    rows = (tmp_path / "individual.training" / "Phantom1" / "log.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 7))


@pytest.mark.parametrize(
    "method,earlier_default,hint",
    [
        ("lcs", ["--conditioning", "bottleneck"], "resume it with --conditioning bottleneck"),
        ("labelsharing", ["--head", "linear"], "resume it with --head linear"),
    ],
)
def test_a_run_of_an_earlier_default_is_told_how_to_resume(
    tmp_path, data, capsys, method, earlier_default, hint
):
    """Runs checkpointed before a default changed are refused on resume with the option that restores it."""
    ckpt_dir = tmp_path / "ck"
    sources = [data[0]] if method == "lcs" else data
    common = ["train", method, "--data", *sources, "--checkpoint-dir", ckpt_dir, *TINY]
    assert lsseg(*common, *earlier_default, "--out", tmp_path / "a", "--steps", 2) == 0
    capsys.readouterr()
    assert lsseg(*common, "--out", tmp_path / "b", "--steps", 4, "--resume") == 2
    assert hint in capsys.readouterr().err
    assert lsseg(*common, *earlier_default, "--out", tmp_path / "b", "--steps", 4, "--resume") == 0

"""A run killed with SIGKILL resumes exactly from its last checkpoint; checkpoints are never half-written;
resuming another configuration is refused; Ctrl-C stops cleanly with a checkpoint."""

from __future__ import annotations

import signal
import time

import pytest
import torch

from LabelSharingSegLib.engine.bundle import load_bundle
from lsseg_training.checkpoint import LAST, read_checkpoint, save_checkpoint
from train_helpers import TINY, lsseg, lsseg_process, phantoms

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
    proc = lsseg_process("train", "labelsharing", "--data", *data, "--out", killed, *COMMON, *TINY,
                         "--sleep-per-step", "0.4")
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
    assert lsseg("train", "labelsharing", "--data", *data, "--out", first, "--steps", 2,
                 "--checkpoint-dir", ckpt_dir, *TINY) == 0
    capsys.readouterr()
    assert lsseg("train", "labelsharing", "--data", *data, "--out", tmp_path / "b", "--steps", 4, "--lr", "0.01",
                 "--checkpoint-dir", ckpt_dir, "--resume", *TINY) == 2
    assert "different training run" in capsys.readouterr().err
    assert lsseg("train", "multichannel", "--data", *data, "--out", tmp_path / "c", "--steps", 4,
                 "--checkpoint-dir", ckpt_dir, "--resume", *TINY) == 2
    assert "different training run" in capsys.readouterr().err
    # without --resume an existing checkpoint is not silently overwritten
    assert lsseg("train", "labelsharing", "--data", *data, "--out", tmp_path / "d", "--steps", 2,
                 "--checkpoint-dir", ckpt_dir, *TINY) == 2
    assert "--resume" in capsys.readouterr().err


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
    proc = lsseg_process("train", "labelsharing", "--data", *data, "--out", out, "--steps", 200,
                         "--checkpoint-every", 1000, "--val-fraction", 0, *TINY, "--sleep-per-step", "0.2")
    log = tmp_path / "interrupted.training" / "log.csv"
    start = time.time()
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() - start < 60, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted at step" in stdout and "--resume" in stdout
    _, meta = read_checkpoint(tmp_path / "interrupted.training" / LAST)
    assert 2 <= meta["state"]["step"] < 200
    assert not out.exists()

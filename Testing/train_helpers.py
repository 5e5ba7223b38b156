"""Shared helpers of the training tests (tiny phantoms, running the CLI in- and out-of-process)."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from lsseg_training.cli import main

TINY = ["--channels", "4,8,16", "--device", "cpu", "--quiet", "--batch", "2"]


def phantoms(root: Path, tasks: int = 2, dims: int = 2, size: int = 32, cases: int = 5, test_cases: int = 1):
    from lsseg_training.data.phantom import make_phantom_tasks

    return make_phantom_tasks(
        root, tasks=tasks, dims=dims, size=size, cases=cases, test_cases=test_cases, seed=0
    )


def lsseg(*args) -> int:
    return main([str(a) for a in args])


def log_losses(checkpoint_dir: Path) -> list[float]:
    with open(checkpoint_dir / "log.csv", newline="") as handle:
        return [float(r["loss"]) for r in csv.DictReader(handle)]


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def weights_hash(model) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def step_hooks(sleep_per_step: float = 0.0, weights_hash_dir: Path | None = None):
    """An ``on_step`` callback that slows a run down (so a test can kill it mid-way) and, at the last step,
    writes each rank's weights hash to ``weights_hash_dir/rank{N}.sha256``."""
    import time

    def on_step(event) -> None:
        if sleep_per_step:
            time.sleep(sleep_per_step)
        if event.last and weights_hash_dir is not None:
            Path(weights_hash_dir).mkdir(parents=True, exist_ok=True)
            (Path(weights_hash_dir) / f"rank{event.rank}.sha256").write_text(weights_hash(event.model) + "\n")

    return on_step


def lsseg_hooked(*args, sleep_per_step: float = 0.0, weights_hash_dir: Path | None = None) -> int:
    """``lsseg train ...`` / ``lsseg add-task ...`` in this process, through the API with test hooks."""
    from lsseg_training.cli import build_parser, exit_code
    from lsseg_training.train_cli import config_from_args, run_config

    parsed = build_parser().parse_args([str(a) for a in args])
    hooks = step_hooks(sleep_per_step, weights_hash_dir)
    return exit_code(lambda: run_config(config_from_args(parsed), hooks), parsed.debug)


HOOKED_SCRIPT = Path(__file__).with_name("hooked_lsseg.py")


def lsseg_process(*args, env=None, sleep_per_step: float = 0.0, **kwargs) -> subprocess.Popen:
    """``lsseg`` in a child process; with ``sleep_per_step`` through ``hooked_lsseg.py`` (slowed down)."""
    full_env = dict(os.environ, **(env or {}))
    if sleep_per_step:
        command = [sys.executable, str(HOOKED_SCRIPT), "--sleep-per-step", str(sleep_per_step), "--"]
    else:
        command = [sys.executable, "-m", "lsseg_training.cli"]
    return subprocess.Popen(
        [*command, *[str(a) for a in args]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        # a shell's background job ignores SIGINT and children inherit that: tests that send Ctrl-C need it back
        preexec_fn=_default_sigint,
        **kwargs,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def record_training(monkeypatch) -> dict:
    """Patch training so the dict returned holds what the trainer was last handed: the method (its items) and the
    validation items (``monkeypatch``: pytest's fixture or a ``pytest.MonkeyPatch``)."""
    import lsseg_training.run_session as run_session

    seen: dict = {}
    real_train = run_session.train

    def recording_train(method, model, val_items, options, ctx, *args, **kwargs):
        seen["method"], seen["val_items"] = method, val_items
        return real_train(method, model, val_items, options, ctx, *args, **kwargs)

    monkeypatch.setattr(run_session, "train", recording_train)
    return seen

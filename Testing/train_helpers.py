"""Shared helpers of the training tests (tiny phantoms, running the CLI in- and out-of-process)."""

from __future__ import annotations

import csv
import hashlib
import os
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


def lsseg_process(*args, env=None, **kwargs) -> subprocess.Popen:
    full_env = dict(os.environ, **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "lsseg_training.cli", *[str(a) for a in args]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        **kwargs,
    )


def log_losses(checkpoint_dir: Path) -> list[float]:
    with open(checkpoint_dir / "log.csv", newline="") as handle:
        return [float(r["loss"]) for r in csv.DictReader(handle)]


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }

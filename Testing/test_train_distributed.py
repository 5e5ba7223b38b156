"""A real 2-process torchrun (gloo, CPU) run, stopped by --time-limit, ends with identical weights on both ranks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from train_helpers import HOOKED_SCRIPT, TINY, phantoms

from LabelSharingSegLib.engine.bundle import load_bundle


def test_torchrun_two_processes_gloo(tmp_path):
    data = phantoms(tmp_path / "data", tasks=2, cases=3)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    hashes = tmp_path / "hashes"
    out = tmp_path / "ddp"
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HOOKED_SCRIPT),
        "--sleep-per-step",
        "0.2",
        "--weights-hash-dir",
        str(hashes),
        "--",
        "train",
        "labelsharing",
        "--data",
        *map(str, data),
        "--out",
        str(out),
        "--steps",
        "400",
        "--time-limit",
        "0.02",
        *TINY,
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = (hashes / "rank0.sha256").read_text()
    rank1 = (hashes / "rank1.sha256").read_text()
    assert len(rank0.strip()) == 64 and rank0 == rank1
    bundle = load_bundle(out)
    assert bundle.manifest.training["world_size"] == 2
    # the time limit stopped both ranks at the same step (rank 0 decides and broadcasts): equal weights above
    steps = bundle.manifest.training["steps"]
    assert 1 <= steps < 400 and f"stopped at step {steps} of 400" in result.stdout
    assert result.stdout.count("Bundle:") == 1  # only rank 0 reports and writes

"""What a training run measures about its own speed: step time, the share of it spent waiting for the next
batch, samples per second, peak memory and GPU utilisation. Written by rank 0 to ``throughput.json`` in the
checkpoint folder at the end of the loop (``lsseg bench train`` reads it)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from LabelSharingSegLib.engine.atomic import write_text_atomic

THROUGHPUT_FILE = "throughput.json"
SAMPLE_EVERY_S = 0.5  # utilisation / memory are polled at most this often


def gpu_utilisation(device: torch.device) -> float | None:
    """Percent of the last sample period the GPU was busy (NVML through torch), None where unavailable."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # no NVML (pynvml) or not supported on this GPU
        return None


def resident_mb() -> float | None:
    """This process's resident memory now, in MiB (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class ThroughputMeter:
    """Sums step and data-wait time; the first ``warmup`` steps (allocation, autotuning) are not counted."""

    def __init__(self, device: torch.device, warmup: int = 0):
        self.device = device
        self.warmup = warmup
        self.steps = 0
        self.step_s = 0.0
        self.data_s = 0.0
        self.util: list[float] = []
        self.peak_rss: float | None = None
        self._last_poll = 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.poll(force=True)

    def add(self, step_seconds: float, data_seconds: float) -> None:
        if self.warmup > 0:
            self.warmup -= 1
            return
        self.steps += 1
        self.step_s += step_seconds
        self.data_s += data_seconds
        self.poll()

    def poll(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_poll < SAMPLE_EVERY_S:
            return
        self._last_poll = now
        util = gpu_utilisation(self.device)
        if util is not None:
            self.util.append(util)
        rss = resident_mb()
        if rss is not None:
            self.peak_rss = rss if self.peak_rss is None else max(self.peak_rss, rss)

    def summary(self, samples_per_step: int) -> dict:
        self.poll(force=True)
        if self.device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_max_allocated"
        else:
            peak, kind = self.peak_rss, "process_resident"
        step_s = max(self.step_s, 1e-9)
        return {
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "steps": self.steps,
            "samples_per_step": samples_per_step,
            "step_seconds": round(self.step_s, 4),
            "data_seconds": round(self.data_s, 4),
            "steps_per_s": round(self.steps / step_s, 4),
            "samples_per_s": round(self.steps * samples_per_step / step_s, 4),
            "data_wait_share": round(self.data_s / step_s, 4),
            "peak_memory_mb": None if peak is None else round(peak, 1),
            "peak_memory_kind": kind,
            "gpu_utilisation": round(sum(self.util) / len(self.util), 1) if self.util else None,
            "threads": torch.get_num_threads(),
        }

    def write(self, folder: Path, samples_per_step: int, extra: dict | None = None) -> dict:
        result = {**self.summary(samples_per_step), **(extra or {})}
        write_text_atomic(Path(folder) / THROUGHPUT_FILE, json.dumps(result, indent=2) + "\n")
        return result

"""Threads per training process: the cores this process may use (its CPU affinity) shared by the processes of
this node (``torchrun``'s ``LOCAL_WORLD_SIZE``), so parallel runs and ranks do not oversubscribe the cores.

``--threads N`` or the environment variable ``LSSEG_THREADS`` override the computed value. Outside ``torchrun``
an ``OMP_NUM_THREADS`` set by the user is honoured too (``torchrun`` sets it to 1 for every rank by itself, which
would leave cores idle, so under ``torchrun`` the division above is used instead).
"""

from __future__ import annotations

import os

import torch

from LabelSharingSegLib.engine.errors import InputError

THREADS_ENV = "LSSEG_THREADS"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_process(override: int | None = None) -> int:
    """``override``, else ``$LSSEG_THREADS``, else ``$OMP_NUM_THREADS`` (not under torchrun), else the available
    cores divided by the local processes."""
    if override is None and os.environ.get(THREADS_ENV, "").strip():
        text = os.environ[THREADS_ENV].strip()
        try:
            override = int(text)
        except ValueError:
            raise InputError(f"{THREADS_ENV}={text!r}: expected a positive whole number of threads") from None
    if override is None and "LOCAL_WORLD_SIZE" not in os.environ:
        try:
            omp = int(os.environ.get("OMP_NUM_THREADS", ""))
        except ValueError:
            omp = 0
        override = omp if omp >= 1 else None
    if override is not None:
        if override < 1:
            raise InputError(f"the number of threads must be at least 1, got {override}")
        return int(override)
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or "1"
    try:
        processes = max(1, int(local))
    except ValueError:
        processes = 1
    return max(1, available_cores() // processes)


def configure_threads(override: int | None = None) -> int:
    """Set torch's intra-op threads and SimpleITK's default thread count for this process; returns the number
    set. SimpleITK (the registrations training pairs and evaluation run) sizes its pool from the cores, not from
    ``OMP_NUM_THREADS``, so without this a capped run still registers on every core."""
    threads = threads_per_process(override)
    torch.set_num_threads(threads)
    try:
        import SimpleITK as sitk
    except ModuleNotFoundError:  # a GPU machine given only what training needs: no registration pool to size
        return threads
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return threads

"""Distributed data parallel helpers: detect ``torchrun`` from its environment, start the process group (NCCL on
GPUs, gloo on CPU) and give every rank its device. Single-process runs get a context with world size 1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from LabelSharingSegLib.engine.device import resolve_device
from LabelSharingSegLib.engine.errors import InputError

from .threads import configure_threads


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    device_note: str | None
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.initialised:
            dist.barrier()

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's flag on every rank (e.g. 'stop now')."""
        if not self.initialised:
            return flag
        t = torch.tensor([1 if flag else 0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.broadcast(t, 0)
        return bool(t.item())

    def close(self) -> None:
        if self.initialised and dist.is_initialized():
            dist.destroy_process_group()
            self.initialised = False


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str = "auto", threads: int | None = None) -> DistContext:
    """Resolve the device, set this process's torch threads (``threads.configure_threads``) and, under
    torchrun, join the process group."""
    configure_threads(threads)
    device, note = resolve_device(device_name)
    if not launched_by_torchrun():
        return DistContext(0, 1, 0, device, note)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise InputError(
                f"torchrun started {world} processes per node but only {torch.cuda.device_count()} "
                "GPU(s) are visible; lower --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"  # the cores are shared between the processes: configure_threads divided them
    else:
        raise InputError(f"distributed training runs on CUDA (NCCL) or CPU (gloo), not {device.type}")
    dist.init_process_group(backend=backend)
    return DistContext(rank, world, local_rank, device, note, initialised=True)


@contextmanager
def distributed_session(device_name: str = "auto", threads: int | None = None) -> Iterator[DistContext]:
    """``setup`` for the length of a ``with`` block; the process group is always left, also on errors."""
    ctx = setup(device_name, threads)
    try:
        yield ctx
    finally:
        ctx.close()

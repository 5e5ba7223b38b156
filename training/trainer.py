"""The shared training loop: optimiser + schedule, mixed precision, DDP, progress bar, CSV log, validation to
keep the best weights, atomic checkpoints every N steps, exact ``--resume``, a time limit, Ctrl-C and
out-of-memory handling.

The time limit (``TrainOptions.time_limit``, seconds of loop time in this invocation) is checked after every
step; when it has passed, the loop validates once more, writes the checkpoint and returns normally with
``TrainResult.stopped_by_time`` set. Under DDP rank 0 decides and broadcasts, so every rank stops at the same step.

The method object (``methods.py``) supplies ``batch(seed, rank, step, batch_size)``, ``loss(model, batch,
device)`` and ``validate(model, items, device)``; everything else is here.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from LabelSharingSegLib.engine.atomic import write_text_atomic
from LabelSharingSegLib.engine.errors import LabelSharingSegError

from .checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from .distributed import DistContext
from .pipeline import batch_stream
from .throughput import ThroughputMeter

LOG_FIELDS = ("step", "loss", "lr", "elapsed_s", "samples_per_s", "val_dice")


class TrainingError(LabelSharingSegError):
    """Training cannot start or continue (bad options, out of memory, ...)."""


class TrainingInterrupted(LabelSharingSegError):
    """Ctrl-C: the loop stopped cleanly after writing a checkpoint."""


@dataclass
class TrainOptions:
    steps: int = 100
    batch: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup: int = 0
    seed: int = 0
    amp: str = "auto"  # auto (bf16 on CUDA GPUs that support it, else fp16 + scaler; none on CPU), bf16, off
    grad_clip: float = 12.0
    val_every: int = 0  # 0: only at the end
    checkpoint_every: int = 50
    checkpoint_dir: Path = Path("checkpoints")
    resume: bool = False
    quiet: bool = False
    tensorboard: bool = False
    time_limit: float | None = None  # seconds of training loop; None: no limit
    bundle_weights: str = "best"  # best: the best validation's weights (the last without validation); last
    compile: bool = False  # torch.compile the network
    channels_last: bool = False  # channels-last memory layout for the network and its input
    fused_optimizer: str = "auto"  # auto (on CUDA), on, off
    sync_data_timing: bool = False  # CUDA: synchronise around batch building so its time is measured exactly
    loss_sync_every: int = 0  # steps between reading losses back to the host; 0: auto (1 on CPU, 16 on GPUs)


def loss_sync_interval(options: TrainOptions, device: torch.device) -> int:
    """How many steps' losses stay on the device before one read-back (and one all-reduce under DDP). Reading a
    loss waits for the step's kernels, so on a GPU every read is a pipeline stall; on the CPU it costs nothing."""
    if options.loss_sync_every < 0:
        raise TrainingError(f"loss_sync_every must be >= 0, got {options.loss_sync_every}")
    if options.loss_sync_every:
        return options.loss_sync_every
    return 1 if device.type == "cpu" else 16


@dataclass(frozen=True)
class StepEvent:
    """What an ``on_step`` callback sees after every finished step (on every rank), in step order, when the step's
    loss has been read back (every step on the CPU, see ``loss_sync_interval``)."""

    step: int  # steps done so far
    planned_steps: int
    loss: float
    rank: int
    model: torch.nn.Module  # this rank's model (unwrapped)
    last: bool  # the loop ends after this step


StepCallback = Callable[[StepEvent], None]


@dataclass
class _PendingStep:
    """A finished step whose loss is still on the device (read back every ``loss_sync_interval`` steps)."""

    step: int
    loss: torch.Tensor
    lr: float
    seconds: float  # wall time of the step as the host saw it
    elapsed: float  # since the loop began
    last: bool
    value: float | None = None
    val: str = ""


@dataclass
class TrainResult:
    state_dict: dict
    steps: int
    seconds: float
    best_val: float
    best_step: int
    first_loss: float
    last_loss: float
    losses: list = field(default_factory=list)
    planned_steps: int = 0
    stopped_by_time: bool = False  # the time limit ended the run before ``planned_steps``
    weights: str = "best"  # which of the run's weights ``state_dict`` holds (TrainOptions.bundle_weights)

    @property
    def weights_step(self) -> int:
        """The step whose weights ``state_dict`` holds."""
        return self.best_step if self.best_step > 0 and self.weights == "best" else self.steps


def learning_rate(options: TrainOptions, step: int) -> float:
    """Linear warm-up, then cosine / polynomial (nnU-Net's 0.9) decay or constant."""
    if options.warmup and step < options.warmup:
        return options.lr * (step + 1) / options.warmup
    span = max(1, options.steps - options.warmup)
    progress = min(1.0, (step - options.warmup) / span)
    if options.schedule == "cosine":
        return options.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if options.schedule == "poly":
        return options.lr * (1.0 - progress) ** 0.9
    return options.lr


def use_fused_optimizer(options: TrainOptions, device: torch.device) -> bool:
    """The fused (single-kernel) Adam/AdamW: by default on CUDA, where it saves a launch per parameter."""
    if options.fused_optimizer not in ("auto", "on", "off"):
        raise TrainingError(
            f"unknown fused optimizer setting {options.fused_optimizer!r}; choose auto, on or off"
        )
    return options.fused_optimizer == "on" or (options.fused_optimizer == "auto" and device.type == "cuda")


def make_optimizer(
    model: torch.nn.Module, options: TrainOptions, device: torch.device | None = None
) -> torch.optim.Optimizer:
    kwargs = {"lr": options.lr, "weight_decay": options.weight_decay}
    if use_fused_optimizer(options, device or torch.device("cpu")):
        kwargs["fused"] = True
    if options.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), **kwargs)
    if options.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), **kwargs)
    raise TrainingError(f"unknown optimizer {options.optimizer!r}; choose adamw or adam")


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast type: ``auto`` is bfloat16 on CUDA GPUs that support it (no scaler needed), float16 on older
    ones and full precision on the CPU/MPS; ``bf16`` asks for bfloat16 anywhere; ``off`` is full precision."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _autocast(device: torch.device, amp: str):
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def memory_format(spatial_dims: int) -> torch.memory_format:
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def _to_device(batch: dict, device: torch.device, layout: torch.memory_format | None) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if layout is not None and key == "image" and value.ndim in (4, 5):
                value = value.contiguous(memory_format=layout)
        out[key] = value
    return out


def _is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(exc, oom_type)) or "out of memory" in str(exc).lower()


class _CsvLog:
    """log.csv in the checkpoint folder; on resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows = []
        if resume_step > 0 and path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(path, buffer.getvalue())
        self.handle = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=LOG_FIELDS, lineterminator="\n")

    def row(self, **values) -> None:
        self.writer.writerow({k: values.get(k, "") for k in LOG_FIELDS})
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def train(
    method,
    model: torch.nn.Module,
    val_items: list[dict],
    options: TrainOptions,
    ctx: DistContext,
    config_fingerprint: str,
    describe=None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Run (or resume) the loop; returns on rank 0 the weights ``options.bundle_weights`` asks for: the best
    validation's (the last without validation) or the last step's.

    ``on_step(StepEvent)`` runs after every step, once its checkpoint is written (tests use it to slow a run
    down or to look at the weights)."""
    device = ctx.device
    model.to(device)
    layout = memory_format(getattr(method, "spatial_dims", 3)) if options.channels_last else None
    if layout is not None:
        model.to(memory_format=layout)
    optimizer = make_optimizer(model, options, device)
    start, best_val, best_step = 0, float("nan"), -1
    ckpt_dir = Path(options.checkpoint_dir)
    last_path, best_path = ckpt_dir / LAST, ckpt_dir / BEST
    if options.resume:
        state = load_checkpoint(last_path, model, optimizer, config_fingerprint, describe)
        start, best_val, best_step = int(state["step"]), float(state["best_val"]), int(state["best_step"])
        if start >= options.steps:
            raise TrainingError(
                f"{last_path}: the run already finished {start} steps, so --steps {options.steps} "
                f"adds none; pass --steps larger than {start} to extend it (the learning-rate "
                "schedule is recomputed for the new total), or a new --out with --bundle-weights "
                f"{'best' if options.bundle_weights == 'last' else 'last'} for a bundle of its other weights"
            )
    elif last_path.exists():
        raise TrainingError(
            f"{last_path}: a checkpoint of an earlier run exists; pass --resume to continue it "
            "or choose another --checkpoint-dir"
        )
    use_scaler = device.type == "cuda" and amp_dtype(device, options.amp) == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    net = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if options.compile:
        net = torch.compile(net)
    log = _CsvLog(ckpt_dir / "log.csv", start) if ctx.is_main else None
    board = None
    if options.tensorboard and ctx.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainingError(
                "--tensorboard needs the tensorboard package (pip install tensorboard)"
            ) from None
        board = SummaryWriter(str(ckpt_dir / "tensorboard"))
    from tqdm import tqdm

    bar = tqdm(
        total=options.steps,
        initial=start,
        unit="step",
        dynamic_ncols=True,
        disable=options.quiet or not ctx.is_main or not sys.stderr.isatty(),
    )
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if options.resume and best_path.is_file():
        from safetensors.torch import load_file

        best_state = {
            k[len("model.") :]: v for k, v in load_file(str(best_path)).items() if k.startswith("model.")
        }

    def checkpoint(step: int) -> None:
        if ctx.is_main:
            save_checkpoint(
                last_path,
                model,
                optimizer,
                {
                    "step": step,
                    "best_val": best_val,
                    "best_step": best_step,
                    "scaler": scaler.state_dict() if use_scaler else None,
                },
                config_fingerprint,
            )

    if options.resume and use_scaler:
        state_scaler = state.get("scaler")
        if state_scaler:
            scaler.load_state_dict(state_scaler)
    began = time.time()
    losses: list[float] = []
    completed = start
    stopped_by_time = False
    samples_per_step = options.batch * ctx.world_size
    meter = ThroughputMeter(device, warmup=1 if options.steps - start > 1 else 0)
    sync_every = loss_sync_interval(options, device)
    pending: list[_PendingStep] = []
    # batches come from the method in the loop, or from loader workers ahead of it (same batches either way)
    stream = batch_stream(
        method.batch,
        options.seed,
        ctx.rank,
        start,
        options.steps,
        options.batch,
        workers=getattr(method, "loader_workers", 0),
        pin=device.type == "cuda",
    )
    timed_sync = options.sync_data_timing and device.type == "cuda"

    def read_back() -> None:
        """One copy of the pending steps' losses to the host (one all-reduce under DDP); refuses a non-finite
        loss before any validation, checkpoint or log sees the step."""
        todo = [item for item in pending if item.value is None]
        if not todo:
            return
        values = torch.stack([item.loss for item in todo]).float()
        if ctx.distributed:
            torch.distributed.all_reduce(values)
            values = values / ctx.world_size
        for item, value in zip(todo, values.tolist()):
            if not math.isfinite(value):
                raise TrainingError(
                    f"the loss became {value} at step {item.step}; lower --lr (now {options.lr}) or use --amp off"
                )
            item.value = value

    def emit(item: _PendingStep) -> None:
        value = float(item.value)
        losses.append(value)
        if log is not None:
            log.row(
                step=item.step,
                loss=f"{value:.6f}",
                lr=f"{item.lr:.6g}",
                elapsed_s=f"{item.elapsed:.2f}",
                samples_per_s=f"{samples_per_step / max(item.seconds, 1e-9):.2f}",
                val_dice=item.val,
            )
        if board is not None:
            board.add_scalar("loss", value, item.step)
            if item.val:
                board.add_scalar("val_dice", float(item.val), item.step)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{item.lr:.2e}", **({"val": item.val} if item.val else {}))
        if on_step is not None:
            on_step(StepEvent(item.step, options.steps, value, ctx.rank, model, item.last))

    try:
        for step in range(start, options.steps):
            tick = time.time()
            step_began = time.perf_counter()
            lr = learning_rate(options, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            net.train()
            if timed_sync:
                torch.cuda.synchronize(device)
            waited = time.perf_counter()
            batch = _to_device(next(stream), device, layout)
            if timed_sync:
                torch.cuda.synchronize(device)
            data_seconds = time.perf_counter() - waited
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, options.amp):
                loss = method.loss(net, batch, device)
            if sync_every == 1 and not torch.isfinite(loss):
                # read back at once anyway, so refuse before the update touches the weights
                raise TrainingError(
                    f"the loss became {float(loss)} at step {step + 1}; lower --lr "
                    f"(now {options.lr}) or use --amp off"
                )
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            meter.add(time.perf_counter() - step_began, data_seconds)
            done = step + 1
            completed = done
            if options.time_limit is not None and done < options.steps:
                stopped_by_time = ctx.broadcast_flag(time.time() - began >= options.time_limit)
            last_step = done == options.steps or stopped_by_time
            current = _PendingStep(
                done, loss.detach(), lr, time.time() - tick, time.time() - began, last_step
            )
            pending.append(current)
            # decided alike on every rank: read_back all-reduces under DDP
            validating = last_step or bool(options.val_every and done % options.val_every == 0)
            checkpointing = done % max(1, options.checkpoint_every) == 0 or last_step
            if validating or checkpointing or len(pending) >= sync_every:
                read_back()
                for item in pending[:-1]:
                    emit(item)
                if ctx.is_main and val_items and validating:
                    net.eval()
                    score = method.validate(model, val_items, device)
                    current.val = f"{score:.4f}"
                    if not math.isnan(score) and (math.isnan(best_val) or score > best_val):
                        best_val, best_step = score, done
                        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                        save_checkpoint(
                            best_path, model, None, {"step": done, "val_dice": score}, config_fingerprint
                        )
                if checkpointing:
                    checkpoint(done)
                if validating or checkpointing:
                    ctx.barrier()
                pending.clear()
                emit(current)
            bar.update(1)
            if stopped_by_time:
                break
    except KeyboardInterrupt:
        bar.close()
        if not ctx.distributed:  # other ranks may be gone: no collective read-back then
            read_back()  # a non-finite loss raises here, so its weights are never saved
            for item in pending:
                emit(item)
        checkpoint(completed)
        raise TrainingInterrupted(
            f"interrupted at step {completed}; checkpoint saved in {last_path} - run the same command with "
            "--resume to continue"
        ) from None
    except RuntimeError as exc:
        if _is_oom(exc):
            raise TrainingError(
                f"out of memory on {device}: lower --patch (now {getattr(method, 'patch', 'the full grid')}) or "
                f"--batch (now {options.batch}), or use --amp bf16 / fewer --channels"
            ) from None
        raise
    finally:
        stream.close()
        bar.close()
        if log is not None:
            log.close()
        if board is not None:
            board.close()
    if ctx.is_main:
        meter.write(
            ckpt_dir,
            samples_per_step,
            {
                "pipeline": "legacy" if getattr(method, "device_batches", None) is None else "device",
                "loader_workers": getattr(method, "loader_workers", 0),
                "amp": str(amp_dtype(device, options.amp)),
                "compile": options.compile,
                "channels_last": options.channels_last,
                "fused_optimizer": use_fused_optimizer(options, device),
            },
        )
    keep_best = best_step > 0 and options.bundle_weights == "best"
    final_state = (
        best_state if keep_best else {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    )
    return TrainResult(
        final_state,
        completed,
        time.time() - began,
        best_val,
        best_step,
        losses[0] if losses else float("nan"),
        losses[-1] if losses else float("nan"),
        losses,
        planned_steps=options.steps,
        stopped_by_time=stopped_by_time,
        weights=options.bundle_weights,
    )

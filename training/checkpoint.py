"""Training checkpoints: one safetensors file holding the model and optimizer tensors, with the JSON training
state (step, best score, config fingerprint, optimizer hyper-parameters, AMP scaler) in its metadata.

One file means one atomic write (temporary sibling + fsync + rename): a run killed at any moment leaves the
previous checkpoint intact, never a half-written one. Loading never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from LabelSharingSegLib.engine.atomic import atomic_path
from LabelSharingSegLib.engine.errors import LabelSharingSegError

FORMAT = "labelsharingseg.checkpoint/1"
LAST = "last.safetensors"
BEST = "best.safetensors"


class CheckpointError(LabelSharingSegError):
    """A checkpoint is missing, corrupt or belongs to another training configuration."""


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict,
    config_fingerprint: str,
) -> Path:
    """Write model (+ optimizer) tensors and ``state`` (JSON-serialisable) atomically."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_meta = None
    if optimizer is not None:
        optim_tensors, optim_meta = _optimizer_tensors(optimizer)
        tensors.update(optim_tensors)
    metadata = {
        "format": FORMAT,
        "fingerprint": config_fingerprint,
        "state": json.dumps(state),
        "optimizer": json.dumps(optim_meta),
    }
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata with parsed 'state' and 'optimizer'); CheckpointError on anything unreadable."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from (start without --resume)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        if metadata.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a LabelSharingSeg training checkpoint")
        metadata["state"] = json.loads(metadata["state"])
        metadata["optimizer"] = json.loads(metadata["optimizer"])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    return tensors, metadata


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    config_fingerprint: str | None,
    describe_mismatch=None,
) -> dict:
    """Restore model (+ optimizer) in place and return the saved training state.

    Refuses (CheckpointError) a checkpoint written for another configuration; ``describe_mismatch(saved_state)``
    may return a readable explanation of what differs.
    """
    tensors, metadata = read_checkpoint(path)
    state = metadata["state"]
    if config_fingerprint is not None and metadata.get("fingerprint") != config_fingerprint:
        detail = describe_mismatch(state) if describe_mismatch else ""
        raise CheckpointError(
            f"{path}: this checkpoint belongs to a different training run (method, data, network or options "
            f"differ{': ' + detail if detail else ''}); resume with the same command, or choose a new "
            "--checkpoint-dir / drop --resume to start fresh"
        )
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit this network ({str(exc).splitlines()[0]})"
        ) from None
    if optimizer is not None and metadata["optimizer"] is not None:
        meta = metadata["optimizer"]
        opt_state: dict = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, param_id, name = key.split(".", 2)
                opt_state.setdefault(int(param_id), {})[name] = value
        for key, value in meta["scalars"].items():
            param_id, name = key.split(".", 1)
            opt_state.setdefault(int(param_id), {})[name] = value
        optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    return state

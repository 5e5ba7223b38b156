"""Device selection with an explicit, user-readable fallback note."""

from __future__ import annotations

import torch

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(name: str = "auto") -> tuple[torch.device, str | None]:
    """Map ``auto|cpu|cuda|mps`` (or ``cuda:N``) to a torch device and an optional note for the user.

    ``auto`` prefers CUDA, then MPS, then CPU. Asking for an unavailable accelerator falls back to the CPU
    with a note saying so rather than failing, because the result is the same, only slower.
    """
    requested = (name or "auto").strip().lower()
    base = requested.split(":")[0]
    if base not in DEVICE_CHOICES:
        raise InputError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda"), None
        if _mps_available():
            return torch.device("mps"), None
        return torch.device("cpu"), "No GPU found: running on the CPU (this works but is slower)."
    if base == "cuda":
        if not torch.cuda.is_available():
            return torch.device(
                "cpu"
            ), "CUDA was requested but is not available: running on the CPU (slower)."
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index), None
    if base == "mps":
        if not _mps_available():
            return torch.device("cpu"), "MPS was requested but is not available: running on the CPU (slower)."
        return torch.device("mps"), None
    return torch.device("cpu"), "Running on the CPU (slower than a GPU)."

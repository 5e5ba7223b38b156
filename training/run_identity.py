"""What makes a training run the same run: the one object behind ``config.json`` and the resume fingerprint.

A checkpoint may only be continued by the run that wrote it. ``RunIdentity`` gathers everything that decides the
weights (method, network, preprocessing, tasks or atlas, case split, optimisation, sampling, world size) and nothing
that only says how long or how visibly to train (``run_config.RESUME_MAY_CHANGE``). Its JSON form is written to
``config.json`` in the checkpoint folder and its hash is stored in every checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import CheckpointError
from .run_config import (
    DEFAULT_LCS_CONDITIONING,
    PUBLISHED_LCS_CONDITIONING,
    RESUME_MAY_CHANGE,
    TrainSettings,
)

CONFIG_FILE = "config.json"


def _plain(value):
    """JSON-ready form of configs that may be typed objects (``to_dict``) or plain dicts."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


def _weights_preprocessing(preprocessing):
    """The preprocessing without its ``modality`` and ``contrast``: the kind of scan a bundle declares (checked on
    its inputs) does not train the weights, and runs started before bundles declared it must still resume."""
    if isinstance(preprocessing, dict):
        return {key: value for key, value in preprocessing.items() if key not in ("modality", "contrast")}
    return preprocessing


@dataclass(frozen=True)
class RunIdentity:
    method: str
    network: dict
    preprocessing: dict
    train_cases: tuple[str, ...]
    val_cases: tuple[str, ...]
    settings: TrainSettings
    world_size: int
    method_specific: dict = field(default_factory=dict)  # tasks, atlas, coarse map, base bundle, ...

    def to_dict(self) -> dict:
        s = self.settings
        identity = {
            "method": self.method,
            "network": _plain(self.network),
            "preprocessing": _weights_preprocessing(_plain(self.preprocessing)),
            "train_cases": list(self.train_cases),
            "val_cases": list(self.val_cases),
            "batch": s.batch,
            "lr": s.lr,
            "weight_decay": s.weight_decay,
            "optimizer": s.optimizer,
            "schedule": s.schedule,
            "warmup": s.warmup,
            "seed": s.seed,
            "amp": s.amp,
            "world_size": self.world_size,
            "augment": s.augment,
            **s.pipeline_settings().run_config(),
            **self.method_specific,
        }
        leaked = sorted(set(identity) & set(RESUME_MAY_CHANGE))
        if leaked:  # a programming error: these would make extending a run impossible
            raise ValueError(f"run identity must not hold {', '.join(leaked)}")
        # one JSON round trip, so the dict compares equal to what config.json gives back
        return json.loads(json.dumps(identity, default=str))

    def fingerprint(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def differences(self, saved: dict | None) -> str:
        """Readable list of the settings that differ from a saved ``config.json`` ('' when unknown)."""
        if not saved:
            return ""
        current = self.to_dict()
        differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if not differ:
            return ""
        return (
            "differing settings: "
            + ", ".join(differ)
            + "".join(f"; {h}" for h in _changed_defaults(saved, current))
        )


def _changed_defaults(saved: dict, current: dict) -> list[str]:
    """How to resume a run that an earlier default trained: the option that restores that default."""
    was, now = saved.get("network") or {}, current.get("network") or {}
    if not isinstance(was, dict) or not isinstance(now, dict):
        return []
    hints = []
    if (
        current.get("method") == "lcs"
        and was.get("conditioning", PUBLISHED_LCS_CONDITIONING) == PUBLISHED_LCS_CONDITIONING
        and now.get("conditioning") == DEFAULT_LCS_CONDITIONING
    ):
        hints.append(
            "the checkpoint's network has the paper's conditioning (the bottleneck only, the default before "
            "every-level): resume it with --conditioning bottleneck"
        )
    if current.get("method") == "labelsharing" and was.get("arch") == "unet" and now.get("arch") == "dodnet":
        hints.append(
            "the checkpoint's network has the published head (the default before the dynamic head): resume it "
            "with --head linear"
        )
    if "dice_pooling" not in saved and current.get("dice_pooling") == "task":
        hints.append(
            "the checkpoint's loss pooled its soft Dice by output channel (the default before --dice-pooling "
            "task): resume it with --dice-pooling channel"
        )
    return hints


def read_saved_identity(checkpoint_dir: Path) -> dict | None:
    """The ``config.json`` of an earlier run, None when there is none; CheckpointError when it is unreadable."""
    path = Path(checkpoint_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: corrupt run configuration ({type(exc).__name__}); it is only used to explain "
            "differences: delete it to resume from the checkpoint, or start fresh with a new --checkpoint-dir"
        ) from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: corrupt run configuration (not a JSON object)")
    return saved

"""The kinds of model bundle, defined once: what each segments and which network architecture it uses.

A ``str`` enum, so ``kind == "lcs"`` and JSON writing keep working with plain strings.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from .config_checks import shown
from .errors import ConfigError


class BundleKind(str, Enum):
    LABELSHARING = "labelsharing"  # Anand et al. 2024: tasks share output channels by relative label size
    INDIVIDUAL = "individual"  # one model per task
    MULTICHANNEL = "multichannel"  # one output channel per label of every task
    DODNET = "dodnet"  # task-conditioned dynamic head
    LCS = "lcs"  # Ma et al. 2022: atlas-conditioned, segments any atlas label

    def __str__(self) -> str:  # the value, on every Python version (3.12 changed Enum formatting)
        return self.value

    @property
    def arch(self) -> str:
        """The network architecture (a key of ``network_config.CONFIG_OF_ARCH``) this kind uses."""
        return {BundleKind.LCS: "lcs", BundleKind.DODNET: "dodnet"}.get(self, "unet")

    @property
    def archs(self) -> tuple[str, ...]:
        """Every architecture a bundle of this kind may carry (its own first)."""
        # label sharing may carry a task code (unet_film) or a DoD-Net-style head over its shared outputs (--head)
        variants = {BundleKind.LCS: ("lcs_refine",), BundleKind.LABELSHARING: ("unet_film", "dodnet")}
        return (self.arch, *variants.get(self, ()))

    @property
    def segments_tasks(self) -> bool:
        """True for kinds that segment named tasks; LCS segments atlas labels instead."""
        return self is not BundleKind.LCS

    @property
    def has_atlas(self) -> bool:
        return self is BundleKind.LCS

    @classmethod
    def parse(cls, value: Any, where: str = "kind") -> BundleKind:
        """The kind named by ``value``; ConfigError listing the known kinds otherwise."""
        try:
            return cls(value)
        except (ValueError, TypeError):
            known = ", ".join(kind.value for kind in cls)
            raise ConfigError(
                f"{where}: unknown bundle kind {shown(value)} (expected one of {known})"
            ) from None


TASK_KINDS: tuple[BundleKind, ...] = tuple(kind for kind in BundleKind if kind.segments_tasks)

"""Which labels validation scores: all of them, or a fixed sample of ``--val-labels`` of them.

Validating every label is what makes LCS slow at many labels (one conditioned decoder pass per label, ten times a
run). A cap keeps validation affordable; the sample is drawn from the label values alone with the run's seed, so
every method validating on the same labels with the same seed scores exactly the same sample (``lsseg experiment``
relies on this to keep LCS and multi-channel comparable).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_STREAM = 0x56414C  # separates this draw from every other use of the seed


def validation_labels(values: Iterable[int], cap: int | None, seed: int) -> list[int]:
    """The sorted label values validation scores: all ``values`` without a cap (or a cap >= their number), else
    ``cap`` of them drawn without replacement, seeded by ``seed`` only."""
    pool = sorted({int(v) for v in values})
    if cap is None or cap >= len(pool):
        return pool
    if cap < 1:
        raise ValueError(f"a validation label cap must be >= 1, got {cap}")
    rng = np.random.default_rng([int(seed), _STREAM])
    return sorted(int(v) for v in rng.choice(pool, size=cap, replace=False))

"""``lsseg train lcs --align-cases affine``: every training and validation case registered to the atlas first.

Inference registers a scan to the bundle's atlas (affine) before the LCS network sees it, so the network's
target lies where the atlas does, up to what an affine cannot fit. Trained as Ma et al. 2022 train it, each case
sits where its world coordinates put it, so the network must also learn to undo every difference of pose between
a case and the atlas, which inference has already removed. With this option training sees cases as inference
will show them: each case is registered by the engine's own affine registration (the same function and
settings as inference, with the atlas on the model grid as the bundle stores it) and resampled onto the atlas
grid through that registration. Registrations are kept in the run's registration cache
(pair_registrations.py), so a rerun, or another run on the same data and atlas, does not register again, and a
machine without SimpleITK trains from a cache filled elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .datasets import Case, as_volume, load_case
from .pair_registrations import cached_alignment


def atlas_space_affines(
    cases: Sequence[Case], atlas_image: np.ndarray, atlas_affine: np.ndarray, cache: Path, quiet: bool = False
) -> tuple[dict[str, np.ndarray], list[str]]:
    """({case id: voxel -> atlas-space affine}, ids of cases whose registration diverged or was refused: they are
    left out of training, as inference would refuse to segment such a scan)."""
    affines: dict[str, np.ndarray] = {}
    left_out: list[str] = []
    for n, case in enumerate(cases):
        began = time.time()
        image, _, affine = load_case(case)
        alignment = cached_alignment(cache, atlas_image, atlas_affine, as_volume(image[0]), affine)
        if not alignment.accepted:
            left_out.append(case.case_id)
        else:
            affines[case.case_id] = alignment.aligned_affine(affine)
        if not quiet:
            outcome = "left out" if case.case_id in left_out else "registered to the atlas"
            print(f"{case.case_id} {outcome} ({n + 1}/{len(cases)}, {time.time() - began:.1f} s)", flush=True)
    return affines, left_out

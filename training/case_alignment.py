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

``--align-cases deformable`` goes one step further: the atlas is also registered onto each aligned case by the
engine's deformable registration (as ``register-deformable`` propagation does for a scan), and the network is
conditioned on the atlas image and masks carried onto the case that way (engine/atlas_warp.py): it learns to
correct a registration, seeing the whole scan, and inference registers each scan the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.deformable import Deformation

from .datasets import Case, as_volume, load_case
from .pair_registrations import cached_alignment, cached_registration


@dataclass
class CaseRegistrations:
    """``affines``: case id -> voxel -> atlas-space affine; ``deformations``: case id -> the atlas's deformable
    registration onto the aligned case (``--align-cases deformable`` only); ``left_out``: ids of cases whose
    registration diverged or was refused, left out of training as inference would refuse to segment such a scan."""

    affines: dict[str, np.ndarray] = field(default_factory=dict)
    deformations: dict[str, Deformation] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)


def register_cases(
    cases: Sequence[Case],
    atlas_image: np.ndarray,
    atlas_affine: np.ndarray,
    cache: Path,
    quiet: bool = False,
    deformable: bool = False,
) -> CaseRegistrations:
    """Every case registered to the atlas (affine; with ``deformable`` also the atlas deformably onto it)."""
    found = CaseRegistrations()
    for n, case in enumerate(cases):
        began = time.time()
        image, _, affine = load_case(case)
        volume = as_volume(image[0])
        if deformable:
            propagation = cached_registration(cache, atlas_image, atlas_affine, volume, affine)
            alignment = propagation.alignment if propagation is not None else None
        else:
            alignment = cached_alignment(cache, atlas_image, atlas_affine, volume, affine)
        if alignment is None or not alignment.accepted:
            found.left_out.append(case.case_id)
        else:
            found.affines[case.case_id] = alignment.aligned_affine(affine)
            if deformable:
                assert propagation is not None and propagation.deformation is not None
                found.deformations[case.case_id] = propagation.deformation
        if not quiet:
            outcome = "left out" if case.case_id in found.left_out else "registered to the atlas"
            print(f"{case.case_id} {outcome} ({n + 1}/{len(cases)}, {time.time() - began:.1f} s)", flush=True)
    return found

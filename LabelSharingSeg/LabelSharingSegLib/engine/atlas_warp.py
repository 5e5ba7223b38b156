"""The atlas carried onto a scan by deformable registration before it conditions LCS (``network.atlas_warp``).

A network trained with ``lsseg train lcs --align-cases deformable`` never sees the atlas as it lies: on every
(affinely aligned) case the atlas image and label masks are first pulled through the case's deformable registration
(engine/deformable.py), so the network learns to correct a registration with the whole scan in view. Inference
does the same to each scan. Both sides go through these functions so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .deformable import Deformation
from .propagation import Propagation
from .warping import sample


def warped_points(
    deformation: Deformation, atlas_shape: Sequence[int], atlas_affine: np.ndarray
) -> torch.Tensor:
    """World points (atlas space, (*atlas grid, 3)) the atlas is read at for every voxel of the aligned scan, which
    lies on the atlas grid: ``q + u(q)``."""
    return Propagation(None, deformation).atlas_points(atlas_shape, atlas_affine)


def warp_image(atlas_image: torch.Tensor, atlas_affine: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """(X, Y, Z) atlas intensities -> the same carried onto the scan (linear)."""
    return sample(torch.as_tensor(atlas_image).float()[None], atlas_affine, points, mode="bilinear")[0]


def warp_masks(masks: torch.Tensor, atlas_affine: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """(n, X, Y, Z) atlas masks or label maps -> the same carried onto the scan (nearest neighbour, so a label map
    and the masks made from it agree voxel for voxel)."""
    return sample(torch.as_tensor(masks).float(), atlas_affine, points, mode="nearest")

"""Registrations of the atlas onto each training case, computed once and kept on disk (training only).

Training the refine network (``lsseg train lcs --arch lcs_refine``) needs every (atlas -> training case) pair
propagated by the project's own registration (engine/propagation.py: affine alignment, then deformable demons),
exactly as inference registers a new scan. That costs about a minute per case on a CPU, so each result is
stored as ``<key>.npz`` in a cache folder; the key is a hash of everything the result depends on (both images
and affines, the stage and the registration code's settings), so a changed input can never reuse a stale file.
Files are plain arrays read with ``allow_pickle=False`` (never unpickled) and written atomically.

``lsseg train lcs --align-cases affine`` keeps the affine stage alone the same way (``cached_alignment``), a
refused registration included, so a machine without SimpleITK can train from alignments computed elsewhere.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from LabelSharingSegLib.engine.atomic import write_bytes_atomic
from LabelSharingSegLib.engine.deformable import Deformation
from LabelSharingSegLib.engine.errors import InputError, LabelSharingSegError
from LabelSharingSegLib.engine.propagation import Propagation, register_atlas
from LabelSharingSegLib.engine.registration import Alignment

# bump when the registration code changes what it computes for the same inputs
CACHE_VERSION = "refine-registration-1"
ALIGNMENT_VERSION = "case-alignment-1"  # the affine stage alone (lsseg train lcs --align-cases affine)
_ALIGNMENT_FLOATS = ("metric", "identity_metric", "overlap", "identity_overlap")
_DEFORMATION_FLOATS = ("similarity_affine", "similarity", "min_jacobian", "folded_fraction")


def registration_key(
    atlas_image: np.ndarray,
    atlas_affine: np.ndarray,
    image: np.ndarray,
    affine: np.ndarray,
    version: str = CACHE_VERSION,
) -> str:
    """Hash of both images and affines and ``version`` (what is registered, and how); no software probed, so a
    machine without SimpleITK finds the files another machine computed."""
    digest = hashlib.sha256(version.encode())
    for array in (atlas_image, atlas_affine, image, affine):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:32]


def alignment_arrays(alignment: Alignment) -> dict[str, np.ndarray]:
    """An alignment as plain arrays (``np.savez``), read back by :func:`alignment_of`."""
    return {
        "matrix": alignment.matrix,
        "alignment_floats": np.array([getattr(alignment, f) for f in _ALIGNMENT_FLOATS]),
        "accepted": np.array(alignment.accepted),
    }


def alignment_of(data) -> Alignment:
    return Alignment(
        np.asarray(data["matrix"], np.float64),
        **dict(zip(_ALIGNMENT_FLOATS, map(float, data["alignment_floats"]))),
        accepted=bool(data["accepted"]),
    )


def _to_bytes(propagation: Propagation) -> bytes:
    alignment, deformation = propagation.alignment, propagation.deformation
    assert alignment is not None and deformation is not None
    arrays = {
        **alignment_arrays(alignment),
        # float16 only once compacted for transfer (compact_for_transfer)
        "displacement": deformation.displacement.astype(
            np.float16 if deformation.displacement.dtype == np.float16 else np.float32
        ),
        "grid_affine": deformation.affine,
        "deformation_floats": np.array([getattr(deformation, f) for f in _DEFORMATION_FLOATS]),
        "method": np.array(deformation.method),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _from_file(path: Path) -> Propagation:
    with np.load(path, allow_pickle=False) as data:
        alignment = alignment_of(data)
        deformation = Deformation(
            np.asarray(data["displacement"], np.float32),
            np.asarray(data["grid_affine"], np.float64),
            str(data["method"]),
            *map(float, data["deformation_floats"]),
        )
    return Propagation(alignment, deformation)


def _without_sitk(error: ImportError) -> InputError:
    """SimpleITK missing (the lent GPU machine): registrations must come from a cache filled elsewhere."""
    return InputError(
        f"registering a case to the atlas needs SimpleITK ({error}); fill the registration cache on a machine "
        "that has it (`ALIGN=1 scripts/gpu_data.sh`; `ALIGN=deformable` for --align-cases deformable) and pass "
        "it with --registration-cache"
    )


def cached_registration(
    cache: Path,
    atlas_image: np.ndarray,
    atlas_affine: np.ndarray,
    image: np.ndarray,
    affine: np.ndarray,
) -> Propagation | None:
    """The deformable propagation of the atlas onto a case, from ``cache`` or computed and stored there; None
    when the registration diverges (the case is then left out of training, as inference would refuse it)."""
    path = Path(cache) / f"{registration_key(atlas_image, atlas_affine, image, affine)}.npz"
    if path.is_file():
        try:
            return _from_file(path)
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache file is recomputed
    try:
        propagation = register_atlas(atlas_image, atlas_affine, image, affine, stage="deformable")
    except ImportError as error:
        raise _without_sitk(error) from error
    except LabelSharingSegError:
        return None
    Path(cache).mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, _to_bytes(propagation))
    return propagation


def cached_alignment(
    cache: Path,
    atlas_image: np.ndarray,
    atlas_affine: np.ndarray,
    image: np.ndarray,
    affine: np.ndarray,
) -> Alignment:
    """The affine registration of a case to the atlas (scan <- atlas, as inference computes it for a scan), from
    ``cache`` or computed and stored there. A registration that diverged or found nothing to register is kept as
    refused (``accepted`` False), so it is not attempted again."""
    key = registration_key(atlas_image, atlas_affine, image, affine, ALIGNMENT_VERSION)
    path = Path(cache) / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                return alignment_of(data)
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache file is recomputed
    try:
        alignment = register_atlas(atlas_image, atlas_affine, image, affine, stage="affine").alignment
    except ImportError as error:
        raise _without_sitk(error) from error
    except LabelSharingSegError as error:
        alignment = Alignment(np.eye(4), float("nan"), accepted=False, warning=str(error))
    assert alignment is not None
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **alignment_arrays(alignment))
    Path(cache).mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())
    return alignment


def compact_for_transfer(cache: Path, factor: int = 2) -> int:
    """Rewrite every deformable registration in ``cache`` with its displacement field on a grid ``factor`` times
    coarser (same extent: first and last voxel centres kept) in float16; returns how many were rewritten.

    For the lent GPU machine only, which has no SimpleITK and takes at most 64 MiB along: at 2 mm a field is about
    6 MB, 19 training cases about 118 MB; compacted about 0.4 MB each. The demons field is smooth (6 mm Gaussian),
    so read back through linear interpolation it moves points by a fraction of a voxel. Keep the full files for
    anything else: the keys stay, so a compacted cache is read as if it held the registration itself."""
    rewritten = 0
    for path in sorted(Path(cache).glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            if "displacement" not in data.files or data["displacement"].dtype == np.float16:
                continue
        propagation = _from_file(path)
        deformation = propagation.deformation
        assert deformation is not None
        shape = deformation.displacement.shape[1:]
        coarse = [max(2, -(-(n - 1) // factor) + 1) for n in shape]
        field = torch.as_tensor(deformation.displacement)[None]
        resized = F.interpolate(field, size=coarse, mode="trilinear", align_corners=True)[0].numpy()
        steps = [(n - 1) / (c - 1) for n, c in zip(shape, coarse)]  # fine voxels per coarse voxel
        affine = np.asarray(deformation.affine, np.float64) @ np.diag([*steps, 1.0])
        small = replace(deformation, displacement=resized.astype(np.float16), affine=affine)
        write_bytes_atomic(path, _to_bytes(Propagation(propagation.alignment, small)))
        rewritten += 1
    return rewritten

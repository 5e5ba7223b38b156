"""NIfTI reading and atomic writing with clear errors. Arrays are indexed [i, j, k] (nibabel order) and the
affine maps voxel (i, j, k) to RAS millimetres."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .atomic import atomic_path
from .errors import InputError

NIFTI_ENDINGS = (".nii.gz", ".nii")


def has_nifti_ending(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_ENDINGS)


def load_nifti(path: str | os.PathLike, *, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file as (array, 4x4 affine). Raises InputError naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if not has_nifti_ending(path):
        raise InputError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        image: Any = nib.load(str(path))  # a NIfTI image (checked by the ending above)
        data = np.asarray(image.dataobj, dtype=dtype)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for corrupt/truncated files
        raise InputError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: the affine holds NaN/Inf")
    return data, affine


def save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` with ``affine`` atomically (temp + rename); integer arrays keep an integer type."""
    path = Path(path)
    if not has_nifti_ending(path):
        raise InputError(f"{path}: output must end in .nii or .nii.gz")
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path

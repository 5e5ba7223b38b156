"""NIfTI reading and atomic writing with clear errors. Arrays are indexed [i, j, k] (nibabel order) and the
affine maps voxel (i, j, k) to RAS millimetres."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .atomic import atomic_path
from .errors import InputError

NIFTI_ENDINGS = (".nii.gz", ".nii")
_CHECK_ABOVE_BYTES = 64 * 1024**2


def has_nifti_ending(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_ENDINGS)


def load_nifti(path: str | os.PathLike, *, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file as (array, 4x4 affine). Raises InputError naming the file on any problem.

    Complex voxels are refused (dropping the imaginary part would change the image). With an integer
    ``dtype`` (label maps), NaN/Inf or fractional voxel values are refused instead of cast.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a NIfTI file")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if not has_nifti_ending(path):
        raise InputError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel warns about odd headers; errors are what we report
            image: Any = nib.load(str(path))  # a Nifti1/2 image (typed as the base class)
            _require_declared_voxels(path, image)
            stored = np.dtype(image.get_data_dtype())
            if stored.kind == "c" or (
                stored.fields and any(f[0].kind == "c" for f in stored.fields.values())
            ):
                raise InputError(
                    f"{path}: complex-valued voxels ({stored}); give a real-valued (magnitude) image"
                )
            if np.issubdtype(np.dtype(dtype), np.integer):
                data = _whole_numbers(np.asarray(image.dataobj), np.dtype(dtype), path)
            else:
                data = np.asarray(image.dataobj, dtype=dtype)
            affine = np.asarray(image.affine, dtype=np.float64)
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt/truncated files
        raise InputError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: the affine holds NaN/Inf")
    return data, affine


def _require_declared_voxels(path: Path, image) -> None:
    """Refuse a file holding fewer voxel bytes than its header declares before allocating them: a 400-byte
    file may declare gigabytes. Only large declarations are checked (a gzip file is counted by streaming)."""
    header = image.header
    declared = (
        int(np.prod(header.get_data_shape(), dtype=np.int64)) * np.dtype(header.get_data_dtype()).itemsize
    )
    if declared < _CHECK_ABOVE_BYTES:
        return
    needed = declared + int(header.get_data_offset())
    if str(path).lower().endswith(".gz"):
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            if int.from_bytes(handle.read(4), "little") == needed % 2**32:
                return  # the gzip trailer agrees (it stores the unpacked size modulo 4 GiB)
        held = _gzip_unpacked_size(path, stop_after=needed)
    else:
        held = path.stat().st_size
    if held < needed:
        raise InputError(
            f"{path}: truncated or corrupt: the header declares {declared} bytes of voxels, the file holds "
            f"{max(held - int(header.get_data_offset()), 0)}"
        )


def _gzip_unpacked_size(path: Path, stop_after: int) -> int:
    """Unpacked size of a (possibly multi-member) gzip file, counted without keeping the data."""
    import gzip

    total = 0
    with gzip.open(path, "rb") as stream:
        while total < stop_after and (block := stream.read(1 << 22)):
            total += len(block)
    return total


def _whole_numbers(data: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    """Cast label values to ``dtype``, refusing NaN/Inf, fractions and values the type cannot hold."""
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            raise InputError(
                f"{path}: {int((~finite).sum())} voxel(s) are NaN or Inf; a label map holds whole numbers"
            )
        rounded = np.rint(data)
        if data.size and float(np.max(np.abs(data - rounded))) > 1e-3:
            raise InputError(f"{path}: fractional voxel values; a label map holds whole numbers")
        data = rounded
    if data.dtype.kind in "fiu" and data.size:
        limits = np.iinfo(dtype)
        low, high = data.min(), data.max()
        if low < limits.min or high > limits.max:
            raise InputError(f"{path}: label values {low}..{high} do not fit {dtype}")
    return data.astype(dtype)


def write_nifti_file(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` with ``affine`` to ``path`` directly (callers stage it: see :func:`save_nifti`)."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    nib.save(image, str(path))


def save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` with ``affine`` atomically (temp + rename); integer arrays keep an integer type."""
    path = Path(path)
    if not has_nifti_ending(path):
        raise InputError(f"{path}: output must end in .nii or .nii.gz")
    with atomic_path(path, suffix=nifti_ending(path)) as tmp:
        write_nifti_file(tmp, array, affine)
    return path


def nifti_ending(path: str | os.PathLike) -> str:
    """``.nii.gz`` or ``.nii`` as ``path`` ends (nibabel picks compression from the ending)."""
    return ".nii.gz" if str(path).lower().endswith(".nii.gz") else ".nii"

"""Registrations remembered by content: the same scan, the same atlas and the same settings are registered once
per process and, through small files in a cache folder, once across calls (``lsseg segment`` run again on the
same file, the Slicer worker process started for every run).

The key is a hash of the voxels and affines of both images, the settings and the software versions, so a file
changed in any voxel, another atlas or another setting never meets an old result. A cache file is ``.npz``
read without pickle; one that cannot be read, or holds another key or grid, is ignored and recomputed.
Files are written atomically; the oldest are removed beyond ``MAX_CACHE_BYTES``. Failed (diverged)
registrations are never remembered.

Folder: ``$LSSEG_CACHE_DIR`` (``off`` turns the disk cache off), else ``$XDG_CACHE_HOME/lsseg/registrations``,
else ``~/.cache/lsseg/registrations``. ``with disk_cache_off():`` turns it off for a block (``--no-cache``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .. import __version__
from .atomic import write_bytes_atomic
from .deformable import Deformation, register_deformable
from .errors import LabelSharingSegError
from .registration import SEARCH_REVISION, Alignment, register_affine

CACHE_DIR_ENV = "LSSEG_CACHE_DIR"
OFF = ("off", "0", "no", "false", "none")
MAX_CACHE_BYTES = 2 * 1024**3
MEMORY_ENTRIES = 4  # a deformation at 1 mm is ~85 MB: keep only a few in memory
FORMAT = 1

T = TypeVar("T")
_memory: OrderedDict[str, Any] = OrderedDict()
_lock = threading.Lock()  # the scene logic may compute on another thread
_disk_off = [False]


@contextlib.contextmanager
def disk_cache_off() -> Iterator[None]:
    """Within the block, registrations are neither read from nor written to the disk cache."""
    before = _disk_off[0]
    _disk_off[0] = True
    try:
        yield
    finally:
        _disk_off[0] = before


def cache_folder() -> Path | None:
    """The disk cache folder, or None when turned off (``LSSEG_CACHE_DIR=off``, :func:`disk_cache_off`)."""
    if _disk_off[0]:
        return None
    chosen = os.environ.get(CACHE_DIR_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in OFF or not chosen.strip() else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lsseg" / "registrations"


def clear_memory() -> None:
    """Forget what this process remembered (the disk cache stays)."""
    with _lock:
        _memory.clear()


def content_key(kind: str, arrays: Mapping[str, np.ndarray], settings: Mapping[str, Any]) -> str:
    """Hash of the arrays' dtype, shape and bytes, the settings and the software versions."""
    import SimpleITK as sitk

    digest = hashlib.blake2b(digest_size=20)
    header = {"kind": kind, "format": FORMAT, "lsseg": __version__, "sitk": sitk.Version_VersionString()}
    digest.update(json.dumps({**header, **settings}, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.data.cast("B"))
    return f"{kind}-{digest.hexdigest()}"


def remembered(
    key: str,
    compute: Callable[[], T],
    encode: Callable[[T], dict[str, np.ndarray]],
    decode: Callable[[Mapping[str, np.ndarray]], T],
    *,
    use_disk: bool = True,
) -> T:
    """``compute()`` once per key: from this process's memory, else a readable cache file, else computed and
    stored (memory and, with ``use_disk``, a file)."""
    with _lock:
        if key in _memory:
            _memory.move_to_end(key)
            return _memory[key]
    folder = cache_folder() if use_disk else None
    path = folder / f"{key}.npz" if folder is not None else None
    value = _read(path, key, decode) if path is not None else None
    if value is None:
        value = compute()
        if path is not None:
            _write(path, key, encode(value))
    with _lock:
        _memory[key] = value
        while len(_memory) > MEMORY_ENTRIES:
            _memory.popitem(last=False)
    return value


def _read(path: Path, key: str, decode: Callable[[Mapping[str, np.ndarray]], T]) -> T | None:
    """The stored value, or None for a missing, unreadable or foreign file (never unpickled)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        if str(arrays.pop("key")) != key:
            return None
        value = decode(arrays)
        os.utime(path)  # recently used: pruned last
        return value
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError, LabelSharingSegError):
        return None


def _write(path: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Store atomically; a cache that cannot be written only costs time, so errors are swallowed."""
    buffer = io.BytesIO()
    payload: dict[str, Any] = {"key": np.array(key), **arrays}
    np.savez(buffer, **payload)
    with contextlib.suppress(OSError, LabelSharingSegError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buffer.getvalue())
        _prune(path.parent)


def _prune(folder: Path) -> None:
    entries = []
    for item in folder.glob("*.npz"):
        with contextlib.suppress(OSError):
            status = item.stat()
            entries.append((status.st_mtime, status.st_size, item))
    total = sum(size for _, size, _ in entries)
    for _, size, item in sorted(entries, key=lambda e: e[0]):
        if total <= MAX_CACHE_BYTES:
            break
        with contextlib.suppress(OSError):
            item.unlink()
            total -= size


# ------------------------------------------------------------------------------------- the two registrations


def encode_alignment(alignment: Alignment) -> dict[str, np.ndarray]:
    numbers = [
        alignment.metric,
        alignment.identity_metric,
        alignment.overlap,
        alignment.identity_overlap,
        alignment.peak_sharpness,
        alignment.identity_sharpness,
    ]
    text = {
        "warning": alignment.warning or "",
        "start": alignment.start,
        "accepted": alignment.accepted,
        "confident": alignment.confident,
    }
    return {
        "matrix": np.asarray(alignment.matrix, np.float64),
        "numbers": np.asarray(numbers, np.float64),
        "text": np.array(json.dumps(text)),
    }


def decode_alignment(arrays: Mapping[str, np.ndarray]) -> Alignment:
    matrix = np.asarray(arrays["matrix"], np.float64)
    numbers = np.asarray(arrays["numbers"], np.float64)
    text = json.loads(str(arrays["text"]))
    if matrix.shape != (4, 4) or numbers.shape != (6,) or not np.isfinite(matrix).all():
        raise ValueError("not an alignment")
    return Alignment(
        matrix,
        float(numbers[0]),
        float(numbers[1]),
        float(numbers[2]),
        float(numbers[3]),
        accepted=bool(text["accepted"]),
        warning=text["warning"] or None,
        start=str(text["start"]),
        peak_sharpness=float(numbers[4]),
        confident=bool(text["confident"]),
        identity_sharpness=float(numbers[5]),
    )


_DEFORMATION_NUMBERS = ("similarity_affine", "similarity", "min_jacobian", "folded_fraction")


def encode_deformation(deformation: Deformation) -> dict[str, np.ndarray]:
    return {
        "displacement": np.asarray(deformation.displacement, np.float32),
        "affine": np.asarray(deformation.affine, np.float64),
        "method": np.array(deformation.method),
        "numbers": np.asarray([getattr(deformation, n) for n in _DEFORMATION_NUMBERS], np.float64),
    }


def deformation_decoder(shape: tuple[int, ...]) -> Callable[[Mapping[str, np.ndarray]], Deformation]:
    """Decoder that refuses a stored field not on the grid ``shape`` (a file from elsewhere)."""

    def decode(arrays: Mapping[str, np.ndarray]) -> Deformation:
        displacement = np.asarray(arrays["displacement"], np.float32)
        numbers = np.asarray(arrays["numbers"], np.float64)
        if displacement.shape != (3, *shape) or numbers.shape != (len(_DEFORMATION_NUMBERS),):
            raise ValueError("not a deformation on this grid")
        if not np.isfinite(displacement).all():
            raise ValueError("non-finite displacement")
        values = dict(zip(_DEFORMATION_NUMBERS, (float(n) for n in numbers)))
        return Deformation(
            displacement=displacement,
            affine=np.asarray(arrays["affine"], np.float64),
            method=str(arrays["method"]),
            **values,
        )

    return decode


def affine_alignment(
    scan: np.ndarray,
    scan_affine: np.ndarray,
    reference: np.ndarray,
    reference_affine: np.ndarray,
    *,
    progress: Callable[[float, str], None] | None = None,
    use_disk: bool = True,
) -> Alignment:
    """:func:`registration.register_affine` with its default settings, remembered by content."""
    arrays = {
        "scan": np.asarray(scan),
        "scan_affine": np.asarray(scan_affine, np.float64),
        "reference": np.asarray(reference),
        "reference_affine": np.asarray(reference_affine, np.float64),
    }
    key = content_key("affine", arrays, {"search": SEARCH_REVISION})

    def compute() -> Alignment:
        return register_affine(scan, scan_affine, reference, reference_affine, progress=progress)

    alignment = remembered(key, compute, encode_alignment, decode_alignment, use_disk=use_disk)
    if progress:
        progress(1.0, "affine alignment done")
    return alignment


def deformable_registration(
    aligned_scan: np.ndarray,
    atlas: np.ndarray,
    grid_affine: np.ndarray,
    *,
    method: str,
    use_disk: bool = True,
) -> Deformation:
    """:func:`deformable.register_deformable` with its default settings, remembered by content."""
    arrays = {
        "aligned_scan": np.asarray(aligned_scan),
        "atlas": np.asarray(atlas),
        "grid_affine": np.asarray(grid_affine, np.float64),
    }
    key = content_key("deformable", arrays, {"method": method})
    return remembered(
        key,
        lambda: register_deformable(aligned_scan, atlas, grid_affine, method=method),
        encode_deformation,
        deformation_decoder(tuple(np.shape(atlas))),
        use_disk=use_disk,
    )

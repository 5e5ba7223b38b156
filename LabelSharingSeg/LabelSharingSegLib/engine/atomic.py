"""Atomic writes: a file or a whole folder is built as a hidden temporary sibling, then renamed into place, so a
crash leaves the last good version and never a half-written one under the final name."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError


def require_parent_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path after checking that its folder exists (we never create a user's folders silently)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(
            f"Output folder does not exist: {parent} (create it first or choose another output path)"
        )
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on error it is removed.

    ``suffix`` keeps the file ending on the temporary name (writers such as nibabel pick the format from it).
    """
    path = require_parent_dir(path)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _publishable_permissions(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; give it (and its files) what a plain mkdir/write would get."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for entry in folder.rglob("*"):
        os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~umask)


def check_replaceable_folder(
    target: Path,
    overwrite: bool,
    *,
    kind: str,
    markers: tuple[str, ...],
    flag: str = "--overwrite",
    error=InputError,
) -> None:
    """Refuse (``error``) a target folder that holds files unless ``overwrite``; even then only replace a folder
    that holds one of ``markers`` (it is a ``kind`` this tool wrote), never a folder of other files."""
    if not target.exists():
        return
    if not target.is_dir():
        raise error(f"{target}: exists and is not a folder; choose another --out")
    if not any(target.iterdir()):
        return
    if not overwrite:
        raise error(
            f"{target}: already exists and is not empty; pass {flag} to replace it, or choose another --out"
        )
    if not any((target / name).is_file() for name in markers):
        raise error(
            f"{target}: is not a {kind} folder (no {' or '.join(markers)}), so it is not replaced even with {flag}; "
            "choose another --out"
        )


def _remove_stale_staging(target: Path) -> None:
    """Remove what a writer killed mid-way left beside ``target``: its hidden staging folders, and its backup of
    the old version once ``target`` itself is back in place (named as ``atomic_folder`` names them)."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.(tmp|old)$")
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and (match[1] == "tmp" or target.exists()):
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder to fill; on success it replaces ``target`` (whatever was there is
    removed only after the new folder is in place), on error it is removed. Callers decide whether ``target`` may
    be replaced at all."""
    target = require_parent_dir(target)
    _remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        _publishable_permissions(staging)
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, backup / target.name)
            os.replace(staging, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

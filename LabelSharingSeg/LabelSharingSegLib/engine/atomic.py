"""Atomic writes: a file or a whole folder is built as a hidden temporary sibling, then renamed into place, so a
crash leaves the last good version and never a half-written one under the final name.

Temporary names are short and recognisable (``.lsseg-part-<pid>-<token><ending>``): a long output name cannot
make them overflow the 255-byte name limit, and :func:`remove_stale_parts` can delete the ones a killed
process left behind (their process no longer runs). Files are created with mode 0666 minus the umask, as a
plain ``open()`` would, never a private 0600. Several outputs that belong together (a label map and its names
table) are staged first and renamed into place together, so a failure leaves all of them or none.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import InputError, OutputError

PART_PREFIX = ".lsseg-part-"
_PART_PATTERN = re.compile(r"^\.lsseg-part-(\d+)-[0-9a-f]+")
_MAX_ENDING = 24  # keeps temporary names far below the 255-byte limit whatever the output is called


def require_parent_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path after checking that its folder exists (we never create a user's folders silently)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(
            f"Output folder does not exist: {parent} (create it first or choose another output path)"
        )
    return path


def describe_os_error(exc: OSError, path: str | os.PathLike) -> str:
    """One line saying what went wrong writing ``path`` and what to do."""
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"{path}: no space left on the device (free some space or write elsewhere)"
    if code in (errno.EACCES, errno.EPERM):
        return f"{path}: permission denied (choose a folder you can write to)"
    if code == errno.EROFS:
        return f"{path}: the file system is read-only"
    if code == errno.ENAMETOOLONG:
        return f"{path}: file name too long"
    if code == errno.EISDIR:
        return f"{path}: is a folder (choose a file path)"
    return f"{path}: cannot write ({exc.strerror or exc})"


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows: never guess there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or an odd number): leave its files alone
    return True


def remove_stale_parts(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files and folders in ``folder`` left by lsseg processes that no longer run.

    Called by commands before they write into a folder, so a SIGKILL during a write leaves nothing for long.
    Returns what was removed. Files of running processes (or other users') are never touched.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(os.fspath(folder)))
    except OSError:
        return removed
    for entry in entries:
        match = _PART_PATTERN.match(entry.name)
        if not match:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or (pid > 0 and _process_alive(pid)):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def part_name(ending: str = "") -> str:
    """A fresh temporary name for this process (``ending`` is capped so the name stays short)."""
    return f"{PART_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{ending[-_MAX_ENDING:]}"


def _ending(path: Path) -> str:
    return "".join(path.suffixes[-2:])


def _create_part(folder: Path, ending: str) -> Path:
    while True:
        candidate = folder / part_name(ending)
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode minus the umask
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(describe_os_error(exc, folder)) from None
        os.close(fd)
        return candidate


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform or file system can sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(parts: Sequence[Path], targets: Sequence[Path]) -> None:
    """Rename every part onto its target; if one rename fails, put back what the others replaced."""
    backups: list[Path | None] = []
    done: list[int] = []
    try:
        for part, target in zip(parts, targets):
            backup = None
            if target.is_file():
                backup = target.parent / part_name(".old")
                try:
                    os.link(target, backup)  # the old file stays in place; the link only allows undo
                except OSError:
                    backup = None
            backups.append(backup)
            os.replace(part, target)
            done.append(len(backups) - 1)
    except OSError as exc:
        for index in reversed(done):
            with contextlib.suppress(OSError):
                backup = backups[index]
                if backup is not None:
                    os.replace(backup, targets[index])
                else:
                    targets[index].unlink()
        raise OutputError(describe_os_error(exc, targets[len(backups) - 1])) from None
    finally:
        for backup in backups:
            if backup is not None:
                with contextlib.suppress(OSError):
                    backup.unlink()
    for folder in {target.parent for target in targets}:
        _fsync_folder(folder)


@contextlib.contextmanager
def atomic_paths(
    paths: Sequence[str | os.PathLike], endings: Sequence[str] | None = None
) -> Iterator[list[Path]]:
    """Yield one temporary path beside each of ``paths``; when the block succeeds all of them replace their
    targets together, and on any error (disk full, Ctrl-C, ...) every temporary file is removed and no target
    changed. ``endings`` keep the file ending on the temporary names (writers such as nibabel pick the format
    from it; default: each target's last two suffixes).

    OSErrors while writing become :class:`OutputError` with one clear line.
    """
    targets = [require_parent_dir(p) for p in paths]
    for target in targets:
        if target.is_dir():
            raise OutputError(f"{target}: is a folder (choose a file path)")
    endings = list(endings) if endings is not None else [_ending(t) for t in targets]
    parts: list[Path] = []
    try:
        for target, ending in zip(targets, endings):
            parts.append(_create_part(target.parent, ending))
        try:
            yield parts
            for part in parts:
                _fsync(part)
        except OutputError:
            raise
        except OSError as exc:
            failed = [
                t for p, t in zip(parts, targets) if exc.filename is not None and Path(exc.filename) == p
            ]
            where = failed[0] if failed else ", ".join(str(t) for t in targets)
            raise OutputError(describe_os_error(exc, where) + "; nothing was written") from None
        _publish(parts, targets)
    finally:
        for part in parts:
            with contextlib.suppress(OSError):
                part.unlink()  # only still there when something failed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on error it is removed.

    ``suffix`` keeps the file ending on the temporary name (writers such as nibabel pick the format from it).
    """
    with atomic_paths([path], None if suffix is None else [suffix]) as (part,):
        yield part


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

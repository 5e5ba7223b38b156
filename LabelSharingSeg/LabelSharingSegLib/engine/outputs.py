"""Output rules shared by every command that writes files.

* An output never replaces one of the command's inputs, nor lands inside an input folder (a bundle, a
  dataset), whatever ``overwrite`` says.
* An existing output is replaced only when the user asked for it (``--overwrite``); the message says so.
* An output is a file path: an existing folder there is refused, and its folder must already exist (lsseg
  never creates a user's folders silently).

:func:`require_writable_outputs` applies the rules before any work is done, so a refused command costs
nothing and writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .atomic import describe_os_error, require_parent_dir
from .errors import OutputError

_NAME_MAX = 255  # bytes in one file name on every common file system


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # also catches hard links and other spellings of one path
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, AttributeError):
        return False


def require_writable_outputs(
    outputs: Iterable[str | os.PathLike],
    inputs: Iterable[tuple[str, str | os.PathLike | None]] = (),
    *,
    overwrite: bool = False,
    option: str = "--overwrite",
) -> list[Path]:
    """Check ``outputs`` against the rules above; ``inputs`` are (what, path) pairs, e.g. ("-i", scan).

    Raises :class:`OutputError` naming the output, the input it collides with, or ``option``.
    """
    known = [(what, Path(p)) for what, p in inputs if p is not None]
    checked = []
    for output in map(Path, outputs):
        try:
            checked.append(_check_output(output, known, overwrite, option))
        except OutputError:
            raise
        except OSError as exc:  # e.g. a name the file system cannot hold
            raise OutputError(describe_os_error(exc, output)) from None
    return checked


def _check_output(output: Path, known: list[tuple[str, Path]], overwrite: bool, option: str) -> Path:
    if len(os.fsencode(output.name)) > _NAME_MAX:
        raise OutputError(
            f"{output}: file name too long ({len(os.fsencode(output.name))} bytes; the limit is {_NAME_MAX})"
        )
    for what, source in known:
        if source.is_dir() and _inside(output, source):
            raise OutputError(f"{output}: lies inside the input folder {source} ({what}); write elsewhere")
        if _same_file(output, source):
            raise OutputError(f"{output}: is the input {what} ({source}); choose another output path")
    if output.is_dir():
        raise OutputError(f"{output}: is a folder (choose a file path)")
    require_parent_dir(output)
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise OutputError(f"{output}: already exists (pass {option} to replace it)")
        if not output.is_file():
            raise OutputError(f"{output}: is not a regular file; refusing to replace it")
    parent = output.parent if str(output.parent) else Path(".")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: permission denied (choose a folder you can write to)")
    return output

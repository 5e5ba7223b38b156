"""What the user picked as a bundle -> the path ``load_bundle`` takes: a folder, a .zip, or the folder of a
picked ``bundle.json`` (the Browse dialog offers files, and picking the manifest is the natural choice)."""

from __future__ import annotations

import os
from pathlib import Path

from ..engine.errors import InputError

MANIFEST_NAME = "bundle.json"


def resolveBundlePath(path: str | os.PathLike | None) -> Path:
    """The bundle folder or .zip for ``path``; InputError with one line saying what to pick otherwise."""
    text = str(path or "").strip()
    if not text:
        raise InputError("No bundle chosen: select a bundle folder, its bundle.json, or a .zip file.")
    chosen = Path(os.path.expanduser(text))
    if chosen.is_dir():
        return chosen
    if chosen.is_file():
        if chosen.name.lower() == MANIFEST_NAME:
            return chosen.parent
        if chosen.suffix.lower() == ".zip":
            return chosen
        raise InputError(
            f"{chosen}: not a bundle; choose a bundle folder, the bundle.json inside it, or a bundle .zip file."
        )
    raise InputError(f"{chosen}: not found; choose a bundle folder, its bundle.json, or a bundle .zip file.")

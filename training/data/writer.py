"""Writing whole dataset folders atomically: build into a hidden temporary sibling, then rename into place,
so a crash or Ctrl-C never leaves a half-written dataset under the final name."""

from __future__ import annotations

from pathlib import Path

from LabelSharingSegLib.engine.atomic import atomic_folder, check_replaceable_folder
from LabelSharingSegLib.engine.errors import DatasetError


def prepare_output_root(out_dir) -> Path:
    """The folder that will hold the dataset folders; created if missing (it is the requested output)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"{out_dir}: exists and is not a folder; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse a non-empty target unless ``overwrite``; even then only replace a folder that is a dataset."""
    check_replaceable_folder(
        target, overwrite, kind="dataset", markers=("dataset.json",), flag="--force", error=DatasetError
    )


def dataset_folder(target, *, overwrite: bool = False):
    """Context manager yielding a temporary folder to fill; on success it replaces ``target``, on error it is
    removed."""
    target = Path(target)
    check_target(target, overwrite)
    return atomic_folder(target)

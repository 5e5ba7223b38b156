"""Fine -> coarse label maps: the ``label_hierarchy.json`` that ``lsseg data build`` writes beside a dataset's
``dataset.json``, or a user's CSV ``fine_value,coarse_value[,coarse_name]``. Parsed here and nowhere else."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from LabelSharingSegLib.engine.errors import DatasetError, InputError

HIERARCHY_FILE = "label_hierarchy.json"


@dataclass(frozen=True)
class LabelHierarchy:
    fine_to_coarse: dict[int, int]
    coarse_names: dict[int, str] = field(default_factory=dict)  # may be partial


def read_label_hierarchy(path: str | Path) -> LabelHierarchy:
    """A ``label_hierarchy.json`` (or the dataset folder holding one); DatasetError when missing or malformed."""
    path = Path(path)
    if path.is_dir():
        path = path / HIERARCHY_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: missing; only datasets built with a hierarchy (e.g. brain-aal) have one")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
        mapping = {int(fine): int(coarse) for fine, coarse in table["fine_to_coarse"].items()}
        names = {
            int(value): str(name) for name, value in table.get("coarse_labels", {}).items() if int(value) > 0
        }
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, RecursionError) as exc:
        raise DatasetError(f"{path}: not a label hierarchy (expected 'fine_to_coarse'; {exc})") from None
    if not mapping or any(f <= 0 or c <= 0 for f, c in mapping.items()):
        raise DatasetError(f"{path}: the label hierarchy holds no positive fine -> coarse pairs")
    return LabelHierarchy(mapping, names)


def read_coarse_map(path: str | Path) -> LabelHierarchy:
    """``--coarse-map``: a label hierarchy JSON, or CSV rows fine_value,coarse_value[,coarse_name] (header optional)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: coarse map not found")
    if path.suffix.lower() == ".json":
        return read_label_hierarchy(path)
    mapping, names = {}, {}
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if not row or not "".join(row).strip():
                continue
            try:
                fine, coarse = int(row[0]), int(row[1])
            except (ValueError, IndexError):
                if number == 1:
                    continue  # header
                raise InputError(f"{path}:{number}: expected fine_value,coarse_value[,coarse_name]") from None
            if fine <= 0 or coarse <= 0:
                raise InputError(f"{path}:{number}: label values must be positive")
            mapping[fine] = coarse
            if len(row) > 2 and row[2].strip():
                names[coarse] = row[2].strip()
    if not mapping:
        raise InputError(f"{path}: the coarse map holds no rows")
    return LabelHierarchy(mapping, names)

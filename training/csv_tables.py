"""CSV tables the training tools write (evaluation metrics, demo results): written whole and atomically."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path

from LabelSharingSegLib.engine.atomic import write_text_atomic


def write_csv(
    path: Path,
    rows: Sequence[dict],
    fields: Sequence[str] | None = None,
    format_value: Callable | None = None,
) -> None:
    """Write ``rows`` (columns ``fields``, default the first row's keys) with a header; ``format_value`` turns each
    value into its text (default: ``str`` as the csv module does)."""
    fields = list(fields if fields is not None else rows[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: format_value(row[k]) if format_value else row[k] for k in fields})
    write_text_atomic(path, buffer.getvalue())

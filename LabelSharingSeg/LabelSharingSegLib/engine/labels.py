"""Label descriptions shared by every part of the engine: value, name, colour and optional terminology."""

from __future__ import annotations

import colorsys
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError


@dataclass(frozen=True)
class LabelInfo:
    """One label of a label map. ``color`` is RGB in 0..1; ``terminology`` holds DICOM-style code triples
    (``{"category": [scheme, value, meaning], "type": [...]}``) when the bundle carries them."""

    value: int
    name: str
    color: tuple[float, float, float]
    terminology: dict | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        out = {"value": int(self.value), "name": self.name, "color": [round(float(c), 4) for c in self.color]}
        if self.terminology:
            out["terminology"] = self.terminology
        return out

    @classmethod
    def from_dict(cls, data: dict) -> LabelInfo:
        color = tuple(float(c) for c in data.get("color") or default_color(int(data["value"])))
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise InputError(f"label {data.get('name')!r}: colour must be three numbers in 0..1, got {color}")
        return cls(int(data["value"]), str(data["name"]), color, data.get("terminology"))


def default_color(value: int) -> tuple[float, float, float]:
    """A distinct, deterministic colour per label value (golden-ratio hue steps, alternating lightness)."""
    hue = (value * 0.618033988749895) % 1.0
    lightness = 0.45 if value % 2 else 0.6
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
    return (round(r, 4), round(g, 4), round(b, 4))


def labels_to_csv(labels: list[LabelInfo]) -> str:
    """Names table as written beside label maps: ``value,name,color`` with colour as ``#rrggbb``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["value", "name", "color"])
    for label in labels:
        writer.writerow([label.value, label.name, color_to_hex(label.color)])
    return buffer.getvalue()


def labels_from_csv(path: str | Path) -> list[LabelInfo]:
    """Read a ``value,name[,color]`` table (header required); colours as ``#rrggbb`` or missing."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read names table ({exc})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["value", "name"]:
        raise InputError(f"{path}: names table must start with a header 'value,name[,color]'")
    labels = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            value = int(row[0])
            name = row[1].strip()
            color = hex_to_color(row[2]) if len(row) > 2 and row[2].strip() else default_color(value)
        except (ValueError, IndexError):
            raise InputError(f"{path}:{line_no}: expected 'value,name[,#rrggbb]', got {row}") from None
        if value <= 0 or not name:
            raise InputError(f"{path}:{line_no}: label values must be positive integers with a name")
        labels.append(LabelInfo(value, name, color))
    values = [label.value for label in labels]
    if len(set(values)) != len(values):
        raise InputError(f"{path}: label values repeat")
    return labels


def color_to_hex(color: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{int(round(max(0.0, min(1.0, c)) * 255)):02x}" for c in color)


def hex_to_color(text: str) -> tuple[float, float, float]:
    text = text.strip().lstrip("#")
    if len(text) != 6:
        raise ValueError(text)
    return tuple(int(text[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]

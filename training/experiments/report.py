"""What the experiment reports share: mean Dice from evaluation rows, markdown tables, plots, the report header."""

from __future__ import annotations

import math
import platform
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from LabelSharingSegLib.engine.atomic import write_text_atomic


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def mean_dice(rows: Iterable[dict], **match) -> float:
    """Mean Dice over (case, label) of the rows matching ``match``; NaN entries (label absent from both) skipped."""
    values = [_number(r["dice"]) for r in rows if all(str(r.get(k)) == str(v) for k, v in match.items())]
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def mean(values) -> float:
    """Mean of the values that are not NaN (NaN when none is)."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def yes(flag: bool) -> str:
    return "**yes**" if flag else "**no**"


def fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def device_line(device: str) -> str:
    from LabelSharingSegLib.engine.device import resolve_device

    torch_device, _ = resolve_device(device)
    if torch_device.type == "cuda":
        name = torch.cuda.get_device_name(torch_device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return f"{name}; torch {torch.__version__}; Python {platform.python_version()}"


def header(title: str, config: dict, command: list[str]) -> list[str]:
    return [
        f"# {title}",
        "",
        f"Reproduce: `{shlex.join(command)}` (the same command continues a killed run; finished runs are kept).",
        "",
        f"Device: {device_line(config.get('device', 'auto'))}.",
        "",
    ]


def write_report(path: Path, lines: list[str]) -> Path:
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grouped_bars(
    path: Path,
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    ylabel: str,
    title: str,
    ylim=(0, 1),
) -> Path:
    """One group of bars per x label, one bar per series (e.g. tasks x methods)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(2.5 + 0.5 * len(groups) * max(1, len(series)), 4.2))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + k * width - 0.4 + width / 2 for i in range(len(groups))]
        ax.bar(xs, [0.0 if math.isnan(v) else v for v in values], width, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=15, ha="right")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def lines_plot(
    path: Path, xs: Sequence[float], series: dict[str, Sequence[float]], xlabel: str, ylabel: str, title: str
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, values in series.items():
        ax.plot(xs, values, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def curves_plot(
    path: Path, curves: dict[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str, title: str
) -> Path:
    """One line per name through its own (x, y) points (runs of different lengths on one axis)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, points in curves.items():
        ax.plot([x for x, _ in points], [y for _, y in points], marker=".", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path

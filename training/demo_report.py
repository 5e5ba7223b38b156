"""The demo's ``report.md``: numbers read back from the evaluation CSV files, tables, pictures and plots."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from LabelSharingSegLib.engine.atomic import write_text_atomic
from LabelSharingSegLib.engine.bundle import load_bundle

from . import sidebyside


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _mean(values) -> float:
    numbers = [float(v) for v in values if v not in ("", None)]
    numbers = [v for v in numbers if not math.isnan(v)]
    return sum(numbers) / len(numbers) if numbers else float("nan")


def report_numbers(out: Path, lcs_method: str | None = None, refine_method: str | None = None) -> dict:
    """Every number the report and the printed summary show, read from the evaluation files. ``lcs_method``: the
    LCS bundle's name in them, when other bundles (the refine network, ``refine_method``) were evaluated beside
    it."""

    def of_lcs(rows: list[dict]) -> list[dict]:
        return [r for r in rows if lcs_method is None or r["method"] == lcs_method]

    ls_rows = _read_csv(out / "evaluation" / "labelsharing" / "metrics.csv")
    all_lcs_rows = _read_csv(out / "evaluation" / "lcs" / "metrics.csv")
    lcs_rows = of_lcs(all_lcs_rows)
    refine_rows = [r for r in all_lcs_rows if refine_method is not None and r["method"] == refine_method]
    table1_path = out / "evaluation" / "lcs" / "table1.csv"
    table1 = of_lcs(_read_csv(table1_path)) if table1_path.is_file() else []
    off = _read_csv(out / "results" / "offatlas" / "offatlas.csv")
    side_path = out / "evaluation" / "lcs" / "fine_methods.csv"
    # registration rows of bundles on different atlases (and each refine bundle) kept apart, named by bundle
    side = sidebyside.by_bundle(_read_csv(side_path)) if side_path.is_file() else []
    fine_methods = {
        m: _mean(r["dice"] for r in side if r["method"] == m)
        for m in dict.fromkeys(r["method"] for r in side)
    }
    tasks = sorted({r["task"] for r in ls_rows})
    individual_path = out / "evaluation" / "individual" / "metrics.csv"
    individual_rows = _read_csv(individual_path) if individual_path.is_file() else []
    return {
        "labelsharing": {
            t: {
                "dice": _mean(r["dice"] for r in ls_rows if r["task"] == t),
                "cases": len({r["case"] for r in ls_rows if r["task"] == t}),
                "labels": len({r["label_value"] for r in ls_rows if r["task"] == t}),
            }
            for t in tasks
        },
        # one model per task (the baseline bundles beside the shipped ones, when present)
        "individual": {
            t: {"dice": _mean(r["dice"] for r in individual_rows if r["task"] == t)}
            for t in sorted({r["task"] for r in individual_rows})
        },
        "lcs_coarse": {
            "dice": _mean(r["dice"] for r in lcs_rows),
            "cases": len({r["case"] for r in lcs_rows}),
            "labels": len({r["label_value"] for r in lcs_rows}),
        },
        "refine_coarse": {"dice": _mean(r["dice"] for r in refine_rows)},
        "lcs_fine": {
            "fine_dice": _mean(r["fine_dice"] for r in table1),
            "naive_dice": _mean(r["naive_dice"] for r in table1),
            "labels": len({r["fine_value"] for r in table1}),
        },
        "offatlas": {
            mode: _mean(r["dice"] for r in off if r["mode"] == mode) for mode in ("aligned", "not aligned")
        },
        "fine_methods": fine_methods,
    }


def _f(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _fine_methods_section(out: Path, means: dict) -> list[str]:
    """The fine labels drawn on the atlas, every method side by side; the best one leads."""
    known = {m: v for m, v in means.items() if not math.isnan(v)}
    if not known:
        return []
    best = max(known, key=known.get)
    lines = [
        "",
        "## Fine labels drawn on the atlas: every method side by side",
        "",
        f"**Best: {best}, mean Dice {_f(known[best])}** (each fine AAL label, never trained, decided on its own; "
        "per label: `evaluation/lcs/summary.md`, `evaluation/lcs/fine_methods.csv`).",
        "",
        "| method | mean fine Dice |",
        "|---|---|",
    ]
    lines += [f"| {m} | {_f(v)} |" for m, v in means.items()]
    plots = [
        p
        for p in ("fine_methods_paired.png", "fine_methods_labels.png")
        if (out / "evaluation" / "lcs" / p).is_file()
    ]
    return lines + [""] + [f"![{p[:-4]}](evaluation/lcs/{p})" for p in plots]


def write_report(
    out: Path,
    numbers: dict,
    bundles: tuple[Path, Path],
    source: str,
    examples: list[dict],
    lcs: dict,
    off: dict,
    real: dict | None = None,
) -> Path:
    rel = lambda p: Path(p).resolve().relative_to(out.resolve()).as_posix()  # noqa: E731
    ls_bundle, lcs_bundle = (load_bundle(p) for p in bundles)
    lines = [
        "# LabelSharingSeg demo report",
        "",
        f"Bundles: {source}. Label sharing: `{bundles[0]}` (id {ls_bundle.bundle_id[:12]}); "
        f"LCS: `{bundles[1]}` (id {lcs_bundle.bundle_id[:12]}).",
        "Test cases come from the FSL MNI152 template, which no training case was made from (training: ICBM "
        "2009c/2009a templates with random deformations and intensity changes). Every number below is read from "
        "the evaluation files (`evaluation/*/metrics.csv`, `evaluation/lcs/table1.csv`, "
        "`results/offatlas/offatlas.csv`).",
        "",
        "## Label sharing: one network, three tasks",
        "",
        f"Shared label space: n* = {ls_bundle.label_space.n_shared} shared labels serve "
        f"{len(ls_bundle.task_names())} tasks (see `evaluation/labelsharing/summary.md` for per-label Dice).",
        "",
    ]
    own = numbers.get("individual", {})
    # the obvious alternative beside it: a model of its own per task, trained at the same total budget
    if own:
        lines += [
            "| task | test cases | labels | mean Dice | one model per task |",
            "|---|---|---|---|---|",
        ]
    else:
        lines += ["| task | test cases | labels | mean Dice |", "|---|---|---|---|"]
    for task, row in numbers["labelsharing"].items():
        beside = f" {_f(own.get(task, {}).get('dice', float('nan')))} |" if own else ""
        lines.append(f"| {task} | {row['cases']} | {row['labels']} | {_f(row['dice'])} |{beside}")
    lines += [""] + [f"![{e['task']}]({rel(e['figure'])})" for e in examples]
    lines += [
        "",
        "## LCS: atlas-conditioned, trained on coarse labels",
        "",
        "| conditioned on | labels | mean Dice |",
        "|---|---|---|",
        f"| trained coarse labels (atlas) | {numbers['lcs_coarse']['labels']} | {_f(numbers['lcs_coarse']['dice'])} |",
        f"| fine AAL labels drawn on the atlas, never trained | {numbers['lcs_fine']['labels']} | "
        f"{_f(numbers['lcs_fine']['fine_dice'])} |",
        f"| (naive: coarse prediction scored against fine truth) | {numbers['lcs_fine']['labels']} | "
        f"{_f(numbers['lcs_fine']['naive_dice'])} |",
        "",
        "Per fine label: `evaluation/lcs/summary.md` (Ma et al. 2022, Table 1).",
        "",
    ] + [f"![lcs]({rel(p)})" for p in lcs["figures"]]
    lines += _fine_methods_section(out, numbers["fine_methods"])
    lines += [
        "",
        "## A scan that is not in atlas space",
        "",
        f"Test case `{off['case']}` moved by a random affine transform (rotation up to 20 degrees, shift up to "
        "25 mm, scaling), resampled onto an oblique, anisotropic (1.8 x 2.6 x 2.2 mm), cropped grid.",
        "",
        "| segmentation | mean Dice (coarse labels) |",
        "|---|---|",
        f"| aligned automatically to the atlas (default) | {_f(numbers['offatlas']['aligned'])} |",
        f"| without alignment | {_f(numbers['offatlas']['not aligned'])} |",
        "",
        f"![off-atlas]({rel(off['figure'])})",
        "",
    ]
    lines += _real_scan_lines(out, real, numbers) + [
        "",
        "## Files",
        "",
        "Each result is a label map on the scan's own grid (`.nii.gz`) with its names table (`.csv`: value, name, "
        "colour) and the same as a Slicer segmentation (`.seg.nrrd`), beside the image it was made from:",
        "",
    ]
    for e in examples:
        lines.append(f"- label sharing, {e['task']}: " + ", ".join(f"`{rel(f)}`" for f in e["files"]))
    lines.append("- LCS: " + ", ".join(f"`{rel(f)}`" for f in lcs["files"]))
    lines.append("- off-atlas scan: " + ", ".join(f"`{rel(f)}`" for f in off["files"]))
    lines += [
        "",
        "Open in 3D Slicer: drag the `*_image.nii.gz` and the matching `.seg.nrrd` into the Slicer window "
        "(or File > Add Data); the segments carry their names and colours.",
        "",
        "Evaluation details and plots: `evaluation/labelsharing/summary.md`, `evaluation/lcs/summary.md`.",
    ]
    return _write(out / "report.md", "\n".join(lines) + "\n")


def _real_scan_lines(out: Path, real: dict | None, numbers: dict) -> list[str]:
    from .realscan import report_lines

    if real is None:
        return []
    if "skipped" in real:
        return ["## A real scan as it comes from the scanner", "", f"Skipped: {real['skipped']}"]
    return report_lines(out, real, numbers)


def _write(path: Path, text: str) -> Path:
    write_text_atomic(path, text)
    return path

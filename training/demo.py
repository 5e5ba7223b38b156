"""``lsseg demo``: the whole product on real anatomy, from a fresh machine.

1. Builds the demo data from packaged real atlases (``multitask``: three 2D tasks; ``brain-aal``: 3D AAL
   regions with a fine -> coarse table); test cases come from a template no training case was made from.
2. Uses the shipped bundles (``LabelSharingSeg/Resources/Bundles``) or, with ``--train``, trains both from
   scratch within a time budget.
3. Evaluates (the same inference code Slicer uses): label sharing on every task; LCS on its trained coarse
   labels and on fine labels it never saw, drawn as atlas masks (Ma et al. 2022, Table 1).
4. Moves a held-out scan off the atlas (random affine, oblique anisotropic cropped grid) and segments it with
   and without automatic alignment.
5. Writes ``report.md`` (tables read from the evaluation CSV files, overlay pictures, Dice plots), results as
   ``.nii.gz`` + names table and ``.seg.nrrd`` (Slicer), and prints where to look.

A second run reuses the data, bundles and evaluations already in the output folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.atomic import write_text_atomic
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.device import DEVICE_CHOICES
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.inference import segment_atlas_labels, segment_task
from LabelSharingSegLib.engine.labels import LabelInfo, default_color, labels_to_csv
from LabelSharingSegLib.engine.nifti_io import save_nifti

from .csv_tables import write_csv
from .datasets import as_volume, load_case, read_dataset
from .label_hierarchy import HIERARCHY_FILE, read_label_hierarchy
from .metrics import dice
from .segnrrd import write_seg_nrrd

LS_BUNDLE = "labelsharing-multitask"
LCS_BUNDLE = "lcs-brain-aal"
MULTITASK_FOLDERS = ("Dataset811_AxialTissue", "Dataset812_SagittalLobes", "Dataset813_CoronalSubcortical")
BRAIN_FOLDER = "Dataset801_BrainAAL"


@dataclass(frozen=True)
class DemoSettings:
    """Data and ``--train`` budget. ``FULL`` builds the data the shipped bundles were trained and evaluated on;
    its step counts fit the default 15-minute ``--train`` budget on 2 CPU cores (the shipped bundles were
    trained longer, by ``scripts/train_demo_bundles.sh``). ``TINY`` is for CI-sized runs."""

    multitask_cases: int
    multitask_test_cases: int
    multitask_spacing: float
    brain_cases: int
    brain_test_cases: int
    brain_spacing: float
    ls_steps: int
    ls_batch: int
    ls_patch: tuple[int, ...]
    ls_spacing: tuple[float, ...]
    ls_channels: tuple[int, ...]
    lcs_steps: int
    lcs_spacing: tuple[float, ...]
    # four levels: the atlas mask reaches the bottleneck pooled by 8 (24 mm cells at 3 mm), fine enough for
    # sub-regions; five levels (pooling by 16, as Ma et al. 2022 at 1 mm) gave 48 mm cells and learnt far slower
    lcs_channels: tuple[int, ...]
    seed: int = 0
    realscan_spacing: float = 2.0  # in-plane mm of the real whole-head scan's scanner grid (slices 1.2x)


FULL = DemoSettings(
    40,
    10,
    1.0,
    20,
    5,
    2.0,
    2000,
    8,
    (96, 96),
    (1.5, 1.5),
    (8, 16, 32, 64, 128),
    1500,
    (3.0, 3.0, 3.0),
    (8, 16, 32, 64),
)
TINY = DemoSettings(
    5,
    1,
    2.0,
    3,
    1,
    6.0,
    4,
    2,
    (32, 32),
    (4.0, 4.0),
    (4, 8, 16, 32, 64),
    3,
    (6.0, 6.0, 6.0),
    (4, 8, 16, 32),
    realscan_spacing=4.0,
)


def shipped_bundles_dir() -> Path:
    """``LabelSharingSeg/Resources/Bundles`` beside the installed ``LabelSharingSegLib`` package."""
    import LabelSharingSegLib

    return Path(LabelSharingSegLib.__file__).resolve().parent.parent / "Resources" / "Bundles"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="build real-anatomy demo data, segment and evaluate with the shipped bundles, write a report",
        description=__doc__.split("\n\n")[0]
        + " Writes OUT/report.md; see the module docstring for the steps.",
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default ./demo-out)")
    p.add_argument(
        "--train",
        action="store_true",
        help="retrain both bundles from scratch first (bounded by --minutes) instead of the shipped ones",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=15.0,
        help="time budget for --train, both bundles together (default 15; 1/3 label sharing, 2/3 LCS)",
    )
    p.add_argument(
        "--bundles",
        type=Path,
        help=f"folder holding {LS_BUNDLE}/ and {LCS_BUNDLE}/ (default: the shipped bundles)",
    )
    p.add_argument("--tiny", action="store_true", help="CI-sized data and training (fast, low accuracy)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.set_defaults(func=run_demo)


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# ------------------------------------------------------------------------------------------ data


def prepare_data(root: Path, settings: DemoSettings) -> tuple[list[Path], Path]:
    """Build (or reuse) the multitask and brain-aal datasets; returns (multitask folders, brain folder)."""
    from .data.build import build_set

    multitask = [root / name for name in MULTITASK_FOLDERS]
    brain = root / BRAIN_FOLDER
    if all((d / "dataset.json").is_file() for d in multitask):
        _say(f"reusing multitask data in {root}")
    else:
        build_set(
            "multitask",
            root,
            cases=settings.multitask_cases,
            test_cases=settings.multitask_test_cases,
            spacing=settings.multitask_spacing,
            seed=settings.seed,
            progress=_say,
        )
    if (brain / "dataset.json").is_file():
        _say(f"reusing brain-aal data in {brain}")
    else:
        build_set(
            "brain-aal",
            root,
            cases=settings.brain_cases,
            test_cases=settings.brain_test_cases,
            spacing=settings.brain_spacing,
            seed=settings.seed,
            progress=_say,
        )
    return multitask, brain


def _check_settings(out: Path, settings: DemoSettings, source: str) -> None:
    """A demo folder holds one configuration; mixing data or bundles of two would make the report lie."""
    record = {"settings": asdict(settings), "bundles": source}
    path = out / "demo_settings.json"
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != json.loads(json.dumps(record)):
            raise InputError(
                f"{out} holds a demo run with other settings ({previous.get('bundles')}); "
                "choose another --out folder or delete this one"
            )
    else:
        write_text_atomic(path, json.dumps(record, indent=2))


# ------------------------------------------------------------------------------------------ bundles


def train_bundles(
    target: Path, multitask: list[Path], brain: Path, settings: DemoSettings, minutes: float, device: str
) -> tuple[Path, Path]:
    """Train both demo bundles with the same settings as scripts/train_demo_bundles.sh, time-bounded."""
    from .api import LCSRunConfig, TaskRunConfig, TrainSettings, run_training

    target.mkdir(parents=True, exist_ok=True)
    ls_out, lcs_out = target / LS_BUNDLE, target / LCS_BUNDLE
    if not (ls_out / "bundle.json").is_file():
        _say(f"training the label-sharing bundle (up to {minutes / 3:.1f} min)")
        ls_settings = TrainSettings(
            steps=settings.ls_steps,
            batch=settings.ls_batch,
            patch=tuple(settings.ls_patch),
            spacing=tuple(settings.ls_spacing),
            time_limit_min=round(minutes / 3, 3),
            name="Label sharing demo (brain slices: axial tissue, sagittal lobes, coronal deep grey)",
            channels=tuple(settings.ls_channels),
            seed=settings.seed,
            device=device,
        )
        run_training(TaskRunConfig("labelsharing", tuple(multitask), ls_out, ls_settings))
    else:
        _say(f"reusing {ls_out}")
    if not (lcs_out / "bundle.json").is_file():
        _say(f"training the LCS bundle on coarse labels (up to {2 * minutes / 3:.1f} min)")
        lcs_settings = TrainSettings(
            steps=settings.lcs_steps,
            spacing=tuple(settings.lcs_spacing),
            time_limit_min=round(2 * minutes / 3, 3),
            name="LCS demo (AAL lobes; draw finer regions on the atlas)",
            channels=tuple(settings.lcs_channels),
            seed=settings.seed,
            device=device,
        )
        run_training(LCSRunConfig(brain, lcs_out, lcs_settings, coarse_map=brain / HIERARCHY_FILE))
    else:
        _say(f"reusing {lcs_out}")
    return ls_out, lcs_out


def find_bundles(folder: Path) -> tuple[Path, Path]:
    paths = []
    for name in (LS_BUNDLE, LCS_BUNDLE):
        candidates = [folder / name, folder / f"{name}.zip"]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise InputError(
                f"{folder}: no {name} bundle; run 'lsseg demo --train' to train the demo bundles"
            )
        paths.append(found)
    return paths[0], paths[1]


# ------------------------------------------------------------------------------------------ results


def _stem(case_id: str) -> str:
    return case_id.replace("/", "_")


def write_result(
    folder: Path, stem: str, labelmap: np.ndarray, affine: np.ndarray, labels: list[LabelInfo]
) -> list[Path]:
    """Label map (.nii.gz) + names table (.csv) + Slicer segmentation (.seg.nrrd)."""
    folder.mkdir(parents=True, exist_ok=True)
    nifti = save_nifti(folder / f"{stem}.nii.gz", labelmap, affine)
    names = folder / f"{stem}.csv"
    write_text_atomic(names, labels_to_csv(labels))
    seg = write_seg_nrrd(folder / f"{stem}.seg.nrrd", labelmap, affine, labels)
    return [nifti, names, seg]


def _display_slice(volume: np.ndarray, focus: np.ndarray) -> tuple[int, np.ndarray]:
    """The axial index with the most labelled voxels (2D data: the only slice), rotated for display."""
    if volume.shape[2] == 1:
        k = 0
    else:
        counts = (focus > 0).sum(axis=(0, 1))
        k = int(np.argmax(counts)) if counts.any() else volume.shape[2] // 2
    return k, np.rot90(volume[:, :, k])


def save_overlay(
    path: Path, image: np.ndarray, panels: list[tuple[str, np.ndarray]], labels: list[LabelInfo], title: str
) -> Path:
    """Image with each label map in ``panels`` overlaid (label colours), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {label.value: label.color for label in labels}
    k, background = _display_slice(image, panels[0][1])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.9), squeeze=False)
    for ax, (name, labelmap) in zip(axes[0], panels):
        ax.imshow(background, cmap="gray", interpolation="nearest")
        shown = np.rot90(labelmap[:, :, k])
        rgba = np.zeros(shown.shape + (4,))
        for value in np.unique(shown):
            if value:
                rgba[shown == value] = (*colours.get(int(value), default_color(int(value))), 0.5)
        ax.imshow(rgba, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _coarse_lut(brain: Path, max_value: int) -> np.ndarray:
    """Lookup table fine AAL value -> coarse value, from the dataset's label_hierarchy.json."""
    hierarchy = read_label_hierarchy(brain).fine_to_coarse
    lut = np.zeros(max(max_value, max(hierarchy)) + 1, np.int32)
    for fine, coarse in hierarchy.items():
        lut[fine] = coarse
    return lut


def _network(bundle, device: str):
    """Built once per bundle and reused for every call (instead of once per call)."""
    from LabelSharingSegLib.engine.device import resolve_device

    return bundle.build_network(resolve_device(device)[0])


def _volume_and_truth(case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image, truth, affine = load_case(case)
    volume, truth = as_volume(image[0]), as_volume(truth)
    return volume, truth.astype(np.int32), affine


def labelsharing_examples(out: Path, bundle_path: Path, multitask: list[Path], device: str) -> list[dict]:
    """Segment the first test case of every task; write results and overlays."""
    bundle = load_bundle(bundle_path)
    network = _network(bundle, device)
    examples = []
    for folder in multitask:
        dataset = read_dataset(folder)
        task = dataset.task_name()
        case = dataset.test[0]
        volume, truth, affine = _volume_and_truth(case)
        result = segment_task(bundle, volume, affine, task, device=device, network=network)
        target = out / "results" / "labelsharing" / task
        files = write_result(
            target, f"{_stem(case.case_id)}_segmentation", result.labelmap, affine, result.labels
        )
        save_nifti(target / f"{_stem(case.case_id)}_image.nii.gz", volume, affine)
        picture = save_overlay(
            out / "figures" / f"labelsharing_{task}.png",
            volume,
            [("ground truth", truth), ("label sharing", result.labelmap)],
            result.labels,
            f"{task}: {case.case_id}",
        )
        examples.append({"task": task, "case": case.case_id, "files": files, "figure": picture})
        _say(f"label sharing, task {task}: wrote {files[0]}")
    return examples


def _fine_atlas_labels(bundle, brain: Path) -> tuple[np.ndarray, list[LabelInfo]]:
    """The atlas case's fine (never trained) labels on the bundle's atlas grid, as a user would draw them."""
    from .evaluate import _fine_atlas

    dataset = read_dataset(brain)
    atlas_labels, atlas_affine, _ = bundle.atlas_labels()
    training = bundle.manifest.training
    fine = _fine_atlas(dataset, training.get("atlas_case"), atlas_affine, atlas_labels.shape)
    if fine is None:
        raise InputError(f"{bundle.path}: its atlas case is not in {brain}; rebuild the demo data")
    names = dataset.foreground_labels()
    values = [v for v in sorted(names) if (fine == v).any()]
    return fine, [LabelInfo(v, names[v], default_color(v)) for v in values]


def lcs_examples(out: Path, bundle_path: Path, brain: Path, device: str) -> dict:
    """Segment the first test case with the trained coarse labels and with fine atlas labels."""
    bundle = load_bundle(bundle_path)
    network = _network(bundle, device)
    atlas_map, _, coarse_labels = bundle.atlas_labels()
    case = read_dataset(brain).test[0]
    volume, truth, affine = _volume_and_truth(case)
    target = out / "results" / "lcs"
    stem = _stem(case.case_id)
    coarse = segment_atlas_labels(
        bundle,
        volume,
        affine,
        np.stack([atlas_map == lab.value for lab in coarse_labels]),
        coarse_labels,
        device=device,
        network=network,
    )
    files = write_result(target, f"{stem}_coarse", coarse.labelmap, affine, coarse.labels)
    fine_atlas, fine_labels = _fine_atlas_labels(bundle, brain)
    fine = segment_atlas_labels(
        bundle,
        volume,
        affine,
        np.stack([fine_atlas == lab.value for lab in fine_labels]),
        fine_labels,
        device=device,
        network=network,
        align=coarse.alignment,
    )
    files += write_result(target, f"{stem}_fine", fine.labelmap, affine, fine.labels)
    save_nifti(target / f"{stem}_image.nii.gz", volume, affine)
    coarse_truth = _coarse_lut(brain, int(truth.max()))[truth]
    figures = [
        save_overlay(
            out / "figures" / "lcs_coarse.png",
            volume,
            [("ground truth (coarse)", coarse_truth), ("LCS, trained coarse labels", coarse.labelmap)],
            coarse.labels,
            f"LCS coarse: {case.case_id}",
        ),
        save_overlay(
            out / "figures" / "lcs_fine.png",
            volume,
            [("ground truth (fine AAL)", truth), ("LCS, fine labels never trained", fine.labelmap)],
            fine.labels,
            f"LCS fine: {case.case_id}",
        ),
    ]
    _say(f"LCS: wrote {files[0]} and {files[3]} ({len(fine_labels)} fine labels drawn on the atlas)")
    return {"case": case.case_id, "files": files, "figures": figures}


def off_atlas_example(out: Path, bundle_path: Path, brain: Path, device: str, seed: int) -> dict:
    """A held-out scan moved off the atlas: segment with and without automatic alignment; Dice vs the
    identically moved ground truth (coarse labels)."""
    from .offatlas import move_off_atlas, random_transform

    bundle = load_bundle(bundle_path)
    network = _network(bundle, device)
    atlas_map, _, coarse_labels = bundle.atlas_labels()
    masks = np.stack([atlas_map == lab.value for lab in coarse_labels])
    dataset = read_dataset(brain)
    case = dataset.test[0]
    volume, truth, affine = _volume_and_truth(case)
    moved = move_off_atlas(
        volume,
        _coarse_lut(brain, int(truth.max()))[truth],
        affine,
        random_transform(np.random.default_rng(seed), degrees=20, shift=25),
        spacing=(1.8, 2.6, 2.2),
    )
    target = out / "results" / "offatlas"
    target.mkdir(parents=True, exist_ok=True)
    save_nifti(target / "scan_image.nii.gz", moved.image, moved.affine)
    save_nifti(target / "scan_truth_coarse.nii.gz", moved.labels, moved.affine)
    rows = []
    results = {}
    for mode, align in (("aligned", None), ("not aligned", False)):
        started = time.perf_counter()
        result = segment_atlas_labels(
            bundle,
            moved.image,
            moved.affine,
            masks,
            coarse_labels,
            device=device,
            network=network,
            align=align,
        )
        seconds = time.perf_counter() - started
        results[mode] = result
        for label in coarse_labels:
            rows.append(
                {
                    "mode": mode,
                    "label_value": label.value,
                    "label_name": label.name,
                    "dice": dice(result.labelmap == label.value, moved.labels == label.value),
                    "seconds": round(seconds, 2),
                }
            )
    files = write_result(
        target, "scan_segmentation_aligned", results["aligned"].labelmap, moved.affine, coarse_labels
    )
    csv_path = target / "offatlas.csv"
    write_csv(csv_path, rows)
    figure = save_overlay(
        out / "figures" / "offatlas.png",
        moved.image,
        [
            ("ground truth (moved)", moved.labels),
            ("aligned automatically", results["aligned"].labelmap),
            ("without alignment", results["not aligned"].labelmap),
        ],
        coarse_labels,
        f"Off-atlas scan ({case.case_id} moved by a random affine, cropped)",
    )
    _say(f"off-atlas scan: wrote {files[0]}")
    return {"case": case.case_id, "files": files, "csv": csv_path, "figure": figure}


# ------------------------------------------------------------------------------------------ report


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _mean(values) -> float:
    numbers = [float(v) for v in values if v not in ("", None)]
    numbers = [v for v in numbers if not math.isnan(v)]
    return sum(numbers) / len(numbers) if numbers else float("nan")


def report_numbers(out: Path) -> dict:
    """Every number the report and the printed summary show, read from the evaluation files."""
    ls_rows = _read_csv(out / "evaluation" / "labelsharing" / "metrics.csv")
    lcs_rows = _read_csv(out / "evaluation" / "lcs" / "metrics.csv")
    table1_path = out / "evaluation" / "lcs" / "table1.csv"
    table1 = _read_csv(table1_path) if table1_path.is_file() else []
    off = _read_csv(out / "results" / "offatlas" / "offatlas.csv")
    tasks = sorted({r["task"] for r in ls_rows})
    return {
        "labelsharing": {
            t: {
                "dice": _mean(r["dice"] for r in ls_rows if r["task"] == t),
                "cases": len({r["case"] for r in ls_rows if r["task"] == t}),
                "labels": len({r["label_value"] for r in ls_rows if r["task"] == t}),
            }
            for t in tasks
        },
        "lcs_coarse": {
            "dice": _mean(r["dice"] for r in lcs_rows),
            "cases": len({r["case"] for r in lcs_rows}),
            "labels": len({r["label_value"] for r in lcs_rows}),
        },
        "lcs_fine": {
            "fine_dice": _mean(r["fine_dice"] for r in table1),
            "naive_dice": _mean(r["naive_dice"] for r in table1),
            "labels": len({r["fine_value"] for r in table1}),
        },
        "offatlas": {
            mode: _mean(r["dice"] for r in off if r["mode"] == mode) for mode in ("aligned", "not aligned")
        },
    }


def _f(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


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
        "| task | test cases | labels | mean Dice |",
        "|---|---|---|---|",
    ]
    for task, row in numbers["labelsharing"].items():
        lines.append(f"| {task} | {row['cases']} | {row['labels']} | {_f(row['dice'])} |")
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


def real_scan_section(out: Path, bundles: tuple[Path, Path], device: str, spacing: float) -> dict:
    """Results on the real whole-head scan; {"skipped": reason} when its Debian package is not installed."""
    from LabelSharingSegLib.engine.errors import DatasetError

    from .realscan import real_scan_example

    try:
        return real_scan_example(out, bundles, device, spacing)
    except DatasetError as exc:
        _say(f"skipping the real scan: {exc}")
        return {"skipped": str(exc)}


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


# ------------------------------------------------------------------------------------------ command


def run_demo(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    started = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    settings = TINY if args.tiny else FULL
    source = (
        "trained by this run (--train)" if args.train else f"from {args.bundles or 'the shipped bundles'}"
    )
    _check_settings(out, settings, source)
    multitask, brain = prepare_data(out / "data", settings)
    if args.train:
        bundles = train_bundles(out / "bundles", multitask, brain, settings, args.minutes, args.device)
    else:
        bundles = find_bundles(args.bundles or shipped_bundles_dir())
    for name, bundle_path, data in (("labelsharing", bundles[0], multitask), ("lcs", bundles[1], [brain])):
        target = out / "evaluation" / name
        if (target / "summary.md").is_file():
            _say(f"reusing the evaluation in {target}")
            continue
        _say(f"evaluating {bundle_path.name} on the held-out test cases")
        target.parent.mkdir(parents=True, exist_ok=True)
        evaluate([bundle_path], data, target, device=args.device)
    examples = labelsharing_examples(out, bundles[0], multitask, args.device)
    lcs = lcs_examples(out, bundles[1], brain, args.device)
    off = off_atlas_example(out, bundles[1], brain, args.device, settings.seed)
    real = real_scan_section(out, bundles, args.device, settings.realscan_spacing)
    numbers = report_numbers(out)
    report = write_report(out, numbers, bundles, source, examples, lcs, off, real)
    print()
    print(f"LabelSharingSeg demo finished in {time.perf_counter() - started:.0f} s")
    for task, row in numbers["labelsharing"].items():
        print(f"  label sharing  {task:22s} mean Dice {_f(row['dice'])} over {row['cases']} test case(s)")
    print(f"  LCS            coarse (trained) labels  mean Dice {_f(numbers['lcs_coarse']['dice'])}")
    print(
        f"  LCS            fine labels, never trained mean Dice {_f(numbers['lcs_fine']['fine_dice'])} "
        f"(naive {_f(numbers['lcs_fine']['naive_dice'])})"
    )
    print(
        f"  off-atlas scan aligned {_f(numbers['offatlas']['aligned'])} vs not aligned "
        f"{_f(numbers['offatlas']['not aligned'])}"
    )
    if "csv" in real:
        from .realscan import real_scan_numbers

        for (bundle, task, mode), (dice, count) in real_scan_numbers(real["csv"]).items():
            print(f"  real scan      {bundle} {task}, {mode}: mean Dice {_f(dice)} over {count} labels")
    print(f"Report: {report}")
    print(f"Open in Slicer: drag {out / 'results'}/*/*_image.nii.gz and the matching .seg.nrrd into Slicer.")
    return 0

"""``lsseg demo``: the whole product on real anatomy, from a fresh machine.

1. Builds the demo data from packaged real atlases (``multitask-brain``: three 2D tasks on slices through the
   whole brain; ``brain-aal``: 3D AAL regions with a fine -> coarse table); test cases come from a template no
   training case was made from.
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
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from LabelSharingSegLib.engine.atomic import write_text_atomic
from LabelSharingSegLib.engine.device import DEVICE_CHOICES
from LabelSharingSegLib.engine.errors import InputError

from .data.build import REFERENCE_FILE
from .demo_examples import (
    _say,
    labelsharing_examples,
    lcs_examples,
    off_atlas_example,
    real_scan_section,
)
from .demo_report import _f, report_numbers, write_report
from .label_hierarchy import HIERARCHY_FILE

LS_BUNDLE = "labelsharing-multitask"
LCS_BUNDLE = "lcs-brain-aal"
REFINE_BUNDLE = "lcs-refine-brain-aal"  # optional: evaluated beside the LCS bundle when the folder has it
# optional: one model per task (`lsseg train individual --out`), shown beside label sharing when the baselines
# folder (or --bundles) has it
INDIVIDUAL_BUNDLES = "individual-multitask"
# the shipped label-sharing bundle's data: its three 2D tasks on slices through the whole brain
MULTITASK_SET = "multitask-brain"
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
    240,
    40,
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


def baseline_bundles_dir() -> Path:
    """``baselines/`` at the repository root: bundles of the alternatives the demo shows beside the shipped ones,
    kept out of the Slicer extension (absent from an installed package: the demo then shows no such rows)."""
    return shipped_bundles_dir().parents[2] / "baselines"


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
        help=f"folder holding {LS_BUNDLE}/ and {LCS_BUNDLE}/ (default: the shipped bundles), optionally "
        f"{REFINE_BUNDLE}/ and {INDIVIDUAL_BUNDLES}/ (one model per task; default: the repository's baselines/)",
    )
    p.add_argument("--tiny", action="store_true", help="CI-sized data and training (fast, low accuracy)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.set_defaults(func=run_demo)


# ------------------------------------------------------------------------------------------ data


def prepare_data(root: Path, settings: DemoSettings) -> tuple[list[Path], Path]:
    """Build (or reuse) the multitask and brain-aal datasets; returns (multitask folders, brain folder)."""
    from .data.build import SETS, build_set

    multitask = [root / spec.folder for spec in SETS[MULTITASK_SET]]
    brain = root / BRAIN_FOLDER
    if all((d / "dataset.json").is_file() for d in multitask):
        _say(f"reusing multitask data in {root}")
    else:
        build_set(
            MULTITASK_SET,
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
    # both bundles store the undeformed template: label sharing aligns volumes to it (then cuts them in each
    # task's plane), LCS shows aligned scans to its network in the position its training targets had
    template = brain / REFERENCE_FILE
    reference = template if template.is_file() else None
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
        run_training(
            TaskRunConfig("labelsharing", tuple(multitask), ls_out, ls_settings, reference=reference)
        )
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
        run_training(
            LCSRunConfig(brain, lcs_out, lcs_settings, coarse_map=brain / HIERARCHY_FILE, reference=reference)
        )
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


def find_refine_bundle(folder: Path) -> Path | None:
    """The refine bundle beside the demo bundles (shipped; not trained by ``--train``), or None."""
    return next((c for c in (folder / REFINE_BUNDLE, folder / f"{REFINE_BUNDLE}.zip") if c.exists()), None)


def find_individual_bundles(folder: Path) -> list[Path]:
    """The one-model-per-task bundles beside the demo bundles (shipped; not trained by ``--train``), or none."""
    root = folder / INDIVIDUAL_BUNDLES
    return sorted(p for p in root.iterdir() if (p / "bundle.json").is_file()) if root.is_dir() else []


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
    # the refine network is judged beside the paper's LCS, both on the same registrations
    refine = None if args.train else find_refine_bundle(args.bundles or shipped_bundles_dir())
    lcs_paths = [bundles[1], *([refine] if refine else [])]
    individual = [] if args.train else find_individual_bundles(args.bundles or baseline_bundles_dir())
    evaluations = [("labelsharing", [bundles[0]], multitask), ("lcs", lcs_paths, [brain])]
    evaluations += [("individual", individual, multitask)] if individual else []
    for name, bundle_paths, data in evaluations:
        target = out / "evaluation" / name
        if (target / "summary.md").is_file():
            _say(f"reusing the evaluation in {target}")
            continue
        _say(f"evaluating {', '.join(p.name for p in bundle_paths)} on the held-out test cases")
        target.parent.mkdir(parents=True, exist_ok=True)
        evaluate(bundle_paths, data, target, device=args.device)
    examples = labelsharing_examples(out, bundles[0], multitask, args.device)
    lcs = lcs_examples(out, bundles[1], brain, args.device)
    off = off_atlas_example(out, bundles[1], brain, args.device, settings.seed)
    real = real_scan_section(out, bundles, args.device, settings.realscan_spacing, brain, refine, individual)
    numbers = report_numbers(out, lcs_method=bundles[1].name, refine_method=refine.name if refine else None)
    report = write_report(out, numbers, bundles, source, examples, lcs, off, real)
    print()
    print(f"LabelSharingSeg demo finished in {time.perf_counter() - started:.0f} s")
    for task, row in numbers["labelsharing"].items():
        print(f"  label sharing  {task:22s} mean Dice {_f(row['dice'])} over {row['cases']} test case(s)")
    for task, row in numbers["individual"].items():
        print(f"  one model per task {task:18s} mean Dice {_f(row['dice'])}")
    print(f"  LCS            coarse (trained) labels  mean Dice {_f(numbers['lcs_coarse']['dice'])}")
    print(
        f"  LCS            fine labels, never trained mean Dice {_f(numbers['lcs_fine']['fine_dice'])} "
        f"(naive {_f(numbers['lcs_fine']['naive_dice'])})"
    )
    for method, value in numbers["fine_methods"].items():
        print(f"  fine labels    {method:26s} mean Dice {_f(value)}")
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

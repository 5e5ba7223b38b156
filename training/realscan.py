"""The demo's "a real scan as it comes from the scanner" section.

The scan is Colin 27 (Debian ``mricron-data``): one person's whole head - skull, scalp, neck - that no
training case was made from (training uses the brain-only ICBM templates). The file is stored in MNI space,
so it is first put in a scanner pose: head tilted and shifted by a fixed rigid transform and resampled onto a
scanner grid; the AAL regions drawn on this very brain are moved identically and are the truth.

Every shipped bundle segments it with default settings - automatic alignment to the bundle's reference (LCS then
sees the scan through the atlas's brain; the 2D label-sharing tasks cut the aligned scan in their planes) - and,
for comparison, with ``--align off``. Dice is computed where truth exists: LCS coarse labels (AAL merged by the
bundle's hierarchy) over the whole brain; the 2D tasks inside the region their training slices were cut from
(their bundle records it, in MNI millimetres), for the labels AAL also defines, and on the held-out template
against the same AAL truth. Beside them, the alternatives a clinician has: the atlas registered onto the scan carrying the
same structures, and one model per task when such bundles are given. The atlas case's fine labels on the scan,
by every method: realscan_fine.py.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.atlas_brain import BRAIN_MARGIN_MM
from LabelSharingSegLib.engine.atlas_methods import REFINE_ATLAS_METHOD
from LabelSharingSegLib.engine.atlas_segmentation import segment_atlas_labels
from LabelSharingSegLib.engine.bundle import TaskInfo, load_bundle
from LabelSharingSegLib.engine.inference import segment_task
from LabelSharingSegLib.engine.nifti_io import save_nifti
from LabelSharingSegLib.engine.trained_region import Region, voxels_in

from .csv_tables import write_csv
from .data import sources

# rotation (degrees about R, A, S) and shift (mm) of the head in the scanner, relative to MNI space
SCANNER_ROTATION_DEG = (14.0, -5.0, 7.0)
SCANNER_SHIFT_MM = (6.0, -12.0, 18.0)
# AAL names -> the Neuromorphometrics names the coronal task uses, where both atlases define the structure
AAL_TO_SUBCORTICAL = {
    f"{aal}_{side[0]}": f"{side}_{nmm}"
    for aal, nmm in (
        ("Thalamus", "Thalamus_Proper"),
        ("Caudate", "Caudate"),
        ("Putamen", "Putamen"),
        ("Pallidum", "Pallidum"),
        ("Hippocampus", "Hippocampus"),
        ("Amygdala", "Amygdala"),
    )
    for side in ("Left", "Right")
}


# the comparison row: the held-out template scored against the real scan's truth definition (AAL)
TEMPLATE_MODE = "held-out template in MNI space, same AAL truth"


@dataclass(frozen=True)
class ScannerScan:
    image: np.ndarray
    affine: np.ndarray
    truth: np.ndarray  # AAL values (names[v - 1]) on the scan grid
    names: tuple[str, ...]
    mni_from_world: np.ndarray  # scan world (RAS mm) -> MNI mm


def scanner_transform() -> np.ndarray:
    """MNI world -> scanner world: the fixed head pose of the demo's real scan."""
    from scipy.spatial.transform import Rotation

    transform = np.eye(4)
    transform[:3, :3] = Rotation.from_euler("xyz", SCANNER_ROTATION_DEG, degrees=True).as_matrix()
    transform[:3, 3] = SCANNER_SHIFT_MM
    return transform


def scanner_scan(spacing: float) -> ScannerScan:
    """Colin 27 in the scanner pose, on a scanner-aligned sagittal grid (voxel axes A, S, R; ``spacing`` mm
    in plane, 1.2 x ``spacing`` between slices) covering the whole head."""
    return scan_in_pose(scanner_transform(), (spacing, spacing, 1.2 * spacing), ("A", "S", "R"))


def scan_in_pose(transform: np.ndarray, spacing, axes=("A", "S", "R"), head=None) -> ScannerScan:
    """Colin 27 moved by ``transform`` (MNI world -> scanner world), on a scanner-aligned grid covering the whole
    head: voxel axis n runs along world axis ``axes[n]`` (R, A or S) with ``spacing[n]`` mm, e.g. thick axial
    slices with ``(1, 1, 5)`` and ``("R", "A", "S")``. ``head``: another head as (image, affine), without truth
    (its ``truth`` is all zeros, ``names`` empty; its world is not MNI)."""
    import torch

    from LabelSharingSegLib.engine.preprocessing import resample_to_grid

    if head is None:
        real = sources.load_real_scan()
        source, source_affine, labels, names = real.image, real.affine, real.truth.array, real.truth.names
    else:
        (source, source_affine), labels, names = head, None, ()
    moved = transform @ source_affine
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in np.shape(source)], indexing="ij")).reshape(3, -1)
    world = moved[:3, :3] @ corners + moved[:3, 3:4]
    low, high = world.min(axis=1), world.max(axis=1)
    affine = np.eye(4)
    shape = []
    for column, (name, step) in enumerate(zip(axes, spacing)):
        axis = "RAS".index(name)
        affine[:3, column] = 0.0
        affine[axis, column] = step
        affine[axis, 3] = low[axis]
        shape.append(int((high[axis] - low[axis]) / step) + 1)

    def carry(array, mode):
        data = torch.as_tensor(np.array(array, dtype=np.float32))[None]
        return resample_to_grid(data, affine, tuple(shape), mode=mode, src_affine=moved)[0].numpy()

    image = carry(source, "bilinear").astype(np.float32)
    if labels is None:  # no truth to carry: an empty one, without resampling a volume of zeros
        truth = np.zeros(image.shape, np.int16)
    else:
        truth = carry(labels, "nearest").round().astype(np.int16)
    return ScannerScan(image, affine, truth, names, np.linalg.inv(transform))


def held_out_template(spacing: float) -> ScannerScan:
    """The held-out template (no training case was made from it) in MNI space at ``spacing`` mm, with the AAL
    regions as truth: the same truth definition as the real scan's, for tasks trained on other atlases' labels."""
    import torch

    from LabelSharingSegLib.engine.preprocessing import resample_to_grid

    template, source_affine = sources.load_template(sources.TEST_TEMPLATE)
    aal = sources.atlas_aal()
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in template.shape], indexing="ij")).reshape(3, -1)
    world = source_affine[:3, :3] @ corners + source_affine[:3, 3:4]
    low, high = world.min(axis=1), world.max(axis=1)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = low
    shape = tuple(int((h - lo) / spacing) + 1 for lo, h in zip(low, high))

    def carry(array, src_affine, mode):
        data = torch.as_tensor(np.array(array, dtype=np.float32))[None]
        return resample_to_grid(data, affine, shape, mode=mode, src_affine=src_affine)[0].numpy()

    image = carry(template, source_affine, "bilinear").astype(np.float32)
    truth = carry(aal.array, aal.affine, "nearest").round().astype(np.int16)
    return ScannerScan(image, affine, truth, aal.names, np.eye(4))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _region_mask(scan: ScannerScan, region: Region) -> np.ndarray | None:
    """Voxels of the scan whose true MNI position lies in ``region`` (a task's trained region, from its bundle);
    None, i.e. the whole scan, when the task records none."""
    if not region:
        return None
    return voxels_in(region, scan.mni_from_world @ scan.affine, scan.image.shape)


def _truth_for_task(scan: ScannerScan, labels) -> dict[int, np.ndarray]:
    """Task label value -> truth mask, for the task labels AAL defines (coarse lobes or deep grey)."""
    truth: dict[int, np.ndarray] = {}
    coarse = sources.aal_coarse_lookup(scan.names)[scan.truth]
    for label in labels:
        if label.name in sources.AAL_COARSE_NAMES:
            truth[label.value] = coarse == sources.AAL_COARSE_NAMES.index(label.name) + 1
        else:
            regions = [i + 1 for i, n in enumerate(scan.names) if AAL_TO_SUBCORTICAL.get(n) == label.name]
            if regions:
                truth[label.value] = np.isin(scan.truth, regions)
    return truth


def real_scan_example(
    out: Path,
    bundles: tuple[Path, Path],
    device: str,
    spacing: float,
    brain: Path | None = None,
    refine: Path | None = None,
    individual: Sequence[Path] = (),
) -> dict:
    """Segment the real scan with every shipped bundle; write results, overlays and ``realscan.csv``. With the
    ``brain`` dataset (its atlas case's fine labels), also the fine labels by every method
    (``realscan_fine.csv``), the ``refine`` bundle among them."""
    from .demo_examples import _network, _say, save_overlay, write_result

    scan = scanner_scan(spacing)
    target = out / "results" / "realscan"
    target.mkdir(parents=True, exist_ok=True)
    save_nifti(target / "scan_image.nii.gz", scan.image, scan.affine)
    save_nifti(target / "scan_truth_aal.nii.gz", scan.truth.astype(np.int16), scan.affine)
    rows: list[dict] = []
    files: list[Path] = []
    figures: list[Path] = []
    alignment_lines: list[str] = []

    ls = load_bundle(bundles[0])
    network = _network(ls, device)
    ls_modes = (("aligned automatically (default)", None), ("--align off", False))
    for task in ls.tasks:
        region = _region_mask(scan, task.region_mm)
        panels = []
        shown = None
        for mode, align in ls_modes if ls.has_reference() else (("no alignment", False),):
            result = segment_task(
                ls, scan.image, scan.affine, task.name, device=device, network=network, align=align
            )
            if align is None and result.alignment is not None:
                # the other tasks reuse this registration (the same scan)
                ls_modes = (("aligned automatically (default)", result.alignment), ls_modes[1])
                alignment_lines.append(f"label sharing: {result.alignment.summary()}")
            if mode != "--align off":
                files += write_result(
                    target, f"labelsharing_{task.name}", result.labelmap, scan.affine, result.labels
                )
            rows += _region_rows("label sharing", scan, task, mode, result)
            truth = _truth_for_task(scan, result.labels)
            shown = np.zeros_like(result.labelmap)
            for label in result.labels:
                if label.value in truth:
                    shown[truth[label.value] if region is None else truth[label.value] & region] = label.value
            panels.append((f"label sharing, {mode}", result.labelmap))
        if shown is not None and shown.any():
            panels.insert(0, ("truth (AAL on this brain)", shown))
        figures.append(
            save_overlay(
                out / "figures" / f"realscan_labelsharing_{task.name}.png",
                scan.image,
                panels,
                result.labels,
                f"Real whole-head scan, label sharing task {task.name} ({task.plane or 'third voxel axis'})",
            )
        )
        _say(f"real scan, label sharing {task.name}: wrote {files[-3]}")

    # one model per task, beside label sharing: aligned (its default), scored in label sharing's region
    for path in individual:
        own = load_bundle(path)
        for task in own.tasks:
            result = segment_task(own, scan.image, scan.affine, task.name, device=device)
            scored = ls.task(task.name) if task.name in ls.task_names() else task
            rows += _region_rows(INDIVIDUAL, scan, scored, "aligned automatically (default)", result)

    template = held_out_template(spacing)
    for task in ls.tasks:
        result = segment_task(
            ls, template.image, template.affine, task.name, device=device, network=network, align=False
        )
        rows += _region_rows("label sharing", template, task, TEMPLATE_MODE, result)

    lcs = load_bundle(bundles[1])
    network = _network(lcs, device)
    atlas_map, _, coarse_labels = lcs.atlas_labels()
    masks = np.stack([atlas_map == label.value for label in coarse_labels])
    truth = _truth_for_task(scan, coarse_labels)
    panels = [("truth (AAL lobes on this brain)", sum(v * m for v, m in truth.items()).astype(np.int16))]
    for mode, align in (("aligned automatically (default)", None), ("--align off", False)):
        result = segment_atlas_labels(
            lcs,
            scan.image,
            scan.affine,
            masks,
            coarse_labels,
            device=device,
            network=network,
            align=align,
            method="lcs",
        )
        if result.alignment is not None:
            alignment_lines.append(f"LCS: {result.alignment.summary()}")
            _say(f"real scan: {result.alignment.summary()}")
        rows += _dice_rows("LCS", "coarse atlas labels", mode, result, truth)
        if align is None:
            files += write_result(target, "lcs_coarse", result.labelmap, scan.affine, result.labels)
        panels.append((f"LCS, {mode}", result.labelmap))
    figures.append(
        save_overlay(
            out / "figures" / "realscan_lcs.png",
            scan.image,
            panels,
            coarse_labels,
            "Real whole-head scan, LCS with its trained coarse labels",
        )
    )
    refine_bundle = load_bundle(refine) if refine is not None else None
    if refine_bundle is not None:
        # the refine bundle's trained (coarse) labels with its own registration, as `lsseg segment` computes it
        refine_map, _, refine_labels = refine_bundle.atlas_labels()
        result = segment_atlas_labels(
            refine_bundle,
            scan.image,
            scan.affine,
            np.stack([refine_map == label.value for label in refine_labels]),
            refine_labels,
            device=device,
            method=REFINE_ATLAS_METHOD,
        )
        refine_truth = _truth_for_task(scan, refine_labels)
        rows += _dice_rows("LCS refine", "coarse atlas labels", "aligned automatically", result, refine_truth)
    # the strongest registration baseline: the finest atlas shipped (the refine bundle's, 2 mm, when given)
    atlas_bundle = refine_bundle if refine_bundle is not None else lcs
    registration_rows, registration_notes = _registration_rows(scan, atlas_bundle, ls, brain)
    alignment_lines += registration_notes
    order = [
        *(task.name for task in ls.tasks),
        "coarse atlas labels",
    ]  # each task's rows, its baselines after them
    rows = sorted(rows + registration_rows, key=lambda row: order.index(row["task"]))
    csv_path = target / "realscan.csv"
    write_csv(csv_path, rows, ROW_FIELDS)
    fine: dict = {}
    if brain is not None:
        from . import realscan_fine

        atlas_bundles = [lcs, *([refine_bundle] if refine_bundle is not None else [])]
        fine_rows, notes = realscan_fine.fine_label_rows(scan, atlas_bundles, brain, device)
        fine = {"csv": target / "realscan_fine.csv", "notes": notes}
        write_csv(fine["csv"], fine_rows, realscan_fine.FIELDS)
        _say(f"real scan: fine atlas labels by every method, {fine['csv']}")
    appearance = {
        name: list(b.manifest.training.get("appearance", []))
        for name, b in (("label sharing", ls), ("LCS", lcs))
    }
    return {
        "files": files,
        "figures": figures,
        "csv": csv_path,
        "fine": fine,
        "alignment": alignment_lines,
        "appearance": appearance,
        "registration_atlas": atlas_bundle.path.name,
    }


def _dice_rows(
    bundle: str, task: str, mode: str, result, truth: dict, where: np.ndarray | None = None
) -> list[dict]:
    """Each label's Dice against ``truth`` (value -> mask; labels without truth are left out), inside ``where``
    (None: the whole scan)."""
    rows = []
    for label in result.labels:
        if label.value in truth:
            predicted, expected = result.labelmap == label.value, truth[label.value]
            if where is not None:
                predicted, expected = predicted & where, expected & where
            rows.append(_row(bundle, task, mode, label.name, _dice(predicted, expected)))
    return rows


def _region_rows(bundle: str, scan: ScannerScan, task: TaskInfo, mode: str, result) -> list[dict]:
    """A 2D task's rows: each label's Dice inside the region ``task`` was trained on (its slices' span), where
    AAL defines the label."""
    truth = _truth_for_task(scan, result.labels)
    return _dice_rows(bundle, task.name, mode, result, truth, _region_mask(scan, task.region_mm))


def region_dice(scan: ScannerScan, task: TaskInfo, result) -> float:
    """Mean Dice of a task's labels that AAL defines, inside the task's region (NaN: none has truth there)."""
    scores = [row["dice"] for row in _region_rows("", scan, task, "", result) if not math.isnan(row["dice"])]
    return float(np.mean(scores)) if scores else float("nan")


INDIVIDUAL = "one model per task"
REGISTRATION_METHODS = {
    "register-affine": "atlas registration, affine",
    "register-deformable": "atlas registration, deformable",
}


def _registration_rows(
    scan: ScannerScan, atlas_bundle, ls, brain: Path | None
) -> tuple[list[dict], list[str]]:
    """(rows, notes): what a clinician gets without a network - ``atlas_bundle``'s atlas registered onto the scan
    (affine, and affine + deformable, as ``lsseg segment --method register-...``) carrying the atlas's labels
    of the same structures, scored as the networks are: its coarse labels over the brain, and in each 2D task's
    region the labels AAL also defines (the lobes from its coarse labels; the deep structures from the fine AAL
    regions of ``brain``'s atlas case, when given)."""
    from LabelSharingSegLib.engine.errors import LabelSharingSegError
    from LabelSharingSegLib.engine.labels import LabelInfo

    atlas_map, atlas_affine, coarse = atlas_bundle.atlas_labels()
    label_sets = {"coarse atlas labels": [(label, atlas_map == label.value) for label in coarse]}
    by_name = {label.name: mask for label, mask in label_sets["coarse atlas labels"]}
    fine = None
    if brain is not None:
        from .datasets import read_dataset
        from .label_set_eval import labels_on_atlas_grid

        dataset = read_dataset(brain)
        fine_names = dataset.foreground_labels()
        case = atlas_bundle.manifest.training.get("atlas_case")
        fine = labels_on_atlas_grid(dataset, case, atlas_affine, atlas_map.shape)
    for task in ls.tasks:
        chosen = []
        for label in task.labels:
            if label.name in by_name:  # the lobes: the atlas's own coarse structures
                chosen.append((label, by_name[label.name]))
            elif fine is not None:
                regions = [v for v, n in fine_names.items() if AAL_TO_SUBCORTICAL.get(n) == label.name]
                if regions:
                    chosen.append((label, np.isin(fine, regions)))
        if chosen:
            label_sets[task.name] = chosen
    rows: list[dict] = []
    notes: list[str] = []
    for method, name in REGISTRATION_METHODS.items():
        for task, chosen in label_sets.items():
            infos = [LabelInfo(i + 1, label.name, label.color) for i, (label, _) in enumerate(chosen)]
            masks = np.stack([mask for _, mask in chosen])
            try:
                result = segment_atlas_labels(
                    atlas_bundle, scan.image, scan.affine, masks, infos, method=method
                )
            except LabelSharingSegError as exc:  # a diverged registration is reported, not scored
                notes.append(f"{name}, {task}: left out ({exc})")
                continue
            if task == "coarse atlas labels":  # over the whole brain, as the LCS rows
                rows += _dice_rows(name, task, "aligned automatically", result, _truth_for_task(scan, infos))
            else:
                rows += _region_rows(name, scan, ls.task(task), "aligned automatically", result)
    return rows, notes


ROW_FIELDS = ("bundle", "task", "mode", "label_name", "dice")


def _row(bundle: str, task: str, mode: str, label: str, dice: float) -> dict:
    return {"bundle": bundle, "task": task, "mode": mode, "label_name": label, "dice": dice}


def real_scan_numbers(csv_path: Path) -> dict[tuple[str, str, str], tuple[float, int]]:
    """(bundle, task, mode) -> (mean Dice, labels scored), read from ``realscan.csv``."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    numbers: dict[tuple[str, str, str], tuple[float, int]] = {}
    for key in dict.fromkeys((r["bundle"], r["task"], r["mode"]) for r in rows):
        values = [float(r["dice"]) for r in rows if (r["bundle"], r["task"], r["mode"]) == key]
        values = [v for v in values if not math.isnan(v)]
        numbers[key] = (sum(values) / len(values) if values else float("nan"), len(values))
    return numbers


def report_lines(out: Path, info: dict, demo_numbers: dict) -> list[str]:
    """The report section; ``demo_numbers`` (from ``report_numbers``) gives the figures on the test cases."""
    rel = lambda p: Path(p).resolve().relative_to(out.resolve()).as_posix()  # noqa: E731
    numbers = real_scan_numbers(Path(info["csv"]))
    rx, ry, rz = SCANNER_ROTATION_DEG
    lines = [
        "## A real scan as it comes from the scanner",
        "",
        "Colin 27 (Debian package `mricron-data`, `ch2.nii.gz`): one person's whole head with skull, scalp and "
        "neck, never used for training (training cases come from the brain-only ICBM templates). The file is "
        f"stored in MNI space, so it is placed in a scanner pose (head rotated {rx:g}/{ry:g}/{rz:g} degrees "
        f"about the R/A/S axes and shifted {SCANNER_SHIFT_MM} mm) and resampled onto a scanner grid. Truth: "
        "the AAL regions drawn on this brain (`aal.nii.gz`), moved identically. Aligned, a 2D task is segmented "
        "only inside the region its slices were cut from (the bundle records it: for the shipped tasks the brain's "
        "box, or the span of the task's structures); every 2D task is scored inside that region, for the labels "
        "AAL also defines. The deep-grey task is "
        "trained on Neuromorphometrics labels, whose structures AAL draws with other borders (docs/DEMO.md "
        "measures how far the two atlases differ), so its real-scan figure is compared with the held-out "
        "template scored against the same AAL truth (the row marked so), not with its test cases. The atlas "
        "registration rows are what a clinician gets without a network: the atlas of "
        f"`{info.get('registration_atlas', 'the LCS bundle')}` registered onto the scan (affine, or affine + "
        "deformable, as `lsseg segment --method register-...` does) carrying its labels of the same structures "
        "(the deep structures from its fine AAL regions), scored the same way.",
        "",
        "| bundle | task | scan, alignment | labels scored | mean Dice | on the demo's test cases |",
        "|---|---|---|---|---|---|",
    ]
    for (bundle, task, mode), (dice, count) in numbers.items():
        if bundle == "LCS":
            reference = demo_numbers.get("lcs_coarse", {}).get("dice", float("nan"))
        elif bundle == "LCS refine":
            reference = demo_numbers.get("refine_coarse", {}).get("dice", float("nan"))
        elif bundle == INDIVIDUAL:
            reference = demo_numbers.get("individual", {}).get(task, {}).get("dice", float("nan"))
        elif bundle in REGISTRATION_METHODS.values():
            reference = float("nan")  # the test cases' figures are by label set, not by these structures
        else:
            reference = demo_numbers.get("labelsharing", {}).get(task, {}).get("dice", float("nan"))
        lines.append(f"| {bundle} | {task} | {mode} | {count} | {_f(dice)} | {_f(reference)} |")
    lines += ["", "Alignment quality (default settings):", ""]
    lines += [f"- {line}" for line in info["alignment"]] or ["- (no alignment)"]
    lines += [
        "",
        "Once aligned, LCS sees the scan through the atlas's brain grown by "
        f"{BRAIN_MARGIN_MM:g} mm (skull, scalp, eyes and neck set to the scan's background, as in its brain-only "
        "training images; `engine/atlas_brain.py`); with `--align off` it sees the whole head. Appearance "
        "augmentation the bundles were trained with (`--appearance`, docs/TRAINING.md): "
        + "; ".join(f"{name}: {', '.join(kinds) or 'none'}" for name, kinds in info["appearance"].items())
        + ".",
    ]
    if info.get("fine"):
        from . import realscan_fine

        rows = realscan_fine.read_rows(Path(info["fine"]["csv"]))
        lines += [""] + realscan_fine.report_lines(
            rows, info["fine"]["notes"], demo_numbers.get("fine_methods", {})
        )
    lines += [""] + [f"![real scan]({rel(p)})" for p in info["figures"]]
    lines += ["", "Files: " + ", ".join(f"`{rel(f)}`" for f in info["files"] if str(f).endswith(".seg.nrrd"))]
    return lines


def _f(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"

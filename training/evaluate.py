"""``lsseg evaluate``: segment every labelled test case (imagesTs/labelsTs) of the given datasets with every
bundle, through the same inference functions ``lsseg segment`` and Slicer call, and write

* ``metrics.csv`` - one row per (method, task, case, label): Dice, HD95 (mm), voxel counts;
* ``summary.md``  - mean Dice/HD95 per task and method, per label, and for LCS bundles trained on a coarse map
  Table 1 of Ma et al. (2022) (per fine label: Dice of the prediction conditioned on the coarse training label vs
  conditioned on the fine atlas label that was never trained);
* plots - ``paired_<task>.png`` (per-case mean Dice, one line per case across methods, as Ma et al. 2022 Fig. 2)
  and ``labels_<task>.png`` (mean Dice per label, one bar per method);
* for LCS bundles with fine atlas labels: ``fine_methods.csv`` and ``fine_methods_*.png``, every way of segmenting
  the fine labels side by side (naive, affine and deformable propagation, LCS; see ``sidebyside.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.atlas_segmentation import segment_atlas_labels
from LabelSharingSegLib.engine.atomic import (
    atomic_folder,
    check_replaceable_folder,
    require_parent_dir,
    write_text_atomic,
)
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.device import resolve_device
from LabelSharingSegLib.engine.errors import InputError, LabelSharingSegError, UnplacedScanError
from LabelSharingSegLib.engine.inference import segment_task
from LabelSharingSegLib.engine.labels import LabelInfo
from LabelSharingSegLib.engine.propagation import MIN_LABEL_VOXELS
from LabelSharingSegLib.engine.registered import (
    segment_by_refinement,
)

from . import sidebyside
from .csv_tables import write_csv
from .datasets import as_volume, load_case, require_valid_dataset
from .label_set_eval import evaluate_label_set, labels_on_atlas_grid
from .metrics import dice, label_metrics, nanmean, voxel_spacing
from .multi_atlas import AtlasCase, fuse_atlases

FIELDS = (
    "method",
    "kind",
    "task",
    "case",
    "label_value",
    "label_name",
    "dice",
    "hd95",
    "pred_voxels",
    "true_voxels",
)


def _method_names(paths: list[Path]) -> list[str]:
    names = []
    for path in paths:
        base = Path(path).name
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _test_cases(dataset):
    cases = [c for c in dataset.test if c.label_path is not None]
    return cases


def _rows_for(method, kind, task, case_id, prediction, truth, labels, spacing, with_hd95):
    metrics = label_metrics(prediction, truth, [lab.value for lab in labels], spacing, with_hd95=with_hd95)
    for label in labels:
        m = metrics[label.value]
        yield {
            "method": method,
            "kind": kind,
            "task": task,
            "case": case_id,
            "label_value": label.value,
            "label_name": label.name,
            **m,
        }


def _refused(method, kind, task, case_id, shape, truth, labels, spacing, with_hd95, why) -> tuple[list, str]:
    """(rows, note) of a test case the product refuses (no trusted pose, a registration that diverged): scored as
    the empty segmentation a user gets, so that every method is compared on the same cases, and named."""
    empty = np.zeros(shape, np.int16)
    rows = list(_rows_for(method, kind, task, case_id, empty, truth, labels, spacing, with_hd95))
    return rows, f"{case_id}: {method} refused the scan, scored as an empty segmentation ({why})"


def _evaluate_task_bundle(bundle, method, datasets, device, with_hd95, align: bool):
    """(rows, notes) of a task bundle on the test cases of the datasets holding its tasks."""
    rows, notes = [], []
    network = bundle.build_network(device)
    for dataset in datasets:
        task = dataset.task_name()
        if task not in bundle.task_names():
            continue
        labels = bundle.task_labels(task)
        for case in _test_cases(dataset):
            image, truth, affine = load_case(case)
            volume, truth, spacing = as_volume(image[0]), as_volume(truth), voxel_spacing(affine)
            try:
                labelmap = segment_task(
                    bundle,
                    volume,
                    affine,
                    task,
                    device=str(device),
                    network=network,
                    align=None if align else False,
                ).labelmap
            except UnplacedScanError as error:
                more, note = _refused(method, bundle.kind, task, case.case_id, volume.shape, truth, labels,
                                      spacing, with_hd95, error)  # fmt: skip
                rows, notes = rows + more, notes + [note]
                continue
            rows += _rows_for(
                method, bundle.kind, task, case.case_id, labelmap, truth, labels, spacing, with_hd95
            )
    return rows, notes


def _lcs_truth_lut(coarse_map: dict[int, int], max_value: int) -> np.ndarray:
    lut = np.arange(max(max_value, max(coarse_map, default=0)) + 1)
    for fine, coarse in coarse_map.items():
        lut[fine] = coarse
    return lut


def _refined_result(bundle, volume, affine, masks, infos, device, network, shared: dict):
    """(the refine network's segmentation of the trained labels, the registration it refined), the scan's
    registration taken from / stored in ``shared``; (None, None) when the registration diverged."""
    if "alignment" not in shared:
        shared["alignment"] = sidebyside.scan_alignment(bundle, volume, affine)
    if "deformable" not in shared and "note" not in shared:
        shared["deformable"], shared["note"] = sidebyside.deformable_registration(
            bundle, volume, affine, shared["alignment"]
        )
    deformable = shared.get("deformable")
    if deformable is None:
        return None, None
    result = segment_by_refinement(
        bundle, volume, affine, masks, infos, None, str(device), None, None, network, None, deformable
    )
    return result, deformable


def _atlas_index(registrations: dict, image: np.ndarray, affine: np.ndarray) -> int:
    """Which atlas of this evaluation ``image`` is: atlases written by different runs of the same plan differ in
    the last float bits, so they are compared with a tolerance, not hashed."""
    atlases = registrations.setdefault("atlases", [])
    for index, (seen, seen_affine) in enumerate(atlases):
        if (
            seen.shape == image.shape
            and np.allclose(seen_affine, affine)
            and np.allclose(seen, image, atol=1e-4)
        ):
            return index
    atlases.append((image, affine))
    return len(atlases) - 1


def _atlas_cases(dataset, first: str | None, count: int, coarse_map: dict[int, int]) -> list[AtlasCase]:
    """The ``count`` training cases multi-atlas registration uses: the bundle's atlas case first (when it is one
    of them), then the others in the dataset's order; label maps through the bundle's coarse map, as the truth."""
    cases = sorted(dataset.training, key=lambda c: c.case_id != first)
    if len(cases) < count:
        raise InputError(
            f"--atlas-baselines {count}: {dataset.root} has only {len(cases)} training case(s) to use as atlases"
        )
    chosen = []
    for case in cases[:count]:
        image, label, affine = load_case(case)
        labelmap = as_volume(label).astype(np.int64)
        if coarse_map:
            labelmap = _lcs_truth_lut(coarse_map, int(labelmap.max(initial=0)))[labelmap]
        chosen.append(AtlasCase(case.case_id, as_volume(image[0]), labelmap, affine))
    return chosen


def _baseline_rows(
    bundle, method, task, case, volume, affine, masks, infos, truth, alignment, atlases, with_hd95
):
    """(rows, notes) of the registration baselines on one scan: the bundle's atlas carried by deformable
    registration (the product's ``register-deformable``) and ``atlases`` fused (multi_atlas.py)."""
    spacing, rows, notes = voxel_spacing(affine), [], []
    try:
        single = segment_atlas_labels(
            bundle, volume, affine, masks, infos, method="register-deformable", align=alignment
        ).labelmap
        rows += _rows_for(f"{method}: deformable propagation", "registration", task, case.case_id, single,
                          truth, infos, spacing, with_hd95)  # fmt: skip
    except LabelSharingSegError as error:
        notes.append(f"{case.case_id}: deformable propagation left out: {error}")
    fused, more = fuse_atlases(atlases, [info.value for info in infos], volume, affine)
    notes += [f"{case.case_id}: {note}" for note in more]
    if fused is not None:
        rows += _rows_for(f"{method}: multi-atlas x{len(atlases)}", "registration", task, case.case_id, fused,
                          truth, infos, spacing, with_hd95)  # fmt: skip
    return rows, notes


def _evaluate_lcs_bundle(
    bundle, method, datasets, device, with_hd95, registrations: dict, align: bool, atlas_baselines: int = 0
):
    """Rows for the trained (atlas) labels and, with a coarse map, the Table 1 entries and every fine-label
    method side by side (sidebyside.py; with notes on registrations that diverged). ``registrations``: each
    scan's registration to an atlas, shared by the bundles of one evaluation whose atlas is the same image.
    ``align`` False: the scans already lie in the atlas's space (no registration, so no registration baselines).
    ``atlas_baselines`` N > 0: the trained labels also by deformable propagation of the bundle's atlas and by
    multi-atlas registration of N training cases (``_baseline_rows``)."""
    rows, table1, side, notes = [], [], [], []
    refine = bundle.network_config.arch == "lcs_refine"
    atlas_key = _atlas_index(registrations, *bundle.atlas_image())
    network = bundle.build_network(device)
    atlas_labels, atlas_affine, infos = bundle.atlas_labels()
    masks = np.stack([atlas_labels == info.value for info in infos])
    training = bundle.manifest.training
    coarse_map = {int(f): int(c) for f, c in training.get("coarse_map") or []}
    fine_names = {int(v): str(n) for v, n in training.get("fine_labels") or []}
    for dataset in datasets:
        declared = dataset.foreground_labels()
        if fine_names and any(declared.get(v) != n for v, n in fine_names.items()):  # another label set
            more_side, more_notes = evaluate_label_set(bundle, method, dataset, network, device)
            side, notes = side + more_side, notes + more_notes
            continue
        task = dataset.task_name()
        atlases: list[AtlasCase] | None = None
        fine_atlas = (
            labels_on_atlas_grid(dataset, training.get("atlas_case"), atlas_affine, atlas_labels.shape)
            if coarse_map
            else None
        )
        for case in _test_cases(dataset):
            image, truth, affine = load_case(case)
            volume, truth = as_volume(image[0]), as_volume(truth).astype(np.int64)
            mapped = _lcs_truth_lut(coarse_map, int(truth.max(initial=0)))[truth] if coarse_map else truth
            spacing = voxel_spacing(affine)
            shared = registrations.setdefault((atlas_key, str(case.image_paths[0])), {})
            if refine:
                result, deformable = _refined_result(
                    bundle, volume, affine, masks, infos, device, network, shared
                )
                if result is None:  # the registration it refines diverged: `lsseg segment` refuses it too
                    more, note = _refused(method, "lcs", task, case.case_id, volume.shape, mapped, infos, spacing,
                                          with_hd95, shared["note"])  # fmt: skip
                    rows, notes = rows + more, notes + [note]
                    continue
            else:
                try:
                    result = segment_atlas_labels(
                        bundle,
                        volume,
                        affine,
                        masks,
                        infos,
                        device=str(device),
                        network=network,
                        method="lcs",
                        align=shared.get("alignment") if align else False,
                    )
                except UnplacedScanError as error:  # nothing for the comparisons that follow to build on
                    more, note = _refused(method, "lcs", task, case.case_id, volume.shape, mapped, infos, spacing,
                                          with_hd95, error)  # fmt: skip
                    rows, notes = rows + more, notes + [note]
                    continue
                if result.alignment is not None:
                    shared.setdefault("alignment", result.alignment)
            rows += _rows_for(
                method, "lcs", task, case.case_id, result.labelmap, mapped, infos, spacing, with_hd95
            )
            if atlas_baselines and align:
                if atlases is None:  # loaded once per dataset, when the first scan needs them
                    atlases = _atlas_cases(dataset, training.get("atlas_case"), atlas_baselines, coarse_map)
                more_rows, more_notes = _baseline_rows(bundle, method, task, case, volume, affine, masks, infos,
                                                       mapped, result.alignment, atlases, with_hd95)  # fmt: skip
                rows, notes = rows + more_rows, notes + more_notes
            if fine_atlas is None:
                continue
            # a label left with one voxel on the atlas grid cannot be carried (and is refused): left out, noted
            present = [(f, c) for f, c in sorted(coarse_map.items()) if (fine_atlas == f).any()]
            fine_pairs = [(f, c) for f, c in present if np.count_nonzero(fine_atlas == f) >= MIN_LABEL_VOXELS]
            if len(fine_pairs) < len(present):
                notes.append(
                    f"{task}: {len(present) - len(fine_pairs)} fine label(s) of one voxel on the atlas left out"
                )
            if not fine_pairs:
                continue
            fine_infos = [
                LabelInfo(f, fine_names.get(f, f"label_{f}"), (1.0, 0.0, 0.0)) for f, _ in fine_pairs
            ]
            fine_masks = np.stack([fine_atlas == f for f, _ in fine_pairs])
            # every fine label decided on its own (as one at a time), batched; the scan's registration reused
            network_method, decided = sidebyside.network_decisions(
                bundle,
                network,
                volume,
                affine,
                fine_masks,
                fine_infos,
                str(device),
                result.alignment if align else False,
                deformable if refine else None,
            )
            predictions: dict = {}
            if not shared.get("scored"):  # the registration methods once per scan and atlas
                if result.alignment is not None and "note" not in shared and "deformable" not in shared:
                    shared["deformable"], shared["note"] = sidebyside.deformable_registration(
                        bundle, volume, affine, result.alignment
                    )
                predictions, note = sidebyside.registration_predictions(
                    bundle,
                    fine_masks,
                    volume,
                    affine,
                    result.alignment,
                    shared.get("deformable"),
                    shared.get("note"),
                )
                shared["scored"] = True
                if note:
                    notes.append(note if result.alignment is None else f"{case.case_id}: {note}")
            predictions[network_method] = decided
            side += sidebyside.case_rows(method, task, case.case_id, fine_infos, predictions, truth)
            for (fine, coarse), info, fine_prediction in zip(fine_pairs, fine_infos, decided):
                table1.append(
                    {
                        "method": method,
                        "task": task,
                        "case": case.case_id,
                        "coarse_value": coarse,
                        "coarse_name": next((i.name for i in infos if i.value == coarse), str(coarse)),
                        "coarse_dice": dice(result.labelmap == coarse, mapped == coarse),
                        "fine_value": fine,
                        "fine_name": info.name,
                        "naive_dice": dice(result.labelmap == coarse, truth == fine),
                        "fine_dice": dice(fine_prediction, truth == fine),
                    }
                )
    return rows, table1, side, notes


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.4f}")
    return str(value)


def _finite_mean(values) -> float:
    finite = [v for v in values if not math.isnan(v) and not math.isinf(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plots(out: Path, rows: list[dict], methods: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for task in sorted({r["task"] for r in rows}):
        task_rows = [r for r in rows if r["task"] == task]
        task_methods = [m for m in methods if any(r["method"] == m for r in task_rows)]
        cases = sorted({r["case"] for r in task_rows})
        fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(task_methods), 4.2))
        for case in cases:
            ys = [
                nanmean(r["dice"] for r in task_rows if r["case"] == case and r["method"] == m)
                for m in task_methods
            ]
            ax.plot(range(len(task_methods)), ys, marker="o", color="tab:blue", alpha=0.5, linewidth=1)
        means = [nanmean(r["dice"] for r in task_rows if r["method"] == m) for m in task_methods]
        ax.plot(range(len(task_methods)), means, marker="s", color="black", linewidth=2.5, label="mean")
        ax.set_xticks(range(len(task_methods)), task_methods, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice (mean over labels, per test case)")
        ax.set_title(f"{task}: paired per-case Dice")
        ax.legend(loc="lower right")
        written.append(_save_figure(fig, out / f"paired_{task}.png"))

        labels = sorted({(r["label_value"], r["label_name"]) for r in task_rows})
        fig, ax = plt.subplots(figsize=(2.5 + 1.1 * len(labels) * max(1, len(task_methods)) / 2, 4.2))
        width = 0.8 / max(1, len(task_methods))
        for k, m in enumerate(task_methods):
            ys = [
                nanmean(
                    r["dice"]
                    for r in task_rows
                    if r["method"] == m and (r["label_value"], r["label_name"]) == (v, n)
                )
                for v, n in labels
            ]
            ax.bar(np.arange(len(labels)) + k * width - 0.4 + width / 2, np.nan_to_num(ys), width, label=m)
        ax.set_xticks(range(len(labels)), [n for _, n in labels], rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean Dice over test cases")
        ax.set_title(f"{task}: Dice per label")
        ax.legend(fontsize="small")
        written.append(_save_figure(fig, out / f"labels_{task}.png"))
    return written


def _summary(rows: list[dict], table1: list[dict], methods: list[str], plots: list[Path]) -> str:
    lines = [
        "# Evaluation",
        "",
        "Dice per label and test case (NaN when the label is absent from both prediction and truth, skipped "
        "in means); HD95 in mm (inf when exactly one of them is empty; finite values averaged).",
        "",
        "## Mean per task and method",
        "",
        "| task | method | cases | mean Dice | mean HD95 (mm) |",
        "|---|---|---|---|---|",
    ]
    for task in sorted({r["task"] for r in rows}):
        for m in methods:
            sel = [r for r in rows if r["task"] == task and r["method"] == m]
            if sel:
                lines.append(
                    f"| {task} | {m} | {len({r['case'] for r in sel})} | "
                    f"{_fmt(nanmean(r['dice'] for r in sel))} | {_fmt(_finite_mean([r['hd95'] for r in sel]))} |"
                )
    lines += [
        "",
        "## Mean Dice per label",
        "",
        "| task | label | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for task in sorted({r["task"] for r in rows}):
        for value, name in sorted({(r["label_value"], r["label_name"]) for r in rows if r["task"] == task}):
            cells = [
                _fmt(
                    nanmean(
                        r["dice"]
                        for r in rows
                        if r["task"] == task
                        and r["method"] == m
                        and (r["label_value"], r["label_name"]) == (value, name)
                    )
                )
                for m in methods
            ]
            lines.append(f"| {task} | {name} ({value}) | " + " | ".join(cells) + " |")
    if table1:
        lines += [
            "",
            "## Coarse training labels, fine labels at test time (Ma et al. 2022, Table 1)",
            "",
            "Naive Dice: prediction conditioned on the coarse training label vs the fine truth. Fine-grained "
            "Dice: prediction conditioned on the fine atlas label (never trained) vs the fine truth.",
            "",
            "| method | coarse training label | Dice | fine label | naive Dice | fine-grained Dice |",
            "|---|---|---|---|---|---|",
        ]
        keys = sorted({(t["method"], t["coarse_value"], t["fine_value"]) for t in table1})
        for method, coarse, fine in keys:
            sel = [
                t
                for t in table1
                if (t["method"], t["coarse_value"], t["fine_value"]) == (method, coarse, fine)
            ]
            lines.append(
                f"| {method} | {sel[0]['coarse_name']} ({coarse}) | {_fmt(nanmean(t['coarse_dice'] for t in sel))} "
                f"| {sel[0]['fine_name']} ({fine}) | {_fmt(nanmean(t['naive_dice'] for t in sel))} | "
                f"{_fmt(nanmean(t['fine_dice'] for t in sel))} |"
            )
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


REPORT_FILES = ("summary.md", "metrics.csv")


def check_report_folder(out: Path, overwrite: bool) -> None:
    """The report folder's parent must exist (as for every lsseg output); an existing report is only replaced with
    ``overwrite``, and never a folder that is not a report."""
    require_parent_dir(out)
    check_replaceable_folder(out, overwrite, kind="evaluation report", markers=REPORT_FILES)


def evaluate(
    bundle_paths,
    data_paths,
    out,
    *,
    device: str = "auto",
    with_hd95: bool = True,
    overwrite: bool = False,
    align: bool = True,
    atlas_baselines: int = 0,
) -> str:
    """Evaluate bundles on the datasets' labelled test cases and write the report folder ``out`` (atomically:
    a complete report or none); returns the summary markdown. ``align`` False: the test cases are segmented where
    they lie, not registered to each bundle's reference first. ``atlas_baselines`` N > 0: LCS bundles' trained
    labels are also segmented by deformable propagation of the bundle's atlas and by multi-atlas registration of
    N training cases of the data, reported as methods of their own."""
    out = Path(out)
    check_report_folder(out, overwrite)
    datasets = [require_valid_dataset(p) for p in data_paths]
    if not any(_test_cases(d) for d in datasets):
        raise InputError("none of the --data folders has labelled test cases (imagesTs/ + labelsTs/)")
    torch_device, _ = resolve_device(device)
    methods = _method_names([Path(p) for p in bundle_paths])
    rows, table1, side, notes = [], [], [], []
    registrations: dict = {}
    bundles = [load_bundle(path) for path in bundle_paths]
    refine = [bundle.path for bundle in bundles if bundle.network_config.arch == "lcs_refine"]
    if atlas_baselines < 0:
        raise InputError(f"--atlas-baselines must be 0 or more, got {atlas_baselines}")
    if atlas_baselines and not align:
        raise InputError(
            "--atlas-baselines registers atlases onto each scan; it cannot be used with --align off"
        )
    if atlas_baselines and not any(bundle.kind.has_atlas for bundle in bundles):
        raise InputError(
            "--atlas-baselines compares LCS bundles with registration; none of the bundles is one"
        )
    if refine and not align:  # refused before any bundle is evaluated
        raise InputError(
            f"{refine[0]}: a refine bundle corrects a registration; it cannot be evaluated with --align off"
        )
    for path, bundle, method in zip(bundle_paths, bundles, methods):
        if bundle.kind.has_atlas:
            more, t1, s1, n1 = _evaluate_lcs_bundle(
                bundle, method, datasets, torch_device, with_hd95, registrations, align, atlas_baselines
            )
            table1, side, notes = table1 + t1, side + s1, notes + n1
        else:
            more, n1 = _evaluate_task_bundle(bundle, method, datasets, torch_device, with_hd95, align)
            s1, notes = [], notes + n1
        if not more and not s1:
            raise InputError(
                f"{path}: none of its tasks/labels matches a --data folder "
                f"({', '.join(d.task_name() for d in datasets)})" + "".join(f"; {n}" for n in n1[:2])
            )
        rows += more
    # registration baselines are methods of their own, after the bundles they accompany
    methods += [m for m in dict.fromkeys(r["method"] for r in rows) if m not in methods]
    with atomic_folder(out) as staging:
        write_csv(staging / "metrics.csv", rows, FIELDS, _fmt)
        if table1:
            write_csv(staging / "table1.csv", table1, format_value=_fmt)
        plots = _plots(staging, rows, methods)
        summary = (
            _summary(rows, table1, methods, plots) if rows else "# Evaluation\n"
        )  # no trained labels scored
        if side:
            write_csv(staging / "fine_methods.csv", side, sidebyside.FIELDS, _fmt)
            tasks = list(dict.fromkeys(r["task"] for r in side))
            for task in tasks:  # one section per label set (plots named by task when there are several)
                task_rows = [r for r in side if r["task"] == task]
                suffix = f"_{task}" if len(tasks) > 1 else ""
                side_plots = sidebyside.plots(staging, task_rows, suffix)
                title = task if len(tasks) > 1 else ""
                summary += "\n".join(sidebyside.summary_lines(task_rows, side_plots, notes, title)) + "\n"
        elif notes:
            summary += "\n".join(["", "## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]) + "\n"
        write_text_atomic(staging / "summary.md", summary)
    return summary

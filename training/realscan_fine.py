"""Fine labels drawn on the atlas, segmented on the real whole-head scan by every method side by side.

The LCS bundles are trained on coarse structures only; the atlas case's fine AAL regions (what a clinician
would draw) are carried onto the real scan - Colin 27 in its scanner pose, whose own AAL regions are the truth -
by naive world coordinates, affine and deformable registration, the paper's LCS and the refine network, each
label decided on its own as ``lsseg evaluate`` does (sidebyside.py). The scan's registration is shared by all.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.labels import LabelInfo

from . import sidebyside
from .datasets import read_dataset
from .label_set_eval import labels_on_atlas_grid
from .metrics import nanmean

MIN_ATLAS_VOXELS = 2  # a label of one voxel on the atlas grid cannot be carried (as evaluate)
CASE = "colin27 (scanner pose)"
FIELDS = sidebyside.FIELDS


def _atlas_groups(bundles: list) -> list[list]:
    """Bundles grouped by atlas image (one registration per atlas; a 3 mm and a 2 mm atlas are two groups)."""
    groups: list[list] = []
    for bundle in bundles:
        image = bundle.atlas_image()[0]
        for group in groups:
            seen = group[0].atlas_image()[0]
            if seen.shape == image.shape and np.allclose(seen, image, atol=1e-4):
                group.append(bundle)
                break
        else:
            groups.append([bundle])
    return groups


def fine_label_rows(scan, bundles: list, brain: Path, device: str) -> tuple[list, list]:
    """(side-by-side rows, notes) for the fine labels of ``brain``'s atlas case on ``scan`` (realscan.ScannerScan),
    segmented with ``bundles`` (LCS bundles; the refine one is recognised by its network). The registration
    methods run once per atlas, from the alignment ``lsseg segment`` computes, and their rows name its bundle."""
    from .demo_examples import _network

    dataset = read_dataset(brain)
    names = dataset.foreground_labels()
    by_name = {name: value for value, name in names.items()}
    # the scan's AAL truth in the dataset's values (both are AAL, matched by name)
    lookup = np.zeros(len(scan.names) + 1, dtype=np.int64)
    for index, name in enumerate(scan.names, start=1):
        lookup[index] = by_name.get(name, 0)
    truth = lookup[scan.truth]
    task = dataset.task_name()
    rows: list[dict] = []
    notes: list[str] = []
    for group in _atlas_groups(bundles):
        lead = group[0]
        atlas_image, atlas_affine = lead.atlas_image()
        case_id = lead.manifest.training.get("atlas_case")
        fine_atlas = labels_on_atlas_grid(dataset, case_id, atlas_affine, atlas_image.shape)
        if fine_atlas is None:
            notes.append(f"{lead.path.name}: {brain} has no atlas case {case_id!r}; left out")
            continue
        values = [v for v in sorted(names) if np.count_nonzero(fine_atlas == v) >= MIN_ATLAS_VOXELS]
        infos = [LabelInfo(v, names[v], (1.0, 0.0, 0.0)) for v in values]
        masks = np.stack([fine_atlas == v for v in values])
        alignment = sidebyside.scan_alignment(lead, scan.image, scan.affine)
        deformable, note = sidebyside.deformable_registration(lead, scan.image, scan.affine, alignment)
        predictions, note = sidebyside.registration_predictions(
            lead, masks, scan.image, scan.affine, alignment, deformable, note
        )
        if note:
            notes.append(f"{lead.path.name}: {note}")
        rows += sidebyside.case_rows(lead.path.name, task, CASE, infos, predictions, truth)
        for bundle in group:
            if bundle.network_config.arch == "lcs_refine" and deformable is None:
                notes.append(f"{bundle.path.name}: no deformable registration to refine; left out")
                continue
            method, decided = sidebyside.network_decisions(
                bundle,
                _network(bundle, device),  # resolves --device auto (the demo's default)
                scan.image,
                scan.affine,
                masks,
                infos,
                device,
                alignment,
                deformable,
            )
            rows += sidebyside.case_rows(bundle.path.name, task, CASE, infos, {method: decided}, truth)
    return rows, notes


def read_rows(path: Path) -> list[dict]:
    """The rows of ``realscan_fine.csv`` (Dice as numbers)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            {**r, "dice": float(r["dice"]), "fine_value": int(r["fine_value"])}
            for r in csv.DictReader(handle)
        ]


def report_lines(rows: list[dict], notes: list[str], test_means: dict) -> list[str]:
    """A compact table: each method's mean Dice over the fine labels, how often it beats affine propagation (on the
    same atlas), and its mean on the demo's test cases (``test_means``: method -> mean Dice from ``lsseg evaluate``,
    named as its report names them: ``sidebyside.by_bundle``)."""
    if not rows:
        return [f"- {note}" for note in notes]
    rows = sidebyside.by_bundle(rows)
    methods = sidebyside.methods_in(rows)
    base = {r["method"]: r.get("base_method", r["method"]) for r in rows}
    bundle_of = {r["method"]: r["bundle"] for r in rows}
    per_label = {m: {r["fine_value"]: r["dice"] for r in rows if r["method"] == m} for m in methods}
    affines = [m for m in methods if base[m] == sidebyside.AFFINE]
    count = len({r["fine_value"] for r in rows})
    lines = [
        f"Fine atlas labels on the real scan: the {count} AAL regions of the atlas case, drawn on the atlas and "
        "never trained (the bundles learnt only the coarse structures), each decided on its own; truth: the AAL "
        "regions of this brain.",
        "",
        "| method | mean fine Dice | labels better than affine propagation | on the demo's test cases |",
        "|---|---|---|---|",
    ]
    for method in methods:
        same = [m for m in affines if bundle_of[m] == bundle_of[method]]
        affine = per_label[(same or affines)[0]] if affines else {}
        wins = sum(1 for v, d in per_label[method].items() if d > affine.get(v, float("nan")))
        share = (
            "" if base[method] == sidebyside.AFFINE or not affine else f"{wins} of {len(per_label[method])}"
        )
        test = test_means.get(method, float("nan"))
        test_text = "n/a" if math.isnan(test) else f"{test:.3f}"
        lines.append(f"| {method} | {nanmean(per_label[method].values()):.3f} | {share} | {test_text} |")
    return lines + [f"- {note}" for note in notes]

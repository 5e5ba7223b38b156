"""Fine labels drawn on an LCS bundle's atlas, every way of segmenting them side by side (``lsseg evaluate``).

For each test case and each fine atlas label that was never trained, the label is decided on its own (overlaps
allowed, as Table 1 of Ma et al. 2022) by:

* ``naive (world)``           - the atlas label read at the same world coordinates, no registration;
* ``affine propagation``      - carried through the scan's affine alignment (the one LCS used);
* ``deformable propagation``  - carried through affine + deformable registration (engine/propagation.py);
* ``LCS (Ma et al. 2022)``    - the bundle's network conditioned on the label;
* ``LCS refine``              - deformable propagation corrected by a refine network (``lsseg segment --method
                                lcs-refine``; bundles whose network is ``lcs_refine``).

Several LCS bundles evaluated together share each test case's registration when their atlases are the same
image (the registration methods are then scored once, not once per bundle).

The headline is the best method's mean Dice, with its name; the table says how often each method beats affine
propagation per label.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.atlas_segmentation import atlas_labels_independently, reference_alignment
from LabelSharingSegLib.engine.errors import LabelSharingSegError
from LabelSharingSegLib.engine.propagation import Propagation, carry_independently, register_atlas
from LabelSharingSegLib.engine.registered import atlas_propagation, refined_independently
from LabelSharingSegLib.engine.registration import Alignment

from .metrics import dice, nanmean

NAIVE, AFFINE, DEFORMABLE, LCS, REFINE = (
    "naive (world)",
    "affine propagation",
    "deformable propagation",
    "LCS (Ma et al. 2022)",
    "LCS refine",
)
METHODS = (NAIVE, AFFINE, DEFORMABLE, LCS, REFINE)
REGISTRATION_METHODS = (NAIVE, AFFINE, DEFORMABLE)
FIELDS = ("bundle", "task", "case", "fine_value", "fine_name", "method", "dice")


def scan_alignment(bundle, volume, affine) -> Alignment | None:
    """The affine alignment of a scan that every registration method and the refine network start from, exactly as
    ``lsseg segment`` computes it (engine atlas_segmentation.reference_alignment: through the bundle's network reference
    when it has one, else directly to the atlas). Raises RegistrationError when the alignment diverges."""
    start = reference_alignment(bundle, volume, affine)
    return atlas_propagation(bundle, volume, affine, "affine", start).alignment


def deformable_registration(bundle, volume, affine, alignment) -> tuple[Propagation | None, str | None]:
    """(the atlas registered onto a scan, affine + deformable; or None and why: a diverged stage is reported,
    never used)."""
    atlas_image, atlas_affine = bundle.atlas_image()
    try:
        return register_atlas(
            atlas_image, atlas_affine, volume, affine, stage="deformable", alignment=alignment
        ), None
    except LabelSharingSegError as exc:  # diverged or impossible
        return None, f"deformable propagation left out: {exc}"


def network_decisions(bundle, network, volume, affine, masks, infos, device, alignment, deformable):
    """(method, bool masks (K, *scan)): each label decided on its own by the bundle's network - a refine network
    correcting the scan's ``deformable`` registration, or the paper's LCS from its ``alignment`` (False: the scan
    already lies in the atlas's space)."""
    if bundle.network_config.arch == "lcs_refine":
        decided, _ = refined_independently(
            bundle, volume, affine, masks, infos, device=device, network=network, propagation=deformable
        )
        return REFINE, decided
    decided, _ = atlas_labels_independently(
        bundle, volume, affine, masks, infos, device=device, network=network, align=alignment
    )
    return LCS, decided


def registration_predictions(
    bundle,
    fine_masks,
    volume,
    affine,
    alignment,
    deformable: Propagation | None = None,
    note: str | None = None,
) -> tuple[dict, str | None]:
    """{method: bool masks (K, *scan)} for the registration methods; a diverged deformable stage is reported
    (second value) and left out, never used. ``deformable``/``note``: a registration already computed."""
    _, atlas_affine = bundle.atlas_image()
    out = {NAIVE: carry_independently(fine_masks, atlas_affine, Propagation(None), volume.shape, affine)}
    if alignment is None:  # 2D bundles are not aligned, nor scans evaluated with --align off
        why = "the scans were not aligned to the atlas (a 2D bundle: registration needs 3D scans; or --align off)"
        return out, f"no registration methods: {why}"
    out[AFFINE] = carry_independently(fine_masks, atlas_affine, Propagation(alignment), volume.shape, affine)
    if deformable is None and note is None:
        deformable, note = deformable_registration(bundle, volume, affine, alignment)
    if deformable is None:
        return out, note
    out[DEFORMABLE] = carry_independently(fine_masks, atlas_affine, deformable, volume.shape, affine)
    return out, None


def case_rows(bundle_name, task, case_id, fine_infos, predictions: dict, truth) -> list[dict]:
    rows = []
    for method in METHODS:
        if method not in predictions:
            continue
        for info, mask in zip(fine_infos, predictions[method]):
            rows.append(
                {
                    "bundle": bundle_name,
                    "task": task,
                    "case": case_id,
                    "fine_value": info.value,
                    "fine_name": info.name,
                    "method": method,
                    "dice": dice(mask, truth == info.value),
                }
            )
    return rows


def by_bundle(rows: list[dict]) -> list[dict]:
    """Rows whose method several bundles produced, named apart: ``"deformable propagation (B)"``. Bundles whose
    atlases differ (e.g. a 3 mm and a 2 mm grid) each have their own registration rows, and two refine bundles
    their own refine rows; averaged together they would describe neither. Rows without a bundle stay as they are."""
    bundles: dict[str, set] = {}
    for r in rows:
        bundles.setdefault(r["method"], set()).add(r.get("bundle"))
    return [
        dict(r, method=f"{r['method']} ({r['bundle']})", base_method=r["method"])
        if len(bundles[r["method"]]) > 1
        else r
        for r in rows
    ]


def methods_in(rows: list[dict]) -> list[str]:
    """The methods of (``by_bundle``) rows in the order of METHODS, bundles in the order they were evaluated."""
    seen = list(dict.fromkeys(r["method"] for r in rows))
    base = {r["method"]: r.get("base_method", r["method"]) for r in rows}
    return sorted(
        (m for m in seen if base[m] in METHODS), key=lambda m: (METHODS.index(base[m]), seen.index(m))
    )


def _reference(rows: list[dict], method: str, present: list[str]) -> str | None:
    """The affine propagation a method is compared with: on the same bundle's atlas where the affine rows are
    split by bundle (else the first), naive where there is no affine row."""
    base = {r["method"]: r.get("base_method", r["method"]) for r in rows}
    bundle = next(r.get("bundle") for r in rows if r["method"] == method)
    for wanted in (AFFINE, NAIVE):
        candidates = [m for m in present if base[m] == wanted]
        same = [m for m in candidates if any(r["method"] == m and r.get("bundle") == bundle for r in rows)]
        if candidates:
            return (same or candidates)[0]
    return None


def _per_label(rows, method) -> dict[int, float]:
    values = sorted({r["fine_value"] for r in rows})
    return {
        v: nanmean(r["dice"] for r in rows if r["method"] == method and r["fine_value"] == v) for v in values
    }


def headline(rows: list[dict]) -> tuple[str, float]:
    """(best method, its mean Dice over fine labels and cases)."""
    rows = by_bundle(rows)
    means = {m: nanmean(r["dice"] for r in rows if r["method"] == m) for m in methods_in(rows)}
    means = {m: v for m, v in means.items() if not math.isnan(v)}
    best = max(means, key=means.get)
    return best, means[best]


def summary_lines(rows: list[dict], plots: list[Path], notes: list[str], title: str = "") -> list[str]:
    rows = by_bundle(rows)
    present = methods_in(rows)
    base = {r["method"]: r.get("base_method", r["method"]) for r in rows}
    best, best_mean = headline(rows)
    labels = {r["fine_value"] for r in rows}
    lines = [
        "",
        "## Fine atlas labels, every method side by side" + (f": {title}" if title else ""),
        "",
        f"**Best: {best}, mean Dice {best_mean:.4f}** over {len(labels)} fine labels never trained and "
        f"{len({r['case'] for r in rows})} test cases. Each label decided on its own (as Ma et al. 2022, Table 1).",
        "",
        "| method | mean Dice | labels better than affine propagation |",
        "|---|---|---|",
    ]
    for method in present:
        per_label = _per_label(rows, method)
        reference = _reference(rows, method, present)
        affine = _per_label(rows, reference) if reference else {}
        wins = sum(1 for v, d in per_label.items() if d > affine.get(v, float("nan")))
        mean = nanmean(r["dice"] for r in rows if r["method"] == method)
        compared = reference is not None and base[reference] == AFFINE and base[method] != AFFINE
        share = f"{wins} of {len(per_label)}" if compared else ""
        lines.append(f"| {method} | {mean:.4f} | {share} |")
    lines += [""] + [f"- {note}" for note in dict.fromkeys(notes)] if notes else []
    lines += ["", "| fine label | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    tables = {m: _per_label(rows, m) for m in present}
    names = {r["fine_value"]: r["fine_name"] for r in rows}
    for value in sorted(names):
        cells = " | ".join(f"{tables[m].get(value, float('nan')):.4f}" for m in present)
        lines.append(f"| {names[value]} ({value}) | {cells} |")
    if plots:
        lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    return lines


def plots(out: Path, rows: list[dict], suffix: str = "") -> list[Path]:
    """Paired per-case means across methods, and per-label Dice (labels sorted by affine propagation);
    files ``fine_methods_{paired,labels}{suffix}.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = by_bundle(rows)
    present = methods_in(rows)
    written = []
    fig, ax = plt.subplots(figsize=(2 + 1.7 * len(present), 4.2))
    for case in sorted({r["case"] for r in rows}):
        ys = [nanmean(r["dice"] for r in rows if r["case"] == case and r["method"] == m) for m in present]
        ax.plot(range(len(present)), ys, marker="o", color="tab:blue", alpha=0.5, linewidth=1)
    means = [nanmean(r["dice"] for r in rows if r["method"] == m) for m in present]
    ax.plot(range(len(present)), means, marker="s", color="black", linewidth=2.5, label="mean")
    ax.set_xticks(range(len(present)), present, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean Dice over fine labels, per test case")
    ax.set_title("fine atlas labels: paired per-case Dice")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / f"fine_methods_paired{suffix}.png", dpi=100)
    plt.close(fig)
    written.append(out / f"fine_methods_paired{suffix}.png")

    reference = _reference(rows, present[0], present)
    affine = _per_label(rows, reference) if reference else {}
    order = sorted(affine, key=lambda v: affine[v])
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for method in present:
        per_label = _per_label(rows, method)
        ax.plot(
            range(len(order)),
            [per_label.get(v, np.nan) for v in order],
            marker=".",
            linewidth=1,
            label=method,
        )
    ax.set_xlabel(f"fine label (sorted by {reference} Dice)")
    ax.set_ylabel("mean Dice over test cases")
    ax.set_ylim(0, 1)
    ax.set_title("fine atlas labels: Dice per label and method")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / f"fine_methods_labels{suffix}.png", dpi=100)
    plt.close(fig)
    written.append(out / f"fine_methods_labels{suffix}.png")
    return written

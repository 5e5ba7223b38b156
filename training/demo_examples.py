"""The demo's worked examples: results and overlay pictures of every shipped bundle (label sharing per task,
LCS on coarse and fine atlas labels, an off-atlas scan, the real whole-head scan), for ``lsseg demo``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.atlas_segmentation import segment_atlas_labels
from LabelSharingSegLib.engine.atomic import write_text_atomic
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.inference import segment_task
from LabelSharingSegLib.engine.labels import LabelInfo, default_color, labels_to_csv
from LabelSharingSegLib.engine.nifti_io import save_nifti

from .csv_tables import write_csv
from .datasets import as_volume, load_case, read_dataset
from .label_hierarchy import read_label_hierarchy
from .metrics import dice
from .segnrrd import write_seg_nrrd


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


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
    from .label_set_eval import labels_on_atlas_grid

    dataset = read_dataset(brain)
    atlas_labels, atlas_affine, _ = bundle.atlas_labels()
    training = bundle.manifest.training
    fine = labels_on_atlas_grid(dataset, training.get("atlas_case"), atlas_affine, atlas_labels.shape)
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
        method="lcs",
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
        method="lcs",
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
            method="lcs",
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


def real_scan_section(
    out: Path,
    bundles: tuple[Path, Path],
    device: str,
    spacing: float,
    brain: Path | None = None,
    refine: Path | None = None,
    individual: Sequence[Path] = (),
) -> dict:
    """Results on the real whole-head scan (with ``brain``: also the atlas case's fine labels by every method;
    ``individual``: one-model-per-task bundles beside label sharing); {"skipped": reason} when its Debian
    package is not installed."""
    from LabelSharingSegLib.engine.errors import DatasetError

    from .realscan import real_scan_example

    try:
        return real_scan_example(out, bundles, device, spacing, brain, refine, individual)
    except DatasetError as exc:
        _say(f"skipping the real scan: {exc}")
        return {"skipped": str(exc)}

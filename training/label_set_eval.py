"""A second label set drawn on an LCS bundle's atlas, scored by every method side by side (``lsseg evaluate``).

The bundle was trained on one label set (e.g. coarse AAL structures); a dataset built on the same scans with
other labels (``lsseg data build --set brain-nmm``: case i is case i of brain-aal with Neuromorphometrics labels)
gives the atlas case's labels of that set, i.e. labels a user could have drawn on the bundle's atlas. Each of them
is segmented on the dataset's test cases by naive, affine and deformable propagation and by the bundle's network
(sidebyside.py), each label decided on its own. The dataset's ``same_scan_cases`` names which of its cases is the
bundle's atlas case; the scan itself is compared with the bundle's atlas image before it is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from LabelSharingSegLib.engine.atlas_segmentation import atlas_labels_independently
from LabelSharingSegLib.engine.errors import UnplacedScanError
from LabelSharingSegLib.engine.labels import LabelInfo
from LabelSharingSegLib.engine.preprocessing import resample_to_grid
from LabelSharingSegLib.engine.propagation import MIN_LABEL_VOXELS
from LabelSharingSegLib.engine.registered import refined_independently

from . import sidebyside
from .datasets import as_volume, load_case

# the dataset's atlas case must show the bundle's atlas image (resampled onto its grid): correlation at least
MIN_ATLAS_CORRELATION = 0.99


def atlas_case_of(bundle, dataset) -> tuple[str | None, str]:
    """(the dataset's training case that is the bundle's atlas case, or None; why not)."""
    training = bundle.manifest.training
    atlas_case = training.get("atlas_case")
    listed = training.get("datasets") or []
    sources = [Path(str(p)).name for p in (listed.split(",") if isinstance(listed, str) else listed) if p]
    pairs = (dataset.metadata.get("lsseg") or {}).get("same_scan_cases") or {}
    wanted = {f"{folder}/{atlas_case}" for folder in sources}
    own = [case for case, other in pairs.items() if other in wanted]
    if any(c.case_id == atlas_case for c in dataset.training):
        own = [atlas_case]  # the bundle's own training set
    if not atlas_case or not own:
        return None, (
            f"{dataset.task_name()}: none of its cases is the bundle's atlas case {atlas_case!r} "
            "(datasets built with `lsseg data build` on the same scans record it in same_scan_cases)"
        )
    case = next((c for c in dataset.training if c.case_id == own[0]), None)
    if case is None:
        return None, f"{dataset.task_name()}: the atlas case {own[0]} is not among its training cases"
    image, _, affine = load_case(case)
    atlas_image, atlas_affine = bundle.atlas_image()
    on_grid = resample_to_grid(
        torch.as_tensor(as_volume(image[0]))[None],
        atlas_affine,
        atlas_image.shape,
        mode="bilinear",
        src_affine=affine,
    )[0].numpy()
    correlation = float(np.corrcoef(on_grid.ravel(), np.asarray(atlas_image).ravel())[0, 1])
    if not correlation >= MIN_ATLAS_CORRELATION:
        return None, (
            f"{dataset.task_name()}: case {case.case_id} is not the bundle's atlas image (correlation "
            f"{correlation:.3f}); its labels were not drawn on this atlas"
        )
    return case.case_id, ""


def labels_on_atlas_grid(dataset, case_id, atlas_affine, atlas_shape) -> np.ndarray | None:
    """A training case's label map on the bundle's atlas grid (nearest neighbour); None when it has no such case."""
    case = next((c for c in dataset.training if c.case_id == case_id), None)
    if case is None:
        return None
    _, label, affine = load_case(case)
    label = as_volume(label).astype(np.float32)
    on_grid = resample_to_grid(
        torch.as_tensor(label)[None], atlas_affine, atlas_shape, mode="nearest", src_affine=affine
    )[0]
    return on_grid.round().numpy().astype(np.int64)


def evaluate_label_set(bundle, method, dataset, network, device) -> tuple[list[dict], list[str]]:
    """(side-by-side rows, notes) for every label of ``dataset`` present on the bundle's atlas case."""
    case_id, why = atlas_case_of(bundle, dataset)
    if case_id is None:
        return [], [why]
    atlas_image, atlas_affine = bundle.atlas_image()
    fine_atlas = labels_on_atlas_grid(dataset, case_id, atlas_affine, atlas_image.shape)
    names = dataset.foreground_labels()
    values = [v for v in sorted(names) if np.count_nonzero(fine_atlas == v) >= MIN_LABEL_VOXELS]
    infos = [LabelInfo(v, names[v], (1.0, 0.0, 0.0)) for v in values]
    masks = np.stack([fine_atlas == v for v in values])
    rows, notes = [], []
    task = dataset.task_name()
    for case in (c for c in dataset.test if c.label_path is not None):
        image, truth, affine = load_case(case)
        volume, truth = as_volume(image[0]), as_volume(truth).astype(np.int64)
        if bundle.network_config.arch == "lcs_refine":  # refines the deformable registration it computes
            alignment = sidebyside.scan_alignment(bundle, volume, affine)  # as `lsseg segment` aligns it
            deformable, note = sidebyside.deformable_registration(bundle, volume, affine, alignment)
            predictions, note = sidebyside.registration_predictions(
                bundle, masks, volume, affine, alignment, deformable, note
            )
            if deformable is not None:
                predictions[sidebyside.REFINE] = refined_independently(
                    bundle,
                    volume,
                    affine,
                    masks,
                    infos,
                    device=str(device),
                    network=network,
                    propagation=deformable,
                )[0]
        else:
            try:
                decided, alignment = atlas_labels_independently(
                    bundle, volume, affine, masks, infos, device=str(device), network=network
                )
            except UnplacedScanError as error:  # every method here starts from that alignment
                notes.append(f"{case.case_id}: left out, {method} refused the scan ({error})")
                continue
            predictions, note = sidebyside.registration_predictions(bundle, masks, volume, affine, alignment)
            predictions[sidebyside.LCS] = decided
        if note:
            notes.append(f"{case.case_id}: {note}")
        rows += sidebyside.case_rows(method, task, case.case_id, infos, predictions, truth)
    left_out = len(names) - len(values)
    if left_out:
        notes.append(
            f"{task}: {left_out} label(s) with fewer than {MIN_LABEL_VOXELS} voxels on the atlas grid left out"
        )
    return rows, notes

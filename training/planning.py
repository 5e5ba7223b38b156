"""Planning a training run from its datasets: unique tasks, the train/validation split, label sizes, the model grid
(dimensionality, spacing, patch) and the preprocessing written into the bundle. Reads data; trains nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.errors import DatasetError, InputError
from LabelSharingSegLib.engine.labelspace import SharedLabelSpace, average_relative_sizes
from LabelSharingSegLib.engine.modality import modality_mismatch, modality_of_channels, weighting_of_channels
from LabelSharingSegLib.engine.nifti_io import load_nifti
from LabelSharingSegLib.engine.preprocessing_config import Preprocessing

from . import bundle_factory as factory
from .datasets import NnUNetDataset, load_case, require_valid_dataset
from .run_config import TrainSettings
from .samples import spacing_in_model_axes


def load_datasets(paths) -> list[NnUNetDataset]:
    """Checked datasets whose task names are unique (they name output channels and folders)."""
    datasets = [require_valid_dataset(p) for p in paths]
    names = [d.task_name() for d in datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(
            f"task names must be unique, but {', '.join(repeated)} appear(s) more than once "
            "(set a distinct 'name' in each dataset.json)"
        )
    return datasets


def split_cases(cases, fraction: float, seed: int):
    """(train, validation) split of training cases, deterministic in the seed; at least one of each when the
    fraction is positive and there are 3 or more cases."""
    cases = list(cases)
    if fraction <= 0 or len(cases) < 3:
        return cases, []
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(len(cases) - 1, max(1, int(round(fraction * len(cases)))))
    val = {int(i) for i in order[:n_val]}
    return [c for i, c in enumerate(cases) if i not in val], [c for i, c in enumerate(cases) if i in val]


def task_sizes(dataset: NnUNetDataset):
    """Average relative label sizes of a task (what the shared label space is built from)."""
    maps = (load_nifti(case.label_path, dtype=np.int32)[0] for case in dataset.training)
    return average_relative_sizes(maps, dataset.foreground_labels(), dataset.task_name())


def detect_dims(dataset: NnUNetDataset) -> tuple[int, list[float], list[int]]:
    """(spatial dims, median spacing on the model axes, median shape) over the training cases."""
    import nibabel as nib

    shapes, affines = [], []
    for case in dataset.training:
        header = nib.load(str(case.image_paths[0]))
        shapes.append(list(header.shape[:3]) + [1] * (3 - len(header.shape[:3])))
        affines.append(header.affine)
    dims = 2 if all(s[2] == 1 for s in shapes) else 3
    spacing = np.median([spacing_in_model_axes(a, dims) for a in affines], axis=0).tolist()
    return dims, [float(s) for s in spacing], [int(s) for s in np.median(shapes, axis=0)]


def plan_preprocessing(settings: TrainSettings, datasets: list[NnUNetDataset], factor: int) -> Preprocessing:
    """Preprocessing of a task run: the data's grid unless ``settings`` chooses spacing and patch."""
    dims, spacing, shape = detect_dims(datasets[0])
    for other in datasets[1:]:
        if detect_dims(other)[0] != dims:
            raise InputError("all tasks must be 2D or all 3D; mixed dimensionality found")
    spacing = list(settings.spacing or spacing)
    if len(spacing) != dims:
        raise InputError(f"--spacing needs {dims} values for {dims}D data")
    patch = settings.patch
    if patch is None:
        cap = 128 if dims == 2 else 64
        patch = [min(cap, s + (-s) % factor) for s in shape[:dims]]
    if len(patch) != dims:
        raise InputError(f"--patch needs {dims} values for {dims}D data")
    return factory.make_preprocessing(
        dims,
        spacing,
        list(patch),
        {"mode": settings.intensity},
        factor=factor,
        modality=declared_modality(datasets),
        contrast=declared_contrast(datasets),
    )


def declared_contrast(datasets: list[NnUNetDataset]) -> str | None:
    """The MR weighting ('T1', 'T2', 'FLAIR', 'PD') the datasets' channel names all declare, else None."""
    return weighting_of_channels(name for dataset in datasets for name in dataset.channel_names.values())


def declared_modality(datasets: list[NnUNetDataset]) -> str | None:
    """The kind of scan ('MR', 'CT') the datasets' channel names all declare, else None; checked on each
    dataset's first training case, so that a wrong declaration stops training instead of a clinician's scan."""
    modality = modality_of_channels(name for dataset in datasets for name in dataset.channel_names.values())
    for dataset in datasets if modality is not None else []:
        case = dataset.training[0]
        problem = modality_mismatch(load_case(case)[0], modality)
        if problem is not None:
            raise DatasetError(
                f"{dataset.root}/dataset.json names its channels {list(dataset.channel_names.values())} "
                f"({modality}), but its case {case.case_id!r} {problem}; fix the channel names or the images"
            )
    return modality


def task_infos(
    kind: str, datasets: list[NnUNetDataset], shuffle_seed: int | None = None
) -> tuple[list, SharedLabelSpace | None]:
    """The bundle's task table (and the shared label space for label sharing: labels matched by size rank, or
    with ``shuffle_seed`` by a seeded random order, the control for the rank mapping)."""
    task_labels = {d.task_name(): d.foreground_labels() for d in datasets}
    slicing = {d.task_name(): factory.dataset_slicing(d) for d in datasets}  # 2D plane, trained region
    if kind == "labelsharing":
        space = SharedLabelSpace.build([task_sizes(d) for d in datasets], shuffle_seed=shuffle_seed)
        return factory.with_slicing(factory.labelsharing_tasks(space), slicing), space
    if kind == "multichannel":
        return factory.with_slicing(factory.multichannel_tasks(task_labels), slicing), None
    return factory.with_slicing(factory.per_task_rank_tasks(task_labels), slicing), None


def reference_image(path: Path | None, prep: Preprocessing):
    """(image, affine) of ``--reference``, checked before any training time is spent; None without it."""
    if path is None:
        return None
    image, affine = load_nifti(path)
    if image.ndim != 3 or min(image.shape) < 4:
        # a 2D bundle takes a 3D reference too: volumes are aligned to it, then cut in its tasks' planes
        raise InputError(
            f"{path}: a reference must be a 3D volume (this bundle is {prep.spatial_dims}D, the image has "
            f"shape {image.shape})"
        )
    if not np.all(np.isfinite(image)):
        raise InputError(f"{path}: the reference image holds NaN/Inf voxels")
    return image, affine

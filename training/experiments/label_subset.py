"""A copy of a dataset that keeps only its first K labels (by value); the others become background.

The LCS experiment trains both methods at several label counts on the same images, so Dice and memory can be read
against the label count. The source dataset is only read; the copy is written atomically (images copied byte for
byte, labels rewritten).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.nifti_io import load_nifti, save_nifti

from ..data.writer import dataset_folder
from ..datasets import NnUNetDataset, write_dataset_json


def kept_labels(dataset: NnUNetDataset, count: int) -> dict[int, str]:
    labels = dataset.foreground_labels()
    if not 1 <= count <= len(labels):
        raise InputError(
            f"label count {count}: {dataset.root} has {len(labels)} labels (choose 1-{len(labels)})"
        )
    return dict(list(labels.items())[:count])


def write_label_subset(dataset: NnUNetDataset, count: int, target: Path) -> Path:
    """``target``: the dataset with its first ``count`` labels; an existing complete copy is reused."""
    if (target / "dataset.json").is_file():
        return target
    keep = kept_labels(dataset, count)
    lut = np.zeros(max(dataset.foreground_labels()) + 1, dtype=np.int16)
    for value in keep:
        lut[value] = value
    with dataset_folder(target) as tmp:
        for split, cases in (("Tr", dataset.training), ("Ts", dataset.test)):
            (tmp / f"images{split}").mkdir()
            (tmp / f"labels{split}").mkdir()
            for case in cases:
                for image in case.image_paths:
                    shutil.copyfile(image, tmp / f"images{split}" / image.name)
                if case.label_path is not None:
                    label, affine = load_nifti(case.label_path, dtype=np.int32)
                    save_nifti(
                        tmp / f"labels{split}" / case.label_path.name,
                        lut[label.clip(0, len(lut) - 1)],
                        affine,
                    )
        write_dataset_json(
            tmp,
            name=f"{dataset.task_name()}{count}labels",
            labels={"background": 0, **{name: value for value, name in keep.items()}},
            channel_names=dataset.channel_names,
            num_training=len(dataset.training),
            file_ending=dataset.file_ending,
            description=f"{dataset.root.name} with its first {count} labels only (lsseg experiment lcs)",
        )
    return target

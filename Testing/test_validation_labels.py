"""Capped validation (``--val-labels``): a seeded sample, the same for LCS and multi-channel, and only it scored."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import phantoms

from LabelSharingSegLib.engine.errors import InputError
from lsseg_training import api
from lsseg_training.api import LCSRunConfig, TaskRunConfig, TrainSettings
from lsseg_training.experiments import runner
from lsseg_training.validation_labels import validation_labels


def test_sample_is_seeded_sorted_and_capped():
    values = list(range(1, 117))
    first = validation_labels(values, 10, seed=3)
    assert first == validation_labels(reversed(values), 10, seed=3)  # the order of the values does not matter
    assert first == sorted(first) and len(set(first)) == 10 and set(first) <= set(values)
    assert first != validation_labels(values, 10, seed=4)
    assert validation_labels(values, None, seed=3) == values
    assert validation_labels([3, 1, 2], 5, seed=0) == [1, 2, 3]  # a cap above the count keeps all
    with pytest.raises(ValueError):
        validation_labels(values, 0, seed=0)


def test_settings_refuse_a_cap_below_one():
    with pytest.raises(InputError, match="--val-labels must be >= 1"):
        TrainSettings(val_labels=0)
    with pytest.raises(InputError, match="--val-labels must be >= 1"):
        runner.Budget(steps=1, val_labels=0)


def _manifest(bundle) -> dict:
    return json.loads((bundle / "bundle.json").read_text())["training"]


def test_lcs_and_multichannel_validate_the_same_seeded_labels(tmp_path, monkeypatch):
    data = phantoms(tmp_path / "data", tasks=1, cases=4)[0]  # 3 labels
    settings = TrainSettings(
        steps=2, batch=1, channels=(4, 8), device="cpu", quiet=True, val_labels=2, seed=5
    )
    scored: dict[str, list] = {}

    from lsseg_training.methods import LCSMethod, TaskMethod

    lcs_validate, task_validate = LCSMethod.validate, TaskMethod.validate

    def watch_lcs(self, model, items, device):
        scored.setdefault("lcs", list(self.val_values))
        return lcs_validate(self, model, items, device)

    def watch_task(self, model, items, device):
        scored.setdefault("multichannel", list(self.val_values[0]))
        return task_validate(self, model, items, device)

    monkeypatch.setattr(LCSMethod, "validate", watch_lcs)
    monkeypatch.setattr(TaskMethod, "validate", watch_task)
    api.train_lcs(LCSRunConfig(data, tmp_path / "lcs", settings=settings))
    api.train_tasks(TaskRunConfig("multichannel", data=(data,), out=tmp_path / "mc", settings=settings))
    expected = validation_labels([1, 2, 3], 2, seed=5)
    assert scored == {"lcs": expected, "multichannel": expected}
    assert _manifest(tmp_path / "lcs")["validation_labels"] == expected
    assert _manifest(tmp_path / "mc")["validation_labels"] == {"Phantom0": expected}
    assert runner.validation_labels_of(tmp_path / "lcs") == runner.validation_labels_of(tmp_path / "mc")


def test_lcs_validation_decodes_every_label_and_scores_the_sample(tmp_path):
    """Inference decides each voxel among all labels, so validation decodes all of them (in chunks) even when
    --val-labels scores a sample."""
    from LabelSharingSegLib.engine.network_config import LCSConfig
    from LabelSharingSegLib.engine.networks import build_network
    from LabelSharingSegLib.engine.preprocessing_config import Preprocessing
    from lsseg_training.methods import VALIDATION_CHUNK, LCSMethod

    prep = Preprocessing(spatial_dims=2, spacing=(1.0, 1.0), patch_size=(16, 16))
    atlas = torch.zeros(16, 16, 1, dtype=torch.long)
    for value in range(1, 9):
        atlas[2 * value - 2 : 2 * value, :, 0] = value
    config = LCSConfig(spatial_dims=2, channels=(4, 8))
    method = LCSMethod(torch.randn(16, 16, 1), atlas, list(range(1, 9)), config, prep, val_labels=[2, 7])
    model = build_network(config)
    batches = []
    decode = model.decode_conditioned

    def counting(encoded, conditioning):
        batches.append(conditioning.shape[0])
        return decode(encoded, conditioning)

    model.decode_conditioned = counting
    items = method.prepare_items([{"image": torch.randn(1, 16, 16, 1), "label": atlas.clone()}])
    method.validate(model, items, torch.device("cpu"))
    assert sum(batches) == 8 and max(batches) <= VALIDATION_CHUNK  # all eight labels, chunked


def test_an_atlas_lacking_a_label_keeps_the_shared_sample(tmp_path, monkeypatch):
    """When LCS's atlas case lacks a label, LCS scores the multi-channel sample less that label, not a sample
    drawn from other labels (both draw from the dataset's labels)."""
    import nibabel as nib
    import numpy as np

    from lsseg_training.datasets import read_dataset
    from lsseg_training.methods import LCSMethod

    data = phantoms(tmp_path / "data", tasks=1, cases=4)[0]  # 3 labels
    atlas_case = read_dataset(data).training[0]
    label_file = atlas_case.label_path
    img = nib.load(label_file)
    values = np.asarray(img.dataobj)
    assert (values == 3).any()
    nib.save(nib.Nifti1Image(np.where(values == 3, 0, values).astype(values.dtype), img.affine), label_file)
    seed = next(s for s in range(100) if validation_labels([1, 2, 3], 2, s) in ([1, 3], [2, 3]))
    shared = validation_labels([1, 2, 3], 2, seed)
    settings = TrainSettings(
        steps=1, batch=1, channels=(4, 8), device="cpu", quiet=True, val_labels=2, seed=seed
    )
    scored = []
    validate = LCSMethod.validate

    def watch(self, model, items, device):
        scored.append(list(self.val_values))
        return validate(self, model, items, device)

    monkeypatch.setattr(LCSMethod, "validate", watch)
    api.train_lcs(LCSRunConfig(data, tmp_path / "lcs", settings=settings))
    assert scored[0] == [v for v in shared if v != 3]
    assert _manifest(tmp_path / "lcs")["validation_labels"] == scored[0]


def test_the_report_names_labels_lcs_could_not_validate(monkeypatch):
    from lsseg_training.experiments import lcs as lcs_experiment

    chosen = {"lcs_8": [1, 5], "multichannel_8": [1, 3, 5], "lcs_4": [2, 4], "multichannel_4": [2, 4]}

    class Folders:
        def run(self, name):
            return name

    monkeypatch.setattr(runner, "validation_labels_of", lambda bundle: chosen[bundle])
    lines = lcs_experiment._validation_lines(Folders(), [4, 8], runner.Budget(steps=1, val_labels=3))
    assert "  - 4 labels: 2, 4 (LCS and multi-channel the same: **yes**)" in lines
    assert (
        "  - 8 labels: 1, 3, 5 (LCS and multi-channel the same: **no**, except 3, not on LCS's atlas case)"
        in lines
    )

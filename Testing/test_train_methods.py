"""Every method trains a few steps on phantoms and writes a bundle that `lsseg segment` accepts; loss falls on an
easy phantom; bad input fails with one clear message."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from train_helpers import TINY, log_losses, lsseg, phantoms

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.nifti_io import load_nifti


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantoms(tmp_path_factory.mktemp("phantoms"))


@pytest.mark.parametrize("kind", ["labelsharing", "multichannel", "dodnet", "individual"])
def test_task_methods_write_segmentable_bundles(tmp_path, data, kind):
    out = tmp_path / kind
    assert lsseg("train", kind, "--data", *data, "--out", out, "--steps", 3, *TINY) == 0
    bundles = sorted(out.iterdir()) if kind == "individual" else [out]
    assert len(bundles) == (2 if kind == "individual" else 1)
    for bundle_path in bundles:
        bundle = load_bundle(bundle_path)
        assert bundle.kind == kind
        task = bundle.task_names()[0]
        case = next(
            iter(sorted((data[[d.name.endswith(task) for d in data].index(True)] / "imagesTs").iterdir()))
        )
        seg = tmp_path / f"{bundle_path.name}_seg.nii.gz"
        assert (
            lsseg("segment", bundle_path, "-i", case, "-o", seg, "--task", task, "--device", "cpu", "--quiet")
            == 0
        )
        labelmap, _ = load_nifti(seg, dtype=np.int32)
        assert set(np.unique(labelmap)) <= {0} | {label.value for label in bundle.task_labels(task)}
    assert (
        tmp_path / f"{kind}.training" / ("Phantom0/log.csv" if kind == "individual" else "log.csv")
    ).is_file()


def test_labelsharing_bundle_holds_space_and_all_tasks(tmp_path, data):
    out = tmp_path / "ls"
    assert lsseg("train", "labelsharing", "--data", *data, "--out", out, "--steps", 2, *TINY) == 0
    bundle = load_bundle(out)
    assert bundle.task_names() == ["Phantom0", "Phantom1"]
    assert bundle.label_space.n_shared == 3
    assert bundle.network_config.out_channels == 4
    assert bundle.manifest.training["steps"] == 2


def test_lcs_with_coarse_map_stores_coarse_atlas(tmp_path, data):
    coarse = tmp_path / "coarse.csv"
    coarse.write_text("fine_value,coarse_value,coarse_name\n2,2,merged\n3,2,merged\n")
    out = tmp_path / "lcs"
    assert (
        lsseg(
            "train",
            "lcs",
            "--data",
            data[0],
            "--out",
            out,
            "--steps",
            3,
            "--coarse-map",
            coarse,
            "--atlas-case",
            "phantom0_001",
            *TINY,
        )
        == 0
    )
    bundle = load_bundle(out)
    labels, _, names = bundle.atlas_labels()
    assert set(np.unique(labels)) == {0, 1, 2}
    assert [n.name for n in names] == ["large_blob", "merged"]
    assert bundle.manifest.training["atlas_case"] == "phantom0_001"
    case = sorted((data[0] / "imagesTs").iterdir())[0]
    seg = tmp_path / "lcs_seg.nii.gz"
    atlas_file = out / bundle.manifest.atlas.labels
    assert (
        lsseg(
            "segment", out, "-i", case, "-o", seg, "--atlas-labels", atlas_file, "--device", "cpu", "--quiet"
        )
        == 0
    )


def test_loss_decreases_on_easy_phantom(tmp_path, data):
    out = tmp_path / "easy"
    assert (
        lsseg(
            "train",
            "labelsharing",
            "--data",
            data[1],
            "--out",
            out,
            "--steps",
            40,
            "--lr",
            "3e-3",
            "--no-augment",
            "--val-fraction",
            "0",
            *TINY,
        )
        == 0
    )
    losses = log_losses(tmp_path / "easy.training")
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_bf16_autocast_on_cpu_runs(tmp_path, data):
    out = tmp_path / "bf16"
    assert (
        lsseg("train", "multichannel", "--data", data[0], "--out", out, "--steps", 2, "--amp", "bf16", *TINY)
        == 0
    )
    assert load_bundle(out).kind == "multichannel"


def test_overlapping_task_names_rejected(tmp_path, data, capsys):
    assert lsseg("train", "labelsharing", "--data", data[0], data[0], "--out", tmp_path / "x", *TINY) == 2
    assert "task names must be unique" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_invalid_dataset_lists_its_problems(tmp_path, data, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(data[0], broken)
    next((broken / "labelsTr").iterdir()).unlink()
    assert lsseg("train", "labelsharing", "--data", broken, "--out", tmp_path / "x", *TINY) == 2
    err = capsys.readouterr().err
    assert "problem(s)" in err and "has no label" in err


def test_unknown_atlas_case_rejected(tmp_path, data, capsys):
    assert (
        lsseg("train", "lcs", "--data", data[0], "--out", tmp_path / "x", "--atlas-case", "nope", *TINY) == 2
    )
    err = capsys.readouterr().err
    assert "--atlas-case 'nope'" in err and "phantom0_000" in err


def test_existing_output_rejected(tmp_path, data, capsys):
    (tmp_path / "taken").mkdir()
    assert lsseg("train", "labelsharing", "--data", data[0], "--out", tmp_path / "taken", *TINY) == 2
    assert "already exists" in capsys.readouterr().err

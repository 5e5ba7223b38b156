"""A bundle refuses a scan of the other kind (CT vs MR) with the evidence, before aligning or writing anything:
real scans (a head CT in Hounsfield units, two T1 heads), the shipped bundles, and bundles trained here whose
kind comes from their datasets' channel names. An MR bundle's weighting (T1, T2, FLAIR, PD) is compared with what
a DICOM header reveals, and another one is warned about (a real proton-density series)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from train_helpers import TINY, lsseg, phantoms

from LabelSharingSegLib.engine.atlas_methods import ATLAS_METHODS
from LabelSharingSegLib.engine.atlas_segmentation import segment_atlas_labels
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import ConfigError, InputError
from LabelSharingSegLib.engine.inference import segment_task
from LabelSharingSegLib.engine.modality import (
    CT_AIR_SHARE,
    HeaderStatement,
    air_share,
    check_scan_modality,
    modality_mismatch,
    modality_of_channel,
    modality_of_channels,
    weighting_of_channels,
    weighting_of_name,
    weighting_of_timing,
    weighting_warning,
)
from LabelSharingSegLib.engine.preprocessing_config import IntensityConfig, Preprocessing
from LabelSharingSegLib.engine.scan_io import load_scan
from lsseg_training.cli import main
from lsseg_training.data import sources
from lsseg_training.datasets import make_case_folders, write_case, write_dataset_json
from lsseg_training.demo import LCS_BUNDLE, LS_BUNDLE, shipped_bundles_dir


@pytest.fixture(scope="module")
def ct_head():
    return sources.load_ct_head()


@pytest.fixture(scope="module")
def mr_heads():
    colin = sources.load_system_image(sources.COLIN27_HEAD)
    return {"Colin 27": colin, "pycortex S1": sources.load_second_head()}


def test_channel_names_say_the_kind_of_scan():
    for name in ("T1", "t1w", "T2", "FLAIR", "ADC", "T1gd", "MRI", "pd", "DWI"):
        assert modality_of_channel(name) == "MR", name
    for name in ("CT", "ct", "CTA", "CT angiography"):
        assert modality_of_channel(name) == "CT", name
    for name in ("synthetic", "PET", "noNorm", "", "contrast"):
        assert modality_of_channel(name) is None, name
    assert modality_of_channels(["T1", "T2", "FLAIR"]) == "MR"
    assert modality_of_channels(["CT"]) == "CT"
    assert modality_of_channels(["CT", "T1"]) is None  # mixed: nothing declared
    assert modality_of_channels(["T1", "synthetic"]) is None
    assert modality_of_channels([]) is None


def test_the_real_ct_and_the_real_mr_heads_are_told_apart(ct_head, mr_heads):
    image, affine = ct_head
    assert image.shape == (256, 256, 108) and image.min() == -1024 and image.max() > 2000  # Hounsfield units
    assert np.allclose(np.abs(np.diag(affine))[:3], [0.957, 0.957, 1.5], atol=1e-3)
    assert air_share(image) > 0.5
    assert modality_mismatch(image, "CT") is None
    assert "looks like a CT, not an MR scan: 58%" in modality_mismatch(image, "MR")
    for name, (mr, _) in mr_heads.items():
        assert air_share(mr) < CT_AIR_SHARE / 10, name
        assert modality_mismatch(mr, "MR") is None, name
        assert "does not look like a CT in Hounsfield units" in modality_mismatch(mr, "CT"), name
        assert modality_mismatch(mr, None) is None and modality_mismatch(image, None) is None
    with pytest.raises(InputError, match="trained on MR scans"):
        check_scan_modality(image, "MR", what="scan.nii.gz")


def test_a_bundle_declares_its_kind_and_a_ct_window_means_ct():
    base = dict(spatial_dims=2, spacing=(1.0, 1.0), patch_size=(32, 32))
    assert Preprocessing(**base).scan_modality is None
    assert "modality" not in Preprocessing(**base).to_dict()  # bundles that declared nothing read as before
    mr = Preprocessing(**base, modality="MR")
    assert Preprocessing.from_dict(mr.to_dict()) == mr and mr.to_dict()["modality"] == "MR"
    windowed = Preprocessing(**base, intensity=IntensityConfig(mode="ct_window"))
    assert windowed.scan_modality == "CT"
    with pytest.raises(ConfigError, match="preprocessing.modality must be one of MR, CT"):
        Preprocessing.from_dict({**mr.to_dict(), "modality": "PET"})
    with pytest.raises(ConfigError, match="contradicts intensity mode ct_window"):
        Preprocessing(**base, intensity=IntensityConfig(mode="ct_window"), modality="MR")
    t1 = Preprocessing(**base, modality="MR", contrast="T1")
    assert Preprocessing.from_dict(t1.to_dict()) == t1
    with pytest.raises(ConfigError, match="contrast is an MR weighting: it needs modality MR"):
        Preprocessing(**base, contrast="T1")
    with pytest.raises(ConfigError, match="preprocessing.contrast must be one of T1, T2, FLAIR, PD"):
        Preprocessing(**base, modality="MR", contrast="DWI")


def test_the_shipped_bundles_refuse_the_real_ct_before_aligning_it(ct_head, tmp_path):
    image, affine = ct_head
    before = image.copy()
    shipped = shipped_bundles_dir()
    ls, lcs = load_bundle(shipped / LS_BUNDLE), load_bundle(shipped / LCS_BUNDLE)
    assert ls.preprocessing.modality == "MR" == lcs.preprocessing.modality
    steps: list[str] = []
    with pytest.raises(InputError, match="looks like a CT, not an MR scan"):
        segment_task(ls, image, affine, ls.task_names()[0], progress=lambda f, m: steps.append(m))
    assert steps == []  # refused before any work
    atlas_map, _, labels = lcs.atlas_labels()
    masks = np.stack([atlas_map == label.value for label in labels[:3]])
    for method in ATLAS_METHODS:
        with pytest.raises(InputError, match="looks like a CT, not an MR scan"):
            segment_atlas_labels(lcs, image, affine, masks, labels[:3], method=method)
    assert np.array_equal(image, before)
    # the command line: one clear line, exit status 2, nothing written
    scan = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.int16), affine), str(scan))
    out = tmp_path / "labels.nii.gz"
    code = main(
        ["segment", str(shipped / LS_BUNDLE), "-i", str(scan), "-o", str(out), "--task", "AxialTissue"]
    )
    assert code == 2 and not out.exists() and not (tmp_path / "labels.csv").exists()


def _hu_dataset(root, channel: str, cases: int = 3):
    """2D cases as a CT gives them: air at -1000 around a body of soft tissue (40 HU) holding a bright bone
    square (700 HU, label 1)."""
    root.mkdir()
    make_case_folders(root)
    rng = np.random.default_rng(0)
    for i in range(cases):
        image = np.full((32, 32, 1), -1000.0, np.float32)
        image[4:28, 4:28] = 40.0
        label = np.zeros((32, 32, 1), np.uint8)
        corner = 8 + i
        image[corner : corner + 8, corner : corner + 8] = 700.0
        label[corner : corner + 8, corner : corner + 8] = 1
        image += rng.normal(0.0, 5.0, image.shape).astype(np.float32)
        write_case(root, "train", f"hu_{i:03d}", image, label, np.eye(4))
    write_dataset_json(
        root,
        name="Bone",
        labels={"background": 0, "bone": 1},
        channel_names={"0": channel},
        num_training=cases,
    )
    return root


def _renamed_channels(source, target, channel: str):
    shutil.copytree(source, target)
    meta = json.loads((target / "dataset.json").read_text())
    meta["channel_names"] = {"0": channel}
    (target / "dataset.json").write_text(json.dumps(meta))
    return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("modality")
    mr_data = _renamed_channels(
        phantoms(root / "phantoms", tasks=1, cases=3)[0], root / "Dataset950_T1", "T1"
    )
    ct_data = _hu_dataset(root / "Dataset951_Bone", "CT")
    mr_bundle, ct_bundle = root / "mr", root / "ct"
    assert lsseg("train", "labelsharing", "--data", mr_data, "--out", mr_bundle, "--steps", 2, *TINY) == 0
    assert lsseg("train", "labelsharing", "--data", ct_data, "--out", ct_bundle, "--steps", 2, *TINY) == 0
    return root, mr_data, ct_data, mr_bundle, ct_bundle


def test_training_declares_the_kind_its_channel_names_say(trained):
    _, _, _, mr_bundle, ct_bundle = trained
    assert load_bundle(mr_bundle).preprocessing.modality == "MR"
    assert load_bundle(mr_bundle).preprocessing.contrast == "T1"  # channel name 'T1'
    assert load_bundle(ct_bundle).preprocessing.contrast is None
    assert load_bundle(ct_bundle).preprocessing.modality == "CT"
    assert "Input: CT scans, spacing" in load_bundle(ct_bundle).summary()  # `lsseg info`, the module's panel


def test_training_stops_when_the_channel_names_contradict_the_images(trained, tmp_path, capsys):
    root, _, ct_data, _, _ = trained
    wrong = _renamed_channels(ct_data, tmp_path / "Dataset952_Bone", "T1")
    assert lsseg("train", "labelsharing", "--data", wrong, "--out", tmp_path / "b", "--steps", 2, *TINY) == 2
    err = capsys.readouterr().err
    assert "names its channels ['T1'] (MR), but its case 'hu_000' looks like a CT" in err
    assert not (tmp_path / "b").exists()


def test_a_task_joins_only_a_bundle_of_its_own_kind_of_scan(trained, tmp_path, capsys):
    _, _, ct_data, mr_bundle, _ = trained
    out = tmp_path / "plus"
    assert lsseg("add-task", mr_bundle, "--data", ct_data, "--out", out, "--steps", 2, *TINY) == 2
    assert "looks like a CT, not an MR scan" in capsys.readouterr().err and not out.exists()


def test_a_ct_bundle_refuses_a_real_mr_head(trained, mr_heads, tmp_path, capsys):
    _, _, _, _, ct_bundle = trained
    scan = sources.COLIN27_HEAD.path()
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", str(ct_bundle), "-i", str(scan), "-o", str(out), "--task", "Bone"]) == 2
    err = capsys.readouterr().err
    assert "does not look like a CT in Hounsfield units" in err and "intercept" in err and not out.exists()
    image, affine = mr_heads["pycortex S1"]
    with pytest.raises(InputError, match="does not look like a CT"):
        segment_task(load_bundle(ct_bundle), image, affine, "Bone")


def test_the_declared_kind_of_scan_does_not_change_which_run_resumes():
    """A run started before bundles declared their kind of scan (the same run otherwise) still resumes."""
    from lsseg_training.run_config import TrainSettings
    from lsseg_training.run_identity import RunIdentity

    base = Preprocessing(spatial_dims=2, spacing=(1.0, 1.0), patch_size=(32, 32))
    identities = [
        RunIdentity("labelsharing", {"arch": "unet"}, prep, ("a",), ("b",), TrainSettings(), 1)
        for prep in (base, base.replace(modality="MR", contrast="T1"))
    ]
    assert identities[0].fingerprint() == identities[1].fingerprint()
    wider = base.replace(spacing=(2.0, 2.0))  # what does train the weights still counts
    other = RunIdentity("labelsharing", {"arch": "unet"}, wider, ("a",), ("b",), TrainSettings(), 1)
    assert other.fingerprint() != identities[0].fingerprint()


@pytest.mark.parametrize(
    ("name", "weighting"),
    [
        ("T1", "T1"),
        ("t1w", "T1"),
        ("T1gd", "T1"),
        ("sag MPRAGE", "T1"),
        ("AX T1 FLAIR", "T1"),  # T1-FLAIR is T1-weighted
        ("AX T2 FLAIR", "FLAIR"),
        ("FLAIR", "FLAIR"),
        ("AX T2 FSE", "T2"),
        ("t2w", "T2"),
        ("T2* GRE", None),
        ("FSE PD AXIAL OBL", "PD"),
        ("DWI b1000", None),
        ("localizer", None),
        ("CT", None),
    ],
)
def test_series_descriptions_and_channel_names_say_the_weighting(name, weighting):
    assert weighting_of_name(name) == weighting


def test_timing_says_the_weighting_where_the_name_does_not():
    assert weighting_of_timing(2300, 22, None) == "PD"  # the real series: long TR, short TE
    assert weighting_of_timing(500, 12, None) == "T1"  # spin echo T1
    assert weighting_of_timing(2300, 2.9, 900) == "T1"  # MPRAGE: long TR as reported, inversion-prepared
    assert weighting_of_timing(8.2, 3.2, 450) == "T1"  # IR-SPGR (TR as echo spacing)
    assert weighting_of_timing(4000, 100, None) == "T2"
    assert weighting_of_timing(9000, 120, 2500) == "FLAIR"
    assert weighting_of_timing(1200, 45, None) is None  # in between: not said
    assert weighting_of_timing(None, None, None) is None
    assert weighting_of_channels(["T1", "t1w"]) == "T1" and weighting_of_channels(["T1", "T2"]) is None


def test_a_real_pd_series_is_named_and_warned_about_but_segmented(tmp_path, capsys):
    folder = sources.dicom_series_path()
    scan = load_scan(folder)
    assert scan.stated == HeaderStatement(
        "MR", "PD", "series 'FSE PD AXIAL OBL', TR 2300 ms, TE 22 ms", "DICOM header"
    )
    shipped = shipped_bundles_dir() / LS_BUNDLE
    assert load_bundle(shipped).preprocessing.contrast == "T1"
    assert "Input: T1-weighted MR scans" in load_bundle(shipped).summary()
    out = tmp_path / "labels.nii.gz"
    command = ["segment", str(shipped), "-i", str(folder), "-o", str(out), "--task", "SagittalLobes"]
    assert main([*command, "--align", "off", "--quiet", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert (
        "WARNING: the scan's DICOM header describes a PD-weighted scan (series 'FSE PD AXIAL OBL', TR 2300"
        in err
    )
    assert "trained on T1-weighted scans" in err and out.exists()
    assert weighting_warning(HeaderStatement("MR", "T1", "series 'T1'", "DICOM header"), "T1") is None
    assert weighting_warning(HeaderStatement("MR"), "T1") is None and weighting_warning(None, "T1") is None

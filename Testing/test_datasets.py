"""Engine dataset reading/checking (nnU-Net v2 raw layout) on real NIfTI files, including deliberately broken
folders: ``check_dataset`` must name every problem, not just the first."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from LabelSharingSegLib.engine.errors import DatasetError, LabelSharingSegError
from LabelSharingSegLib.engine.nifti_io import save_nifti
from lsseg_training.datasets import (
    Case,
    NnUNetDataset,
    check_dataset,
    load_case,
    read_dataset,
    require_valid_dataset,
    write_dataset_json,
)

SHAPE = (10, 9, 8)
AFFINE = np.array([[1.5, 0, 0, -10], [0, 1.5, 0, 5], [0, 0, 2.0, 3], [0, 0, 0, 1]], dtype=float)


def _image(rng, shape=SHAPE):
    return rng.normal(100.0, 10.0, size=shape).astype(np.float32)


def _label(shape=SHAPE, values=(1, 2)):
    label = np.zeros(shape, dtype=np.uint8)
    for i, value in enumerate(values):
        label[1 + 3 * i : 3 + 3 * i, 2:6, 1:5] = value
    return label


def make_dataset(
    root: Path,
    *,
    channels=("T1",),
    n_train=3,
    n_test=2,
    test_labels=True,
    shape=SHAPE,
    name="Dataset042_Toy",
    labels=None,
) -> Path:
    """A clean toy dataset; returns its folder."""
    rng = np.random.default_rng(7)
    root = root / name
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    for i in range(n_train):
        for c in range(len(channels)):
            save_nifti(root / "imagesTr" / f"toy_{i:03d}_{c:04d}.nii.gz", _image(rng, shape), AFFINE)
        save_nifti(root / "labelsTr" / f"toy_{i:03d}.nii.gz", _label(shape), AFFINE)
    for i in range(n_test):
        for c in range(len(channels)):
            save_nifti(root / "imagesTs" / f"toyts_{i:03d}_{c:04d}.nii.gz", _image(rng, shape), AFFINE)
        if test_labels and i == 0:
            save_nifti(root / "labelsTs" / f"toyts_{i:03d}.nii.gz", _label(shape), AFFINE)
    write_dataset_json(
        root,
        name="Toy",
        labels=labels or {"background": 0, "liver": 1, "tumour": 2},
        channel_names=list(channels),
        num_training=n_train,
        licence="CC0",
    )
    return root


@pytest.fixture()
def clean(tmp_path) -> Path:
    return make_dataset(tmp_path)


def test_read_dataset_parses_structure(clean):
    ds = read_dataset(clean)
    assert isinstance(ds, NnUNetDataset)
    assert ds.name == "Toy" and ds.task_name() == "Toy"
    assert ds.labels == {"background": 0, "liver": 1, "tumour": 2}
    assert ds.foreground_labels() == {1: "liver", 2: "tumour"}
    assert ds.channel_names == {"0": "T1"} and ds.file_ending == ".nii.gz"
    assert [c.case_id for c in ds.training] == ["toy_000", "toy_001", "toy_002"]
    assert all(c.label_path is not None and c.label_path.parent.name == "labelsTr" for c in ds.training)
    assert [c.case_id for c in ds.test] == ["toyts_000", "toyts_001"]
    assert ds.test[0].label_path == clean / "labelsTs" / "toyts_000.nii.gz"
    assert ds.test[1].label_path is None  # unlabeled test image
    assert ds.metadata["licence"] == "CC0"
    assert check_dataset(clean) == []
    assert require_valid_dataset(clean).training == ds.training


def test_task_name_strips_nnunet_prefix_when_name_missing(clean):
    meta = json.loads((clean / "dataset.json").read_text())
    del meta["name"]
    (clean / "dataset.json").write_text(json.dumps(meta))
    ds = read_dataset(clean)
    assert ds.name == "Dataset042_Toy"
    assert ds.task_name() == "Toy"


def test_load_case_3d_multichannel(tmp_path):
    root = make_dataset(tmp_path, channels=("T1", "T2"))
    ds = read_dataset(root)
    assert ds.training[0].image_paths[1].name == "toy_000_0001.nii.gz"
    image, label, affine = load_case(ds.training[0])
    assert image.shape == (2,) + SHAPE and image.dtype == np.float32
    assert label.shape == SHAPE and np.issubdtype(label.dtype, np.integer)
    assert set(np.unique(label)) == {0, 1, 2}
    np.testing.assert_allclose(affine, AFFINE)
    image, label, _ = load_case(ds.test[1])
    assert label is None and image.shape == (2,) + SHAPE


def test_load_case_2d_keeps_singleton_axis(tmp_path):
    root = make_dataset(tmp_path, shape=(12, 11, 1))
    image, label, _ = load_case(read_dataset(root).training[0])
    assert image.shape == (1, 12, 11, 1)
    assert label.shape == (12, 11, 1)


def test_load_case_true_2d_nifti(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "img_0000.nii.gz"
    save_nifti(path, _image(rng, (12, 11)), np.eye(4))
    image, label, _ = load_case(Case("img", (path,), None))
    assert image.shape == (1, 12, 11) and label is None


def test_write_dataset_json_validates(tmp_path):
    with pytest.raises(DatasetError, match="background"):
        write_dataset_json(tmp_path, name="x", labels={"a": 1}, channel_names=["T1"], num_training=1)
    with pytest.raises(DatasetError, match="share the value"):
        write_dataset_json(
            tmp_path, name="x", labels={"background": 0, "a": 1, "b": 1}, channel_names=["T1"], num_training=1
        )
    with pytest.raises(DatasetError, match="does not exist"):
        write_dataset_json(
            tmp_path / "nope", name="x", labels={"background": 0}, channel_names=["T1"], num_training=1
        )
    path = write_dataset_json(
        tmp_path,
        name="x",
        labels={"b": 2, "background": 0, "a": 1},
        channel_names={0: "CT"},
        num_training=4,
        reference="paper",
    )
    content = json.loads(path.read_text())
    assert content["channel_names"] == {"0": "CT"}
    assert list(content["labels"]) == ["background", "a", "b"]
    assert (
        content["numTraining"] == 4
        and content["file_ending"] == ".nii.gz"
        and content["reference"] == "paper"
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_read_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(tmp_path / "missing")
    root = make_dataset(tmp_path)
    (root / "labelsTr" / "toy_001.nii.gz").unlink()
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="malformed JSON"):
        read_dataset(root)


# --------------------------------------------------------------------------------------------------------------
# broken folders: each breaker makes one problem; check_dataset must report it (and the pattern says which)


def _edit_json(root: Path, **changes):
    meta = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (root / "dataset.json").write_text(json.dumps(meta))


def _rewrite_image(root: Path, name: str, array=None, affine=AFFINE, sub="imagesTr"):
    save_nifti(root / sub / name, array, affine)


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 12])  # cut the gzip trailer and the end of the stream


BREAKERS = {
    "missing dataset.json": (lambda r: (r / "dataset.json").unlink(), r"dataset\.json: missing"),
    "malformed json": (lambda r: (r / "dataset.json").write_text('{"labels": '), "malformed JSON"),
    "missing keys": (
        lambda r: _edit_json(r, channel_names=None, numTraining=None),
        "missing key.*channel_names",
    ),
    "image without label": (lambda r: (r / "labelsTr" / "toy_001.nii.gz").unlink(), "toy_001.*has no label"),
    "label without image": (
        lambda r: (r / "imagesTr" / "toy_002_0000.nii.gz").unlink(),
        "label without image",
    ),
    "test label without image": (
        lambda r: (r / "imagesTs" / "toyts_000_0000.nii.gz").unlink(),
        "label without image",
    ),
    "shape mismatch": (
        lambda r: _rewrite_image(r, "toy_000_0000.nii.gz", np.ones((10, 9, 7), np.float32)),
        "label shape .* differs",
    ),
    "affine mismatch": (
        lambda r: _rewrite_image(
            r,
            "toy_000_0000.nii.gz",
            _image(np.random.default_rng(1)),
            AFFINE + np.pad(np.full((3, 1), 0.01), ((0, 1), (3, 0))),
        ),
        "affine differs",
    ),
    "undeclared label": (
        lambda r: _rewrite_image(r, "toy_001.nii.gz", _label(values=(1, 2, 5)), sub="labelsTr"),
        r"value\(s\) 5 not declared",
    ),
    "declared never present": (
        lambda r: _edit_json(r, labels={"background": 0, "liver": 1, "tumour": 2, "cyst": 3}),
        r"never present.*cyst \(3\)",
    ),
    "nan voxels": (
        lambda r: _rewrite_image(
            r, "toy_001_0000.nii.gz", np.where(_label() == 1, np.nan, 1.0).astype(np.float32)
        ),
        "NaN/Inf",
    ),
    "inf voxels": (
        lambda r: _rewrite_image(
            r, "toy_002_0000.nii.gz", np.where(_label() == 2, np.inf, 1.0).astype(np.float32)
        ),
        "NaN/Inf",
    ),
    "empty image": (
        lambda r: _rewrite_image(r, "toy_001_0000.nii.gz", np.zeros(SHAPE, np.float32)),
        r"empty \(every voxel is 0\)",
    ),
    "wrong ending": (
        lambda r: (r / "imagesTr" / "toy_001_0000.nii.gz").rename(r / "imagesTr" / "toy_001_0000.nii"),
        "wrong file ending",
    ),
    "corrupt file": (
        lambda r: (r / "imagesTr" / "toy_002_0000.nii.gz").write_bytes(gzip.compress(b"\x00" * 40)),
        "unreadable or corrupt",
    ),
    "truncated file": (lambda r: _truncate(r / "labelsTr" / "toy_000.nii.gz"), "unreadable or corrupt"),
    "non-integer labels": (
        lambda r: _rewrite_image(r, "toy_000.nii.gz", _label().astype(np.float32) * 0.75, sub="labelsTr"),
        "non-integer",
    ),
    "numTraining mismatch": (
        lambda r: _edit_json(r, numTraining=5),
        "numTraining is 5 but imagesTr/ holds 3",
    ),
    "bad channel name": (
        lambda r: (r / "imagesTr" / "toy_001_0000.nii.gz").rename(r / "imagesTr" / "toy_001.nii.gz"),
        "4-digit channel index",
    ),
    "background missing": (
        lambda r: _edit_json(r, labels={"liver": 1, "tumour": 2}),
        "background with value 0",
    ),
    "unsupported ending": (lambda r: _edit_json(r, file_ending=".png"), "not supported"),
}


@pytest.mark.parametrize("breaker", sorted(BREAKERS))
def test_check_dataset_detects(tmp_path, breaker):
    root = make_dataset(tmp_path)
    assert check_dataset(root) == []
    action, pattern = BREAKERS[breaker]
    action(root)
    problems = check_dataset(root)
    assert problems, breaker
    assert any(re.search(pattern, p) for p in problems), problems
    with pytest.raises(DatasetError):
        require_valid_dataset(root)


def test_missing_channel_file(tmp_path):
    root = make_dataset(tmp_path, channels=("T1", "FLAIR"))
    (root / "imagesTr" / "toy_001_0001.nii.gz").unlink()
    (root / "imagesTr" / "toy_002_0003.nii.gz").write_bytes(b"")
    problems = check_dataset(root)
    assert any("'toy_001' is missing channel file(s) toy_001_0001.nii.gz" in p for p in problems), problems
    assert any("toy_002_0003.nii.gz not declared in channel_names" in p for p in problems), problems


def test_affine_tolerance(tmp_path):
    root = make_dataset(tmp_path)
    nudged = AFFINE.copy()
    nudged[0, 3] += 2e-4  # below the ~1e-3 mm tolerance
    _rewrite_image(root, "toy_000_0000.nii.gz", _image(np.random.default_rng(3)), nudged)
    assert check_dataset(root) == []


def test_every_problem_is_reported_at_once(tmp_path):
    root = make_dataset(tmp_path)
    for name in ("image without label", "corrupt file", "numTraining mismatch"):
        BREAKERS[name][0](root)
    _rewrite_image(root, "toyts_000.nii.gz", _label(values=(1, 5)), sub="labelsTs")
    _rewrite_image(root, "toy_000_0000.nii.gz", np.zeros(SHAPE, np.float32))
    save_nifti(root / "imagesTs" / "toyts_001_0000.nii.gz", np.full(SHAPE, np.nan, np.float32), AFFINE)
    (root / "labelsTs" / "stray.nii").write_bytes(b"x")
    problems = check_dataset(root)
    patterns = [
        "toy_001.*has no label",
        r"value\(s\) 5 not declared",
        "unreadable or corrupt",
        "numTraining is 5",
        r"empty \(every voxel is 0\)",
        "NaN/Inf",
        "stray.nii: wrong file ending",
    ]
    for pattern in patterns:
        assert any(re.search(pattern, p) for p in problems), (pattern, problems)
    assert len(problems) >= len(patterns)
    with pytest.raises(DatasetError) as info:
        require_valid_dataset(root)
    message = str(info.value)
    assert isinstance(info.value, LabelSharingSegError)
    assert all(p in message for p in problems)
    assert message.count("\n") == len(problems)  # one problem per line


def test_check_does_not_modify_inputs(clean):
    before = {p: p.read_bytes() for p in clean.rglob("*") if p.is_file()}
    check_dataset(clean)
    load_case(read_dataset(clean).training[0])
    after = {p: p.read_bytes() for p in clean.rglob("*") if p.is_file()}
    assert before == after


def test_float_labels_with_integer_values_are_fine(tmp_path):
    root = make_dataset(tmp_path)
    _rewrite_image(root, "toy_000.nii.gz", _label().astype(np.float32), sub="labelsTr")
    assert check_dataset(root) == []
    _, label, _ = load_case(read_dataset(root).training[0])
    assert np.issubdtype(label.dtype, np.integer)


def test_load_case_rejects_mismatched_label(tmp_path):
    root = make_dataset(tmp_path)
    _rewrite_image(root, "toy_000.nii.gz", _label((10, 9, 7)), sub="labelsTr")
    with pytest.raises(DatasetError, match="toy_000.nii.gz"):
        load_case(read_dataset(root).training[0])


def test_nibabel_4d_singleton_is_accepted(tmp_path):
    root = make_dataset(tmp_path)
    array = _image(np.random.default_rng(5))[..., None]
    nib.save(nib.Nifti1Image(array, AFFINE), str(root / "imagesTr" / "toy_000_0000.nii.gz"))
    assert check_dataset(root) == []

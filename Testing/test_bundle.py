"""Bundle round trip and rejection of tampered, mismatched, pickled, truncated and unsafe bundles."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile

import pytest
import torch

from LabelSharingSegLib.engine.bundle import MANIFEST, WEIGHTS, load_bundle, zip_bundle
from LabelSharingSegLib.engine.errors import BundleError, InputError


def test_round_trip(ls_bundle_path, lcs_bundle_path, tmp_path):
    bundle = load_bundle(ls_bundle_path)
    assert bundle.kind == "labelsharing"
    assert bundle.task_names() == ["organs", "brain"]
    assert [lab.name for lab in bundle.task_labels("brain")] == ["white matter", "grey matter", "ventricles"]
    assert bundle.label_space.n_shared == 3
    net = bundle.build_network()
    for key, tensor in net.state_dict().items():
        assert torch.equal(tensor, bundle.state_dict[key])
    assert "Task brain" in bundle.summary()
    lcs = load_bundle(lcs_bundle_path)
    image, affine = lcs.atlas_image()
    labels, _, names = lcs.atlas_labels()
    assert image.shape == labels.shape and [n.name for n in names] == ["left blob", "right blob", "box"]
    zipped = zip_bundle(lcs_bundle_path, tmp_path / "lcs.zip")
    again = load_bundle(zipped)
    assert again.bundle_id == lcs.bundle_id and again.atlas_image()[0].shape == image.shape
    with pytest.raises(InputError, match="unknown task"):
        bundle.task("nope")
    with pytest.raises(BundleError, match="no atlas"):
        bundle.atlas_image()


@pytest.fixture
def bundle_copy(ls_bundle_path, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(ls_bundle_path, target)
    return target


def test_tampered_weights_are_rejected(bundle_copy):
    data = bytearray((bundle_copy / WEIGHTS).read_bytes())
    data[-5] ^= 0xFF
    (bundle_copy / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="weights.safetensors: sha256 does not match"):
        load_bundle(bundle_copy)


def _rehash(folder):
    import hashlib

    manifest = json.loads((folder / MANIFEST).read_text())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_wrong_hash_is_rejected(bundle_copy):
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["files"][WEIGHTS] = "0" * 64
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle_copy)


class _Boom:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickle_renamed_to_safetensors_is_rejected_without_unpickling(bundle_copy, capsys):
    (bundle_copy / WEIGHTS).write_bytes(pickle.dumps({"w": _Boom()}))
    _rehash(bundle_copy)  # even with a matching hash the file must not be unpickled
    with pytest.raises(BundleError, match="not a valid safetensors file"):
        load_bundle(bundle_copy)
    assert "unpickled!" not in capsys.readouterr().out


def test_truncated_weights_are_rejected(bundle_copy):
    data = (bundle_copy / WEIGHTS).read_bytes()
    (bundle_copy / WEIGHTS).write_bytes(data[: len(data) // 2])
    _rehash(bundle_copy)
    with pytest.raises(BundleError, match="not a valid safetensors file"):
        load_bundle(bundle_copy)


def test_shape_mismatch_with_config_is_rejected(bundle_copy):
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["network"]["channels"] = [4, 8, 32]
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="shape"):
        load_bundle(bundle_copy)


def test_schema_kind_and_missing_files(bundle_copy, tmp_path):
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    for change, message in [
        ({"schema_version": 99}, "schema version 99"),
        ({"kind": "magic"}, "unknown bundle kind"),
        ({"kind": "lcs"}, "needs a lcs or lcs_refine network"),
    ]:
        (bundle_copy / MANIFEST).write_text(json.dumps({**manifest, **change}))
        with pytest.raises(BundleError, match=message):
            load_bundle(bundle_copy)
    (bundle_copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="bundle.json: not valid JSON"):
        load_bundle(bundle_copy)
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    (bundle_copy / WEIGHTS).unlink()
    with pytest.raises(BundleError, match="weights.safetensors: missing"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nothing")


def test_unsafe_zip_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../outside.txt", "x")
        archive.writestr(MANIFEST, "{}")
    with pytest.raises(BundleError, match="unsafe archive member"):
        load_bundle(evil)
    assert not (tmp_path / "outside.txt").exists()
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a readable zip"):
        load_bundle(tmp_path / "junk.zip")


def test_write_refuses_existing_and_missing_parent(ls_bundle_path, tmp_path):
    from conftest import tiny_label_space

    from lsseg_training.bundle_factory import labelsharing_tasks, make_preprocessing, write_task_bundle

    space = tiny_label_space()
    prep = make_preprocessing(3, [2, 2, 2], [16, 16, 16], factor=4)
    with pytest.raises(InputError, match="already exists"):
        write_task_bundle(
            ls_bundle_path,
            "labelsharing",
            labelsharing_tasks(space),
            prep,
            channels=(4, 8, 16),
            label_space=space,
        )
    with pytest.raises(InputError, match="does not exist"):
        write_task_bundle(
            tmp_path / "no" / "b",
            "labelsharing",
            labelsharing_tasks(space),
            prep,
            channels=(4, 8, 16),
            label_space=space,
        )
    assert not list(tmp_path.glob(".*"))  # no staging folder left behind

"""Registrations remembered by content (engine/registration_cache.py): once per process, once across calls through
cache files; changed voxels or settings recompute; unreadable, foreign or pickled cache files are ignored."""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from LabelSharingSegLib.engine import registration_cache as cache
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import RegistrationError
from LabelSharingSegLib.engine.propagation import register_atlas
from lsseg_training.cli import main

SHAPE = (24, 26, 22)


def _pair():
    """An atlas-like phantom and the same anatomy shifted by 2 mm: real registration has work to do."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -np.array(SHAPE) + 1.0
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")).astype(np.float32)
    centre = (np.array(SHAPE, np.float32)[:, None, None, None] - 1) / 2
    radius = np.sqrt((((ijk - centre) / np.array([9, 10, 8])[:, None, None, None]) ** 2).sum(0))
    atlas = np.where(radius < 1, 60.0 + 40.0 * np.cos(3 * radius) + 0.3 * ijk[0], 0.0).astype(np.float32)
    scan = np.roll(atlas, 1, axis=0)
    return atlas, scan, affine


class _Counting:
    """Wraps a real function and counts the calls (the registration itself still runs)."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch):
    affine = _Counting(cache.register_affine)
    deformable = _Counting(cache.register_deformable)
    monkeypatch.setattr(cache, "register_affine", affine)
    monkeypatch.setattr(cache, "register_deformable", deformable)
    return affine, deformable


def test_same_scan_and_atlas_registered_once_per_process_and_across_calls(
    counted, registration_cache, monkeypatch
):
    affine_calls, deformable_calls = counted
    atlas, scan, affine = _pair()
    first = register_atlas(atlas, affine, scan, affine, stage="deformable")
    again = register_atlas(atlas, affine, scan, affine, stage="deformable")
    assert (affine_calls.calls, deformable_calls.calls) == (1, 1)
    assert again.alignment is first.alignment and again.deformation is first.deformation
    files = sorted(p.name for p in registration_cache.iterdir())
    assert len(files) == 2 and files[0].startswith("affine-") and files[1].startswith("deformable-")
    cache.clear_memory()  # as a new process (the next `lsseg segment`, the Slicer worker) starts
    from_disk = register_atlas(atlas, affine, scan, affine, stage="deformable")
    assert (affine_calls.calls, deformable_calls.calls) == (1, 1)
    np.testing.assert_array_equal(from_disk.alignment.matrix, first.alignment.matrix)
    np.testing.assert_array_equal(from_disk.deformation.displacement, first.deformation.displacement)
    assert from_disk.alignment.summary() == first.alignment.summary()
    assert from_disk.deformation.similarity == first.deformation.similarity
    # one voxel changed: another scan, registered again; other settings: the deformable stage again
    changed = scan.copy()
    changed[3, 3, 3] += 1.0
    register_atlas(atlas, affine, changed, affine, stage="affine")
    assert affine_calls.calls == 2
    register_atlas(atlas, affine, scan, affine, stage="deformable", deformable_method="bspline")
    assert (affine_calls.calls, deformable_calls.calls) == (2, 2)
    # another starting-pose search may find another alignment: an earlier search's is not reused
    monkeypatch.setattr(cache, "SEARCH_REVISION", cache.SEARCH_REVISION + 1)
    cache.clear_memory()
    register_atlas(atlas, affine, scan, affine, stage="affine")
    assert affine_calls.calls == 3


def test_a_cached_alignment_keeps_its_confidence_check():
    """An uncertain alignment read back from its cache file is still uncertain, with its warning."""
    from LabelSharingSegLib.engine.registration import Alignment

    uncertain = Alignment(
        np.eye(4),
        -0.03,
        -0.01,
        0.9,
        0.8,
        warning="may be wrong",
        start="s",
        peak_sharpness=0.2,
        confident=False,
        identity_sharpness=0.0,  # NaN would not equal itself
    )
    back = cache.decode_alignment(cache.encode_alignment(uncertain))
    assert (
        back == replace(uncertain, matrix=back.matrix) and not back.confident and back.peak_sharpness == 0.2
    )
    assert back.summary() == uncertain.summary()
    # a refused one keeps whether its world coordinates place the scan (what decides if it is segmented at all)
    for world in (0.13, 0.7):
        refused = replace(uncertain, accepted=False, confident=True, identity_sharpness=world)
        back = cache.decode_alignment(cache.encode_alignment(refused))
        assert back == replace(refused, matrix=back.matrix) and back.places_scan == (world > 0.55)
        assert back.summary() == refused.summary()


def test_unreadable_foreign_or_pickled_cache_files_are_recomputed(registration_cache):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(4.0)

    def encode(value):
        return {"value": value}

    def decode(arrays):
        if arrays["value"].shape != (4,):
            raise ValueError("not ours")
        return arrays["value"]

    key = "affine-" + "0" * 40
    path = registration_cache / f"{key}.npz"
    np.testing.assert_array_equal(cache.remembered(key, compute, encode, decode), np.arange(4.0))
    assert path.is_file() and len(calls) == 1
    cache.clear_memory()
    cache.remembered(key, compute, encode, decode)
    assert len(calls) == 1  # read back
    pickled = io.BytesIO()
    np.savez(pickled, key=np.array(key), value=np.array([object()], dtype=object))
    bad_files = {
        "garbage": b"not a zip at all",
        "truncated": path.read_bytes()[:40],
        "pickled": pickled.getvalue(),  # would need allow_pickle: never loaded
    }
    other = io.BytesIO()
    np.savez(other, key=np.array("affine-" + "1" * 40), value=np.arange(4.0) + 7)
    bad_files["another key"] = other.getvalue()
    wrong = io.BytesIO()
    np.savez(wrong, key=np.array(key), value=np.zeros(3))
    bad_files["wrong shape"] = wrong.getvalue()
    for name, content in bad_files.items():
        path.write_bytes(content)
        cache.clear_memory()
        np.testing.assert_array_equal(cache.remembered(key, compute, encode, decode), np.arange(4.0))
        assert zipfile.is_zipfile(path), name  # replaced by a good file
    assert len(calls) == 1 + len(bad_files)


def test_a_failed_registration_is_not_remembered_and_off_means_off(registration_cache, monkeypatch):
    def diverges():
        raise RegistrationError("deformable registration diverged")

    for _ in range(2):
        with pytest.raises(RegistrationError):
            cache.remembered("deformable-" + "2" * 40, diverges, dict, dict)
    assert not list(registration_cache.iterdir())
    with cache.disk_cache_off():
        assert cache.cache_folder() is None
        cache.remembered("affine-" + "3" * 40, lambda: np.ones(2), lambda v: {"v": v}, lambda a: a["v"])
    assert cache.cache_folder() == registration_cache and not list(registration_cache.iterdir())
    monkeypatch.setenv(cache.CACHE_DIR_ENV, "off")
    assert cache.cache_folder() is None
    monkeypatch.delenv(cache.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(registration_cache / "xdg"))
    assert cache.cache_folder() == registration_cache / "xdg" / "lsseg" / "registrations"


def test_oldest_cache_files_are_pruned_beyond_the_limit(registration_cache, monkeypatch):
    monkeypatch.setattr(cache, "MAX_CACHE_BYTES", 2500)
    for k in range(4):
        cache.remembered(f"affine-{k:040d}", lambda: np.zeros(200), lambda v: {"v": v}, lambda a: a["v"])
        os.utime(registration_cache / f"affine-{k:040d}.npz", (1000 + k, 1000 + k))
    kept = sorted(p.name for p in registration_cache.iterdir())
    assert kept and f"affine-{3:040d}.npz" in kept and f"affine-{0:040d}.npz" not in kept
    assert sum(p.stat().st_size for p in registration_cache.iterdir()) <= 2500


def test_lsseg_segment_registers_a_file_once(lcs_bundle_path, tmp_path, counted, registration_cache):
    """Two `lsseg segment` runs on the same scan: the second reads the alignment from the cache folder;
    --no-cache neither reads nor writes it. (The deformable stage goes through the same function: first test.)"""
    affine_calls, _ = counted
    bundle = load_bundle(lcs_bundle_path)
    atlas, atlas_affine = bundle.atlas_image()
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.roll(atlas, 1, axis=1).astype(np.float32), atlas_affine), str(scan))
    args = ["segment", str(lcs_bundle_path), "-i", str(scan), "--atlas-labels", "bundle", "--quiet"]
    args += ["--method", "register-affine", "--overwrite"]
    outputs = []
    for run in range(2):
        cache.clear_memory()  # as a new process
        out = tmp_path / f"out{run}.nii.gz"
        assert main([*args, "-o", str(out)]) == 0
        outputs.append(np.asarray(nib.load(str(out)).dataobj))
    assert affine_calls.calls == 1
    np.testing.assert_array_equal(outputs[0], outputs[1])
    files = set(registration_cache.iterdir())
    assert len(files) == 1
    cache.clear_memory()
    assert main([*args, "-o", str(tmp_path / "out2.nii.gz"), "--no-cache"]) == 0
    assert affine_calls.calls == 2 and set(registration_cache.iterdir()) == files

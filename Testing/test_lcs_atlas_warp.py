"""``lsseg train lcs --align-cases deformable``: the atlas is carried onto every (aligned) training case by deformable
registration before it conditions the network, the bundle records it (``network.atlas_warp``), and inference
carries the atlas onto each scan the same way: what the network is conditioned on for a scan equals what it was
trained with on that case. A scan that cannot be registered is refused with one line."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import atlas_volume
from train_helpers import lsseg, record_training

from LabelSharingSegLib.engine.atlas_segmentation import PreparedLCS, scan_atlas_points, segment_atlas_labels
from LabelSharingSegLib.engine.atlas_warp import warped_points
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import ConfigError, InputError
from LabelSharingSegLib.engine.network_config import LCSConfig
from LabelSharingSegLib.engine.registration_cache import affine_alignment
from lsseg_training.datasets import load_case, make_case_folders, read_dataset, write_case, write_dataset_json
from lsseg_training.pair_registrations import _from_file, compact_for_transfer

TINY_3D = ["--channels", "4,8,16", "--device", "cpu", "--quiet", "--batch", "2", "--val-fraction", "0.25"]
# (world shift of the case in mm, where its first blob moved to in voxels): anatomy that differs locally from the
# atlas (case 0), which an affine registration cannot fit and a deformable one can
CASES = (((0, 0, 0), (0, 0, 0)), ((4, 0, 0), (3, 0, 0)), ((0, -4, 2), (0, 3, 0)), ((-2, 2, 0), (-2, 2, 0)))


def _blobs(first_moved_by) -> np.ndarray:
    shape = (24, 28, 20)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    labels = np.zeros(shape, np.int16)
    centre = np.array([8, 10, 10]) + np.asarray(first_moved_by)
    labels[np.linalg.norm(grid - centre[:, None, None, None], axis=0) < 6] = 1
    labels[np.linalg.norm(grid - np.array([16, 18, 10])[:, None, None, None], axis=0) < 4] = 2
    labels[4:8, 20:25, 4:8] = 3
    return labels


def _deformed_cases(root):
    _, _, affine, names = atlas_volume()
    folder = root / "Dataset902_Deformed"
    folder.mkdir(parents=True)
    make_case_folders(folder)
    for i, (shift, moved_by) in enumerate(CASES):
        labels = _blobs(moved_by)
        rng = np.random.default_rng(i)
        image = (labels * 30.0 + 20.0 + rng.normal(0, 1, labels.shape)).astype(np.float32)
        placed = affine.copy()
        placed[:3, 3] += shift
        write_case(folder, "train", f"deformed_{i:03d}", image, labels, placed)
    write_dataset_json(
        folder,
        name="Deformed",
        labels={"background": 0, **{info.name: info.value for info in names}},
        channel_names={"0": "T1"},
        num_training=len(CASES),
    )
    return folder


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run with --align-cases deformable, and what the trainer was handed."""
    root = tmp_path_factory.mktemp("atlas_warp")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("LSSEG_CACHE_DIR", str(root / "cache"))
    seen = record_training(monkeypatch)
    data = _deformed_cases(root)
    out = root / "carried"
    # one thread: SimpleITK's multi-threaded demons need not repeat a registration to the last bit, and the test
    # compares training's registration of a case with inference's of the same scan
    args = ["--data", data, "--out", out, "--steps", 2, "--align-cases", "deformable", "--threads", 1]
    assert lsseg("train", "lcs", *args, *TINY_3D) == 0
    yield data, out, seen
    monkeypatch.undo()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_conditions_each_case_on_the_atlas_carried_onto_it(trained):
    data, out, seen = trained
    bundle = load_bundle(out)
    assert bundle.network_config.atlas_warp == "deformable"
    assert bundle.manifest.training["align_cases"] == "deformable"
    method = seen["method"]
    items = method.items + seen["val_items"]
    assert len(items) == len(CASES) - 1  # every case but the atlas
    assert all(item["atlas_image"].shape == item["image"].shape for item in items)
    # the first blob, moved on every case, is found where the case has it once the atlas is carried there
    plain = method.crop(method.atlas_label[None])[0] == 1
    for item in items:
        truth = method.crop(item["label"][None])[0] == 1
        carried = method.crop(item["atlas_label"][None])[0] == 1
        assert _dice(carried, truth) > _dice(plain, truth) + 0.02, item["case"].case_id

    # both batch pipelines hand every conditioning the atlas carried onto its own case
    carried_images = [item["atlas_image"] for item in method.items]
    device_batches = method.device_batches
    for pipeline in (device_batches, None):  # None: the legacy per-sample pipeline
        method.device_batches = pipeline
        batch = method.batch(0, 0, 1, 2)
        assert batch["atlas_image"].shape[0] == batch["atlas_mask"].shape[0] == 2
        for given in batch["atlas_image"]:
            assert any(torch.equal(given, image) for image in carried_images)
    method.device_batches = device_batches

    # inference carries the atlas onto each scan exactly as training carried it onto that case
    by_id = {c.case_id: c for c in read_dataset(data).training}
    atlas_image, atlas_affine = bundle.reference_image()
    for item in items:
        image, _, affine = load_case(by_id[item["case"].case_id])
        alignment = affine_alignment(image[0], affine, atlas_image, atlas_affine)
        points = scan_atlas_points(bundle, bundle.atlas_image(), image[0], affine, alignment, lambda *_: None)
        prepared = PreparedLCS(
            bundle, image[0], alignment.aligned_affine(affine), torch.device("cpu"), atlas_points=points
        )
        assert torch.allclose(item["atlas_image"], prepared.atlas[0, 0], atol=1e-4), item["case"].case_id
        atlas_map, _, _ = bundle.atlas_labels()
        masks = np.stack([atlas_map == v for v in (1, 2, 3)])
        expected = torch.stack([(item["atlas_label"] == v).float() for v in (1, 2, 3)])
        assert torch.equal(prepared.masks_tensor(masks)[:, 0], expected), item["case"].case_id


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_machine_without_simpleitk_trains_from_the_kept_registrations(trained, tmp_path, monkeypatch):
    data, out, seen = trained
    first = seen["method"].items
    cache = out.parent / "carried.training" / "registrations"
    assert len(list(cache.glob("*.npz"))) == len(CASES) - 1
    kept = dict(seen)
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # any import of it now fails
    again = ["--data", data, "--out", tmp_path / "again", "--steps", 1, "--align-cases", "deformable"]
    assert lsseg("train", "lcs", *again, "--registration-cache", cache, "--threads", 1, *TINY_3D) == 0
    retrained = seen["method"].items
    seen.update(kept)  # the module's other tests read the first run
    for a, b in zip(retrained, first, strict=True):
        assert torch.equal(a["atlas_image"], b["atlas_image"]) and torch.equal(
            a["atlas_label"], b["atlas_label"]
        )


def test_registrations_compacted_for_the_gpu_machine_move_points_by_a_fraction_of_a_voxel(trained, tmp_path):
    _, out, _ = trained
    kept = out.parent / "carried.training" / "registrations"
    copy = tmp_path / "compact"
    shutil.copytree(kept, copy)
    assert compact_for_transfer(copy) == len(CASES) - 1
    assert compact_for_transfer(copy) == 0  # already compact: left alone
    atlas_image, atlas_affine = load_bundle(out).atlas_image()
    for path in sorted(kept.glob("*.npz")):
        full, small = _from_file(path), _from_file(copy / path.name)
        assert (copy / path.name).stat().st_size < path.stat().st_size
        assert np.array_equal(full.alignment.matrix, small.alignment.matrix)
        assert small.deformation.displacement.shape[1:] == tuple(
            n // 2 + 1 for n in full.deformation.displacement.shape[1:]
        )
        moved = [warped_points(p.deformation, atlas_image.shape, atlas_affine) for p in (full, small)]
        assert (
            float((moved[0] - moved[1]).norm(dim=-1).max()) < 0.1 * 2.0
        )  # a tenth of the atlas's 2 mm voxels


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_segmenting_registers_the_atlas_onto_the_scan_or_refuses(trained):
    data, out, _ = trained
    bundle = load_bundle(out)
    case = read_dataset(data).training[1]
    image, _, affine = load_case(case)
    atlas_map, _, infos = bundle.atlas_labels()
    masks = np.stack([atlas_map == info.value for info in infos])
    result = segment_atlas_labels(bundle, image[0], affine, masks, infos, method="lcs", device="cpu")
    assert result.labelmap.shape == image[0].shape and result.alignment is not None
    with pytest.raises(InputError, match="reads the atlas registered onto the scan"):
        segment_atlas_labels(bundle, image[0], affine, masks, infos, method="lcs", device="cpu", align=False)


def test_the_atlas_warp_is_recorded_only_where_it_applies():
    plain = LCSConfig(spatial_dims=3, channels=(4, 8))
    assert "atlas_warp" not in plain.to_dict()  # older readers see the manifest they know
    carried = LCSConfig(spatial_dims=3, channels=(4, 8), atlas_warp="deformable")
    assert carried.to_dict()["atlas_warp"] == "deformable"
    with pytest.raises(ConfigError, match="atlas_warp needs a 3D network"):
        LCSConfig(spatial_dims=2, channels=(4, 8), atlas_warp="deformable")
    with pytest.raises(ConfigError, match="network.atlas_warp must be one of none, deformable"):
        LCSConfig(spatial_dims=3, channels=(4, 8), atlas_warp="bspline")

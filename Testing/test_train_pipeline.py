"""The device input pipeline: batches are a function of (seed, rank, step) only (across runs, a resume and
loader workers), the batched spatial augmentation keeps image and label aligned, and the cache/worker choice
and GPU levers fall back cleanly on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import TINY, lsseg, phantoms

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.network_config import network_config_from_dict
from LabelSharingSegLib.engine.networks import build_network
from LabelSharingSegLib.engine.preprocessing_config import Preprocessing
from lsseg_training.batch_augment import (
    SpatialParams,
    grid_from_voxel_map,
    random_spatial_grid,
    warp,
)
from lsseg_training.methods import LCSMethod
from lsseg_training.pipeline import LCSBatches, PipelineSettings, TaskBatches, batch_stream, cache_device
from lsseg_training.samples import PatchSampler
from lsseg_training.trainer import TrainOptions, amp_dtype, make_optimizer, use_fused_optimizer


def _items(dims: int, cases: int = 3, size: int = 20) -> list[dict]:
    """Phantom-like cached items: a ball of label 1 and a box of label 2, image = labels + texture."""
    rng = np.random.default_rng(0)
    items = []
    for k in range(cases):
        shape = (size, size, size if dims == 3 else 4)
        grid = np.indices(shape)
        centre = rng.uniform(size * 0.3, size * 0.7, size=3)
        label = np.zeros(shape, dtype=np.int64)
        label[((grid - centre[:, None, None, None]) ** 2)[:2].sum(0) < (size / 5) ** 2] = 1
        label[2:6, 2:6] = 2
        image = label.astype(np.float32) + rng.normal(0, 0.1, size=shape).astype(np.float32)
        items.append({"image": torch.as_tensor(image)[None], "label": torch.as_tensor(label), "task": k % 2})
    return items


def _task_batches(dims: int, **settings) -> TaskBatches:
    patch = (16, 16, 16) if dims == 3 else (16, 16)
    sampler = PatchSampler(_items(dims), patch, dims, foreground_prob=0.5)
    return TaskBatches(sampler, PipelineSettings(**settings), torch.device("cpu"))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dims", [2, 3])
def test_task_batches_depend_on_seed_rank_step_only(dims):
    first = _task_batches(dims, appearance=("bias", "gamma", "noise", "resolution", "synth"))
    again = _task_batches(dims, appearance=("bias", "gamma", "noise", "resolution", "synth"))
    in_order = [first(7, 0, step, 4) for step in range(6)]
    # a fresh pipeline asked for step 4 directly (as after a kill and --resume) draws the same batch
    assert _equal(again(7, 0, 4, 4), in_order[4])
    assert all(_equal(again(7, 0, s, 4), in_order[s]) for s in (5, 0, 3))
    assert not _equal(first(7, 1, 4, 4), in_order[4])  # another rank draws other samples
    assert not _equal(first(8, 0, 4, 4), in_order[4])  # another seed too
    batch = in_order[0]
    assert batch["image"].shape == (4, 1, *first.patch) and batch["target"].shape == (4, *first.patch)
    assert batch["target"].dtype == torch.int64 and set(batch["target"].unique().tolist()) <= {0, 1, 2}


def test_stream_with_loader_workers_equals_the_loop_and_resumes_mid_way():
    batches = _task_batches(2)
    loop = list(batch_stream(batches, 3, 0, 0, 6, 2))
    workers = list(batch_stream(batches, 3, 0, 0, 6, 2, workers=2))
    resumed = list(batch_stream(batches, 3, 0, 4, 6, 2, workers=1))
    assert all(_equal(a, b) for a, b in zip(loop, workers)) and len(workers) == 6
    assert _equal(resumed[0], loop[4]) and _equal(resumed[1], loop[5])


def test_lcs_batches_are_reproducible_and_keep_geometry():
    items = _items(3, cases=2, size=16)
    prep = Preprocessing.from_dict({"spatial_dims": 3, "spacing": [1, 1, 1], "patch_size": [16, 16, 16]})
    config = network_config_from_dict(
        {"arch": "lcs", "spatial_dims": 3, "out_channels": 1, "channels": [4, 8, 16]}
    )
    method = LCSMethod(items[0]["image"][0], items[0]["label"], [1, 2], config, prep)
    method.prepare_items(items[1:])
    settings = PipelineSettings(appearance=("bias", "synth"))
    a = LCSBatches(method, items[1:], settings, torch.device("cpu"))
    b = LCSBatches(method, items[1:], settings, torch.device("cpu"))
    assert _equal(a(0, 0, 3, 2), b(0, 0, 3, 2))
    batch = a(0, 0, 3, 2)
    # the target is the conditioned labels of the cached volume itself (no warp: target and atlas stay aligned)
    for b in range(2):
        chosen = method.atlas_label[batch["atlas_mask"][b, 0].bool()].unique()
        assert len(chosen) in (1, 2) and set(chosen.tolist()) <= {1, 2}
        assert torch.equal(batch["target"][b, 0].bool(), torch.isin(items[1]["label"], chosen))
    assert batch["atlas_mask"].shape == batch["target"].shape == (2, 1, 16, 16, 16)


@pytest.mark.parametrize("pipeline", ["device", "loop"])
def test_several_labels_per_image_share_its_encoder_pass(pipeline):
    """--labels-per-image K: B images, B*K conditionings, image b's K consecutive ones distinct labels of it."""
    items = _items(3, cases=2, size=16)
    prep = Preprocessing.from_dict({"spatial_dims": 3, "spacing": [1, 1, 1], "patch_size": [16, 16, 16]})
    config = network_config_from_dict(
        {"arch": "lcs", "spatial_dims": 3, "out_channels": 1, "channels": [4, 8, 16]}
    )
    method = LCSMethod(items[0]["image"][0], items[0]["label"], [1, 2], config, prep, merge_prob=0.0,
                       labels_per_image=2, loss="dice-bce")  # fmt: skip
    method.prepare_items(items[1:])
    if pipeline == "device":
        batch = LCSBatches(method, items[1:], PipelineSettings(augment=False), torch.device("cpu"))(
            0, 0, 3, 2
        )
    else:
        method.make_sampler(items[1:], 0.5, augment=False)
        batch = method.batch(0, 0, 3, 2)
    assert batch["image"].shape == (2, 1, 16, 16, 16)
    assert batch["atlas_mask"].shape == batch["target"].shape == (4, 1, 16, 16, 16)
    for b in range(2):
        pair = [
            method.atlas_label[batch["atlas_mask"][2 * b + k, 0].bool()].unique().tolist() for k in (0, 1)
        ]
        assert sorted(pair) == [[1], [2]]  # both labels, each once
        for k in (0, 1):
            target = batch["target"][2 * b + k, 0].bool()
            assert target.any() and torch.equal(target, items[1]["label"] == pair[k][0])
    torch.manual_seed(0)
    loss = method.loss(build_network(config), batch, torch.device("cpu"))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 1.0  # Dice term + a positive cross-entropy
    # one label per image draws exactly what the published sampler drew
    single = LCSMethod(items[0]["image"][0], items[0]["label"], [1, 2], config, prep)
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    assert [single.draw_label_sets(r1) for _ in range(20)] == [[single.draw_labels(r2)] for _ in range(20)]


def _flip_grid(shape):
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    flipped = coords.clone()
    flipped[0] = -flipped[0]  # output x samples the input at -x: a flip of axis 0
    shifted = coords.clone()
    shifted[1] = shifted[1] + 3.0  # output y samples input y + 3: a shift of -3 voxels along axis 1
    return grid_from_voxel_map(torch.stack([flipped, shifted]), shape)


@pytest.mark.parametrize("shape", [(12, 10), (12, 10, 8)])
def test_known_flip_and_shift_are_recovered_exactly_for_image_and_label(shape):
    rng = np.random.default_rng(1)
    label = torch.as_tensor(rng.integers(0, 4, size=(2, *shape)))
    image = torch.stack([label.float() * 10 + 0.5, label.float() * -2]).movedim(0, 1)  # (B, 2, *S)
    grid = _flip_grid(shape)
    out_image, out_label = warp(image, label, grid, np.array([True, True]))
    assert torch.equal(out_label[0], torch.flip(label[0], dims=[0]))
    torch.testing.assert_close(out_image[0], torch.flip(image[0], dims=[1]), atol=1e-4, rtol=0)
    expected = torch.zeros_like(label[1])
    expected[:, : shape[1] - 3] = label[1][:, 3:]  # shifted, zero where it left the patch
    assert torch.equal(out_label[1], expected)
    inside = torch.zeros(shape, dtype=torch.bool)
    inside[:, : shape[1] - 3] = True
    expected_image = torch.where(inside, expected.float() * 10 + 0.5, 0.0)  # zero padding outside
    torch.testing.assert_close(out_image[1, 0], expected_image, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_random_warp_moves_image_and_label_together(dims):
    shape = (24,) * dims
    grid_idx = np.indices(shape)
    label = torch.as_tensor((((grid_idx - 11.5) ** 2).sum(0) < 49).astype(np.int64))[None].repeat(
        3, *([1] * dims)
    )
    image = label[:, None].float()
    params = SpatialParams(prob=1.0, rotate=0.5, scale=0.2, elastic_prob=1.0, elastic_voxels=2.0)
    grid, moved = random_spatial_grid(np.random.default_rng(5), 3, shape, torch.device("cpu"), params)
    assert moved.all()
    out_image, out_label = warp(image, label, grid, moved)
    assert not torch.equal(out_label, label)  # it did move
    # where the bilinear image is exactly 0 or 1 every neighbour agrees, so the nearest label must too
    pure = (out_image[:, 0] < 1e-4) | (out_image[:, 0] > 1 - 1e-4)
    assert pure.float().mean() > 0.8
    assert torch.equal(out_label[pure], out_image[:, 0][pure].round().long())
    # and the warped label sits where the warped image is: Dice of the two masks is high
    soft = out_image[:, 0] > 0.5
    hard = out_label.bool()
    assert 2 * (soft & hard).sum() / (soft.sum() + hard.sum()) > 0.97


def test_unselected_samples_are_returned_unchanged():
    batches = _task_batches(2, elastic=False)
    plain = _task_batches(2, augment=False)
    kept = changed = 0
    for step in range(12):
        aug, raw = batches(0, 0, step, 3), plain(0, 0, step, 3)
        assert torch.equal(aug["task"], raw["task"])  # the same draws, augmented or not
        for b in range(3):
            if torch.equal(aug["target"][b], raw["target"][b]):
                kept += 1
            else:
                changed += 1
    # probability 0.3 per sample: most keep their geometry exactly, some are warped
    assert kept > changed > 0


def test_cache_device_and_gpu_levers_fall_back_on_cpu():
    cpu = torch.device("cpu")
    tensors = [torch.zeros(10)]
    assert cache_device(tensors, cpu, PipelineSettings()) == (cpu, 0)
    assert cache_device(tensors, cpu, PipelineSettings(loader_workers=2)) == (cpu, 2)
    assert (
        amp_dtype(cpu, "auto") is None
        and amp_dtype(cpu, "bf16") == torch.bfloat16
        and amp_dtype(cpu, "off") is None
    )
    assert not use_fused_optimizer(TrainOptions(), cpu)
    model = torch.nn.Linear(3, 2)
    fused = make_optimizer(model, TrainOptions(fused_optimizer="on"), cpu)
    assert fused.defaults.get("fused") is True
    model(torch.ones(1, 3)).sum().backward()
    fused.step()  # the fused CPU kernel runs
    from LabelSharingSegLib.engine.errors import InputError

    with pytest.raises(InputError, match="legacy"):
        PipelineSettings(kind="legacy", appearance=("bias",))
    with pytest.raises(InputError, match="pipeline"):
        PipelineSettings(kind="fast")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantoms(tmp_path_factory.mktemp("phantoms"), tasks=2, cases=3)


def test_training_with_loader_workers_gives_the_same_weights(tmp_path, data):
    common = ["--steps", 4, "--val-fraction", 0, "--seed", 2, *TINY]
    assert lsseg("train", "labelsharing", "--data", *data, "--out", tmp_path / "a", *common) == 0
    assert (
        lsseg(
            "train", "labelsharing", "--data", *data, "--out", tmp_path / "b", *common, "--loader-workers", 1
        )
        == 0
    )
    a, b = load_bundle(tmp_path / "a").state_dict, load_bundle(tmp_path / "b").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_appearance_channels_last_and_fused_run_on_cpu(tmp_path, capsys):
    data3 = phantoms(tmp_path / "p3", tasks=1, dims=3, size=16, cases=2)
    out = tmp_path / "app"
    args = [
        "--steps",
        2,
        "--val-fraction",
        0,
        "--appearance",
        "all",
        "--channels-last",
        "--fused-optimizer",
        "on",
    ]
    assert lsseg("train", "labelsharing", "--data", *data3, "--out", out, *args, *TINY) == 0
    config = (tmp_path / "app.training" / "config.json").read_text()
    assert '"appearance"' in config and "synth" in config
    assert (
        lsseg(
            "train", "labelsharing", "--data", *data3, "--out", tmp_path / "x", "--appearance", "fog", *TINY
        )
        == 2
    )
    assert "unknown appearance augmentation fog" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_trains_on_cpu(tmp_path, data):
    """``--compile`` (torch.compile, inductor) on the CPU: slow to compile, so only with ``pytest -m slow``."""
    out = tmp_path / "compiled"
    assert (
        lsseg("train", "labelsharing", "--data", *data, "--out", out, "--steps", 2, "--compile", *TINY) == 0
    )
    assert load_bundle(out).kind == "labelsharing"

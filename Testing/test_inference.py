"""Inference: geometry round trips on oblique/LPS/anisotropic grids, task channel masking, LCS batching,
progress/cancel and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from LabelSharingSegLib.engine.atlas_segmentation import (
    PreparedLCS,
    lcs_probabilities_chunks,
    segment_atlas_labels,
)
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import CancelledError, InputError
from LabelSharingSegLib.engine.inference import _Reporter, segment_task
from LabelSharingSegLib.engine.labels import LabelInfo
from LabelSharingSegLib.engine.preprocessing import resample_to_grid, to_model_grid
from LabelSharingSegLib.engine.preprocessing_config import Preprocessing


class IntensityThreshold(torch.nn.Module):
    """A real module whose argmax is 'bright voxel -> channel c': makes geometry errors visible."""

    def __init__(self, channels: int, bright_channel: int):
        super().__init__()
        self.channels, self.bright = channels, bright_channel

    def forward(self, x, task_index=None):
        out = torch.full((x.shape[0], self.channels, *x.shape[2:]), -10.0)
        out[:, 0] = 0.0
        out[:, self.bright] = (x[:, 0] - 0.5) * 20.0
        return out


def oblique_affine(spacing=(1.2, 0.9, 2.5), lps=False):
    angle = np.deg2rad(25)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilt = np.deg2rad(10)
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    if lps:  # an LPS-derived matrix as DICOM gives it, converted to RAS: first two world axes flipped
        affine[:3, :3] = np.diag([-1, -1, 1]) @ affine[:3, :3] @ np.diag([1, 1, 1])
    affine[:3, 3] = [-20.0, 15.0, -12.0]
    return affine


def sphere_image(shape, affine, centre_world, radius_mm):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    inside = np.linalg.norm(world - centre_world, axis=1) < radius_mm
    return inside.reshape(shape).astype(np.float32)


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.mark.parametrize("lps", [False, True])
def test_task_labels_stay_on_the_anatomy_for_oblique_grids(ls_bundle_path, lps):
    bundle = load_bundle(ls_bundle_path)
    affine = oblique_affine(lps=lps)
    shape = (40, 44, 18)
    centre = affine[:3, :3] @ (np.array(shape) / 2) + affine[:3, 3]
    image = sphere_image(shape, affine, centre + [3.0, -2.0, 1.0], 11.0)
    before = image.copy()
    brain = bundle.task("brain")
    bright = brain.channels[3]  # 'ventricles'
    net = IntensityThreshold(bundle.network_config.out_channels, bright)
    result = segment_task(bundle, image, affine, "brain", device="cpu", network=net)
    assert result.labelmap.shape == image.shape
    np.testing.assert_array_equal(result.affine, affine)
    np.testing.assert_array_equal(image, before)  # input untouched
    assert set(np.unique(result.labelmap)) <= {0, 3}
    assert dice(result.labelmap == 3, image > 0.5) > 0.9


def test_only_the_chosen_tasks_channels_compete(ls_bundle_path):
    bundle = load_bundle(ls_bundle_path)
    # the bright channel is shared label 3, which task 'organs' (2 labels) does not use -> all background
    net = IntensityThreshold(bundle.network_config.out_channels, 3)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image = np.zeros((20, 20, 20), np.float32)
    image[5:15, 5:15, 5:15] = 1
    organs = segment_task(bundle, image, affine, "organs", device="cpu", network=net)
    assert organs.labelmap.max() == 0
    brain = segment_task(bundle, image, affine, "brain", device="cpu", network=net)
    assert (brain.labelmap == bundle.label_space.shared_to_task("brain")[3]).sum() > 500


def test_model_grid_round_trip_preserves_world_positions():
    affine = oblique_affine(spacing=(0.8, 1.7, 3.0), lps=True)
    shape = (50, 30, 16)
    centre = affine[:3, :3] @ (np.array(shape) / 2) + affine[:3, 3]
    image = sphere_image(shape, affine, centre, 12.0)
    prep = Preprocessing.from_dict(
        {"spatial_dims": 3, "spacing": [1.0, 1.0, 1.0], "patch_size": [16] * 3, "intensity": {"mode": "none"}}
    )
    model = to_model_grid(image, affine, prep)
    back = resample_to_grid(model, affine, shape, mode="bilinear")[0].numpy()
    assert dice(back > 0.5, image > 0.5) > 0.93


def test_2d_bundle_segments_slice_by_slice(tmp_path):
    from conftest import tiny_label_space

    from lsseg_training.bundle_factory import labelsharing_tasks, make_preprocessing, write_task_bundle

    space = tiny_label_space()
    prep = make_preprocessing(2, [1.0, 1.0], [16, 16], factor=4)
    path = write_task_bundle(
        tmp_path / "b2d",
        "labelsharing",
        labelsharing_tasks(space),
        prep,
        channels=(4, 8, 16),
        label_space=space,
    )
    bundle = load_bundle(path)
    net = IntensityThreshold(4, 1)
    for shape in [(30, 26, 1), (30, 26, 5)]:
        image = np.zeros(shape, np.float32)
        image[5:20, 8:20] = 1
        out = segment_task(bundle, image, np.diag([0.7, 0.7, 4.0, 1.0]), "organs", device="cpu", network=net)
        assert out.labelmap.shape == shape
        assert dice(out.labelmap == space.shared_to_task("organs")[1], image > 0.5) > 0.9


def test_lcs_batched_equals_naive_loop(lcs_bundle_path):
    bundle = load_bundle(lcs_bundle_path)
    image, affine = bundle.atlas_image()
    labels, _, _ = bundle.atlas_labels()
    rng = np.random.default_rng(3)
    masks = np.stack([labels == 1, labels == 2, labels == 3, rng.random(labels.shape) > 0.7, labels > 0])
    net = bundle.build_network()
    prepared = PreparedLCS(bundle, image + 1.5, affine, torch.device("cpu"))
    report = _Reporter(None, None)
    batched = torch.cat([p for _, p in lcs_probabilities_chunks(net, prepared, masks, 5, report)])
    naive = torch.cat([p for _, p in lcs_probabilities_chunks(net, prepared, masks, 1, report)])
    assert batched.shape == (5, *labels.shape)
    assert torch.allclose(batched, naive, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # the mask conditions the output


def test_lcs_combination_and_geometry(lcs_bundle_path):
    bundle = load_bundle(lcs_bundle_path)
    atlas, atlas_affine = bundle.atlas_image()
    labels, _, names = bundle.atlas_labels()
    masks = np.stack([labels == n.value for n in names])
    # a target on an anisotropic, shifted grid covering the atlas
    target_affine = np.diag([1.5, 2.5, 1.0, 1.0])
    target_affine[:3, 3] = [-22.0, -26.0, -18.0]
    grid = resample_to_grid(
        torch.as_tensor(atlas)[None], target_affine, (28, 22, 36), mode="bilinear", src_affine=atlas_affine
    )[0].numpy()
    seen = []
    result = segment_atlas_labels(
        bundle,
        grid,
        target_affine,
        masks,
        names,
        device="cpu",
        progress=lambda f, m: seen.append(f),
        memory_budget_mb=0.001,
        method="lcs",
    )
    assert result.labelmap.shape == (28, 22, 36)
    assert set(np.unique(result.labelmap)) <= {0, 1, 2, 3}
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert [lab.name for lab in result.labels] == ["left blob", "right blob", "box"]


def test_cancel_raises_and_bad_input(ls_bundle_path, lcs_bundle_path):
    bundle = load_bundle(ls_bundle_path)
    image = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    affine = np.eye(4)
    with pytest.raises(InputError, match="every voxel has the value 0"):
        segment_task(bundle, np.zeros_like(image), affine, "brain", device="cpu")
    with pytest.raises(InputError, match="2D image"):
        segment_task(bundle, image[:, :, :1], affine, "brain", device="cpu")
    with pytest.raises(CancelledError):
        segment_task(bundle, image, affine, "brain", device="cpu", cancel=lambda: True)
    with pytest.raises(InputError, match="unknown task 'liver'"):
        segment_task(bundle, image, affine, "liver", device="cpu")
    bad = image.copy()
    bad[1, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        segment_task(bundle, bad, affine, "brain", device="cpu")
    with pytest.raises(InputError, match="2D or 3D"):
        segment_task(bundle, np.zeros((4, 4, 4, 3)), affine, "brain", device="cpu")
    with pytest.raises(InputError, match="singular"):
        segment_task(bundle, image, np.zeros((4, 4)), "brain", device="cpu")
    with pytest.raises(InputError, match="atlas labels need an LCS bundle"):
        segment_atlas_labels(bundle, image, affine, np.ones((1, 2, 2, 2)), [LabelInfo(1, "a", (1, 0, 0))])
    lcs = load_bundle(lcs_bundle_path)
    shape = lcs.atlas_image()[0].shape
    with pytest.raises(InputError, match="segments atlas labels"):
        segment_task(lcs, image, affine, "brain")
    with pytest.raises(InputError, match="empty atlas mask"):
        segment_atlas_labels(
            lcs, image, affine, np.zeros((1, *shape), bool), [LabelInfo(1, "drawn", (1, 0, 0))]
        )
    with pytest.raises(InputError, match="do not lie on the atlas grid"):
        segment_atlas_labels(
            lcs, image, affine, np.ones((1, 5, 5, 5), bool), [LabelInfo(1, "drawn", (1, 0, 0))]
        )


def test_independent_atlas_labels_equal_one_label_at_a_time(lcs_bundle_path):
    from LabelSharingSegLib.engine.atlas_segmentation import atlas_labels_independently

    bundle = load_bundle(lcs_bundle_path)
    atlas, affine = bundle.atlas_image()
    labels, _, names = bundle.atlas_labels()
    masks = np.stack([labels == n.value for n in names] + [labels > 0])
    infos = names + [LabelInfo(9, "all", (1.0, 1.0, 1.0))]
    target_affine = np.diag([1.5, 2.5, 1.0, 1.0])
    target_affine[:3, 3] = [-22.0, -26.0, -18.0]
    rng = np.random.default_rng(0)
    target = rng.normal(size=(28, 22, 36)).astype(np.float32)
    together, alignment = atlas_labels_independently(
        bundle, target, target_affine, masks, infos, device="cpu", align=False, memory_budget_mb=0.001
    )
    assert together.shape == (4, 28, 22, 36) and alignment is None
    assert 0.0 < together.mean() < 1.0  # a non-trivial decision, so the comparison below can fail
    for k, info in enumerate(infos):
        single = segment_atlas_labels(
            bundle, target, target_affine, masks[k : k + 1], [info], device="cpu", align=False, method="lcs"
        )
        np.testing.assert_array_equal(together[k], single.labelmap == info.value)


def test_lcs_chunk_size_counts_every_level_conditioning():
    """Every-level conditioning adds channels at each decoder level, so fewer masks fit one memory budget."""
    from LabelSharingSegLib.engine.atlas_segmentation import lcs_chunk_size
    from LabelSharingSegLib.engine.network_config import LCSConfig

    grid, budget = (64, 80, 64), 1024.0
    paper = lcs_chunk_size(LCSConfig(channels=(8, 16, 32, 64)), grid, budget)
    every = lcs_chunk_size(LCSConfig(channels=(8, 16, 32, 64), conditioning="every-level"), grid, budget)
    assert 1 <= every < paper

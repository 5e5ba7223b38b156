"""The refine LCS network: box inference equals full-volume inference, batched equals one label at a time, an
untrained network reproduces registration, and the random split augmentation tiles its parent label."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from LabelSharingSegLib.engine.boxes import chunked_boxes, crop, label_box
from LabelSharingSegLib.engine.network_config import RefineLCSConfig
from LabelSharingSegLib.engine.networks import REFINE_HALO, build_network
from LabelSharingSegLib.engine.registered import refined_in_boxes
from lsseg_training.methods import voronoi_seeds, voronoi_split

GRID = (48, 40, 44)


def _trained_looking_net(seed=0):
    """A refine network whose correction is not zero (as after training), so the comparisons can fail."""
    torch.manual_seed(seed)
    net = build_network(RefineLCSConfig(channels=(6, 8))).eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.correction.weight, std=0.5)
        net.correction.bias.fill_(0.1)
    return net


def _blob_masks(count, rng):
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in GRID], indexing="ij"))
    masks = []
    for _ in range(count):
        centre = rng.uniform(6, np.array(GRID) - 6)
        radius = rng.uniform(2, 6)
        masks.append(np.linalg.norm(ijk - centre[:, None, None, None], axis=0) <= radius)
    return torch.as_tensor(np.stack(masks)).float()


def test_untrained_refine_network_reproduces_the_propagated_mask():
    net = build_network(RefineLCSConfig(channels=(4, 8))).eval()
    rng = np.random.default_rng(0)
    masks = _blob_masks(2, rng)[:, None]
    scan = torch.randn(1, 1, *GRID)
    with torch.no_grad():
        logits = net(scan, torch.randn(1, 1, *GRID), masks)
    assert torch.equal(logits > 0, masks > 0.5)


def test_box_inference_equals_full_volume_inside_the_box():
    net = _trained_looking_net()
    rng = np.random.default_rng(1)
    masks = _blob_masks(5, rng)
    scan, atlas = torch.randn(1, 1, *GRID), torch.randn(1, 1, *GRID)
    with torch.no_grad():
        features = net.encode(scan, atlas)
        full = torch.sigmoid(net.refine(features, masks[:, None]))[:, 0]
    seen = set()
    for k, box, probs in refined_in_boxes(net, features, masks, chunk=2):
        seen.add(k)
        starts, sizes = label_box(masks[k], REFINE_HALO)
        assert [b.stop - b.start for b in box] >= sizes  # the label's own box fits in the chunk's box
        # inside the label's bounding box (the box minus its halo) the results agree
        core = label_box(masks[k], 0)
        inner = tuple(slice(s - b.start, s - b.start + n) for s, n, b in zip(core[0], core[1], box))
        outer = tuple(slice(s, s + n) for s, n in zip(core[0], core[1]))
        difference = (probs[inner] - full[k][outer]).abs().max().item()
        assert difference <= 1e-5, (k, difference)
        assert probs.numel() < full[k].numel()  # the box really is smaller than the grid
    assert seen == set(range(5))


def test_batched_refine_equals_one_label_at_a_time():
    net = _trained_looking_net(seed=3)
    masks = _blob_masks(4, np.random.default_rng(2))
    with torch.no_grad():
        features = net.encode(torch.randn(1, 1, *GRID), torch.randn(1, 1, *GRID))
        batched = net.refine(features, masks[:, None])
        for k in range(4):
            single = net.refine(features, masks[k : k + 1, None])
            torch.testing.assert_close(batched[k : k + 1], single, atol=1e-5, rtol=0)
    boxed = {k: (box, probs) for k, box, probs in refined_in_boxes(net, features, masks, chunk=4)}
    for k in range(4):  # a chunk grows boxes to one size, so compare inside the label's own bounding box
        ((_, box_a, alone),) = refined_in_boxes(net, features, masks[k : k + 1], chunk=1)
        box_b, together = boxed[k]
        starts, sizes = label_box(masks[k], 0)
        np.testing.assert_allclose(
            together[_inside(starts, sizes, box_b)], alone[_inside(starts, sizes, box_a)], atol=1e-5, rtol=0
        )


def _inside(starts, sizes, box):
    """The region (starts, sizes) of the grid, in coordinates of a box."""
    return tuple(slice(s - b.start, s - b.start + n) for s, n, b in zip(starts, sizes, box))


def test_boxes_follow_the_labels():
    masks = torch.zeros((3, 20, 20, 20))
    masks[0, 5:7, 5:7, 5:7] = 1
    masks[1, 1:19, 1:19, 1:19] = 1
    starts, sizes = label_box(masks[0], 3)
    assert starts == [2, 2, 2] and sizes == [8, 8, 8]
    assert label_box(masks[2], 3) is None
    chunks = list(chunked_boxes(masks, 3, chunk=1))
    assert [ks for ks, _ in chunks] == [[0], [1]]  # smallest first, empty label skipped
    assert crop(masks[0], chunks[0][1][0]).sum() == masks[0].sum()


def test_random_split_tiles_its_parent_exactly():
    rng = np.random.default_rng(4)
    affine = np.diag([2.0, 1.5, 2.5, 1.0])
    affine[:3, 3] = [-10, 4, 7]
    parent = _blob_masks(1, rng)[0].numpy().astype(bool)
    seeds = voronoi_seeds(parent, affine, 5, rng)
    parts = voronoi_split(parent, affine, seeds)
    assert parts.shape == (5, *GRID)
    assert (parts.sum(axis=0) <= 1).all()  # disjoint
    assert np.array_equal(parts.any(axis=0), parent)  # union = parent
    assert all(p.any() for p in parts)  # every seed's voxel is in its own cell
    # the same world seeds split a label on another grid alike (atlas and target)
    other = voronoi_split(parent[::2, ::2, ::2], affine @ np.diag([2.0, 2.0, 2.0, 1.0]), seeds)
    assert np.array_equal(other.any(axis=0), parent[::2, ::2, ::2])
    with pytest.raises(ValueError, match="empty"):
        voronoi_seeds(np.zeros((3, 3, 3), bool), affine, 2, rng)


def test_lcs_refine_method_end_to_end(tmp_path):
    """A refine bundle through segment_atlas_labels: untrained, it reproduces deformable propagation."""
    from conftest import atlas_volume

    from LabelSharingSegLib.engine.atlas_segmentation import segment_atlas_labels
    from LabelSharingSegLib.engine.bundle import load_bundle
    from LabelSharingSegLib.engine.errors import InputError
    from lsseg_training.bundle_factory import make_preprocessing, write_lcs_bundle

    image, labels, affine, names = atlas_volume()
    prep = make_preprocessing(3, [2.0, 2.0, 2.0], [16, 16, 16], factor=4)
    path = write_lcs_bundle(
        tmp_path / "refine", image, labels, affine, names, prep, channels=(4, 8), arch="lcs_refine"
    )
    bundle = load_bundle(path)
    assert bundle.network_config.arch == "lcs_refine"
    masks = np.stack([labels == info.value for info in names])
    refined = segment_atlas_labels(bundle, image, affine, masks, names, method="lcs-refine")
    carried = segment_atlas_labels(
        bundle, image, affine, masks, names, method="register-deformable", align=refined.alignment
    )
    assert refined.method == "lcs-refine" and refined.labelmap.shape == image.shape
    for info in names:
        a, b = refined.labelmap == info.value, carried.labelmap == info.value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.9, info.name
        assert 2 * (a & (labels == info.value)).sum() / (a.sum() + (labels == info.value).sum()) >= 0.9
    # a refine bundle's default is its refine network, measured best on both label sets (docs/DEMO.md)
    default = segment_atlas_labels(bundle, image, affine, masks, names, align=refined.alignment)
    assert default.method == "lcs-refine"
    assert (
        np.mean(default.labelmap == refined.labelmap) > 0.99
    )  # the same registration, up to thread rounding
    with pytest.raises(InputError, match="use method 'lcs-refine'"):
        segment_atlas_labels(bundle, image, affine, masks, names, method="lcs")

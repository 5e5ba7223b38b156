"""Atlas propagation by registration: labels carried through a known synthetic warp, registration that
recovers it, divergence detection and bad drawn labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from LabelSharingSegLib.engine.atlas_segmentation import segment_atlas_labels
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.deformable import assess_deformation, check_deformation, register_deformable
from LabelSharingSegLib.engine.errors import InputError, RegistrationError
from LabelSharingSegLib.engine.labels import LabelInfo
from LabelSharingSegLib.engine.propagation import (
    Propagation,
    carry_independently,
    carry_labels,
    check_drawn_masks,
    labelmap_on_atlas_grid,
    register_atlas,
)
from LabelSharingSegLib.engine.registration import Alignment
from LabelSharingSegLib.engine.warping import displaced_points, grid_points, jacobian_determinant, sample

SHAPE = (40, 44, 36)


def _phantom():
    """A head-like phantom on a 2 mm grid: skull shell, four inner structures of distinct brightness."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-39.0, -43.0, -35.0]
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    centre = (np.array(SHAPE)[:, None, None, None] - 1) / 2

    def ellipsoid(offset, radii):
        d = (ijk - centre - np.array(offset)[:, None, None, None]) / np.array(radii)[:, None, None, None]
        return (d**2).sum(axis=0) <= 1.0

    head = ellipsoid((0, 0, 0), (17, 19, 15))
    labels = np.zeros(SHAPE, np.int16)
    labels[ellipsoid((-6, -5, 0), (6, 7, 6))] = 1
    labels[ellipsoid((8, -4, 2), (6, 7, 6))] = 2
    labels[ellipsoid((0, 9, -3), (9, 5, 5))] = 3
    labels[ellipsoid((1, 2, 8), (5, 5, 4))] = 4
    image = np.where(head, 40.0, 0.0) + np.where(head & ~ellipsoid((0, 0, 0), (15, 17, 13)), 60.0, 0.0)
    image = image + np.array([0.0, 70.0, 110.0, 20.0, 90.0])[labels] * (labels > 0)
    image = image.astype(np.float32)
    return image, labels, affine


def _known_warp(affine):
    """An affine move (rotation about z, shift) and a smooth displacement (up to ~3 mm) on the atlas grid."""
    angle = np.deg2rad(6.0)
    move = np.eye(4)
    move[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    move[:3, 3] = [3.0, -4.0, 2.0]
    world = grid_points(SHAPE, affine).numpy()
    displacement = np.stack(
        [
            3.0 * np.sin(world[..., 1] / 18.0),
            2.5 * np.sin(world[..., 2] / 15.0 + 0.5),
            2.0 * np.cos(world[..., 0] / 20.0),
        ]
    ).astype(np.float32)
    return Alignment(move, float("nan")), displacement


def _warped_target(image, labels, affine, propagation):
    """The scan = the atlas carried through ``propagation`` onto the atlas grid (intensities and truth)."""
    points = propagation.atlas_points(SHAPE, affine)
    target = sample(torch.as_tensor(image)[None], affine, points, mode="bilinear")[0].numpy()
    truth = sample(torch.as_tensor(labels.astype(np.float32))[None], affine, points, mode="nearest")[0]
    return target, truth.round().numpy().astype(np.int16)


def _dice(a, b):
    return 2.0 * np.sum(a & b) / max(1, np.sum(a) + np.sum(b))


@pytest.fixture(scope="module")
def warped_case():
    image, labels, affine = _phantom()
    alignment, displacement = _known_warp(affine)
    deformation = assess_deformation(displacement, affine, image, image, "known")
    truth_propagation = Propagation(alignment, deformation)
    target, truth = _warped_target(image, labels, affine, truth_propagation)
    return image, labels, affine, target, truth, truth_propagation


def test_known_warp_carries_labels_exactly(warped_case):
    image, labels, affine, _, truth, propagation = warped_case
    masks = np.stack([labels == v for v in (1, 2, 3, 4)])
    for interpolation in ("nearest", "linear"):
        carried = carry_labels(
            masks, [1, 2, 3, 4], affine, propagation, SHAPE, affine, interpolation=interpolation
        )
        for v in (1, 2, 3, 4):
            assert _dice(carried == v, truth == v) >= (0.999 if interpolation == "nearest" else 0.95)
    independent = carry_independently(masks, affine, propagation, SHAPE, affine, interpolation="nearest")
    assert all(_dice(independent[k], truth == k + 1) >= 0.999 for k in range(4))


def test_registration_recovers_a_synthetic_warp(warped_case):
    image, labels, affine, target, truth, _ = warped_case
    masks = np.stack([labels == v for v in (1, 2, 3, 4)])
    affine_only = register_atlas(image, affine, target, affine, stage="affine")
    deformable = register_atlas(
        image, affine, target, affine, stage="deformable", alignment=affine_only.alignment
    )
    assert deformable.deformation is not None and deformable.deformation.folded_fraction == 0.0
    scores = {}
    for name, propagation in (("affine", affine_only), ("deformable", deformable)):
        carried = carry_labels(masks, [1, 2, 3, 4], affine, propagation, SHAPE, affine)
        scores[name] = [_dice(carried == v, truth == v) for v in (1, 2, 3, 4)]
    # mean Dice >= 0.95; single labels within 0.02 of it (SimpleITK's threaded sums vary by a few voxels)
    assert np.mean(scores["deformable"]) >= 0.95 and min(scores["deformable"]) >= 0.93, scores
    assert np.mean(scores["deformable"]) > np.mean(scores["affine"]), scores


def test_background_outweighs_labels_at_their_edges():
    """Linear weights: a voxel half inside a single label's edge stays background only when bg outweighs it."""
    affine = np.eye(4)
    masks = np.zeros((1, 6, 6, 6), bool)
    masks[0, :3] = True
    shifted = Propagation(
        Alignment(np.array([[1, 0, 0, 0.4], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), 0.0)
    )
    carried = carry_labels(masks, [5], affine, shifted, (6, 6, 6), affine)
    # scan voxel i sees atlas i - 0.4: voxel 3 sees 2.6 (weight 0.4 < 0.6 background), voxel 2 sees 1.6 (label)
    assert (carried[:3] == 5).all() and (carried[3:] == 0).all()


def test_jacobian_of_a_known_field():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    world = grid_points((10, 10, 10), affine).numpy()
    scale = np.stack([0.5 * world[..., 0], np.zeros((10,) * 3), np.zeros((10,) * 3)])  # x -> 1.5 x
    assert np.allclose(jacobian_determinant(scale, affine), 1.5)
    points = grid_points((10, 10, 10), affine)
    moved = displaced_points(points, scale, affine)
    assert torch.allclose(moved[2:8, 2:8, 2:8, 0], 1.5 * points[2:8, 2:8, 2:8, 0], atol=1e-4)


def test_a_folding_registration_is_detected():
    image, _, affine = _phantom()
    world = grid_points(SHAPE, affine).numpy()
    folding = np.stack([-2.0 * world[..., 0], np.zeros(SHAPE), np.zeros(SHAPE)]).astype(np.float32)  # x -> -x
    deformation = assess_deformation(folding, affine, image, image, "demons")
    assert deformation.folded_fraction > 0.5
    with pytest.raises(RegistrationError, match="folds space"):
        check_deformation(deformation)


def test_a_registration_that_makes_images_less_alike_is_detected():
    image, _, affine = _phantom()
    world = grid_points(SHAPE, affine).numpy()
    shift = np.stack([np.full(SHAPE, 14.0), np.sin(world[..., 0] / 6.0) * 6.0, np.zeros(SHAPE)]).astype(
        np.float32
    )
    deformation = assess_deformation(shift, affine, image, image, "demons")
    assert deformation.folded_fraction == 0.0 and deformation.similarity < deformation.similarity_affine
    with pytest.raises(RegistrationError, match="match worse"):
        check_deformation(deformation)


def test_deformable_registration_refuses_mismatched_grids():
    image, _, affine = _phantom()
    with pytest.raises(InputError, match="one grid"):
        register_deformable(image, image[:-2], affine)
    with pytest.raises(InputError, match="unknown method"):
        register_deformable(image, image, affine, method="elastic")


def test_single_voxel_and_empty_labels_are_refused(lcs_bundle_path):
    check_drawn_masks(np.ones((1, 2, 1, 1), bool), ["ok"])
    one = np.zeros((2, 4, 4, 4), bool)
    one[0, 1, 1, 1] = True
    one[1, :2] = True
    with pytest.raises(InputError, match="single voxel: dot"):
        check_drawn_masks(one, ["dot", "slab"])
    bundle = load_bundle(lcs_bundle_path)
    atlas, atlas_affine = bundle.atlas_image()
    infos = [LabelInfo(1, "dot", (1, 0, 0))]
    dot = np.zeros((1, *atlas.shape), bool)
    dot[0, 10, 10, 10] = True
    for method in ("register-affine", "register-deformable", "lcs"):
        with pytest.raises(InputError, match="single voxel"):
            segment_atlas_labels(bundle, atlas, atlas_affine, dot, infos, device="cpu", method=method)
        with pytest.raises(InputError, match="empty atlas mask"):
            segment_atlas_labels(bundle, atlas, atlas_affine, dot & False, infos, device="cpu", method=method)
    with pytest.raises(InputError, match="unknown atlas-label method"):
        segment_atlas_labels(bundle, atlas, atlas_affine, dot, infos, method="magic")


def test_labels_outside_the_atlas_field_of_view_are_refused():
    atlas_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    drawn = np.zeros((30, 10, 10), np.int16)
    drawn[2:5, 2:5, 2:5] = 1
    on_atlas, values = labelmap_on_atlas_grid(drawn, np.eye(4), (10, 10, 10), atlas_affine)
    assert values == [1] and on_atlas.shape == (10, 10, 10) and (on_atlas[1:3, 1:3, 1:3] == 1).all()
    assert np.count_nonzero(on_atlas) == 8
    edge = np.zeros((30, 10, 10), np.int16)
    edge[18:20, 2:5, 2:5] = 3  # up to x = 19 mm: the outer face of the atlas's last voxel (centre 18 mm)
    assert labelmap_on_atlas_grid(edge, np.eye(4), (10, 10, 10), atlas_affine)[1] == [3]
    drawn[25:28, 2:5, 2:5] = 2  # x = 25..27 mm, the atlas ends at 18 mm (+1 mm voxel half)
    with pytest.raises(InputError, match=r"label\(s\) 2 reach outside the atlas's field of view"):
        labelmap_on_atlas_grid(drawn, np.eye(4), (10, 10, 10), atlas_affine)
    with pytest.raises(InputError, match="empty"):
        labelmap_on_atlas_grid(np.zeros((4, 4, 4)), np.eye(4), (10, 10, 10), atlas_affine)
    tiny = np.zeros((30, 10, 10), np.int16)
    tiny[2:5, 2:5, 2:5] = 1
    tiny[7, 7, 7] = 4  # one 1 mm voxel between the atlas's 2 mm voxel centres: nothing left on the atlas grid
    with pytest.raises(InputError, match=r"label\(s\) 4 keep no voxel on the atlas grid"):
        labelmap_on_atlas_grid(tiny, np.eye(4), (10, 10, 10), atlas_affine)
    with pytest.raises(InputError, match="dimensions"):
        labelmap_on_atlas_grid(drawn[..., 0], np.eye(4), (10, 10, 10), atlas_affine)
    same, _ = labelmap_on_atlas_grid(on_atlas, atlas_affine, (10, 10, 10), atlas_affine)
    assert same is on_atlas  # already on the atlas grid: used as drawn


def test_registration_methods_through_the_engine(warped_case, tmp_path):
    """Labels drawn on a bundle's atlas, carried onto the warped scan by both registration methods."""
    from lsseg_training.bundle_factory import make_preprocessing, write_lcs_bundle

    image, labels, affine, target, truth, _ = warped_case
    infos = [LabelInfo(v, f"structure {v}", (1.0, 0.0, 0.0)) for v in (1, 2, 3, 4)]
    prep = make_preprocessing(3, [2.0, 2.0, 2.0], [16, 16, 16], factor=4)
    bundle = load_bundle(
        write_lcs_bundle(tmp_path / "b", image, labels, affine, infos, prep, channels=(4, 8))
    )
    masks = np.stack([labels == info.value for info in infos])
    alignment = None
    for method in ("register-affine", "register-deformable"):
        result = segment_atlas_labels(bundle, target, affine, masks, infos, method=method, align=alignment)
        alignment = result.alignment
        assert result.method == method and result.labelmap.shape == target.shape
        for info in infos:
            assert _dice(result.labelmap == info.value, truth == info.value) >= 0.9, (method, info.name)
    assert result.propagation is not None and result.propagation.deformation is not None
    shifted = affine.copy()
    shifted[:3, 3] += 500.0  # a scan far away, not aligned: every label lands outside it
    with pytest.raises(InputError, match="outside the scan's field of view"):
        segment_atlas_labels(bundle, target, shifted, masks, infos, method="register-affine", align=False)

"""The atlas's brain as a window on an aligned scan (engine/atlas_brain.py): LCS sees a whole-head scan as a
brain-only image once it is aligned, and sees everything when it is not; a scan left with no trusted pose is not
segmented at all."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from LabelSharingSegLib.engine.atlas_brain import atlas_brain, background_level, keep_brain
from LabelSharingSegLib.engine.atlas_segmentation import PreparedLCS, segment_atlas_labels
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.labels import LabelInfo
from LabelSharingSegLib.engine.registration import Alignment

SHAPE = (24, 28, 24)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = [-24.0, -28.0, -24.0]


def _radius() -> np.ndarray:
    grid = np.indices(SHAPE) - (np.array(SHAPE) - 1)[:, None, None, None] / 2
    return np.sqrt((grid**2).sum(0))


def _brain_only() -> tuple[np.ndarray, np.ndarray]:
    """A brain-only atlas: a ball (radius 7 voxels) of two labels on an empty background."""
    radius = _radius()
    labels = np.where(radius < 7, 1, 0) + (radius < 3)
    image = np.where(radius < 7, 60.0 + 20.0 * (radius < 3), 0.0).astype(np.float32)
    return image, labels.astype(np.int16)


def _whole_head() -> np.ndarray:
    """The same brain inside a bright scalp (radius 9-11 voxels), as a scanner shows a head."""
    image, _ = _brain_only()
    return np.where((_radius() > 9) & (_radius() < 11), 150.0, image).astype(np.float32)


class _Spy(torch.nn.Module):
    """A bundle's network, recording what its encoder is given."""

    def __init__(self, network):
        super().__init__()
        self.network, self.seen = network, []

    def encode(self, x):
        self.seen.append(x.clone())
        return self.network.encode(x)

    def condition(self, *args):
        return self.network.condition(*args)

    def decode_conditioned(self, *args):
        return self.network.decode_conditioned(*args)


@pytest.fixture(scope="module")
def brain_only_lcs(tmp_path_factory):
    from lsseg_training.bundle_factory import make_preprocessing, write_lcs_bundle

    image, labels = _brain_only()
    names = [LabelInfo(1, "cortex", (0.9, 0.2, 0.2)), LabelInfo(2, "core", (0.2, 0.8, 0.2))]
    prep = make_preprocessing(3, [2.0, 2.0, 2.0], [24, 28, 24], factor=4)
    out = tmp_path_factory.mktemp("bundles") / "lcs-brain"
    return load_bundle(write_lcs_bundle(out, image, labels, AFFINE, names, prep, channels=(4, 8, 16), seed=1))


def test_the_window_is_the_atlas_foreground_grown_by_the_margin():
    image, _ = _brain_only()
    ball = _radius() < 7
    assert np.array_equal(atlas_brain(image, AFFINE, 0.0), ball)
    grown = atlas_brain(image, AFFINE, 4.0)  # 2 mm voxels: two voxels more
    expected = ndimage.distance_transform_edt(~ball, sampling=2.0) <= 4.0
    assert np.array_equal(grown, expected) and grown.sum() > ball.sum()


def test_keep_brain_sets_the_outside_to_the_background_and_keeps_the_inside():
    head = _whole_head()
    window = atlas_brain(_brain_only()[0], AFFINE, 0.0)
    background = background_level(head)
    assert background == 0.0
    kept = keep_brain(torch.as_tensor(head), window, background).numpy()
    assert np.array_equal(kept[window], head[window]) and (kept[~window] == 0.0).all()
    assert head.max() == 150.0  # the input itself is not modified


def test_an_aligned_scan_is_seen_through_the_window_and_an_unaligned_one_whole(brain_only_lcs):
    head = _whole_head()
    windowed = PreparedLCS(brain_only_lcs, head, AFFINE, torch.device("cpu"), brain_window=True)
    plain = PreparedLCS(brain_only_lcs, head, AFFINE, torch.device("cpu"), brain_window=False)
    brain_only = PreparedLCS(brain_only_lcs, _brain_only()[0], AFFINE, torch.device("cpu"))
    # through the window, the whole head looks exactly like the brain-only scan the network was trained on
    torch.testing.assert_close(windowed.target, brain_only.target)
    assert not torch.allclose(plain.target, brain_only.target, atol=0.1)

    atlas_labels, _, labels = brain_only_lcs.atlas_labels()
    masks = np.stack([atlas_labels == label.value for label in labels])
    accepted = Alignment(np.eye(4), -0.5, -0.1)
    refused = Alignment(np.eye(4), -0.1, -0.5, accepted=False, warning="worse than none")
    for align, expected in ((accepted, windowed), (refused, plain), (False, plain)):
        spy = _Spy(brain_only_lcs.build_network())
        segment_atlas_labels(
            brain_only_lcs, head, AFFINE, masks, labels, device="cpu", network=spy, align=align, method="lcs"
        )
        torch.testing.assert_close(spy.seen[0], expected.target)


def test_a_scan_with_no_trusted_pose_is_refused_before_the_network_runs(brain_only_lcs, ls_bundle_path):
    """A refused alignment whose world coordinates were measured to match the reference no better leaves the scan
    no pose to segment it in: refused, by task bundles and LCS alike, the network never run. World coordinates
    that match sharply (a scan already in the reference's space) are used as before."""
    from LabelSharingSegLib.engine.bundle import load_bundle
    from LabelSharingSegLib.engine.errors import UnplacedScanError
    from LabelSharingSegLib.engine.inference import segment_task

    head = _whole_head()
    atlas_labels, _, labels = brain_only_lcs.atlas_labels()
    masks = np.stack([atlas_labels == label.value for label in labels])
    refused = Alignment(np.eye(4), -0.1, -0.5, accepted=False, warning="worse than none")
    unplaced, placed = replace(refused, identity_sharpness=0.13), replace(refused, identity_sharpness=0.8)
    assert not unplaced.places_scan and placed.places_scan and refused.places_scan  # NaN: never measured
    assert "sharpness of the match in world coordinates 13%" in unplaced.summary()
    task_bundle = load_bundle(ls_bundle_path)
    task = task_bundle.task_names()[0]
    spy, task_spy = _Spy(brain_only_lcs.build_network()), _Calls(task_bundle.build_network())
    refusal = "nothing was segmented: worse than none; the match in world coordinates is 13%"
    with pytest.raises(UnplacedScanError, match=refusal):
        segment_atlas_labels(
            brain_only_lcs,
            head,
            AFFINE,
            masks,
            labels,
            device="cpu",
            network=spy,
            align=unplaced,
            method="lcs",
        )
    with pytest.raises(UnplacedScanError, match=refusal):
        segment_task(task_bundle, head, AFFINE, task, device="cpu", network=task_spy, align=unplaced)
    assert not spy.seen and not task_spy.seen
    segment_atlas_labels(
        brain_only_lcs, head, AFFINE, masks, labels, device="cpu", network=spy, align=placed, method="lcs"
    )
    segment_task(task_bundle, head, AFFINE, task, device="cpu", network=task_spy, align=placed)
    assert spy.seen and task_spy.seen


class _Calls(torch.nn.Module):
    """A task bundle's network, recording each call."""

    def __init__(self, network):
        super().__init__()
        self.network, self.seen = network, []

    def forward(self, *args, **kwargs):
        self.seen.append(args[0].shape)
        return self.network(*args, **kwargs)


def _ellipsoid(shift_voxels: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric brain-only phantom (ellipsoid with an off-centre core), shifted along the first axis."""
    grid = np.indices(SHAPE).astype(float) - (np.array(SHAPE) - 1)[:, None, None, None] / 2
    grid[0] -= shift_voxels
    brain = (grid[0] / 8) ** 2 + (grid[1] / 10) ** 2 + (grid[2] / 7) ** 2 < 1
    core = ((grid[0] - 3) ** 2 + (grid[1] + 4) ** 2 + grid[2] ** 2) < 9
    image = np.where(brain, 60.0, 0.0) + 40.0 * core
    return image.astype(np.float32), (brain.astype(np.int16) + core).astype(np.int16)


def test_an_aligned_scan_is_shown_to_the_network_in_the_reference_position(tmp_path):
    from lsseg_training.bundle_factory import make_preprocessing, set_reference, write_lcs_bundle

    atlas_image, atlas_labels = _ellipsoid(shift_voxels=3.0)  # the atlas case: 6 mm off the reference
    reference, _ = _ellipsoid()
    names = [LabelInfo(1, "cortex", (0.9, 0.2, 0.2)), LabelInfo(2, "core", (0.2, 0.8, 0.2))]
    prep = make_preprocessing(3, [2.0, 2.0, 2.0], [24, 28, 24], factor=4)
    plain = write_lcs_bundle(
        tmp_path / "plain", atlas_image, atlas_labels, AFFINE, names, prep, channels=(4, 8, 16), seed=1
    )
    positioned = set_reference(
        write_lcs_bundle(
            tmp_path / "ref", atlas_image, atlas_labels, AFFINE, names, prep, channels=(4, 8, 16), seed=1
        ),
        reference,
        AFFINE,
    )
    bundle = load_bundle(positioned)
    assert load_bundle(plain).network_reference() is None and bundle.network_reference() is not None
    assert bundle.state_dict.keys() == load_bundle(plain).state_dict.keys()
    # the scan: the same brain 2 mm the other way (a scan exactly in the reference position would leave
    # registration nothing to improve: the quality check would keep world coordinates)
    scan = _ellipsoid(shift_voxels=-1.0)[0]
    masks = np.stack([atlas_labels == label.value for label in names])
    seen = {}
    for key, path in (("plain", plain), ("reference", positioned)):
        current = load_bundle(path)
        spy = _Spy(current.build_network())
        result = segment_atlas_labels(
            current, scan, AFFINE, masks, names, device="cpu", network=spy, method="lcs"
        )
        assert result.alignment is not None and result.alignment.accepted
        # the alignment stays the scan's alignment to the atlas (other methods reuse it): atlas x -> x - 8 mm
        assert abs(result.alignment.matrix[0, 3] + 8.0) < 1.5
        seen[key] = spy.seen[0][0, 0]
    # with the reference, the network sees the scan where it lies (the reference's position), brain only
    expected = PreparedLCS(load_bundle(plain), reference, AFFINE, torch.device("cpu")).target[0, 0]
    moved = PreparedLCS(load_bundle(plain), atlas_image, AFFINE, torch.device("cpu")).target[0, 0]

    def centre(volume: torch.Tensor) -> float:
        """Centre of the brain along the first axis (voxels of the padded atlas grid): registration of such
        small phantoms is good to about a voxel, the two positions are three voxels apart."""
        inside = (volume > volume.min() + 0.5).float()
        return float((inside * torch.arange(volume.shape[0]).view(-1, 1, 1)).sum() / inside.sum())

    assert abs(centre(expected) - centre(moved) + 3.0) < 0.2  # the phantoms themselves
    # with the reference, the network sees the scan where it lies (the reference's position), brain only
    assert abs(centre(seen["reference"]) - centre(expected)) < 1.0
    # without it, in the atlas case's position
    assert abs(centre(seen["plain"]) - centre(moved)) < 1.0


def test_registration_methods_start_from_the_reference_alignment(tmp_path):
    """With a network reference, registration methods reuse the alignment LCS computes through it (one
    registration per scan, measured better than registering to the atlas case directly)."""
    from lsseg_training.bundle_factory import make_preprocessing, set_reference, write_lcs_bundle

    atlas_image, atlas_labels = _ellipsoid(shift_voxels=3.0)
    names = [LabelInfo(1, "cortex", (0.9, 0.2, 0.2)), LabelInfo(2, "core", (0.2, 0.8, 0.2))]
    prep = make_preprocessing(3, [2.0, 2.0, 2.0], [24, 28, 24], factor=4)
    written = write_lcs_bundle(
        tmp_path / "b", atlas_image, atlas_labels, AFFINE, names, prep, channels=(4, 8, 16)
    )
    bundle = load_bundle(set_reference(written, _ellipsoid()[0], AFFINE))
    scan = _ellipsoid(shift_voxels=-1.0)[0]
    masks = np.stack([atlas_labels == label.value for label in names])
    lcs = segment_atlas_labels(bundle, scan, AFFINE, masks, names, device="cpu", method="lcs")
    carried = segment_atlas_labels(bundle, scan, AFFINE, masks, names, device="cpu", method="register-affine")
    np.testing.assert_allclose(carried.alignment.matrix, lcs.alignment.matrix, atol=1e-6)
    assert abs(carried.alignment.matrix[0, 3] + 8.0) < 1.5
    with pytest.raises(Exception, match="empty"):  # a bad drawing is refused before any registration
        segment_atlas_labels(
            bundle, scan, AFFINE, masks * False, names, device="cpu", method="register-affine"
        )

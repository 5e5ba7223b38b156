"""Atlas masks given as one label map (LabelMapMasks) are made per chunk: same result as the stacked (K, grid)
boolean array, without ever holding all K masks."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from LabelSharingSegLib.engine.atlas_segmentation import (
    LabelMapMasks,
    check_atlas_masks,
    segment_atlas_labels,
)
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.labels import LabelInfo


def _partition(shape, k: int, seed: int = 0) -> np.ndarray:
    """A label map of ``k`` labels tiling the grid (values 1..k, each present)."""
    rng = np.random.default_rng(seed)
    labelmap = rng.integers(1, k + 1, size=shape).astype(np.int32)
    labelmap.flat[:k] = np.arange(1, k + 1)
    return labelmap


def test_slices_equal_the_stacked_masks():
    labelmap = _partition((6, 7, 5), 9)
    values = [3, 1, 9, 4]
    masks = LabelMapMasks(labelmap, values)
    stacked = np.stack([labelmap == v for v in values])
    assert masks.shape == stacked.shape and len(masks) == 4 and masks.ndim == 4
    np.testing.assert_array_equal(masks[1:3], stacked[1:3])
    np.testing.assert_array_equal(masks[0:4], stacked)
    np.testing.assert_array_equal(masks[2], stacked[2])


def test_checks_apply_to_label_map_masks():
    labelmap = _partition((6, 7, 5), 4)
    labels = [LabelInfo(v, f"l{v}", (1, 0, 0)) for v in (1, 2)]
    with pytest.raises(InputError, match="atlas grid"):
        check_atlas_masks(LabelMapMasks(labelmap, [1, 2]), (6, 7, 4), labels)
    with pytest.raises(InputError, match="empty atlas mask.*\\[7\\]"):
        check_atlas_masks(
            LabelMapMasks(labelmap, [1, 7]), (6, 7, 5), [labels[0], LabelInfo(7, "x", (0, 1, 0))]
        )
    with pytest.raises(InputError, match="3 atlas masks but 2"):
        check_atlas_masks(LabelMapMasks(labelmap, [1, 2, 3]), (6, 7, 5), labels)


def test_same_result_and_memory_does_not_hold_all_masks(lcs_bundle_path):
    bundle = load_bundle(lcs_bundle_path)
    atlas, affine = bundle.atlas_image()
    k = 120
    labelmap = _partition(atlas.shape, k)
    labels = [LabelInfo(v, f"label {v}", (0.5, 0.5, 0.5)) for v in range(1, k + 1)]
    # the paper's network with a small budget: many chunks (registration streams masks the same way)
    kwargs = dict(device="cpu", memory_budget_mb=2.0, align=False, method="lcs")
    stacked = np.stack([labelmap == v for v in range(1, k + 1)])
    expected = segment_atlas_labels(bundle, atlas, affine, stacked, labels, **kwargs).labelmap
    del stacked
    tracemalloc.start()
    try:
        got = segment_atlas_labels(
            bundle, atlas, affine, LabelMapMasks(labelmap, range(1, k + 1)), labels, **kwargs
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got.labelmap, expected)
    all_masks = k * labelmap.size  # bytes of the (K, grid) boolean array the old code built
    assert peak < all_masks / 2, (peak, all_masks)

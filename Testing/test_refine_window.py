"""The refine network sees a whole-head scan through the warped atlas's brain: skull and scalp around it are set
to the scan's background, as in its brain-only training scans, while the brain itself is kept."""

from __future__ import annotations

import numpy as np

from LabelSharingSegLib.engine.atlas_brain import BRAIN_MARGIN_MM
from LabelSharingSegLib.engine.preprocessing_config import IntensityConfig
from LabelSharingSegLib.engine.propagation import Propagation
from LabelSharingSegLib.engine.registered import refine_inputs
from LabelSharingSegLib.engine.registration import Alignment

SHAPE = (40, 40, 40)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _distance_from_centre() -> np.ndarray:
    index = np.indices(SHAPE).astype(np.float32)
    return np.sqrt(sum((index[i] - 19.5) ** 2 for i in range(3))) * 2.0  # mm


def test_skull_and_scalp_are_hidden_and_the_brain_kept():
    radius = _distance_from_centre()
    brain = radius < 24.0
    atlas = np.where(brain, 1.0 + 0.2 * np.cos(radius / 3.0), 0.0).astype(np.float32)
    head = atlas.copy()
    head[(radius > 28.0) & (radius < 34.0)] = 3.0  # a bright skull and scalp around the brain
    head += 0.01  # the scan's air is not exactly zero
    before = head.copy()
    scan, warped = refine_inputs(
        atlas, AFFINE, IntensityConfig("zscore"), head, AFFINE, Propagation(Alignment(np.eye(4), 0.0))
    )
    scan = scan[0, 0].numpy()
    outside = radius > 24.0 + BRAIN_MARGIN_MM + 2.0
    inside = radius < 24.0
    assert np.ptp(scan[outside]) < 1e-5  # one level: the skull is gone
    assert scan[outside].max() < scan[inside].min()  # and it is the background's level, below the brain
    # the brain keeps its contrast: the scan equals the atlas there up to one linear map, as without a window
    np.testing.assert_allclose(np.corrcoef(scan[inside], warped[0, 0].numpy()[inside])[0, 1], 1.0, atol=1e-4)
    np.testing.assert_array_equal(head, before)  # the input is not modified

"""The shipped refine bundle (lcs-refine-brain-aal) loads, records how it was trained, and segments the demo's
held-out test case 000 above floors set about 0.1 below what docs/DEMO.md reports for that case: the fine AAL
labels drawn on the atlas (never trained), each decided on its own, and the trained coarse labels."""

from __future__ import annotations

import numpy as np
import pytest

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.labels import LabelInfo
from LabelSharingSegLib.engine.registered import refined_independently, segment_by_refinement

REFINE = "lcs-refine-brain-aal"
# measured on test case 000 (lcs-refine-brain-aal.evaluation.md, the 2 mm bundle with the brain window, 2 CPU
# cores): mean Dice of the 116 fine labels (each decided on its own) and of the 8 trained coarse labels
FINE_MEASURED, COARSE_MEASURED = 0.682, 0.834
FLOOR_MARGIN = 0.1


def _shipped():
    from lsseg_training.demo import shipped_bundles_dir

    return shipped_bundles_dir() / REFINE


def _dice(a, b) -> float:
    return float(2 * np.sum(a & b) / max(1, np.sum(a) + np.sum(b)))


@pytest.mark.skipif(not _shipped().exists(), reason="the refine bundle is not shipped in this checkout")
def test_shipped_refine_bundle_segments_fine_labels_above_floor(tmp_path):
    from lsseg_training.data.build import build_set
    from lsseg_training.datasets import as_volume, load_case, read_dataset
    from lsseg_training.demo import FULL
    from lsseg_training.demo_examples import _coarse_lut
    from lsseg_training.label_set_eval import labels_on_atlas_grid

    bundle = load_bundle(_shipped())
    assert bundle.kind == "lcs" and bundle.network_config.arch == "lcs_refine"
    training = bundle.manifest.training
    assert training["method"] == "lcs_refine" and training["device"] and training["seconds"] > 0
    brain = build_set(
        "brain-aal",
        tmp_path,
        cases=1,
        test_cases=1,
        spacing=FULL.brain_spacing,
        seed=FULL.seed,
        progress=None,
    )[0]
    dataset = read_dataset(brain)
    image, truth, affine = load_case(dataset.test[0])
    image, truth = as_volume(image[0]), as_volume(truth).astype(np.int64)
    atlas_labels, atlas_affine, coarse_infos = bundle.atlas_labels()
    fine_atlas = labels_on_atlas_grid(dataset, training["atlas_case"], atlas_affine, atlas_labels.shape)
    values = [int(v) for v in np.unique(fine_atlas) if v != 0]
    assert len(values) == 116
    infos = [LabelInfo(v, f"fine {v}", (1.0, 0.0, 0.0)) for v in values]
    fine_masks = np.stack([fine_atlas == v for v in values])
    decided, propagation = refined_independently(bundle, image, affine, fine_masks, infos, device="cpu")
    # a registration passed in (as the evaluation shares one per scan) is used, not computed again
    again, reused = refined_independently(
        bundle, image, affine, fine_masks, infos, device="cpu", propagation=propagation
    )
    assert reused is propagation and np.array_equal(again, decided)
    fine = np.mean([_dice(mask, truth == v) for mask, v in zip(decided, values) if (truth == v).any()])
    assert fine >= FINE_MEASURED - FLOOR_MARGIN, fine

    coarse_masks = np.stack([atlas_labels == info.value for info in coarse_infos])
    result = segment_by_refinement(
        bundle, image, affine, coarse_masks, coarse_infos, None, "cpu", None, None, None, None, propagation
    )
    coarse_truth = _coarse_lut(brain, int(truth.max()))[truth]
    coarse = np.mean([_dice(result.labelmap == i.value, coarse_truth == i.value) for i in coarse_infos])
    assert coarse >= COARSE_MEASURED - FLOOR_MARGIN, coarse

"""``lsseg train lcs --loss competing --label-draw neighbours``: the labels conditioned on one image compete in one
softmax whose decision is the one inference takes, and they can be drawn among the labels that border each other on
the atlas, where that decision is made."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import TINY, lsseg, phantoms

from LabelSharingSegLib.engine.atlas_segmentation import LCS_THRESHOLD, keep_most_probable
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.network_config import network_config_from_dict
from LabelSharingSegLib.engine.networks import build_network
from LabelSharingSegLib.engine.preprocessing_config import Preprocessing
from lsseg_training.api import LCSRunConfig
from lsseg_training.methods import LCSMethod, atlas_neighbours, competing_probabilities


def _stripes(shape=(12, 12, 12)) -> np.ndarray:
    """Labels 1..4 as slabs along axis 0 (so each borders only the next), label 5 an island inside slab 1."""
    atlas = np.zeros(shape, dtype=np.int64)
    for value, start in enumerate(range(0, 12, 3), start=1):
        atlas[start : start + 3, 1:-1, 1:-1] = value
    atlas[1, 5:7, 5:7] = 5
    return atlas


def test_the_softmax_decides_as_inference_and_is_the_sigmoid_for_one_label():
    torch.manual_seed(0)
    logits = torch.randn(8, 1, 5, 5, 5) * 3
    assert torch.allclose(competing_probabilities(logits, 1), torch.sigmoid(logits))
    probs = competing_probabilities(logits, 4).reshape(2, 4, 5, 5, 5)
    none = 1 - probs.sum(dim=1)
    assert (none > 0).all()  # the fixed 'none of them' logit always keeps some probability
    for image in range(2):
        group = logits.reshape(2, 4, 5, 5, 5)[image]
        # inference: every label's sigmoid, the most probable kept, background below the threshold
        best, index = keep_most_probable(
            torch.zeros(5, 5, 5), torch.zeros(5, 5, 5, dtype=torch.int32), torch.sigmoid(group), 0
        )
        inferred = torch.where(best >= LCS_THRESHOLD, index.long() + 1, torch.zeros_like(index.long()))
        softmax_choice = torch.cat([none[image][None], probs[image]]).argmax(dim=0)
        assert torch.equal(inferred, softmax_choice)


def test_neighbours_are_the_labels_that_touch_face_to_face():
    atlas = _stripes()
    assert atlas_neighbours(atlas, [1, 2, 3, 4, 5]) == {1: [2, 5], 2: [1, 3], 3: [2, 4], 4: [3], 5: [1]}
    # labels outside the trained set are not neighbours; background never is
    assert atlas_neighbours(atlas, [1, 3, 4]) == {1: [], 3: [4], 4: [3]}
    flat = atlas[:, :, 6]  # 2D: the same on one slice
    assert atlas_neighbours(flat, [1, 2, 3, 4, 5])[2] == [1, 3]


def _network():
    return network_config_from_dict(
        {
            "arch": "lcs",
            "spatial_dims": 3,
            "out_channels": 1,
            "channels": [4, 8],
            "conditioning": "every-level",
        }
    )


def _method(**options) -> LCSMethod:
    atlas = _stripes()
    prep = Preprocessing.from_dict({"spatial_dims": 3, "spacing": [1, 1, 1], "patch_size": [12, 12, 12]})
    image = torch.as_tensor(atlas, dtype=torch.float32)
    return LCSMethod(image, torch.as_tensor(atlas), [1, 2, 3, 4, 5], _network(), prep, **options)


def test_competing_sets_are_disjoint_and_neighbours_come_first():
    method = _method(labels_per_image=3, loss="competing", label_draw="neighbours", merge_prob=0.5)
    rng = np.random.default_rng(1)
    merged = 0
    for _ in range(200):
        sets = method.draw_label_sets(rng)
        assert len(sets) == 3
        flat = [v for s in sets for v in s]
        assert len(flat) == len(set(flat))  # a voxel's truth is at most one of them
        first, second = sets[0][0], sets[1][0]
        assert second in method.neighbours[first]  # every label here has at least one neighbour
        if len(method.neighbours[first]) >= 2:
            assert sets[2][0] in method.neighbours[first]
        else:  # filled at random, still distinct
            assert sets[2][0] not in (first, second)
        merged += sum(len(s) == 2 for s in sets)
    assert merged > 100  # merges still happen, drawn from the labels left free


def test_more_labels_per_image_than_the_atlas_has_is_refused():
    with pytest.raises(
        InputError, match="--labels-per-image 6 asks for more labels per image than the atlas has"
    ):
        _method(labels_per_image=6)  # the atlas has 5 labels
    assert _method(labels_per_image=5).labels_per_image == 5


def test_competing_loss_gives_every_parameter_a_finite_gradient():
    method = _method(labels_per_image=2, loss="competing", label_draw="neighbours", merge_prob=0.0)
    atlas = torch.as_tensor(_stripes())
    items = method.prepare_items([{"image": atlas[None].float(), "label": atlas}])
    method.make_sampler(items, 0.5, augment=False)
    batch = method.batch(0, 0, 0, 2)
    assert batch["atlas_mask"].shape[0] == 4 and batch["image"].shape[0] == 2
    torch.manual_seed(0)
    model = build_network(_network())
    loss = method.loss(model, batch, torch.device("cpu"))
    assert torch.isfinite(loss) and 0 < loss.item() < 1
    loss.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad
    )


@pytest.mark.parametrize(
    "options, wording",
    [
        ({"loss": "competing"}, "give --labels-per-image 2 or more"),
        ({"label_draw": "neighbours"}, "give --labels-per-image 2 or more"),
        ({"label_draw": "nearby", "labels_per_image": 2}, "--label-draw must be one of random, neighbours"),
        ({"label_draw": "neighbours", "labels_per_image": 2, "arch": "lcs_refine"}, "not lcs_refine"),
    ],
)
def test_options_that_cannot_work_are_refused(tmp_path, options, wording):
    with pytest.raises(InputError, match=wording):
        LCSRunConfig(tmp_path / "data", tmp_path / "out", **options)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantoms(tmp_path_factory.mktemp("phantoms"), tasks=1, cases=4)


def test_a_competing_run_records_its_options_and_refuses_a_resume_without_them(tmp_path, data, capsys):
    ckpt = tmp_path / "ck"
    common = ["train", "lcs", "--data", data[0], "--checkpoint-dir", ckpt, *TINY, "--labels-per-image", "2"]
    chosen = ["--loss", "competing", "--label-draw", "neighbours"]
    assert lsseg(*common, *chosen, "--out", tmp_path / "a", "--steps", 3) == 0
    training = json.loads((tmp_path / "a" / "bundle.json").read_text())["training"]
    assert training["loss"] == "competing" and training["label_draw"] == "neighbours"
    capsys.readouterr()
    for dropped in (["--loss", "competing"], ["--label-draw", "neighbours"]):
        assert lsseg(*common, *dropped, "--out", tmp_path / "b", "--steps", 6, "--resume") == 2
        assert "different training run" in capsys.readouterr().err
    assert lsseg(*common, *chosen, "--out", tmp_path / "b", "--steps", 6, "--resume") == 0

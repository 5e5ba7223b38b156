"""``lsseg train lcs --label-codes``: a learned code per trained atlas label scales and shifts the decoder beside
the label's atlas mask. Code 0 ("no code") is the network without codes, exactly; merged pairs and a share of the
single labels train on it, and inference gives a label its code only when its mask is the bundle's own atlas label
(a label drawn or edited on the atlas is decoded without one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import TINY, lsseg, phantoms

from LabelSharingSegLib.engine.atlas_segmentation import atlas_label_codes, segment_atlas_labels
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import ConfigError, InputError
from LabelSharingSegLib.engine.labels import LabelInfo
from LabelSharingSegLib.engine.network_config import LCSConfig, network_config_from_dict
from LabelSharingSegLib.engine.networks import build_network
from LabelSharingSegLib.engine.nifti_io import load_nifti
from LabelSharingSegLib.engine.preprocessing_config import Preprocessing
from lsseg_training.api import LCSRunConfig
from lsseg_training.methods import UNCODED_SHARE, LCSMethod


def _config(codes: int) -> LCSConfig:
    return LCSConfig(channels=(4, 8, 16), conditioning="every-level", label_codes=codes)


def _inputs(conditionings: int = 3):
    torch.manual_seed(1)
    image = torch.randn(1, 1, 16, 16, 16)
    atlas = torch.randn(1, 1, 16, 16, 16)
    masks = (torch.rand(conditionings, 1, 16, 16, 16) > 0.5).float()
    return image, atlas, masks


def test_code_zero_is_the_network_without_codes_and_never_learns():
    torch.manual_seed(0)
    plain = build_network(_config(0))
    torch.manual_seed(0)
    coded = build_network(_config(4))
    assert _config(4).parameter_count() == sum(p.numel() for p in coded.parameters())
    assert _config(4).parameter_count() - _config(0).parameter_count() == 2 * 5 * (16 + 8 + 4)
    image, atlas, masks = _inputs()
    reference = plain(image, atlas, masks)
    # untrained codes start at zero: every code decodes as the network without codes
    assert torch.equal(coded(image, atlas, masks, torch.tensor([0, 2, 4])), reference)
    assert torch.equal(coded(image, atlas, masks), reference)
    coded(image, atlas, masks, torch.tensor([0, 2, 4])).square().mean().backward()
    for table in (coded.code_scale, coded.code_shift):
        assert torch.all(table.weight.grad[0] == 0)  # "no code" stays the plain network
        assert torch.any(table.weight.grad[2] != 0) and torch.all(table.weight.grad[1] == 0)
    # a trained code changes its own conditioning only
    with torch.no_grad():
        coded.code_shift.weight[2] += 0.5
    out = coded(image, atlas, masks, torch.tensor([0, 2, 4]))
    assert torch.equal(out[0], reference[0]) and not torch.equal(out[1], reference[1])
    assert torch.equal(out[2], reference[2])


@pytest.mark.parametrize(
    "codes, wording",
    [(torch.tensor([0, 5, 1]), "label codes must lie in 0-4"), (torch.tensor([1]), "1 label codes")],
)
def test_codes_out_of_range_or_of_the_wrong_count_are_refused(codes, wording):
    with pytest.raises(InputError, match=wording):
        build_network(_config(4))(*_inputs(), codes)


def test_the_config_records_codes_only_when_there_are_some():
    assert "label_codes" not in _config(0).to_dict()
    assert network_config_from_dict(_config(7).to_dict()) == _config(7)
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="label_codes must be an integer >= 0"):
            network_config_from_dict({**_config(0).to_dict(), "label_codes": bad})


def _method(**options) -> LCSMethod:
    atlas = np.zeros((12, 12, 12), dtype=np.int64)
    for value, start in enumerate(range(0, 12, 3), start=1):
        atlas[start : start + 3, 1:-1, 1:-1] = value
    prep = Preprocessing.from_dict({"spatial_dims": 3, "spacing": [1, 1, 1], "patch_size": [12, 12, 12]})
    config = network_config_from_dict({**_config(4).to_dict(), "channels": [4, 8]})
    method = LCSMethod(
        torch.as_tensor(atlas, dtype=torch.float32),
        torch.as_tensor(atlas),
        [1, 2, 3, 4],
        config,
        prep,
        **options,
    )
    items = method.prepare_items(
        [{"image": torch.as_tensor(atlas)[None].float(), "label": torch.as_tensor(atlas)}]
    )
    return method.make_sampler(items, 0.5, augment=False)


def test_single_labels_mostly_train_with_their_code_merged_pairs_never():
    method = _method(label_codes=True, merge_prob=0.5, labels_per_image=2)
    rng = np.random.default_rng(0)
    coded = single = 0
    for _ in range(400):
        sets = method.draw_label_sets(rng)
        for chosen, code in zip(sets, method.draw_codes(rng, sets)):
            if len(chosen) == 2:
                assert code == 0
            else:
                single += 1
                assert code in (0, chosen[0])  # code k is the k-th label value, here the value itself
                coded += code != 0
    assert abs(coded / single - (1 - UNCODED_SHARE)) < 0.06
    batch = method.batch(0, 0, 0, 2)
    assert batch["codes"].shape == (4,) and batch["atlas_mask"].shape[0] == 4
    # without codes nothing is drawn for them and batches carry none
    plain = _method(merge_prob=0.5, labels_per_image=2)
    assert plain.draw_codes(rng, [[1]]) == [] and "codes" not in plain.batch(0, 0, 0, 2)


def test_label_codes_are_refused_with_the_refine_network(tmp_path):
    with pytest.raises(InputError, match="--label-codes are options of --arch lcs, not lcs_refine"):
        LCSRunConfig(tmp_path / "data", tmp_path / "out", arch="lcs_refine", label_codes=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("codes")
    data = phantoms(root / "data", tasks=1, dims=3, size=16, cases=4)[0]
    common = ["train", "lcs", "--data", data, "--checkpoint-dir", root / "ck", *TINY, "--label-codes"]
    assert lsseg(*common, "--out", root / "bundle", "--steps", 3, "--channels", "4,8") == 0
    return data, root


def test_a_coded_run_records_its_codes_and_refuses_a_resume_without_them(trained, capsys):
    data, root = trained
    manifest = json.loads((root / "bundle" / "bundle.json").read_text())
    assert manifest["training"]["label_codes"] is True
    assert manifest["network"]["label_codes"] == 3  # one per label of the phantom's atlas case
    capsys.readouterr()
    common = ["train", "lcs", "--data", data, "--checkpoint-dir", root / "ck", *TINY, "--channels", "4,8"]
    assert lsseg(*common, "--out", root / "again", "--steps", 6, "--resume") == 2
    assert "different training run" in capsys.readouterr().err


def test_inference_codes_only_the_bundles_own_atlas_labels(trained):
    data, root = trained
    bundle = load_bundle(root / "bundle")
    labelmap, _, infos = bundle.atlas_labels()
    own = np.stack([labelmap == info.value for info in infos])
    assert atlas_label_codes(bundle, own, infos) == [1, 2, 3]
    edited = own.copy()
    edited[0] = np.roll(edited[0], 1, axis=0)  # the first label's value, redrawn one voxel over
    drawn = LabelInfo(99, "drawn", (1, 2, 3))
    assert atlas_label_codes(bundle, np.concatenate([edited, own[1:2]]), [infos[0], drawn]) == [0, 0]
    # the codes reach the network: a trained code's answer differs from the same mask decoded without it
    network = bundle.build_network(torch.device("cpu"))
    with torch.no_grad():
        network.code_shift.weight[1:] += 3.0
    image, affine = load_nifti(next((data / "imagesTs").glob("*.nii.gz")))
    kwargs = {"device": "cpu", "network": network, "method": "lcs"}
    coded = segment_atlas_labels(bundle, image, affine, own[:1], infos[:1], **kwargs).labelmap
    uncoded = segment_atlas_labels(bundle, image, affine, own[:1], [LabelInfo(98, "same outline", (1, 1, 1))],
                                   **kwargs).labelmap  # fmt: skip
    assert (coded == infos[0].value).sum() != (uncoded == 98).sum()

"""Label sharing's variants for measuring why it trails (issue #15): a task code (``unet_film``), a shuffled
label mapping and task sampling by label count. Each keeps ``n* + 1`` outputs and one network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import TINY, lsseg, phantoms

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import ConfigError, InputError
from LabelSharingSegLib.engine.labelspace import SharedLabelSpace, TaskSizes
from LabelSharingSegLib.engine.network_config import TaskFiLMUNetConfig, UNetConfig, network_config_from_dict
from LabelSharingSegLib.engine.networks import build_network
from lsseg_training.samples import PatchSampler


def test_task_code_starts_as_the_plain_unet_and_then_depends_on_the_task():
    config = TaskFiLMUNetConfig(spatial_dims=2, channels=(4, 8, 16), out_channels=4, num_tasks=2)
    film = build_network(config).eval()
    plain = build_network(UNetConfig(spatial_dims=2, channels=(4, 8, 16), out_channels=4)).eval()
    plain.load_state_dict({k: v for k, v in film.state_dict().items() if not k.startswith("task_")})
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(film(x, torch.tensor([0, 1, 0])), plain(x), atol=1e-6)  # codes start neutral
        film.task_scale.weight[1].uniform_(-0.5, 0.5)
        out = film(x, torch.tensor([0, 1, 1]))
        assert torch.allclose(out[0], plain(x)[0], atol=1e-6)  # task 0 still the plain network
        assert not torch.allclose(out[1], plain(x)[1], atol=1e-3)  # task 1 modulated
        assert torch.allclose(film(x, torch.tensor(1)), out_all_task1 := film(x, torch.tensor([1, 1, 1])))
    assert out_all_task1.shape == (3, 4, 16, 16)  # n* + 1 outputs, as the plain U-Net


def test_task_code_configs_are_validated():
    with pytest.raises(ConfigError, match="network.num_tasks"):
        network_config_from_dict({"arch": "unet_film", "spatial_dims": 2, "num_tasks": 0})
    with pytest.raises(ConfigError, match="unknown key.*num_tasks"):
        network_config_from_dict({"arch": "unet", "num_tasks": 2})


@pytest.fixture(scope="module")
def film_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("film")
    data = phantoms(root / "data", tasks=3, cases=3)
    out = root / "film"
    command = ["train", "labelsharing", "--data", data[0], data[1], "--out", out, "--steps", 2, "--task-film"]
    assert lsseg(*command, "--val-labels", 1, *TINY) == 0
    return root, data, out


def test_labelsharing_with_a_task_code_trains_segments_and_takes_new_tasks(film_bundle, tmp_path):
    root, data, out = film_bundle
    bundle = load_bundle(out)
    assert bundle.network_config.arch == "unet_film" and bundle.network_config.num_tasks == 2
    assert bundle.network_config.out_channels == bundle.label_space.n_shared + 1
    assert (
        lsseg("evaluate", out, "--data", data[0], data[1], "--out", tmp_path / "eval", "--device", "cpu") == 0
    )
    # the task index reaches the network at inference: another task's code changes the prediction
    from LabelSharingSegLib.engine.inference import segment_task
    from lsseg_training.datasets import as_volume, load_case, read_dataset

    case = read_dataset(data[0]).test[0]
    image, _, affine = load_case(case)
    network = bundle.build_network("cpu")
    first = segment_task(bundle, as_volume(image[0]), affine, "Phantom0", device="cpu", network=network)
    with torch.no_grad():
        network.task_shift.weight[0].fill_(50.0)
    second = segment_task(bundle, as_volume(image[0]), affine, "Phantom0", device="cpu", network=network)
    assert (
        not np.array_equal(first.labelmap, second.labelmap) or first.labelmap.max() != second.labelmap.max()
    )

    # add-task gives the new task its own (neutral) code and keeps the old ones
    plus = tmp_path / "plus"
    assert lsseg("add-task", out, "--data", data[2], "--out", plus, "--steps", 1, "--widen", *TINY) == 0
    added = load_bundle(plus)
    assert added.network_config.arch == "unet_film" and added.network_config.num_tasks == 3
    assert added.state_dict["task_scale.weight"].shape[0] == 3


def test_a_bundle_whose_task_codes_do_not_match_its_tasks_is_refused(film_bundle, tmp_path):
    import json
    import shutil

    _, _, out = film_bundle
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["network"]["num_tasks"] = 3
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="network.num_tasks 3 != 2 tasks"):
        load_bundle(copy)
    manifest["network"]["num_tasks"] = 2
    manifest["kind"] = "multichannel"
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="a multichannel bundle needs a unet network, not unet_film"):
        load_bundle(copy)


def test_options_of_label_sharing_are_refused_elsewhere(tmp_path, capsys):
    data = phantoms(tmp_path / "data", tasks=1, cases=3)
    for kind, option in (("multichannel", "--task-film"), ("dodnet", "--label-mapping=shuffled")):
        assert lsseg("train", kind, "--data", *data, "--out", tmp_path / kind, option, *TINY) == 2
        assert "options of labelsharing training" in capsys.readouterr().err
    assert lsseg("train", "lcs", "--data", data[0], "--out", tmp_path / "lcs", "--task-film", *TINY) == 2
    assert "not lcs" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("multichannel", "dodnet", "lcs"))


def _sizes(task: str, count: int) -> TaskSizes:
    labels = {v: f"l{v}" for v in range(1, count + 1)}
    return TaskSizes(task, labels, {v: 1.0 / (v + 1) for v in labels})


def test_shuffled_mapping_is_seeded_and_keeps_each_task_on_its_own_channels():
    tasks = [_sizes("a", 3), _sizes("b", 8)]
    rank = SharedLabelSpace.build(tasks)
    shuffled = SharedLabelSpace.build(tasks, shuffle_seed=0)
    assert shuffled.task_to_shared("b") == SharedLabelSpace.build(tasks, shuffle_seed=0).task_to_shared("b")
    assert shuffled.task_to_shared("b") != rank.task_to_shared("b")
    for task in ("a", "b"):
        assert sorted(shuffled.task_to_shared(task).values()) == sorted(rank.task_to_shared(task).values())
    assert shuffled.n_shared == rank.n_shared == 8


def test_task_sampling_by_label_count():
    items = [{"label": torch.zeros(8, 8, 1, dtype=torch.long), "task": t} for t in (0, 0, 1, 2)]
    weights = {0: 2.0, 1: 6.0, 2: 12.0}
    sampler = PatchSampler(items, (8, 8), 2, 0.0, weights)
    rng = np.random.default_rng(0)
    drawn = np.bincount([sampler.locate(rng)[1] for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(drawn, [0.1, 0.3, 0.6], atol=0.03)
    uniform = PatchSampler(items, (8, 8), 2, 0.0)
    drawn = np.bincount([uniform.locate(rng)[1] for _ in range(3000)], minlength=3) / 3000
    assert np.allclose(drawn, [1 / 3] * 3, atol=0.03)


def test_settings_refuse_unknown_choices():
    from lsseg_training.api import TrainSettings

    with pytest.raises(InputError, match="--task-sampling must be one of uniform, labels"):
        TrainSettings(task_sampling="cases")
    with pytest.raises(InputError, match="--label-mapping must be one of rank, shuffled"):
        TrainSettings(label_mapping="random")

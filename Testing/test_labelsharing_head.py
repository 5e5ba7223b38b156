"""Label sharing with DoD-Net's head (``--head``, issue #15 item 5): the DoD-Net-style head over label sharing's
``n* + 1`` shared outputs, generated from the task code and the image (``dynamic``, the default), the task code
only (``task``) or the same for every task (``mlp``); trained, segmented, and widened by add-task without losing
the old tasks. The published head (``linear``) stays one option away and is what the experiments measure."""

from __future__ import annotations

import pytest
import torch
from train_helpers import TINY, lsseg, phantoms

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import ConfigError, InputError
from LabelSharingSegLib.engine.network_config import DoDNetConfig, network_config_from_dict
from LabelSharingSegLib.engine.networks import build_network
from lsseg_training.add_task import _head_rows, widen_state


def _config(inputs: str, tasks: int = 2, outputs: int = 4) -> DoDNetConfig:
    return DoDNetConfig(
        spatial_dims=2, channels=(4, 8, 16), out_channels=outputs, num_tasks=tasks, controller_inputs=inputs
    )


def test_what_the_head_is_generated_from():
    x = torch.randn(2, 1, 16, 16)
    torch.manual_seed(0)
    shared = build_network(_config("none")).eval()
    per_task = build_network(_config("task")).eval()
    with torch.no_grad():
        assert torch.equal(shared(x, torch.tensor([0, 0])), shared(x, torch.tensor([1, 1])))
        assert not torch.allclose(per_task(x, torch.tensor([0, 0])), per_task(x, torch.tensor([1, 1])))
        # the task-only head does not depend on the rest of the batch: one sample alone gives the same (to float
        # rounding: a batch of one and of two may take different convolution kernels)
        assert torch.allclose(
            per_task(x[:1], torch.tensor(1)), per_task(x, torch.tensor([1, 0]))[:1], atol=1e-5
        )
    assert shared.controller.in_features == 1 and per_task.controller.in_features == 2
    assert build_network(_config("image+task")).controller.in_features == 16 + 2
    assert build_network(_config("image")).controller.in_features == 16
    assert build_network(_config("detached-image+task")).controller.in_features == 16 + 2
    for inputs in ("none", "task", "image", "image+task", "detached-image", "detached-image+task"):
        config = _config(inputs)
        assert config.parameter_count() == sum(p.numel() for p in build_network(config).parameters())


@pytest.mark.parametrize("inputs", ["image+task", "image"])
def test_detached_image_features_same_head_no_gradient_into_the_unet(inputs):
    """``detached-``: the same forward pass as the attached head with the same weights, but the controller passes
    no gradient back into the bottleneck (what the ablation removes), while the controller itself still learns."""
    torch.manual_seed(2)
    attached = build_network(_config(inputs)).eval()
    detached = build_network(_config(f"detached-{inputs}")).eval()
    detached.load_state_dict(attached.state_dict())
    x, task = torch.randn(2, 1, 16, 16), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(attached(x, task), detached(x, task))
    bottom = torch.randn(2, 16, 4, 4, requires_grad=True)
    for net, reaches_bottom in ((attached, True), (detached, False)):
        generated = net.controller(net._controller_input(bottom, task))
        (grad,) = torch.autograd.grad(generated.square().sum(), bottom, allow_unused=True)
        assert (grad is not None and grad.abs().sum() > 0) == reaches_bottom
    detached.train()
    detached(x, task).square().mean().backward()
    assert detached.controller.weight.grad.abs().sum() > 0  # the head still learns from the image


def test_dodnet_bundles_written_before_the_option_read_and_write_unchanged():
    written = _config("image+task").to_dict()
    assert "controller_inputs" not in written  # DoD-Net as it was: same network JSON, same run fingerprints
    assert network_config_from_dict(written).controller_inputs == "image+task"
    assert network_config_from_dict(_config("task").to_dict()).controller_inputs == "task"
    with pytest.raises(ConfigError, match="network.controller_inputs"):
        network_config_from_dict({**written, "controller_inputs": "label"})


@pytest.mark.parametrize("inputs", ["image+task", "task", "image", "none", "detached-image+task"])
def test_widening_keeps_every_old_task_and_channel_exactly(inputs):
    """add-task with more tasks and more shared outputs: the old tasks' logits on the old channels are unchanged."""
    torch.manual_seed(1)
    old_config, new_config = _config(inputs, tasks=2, outputs=4), _config(inputs, tasks=3, outputs=6)
    old = build_network(old_config).eval()
    with torch.no_grad():
        for p in old.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # trained-looking weights, not the initial ones
    new = build_network(new_config).eval()
    new.load_state_dict(widen_state(old.state_dict(), new, old_config))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        for task in (0, 1):
            before, after = old(x, torch.tensor(task)), new(x, torch.tensor(task))
            assert torch.allclose(after[:, :4], before, atol=1e-5)
        if "task" in inputs:  # the new task starts from the old tasks' average head
            image = 16 if "image" in inputs else 0
            rows = _head_rows(old_config, new_config)
            average = old.controller.weight[:, image : image + 2].mean(dim=1)
            assert torch.allclose(new.controller.weight[rows, image + 2], average, atol=1e-6)


def _train_two_tasks(data, out, steps: int, *options) -> int:
    return lsseg(
        "train", "labelsharing", "--data", data[0], data[1], "--out", out, "--steps", steps, *options, *TINY
    )


@pytest.fixture(scope="module")
def head_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("head")
    data = phantoms(root / "data", tasks=3, cases=3)
    out = root / "dynamic"
    assert _train_two_tasks(data, out, 2) == 0  # no --head: the dynamic head is label sharing's default
    return root, data, out


def test_labelsharing_with_dodnets_head_trains_segments_and_takes_new_tasks(head_bundle, tmp_path):
    root, data, out = head_bundle
    bundle = load_bundle(out)
    assert bundle.kind == "labelsharing" and bundle.network_config.arch == "dodnet"
    assert bundle.network_config.out_channels == bundle.label_space.n_shared + 1  # still n* + 1 outputs
    assert bundle.network_config.num_tasks == 2
    assert (
        lsseg("evaluate", out, "--data", data[0], data[1], "--out", tmp_path / "eval", "--device", "cpu") == 0
    )
    assert (tmp_path / "eval" / "metrics.csv").is_file()
    plus = tmp_path / "plus"
    assert lsseg("add-task", out, "--data", data[2], "--out", plus, "--steps", 1, "--widen", *TINY) == 0
    added = load_bundle(plus)
    assert added.network_config.arch == "dodnet" and added.network_config.num_tasks == 3
    assert added.network_config.out_channels == added.label_space.n_shared + 1


def test_head_is_an_option_of_labelsharing_only(tmp_path, capsys):
    from lsseg_training.api import TrainSettings

    data = phantoms(tmp_path / "data", tasks=1, cases=3)
    assert (
        lsseg("train", "multichannel", "--data", *data, "--out", tmp_path / "mc", "--head", "task", *TINY)
        == 2
    )
    assert "options of labelsharing training" in capsys.readouterr().err
    assert lsseg("train", "lcs", "--data", data[0], "--out", tmp_path / "lcs", "--head", "mlp", *TINY) == 2
    assert "not lcs" in capsys.readouterr().err
    assert not (tmp_path / "mc").exists() and not (tmp_path / "lcs").exists()
    with pytest.raises(InputError, match="--head must be one of linear, dynamic, task, image, mlp"):
        TrainSettings(head="wide")
    with pytest.raises(InputError, match="--task-film and --head task"):
        TrainSettings(head="task", task_film=True)


def test_which_head_each_method_trains_with():
    from lsseg_training.api import TaskRunConfig, TrainSettings

    def head(kind: str, **settings) -> str | None:
        return TaskRunConfig(kind, data=("d",), out="o", settings=TrainSettings(**settings)).settings.head

    assert TrainSettings().head is None  # settled by the method, so the checkpoint records what trained
    assert head("labelsharing") == "dynamic"
    assert head("labelsharing", head="linear") == "linear"
    assert head("labelsharing", task_film=True) == "linear"  # a task code replaces the generated head
    for kind in ("individual", "multichannel", "dodnet"):
        assert head(kind) == "linear"


def test_the_published_head_on_request_and_in_the_experiments(head_bundle, tmp_path):
    from lsseg_training.experiments.runner import Budget, _settings

    _, data, _ = head_bundle
    out = tmp_path / "published"
    assert _train_two_tasks(data, out, 1, "--head", "linear") == 0
    assert load_bundle(out).network_config.arch == "unet"
    # the experiments measure the papers' claims: label sharing as published unless a variant sets its head
    budget = Budget(steps=1)
    assert _settings(budget, tmp_path / "ckpt").head == "linear"
    assert _settings(Budget(steps=1, extra={"head": "dynamic"}), tmp_path / "ckpt").head == "dynamic"


def test_detached_head_trains_into_a_bundle_and_an_experiment_variant(head_bundle, tmp_path):
    from lsseg_training.experiments.variants import VARIANTS

    _, data, _ = head_bundle
    out = tmp_path / "detached"
    assert _train_two_tasks(data, out, 2, "--head", "dynamic-detached") == 0
    bundle = load_bundle(out)
    assert (bundle.network_config.arch, bundle.network_config.controller_inputs) == (
        "dodnet",
        "detached-image+task",
    )
    assert VARIANTS["detached-head"].settings == {"head": "dynamic-detached"}
    assert VARIANTS["detached-image-head"].settings == {"head": "image-detached"}

"""Network output shapes (2D/3D, every architecture), LCS split and config validation."""

from __future__ import annotations

import pytest
import torch

from LabelSharingSegLib.engine.errors import BundleError
from LabelSharingSegLib.engine.networks import build_network, complete_config, downsample_factor


@pytest.mark.parametrize("dims", [2, 3])
def test_output_shapes(dims):
    size = (1, 1) + (16,) * dims
    config = {"spatial_dims": dims, "channels": [4, 8, 16], "out_channels": 5}
    assert build_network(config)(torch.randn(size)).shape == (1, 5) + (16,) * dims
    lcs = build_network({**config, "arch": "lcs", "out_channels": 1})
    masks = torch.rand((3, 1) + (16,) * dims) > 0.5
    assert lcs(torch.randn(size), torch.randn(size), masks).shape == (3, 1) + (16,) * dims
    dod = build_network({**config, "arch": "dodnet", "num_tasks": 3})
    assert dod(torch.randn((2, 1) + (16,) * dims), torch.tensor([0, 2])).shape == (2, 5) + (16,) * dims


def test_dodnet_output_depends_on_task():
    torch.manual_seed(0)
    dod = build_network(
        {"arch": "dodnet", "spatial_dims": 2, "channels": [4, 8, 16], "out_channels": 3, "num_tasks": 2}
    ).eval()
    x = torch.randn(1, 1, 16, 16)
    assert not torch.allclose(dod(x, torch.tensor([0])), dod(x, torch.tensor([1])))


def test_lcs_conditioning_lives_on_the_bottleneck_grid():
    lcs = build_network({"arch": "lcs", "spatial_dims": 3, "out_channels": 1})  # paper: pools by 16
    assert downsample_factor(lcs.config) == 16
    cond = lcs.condition(torch.randn(1, 1, 32, 32, 32), torch.ones(4, 1, 32, 32, 32))
    assert cond.shape == (4, 2, 2, 2, 2)


def test_sizes_not_divisible_are_refused():
    net = build_network({"spatial_dims": 2, "channels": [4, 8, 16]})
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 18, 16))


def test_bad_configs():
    with pytest.raises(BundleError, match="unknown keys"):
        complete_config({"arch": "unet", "layers": 3})
    with pytest.raises(BundleError, match="unknown arch"):
        complete_config({"arch": "transformer"})
    with pytest.raises(BundleError, match="exactly one output"):
        complete_config({"arch": "lcs", "out_channels": 3})

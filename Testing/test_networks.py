"""Network output shapes (2D/3D, every architecture), LCS split, typed configs and their bounds."""

from __future__ import annotations

import pytest
import torch

from LabelSharingSegLib.engine.errors import BundleError, ConfigError, InputError
from LabelSharingSegLib.engine.network_config import (
    MAX_PARAMETERS,
    DoDNetConfig,
    LCSConfig,
    RefineLCSConfig,
    TaskFiLMUNetConfig,
    UNetConfig,
    network_config_from_dict,
)
from LabelSharingSegLib.engine.networks import build_network


@pytest.mark.parametrize("dims", [2, 3])
def test_output_shapes(dims):
    size = (1, 1) + (16,) * dims
    config = UNetConfig(spatial_dims=dims, channels=(4, 8, 16), out_channels=5)
    assert build_network(config)(torch.randn(size)).shape == (1, 5) + (16,) * dims
    lcs = build_network(LCSConfig(spatial_dims=dims, channels=(4, 8, 16)))
    masks = torch.rand((3, 1) + (16,) * dims) > 0.5
    assert lcs(torch.randn(size), torch.randn(size), masks).shape == (3, 1) + (16,) * dims
    dod = build_network(DoDNetConfig(spatial_dims=dims, channels=(4, 8, 16), out_channels=5, num_tasks=3))
    assert dod(torch.randn((2, 1) + (16,) * dims), torch.tensor([0, 2])).shape == (2, 5) + (16,) * dims


def test_dodnet_output_depends_on_task():
    torch.manual_seed(0)
    dod = build_network(
        network_config_from_dict(
            {"arch": "dodnet", "spatial_dims": 2, "channels": [4, 8, 16], "out_channels": 3, "num_tasks": 2}
        )
    ).eval()
    x = torch.randn(1, 1, 16, 16)
    assert not torch.allclose(dod(x, torch.tensor([0])), dod(x, torch.tensor([1])))


def test_lcs_conditioning_lives_on_the_bottleneck_grid():
    lcs = build_network(LCSConfig(spatial_dims=3))  # Ma et al. 2022: pools by 16
    assert lcs.config.downsample_factor == 16
    cond = lcs.condition(torch.randn(1, 1, 32, 32, 32), torch.ones(4, 1, 32, 32, 32))
    assert cond.shape == (4, 2, 2, 2, 2)


@pytest.mark.parametrize("conditioning", ["bottleneck", "every-level"])
@pytest.mark.parametrize("dims", [2, 3])
def test_lcs_conditionings_sharing_one_encoded_volume_equal_separate_volumes(conditioning, dims):
    """Several labels per training image: 2 images x 3 masks give what 6 separate image copies give, and
    every-level conditioning reaches each decoder level on its own grid."""
    torch.manual_seed(0)
    lcs = build_network(LCSConfig(spatial_dims=dims, channels=(4, 8, 16), conditioning=conditioning)).eval()
    grid = (16,) * dims
    images, atlas = torch.randn((2, 1) + grid), torch.randn((1, 1) + grid)
    masks = (torch.rand((6, 1) + grid) > 0.5).float()
    shared = lcs.decode_conditioned(lcs.encode(images), lcs.condition(atlas, masks))
    separate = lcs(images.repeat_interleave(3, dim=0), atlas, masks)
    assert shared.shape == (6, 1) + grid
    assert torch.allclose(shared, separate, atol=1e-6)
    cond = lcs.condition(atlas, masks)
    if conditioning == "bottleneck":
        assert cond.shape == (6, 2) + (4,) * dims
    else:  # the bottleneck, then the decoder levels coarsest first
        assert [c.shape[2:] for c in cond] == [(4,) * dims, (8,) * dims, (16,) * dims]
        # a mask change only at full resolution (invisible after pooling) still changes the output
        other = masks.clone()
        other[(0, 0) + (slice(0, 2),) * dims] = 1 - other[(0, 0) + (slice(0, 2),) * dims]
        assert not torch.equal(lcs(images[:1], atlas, other[:1]), lcs(images[:1], atlas, masks[:1]))
    with pytest.raises(InputError, match="cannot share 2 encoded volumes"):
        lcs.decode_conditioned(lcs.encode(images), lcs.condition(atlas, masks[:5]))


def test_sizes_not_divisible_are_refused():
    net = build_network(UNetConfig(spatial_dims=2, channels=(4, 8, 16)))
    with pytest.raises(InputError, match="divisible by 4"):
        net(torch.randn(1, 1, 18, 16))


CONFIGS = [
    UNetConfig(spatial_dims=2, channels=(4, 8, 16), out_channels=7),
    UNetConfig(spatial_dims=3, channels=(3, 5), in_channels=2, convs_per_level=2, norm="batch"),
    TaskFiLMUNetConfig(spatial_dims=2, channels=(4, 8, 16), out_channels=5, num_tasks=3),
    TaskFiLMUNetConfig(spatial_dims=3, channels=(3, 5), convs_per_level=2),
    LCSConfig(spatial_dims=3, channels=(4, 8, 16), in_channels=2, atlas_image_pool="max"),
    LCSConfig(spatial_dims=2, channels=(8, 16, 32, 64)),
    LCSConfig(spatial_dims=3, channels=(4, 8, 16), conditioning="every-level", convs_per_level=2),
    DoDNetConfig(spatial_dims=3, channels=(4, 8), out_channels=4, num_tasks=3, head_channels=5),
    DoDNetConfig(spatial_dims=2, channels=(4, 8, 16), convs_per_level=3),
    RefineLCSConfig(spatial_dims=3, channels=(6, 10)),
    RefineLCSConfig(spatial_dims=2, channels=(4, 8, 16), in_channels=2, convs_per_level=2, norm="batch"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.arch)
def test_parameter_count_is_exact(config):
    """The bound on size is checked before allocation, so the count must match the built network."""
    assert config.parameter_count() == sum(p.numel() for p in build_network(config).parameters())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.arch)
def test_round_trip(config):
    data = config.to_dict()
    assert network_config_from_dict(data) == config
    assert type(network_config_from_dict(data)) is type(config)
    assert data["arch"] == config.arch and isinstance(data["channels"], list)


def test_each_architecture_stores_only_its_own_settings():
    assert set(UNetConfig().to_dict()) == {
        "arch",
        "spatial_dims",
        "in_channels",
        "out_channels",
        "channels",
        "convs_per_level",
        "norm",
    }
    assert set(LCSConfig().to_dict()) - set(UNetConfig().to_dict()) == {"atlas_image_pool"}
    assert LCSConfig(conditioning="every-level").to_dict()["conditioning"] == "every-level"
    assert set(DoDNetConfig().to_dict()) - set(UNetConfig().to_dict()) == {"num_tasks", "head_channels"}
    with pytest.raises(ConfigError, match="unknown key.*num_tasks"):
        network_config_from_dict({"arch": "unet", "num_tasks": 1})


def test_schema_1_configs_with_every_architectures_keys_still_read():
    old = {
        "arch": "unet",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 23,
        "channels": [8, 16, 32, 64, 128],
        "convs_per_level": 1,
        "norm": "instance",
        "atlas_image_pool": "avg",
        "num_tasks": 1,
        "head_channels": 8,
    }
    config = network_config_from_dict(old, legacy=True)
    assert config == UNetConfig(spatial_dims=2, out_channels=23)
    with pytest.raises(ConfigError):
        network_config_from_dict(old)  # schema 2 refuses the foreign keys
    dod = network_config_from_dict({**old, "arch": "dodnet", "num_tasks": 3}, legacy=True)
    assert isinstance(dod, DoDNetConfig) and dod.num_tasks == 3


BAD_NETWORKS = [
    ({"arch": "unet", "layers": 3}, "unknown key"),
    ({"arch": "transformer"}, r"network\.arch must be one of unet, unet_film, lcs, lcs_refine, dodnet"),
    ({"arch": "lcs", "out_channels": 3}, r"out_channels of an lcs network must be 1"),
    ({"channels": [5_000_000, 8]}, r"network\.channels must be a list of 2 to 8 integers from 1 to 4096"),
    ({"channels": [8]}, r"network\.channels"),
    ({"channels": [8, 16.0]}, r"network\.channels"),
    ({"channels": "8,16"}, r"network\.channels"),
    ({"channels": [8, True]}, r"network\.channels"),
    ({"spatial_dims": 4}, r"network\.spatial_dims must be an integer from 2 to 3"),
    ({"spatial_dims": "3"}, r"network\.spatial_dims"),
    ({"out_channels": 0}, r"network\.out_channels"),
    ({"out_channels": 10**5000}, r"network\.out_channels .*an integer of \d+ bits"),
    ({"in_channels": float("inf")}, r"network\.in_channels"),
    ({"norm": "layer"}, r"network\.norm must be one of instance, batch"),
    ({"arch": "lcs", "atlas_image_pool": "median"}, r"network\.atlas_image_pool"),
    ({"arch": "dodnet", "num_tasks": 0}, r"network\.num_tasks"),
    ({"arch": "dodnet", "head_channels": 10**6}, r"network\.head_channels"),
    ({"channels": [4096] * 8}, r"parameters, more than the limit"),
    ([1, 2], r"network must be a JSON object"),
]


@pytest.mark.parametrize("data,message", BAD_NETWORKS)
def test_bad_network_configs_are_refused_with_the_field_named(data, message, monkeypatch):
    def no_allocation(*args, **kwargs):
        raise AssertionError("a tensor was allocated for a refused config")

    monkeypatch.setattr(torch.nn.Conv3d, "__init__", no_allocation)
    monkeypatch.setattr(torch.nn.Conv2d, "__init__", no_allocation)
    with pytest.raises(ConfigError, match=message) as error:
        network_config_from_dict(data, "net.json")
    assert str(error.value).startswith("net.json: ")
    assert isinstance(error.value, BundleError)  # a bundle with such a config is a bad bundle
    assert "\n" not in str(error.value)


def test_build_network_refuses_untyped_configs():
    with pytest.raises(TypeError, match="typed network config"):
        build_network({"arch": "unet"})
    assert MAX_PARAMETERS > CONFIGS[0].parameter_count()

"""Networks, all built from one config dict stored in the bundle.

* ``unet``   - the U-Net backbone with ``out_channels`` logits. Used by the label-sharing model
               (``n* + 1`` channels), the multi-channel baseline (1 + all labels) and individual models.
* ``lcs``    - label conditioned segmentation (Ma et al. 2022): the atlas image and one binary atlas mask are
               reduced to the bottleneck grid (mask max-pooled, image average-pooled, by 2**levels) and
               concatenated to the bottleneck input; one output channel (a logit; sigmoid gives the
               probability). Split into ``encode`` (label independent, run once per volume) and
               ``decode_conditioned`` (bottleneck + decoder, batched over atlas masks).
* ``lcs_refine`` - LCS that refines registration: the scan and the atlas image warped onto it are encoded once
               (label independent, full volume); a small local head sees those features and one atlas mask
               propagated by registration, at full resolution, and outputs the corrected mask's logit. The head
               has no normalisation and a receptive field of ``REFINE_HALO`` voxels, so it can run in a box
               around each propagated mask and give exactly what full-volume inference gives inside the box.
* ``dodnet`` - DoD-Net-style baseline: task one-hot + globally pooled bottleneck features -> a controller
               that generates the weights of a small dynamic head of 1x1 convolutions.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BundleError

ARCHITECTURES = ("unet", "lcs", "lcs_refine", "dodnet")
# voxels each side a refine head's output depends on (its receptive field radius, rounded up to the pooling 2)
REFINE_HALO = 12

DEFAULT_CONFIG: dict[str, Any] = {
    "arch": "unet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [8, 16, 32, 64, 128],  # Ma et al. 2022: 8 at full resolution, doubling per level
    "convs_per_level": 1,
    "norm": "instance",
    # lcs only
    "atlas_image_pool": "avg",
    # dodnet only
    "num_tasks": 1,
    "head_channels": 8,
}


def complete_config(config: dict) -> dict:
    """Fill defaults and validate; the completed dict is what bundles store."""
    if not isinstance(config, dict):
        raise BundleError("network config must be a JSON object")
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise BundleError(f"network config has unknown keys: {', '.join(sorted(unknown))}")
    full = copy.deepcopy(DEFAULT_CONFIG)
    full.update(copy.deepcopy(config))
    if full["arch"] not in ARCHITECTURES:
        raise BundleError(
            f"network config: unknown arch {full['arch']!r} (choose {', '.join(ARCHITECTURES)})"
        )
    if full["spatial_dims"] not in (2, 3):
        raise BundleError("network config: spatial_dims must be 2 or 3")
    channels = full["channels"]
    if not (
        isinstance(channels, list)
        and len(channels) >= 2
        and all(isinstance(c, int) and c > 0 for c in channels)
    ):
        raise BundleError("network config: channels must be a list of at least two positive integers")
    for key in ("in_channels", "out_channels", "convs_per_level", "num_tasks", "head_channels"):
        if not (isinstance(full[key], int) and full[key] >= 1):
            raise BundleError(f"network config: {key} must be a positive integer")
    if full["arch"] in ("lcs", "lcs_refine") and full["out_channels"] != 1:
        raise BundleError("network config: an lcs network has exactly one output channel")
    if full["norm"] not in ("instance", "batch"):
        raise BundleError("network config: norm must be 'instance' or 'batch'")
    if full["atlas_image_pool"] not in ("avg", "max"):
        raise BundleError("network config: atlas_image_pool must be 'avg' or 'max'")
    return full


def downsample_factor(config: dict) -> int:
    """Input sizes must be divisible by this (one 2x pooling per level below the top)."""
    return 2 ** (len(config["channels"]) - 1)


def _conv(dims: int):
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _norm(dims: int, kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(channels)
    return (nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d)(channels, affine=True)


class ConvBlock(nn.Sequential):
    """``count`` x (3^d conv -> norm -> LeakyReLU)."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, count: int, norm: str):
        layers: list[nn.Module] = []
        for i in range(count):
            layers += [
                _conv(dims)(in_ch if i == 0 else out_ch, out_ch, 3, padding=1),
                _norm(dims, norm, out_ch),
                nn.LeakyReLU(0.01, inplace=True),
            ]
        super().__init__(*layers)


class UNetBackbone(nn.Module):
    """Encoder levels (conv block, then 2x max-pool) -> bottleneck block -> decoder (2x up-conv, concat skip,
    conv block). ``bottleneck_extra`` adds input channels at the bottleneck (LCS conditioning)."""

    def __init__(self, config: dict, bottleneck_extra: int = 0):
        super().__init__()
        dims, ch, n = config["spatial_dims"], config["channels"], config["convs_per_level"]
        norm = config["norm"]
        self.dims = dims
        self.encoder = nn.ModuleList()
        in_ch = config["in_channels"]
        for c in ch[:-1]:
            self.encoder.append(ConvBlock(dims, in_ch, c, n, norm))
            in_ch = c
        self.pool = (nn.MaxPool3d if dims == 3 else nn.MaxPool2d)(2)
        self.bottleneck = ConvBlock(dims, ch[-2] + bottleneck_extra, ch[-1], n, norm)
        transpose = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(len(ch) - 2, -1, -1):
            self.upsamplers.append(transpose(ch[level + 1], ch[level], 2, stride=2))
            self.decoder.append(ConvBlock(dims, 2 * ch[level], ch[level], n, norm))
        self.out_features = ch[0]

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Returns the skip tensors (top level first) and the pooled bottleneck input."""
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        return skips, x

    def decode(
        self, bottleneck_input: torch.Tensor, skips: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (top-level decoder features, bottleneck features)."""
        bottom = self.bottleneck(bottleneck_input)
        x = bottom
        for up, block, skip in zip(self.upsamplers, self.decoder, reversed(skips)):
            x = up(x)
            if skip.shape[0] != x.shape[0]:  # skips of one encoded volume shared by a batch of masks
                skip = skip.expand(x.shape[0], *skip.shape[1:])
            x = block(torch.cat([x, skip], dim=1))
        return x, bottom


def _check_divisible(x: torch.Tensor, factor: int) -> None:
    if any(s % factor for s in x.shape[2:]):
        raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {factor}")


class UNet(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.backbone = UNetBackbone(config)
        self.head = _conv(config["spatial_dims"])(self.backbone.out_features, config["out_channels"], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_divisible(x, downsample_factor(self.config))
        skips, bottom_in = self.backbone.encode(x)
        features, _ = self.backbone.decode(bottom_in, skips)
        return self.head(features)


class LCSNet(nn.Module):
    """Label conditioned segmentation network (Ma et al. 2022)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.factor = downsample_factor(config)
        # conditioning channels: the atlas image channels + one binary mask
        self.backbone = UNetBackbone(config, bottleneck_extra=config["in_channels"] + 1)
        self.head = _conv(config["spatial_dims"])(self.backbone.out_features, 1, 1)

    def _pool(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        if self.config["spatial_dims"] == 3:
            return (F.max_pool3d if kind == "max" else F.avg_pool3d)(x, self.factor)
        return (F.max_pool2d if kind == "max" else F.avg_pool2d)(x, self.factor)

    def condition(self, atlas_image: torch.Tensor, atlas_masks: torch.Tensor) -> torch.Tensor:
        """Atlas image (1 or B, C, ...) and masks (B, 1, ...) -> conditioning on the bottleneck grid (B, C+1, ...)."""
        image = self._pool(atlas_image, self.config["atlas_image_pool"])
        masks = self._pool(atlas_masks.to(atlas_image.dtype), "max")
        if image.shape[0] != masks.shape[0]:
            image = image.expand(masks.shape[0], *image.shape[1:])
        return torch.cat([image, masks], dim=1)

    def encode(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Label-independent part: run once per target volume."""
        _check_divisible(image, self.factor)
        return self.backbone.encode(image)

    def decode_conditioned(
        self, encoded: tuple[list[torch.Tensor], torch.Tensor], conditioning: torch.Tensor
    ) -> torch.Tensor:
        """Label-dependent part for a batch of conditionings (B, C+1, bottleneck grid) -> logits (B, 1, ...).

        ``encoded`` may come from one volume (batch 1), broadcast to every conditioning.
        """
        skips, bottom_in = encoded
        if bottom_in.shape[0] != conditioning.shape[0]:
            bottom_in = bottom_in.expand(conditioning.shape[0], *bottom_in.shape[1:])
        features, _ = self.backbone.decode(torch.cat([bottom_in, conditioning], dim=1), skips)
        return self.head(features)

    def forward(
        self, image: torch.Tensor, atlas_image: torch.Tensor, atlas_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.decode_conditioned(self.encode(image), self.condition(atlas_image, atlas_mask))


class DoDNet(nn.Module):
    """Task-conditioned dynamic head (DoD-Net style): the controller maps [pooled bottleneck features, task
    one-hot] to the weights of three 1x1 convolutions applied to the decoder features."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.backbone = UNetBackbone(config)
        f, h, out = self.backbone.out_features, config["head_channels"], config["out_channels"]
        self.layer_shapes = [(h, f), (h, h), (out, h)]
        n_params = sum(o * i + o for o, i in self.layer_shapes)
        self.controller = nn.Linear(config["channels"][-1] + config["num_tasks"], n_params)
        self.feature_norm = _norm(config["spatial_dims"], config["norm"], f)

    def forward(self, x: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        _check_divisible(x, downsample_factor(self.config))
        skips, bottom_in = self.backbone.encode(x)
        features, bottom = self.backbone.decode(bottom_in, skips)
        features = F.leaky_relu(self.feature_norm(features), 0.01)
        pooled = bottom.flatten(2).mean(dim=2)
        onehot = F.one_hot(task_index.long().view(-1), self.config["num_tasks"]).to(pooled.dtype)
        if onehot.shape[0] != pooled.shape[0]:
            onehot = onehot.expand(pooled.shape[0], -1)
        params = self.controller(torch.cat([pooled, onehot], dim=1))
        return self._dynamic_head(features, params)

    def _dynamic_head(self, features: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        batch, dims = features.shape[0], self.config["spatial_dims"]
        conv = F.conv3d if dims == 3 else F.conv2d
        # grouped convolution applies each sample's own generated weights in one call
        x = features.reshape(1, -1, *features.shape[2:])
        offset = 0
        for layer, (o, i) in enumerate(self.layer_shapes):
            w = params[:, offset : offset + o * i].reshape(batch * o, i, *([1] * dims))
            offset += o * i
            b = params[:, offset : offset + o].reshape(batch * o)
            offset += o
            x = conv(x, w, b, groups=batch)
            if layer < len(self.layer_shapes) - 1:
                x = F.leaky_relu(x, 0.01)
        return x.reshape(batch, -1, *features.shape[2:])


class RefineLCSNet(nn.Module):
    """LCS that refines a registration-propagated mask (see the module docstring; inputs on one grid).

    ``encode(scan, warped_atlas)`` -> features (1, F, ...), label independent; ``refine(features, masks)`` with
    masks (B, 1, ...) in [0, 1] -> logits (B, 1, ...). The output starts as the propagated mask itself
    (``prior_gain * (2 m - 1)``, the correction's last layer initialised to zero), so an untrained network
    reproduces registration and training only has to learn corrections.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        dims, (c0, c1) = config["spatial_dims"], config["channels"][:2]
        conv = _conv(dims)
        self.encoder = nn.Sequential(
            ConvBlock(dims, 2 * config["in_channels"], c0, config["convs_per_level"], config["norm"]),
            conv(c0, c0, 3, padding=1),
            nn.LeakyReLU(0.01),
        )
        act = nn.LeakyReLU(0.01)
        self.top = nn.Sequential(conv(c0 + 1, c0, 3, padding=1), act, conv(c0, c0, 3, padding=1), act)
        self.pool = (nn.AvgPool3d if dims == 3 else nn.AvgPool2d)(2)
        self.low = nn.Sequential(conv(c0, c1, 3, padding=1), act, conv(c1, c1, 3, padding=1), act)
        self.up = (nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d)(c1, c0, 2, stride=2)
        self.merge = nn.Sequential(conv(2 * c0, c0, 3, padding=1), act)
        self.correction = conv(c0, 1, 1)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)
        self.prior_gain = nn.Parameter(torch.tensor(4.0))

    def encode(self, scan: torch.Tensor, warped_atlas: torch.Tensor) -> torch.Tensor:
        return self.encoder(torch.cat([scan, warped_atlas], dim=1))

    def refine(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Features (1 or B, F, ...) and propagated masks (B, 1, ...), sizes even -> logits (B, 1, ...)."""
        _check_divisible(masks, 2)
        if features.shape[0] != masks.shape[0]:
            features = features.expand(masks.shape[0], *features.shape[1:])
        masks = masks.to(features.dtype)
        top = self.top(torch.cat([features, masks], dim=1))
        low = self.up(self.low(self.pool(top)))
        out = self.correction(self.merge(torch.cat([top, low], dim=1)))
        return out + self.prior_gain * (2.0 * masks - 1.0)

    def forward(self, scan: torch.Tensor, warped_atlas: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.refine(self.encode(scan, warped_atlas), masks)


def build_network(config: dict) -> nn.Module:
    """Build the network a (completed or partial) config describes."""
    full = complete_config(config)
    return {"unet": UNet, "lcs": LCSNet, "lcs_refine": RefineLCSNet, "dodnet": DoDNet}[full["arch"]](full)

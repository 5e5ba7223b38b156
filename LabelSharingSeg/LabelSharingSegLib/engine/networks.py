"""Networks, each built from its typed config (:mod:`.network_config`) stored in the bundle.

* ``unet``   - the U-Net backbone with ``out_channels`` logits. Used by the label-sharing model
               (``n* + 1`` channels), the multi-channel baseline (1 + all labels) and individual models.
* ``lcs``    - label conditioned segmentation (Ma et al. 2022): the atlas image and one binary atlas mask are
               reduced to the bottleneck grid (mask max-pooled, image average-pooled, by 2**levels) and
               concatenated to the bottleneck input; one output channel (a logit; sigmoid gives the
               probability). Split into ``encode`` (label independent, run once per volume) and
               ``decode_conditioned`` (bottleneck + decoder, batched over atlas masks; several masks may share
               one encoded volume). ``conditioning='every-level'`` also feeds the atlas image and mask to every
               decoder level on its own grid (issue #15's conditioning variant; not in the paper).
* ``lcs_refine`` - LCS that refines registration: the scan and the atlas image warped onto it are encoded once
               (label independent, full volume); a small local head sees those features and one atlas mask
               propagated by registration, at full resolution, and outputs the corrected mask's logit. The head
               has no normalisation and a receptive field of ``REFINE_HALO`` voxels, so it can run in a box
               around each propagated mask and give exactly what full-volume inference gives inside the box.
* ``unet_film`` - label sharing's U-Net with a task code: per-task scale and shift of each decoder level's
               features (no extra output channels; an option for measuring task conditioning, issue #15).
* ``dodnet`` - DoD-Net-style baseline: task one-hot + globally pooled bottleneck features -> a controller
               that generates the weights of a small dynamic head of 1x1 convolutions (``controller_inputs``
               may drop either; label sharing can carry this head with its shared outputs, ``--head``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .network_config import (
    ARCHITECTURES,
    REFINE_HALO,
    BackboneConfig,
    DoDNetConfig,
    LCSConfig,
    NetworkConfig,
    RefineLCSConfig,
    TaskFiLMUNetConfig,
    UNetConfig,
    network_config_from_dict,
)

__all__ = [
    "ARCHITECTURES",
    "DoDNet",
    "LCSNet",
    "NetworkConfig",
    "REFINE_HALO",
    "RefineLCSNet",
    "TaskFiLMUNet",
    "UNet",
    "build_network",
    "network_config_from_dict",
]


def _conv(dims: int):
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _norm(dims: int, kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
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
    conv block). ``config.bottleneck_extra`` adds input channels at the bottleneck, ``config.decoder_extra`` at
    every decoder level (LCS conditioning)."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        dims, ch, n = config.spatial_dims, config.channels, config.convs_per_level
        norm = config.norm
        self.dims = dims
        self.encoder = nn.ModuleList()
        in_ch = config.in_channels
        for c in ch[:-1]:
            self.encoder.append(ConvBlock(dims, in_ch, c, n, norm))
            in_ch = c
        self.pool = (nn.MaxPool3d if dims == 3 else nn.MaxPool2d)(2)
        self.bottleneck = ConvBlock(dims, ch[-2] + config.bottleneck_extra, ch[-1], n, norm)
        transpose = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(len(ch) - 2, -1, -1):
            self.upsamplers.append(transpose(ch[level + 1], ch[level], 2, stride=2))
            self.decoder.append(ConvBlock(dims, 2 * ch[level] + config.decoder_extra, ch[level], n, norm))
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
        self,
        bottleneck_input: torch.Tensor,
        skips: list[torch.Tensor],
        level_inputs: list[torch.Tensor] | None = None,
        modulate=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (top-level decoder features, bottleneck features). ``level_inputs``: extra channels per
        decoder level, coarsest first (``config.decoder_extra`` each); ``modulate(features, level)``: applied to
        the bottleneck's output (level 0) and each decoder level's (1, 2, ...), e.g. a FiLM."""
        bottom = self.bottleneck(bottleneck_input)
        x = bottom if modulate is None else modulate(bottom, 0)
        for k, (up, block, skip) in enumerate(zip(self.upsamplers, self.decoder, reversed(skips))):
            x = up(x)
            parts = [x, share_batch(skip, x.shape[0])]
            if level_inputs is not None:
                parts.append(level_inputs[k])
            x = block(torch.cat(parts, dim=1))
            x = x if modulate is None else modulate(x, k + 1)
        return x, bottom


def share_batch(encoded: torch.Tensor, batch: int) -> torch.Tensor:
    """Features of ``n`` encoded volumes for a batch of ``batch`` conditionings, ``batch / n`` consecutive ones
    per volume (one volume: a view, no copy)."""
    n = encoded.shape[0]
    if n == batch:
        return encoded
    if n == 1:
        return encoded.expand(batch, *encoded.shape[1:])
    if batch % n:
        raise InputError(f"{batch} conditionings cannot share {n} encoded volumes equally")
    return encoded.repeat_interleave(batch // n, dim=0)


def _check_divisible(x: torch.Tensor, factor: int) -> None:
    if any(s % factor for s in x.shape[2:]):
        raise InputError(f"spatial size {tuple(x.shape[2:])} must be divisible by {factor}")


def film_widths(config) -> list[int]:
    """Channels of the features a FiLM modulates, in ``UNetBackbone.decode``'s level order: the bottleneck, then
    up the decoder."""
    return [config.channels[-1], *reversed(config.channels[:-1])]


def film(scale: nn.Embedding, shift: nn.Embedding, index: torch.Tensor, widths: list[int], dims: int):
    """``modulate(features, level)`` for ``UNetBackbone.decode``: ``features * (1 + scale) + shift`` with each
    sample's row (``index``, (B,)) of the two tables, split into one slice per level."""
    scales = scale(index).split(widths, dim=1)
    shifts = shift(index).split(widths, dim=1)
    shape = (index.shape[0], -1, *([1] * dims))

    def modulate(features: torch.Tensor, level: int) -> torch.Tensor:
        s, b = scales[level].view(shape), shifts[level].view(shape)
        return features * (1 + s.to(features.dtype)) + b.to(features.dtype)

    return modulate


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.backbone = UNetBackbone(config)
        self.head = _conv(config.spatial_dims)(self.backbone.out_features, config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_divisible(x, self.config.downsample_factor)
        skips, bottom_in = self.backbone.encode(x)
        features, _ = self.backbone.decode(bottom_in, skips)
        return self.head(features)


class LCSNet(nn.Module):
    """Label conditioned segmentation network (Ma et al. 2022)."""

    def __init__(self, config: LCSConfig):
        super().__init__()
        self.config = config
        self.factor = config.downsample_factor
        self.levels = len(config.channels)
        # conditioning channels (config.bottleneck_extra): the atlas image channels + one binary mask
        self.backbone = UNetBackbone(config)
        self.head = _conv(config.spatial_dims)(self.backbone.out_features, 1, 1)
        if config.label_codes:
            self.widths = film_widths(config)
            # code 0 ("no code") stays zero (padding_idx: never updated), so decoding without codes is exactly
            # decoding with code 0; the others start at zero too, the network as without codes
            self.code_scale = nn.Embedding(config.label_codes + 1, sum(self.widths), padding_idx=0)
            self.code_shift = nn.Embedding(config.label_codes + 1, sum(self.widths), padding_idx=0)
            nn.init.zeros_(self.code_scale.weight)
            nn.init.zeros_(self.code_shift.weight)

    def _pool(self, x: torch.Tensor, kind: str, factor: int) -> torch.Tensor:
        if factor == 1:
            return x
        if self.config.spatial_dims == 3:
            return (F.max_pool3d if kind == "max" else F.avg_pool3d)(x, factor)
        return (F.max_pool2d if kind == "max" else F.avg_pool2d)(x, factor)

    def _condition_at(
        self, atlas_image: torch.Tensor, atlas_masks: torch.Tensor, factor: int
    ) -> torch.Tensor:
        image = self._pool(atlas_image, self.config.atlas_image_pool, factor)
        masks = self._pool(atlas_masks.to(atlas_image.dtype), "max", factor)
        if image.shape[0] != masks.shape[0]:
            image = image.expand(masks.shape[0], *image.shape[1:])
        return torch.cat([image, masks], dim=1)

    def condition(self, atlas_image: torch.Tensor, atlas_masks: torch.Tensor) -> torch.Tensor | tuple:
        """Atlas image (1 or B, C, ...) and masks (B, 1, ...) -> conditioning on the bottleneck grid (B, C+1, ...);
        with every-level conditioning a tuple: that, then the same on each decoder level's grid, coarsest first.
        Callers pass it to ``decode_conditioned`` as it is."""
        bottleneck = self._condition_at(atlas_image, atlas_masks, self.factor)
        if self.config.conditioning != "every-level":
            return bottleneck
        levels = [
            self._condition_at(atlas_image, atlas_masks, self.factor >> k) for k in range(1, self.levels)
        ]
        return (bottleneck, *levels)

    def encode(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Label-independent part: run once per target volume."""
        _check_divisible(image, self.factor)
        return self.backbone.encode(image)

    def decode_conditioned(
        self,
        encoded: tuple[list[torch.Tensor], torch.Tensor],
        conditioning: torch.Tensor | tuple,
        codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Label-dependent part for a batch of B conditionings (from ``condition``) -> logits (B, 1, ...).

        ``encoded`` may come from fewer volumes than conditionings: one volume is broadcast to every
        conditioning, n volumes each serve B / n consecutive ones (several labels per volume in training).
        ``codes``: (B,) label codes of a network with ``label_codes`` (0 or None: no code).
        """
        skips, bottom_in = encoded
        parts = conditioning if isinstance(conditioning, tuple) else (conditioning,)
        bottom_in = share_batch(bottom_in, parts[0].shape[0])
        levels = list(parts[1:]) if len(parts) > 1 else None
        modulate = self._code_film(codes, parts[0].shape[0])
        features, _ = self.backbone.decode(torch.cat([bottom_in, parts[0]], dim=1), skips, levels, modulate)
        return self.head(features)

    def _code_film(self, codes: torch.Tensor | None, batch: int):
        """``features * (1 + scale) + shift`` of each conditioning's code at every decoder level; None without
        codes (the network as Ma et al. 2022 build it)."""
        if codes is None or not self.config.label_codes:
            return None
        codes = codes.long().view(-1).to(self.code_scale.weight.device)
        if codes.shape[0] != batch:
            raise InputError(f"{codes.shape[0]} label codes for {batch} conditionings")
        if bool(((codes < 0) | (codes > self.config.label_codes)).any()):
            raise InputError(f"label codes must lie in 0-{self.config.label_codes}")
        return film(self.code_scale, self.code_shift, codes, self.widths, self.config.spatial_dims)

    def forward(
        self,
        image: torch.Tensor,
        atlas_image: torch.Tensor,
        atlas_mask: torch.Tensor,
        codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.decode_conditioned(self.encode(image), self.condition(atlas_image, atlas_mask), codes)


class DoDNet(nn.Module):
    """Task-conditioned dynamic head (DoD-Net style): the controller maps [pooled bottleneck features, task
    one-hot] to the weights of three 1x1 convolutions applied to the decoder features."""

    def __init__(self, config: DoDNetConfig):
        super().__init__()
        self.config = config
        self.backbone = UNetBackbone(config)
        self.layer_shapes = config.head_layer_shapes
        self.controller = nn.Linear(config.controller_features, config.head_parameter_count)
        self.feature_norm = _norm(config.spatial_dims, config.norm, self.backbone.out_features)

    def forward(self, x: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        _check_divisible(x, self.config.downsample_factor)
        skips, bottom_in = self.backbone.encode(x)
        features, bottom = self.backbone.decode(bottom_in, skips)
        features = F.leaky_relu(self.feature_norm(features), 0.01)
        params = self.controller(self._controller_input(bottom, task_index))
        return self._dynamic_head(features, params)

    def _controller_input(self, bottom: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        """(B, controller_features): what the head's weights are generated from (``controller_inputs``)."""
        batch, parts = bottom.shape[0], []
        if "image" in self.config.controller_inputs:
            pooled = bottom.flatten(2).mean(dim=2)
            # detached: the head still adapts to the image, but the loss reaches the bottleneck only through the
            # decoder, as it does without a controller
            parts.append(pooled.detach() if self.config.controller_inputs.startswith("detached-") else pooled)
        if "task" in self.config.controller_inputs:
            onehot = F.one_hot(task_index.long().view(-1), self.config.num_tasks).to(bottom.dtype)
            parts.append(onehot.expand(batch, -1) if onehot.shape[0] != batch else onehot)
        if not parts:  # no conditioning: the controller's bias is the head
            return bottom.new_zeros(batch, 1)
        return torch.cat(parts, dim=1)

    def _dynamic_head(self, features: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        batch, dims = features.shape[0], self.config.spatial_dims
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
    reproduces registration and training only has to learn corrections. The head is ``REFINE_HALO`` plain 3^d
    convolutions (``channels[1]`` wide), no pooling and no normalisation: its output at a voxel depends on
    the features and the mask within ``REFINE_HALO`` voxels only, which is what lets it run in small boxes.
    The encoder has no normalisation by default either (``norm='none'``), so training on crops computes
    exactly what full-volume inference computes away from the crop's edges.
    """

    def __init__(self, config: RefineLCSConfig):
        super().__init__()
        self.config = config
        dims, (c0, c1) = config.spatial_dims, config.channels[:2]
        conv = _conv(dims)
        self.encoder = nn.Sequential(
            ConvBlock(dims, 2 * config.in_channels, c0, config.convs_per_level, config.norm),
            conv(c0, c0, 3, padding=1),
            nn.LeakyReLU(0.01),
        )
        layers: list[nn.Module] = []
        for i in range(REFINE_HALO):
            layers += [conv(c0 + 1 if i == 0 else c1, c1, 3, padding=1), nn.LeakyReLU(0.01)]
        self.head = nn.Sequential(*layers)
        self.correction = conv(c1, 1, 1)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)
        self.prior_gain = nn.Parameter(torch.tensor(4.0))

    def encode(self, scan: torch.Tensor, warped_atlas: torch.Tensor) -> torch.Tensor:
        return self.encoder(torch.cat([scan, warped_atlas], dim=1))

    def refine(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Features (1 or B, F, ...) and propagated masks (B, 1, ...) -> logits (B, 1, ...)."""
        if features.shape[0] != masks.shape[0]:
            features = features.expand(masks.shape[0], *features.shape[1:])
        masks = masks.to(features.dtype)
        out = self.correction(self.head(torch.cat([features, masks], dim=1)))
        return out + self.prior_gain * (2.0 * masks - 1.0)

    def forward(self, scan: torch.Tensor, warped_atlas: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.refine(self.encode(scan, warped_atlas), masks)


class TaskFiLMUNet(nn.Module):
    """The U-Net with a task code (label sharing, Anand et al. 2024, with task conditioning): every decoder level's
    features (bottleneck included) are scaled and shifted per task, ``x * (1 + scale[t]) + shift[t]``. The codes
    start at zero, so the untrained network is the plain U-Net; the head keeps label sharing's ``n* + 1`` outputs.
    """

    def __init__(self, config: TaskFiLMUNetConfig):
        super().__init__()
        self.config = config
        self.backbone = UNetBackbone(config)
        self.head = _conv(config.spatial_dims)(self.backbone.out_features, config.out_channels, 1)
        self.widths = film_widths(config)
        self.task_scale = nn.Embedding(config.num_tasks, sum(self.widths))
        self.task_shift = nn.Embedding(config.num_tasks, sum(self.widths))
        nn.init.zeros_(self.task_scale.weight)
        nn.init.zeros_(self.task_shift.weight)

    def forward(self, x: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        _check_divisible(x, self.config.downsample_factor)
        task = task_index.long().view(-1).expand(x.shape[0]) if task_index.numel() == 1 else task_index.long()
        modulate = film(self.task_scale, self.task_shift, task, self.widths, self.config.spatial_dims)
        skips, bottom_in = self.backbone.encode(x)
        features, _ = self.backbone.decode(bottom_in, skips, modulate=modulate)
        return self.head(features)


def build_network(config: NetworkConfig) -> nn.Module:
    """Build the network a typed config describes (read one with :func:`network_config_from_dict`)."""
    if not isinstance(config, (UNetConfig, LCSConfig, RefineLCSConfig, DoDNetConfig)):
        raise TypeError(f"build_network needs a typed network config, not {type(config).__name__}")
    networks = {"unet": UNet, "unet_film": TaskFiLMUNet, "lcs": LCSNet, "lcs_refine": RefineLCSNet}
    return {**networks, "dodnet": DoDNet}[config.arch](config)

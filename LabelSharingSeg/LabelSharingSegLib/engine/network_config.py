"""The ``network`` section of a bundle: one typed, validated config per architecture.

* :class:`UNetConfig`   - the plain U-Net (label sharing, multi-channel, individual models);
* :class:`TaskFiLMUNetConfig` - label sharing's U-Net with per-task modulation of the decoder (no extra outputs);
* :class:`LCSConfig`    - label conditioned segmentation (Ma et al. 2022): one output, atlas pooling;
* :class:`RefineLCSConfig` - LCS that refines registration (networks.RefineLCSNet): ``channels[:2]`` only;
* :class:`DoDNetConfig` - the DoD-Net-style baseline: task count and dynamic-head width.

Each stores only its own settings (schema 2). Schema-1 bundles stored every architecture's keys in every
config; :func:`network_config_from_dict` drops the foreign ones when reading those (``legacy=True``).
Configs are bounded (channels, depth, outputs and the exact parameter count) so that a hostile or mistyped
``bundle.json`` is refused before any tensor is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from .config_checks import check_choice, check_int, check_int_tuple, check_mapping, in_source, shown
from .errors import ConfigError

MAX_LEVELS = 8
MAX_LEVEL_CHANNELS = 4096
MAX_IN_CHANNELS = 64
MAX_OUT_CHANNELS = 10_000
MAX_CONVS_PER_LEVEL = 8
MAX_TASKS = 1000
MAX_HEAD_CHANNELS = 1024
MAX_PARAMETERS = 250_000_000  # 1 GB of float32 weights; the shipped models hold under 2 million
NORMS = ("instance", "batch", "none")
POOLS = ("avg", "max")
# where LCS's atlas conditioning joins the U-Net: the bottleneck only (Ma et al. 2022), or also every decoder level
LCS_CONDITIONINGS = ("bottleneck", "every-level")
# how the atlas meets the scan before it conditions LCS: as affinely aligned (the paper's), or also carried onto the
# scan by deformable registration (the network then corrects a registration: lsseg train lcs --align-cases deformable)
LCS_ATLAS_WARPS = ("none", "deformable")
# DoDNetConfig.controller_inputs; "detached-": the pooled image features reach the controller without a gradient
# back into the U-Net (an ablation, issue #15: does the image help the head, or the short gradient path it opens?)
CONTROLLER_INPUTS = ("image+task", "task", "image", "none", "detached-image+task", "detached-image")


@dataclass(frozen=True)
class BackboneConfig:
    """Settings every architecture shares: the U-Net backbone (one 2x pooling per level below the top)."""

    ARCH: ClassVar[str] = ""
    TAKES_TASK: ClassVar[bool] = False  # the network's forward takes the task index (inference passes it)

    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 2
    channels: tuple[int, ...] = (8, 16, 32, 64, 128)  # Ma et al. 2022: 8 at full resolution, doubling
    convs_per_level: int = 1
    norm: str = "instance"

    def __post_init__(self) -> None:
        check_int("network.spatial_dims", self.spatial_dims, 2, 3)
        check_int("network.in_channels", self.in_channels, 1, MAX_IN_CHANNELS)
        check_int("network.out_channels", self.out_channels, 1, MAX_OUT_CHANNELS)
        channels = check_int_tuple(
            "network.channels", self.channels, range(2, MAX_LEVELS + 1), 1, MAX_LEVEL_CHANNELS
        )
        object.__setattr__(self, "channels", channels)
        check_int("network.convs_per_level", self.convs_per_level, 1, MAX_CONVS_PER_LEVEL)
        check_choice("network.norm", self.norm, NORMS)
        self._check_own()
        count = self.parameter_count()
        if count > MAX_PARAMETERS:
            raise ConfigError(
                f"network: this {self.arch} would hold {count:,} parameters, more than the limit "
                f"{MAX_PARAMETERS:,} (check channels and out_channels)"
            )

    def _check_own(self) -> None:
        """Checks of the architecture's own settings."""

    @property
    def arch(self) -> str:
        return self.ARCH

    @property
    def downsample_factor(self) -> int:
        """Input sizes must be divisible by this (one 2x pooling per level below the top)."""
        return 2 ** (len(self.channels) - 1)

    @property
    def bottleneck_extra(self) -> int:
        """Channels concatenated to the bottleneck input besides the encoder's (LCS conditioning)."""
        return 0

    @property
    def decoder_extra(self) -> int:
        """Channels concatenated to every decoder level's input besides the upsampled and skip features."""
        return 0

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"arch": self.arch}
        for item in fields(self):
            value = getattr(self, item.name)
            out[item.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> NetworkConfig:
        """A copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)  # type: ignore[return-value]

    @property
    def bias_and_norm_parameters(self) -> int:
        """Parameters per output channel of a conv + norm: the bias, and the norm's weight and bias."""
        return 1 if self.norm == "none" else 3

    def parameter_count(self) -> int:
        """The exact number of learnable parameters :func:`.networks.build_network` will allocate."""
        return self._backbone_parameters() + self._head_parameters()

    def _backbone_parameters(self) -> int:
        kernel, up = 3**self.spatial_dims, 2**self.spatial_dims

        per_channel = self.bias_and_norm_parameters

        def block(c_in: int, c_out: int) -> int:  # convs with bias + a norm with weight and bias each
            first = c_in * c_out * kernel + per_channel * c_out
            return first + (self.convs_per_level - 1) * (c_out * c_out * kernel + per_channel * c_out)

        ch, total, c_in = self.channels, 0, self.in_channels
        for c in ch[:-1]:
            total += block(c_in, c)
            c_in = c
        total += block(ch[-2] + self.bottleneck_extra, ch[-1])
        for level in range(len(ch) - 1):
            total += ch[level + 1] * ch[level] * up + ch[level]  # transposed convolution
            total += block(2 * ch[level] + self.decoder_extra, ch[level])
        return total

    def _head_parameters(self) -> int:
        return self.channels[0] * self.out_channels + self.out_channels


@dataclass(frozen=True)
class UNetConfig(BackboneConfig):
    """The plain U-Net with ``out_channels`` logits."""

    ARCH: ClassVar[str] = "unet"


@dataclass(frozen=True)
class TaskFiLMUNetConfig(UNetConfig):
    """The label-sharing U-Net with a task code: per task, a scale and a shift of every decoder level's features
    (feature-wise linear modulation). It adds ``2 * num_tasks * sum(channels)`` parameters and no output channel,
    so label sharing keeps its ``n* + 1`` outputs and one network."""

    ARCH: ClassVar[str] = "unet_film"
    TAKES_TASK: ClassVar[bool] = True

    num_tasks: int = 1

    def _check_own(self) -> None:
        check_int("network.num_tasks", self.num_tasks, 1, MAX_TASKS)

    def _head_parameters(self) -> int:
        return super()._head_parameters() + 2 * self.num_tasks * sum(self.channels)


@dataclass(frozen=True)
class LCSConfig(BackboneConfig):
    """Label conditioned segmentation (Ma et al. 2022): atlas image pooled by ``atlas_image_pool`` and one
    max-pooled atlas mask join the bottleneck; exactly one output channel (a logit). ``conditioning``
    'every-level' also gives every decoder level the atlas image and mask on its own grid (not in the paper;
    ``lsseg train lcs`` trains it by default, measured above the paper's). The field's default stays the paper's,
    so a bundle without it reads as the network it was trained as."""

    ARCH: ClassVar[str] = "lcs"

    out_channels: int = 1
    atlas_image_pool: str = "avg"
    conditioning: str = "bottleneck"
    # learned codes of the trained atlas labels (not in the paper): each scales and shifts every decoder level for
    # its label; code 0 is "no code", the path every label without one takes (drawn labels, merged pairs)
    label_codes: int = 0
    atlas_warp: str = "none"

    def _check_own(self) -> None:
        if self.out_channels != 1:
            raise ConfigError(
                f"network.out_channels of an lcs network must be 1 (got {shown(self.out_channels)})"
            )
        check_choice("network.atlas_image_pool", self.atlas_image_pool, POOLS)
        check_choice("network.conditioning", self.conditioning, LCS_CONDITIONINGS)
        if (
            not isinstance(self.label_codes, int)
            or isinstance(self.label_codes, bool)
            or self.label_codes < 0
        ):
            raise ConfigError(f"network.label_codes must be an integer >= 0 (got {shown(self.label_codes)})")
        check_choice("network.atlas_warp", self.atlas_warp, LCS_ATLAS_WARPS)
        if self.atlas_warp != "none" and self.spatial_dims != 3:
            raise ConfigError(
                "network.atlas_warp needs a 3D network: a 2D atlas cannot be registered to a scan"
            )

    @property
    def bottleneck_extra(self) -> int:
        return self.in_channels + 1  # the atlas image channels + one binary mask

    @property
    def decoder_extra(self) -> int:
        return self.bottleneck_extra if self.conditioning == "every-level" else 0

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.conditioning == "bottleneck":  # the paper's network keeps the manifest older readers know
            del out["conditioning"]
        if not self.label_codes:
            del out["label_codes"]
        if self.atlas_warp == "none":
            del out["atlas_warp"]
        return out

    def _head_parameters(self) -> int:
        codes = 2 * (self.label_codes + 1) * sum(self.channels) if self.label_codes else 0
        return self.channels[0] + 1 + codes


# voxels each side a refine head's output depends on: its receptive field radius, one per 3^d convolution
REFINE_HALO = 3


@dataclass(frozen=True)
class RefineLCSConfig(BackboneConfig):
    """LCS that refines a registration-propagated mask: an encoder of (scan, warped atlas) ``channels[0]``
    wide, a local head of ``REFINE_HALO`` convolutions ``channels[1]`` wide; exactly one output channel (a
    logit). No normalisation by default (see networks.RefineLCSNet)."""

    ARCH: ClassVar[str] = "lcs_refine"

    out_channels: int = 1
    channels: tuple[int, ...] = (16, 16)
    convs_per_level: int = 2
    norm: str = "none"

    def _check_own(self) -> None:
        if self.out_channels != 1:
            raise ConfigError(
                f"network.out_channels of an lcs_refine network must be 1 (got {shown(self.out_channels)})"
            )

    @property
    def downsample_factor(self) -> int:
        return 1

    @property
    def encoder_halo(self) -> int:
        """Voxels each side the encoder's features depend on (one per 3^d convolution)."""
        return self.convs_per_level + 1

    def _backbone_parameters(self) -> int:
        kernel, extra = 3**self.spatial_dims, self.bias_and_norm_parameters
        c0 = self.channels[0]
        first = 2 * self.in_channels * c0 * kernel + extra * c0
        return first + (self.convs_per_level - 1) * (c0 * c0 * kernel + extra * c0) + c0 * c0 * kernel + c0

    def _head_parameters(self) -> int:
        kernel, (c0, c1) = 3**self.spatial_dims, self.channels[:2]
        head = (c0 + 1) * c1 * kernel + c1 + (REFINE_HALO - 1) * (c1 * c1 * kernel + c1)
        return head + c1 + 1 + 1  # the 1x1 correction and the prior gain


@dataclass(frozen=True)
class DoDNetConfig(BackboneConfig):
    """DoD-Net-style dynamic head: ``num_tasks`` task codes, three 1x1 convolutions ``head_channels`` wide.

    ``controller_inputs`` says what the controller generates the head's weights from: ``image+task`` (DoD-Net:
    the pooled bottleneck features and the task one-hot), ``task`` (the task code only: one small head per task),
    ``image`` (the image only) or ``none`` (learned weights, the same for every task and image); ``detached-image``
    and ``detached-image+task`` generate the same head with the same forward pass, but no gradient flows from the
    controller back into the U-Net through the pooled features. Label sharing may
    carry this head too (``--head``, issue #15 item 5): its ``n* + 1`` outputs stay the shared channels.
    """

    ARCH: ClassVar[str] = "dodnet"
    TAKES_TASK: ClassVar[bool] = True

    num_tasks: int = 1
    head_channels: int = 8
    controller_inputs: str = "image+task"

    def _check_own(self) -> None:
        check_int("network.num_tasks", self.num_tasks, 1, MAX_TASKS)
        check_int("network.head_channels", self.head_channels, 1, MAX_HEAD_CHANNELS)
        check_choice("network.controller_inputs", self.controller_inputs, CONTROLLER_INPUTS)

    def to_dict(self) -> dict:
        out = super().to_dict()
        if (
            self.controller_inputs == "image+task"
        ):  # DoD-Net as before: bundles written before the option match
            del out["controller_inputs"]
        return out

    @property
    def controller_features(self) -> int:
        """Inputs of the controller: pooled bottleneck channels, task one-hot, or one constant when neither."""
        count = self.channels[-1] if "image" in self.controller_inputs else 0
        count += self.num_tasks if "task" in self.controller_inputs else 0
        return count or 1

    @property
    def head_layer_shapes(self) -> list[tuple[int, int]]:
        """(out, in) of the three generated 1x1 convolutions."""
        f, h = self.channels[0], self.head_channels
        return [(h, f), (h, h), (self.out_channels, h)]

    @property
    def head_parameter_count(self) -> int:
        """Weights and biases the controller generates per sample."""
        return sum(o * i + o for o, i in self.head_layer_shapes)

    def _head_parameters(self) -> int:
        controller_in = self.controller_features
        return controller_in * self.head_parameter_count + self.head_parameter_count + 2 * self.channels[0]


NetworkConfig = UNetConfig | TaskFiLMUNetConfig | LCSConfig | RefineLCSConfig | DoDNetConfig
CONFIG_OF_ARCH: dict[str, type[BackboneConfig]] = {
    c.ARCH: c for c in (UNetConfig, TaskFiLMUNetConfig, LCSConfig, RefineLCSConfig, DoDNetConfig)
}
ARCHITECTURES = tuple(CONFIG_OF_ARCH)


def network_config_from_dict(data: Any, source: str | None = None, *, legacy: bool = False) -> NetworkConfig:
    """Read a ``network`` JSON object (missing settings take the defaults; ``arch`` defaults to unet).

    ``legacy`` reads schema-1 bundles, which stored every architecture's keys: the keys of other
    architectures are dropped instead of refused. ConfigError names ``source`` and the field.
    """
    with in_source(source):
        data = check_mapping("network", data)
        arch = check_choice("network.arch", data.get("arch", "unet"), ARCHITECTURES)
        cls = CONFIG_OF_ARCH[arch]
        own = tuple(item.name for item in fields(cls))
        if legacy:
            foreign = {item.name for c in CONFIG_OF_ARCH.values() for item in fields(c)} - set(own)
            data = {k: v for k, v in data.items() if k not in foreign}
        data = check_mapping("network", data, ("arch", *own))
        data.pop("arch", None)
        if isinstance(data.get("channels"), list):
            data["channels"] = tuple(data["channels"])
        return cls(**data)  # type: ignore[return-value]

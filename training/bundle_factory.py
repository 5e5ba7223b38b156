"""Assemble model bundles from training results (or fresh weights) - the one place that knows how each
bundle kind maps its tasks onto network output channels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from LabelSharingSegLib.engine.bundle import TaskInfo, build_manifest, write_bundle
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.labels import LabelInfo, default_color
from LabelSharingSegLib.engine.labelspace import SharedLabelSpace
from LabelSharingSegLib.engine.networks import build_network, complete_config, downsample_factor
from LabelSharingSegLib.engine.preprocessing import check_intensity


def make_preprocessing(
    spatial_dims: int,
    spacing: Sequence[float],
    patch_size: Sequence[int],
    intensity: dict | None = None,
    overlap: float = 0.5,
    factor: int = 16,
) -> dict:
    """The bundle's preprocessing section, validated (patch divisible by the network's pooling factor)."""
    if len(spacing) != spatial_dims or len(patch_size) != spatial_dims:
        raise InputError(f"spacing and patch size need {spatial_dims} values each")
    if any(p % factor for p in patch_size):
        raise InputError(f"patch size {list(patch_size)} must be divisible by {factor}")
    if any(s <= 0 for s in spacing):
        raise InputError("spacing must be positive")
    return {
        "spatial_dims": spatial_dims,
        "orientation": "RAS",
        "spacing": [float(s) for s in spacing],
        "patch_size": [int(p) for p in patch_size],
        "overlap": float(overlap),
        "intensity": check_intensity(intensity or {"mode": "zscore", "nonzero": False}),
    }


def task_label_infos(
    labels: dict[int, str], colors: dict[int, Sequence[float]] | None = None
) -> list[LabelInfo]:
    colors = colors or {}
    return [
        LabelInfo(int(v), str(n), tuple(colors.get(v, default_color(int(v)))))
        for v, n in sorted(labels.items())
    ]


def labelsharing_tasks(space: SharedLabelSpace, colors: dict[str, dict[int, Sequence[float]]] | None = None):
    """TaskInfo per task: channel = the label's shared index."""
    colors = colors or {}
    return [
        TaskInfo(
            name,
            index,
            tuple(task_label_infos(space.task(name).labels, colors.get(name))),
            space.task_to_shared(name),
        )
        for index, name in enumerate(space.task_names)
    ]


def multichannel_tasks(task_labels: dict[str, dict[int, str]]) -> list[TaskInfo]:
    """One channel per label of all tasks together (channel 0 background)."""
    tasks, channel = [], 1
    for index, (name, labels) in enumerate(task_labels.items()):
        channels = {}
        for value in sorted(labels):
            channels[value] = channel
            channel += 1
        tasks.append(TaskInfo(name, index, tuple(task_label_infos(labels)), channels))
    return tasks


def per_task_rank_tasks(task_labels: dict[str, dict[int, str]]) -> list[TaskInfo]:
    """Channel = 1 + position of the label value in the task (DoD-Net and individual models)."""
    return [
        TaskInfo(
            name, index, tuple(task_label_infos(labels)), {v: i + 1 for i, v in enumerate(sorted(labels))}
        )
        for index, (name, labels) in enumerate(task_labels.items())
    ]


def network_config_for(
    kind: str, tasks: list[TaskInfo], spatial_dims: int, channels: Sequence[int], **extra
) -> dict:
    arch = {"lcs": "lcs", "dodnet": "dodnet"}.get(kind, "unet")
    out = 1 if kind == "lcs" else 1 + max(max(t.channels.values()) for t in tasks)
    config = {
        "arch": arch,
        "spatial_dims": spatial_dims,
        "out_channels": out,
        "channels": list(channels),
        **extra,
    }
    if kind == "dodnet":
        config["num_tasks"] = len(tasks)
    return complete_config(config)


def fresh_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Randomly initialised weights, repeatable for ``seed``, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(config).state_dict()


def write_task_bundle(
    out: str | Path,
    kind: str,
    tasks: list[TaskInfo],
    preprocessing: dict,
    *,
    channels: Sequence[int] = (8, 16, 32, 64, 128),
    label_space: SharedLabelSpace | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    network_config: dict | None = None,
    seed: int = 0,
    name: str = "",
    description: str = "",
    training: dict | None = None,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label-sharing / multi-channel / individual / dodnet bundle; fresh weights when no state dict.
    ``reference`` = (3D image, affine) that scans are aligned to before segmenting."""
    config = network_config or network_config_for(kind, tasks, preprocessing["spatial_dims"], channels)
    if preprocessing["patch_size"] and any(
        p % downsample_factor(config) for p in preprocessing["patch_size"]
    ):
        raise InputError(f"patch size must be divisible by {downsample_factor(config)}")
    if state_dict is None:
        state_dict = fresh_weights(config, seed)
    manifest = build_manifest(
        kind=kind,
        network=config,
        preprocessing=preprocessing,
        tasks=tasks,
        label_space=label_space,
        name=name,
        description=description,
        training=training,
    )
    return write_bundle(out, manifest, state_dict, reference=reference, overwrite=overwrite)


def write_lcs_bundle(
    out: str | Path,
    atlas_image: np.ndarray,
    atlas_labels: np.ndarray,
    atlas_affine: np.ndarray,
    labels: list[LabelInfo],
    preprocessing: dict,
    *,
    channels: Sequence[int] = (8, 16, 32, 64, 128),
    state_dict: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    name: str = "",
    description: str = "",
    training: dict | None = None,
    overwrite: bool = False,
    arch: str = "lcs",
) -> Path:
    """``arch``: 'lcs' (Ma et al. 2022, bottleneck conditioning) or 'lcs_refine' (refines registration)."""
    config = network_config_for("lcs", [], preprocessing["spatial_dims"], channels, arch=arch)
    if state_dict is None:
        state_dict = fresh_weights(config, seed)
    manifest = build_manifest(
        kind="lcs",
        network=config,
        preprocessing=preprocessing,
        name=name,
        description=description,
        training=training,
    )
    return write_bundle(
        out,
        manifest,
        state_dict,
        atlas=(atlas_image, atlas_labels, atlas_affine, labels),
        overwrite=overwrite,
    )

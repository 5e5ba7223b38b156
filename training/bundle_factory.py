"""Assemble model bundles from training results (or fresh weights) - the one place that knows how each
bundle kind maps its tasks onto network output channels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from LabelSharingSegLib.engine.bundle import TaskInfo, build_manifest, write_bundle
from LabelSharingSegLib.engine.bundle_kind import BundleKind
from LabelSharingSegLib.engine.errors import ConfigError, InputError
from LabelSharingSegLib.engine.labels import LabelInfo, default_color
from LabelSharingSegLib.engine.labelspace import SharedLabelSpace
from LabelSharingSegLib.engine.network_config import CONFIG_OF_ARCH, NetworkConfig, RefineLCSConfig
from LabelSharingSegLib.engine.networks import build_network
from LabelSharingSegLib.engine.planes import PLANES
from LabelSharingSegLib.engine.preprocessing_config import IntensityConfig, Preprocessing
from LabelSharingSegLib.engine.trained_region import Region, read_region

from .run_config import HEAD_CONTROLLER_INPUTS


def make_preprocessing(
    spatial_dims: int,
    spacing: Sequence[float],
    patch_size: Sequence[int],
    intensity: dict | None = None,
    overlap: float = 0.5,
    factor: int = 16,
    modality: str | None = None,
    contrast: str | None = None,
) -> Preprocessing:
    """The bundle's preprocessing, validated (patch divisible by the network's pooling factor); ``modality``:
    the kind of scan trained on ('MR', 'CT'), which inference then checks scans against; ``contrast``: its MR
    weighting."""
    if len(spacing) != spatial_dims or len(patch_size) != spatial_dims:
        raise InputError(f"spacing and patch size need {spatial_dims} values each")
    if any(p % factor for p in patch_size):
        raise InputError(f"patch size {list(patch_size)} must be divisible by {factor}")
    try:
        return Preprocessing(
            spatial_dims=spatial_dims,
            spacing=tuple(spacing),
            patch_size=tuple(patch_size),
            overlap=overlap,
            intensity=IntensityConfig.from_dict(intensity or {"mode": "zscore"}),
            modality=modality,
            contrast=contrast if modality == "MR" else None,
        )
    except ConfigError as exc:  # these values come from the command line or the data plan
        raise InputError(str(exc)) from None


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


# a task's plane (2D; None: none recorded) and the region of the reference's world it was trained on (empty: none)
TaskSlicing = tuple[str | None, Region]


def dataset_slicing(dataset) -> TaskSlicing:
    """The plane a 2D dataset's slices were cut in and the region of the reference's world its cases cover, as
    ``lsseg data build`` records them (``dataset.json`` -> ``lsseg.plane``, ``lsseg.region_mm``); (None, ())
    when not recorded (own data: the slices are used as stored, and the whole of a scan is segmented)."""
    recorded = dataset.metadata.get("lsseg") or {}
    plane = recorded.get("plane")
    if plane is not None and plane not in PLANES:
        raise InputError(
            f"{dataset.root}: dataset.json lsseg.plane {plane!r} is not one of {', '.join(PLANES)}"
        )
    try:
        region = read_region("lsseg.region_mm", recorded.get("region_mm"))
    except ConfigError as exc:
        raise InputError(f"{dataset.root}: dataset.json {exc}") from None
    return plane, region


def with_slicing(tasks: list[TaskInfo], slicing: dict[str, TaskSlicing]) -> list[TaskInfo]:
    """The tasks with their training plane and region recorded (2D bundles segment a volume along the plane, an
    aligned scan is segmented only inside the region)."""
    return [
        replace(task, plane=slicing[task.name][0], region_mm=slicing[task.name][1])
        if task.name in slicing
        else task
        for task in tasks
    ]


def network_config_for(
    kind: BundleKind | str,
    tasks: Sequence[TaskInfo],
    spatial_dims: int,
    channels: Sequence[int],
    *,
    task_film: bool = False,
    head: str = "linear",
    **extra,
) -> NetworkConfig:
    """The network of a new bundle; ``task_film``: label sharing's U-Net with a task code (``unet_film``);
    ``head``: label sharing's output head, ``linear`` (as published) or a DoD-Net-style head (``dodnet``) whose
    weights the controller generates from ``HEAD_CONTROLLER_INPUTS[head]``, over the same shared outputs."""
    kind = BundleKind.parse(kind)
    settings = {"spatial_dims": spatial_dims, "channels": tuple(channels), **extra}
    if kind.segments_tasks:
        settings["out_channels"] = 1 + max(max(t.channels.values()) for t in tasks)
    arch = kind.arch
    if (task_film or head != "linear") and kind is not BundleKind.LABELSHARING:
        option = "a task code (--task-film)" if task_film else f"--head {head}"
        raise InputError(f"{option} is an option of labelsharing, not {kind}")
    if task_film:
        arch = "unet_film"
    elif head != "linear":
        arch = "dodnet"
        settings["controller_inputs"] = HEAD_CONTROLLER_INPUTS[head]
    if CONFIG_OF_ARCH[arch].TAKES_TASK:
        settings["num_tasks"] = len(tasks)
    return CONFIG_OF_ARCH[arch](**settings)  # type: ignore[return-value]


def fresh_weights(config: NetworkConfig, seed: int) -> dict[str, torch.Tensor]:
    """Randomly initialised weights, repeatable for ``seed``, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(config).state_dict()


def write_task_bundle(
    out: str | Path,
    kind: BundleKind | str,
    tasks: list[TaskInfo],
    preprocessing: Preprocessing,
    *,
    channels: Sequence[int] = (8, 16, 32, 64, 128),
    label_space: SharedLabelSpace | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    network_config: NetworkConfig | None = None,
    seed: int = 0,
    name: str = "",
    description: str = "",
    training: dict | None = None,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label-sharing / multi-channel / individual / dodnet bundle; fresh weights when no state dict.
    ``reference`` = (3D image, affine) that scans are aligned to before segmenting."""
    config = network_config or network_config_for(kind, tasks, preprocessing.spatial_dims, channels)
    if any(p % config.downsample_factor for p in preprocessing.patch_size):
        raise InputError(f"patch size must be divisible by {config.downsample_factor}")
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
    preprocessing: Preprocessing,
    *,
    channels: Sequence[int] = (8, 16, 32, 64, 128),
    state_dict: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    name: str = "",
    description: str = "",
    training: dict | None = None,
    overwrite: bool = False,
    arch: str = "lcs",
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    network: NetworkConfig | None = None,
) -> Path:
    """``arch``: 'lcs' (Ma et al. 2022, bottleneck conditioning) or 'lcs_refine' (refines registration).
    ``reference`` = (image, affine) in the position the training targets had (``Bundle.network_reference``).
    ``network``: the trained network's config (instead of ``arch`` and ``channels``)."""
    if network is not None:
        config = network
    elif arch == "lcs_refine":
        config = RefineLCSConfig(spatial_dims=preprocessing.spatial_dims, channels=tuple(channels))
    else:
        config = network_config_for(BundleKind.LCS, [], preprocessing.spatial_dims, channels)
    if state_dict is None:
        state_dict = fresh_weights(config, seed)
    manifest = build_manifest(
        kind=BundleKind.LCS,
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
        reference=reference,
        overwrite=overwrite,
    )


def set_task_slicing(bundle_path: str | Path, slicing: dict[str, TaskSlicing]) -> Path:
    """Record the planes and trained regions of a bundle's tasks in place (weights and everything else unchanged; the
    bundle writer recomputes the file hashes and validates before replacing). For bundles trained before
    planes or regions were recorded."""
    from LabelSharingSegLib.engine.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    unknown = sorted(set(slicing) - set(bundle.task_names()))
    if unknown:
        raise InputError(f"{bundle_path}: no task(s) {', '.join(unknown)}; its tasks: {bundle.task_names()}")
    manifest = replace(
        bundle.manifest,
        tasks=tuple(with_slicing(list(bundle.tasks), slicing)),
        files={},
        reference_image=None,
    )
    reference = bundle.reference_image() if bundle.has_reference() else None
    return write_bundle(bundle.path, manifest, bundle.state_dict, reference=reference, overwrite=True)


def set_reference(bundle_path: str | Path, image: np.ndarray, affine: np.ndarray) -> Path:
    """Store ``image`` (3D) as a bundle's reference in place, weights and everything else unchanged, as
    ``lsseg train ... --reference`` would have stored it: LCS bundles show aligned scans to their network in its
    position (the network reference); task bundles, 2D ones included, align volumes to it before segmenting."""
    from LabelSharingSegLib.engine.bundle import load_bundle

    if np.ndim(image) != 3 or min(np.shape(image)) < 2:
        raise InputError(f"reference: a 3D volume is needed, got shape {tuple(np.shape(image))}")
    bundle = load_bundle(bundle_path)
    atlas = None
    if bundle.kind.has_atlas:
        atlas_image, _ = bundle.atlas_image()
        labelmap, atlas_affine, labels = bundle.atlas_labels()
        atlas = (atlas_image, labelmap, atlas_affine, labels)
    manifest = replace(bundle.manifest, files={}, reference_image=None)
    return write_bundle(
        bundle.path, manifest, bundle.state_dict, atlas=atlas, reference=(image, affine), overwrite=True
    )

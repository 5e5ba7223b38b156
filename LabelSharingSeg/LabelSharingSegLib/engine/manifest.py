"""``bundle.json`` as a typed, validated :class:`Manifest` (nnU-Net's ``PlansManager`` is the model).

The manifest names the bundle kind, its network and preprocessing configs, the tasks with their labels
and output channels, the shared label space (label sharing), the atlas files (LCS), an optional reference
image, training provenance, the software versions that wrote it and the sha256 of every other file.

Schema versions: 2 (written now) stores only the architecture's own network settings and records the
software versions; 1 stored every architecture's keys in every network config. Both are read.
Construction validates everything that can be checked without the files, so a Manifest that exists is
consistent; :meth:`Manifest.from_dict` adds the file name to every error.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar

from .bundle_kind import BundleKind
from .config_checks import check_int, check_mapping, check_number_tuple, check_text, in_source, require, shown
from .errors import ConfigError, InputError, LabelSpaceError
from .labels import LabelInfo
from .labelspace import SharedLabelSpace
from .network_config import (
    MAX_OUT_CHANNELS,
    MAX_TASKS,
    DoDNetConfig,
    NetworkConfig,
    TaskFiLMUNetConfig,
    network_config_from_dict,
)
from .planes import PLANES
from .preprocessing_config import Preprocessing
from .trained_region import Region, read_region, region_to_json

BUNDLE_FORMAT = "labelsharingseg.bundle"
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
MAX_LABEL_VALUE = 2**31 - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class TaskInfo:
    """A task of a bundle: its labels and which network output channel each label value reads."""

    name: str
    index: int
    labels: tuple[LabelInfo, ...]
    channels: dict[int, int]  # label value -> output channel (0 is background)
    # 2D bundles: the plane the task was trained in (axial, sagittal, coronal); None: a volume is cut along its
    # third voxel axis as given (bundles written before planes were recorded)
    plane: str | None = None
    # the region of the training cases' world (the reference's) they covered; a scan aligned to the reference is
    # segmented only there (trained_region.py). Empty: not recorded
    region_mm: Region = ()

    def to_dict(self) -> dict:
        entry = {
            "name": self.name,
            "index": self.index,
            "labels": [{**label.to_dict(), "channel": self.channels[label.value]} for label in self.labels],
        }
        if self.plane is not None:
            entry["plane"] = self.plane
        if self.region_mm:
            entry["region_mm"] = region_to_json(self.region_mm)
        return entry

    @classmethod
    def from_dict(cls, data: Any, position: int, where: str) -> TaskInfo:
        data = check_mapping(where, data)
        name = check_text(f"{where}.name", require(where, data, "name"), max_length=200)
        index = check_int(f"{where}.index", data.get("index", position), 0, MAX_TASKS - 1)
        entries = require(where, data, "labels")
        if not isinstance(entries, list):
            raise ConfigError(f"{where}.labels must be a list (got {shown(entries)})")
        labels, channels = [], {}
        for number, item in enumerate(entries):
            at = f"{where}.labels[{number}]"
            item = check_mapping(at, item, ("value", "name", "color", "channel", "terminology"))
            value = check_int(f"{at}.value", require(at, item, "value"), 1, MAX_LABEL_VALUE)
            check_text(f"{at}.name", require(at, item, "name"), max_length=500)
            channels[value] = check_int(f"{at}.channel", require(at, item, "channel"), 1, MAX_OUT_CHANNELS)
            if item.get("color") is not None:
                check_number_tuple(f"{at}.color", item["color"], range(3, 4), 0.0, 1.0)
            if item.get("terminology") is not None:
                check_mapping(f"{at}.terminology", item["terminology"])
            try:
                labels.append(LabelInfo.from_dict(item))
            except InputError as exc:
                raise ConfigError(f"{at}: {exc}") from None
        plane = data.get("plane")
        if plane is not None and plane not in PLANES:
            raise ConfigError(f"{where}.plane: {shown(plane)} is not one of {', '.join(PLANES)}")
        region = read_region(f"{where}.region_mm", data.get("region_mm"))
        return cls(name, index, tuple(labels), channels, plane, region)


@dataclass(frozen=True)
class AtlasFiles:
    """File names (inside the bundle) of an LCS bundle's atlas image, label map and names table."""

    image: str = "atlas_image.nii.gz"
    labels: str = "atlas_labels.nii.gz"
    names: str = "atlas_labels.csv"

    def to_dict(self) -> dict:
        return {"image": self.image, "labels": self.labels, "names": self.names}


def software_versions() -> dict[str, str]:
    """Versions of what writes a bundle (as MONAI's metadata.json records them)."""
    import numpy
    import torch

    from .. import __version__

    try:
        monai = metadata.version("monai")
    except metadata.PackageNotFoundError:
        monai = "not installed"
    return {
        "labelsharingseg": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "monai": monai,
        "numpy": numpy.__version__,
    }


@dataclass(frozen=True)
class Manifest:
    """The validated contents of ``bundle.json``. ``files`` (name -> sha256) is filled by ``write_bundle``."""

    kind: BundleKind
    network: NetworkConfig
    preprocessing: Preprocessing
    tasks: tuple[TaskInfo, ...] = ()
    label_space: SharedLabelSpace | None = field(default=None, compare=False)
    atlas: AtlasFiles | None = None
    reference_image: str | None = None
    name: str = ""
    description: str = ""
    created: str = ""
    training: dict = field(default_factory=dict)  # free-form provenance (method, steps, metrics, ...)
    software: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    _KEYS: ClassVar[tuple[str, ...]] = (
        "format",
        "schema_version",
        "kind",
        "name",
        "description",
        "created",
        "software",
        "network",
        "preprocessing",
        "tasks",
        "training",
        "label_space",
        "atlas",
        "reference",
        "files",
    )

    def __post_init__(self) -> None:
        kind = BundleKind.parse(self.kind)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "tasks", tuple(self.tasks))
        network, tasks = self.network, self.tasks
        # an LCS bundle may carry the paper's network or the one that refines registration; a label-sharing
        # bundle the plain U-Net or the one with a task code
        if network.arch not in kind.archs:
            raise ConfigError(
                f"network: a {kind} bundle needs a {' or '.join(kind.archs)} network, not {network.arch}"
            )
        if self.preprocessing.spatial_dims != network.spatial_dims:
            raise ConfigError(
                f"preprocessing.spatial_dims {self.preprocessing.spatial_dims} and network.spatial_dims "
                f"{network.spatial_dims} disagree"
            )
        factor = network.downsample_factor
        if kind.segments_tasks and any(side % factor for side in self.preprocessing.patch_size):
            raise ConfigError(  # the sliding window feeds patches of this size to the network
                f"preprocessing.patch_size {list(self.preprocessing.patch_size)} must be divisible by the "
                f"network's pooling factor {factor}"
            )
        if kind.has_atlas and self.atlas is None:
            raise ConfigError("atlas: an lcs bundle must name its atlas image, labels and names files")
        if kind.segments_tasks and not tasks:
            raise ConfigError(f"tasks: a {kind} bundle must list at least one task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ConfigError("tasks: task names repeat")
        for task in tasks:
            values = [label.value for label in task.labels]
            if len(set(values)) != len(values) or any(v <= 0 for v in values):
                raise ConfigError(f"tasks: task {task.name!r} has repeated or non-positive label values")
            used = list(task.channels.values())
            if any(not (1 <= c < network.out_channels) for c in used) or len(set(used)) != len(values):
                raise ConfigError(
                    f"tasks: task {task.name!r} maps labels to invalid or shared output channels "
                    f"(the network has {network.out_channels})"
                )
        planar = [t.name for t in tasks if t.plane is not None]
        if planar and network.spatial_dims != 2:
            raise ConfigError(f"tasks: {', '.join(planar)} name a plane, but only 2D bundles have one")
        if isinstance(network, (DoDNetConfig, TaskFiLMUNetConfig)) and network.num_tasks != len(tasks):
            raise ConfigError(f"network.num_tasks {network.num_tasks} != {len(tasks)} tasks")
        if kind is BundleKind.LABELSHARING:
            self._check_label_space()

    def _check_label_space(self) -> None:
        space = self.label_space
        if space is None:
            raise ConfigError("label_space: a labelsharing bundle needs its shared label space")
        if self.network.out_channels != space.n_shared + 1:
            raise ConfigError(
                f"network.out_channels is {self.network.out_channels} but the label space needs "
                f"{space.n_shared + 1}"
            )
        for task in self.tasks:
            try:
                agrees = space.task_to_shared(task.name) == task.channels
            except (KeyError, LabelSpaceError):
                agrees = False
            if not agrees:
                raise ConfigError(f"tasks: task {task.name!r} channels disagree with the label space")

    # -- reading and writing --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> Manifest:
        """Read ``bundle.json`` contents (schema 1 or 2); ConfigError names ``source`` and the field."""
        with in_source(source):
            data = check_mapping("bundle.json", data)
            if data.get("format") != BUNDLE_FORMAT:
                raise ConfigError(
                    f"not a LabelSharingSeg bundle manifest (format {shown(data.get('format'))})"
                )
            version = data.get("schema_version")
            if not (type(version) is int and version in READABLE_SCHEMA_VERSIONS):
                raise ConfigError(
                    f"schema version {shown(version)} is not supported (this version reads "
                    f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}); update the extension or re-export the bundle"
                )
            check_mapping("bundle.json", data, cls._KEYS)
            kind = BundleKind.parse(data.get("kind"))
            network = network_config_from_dict(require("", data, "network"), legacy=version == 1)
            preprocessing = Preprocessing.from_dict(require("", data, "preprocessing"))
            entries = data.get("tasks", [])
            if not isinstance(entries, list) or len(entries) > MAX_TASKS:
                raise ConfigError(f"tasks must be a list of at most {MAX_TASKS} tasks (got {shown(entries)})")
            tasks = tuple(TaskInfo.from_dict(e, i, f"tasks[{i}]") for i, e in enumerate(entries))
            return cls(
                kind=kind,
                network=network,
                preprocessing=preprocessing,
                tasks=tasks,
                label_space=_read_label_space(data.get("label_space")),
                atlas=_read_atlas(data["atlas"]) if "atlas" in data else None,
                reference_image=_read_reference(data.get("reference")),
                name=check_text("name", data.get("name", "")),
                description=check_text("description", data.get("description", ""), max_length=100_000),
                created=check_text("created", data.get("created", ""), max_length=100),
                training=check_mapping("training", data.get("training", {})),
                software=_read_software(data.get("software", {})),
                files=_read_files(data.get("files", {})),
            )

    def to_dict(self) -> dict:
        """The JSON object written as ``bundle.json`` (always the current schema)."""
        out: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind.value,
            "name": self.name,
            "description": self.description,
            "created": self.created,
            "software": dict(self.software),
            "network": self.network.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "tasks": [task.to_dict() for task in self.tasks],
            "training": dict(self.training),
        }
        if self.label_space is not None:
            out["label_space"] = self.label_space.to_dict()
        if self.atlas is not None:
            out["atlas"] = self.atlas.to_dict()
        if self.reference_image is not None:
            out["reference"] = {"image": self.reference_image}
        if self.files:
            out["files"] = dict(self.files)
        return out

    def named_files(self) -> list[str]:
        """Files the manifest refers to by name (all must be hashed in ``files``)."""
        named = list(self.atlas.to_dict().values()) if self.atlas is not None else []
        return named + ([self.reference_image] if self.reference_image is not None else [])


def _read_label_space(data: Any) -> SharedLabelSpace | None:
    if data is None:
        return None
    data = check_mapping("label_space", data)
    check_int("label_space.n_shared", data.get("n_shared"), 1, MAX_OUT_CHANNELS)
    try:
        return SharedLabelSpace.from_dict(data)
    except (LabelSpaceError, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"label_space invalid ({exc})") from None


def _file_name(where: str, value: Any) -> str:
    """A plain file name inside the bundle folder (no folders, no '..')."""
    name = check_text(where, value, max_length=255)
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise ConfigError(f"{where} must be a plain file name inside the bundle (got {shown(value)})")
    return name


def _read_atlas(data: Any) -> AtlasFiles:
    data = check_mapping("atlas", data, ("image", "labels", "names"))
    return AtlasFiles(
        **{k: _file_name(f"atlas.{k}", require("atlas", data, k)) for k in ("image", "labels", "names")}
    )


def _read_reference(data: Any) -> str | None:
    if data is None:
        return None
    data = check_mapping("reference", data, ("image",))
    return _file_name("reference.image", require("reference", data, "image"))


def _read_software(data: Any) -> dict[str, str]:
    data = check_mapping("software", data)
    return {
        check_text("software key", k, max_length=100): check_text(f"software.{k}", v, max_length=200)
        for k, v in data.items()
    }


def _read_files(data: Any) -> dict[str, str]:
    data = check_mapping("files", data)
    for name, digest in data.items():
        _file_name("files", name)
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise ConfigError(f"files.{name} must be a sha256 hex digest (got {shown(digest)})")
    return data

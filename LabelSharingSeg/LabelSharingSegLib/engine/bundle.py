"""Model bundles: the contract between training and Slicer.

A bundle is a folder (or a .zip of one) holding ``bundle.json`` (the typed :class:`.manifest.Manifest`:
schema version, kind, network config, preprocessing, tasks with labels and channels, label space, atlas
file names, training provenance, software versions and the sha256 of every other file), ``weights.safetensors`` and, for LCS, the atlas image and label map (NIfTI)
with a names table. Loading never unpickles: weights are read with safetensors only, after the file hash
matched, and every tensor's shape is checked against the network the config describes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_folder, atomic_path, require_parent_dir
from .bundle_kind import BundleKind
from .errors import BundleError, InputError
from .jsonfile import parse_json
from .labels import LabelInfo, labels_from_csv, labels_to_csv
from .labelspace import SharedLabelSpace
from .manifest import AtlasFiles, Manifest, TaskInfo, software_versions
from .network_config import NetworkConfig
from .networks import build_network
from .preprocessing_config import Preprocessing
from .trained_region import region_text

__all__ = ["Bundle", "Manifest", "TaskInfo", "build_manifest", "load_bundle", "write_bundle", "zip_bundle"]

MANIFEST = "bundle.json"
WEIGHTS = "weights.safetensors"
REFERENCE_IMAGE = "reference_image.nii.gz"
_MAX_ZIP_BYTES = 4 * 1024**3
_MAX_MANIFEST_BYTES = 64 * 1024**2


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    """A validated, loaded model bundle. Create with :func:`load_bundle`."""

    path: Path
    manifest: Manifest
    bundle_id: str
    state_dict: dict[str, torch.Tensor]
    _folder: Path | None = None
    _tempdir: Any = field(default=None, repr=False)

    @property
    def kind(self) -> BundleKind:
        return self.manifest.kind

    @property
    def network_config(self) -> NetworkConfig:
        return self.manifest.network

    @property
    def preprocessing(self) -> Preprocessing:
        return self.manifest.preprocessing

    @property
    def tasks(self) -> tuple[TaskInfo, ...]:
        return self.manifest.tasks

    @property
    def label_space(self) -> SharedLabelSpace | None:
        return self.manifest.label_space

    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskInfo:
        for task in self.tasks:
            if task.name == name:
                return task
        known = ", ".join(self.task_names()) or "none (this is an atlas-conditioned LCS bundle)"
        raise InputError(f"unknown task {name!r}; this bundle's tasks: {known}")

    def task_labels(self, name: str) -> list[LabelInfo]:
        return list(self.task(name).labels)

    def build_network(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The network with this bundle's weights, in eval mode, on ``device``."""
        network = build_network(self.network_config)
        network.load_state_dict(self.state_dict, strict=True)
        return network.to(device).eval()

    def _require_lcs(self) -> Path:
        if not self.kind.has_atlas:
            raise BundleError(
                f"{self.path}: a {self.kind} bundle has no atlas (atlas labels need an LCS bundle)"
            )
        assert self._folder is not None
        return self._folder

    def atlas_image(self) -> tuple[np.ndarray, np.ndarray]:
        from .nifti_io import load_nifti

        folder = self._require_lcs()
        assert self.manifest.atlas is not None
        return load_nifti(folder / self.manifest.atlas.image, dtype=np.float32)

    def atlas_labels(self) -> tuple[np.ndarray, np.ndarray, list[LabelInfo]]:
        from .nifti_io import load_nifti

        folder = self._require_lcs()
        atlas = self.manifest.atlas
        assert atlas is not None
        labelmap, affine = load_nifti(folder / atlas.labels, dtype=np.int32)
        return labelmap, affine, labels_from_csv(folder / atlas.names)

    def has_reference(self) -> bool:
        """True when scans can be aligned automatically: LCS atlases, or a stored reference image (a 3D image;
        a 2D bundle aligns volumes to it, then cuts them in its tasks' planes in the reference's orientation)."""
        atlas_volume = self.kind.has_atlas and self.preprocessing.spatial_dims == 3
        return atlas_volume or self.manifest.reference_image is not None

    def reference_image(self) -> tuple[np.ndarray, np.ndarray]:
        """The image scans are aligned to: the atlas for LCS, else the stored reference (BundleError if none)."""
        from .nifti_io import load_nifti

        if self.kind.has_atlas:
            return self.atlas_image()
        if self.manifest.reference_image is None:
            raise BundleError(
                f"{self.path}: this bundle carries no reference image, so scans cannot be aligned"
            )
        assert self._folder is not None
        return load_nifti(self._folder / self.manifest.reference_image, dtype=np.float32)

    def network_reference(self) -> tuple[np.ndarray, np.ndarray] | None:
        """LCS: the stored reference image, in the position the network's training targets had (e.g. the
        template in MNI space, where the atlas case is one deformed sample), or None. Scans are still aligned
        to the atlas; the network sees them in this position (``atlas_brain.network_pose``)."""
        from .nifti_io import load_nifti

        if not self.kind.has_atlas or self.manifest.reference_image is None:
            return None
        assert self._folder is not None
        return load_nifti(self._folder / self.manifest.reference_image, dtype=np.float32)

    def summary(self) -> str:
        m = self.manifest
        lines = [f"Bundle: {m.name or self.path.name}  (kind: {self.kind}, id {self.bundle_id[:12]})"]
        if m.description:
            lines.append(m.description)
        net = self.network_config
        lines.append(
            f"Network: {net.arch} {net.spatial_dims}D, channels {list(net.channels)}, "
            f"{net.out_channels} output channel(s)"
        )
        prep = self.preprocessing
        weighting = f"{prep.contrast}-weighted " if prep.contrast else ""
        kind = (
            f"{weighting}{prep.scan_modality} scans"
            if prep.scan_modality
            else "scans of any kind (none declared)"
        )
        lines.append(f"Input: {kind}, spacing {list(prep.spacing)} mm, intensity {prep.intensity.mode}")
        for task in self.tasks:
            names = ", ".join(label.name for label in task.labels)
            lines.append(f"Task {task.name} ({len(task.labels)} labels): {names}")
            if task.region_mm:  # where an aligned scan is segmented (trained_region.py)
                lines.append(f"  trained on {region_text(task.region_mm, task.plane)} of the reference")
            elif task.plane is not None:
                lines.append(f"  trained on {task.plane} slices")
        if m.atlas is not None:
            atlas = [label.name for label in labels_from_csv(self._require_lcs() / m.atlas.names)]
            lines.append(
                f"Atlas labels ({len(atlas)}): {', '.join(atlas[:12])}{' ...' if len(atlas) > 12 else ''}"
            )
        if self.kind.has_atlas and m.reference_image is not None:
            lines.append(
                f"Network reference: {m.reference_image} (aligned scans are shown to the network in its position)"
            )
        training = m.training
        if training:
            parts = [
                f"{k}: {v}"
                for k, v in training.items()
                if isinstance(v, (str, int, float)) and k != "metrics"
            ]
            if parts:
                lines.append("Training: " + "; ".join(parts))
            if "appearance" in training:  # what scans it was trained to hold on (augmentation names)
                lines.append("Trained for appearance: " + (", ".join(training["appearance"]) or "none"))
            metrics = training.get("metrics")
            if isinstance(metrics, dict) and metrics:
                lines.append(
                    "Metrics: "
                    + "; ".join(
                        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                    )
                )
        if m.software:
            lines.append("Written by: " + ", ".join(f"{k} {v}" for k, v in m.software.items()))
        return "\n".join(lines)


def _safe_extract(zip_path: Path, target: Path) -> Path:
    """Extract a bundle zip, refusing absolute paths, '..', links and oversized archives."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            if sum(m.file_size for m in members) > _MAX_ZIP_BYTES:
                raise BundleError(f"{zip_path}: archive unpacks to more than {_MAX_ZIP_BYTES >> 30} GiB")
            for member in members:
                name = member.filename
                parts = Path(name).parts
                if (
                    name.startswith(("/", "\\"))
                    or ".." in parts
                    or (member.external_attr >> 16) & 0o170000 == 0o120000
                ):
                    raise BundleError(f"{zip_path}: refusing unsafe archive member {name!r}")
            archive.extractall(target)
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{zip_path}: not a readable zip archive ({exc})") from None
    manifests = sorted(target.rglob(MANIFEST), key=lambda p: len(p.parts))
    if not manifests:
        raise BundleError(f"{zip_path}: archive holds no {MANIFEST}")
    return manifests[0].parent


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Load and validate a bundle folder or .zip. Raises BundleError naming the file and the problem."""
    path = Path(path)
    tempdir = None
    if path.is_file() and path.suffix.lower() == ".zip":
        tempdir = tempfile.TemporaryDirectory(prefix="lsseg-bundle-")
        folder = _safe_extract(path, Path(tempdir.name))
    elif path.is_dir():
        folder = path
    elif path.exists():
        raise BundleError(f"{path}: a bundle is a folder or a .zip file")
    else:
        raise BundleError(f"{path}: bundle not found")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing (is {path} a bundle folder?)")
    _require_inside(manifest_path, folder)
    if manifest_path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise BundleError(
            f"{manifest_path}: larger than {_MAX_MANIFEST_BYTES >> 20} MiB, not a bundle manifest"
        )
    raw = manifest_path.read_bytes()
    data = parse_json(raw, str(manifest_path), BundleError)  # also too deep nesting, too many digits
    manifest = Manifest.from_dict(data, str(manifest_path))
    files = manifest.files
    if WEIGHTS not in files:
        raise BundleError(f"{manifest_path}: does not list {WEIGHTS}")
    missing = [f for f in manifest.named_files() if f not in files]
    if missing:
        raise BundleError(f"{manifest_path}: files not hashed: {', '.join(missing)}")
    for name, expected in files.items():
        file_path = folder / name
        if not file_path.is_file():
            raise BundleError(f"{file_path}: missing from the bundle")
        _require_inside(file_path, folder)
        if _sha256(file_path) != expected:
            raise BundleError(f"{file_path}: sha256 does not match bundle.json (file changed or corrupt)")
    state_dict = _load_weights(folder / WEIGHTS, manifest.network)
    bundle = Bundle(
        path=path,
        manifest=manifest,
        bundle_id=hashlib.sha256(raw).hexdigest(),
        state_dict=state_dict,
        _folder=folder,
        _tempdir=tempdir,
    )
    if bundle.kind.has_atlas:
        _validate_atlas(bundle)
    return bundle


def _require_inside(file_path: Path, folder: Path) -> None:
    """Refuse a bundle file that is a link leading out of the bundle (its bytes are not the bundle's own)."""
    if not file_path.resolve().is_relative_to(folder.resolve()):
        raise BundleError(
            f"{file_path}: is a link to a file outside the bundle; copy the file into the bundle"
        )


def _load_weights(path: Path, network_config: NetworkConfig) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BundleError(f"{path}: not a valid safetensors file ({exc})") from None
    expected = build_network(network_config).state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise BundleError(
            f"{path}: tensors do not match the network config (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise BundleError(
                f"{path}: tensor {key} has shape {tuple(state[key].shape)}, config needs {tuple(tensor.shape)}"
            )
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise BundleError(f"{path}: tensor {key} holds NaN/Inf")
    return state


def _validate_atlas(bundle: Bundle) -> None:
    image, image_affine = bundle.atlas_image()
    labels, label_affine, names = bundle.atlas_labels()
    source = bundle._folder
    if image.ndim != 3 or labels.shape != image.shape:
        raise BundleError(
            f"{source}: atlas image {image.shape} and labels {labels.shape} must be one 3D grid"
        )
    if not np.allclose(image_affine, label_affine, atol=1e-3):
        raise BundleError(f"{source}: atlas image and labels have different affines")
    present = set(np.unique(labels).tolist()) - {0}
    unnamed = sorted(present - {label.value for label in names})
    if unnamed:
        table = bundle.manifest.atlas.names if bundle.manifest.atlas else "the names table"
        raise BundleError(f"{source}: atlas label values without a name in {table}: {unnamed[:10]}")


def build_manifest(
    *,
    kind: BundleKind | str,
    network: NetworkConfig,
    preprocessing: Preprocessing,
    tasks: Sequence[TaskInfo] = (),
    label_space: SharedLabelSpace | None = None,
    name: str = "",
    description: str = "",
    training: dict | None = None,
) -> Manifest:
    """A new, validated manifest stamped with the time and software versions (``write_bundle`` adds hashes)."""
    kind = BundleKind.parse(kind)
    return Manifest(
        kind=kind,
        network=network,
        preprocessing=preprocessing,
        tasks=tuple(tasks),
        label_space=label_space,
        atlas=AtlasFiles() if kind.has_atlas else None,
        name=name,
        description=description,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        training=dict(training or {}),
        software=software_versions(),
    )


def write_bundle(
    out: str | os.PathLike,
    manifest: Manifest,
    state_dict: dict[str, torch.Tensor],
    *,
    atlas: tuple[np.ndarray, np.ndarray, np.ndarray, list[LabelInfo]] | None = None,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle folder atomically (built in a temporary sibling folder, then renamed into place).

    ``atlas`` = (image, labelmap, affine, labels) for LCS bundles; ``reference`` = (image, affine), a 3D
    image that scans are aligned to before segmenting (task bundles; LCS aligns to its atlas and shows the
    aligned scan to its network in the reference's position, see ``network_reference``). Validates by loading the result before
    it replaces anything. Returns the bundle folder.
    """
    from safetensors.torch import save_file

    from .nifti_io import save_nifti

    out = require_parent_dir(out)
    if out.exists() and not overwrite:
        raise InputError(
            f"{out}: already exists (choose a new bundle path; bundles are never overwritten silently)"
        )
    with atomic_folder(out) as staging:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(staging / WEIGHTS))
        if manifest.atlas is not None:
            if atlas is None:
                raise InputError("an lcs bundle needs its atlas (image, labelmap, affine, labels)")
            image, labelmap, affine, labels = atlas
            save_nifti(staging / manifest.atlas.image, np.asarray(image, dtype=np.float32), affine)
            save_nifti(staging / manifest.atlas.labels, np.asarray(labelmap, dtype=np.int16), affine)
            (staging / manifest.atlas.names).write_text(labels_to_csv(labels), encoding="utf-8")
        if reference is not None:
            save_nifti(staging / REFERENCE_IMAGE, np.asarray(reference[0], dtype=np.float32), reference[1])
            manifest = replace(manifest, reference_image=REFERENCE_IMAGE)
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        manifest = replace(manifest, files=files)
        (staging / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2), encoding="utf-8")
        load_bundle(staging)  # never publish a bundle that would not load
    return out


def zip_bundle(folder: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Pack a bundle folder into a .zip atomically (for sharing one file)."""
    folder = Path(folder)
    load_bundle(folder)
    with atomic_path(zip_path, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.iterdir()):
                if file.is_file():
                    archive.write(file, arcname=file.name)
    return Path(zip_path)

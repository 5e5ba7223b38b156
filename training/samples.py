"""The training data pipeline shared by every method: cases are brought onto the model grid exactly as
inference does (``to_model_grid`` for images, the same grid for labels by nearest-neighbour resampling),
cached in memory once (MONAI ``CacheDataset``), then each step draws patches (foreground-biased so small
structures are found) and augments them with MONAI's random transforms.

All randomness of a step comes from (seed, rank, step): a resumed run draws exactly the patches and
augmentations the killed run would have drawn, with no random-generator state to save.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from LabelSharingSegLib.engine.preprocessing import normalise_intensity, resample_to_grid, to_model_grid
from LabelSharingSegLib.engine.preprocessing_config import Preprocessing

from .datasets import Case, as_volume, load_case


def step_rng(seed: int, rank: int, step: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one (rank, step): independent of how many steps ran before."""
    return np.random.default_rng([int(seed), int(rank), int(step), int(stream)])


def spacing_in_model_axes(affine: np.ndarray, spatial_dims: int) -> list[float]:
    """Voxel spacing along the model grid's axes (RAS order for 3D; the voxel axes for 2D)."""
    import nibabel as nib

    columns = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    if spatial_dims == 2:
        return [float(columns[0]), float(columns[1])]
    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    out = [0.0, 0.0, 0.0]
    for voxel_axis, (world_axis, _) in enumerate(ornt):
        out[int(world_axis)] = float(columns[voxel_axis])
    return out


def _resample_label(label: np.ndarray, affine: np.ndarray, dst_affine: np.ndarray, dst_shape) -> torch.Tensor:
    out = resample_to_grid(
        torch.as_tensor(label.astype(np.float32))[None],
        dst_affine,
        dst_shape,
        mode="nearest",
        src_affine=affine,
    )[0]
    return out.round().to(torch.int64)


class ToModelGrid:
    """Deterministic (cacheable) transform: {'case': Case, ...} -> image (C, X, Y, Z) normalised on the model
    grid, label (X, Y, Z) int64 of the case's own label values, and the grid's affine."""

    def __init__(self, preprocessing: Preprocessing):
        self.prep = preprocessing

    def __call__(self, item: dict) -> dict:
        image, label, affine = load_case(item["case"])
        channels = []
        for c in range(image.shape[0]):
            channel = as_volume(image[c])
            channels.append(to_model_grid(channel, affine, self.prep))
        grid_affine = channels[0].affine.numpy()
        out = dict(item)
        out["image"] = torch.cat([t.as_tensor() for t in channels], dim=0).float()
        out["affine"] = grid_affine
        label = None if label is None else as_volume(label)
        if label is not None:
            out["label"] = _resample_label(label, affine, grid_affine, tuple(out["image"].shape[1:]))
        return out


class ToAtlasGrid:
    """Deterministic transform for LCS: the target resampled onto the atlas grid as inference does
    (bilinear from the raw image, then intensity normalisation), its labels by nearest neighbour. ``affines``
    (case id -> voxel -> atlas-space affine) replaces a case's own affine: the case registered to the atlas."""

    def __init__(
        self,
        preprocessing: Preprocessing,
        atlas_affine: np.ndarray,
        atlas_shape,
        affines: Mapping[str, np.ndarray] | None = None,
    ):
        self.prep = preprocessing
        self.affine = atlas_affine
        self.shape = tuple(int(s) for s in atlas_shape)
        self.affines = dict(affines or {})

    def __call__(self, item: dict) -> dict:
        image, label, affine = load_case(item["case"])
        affine = self.affines.get(item["case"].case_id, affine)
        channels = []
        for c in range(image.shape[0]):
            raw = as_volume(image[c])
            on_grid = resample_to_grid(
                torch.as_tensor(raw)[None], self.affine, self.shape, mode="bilinear", src_affine=affine
            )[0]
            channels.append(normalise_intensity(on_grid, self.prep.intensity)[None])
        out = dict(item)
        out["image"] = torch.cat(channels, dim=0).float()
        out["affine"] = self.affine
        label = None if label is None else as_volume(label)
        if label is not None:
            out["label"] = _resample_label(label, affine, self.affine, self.shape)
        return out


def cache_items(cases: list[tuple[Case, int]], transform, workers: int = 0) -> list[dict]:
    """Run the deterministic preprocessing once per case through MONAI's CacheDataset and keep the results."""
    from monai.data import CacheDataset

    if not cases:
        return []
    data = [{"case": case, "task": task} for case, task in cases]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = CacheDataset(
            data=data,
            transform=transform,
            cache_rate=1.0,
            num_workers=workers or None,
            progress=False,
            copy_cache=False,
        )
        return [dataset[i] for i in range(len(dataset))]


def build_augmentation(spatial_dims: int, spatial: bool = True):
    """MONAI dictionary transforms on {'image', 'label'}: small rotation/scaling (labels nearest), noise,
    intensity scale and shift. ``spatial=False`` keeps geometry (LCS: target and atlas stay aligned)."""
    from monai.transforms import (
        Compose,
        RandAffined,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    transforms = []
    if spatial:
        rotate = (0.26,) if spatial_dims == 2 else (0.26, 0.26, 0.26)
        transforms.append(
            RandAffined(
                keys=("image", "label"),
                prob=0.3,
                rotate_range=rotate,
                scale_range=(0.15,) * spatial_dims,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    transforms += [
        RandGaussianNoised(keys="image", prob=0.15, std=0.05),
        RandScaleIntensityd(keys="image", prob=0.3, factors=0.15),
        RandShiftIntensityd(keys="image", prob=0.3, offsets=0.1),
    ]
    return Compose(transforms)


def pad_to(tensor: torch.Tensor, shape, value: float = 0.0) -> torch.Tensor:
    """Pad the trailing spatial axes at the far end up to ``shape`` (no-op where already large enough)."""
    spatial = tensor.shape[-len(shape) :]
    pads = []
    for size, want in zip(reversed(spatial), reversed(list(shape))):
        pads += [0, max(0, int(want) - int(size))]
    if not any(pads):
        return tensor
    return torch.nn.functional.pad(tensor, pads, value=value)


@dataclass
class PatchSampler:
    """Draws training patches from cached model-grid items.

    Tasks are balanced (each sample first draws a task uniformly, or in the proportions ``task_weights``, then a
    case of it). With probability
    ``foreground_prob`` the patch is centred on a random voxel of a label drawn uniformly among the labels
    present in the case, so a structure of a few voxels is as likely to be seen as a large one. 2D bundles
    draw single slices (the slice axis is the third voxel axis, as inference runs them).
    """

    items: list[dict]
    patch: tuple[int, ...]
    spatial_dims: int
    foreground_prob: float = 0.5
    task_weights: dict[int, float] | None = None  # None: tasks equally often; else drawn in these proportions

    def __post_init__(self):
        self.by_task: dict[int, list[int]] = {}
        for i, item in enumerate(self.items):
            self.by_task.setdefault(int(item["task"]), []).append(i)
        self.tasks = sorted(self.by_task)
        self.task_p = None
        if self.task_weights is not None:
            weights = np.array([float(self.task_weights[t]) for t in self.tasks])
            self.task_p = weights / weights.sum()
        self._label_voxels: dict[int, dict[int, np.ndarray]] = {}

    def _voxels(self, index: int) -> dict[int, np.ndarray]:
        if index not in self._label_voxels:
            label = self.items[index]["label"].numpy()
            self._label_voxels[index] = {int(v): np.argwhere(label == v) for v in np.unique(label) if v != 0}
        return self._label_voxels[index]

    def locate(self, rng: np.random.Generator) -> tuple[int, int, int | None, tuple[slice, ...]]:
        """Draw one patch: (item index, task, slice index for 2D or None, spatial region). The region may
        reach past the volume's end where the volume is smaller than the patch (callers pad)."""
        if self.task_p is None:
            task = self.tasks[int(rng.integers(len(self.tasks)))]
        else:
            task = self.tasks[int(rng.choice(len(self.tasks), p=self.task_p))]
        index = self.by_task[task][int(rng.integers(len(self.by_task[task])))]
        shape = tuple(self.items[index]["label"].shape)  # (X, Y, Z)
        centre = None
        voxels = self._voxels(index)
        if voxels and rng.random() < self.foreground_prob:
            values = sorted(voxels)
            chosen = voxels[values[int(rng.integers(len(values)))]]
            centre = chosen[int(rng.integers(len(chosen)))]
        if centre is None:
            centre = np.array([int(rng.integers(s)) for s in shape])
        z = None
        if self.spatial_dims == 2:
            z = int(centre[2])
            centre, shape = centre[:2], shape[:2]
        starts = []
        for c, size, p in zip(centre, shape, self.patch):
            start = int(c) - p // 2 + int(rng.integers(-p // 4, p // 4 + 1))
            starts.append(min(max(0, start), max(0, size - p)))
        return index, task, z, tuple(slice(s, s + p) for s, p in zip(starts, self.patch))

    def draw(self, rng: np.random.Generator) -> dict:
        index, task, z, region = self.locate(rng)
        image, label = self.items[index]["image"], self.items[index]["label"]
        if z is not None:
            image, label = image[..., z], label[..., z]
        patch_image = pad_to(image[(slice(None),) + region], self.patch)
        patch_label = pad_to(label[region], self.patch)
        return {"image": patch_image, "label": patch_label[None], "task": task}

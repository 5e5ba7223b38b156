"""The training input pipeline that runs ahead of the model (``--pipeline device``, the default).

The cached model-grid volumes live on the training device as tensors. Each step draws its patches (the same
foreground-biased ``PatchSampler`` decisions as before), crops them on the device and augments the whole batch
there at once (``batch_augment``: one ``grid_sample`` for rotation/scaling/elastic, image and label through the
same grid; ``appearance``: bias field, gamma, resolution, noise, label-map synthesis; then intensity noise,
scale and shift). On a GPU these are queued kernels, so the CPU never prepares data one sample at a time.

Where the device cannot hold the cache (or ``--loader-workers N`` asks for it), the cache stays in host memory
and N worker processes build the batches ahead of the loop (a prefetching ``DataLoader``, pinned memory).

Every batch is a function of (seed, rank, step) alone: the numpy generator of the step draws every decision and
seeds a ``torch.Generator`` on the building device for full-size noise. Batches are therefore identical across
runs, across a kill and ``--resume``, and whether or not workers build them ahead - for a given device type (a
CUDA generator draws other noise than a CPU one). ``--pipeline legacy`` keeps the per-sample MONAI path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.preprocessing import pad_spatial

from .appearance import AppearanceAugment, parse_appearance
from .batch_augment import SpatialParams, device_generator, random_spatial_grid, vary_intensity, warp
from .head_appearance import brain_distances
from .samples import PatchSampler, pad_to, step_rng

PIPELINES = ("device", "legacy")
CACHE_SHARE = 0.4  # at most this share of the device's free memory holds the cache


@dataclass(frozen=True)
class PipelineSettings:
    kind: str = "device"  # device | legacy
    augment: bool = True
    elastic: bool = True
    appearance: tuple[str, ...] = ()
    loader_workers: int | None = None  # None: automatic (0 when the cache fits on the device)

    def __post_init__(self):
        if self.kind not in PIPELINES:
            raise InputError(f"unknown --pipeline {self.kind!r}; choose {' or '.join(PIPELINES)}")
        if self.kind == "legacy" and self.appearance:
            raise InputError(
                "--appearance needs --pipeline device (the legacy pipeline has no such transforms)"
            )
        if self.loader_workers is not None and self.loader_workers < 0:
            raise InputError(f"--loader-workers must be 0 or more, got {self.loader_workers}")

    @classmethod
    def from_args(cls, args) -> PipelineSettings:
        workers = getattr(args, "loader_workers", "auto")
        return cls(
            kind=getattr(args, "pipeline", "device"),
            augment=not getattr(args, "no_augment", False),
            elastic=not getattr(args, "no_elastic", False),
            appearance=parse_appearance(getattr(args, "appearance", "none")),
            loader_workers=None if workers in (None, "auto") else int(workers),
        )

    def run_config(self) -> dict:
        """What changes the batches (fingerprinted for --resume); the worker count does not."""
        return {"pipeline": self.kind, "elastic": self.elastic, "appearance": list(self.appearance)}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def cache_device(tensors, device: torch.device, settings: PipelineSettings) -> tuple[torch.device, int]:
    """Where the cache lives and how many loader workers build batches: on the training device with none,
    unless workers were asked for or a CUDA device lacks the memory (then host memory and workers)."""
    if settings.loader_workers:
        return torch.device("cpu"), settings.loader_workers
    if device.type != "cuda" or settings.loader_workers == 0:
        return device, 0
    free, _total = torch.cuda.mem_get_info(device)
    if _nbytes(tensors) <= CACHE_SHARE * free:
        return device, 0
    from .threads import available_cores

    return torch.device("cpu"), max(1, min(4, available_cores() // 2))


class TaskBatches:
    """Device batches for the task methods: foreground-biased patches cropped and augmented on the device.

    With ``--appearance head`` every cached image is padded by a margin of background (its own minimum) and
    each patch is shifted at random by up to that margin, so patches also show the space around the brain
    where the painted head (and, at inference, a real head and neck) lies; each image's distance from its
    brain (found once) travels with the patches through the same crop and warp."""

    def __init__(
        self,
        sampler: PatchSampler,
        settings: PipelineSettings,
        device: torch.device,
        spacing_mm: float = 1.0,
    ):
        self.sampler = sampler
        self.patch = tuple(sampler.patch)
        self.settings = settings
        tensors = [i["image"] for i in sampler.items] + [i["label"] for i in sampler.items]
        self.device, self.loader_workers = cache_device(tensors, device, settings)
        self.images = [i["image"].float().to(self.device) for i in sampler.items]
        self.labels = [i["label"].to(self.device) for i in sampler.items]
        self.appearance = AppearanceAugment(settings.appearance, spacing_mm=spacing_mm)
        self.spatial = SpatialParams() if settings.elastic else SpatialParams(elastic_prob=0.0)
        self.nearness: list[torch.Tensor] | None = None
        self.margin = 0
        if "head" in settings.appearance:
            self.margin = int(round(self.appearance.head.margin_mm / spacing_mm))
            in_plane = len(self.patch)
            pads = [self.margin] * (2 * in_plane)
            if sampler.spatial_dims == 2:  # slices along the third axis: that axis is not padded
                pads = [0, 0] + pads
            self.images = [F.pad(i, pads, value=float(i.min())) for i in self.images]
            self.labels = [F.pad(i, pads) for i in self.labels]
            distances = brain_distances(self.images, sampler.spatial_dims, spacing_mm)
            self.nearness = [_nearness(d).to(self.device) for d in distances]

    def _shifted(self, rng, region: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
        """The region in the padded volume, moved by up to the margin (never past the padded edge)."""
        out = []
        for r, size, p in zip(region, shape, self.patch):
            start = r.start + self.margin + int(rng.integers(-self.margin, self.margin + 1))
            start = min(max(0, start), max(0, size - p))
            out.append(slice(start, start + p))
        return tuple(out)

    def __call__(self, seed: int, rank: int, step: int, batch_size: int) -> dict:
        rng = step_rng(seed, rank, step)
        images, labels, near, tasks = [], [], [], []
        for _ in range(batch_size):
            index, task, z, region = self.sampler.locate(rng)
            image, label = self.images[index], self.labels[index]
            nearness = self.nearness[index] if self.nearness is not None else None
            if self.margin:
                region = self._shifted(rng, region, tuple(label.shape[: len(self.patch)]))
            if z is not None:
                image, label = image[..., z], label[..., z]
                nearness = nearness[..., z] if nearness is not None else None
            background = float(image.min()) if self.margin else 0.0
            images.append(pad_to(image[(slice(None),) + region], self.patch, background))
            labels.append(pad_to(label[region], self.patch))
            if nearness is not None:
                near.append(pad_to(nearness[region], self.patch))
            tasks.append(task)
        image, label = torch.stack(images), torch.stack(labels)
        if self.settings.augment:
            generator = device_generator(rng, self.device)
            grid, moved = random_spatial_grid(rng, batch_size, self.patch, self.device, self.spatial)
            distance = None
            if near:  # nearness travels as an extra image channel (linear; padding 0 = far from the brain)
                warped, label = warp(torch.cat([image, torch.stack(near)[:, None]], 1), label, grid, moved)
                image, distance = warped[:, :-1], _distance(warped[:, -1], self.appearance.spacing_mm)
            else:
                image, label = warp(image, label, grid, moved)
            image = self.appearance(rng, generator, image, label, distance)
            image = vary_intensity(rng, generator, image)
        return {"image": image, "target": label, "task": torch.tensor(tasks, dtype=torch.int64)}


class LCSBatches:
    """Device batches for LCS: whole atlas-grid targets (geometry kept, so target and atlas stay aligned),
    the conditioned label masks built on the device, intensity and appearance augmentation batched.

    With ``--appearance head`` the appearance acts on the atlas grid without the network's centred zero
    padding, which is put back afterwards, as inference normalises the scan on the atlas grid and then pads."""

    def __init__(
        self,
        method,
        items: list[dict],
        settings: PipelineSettings,
        device: torch.device,
        spacing_mm: float = 1.0,
    ):
        self.method = method
        self.settings = settings
        tensors = [i["image"] for i in items] + [i["label"] for i in items]
        self.device, self.loader_workers = cache_device(tensors, device, settings)
        self.images = [i["image"].float().to(self.device) for i in items]
        self.labels = [i["label"].to(self.device) for i in items]
        # each item's own atlas when the atlas is carried onto every case (--align-cases deformable), else one copy
        self.carries_atlas = method.carries_atlas(items)
        if self.carries_atlas:
            self.atlases = [
                (i["atlas_image"].to(self.device), i["atlas_label"].to(self.device)) for i in items
            ]
        else:
            self.atlases = [(method.atlas_image.to(self.device), method.atlas_label.to(self.device))] * len(
                items
            )
        self.appearance = AppearanceAugment(settings.appearance, spacing_mm=spacing_mm)
        self.distances: list[torch.Tensor] | None = None
        if "head" in settings.appearance:
            unpadded = [method.crop(i) for i in self.images]
            if method.spatial_dims == 2:  # (C, X, Y): one slice
                found = [d[..., 0] for d in brain_distances([u[..., None] for u in unpadded], 2, spacing_mm)]
            else:
                found = brain_distances(unpadded, 3, spacing_mm)
            self.distances = [d.to(self.device) for d in found]

    def __call__(self, seed: int, rank: int, step: int, batch_size: int) -> dict:
        rng = step_rng(seed, rank, step)
        images, masks, targets, labels, distances, codes, atlases = [], [], [], [], [], [], []
        for _ in range(batch_size):
            index = int(rng.integers(len(self.images)))
            label_sets = self.method.draw_label_sets(rng)
            codes += self.method.draw_codes(rng, label_sets)
            images.append(self.images[index])
            labels.append(self.labels[index])
            if self.distances is not None:
                distances.append(self.distances[index])
            atlas_image, atlas_label = self.atlases[index]
            for chosen in label_sets:  # consecutive conditionings of one image share its encoder pass
                masks.append(_any_of(atlas_label, chosen)[None].float())
                targets.append(_any_of(self.labels[index], chosen)[None].float())
                atlases.append(atlas_image)
        image = torch.stack(images)
        if self.settings.augment:
            generator = device_generator(rng, self.device)
            if self.distances is not None:
                label = self.method.crop(torch.stack(labels))
                image = self.appearance(
                    rng, generator, self.method.crop(image), label, torch.stack(distances)
                )
                image = pad_spatial(vary_intensity(rng, generator, image), self.method.pads)
            else:
                image = self.appearance(rng, generator, image, torch.stack(labels))
                image = vary_intensity(rng, generator, image)
        batch = {"image": image, "atlas_mask": torch.stack(masks), "target": torch.stack(targets)}
        if self.method.code_of is not None:
            batch["codes"] = torch.tensor(codes, device=self.device)
        if self.carries_atlas:
            batch["atlas_image"] = torch.stack(atlases)
        return batch


NEARNESS_MM = 10.0  # length scale of the nearness channel


def _nearness(distance: torch.Tensor) -> torch.Tensor:
    """exp(-distance / 10 mm): 1 inside the brain, 0 far away, so a warp's zero padding means 'far'."""
    return torch.exp(-distance / NEARNESS_MM)


def _distance(nearness: torch.Tensor, spacing_mm: float) -> torch.Tensor:
    """Back from nearness to millimetres; within half a voxel of the brain counts as inside (0)."""
    distance = -NEARNESS_MM * torch.log(nearness.clamp_min(1e-12))
    return torch.where(distance < 0.5 * spacing_mm, torch.zeros_like(distance), distance)


def _any_of(label: torch.Tensor, values: list[int]) -> torch.Tensor:
    """``torch.isin(label, values)`` for the one or two conditioned labels, as comparisons (several times
    faster than ``isin`` on a volume)."""
    mask = label == values[0]
    for value in values[1:]:
        mask |= label == value
    return mask


class _StepBatches(torch.utils.data.Dataset):
    """Batch number ``step`` of a run, for a DataLoader whose workers build batches ahead of the loop."""

    def __init__(self, build, seed: int, rank: int, batch_size: int, start: int, stop: int):
        self.build, self.seed, self.rank, self.batch_size = build, seed, rank, batch_size
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict:
        return self.build(self.seed, self.rank, self.start + i, self.batch_size)


def batch_stream(
    build, seed: int, rank: int, start: int, stop: int, batch_size: int, workers: int = 0, pin: bool = False
) -> Iterator[dict]:
    """The batches of steps ``start`` .. ``stop - 1`` in order: built in the loop (``workers`` 0) or ahead of
    it by worker processes (each batch still depends on its step only)."""
    if workers <= 0:
        for step in range(start, stop):
            yield build(seed, rank, step, batch_size)
        return
    loader = torch.utils.data.DataLoader(
        _StepBatches(build, seed, rank, batch_size, start, stop),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4,
        persistent_workers=False,
    )
    yield from loader

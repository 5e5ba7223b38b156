"""``lsseg data phantom``: small synthetic tasks for fast tests and CI, in the nnU-Net v2 raw layout.

Task k has its own background texture and intensity level (so a network can tell tasks apart from the image),
its own shape family (ellipsoids or boxes) and 1-3 labels of clearly different sizes (large, medium, small)
at random non-overlapping positions. Learnable by a tiny U-Net in a few hundred CPU steps.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from LabelSharingSegLib.engine.errors import InputError

from ..datasets import make_case_folders, write_case, write_dataset_json
from .writer import check_target, dataset_folder, prepare_output_root

SIZE_RADIUS = {"large": 0.26, "medium": 0.14, "small": 0.06}  # fraction of the image size
LABELS_PER_TASK = (("large", "medium", "small"), ("large", "small"), ("medium",))
TEXTURES = ("smooth", "stripes", "checker", "speckle")


def _texture(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    grids = np.indices(shape, dtype=np.float32)
    if kind == "smooth":
        field = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=max(shape) / 8)
        return field / (np.abs(field).max() + 1e-6) * 0.15
    if kind == "stripes":
        return 0.15 * np.sin(2 * np.pi * grids[0] / 5.0 + rng.uniform(0, 2 * np.pi))
    if kind == "checker":
        period = 6
        return 0.15 * (((grids // period).sum(axis=0) % 2) * 2 - 1)
    return rng.normal(0.0, 0.15, size=shape).astype(np.float32)  # speckle


def _shape_mask(
    shape: tuple[int, ...], center: np.ndarray, radius: float, box: bool, rng: np.random.Generator
) -> np.ndarray:
    grids = np.indices(shape, dtype=np.float32)
    stretch = rng.uniform(0.9, 1.1, size=len(shape))
    if len(shape) == 3 and shape[2] == 1:
        stretch[2] = 1.0
    offsets = [(grids[a] - center[a]) / (radius * stretch[a]) for a in range(len(shape))]
    if len(shape) == 3 and shape[2] == 1:
        offsets = offsets[:2]
    if box:
        return np.max(np.abs(np.stack(offsets)), axis=0) <= 1.0
    return np.sum(np.stack(offsets) ** 2, axis=0) <= 1.0


def make_phantom_case(
    task: int, dims: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32, label uint8, affine) for task ``task``; 2D cases have shape (size, size, 1)."""
    shape = (size, size, size) if dims == 3 else (size, size, 1)
    spatial = 3 if dims == 3 else 2
    sizes = LABELS_PER_TASK[task % len(LABELS_PER_TASK)]
    base = 0.15 + 0.12 * (task % 5)
    image = np.full(shape, base, dtype=np.float32) + _texture(TEXTURES[task % len(TEXTURES)], shape, rng)
    label = np.zeros(shape, dtype=np.uint8)
    placed: list[tuple[np.ndarray, float]] = []
    for value, size_name in enumerate(sizes, start=1):
        radius = SIZE_RADIUS[size_name] * size
        for _attempt in range(200):
            center = rng.uniform(radius + 1, size - radius - 1, size=spatial)
            if all(np.linalg.norm(center - c) > radius + r + 1.5 for c, r in placed):
                break
        placed.append((center, radius))
        full_center = np.concatenate([center, [0.0]]) if dims == 2 else center
        mask = _shape_mask(shape, full_center, radius, box=bool(task % 2), rng=rng)
        label[mask] = value
        image[mask] = (
            base
            + 0.35
            + 0.2 * value
            + 0.3 * _texture(TEXTURES[(task + value) % len(TEXTURES)], shape, rng)[mask]
        )
    image = image * rng.uniform(0.9, 1.1) + rng.normal(0.0, 0.04, size=shape).astype(np.float32)
    affine = np.eye(4)
    return image.astype(np.float32), label, affine


def make_phantom_tasks(
    out_dir,
    tasks: int = 2,
    dims: int = 2,
    size: int | None = None,
    cases: int = 8,
    test_cases: int = 2,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write ``tasks`` phantom datasets (``Dataset9NN_PhantomK``) into ``out_dir``; return their folders."""
    if dims not in (2, 3):
        raise InputError(f"--dims must be 2 or 3, not {dims}")
    if not 1 <= tasks <= 99:
        raise InputError(f"--tasks must be between 1 and 99, not {tasks}")
    size = size or (64 if dims == 2 else 32)
    if not 16 <= size <= 512:
        raise InputError(f"--size must be between 16 and 512 voxels, not {size}")
    if cases < 1 or test_cases < 0:
        raise InputError("need at least 1 training case and 0 or more test cases")
    progress = progress or (lambda message: None)
    root = prepare_output_root(out_dir)
    targets = [root / f"Dataset{900 + k:03d}_Phantom{k}" for k in range(tasks)]
    for target in targets:
        check_target(target, overwrite)
    for k, target in enumerate(targets):
        sizes = LABELS_PER_TASK[k % len(LABELS_PER_TASK)]
        with dataset_folder(target, overwrite=overwrite) as tmp:
            make_case_folders(tmp)
            for split, count in (("train", cases), ("test", test_cases)):
                for i in range(count):
                    rng = np.random.default_rng([int(seed), k, zlib.crc32(split.encode()), i])
                    image, label, affine = make_phantom_case(k, dims, size, rng)
                    case_id = f"phantom{k}_{i:03d}" if split == "train" else f"phantom{k}_test_{i:03d}"
                    write_case(tmp, split, case_id, image, label, affine)
            write_dataset_json(
                tmp,
                name=f"Phantom{k}",
                labels={
                    "background": 0,
                    **{f"{s}_{'box' if k % 2 else 'blob'}": v for v, s in enumerate(sizes, start=1)},
                },
                channel_names={"0": "synthetic"},
                num_training=cases,
                description=f"Synthetic phantom task {k}: {TEXTURES[k % len(TEXTURES)]} texture, "
                f"{'boxes' if k % 2 else 'ellipsoids'} of sizes {', '.join(sizes)}.",
                licence="CC0-1.0 (synthetic, generated by lsseg data phantom)",
                lsseg={"set": "phantom", "seed": int(seed), "spatial_dims": dims, "size": size},
            )
        progress(
            f"[phantom] wrote {target} ({cases} training + {test_cases} test cases, {len(sizes)} labels, "
            f"{dims}D {size}px)"
        )
    return targets

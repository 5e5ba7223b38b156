"""``lsseg plan``, ``lsseg segment`` and ``lsseg info``: the engine from the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.atlas_methods import ATLAS_METHODS, DEFAULT_ATLAS_METHOD, REFINE_ATLAS_METHOD
from LabelSharingSegLib.engine.atomic import atomic_paths, remove_stale_parts, write_text_atomic
from LabelSharingSegLib.engine.device import DEVICE_CHOICES
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.labels import LabelInfo, default_color, labels_from_csv, labels_to_csv
from LabelSharingSegLib.engine.labelspace import SharedLabelSpace, average_relative_sizes
from LabelSharingSegLib.engine.modality import check_stated_modality, weighting_warning
from LabelSharingSegLib.engine.nifti_io import has_nifti_ending, load_nifti, nifti_ending, write_nifti_file
from LabelSharingSegLib.engine.outputs import require_writable_outputs
from LabelSharingSegLib.engine.scan_io import load_scan

from .segnrrd import SEG_NRRD_ENDING, write_seg_nrrd


def register(subparsers) -> None:
    plan = subparsers.add_parser(
        "plan",
        help="compute relative label sizes and the shared label space of task datasets",
        description="Read nnU-Net v2 raw dataset folders (one per task), check them, compute each label's "
        "average relative size (label voxels / foreground voxels, averaged over the cases containing the "
        "label), rank-match labels across tasks into shared labels, print the table and write it as JSON.",
    )
    plan.add_argument("datasets", nargs="+", metavar="DATASET_DIR", help="one nnU-Net v2 raw folder per task")
    plan.add_argument("--out", type=Path, help="write the label space JSON here (default: print only)")
    plan.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    plan.set_defaults(func=run_plan)

    segment = subparsers.add_parser(
        "segment",
        help="segment an image with a model bundle",
        description="Segment a scan with a bundle: a task of a label-sharing (or baseline) bundle "
        "(--task), or atlas labels with an LCS bundle (--atlas-labels: a label map on the bundle's atlas "
        "grid, one value per structure; --atlas-names names them). Writes a label map on the input grid "
        "and a names table beside it (OUT.csv: value,name,color), both or neither, or a Slicer segmentation "
        "(OUT.seg.nrrd); existing files are replaced only with --overwrite, and never when they are one of "
        "the inputs. The scan may be a DICOM series (a folder holding it, also in sub-folders, or one of its "
        "files), NIfTI, NRRD or MetaImage.",
    )
    segment.add_argument("bundle", type=Path, help="bundle folder or .zip")
    segment.add_argument(
        "-i",
        "--input",
        type=Path,
        required=True,
        help="input scan: a DICOM folder or file, .nii/.nii.gz, .nrrd/.nhdr or .mha/.mhd",
    )
    segment.add_argument(
        "--series",
        metavar="UID",
        help="the DICOM series to read (Series Instance UID) when the input folder holds several",
    )
    segment.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output: a label map (.nii/.nii.gz, with a names table OUT.csv beside it) or a Slicer "
        "segmentation (.seg.nrrd, names and colours inside)",
    )
    target = segment.add_mutually_exclusive_group(required=True)
    target.add_argument("--task", help="task name (label-sharing and baseline bundles)")
    target.add_argument(
        "--atlas-labels",
        type=Path,
        metavar="MASKS.nii.gz",
        help="label map drawn on the atlas (LCS bundles): on the atlas grid, or on another grid inside the "
        "atlas's field of view (resampled, nearest neighbour); use the bundle's own atlas labels with "
        "--atlas-labels bundle",
    )
    segment.add_argument(
        "--atlas-names",
        type=Path,
        metavar="NAMES.csv",
        help="value,name[,#rrggbb] table for --atlas-labels (values it does not name take the "
        "bundle's names where values match, else 'label N')",
    )
    segment.add_argument(
        "--method",
        choices=ATLAS_METHODS,
        default=None,
        help="how --atlas-labels are segmented: carried by affine + deformable registration, by affine "
        "registration only, by the bundle's LCS network (Ma et al. 2022) or by a refine network; default: the "
        f"best measured (docs/DEMO.md): {REFINE_ATLAS_METHOD} for a bundle with a refine network (it needs one), "
        f"else {DEFAULT_ATLAS_METHOD}; lcs for 2D bundles",
    )
    segment.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    segment.add_argument(
        "--align",
        choices=("auto", "on", "off"),
        default="auto",
        help="register the scan to the bundle's reference image first (affine, SimpleITK); "
        "auto: when the bundle carries one (LCS atlases, 3D bundles with a reference)",
    )
    segment.add_argument(
        "--all-slices",
        action="store_true",
        help="segment the whole of an aligned scan; by default a task that records the region of the reference "
        "it was trained on (the shipped 2D tasks: the brain's box, or the span of the structures; lsseg info shows "
        "it) is segmented only there, since its network was never shown the rest",
    )
    segment.add_argument("--quiet", action="store_true", help="no progress output")
    segment.add_argument(
        "--no-cache",
        action="store_true",
        help="neither reuse nor store registrations in the cache folder (LSSEG_CACHE_DIR, default "
        "~/.cache/lsseg/registrations; the same scan, atlas and settings are otherwise registered once)",
    )
    segment.add_argument(
        "--overwrite", action="store_true", help="replace an existing output label map and names table"
    )
    segment.set_defaults(func=run_segment)

    info = subparsers.add_parser(
        "info",
        help="validate a bundle and describe it",
        description="Load a bundle (checks schema, hashes, tensor shapes) and print its summary.",
    )
    info.add_argument("bundle", type=Path)
    info.add_argument(
        "--json", action="store_true", help="print the validated bundle.json (in the current schema) instead"
    )
    info.set_defaults(func=run_info)


def plan_label_space(dataset_dirs: list[Path], progress=print) -> SharedLabelSpace:
    """Check every dataset, compute relative sizes from its training label maps and build the space."""
    from .datasets import load_case, require_valid_dataset

    tasks = []
    for folder in dataset_dirs:
        dataset = require_valid_dataset(folder)
        progress(
            f"{dataset.task_name()}: {len(dataset.training)} training cases, "
            f"{len(dataset.foreground_labels())} labels"
        )
        maps = (load_case(case)[1] for case in dataset.training)
        tasks.append(average_relative_sizes(maps, dataset.foreground_labels(), dataset.task_name()))
    return SharedLabelSpace.build(tasks)


def run_plan(args: argparse.Namespace) -> int:
    if args.out is not None:
        require_writable_outputs(
            [args.out], [("DATASET_DIR", d) for d in args.datasets], overwrite=args.overwrite
        )
        remove_stale_parts(args.out.parent)
    space = plan_label_space([Path(d) for d in args.datasets])
    print()
    print(
        f"Shared label space: n* = {space.n_shared} shared labels (+ background) for {len(space.task_names)} tasks"
    )
    print(space.format_table())
    if args.out is not None:
        write_text_atomic(args.out, json.dumps(space.to_dict(), indent=2))
        print(f"\nwrote {args.out}")
    return 0


def _atlas_masks_from_labelmap(bundle, path: Path | None, names_path: Path | None):
    """Masks (K, *atlas grid, made lazily) and LabelInfo for every non-zero value of a label map drawn on the atlas."""
    from LabelSharingSegLib.engine.atlas_segmentation import LabelMapMasks
    from LabelSharingSegLib.engine.propagation import labelmap_on_atlas_grid

    atlas_image, atlas_affine = bundle.atlas_image()
    atlas_map, _, atlas_names = bundle.atlas_labels()
    if path is not None and str(path) != "bundle":
        labelmap, affine = load_nifti(path, dtype=np.int32)
        if labelmap.ndim == 4 and labelmap.shape[3] == 1:
            labelmap = labelmap[..., 0]
        try:  # drawn on another grid (a resampled or cropped atlas): brought onto the atlas grid, if inside it
            labelmap, values = labelmap_on_atlas_grid(labelmap, affine, atlas_image.shape, atlas_affine)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
    else:
        labelmap = atlas_map
        values = [int(v) for v in np.unique(labelmap) if v != 0]
    known = {label.value: label for label in atlas_names}
    if names_path is not None:  # the user's names win; values it does not name keep the bundle's names
        known.update({label.value: label for label in labels_from_csv(names_path)})
    labels = [known.get(v, LabelInfo(v, f"label {v}", default_color(v))) for v in values]
    return LabelMapMasks(labelmap, values), labels  # masks made per chunk: memory does not grow with labels


def run_segment(args: argparse.Namespace) -> int:
    from LabelSharingSegLib.engine.atlas_segmentation import segment_atlas_labels
    from LabelSharingSegLib.engine.bundle import load_bundle
    from LabelSharingSegLib.engine.inference import segment_task
    from LabelSharingSegLib.engine.registration_cache import disk_cache_off

    as_segmentation = str(args.output).lower().endswith(SEG_NRRD_ENDING)
    if not (has_nifti_ending(args.output) or as_segmentation):
        raise InputError(f"{args.output}: output must end in .nii, .nii.gz or {SEG_NRRD_ENDING}")
    # a Slicer segmentation carries the names and colours itself; a label map gets a names table beside it
    names_path = None if as_segmentation else _names_path(args.output)
    outputs = [args.output] if names_path is None else [args.output, names_path]
    atlas_labels = (
        None if args.atlas_labels is None or str(args.atlas_labels) == "bundle" else args.atlas_labels
    )
    inputs = [
        ("-i", args.input),
        ("bundle", args.bundle),
        ("--atlas-labels", atlas_labels),
        ("--atlas-names", args.atlas_names),
    ]
    require_writable_outputs(outputs, inputs, overwrite=args.overwrite)  # before any work
    remove_stale_parts(args.output.parent)
    bundle = load_bundle(args.bundle)
    scan = load_scan(args.input, series=args.series)
    check_stated_modality(scan.stated, bundle.preprocessing.scan_modality, what=str(args.input))
    image, affine = scan.image, scan.affine
    if not args.quiet:
        print(f"read {scan.description}: {image.shape} voxels")
    warning = weighting_warning(scan.stated, bundle.preprocessing.contrast)
    if warning is not None:  # shown even with --quiet, as an uncertain alignment is
        print(f"WARNING: {warning}", file=sys.stderr)
    progress = None if args.quiet else _ProgressPrinter()
    align = {"auto": None, "on": True, "off": False}[args.align]
    with disk_cache_off() if args.no_cache else contextlib.nullcontext():
        if args.task is not None:
            result = segment_task(
                bundle,
                image,
                affine,
                args.task,
                device=args.device,
                progress=progress,
                align=align,
                all_slices=args.all_slices,
            )
        else:
            if args.all_slices:
                raise InputError("--all-slices goes with --task (a task's trained region)")
            masks, labels = _atlas_masks_from_labelmap(bundle, args.atlas_labels, args.atlas_names)
            result = segment_atlas_labels(
                bundle,
                image,
                affine,
                masks,
                labels,
                device=args.device,
                progress=progress,
                align=align,
                method=args.method,
            )
    if not args.quiet:
        print()
        if result.device_note:
            print(result.device_note)
    alignment = result.alignment
    if alignment is not None and (not args.quiet or not alignment.accepted or not alignment.confident):
        print(alignment.summary())
    if result.coverage is not None and not args.quiet:
        print(f"{result.coverage} (--all-slices segments every slice)")
    if names_path is None:
        write_seg_nrrd(args.output, result.labelmap, result.affine, result.labels)
    else:
        with atomic_paths([args.output, names_path], [nifti_ending(args.output), ".csv"]) as (
            map_part,
            names_part,
        ):
            write_nifti_file(map_part, result.labelmap, result.affine)  # both staged, then renamed together
            names_part.write_text(labels_to_csv(result.labels), encoding="utf-8")
    counts = {int(v): int(c) for v, c in zip(*np.unique(result.labelmap, return_counts=True))}
    beside = "" if names_path is None else f" and {names_path}"
    print(f"wrote {args.output} ({result.labelmap.shape}, {len(result.labels)} labels){beside}")
    for label in result.labels:
        print(f"  {label.value:5d}  {label.name:30s} {counts.get(label.value, 0)} voxels")
    return 0


def _names_path(output: Path) -> Path:
    name = output.name
    for ending in (".nii.gz", ".nii"):
        if name.lower().endswith(ending):
            name = name[: -len(ending)]
            break
    return output.with_name(name + ".csv")


class _ProgressPrinter:
    """Progress on stdout: one line rewritten in place on a terminal; to a file or pipe, one line per step rather
    than a carriage return per network window (thousands of updates in a log)."""

    def __init__(self) -> None:
        self._terminal = sys.stdout.isatty()
        self._step = ""

    def __call__(self, fraction: float, message: str) -> None:
        if self._terminal:
            print(f"\r[{int(fraction * 100):3d}%] {message:60s}", end="", flush=True)
        elif message != self._step:
            self._step = message
            print(f"[{int(fraction * 100):3d}%] {message}", flush=True)


def run_info(args: argparse.Namespace) -> int:
    from LabelSharingSegLib.engine.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    if args.json:
        print(json.dumps(bundle.manifest.to_dict(), indent=2))
    else:
        print(bundle.summary())
        if bundle.label_space is not None:
            print()
            print(bundle.label_space.format_table())
    return 0

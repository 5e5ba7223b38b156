"""Reading and checking datasets in the nnU-Net v2 raw layout.

A dataset folder holds ``dataset.json`` and ``imagesTr/{case}_{XXXX}{file_ending}`` (one file per channel),
``labelsTr/{case}{file_ending}`` and optionally ``imagesTs/`` and ``labelsTs/``. Example ``dataset.json``::

    {"channel_names": {"0": "T1"}, "labels": {"background": 0, "hippocampus": 1},
     "numTraining": 20, "file_ending": ".nii.gz"}

``read_dataset`` parses the structure only (``dataset.json`` plus the file listing); ``check_dataset`` also opens
every file and returns every problem it finds as one readable line. Only NIfTI files (``.nii.gz`` / ``.nii``) are
read. Pure numpy/nibabel: no slicer import. Only training and the data tools use it, so it lives on the training
side. Longer than most modules because it is one thing: the dataset format, read, checked and written.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LabelSharingSegLib.engine.atomic import write_text_atomic
from LabelSharingSegLib.engine.errors import DatasetError, InputError
from LabelSharingSegLib.engine.jsonfile import bounded_int
from LabelSharingSegLib.engine.nifti_io import NIFTI_ENDINGS, load_nifti, save_nifti

DATASET_JSON = "dataset.json"
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
AFFINE_TOLERANCE_MM = 1e-3
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_FOLDER_PREFIX_RE = re.compile(r"^Dataset\d{3}_")
# A task name becomes a folder name (``train individual``) and a label in Slicer: one plain path component.
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,99}$")
_SUBFOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")


@dataclass(frozen=True)
class Case:
    """One case: its channel files in channel order and its label file (None for unlabeled test images)."""

    case_id: str
    image_paths: tuple[Path, ...]
    label_path: Path | None


@dataclass(frozen=True)
class NnUNetDataset:
    """A parsed nnU-Net v2 raw dataset folder (structure only; see ``check_dataset`` for contents)."""

    root: Path
    name: str
    labels: dict[str, int]
    channel_names: dict[str, str]
    file_ending: str
    training: tuple[Case, ...]
    test: tuple[Case, ...]
    metadata: dict = field(repr=False)

    def foreground_labels(self) -> dict[int, str]:
        """Label value -> name for every label except background, sorted by value."""
        return {
            value: name for name, value in sorted(self.labels.items(), key=lambda item: item[1]) if value != 0
        }

    def task_name(self) -> str:
        """The task name: dataset.json ``name`` (or the folder name) without an nnU-Net ``DatasetNNN_`` prefix."""
        stripped = _FOLDER_PREFIX_RE.sub("", self.name)
        return stripped or self.name

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)


# ----------------------------------------------------------------------------------------------------------------
# dataset.json


def _parse_dataset_json(root: Path, problems: list[str]) -> dict | None:
    """Read dataset.json; append problems; return the parsed dict or None when it cannot be used at all."""
    path = root / DATASET_JSON
    if not path.is_file():
        problems.append(f"{path}: missing (every dataset folder needs a dataset.json)")
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"), parse_int=bounded_int)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot be read ({exc})")
        return None
    except json.JSONDecodeError as exc:
        problems.append(f"{path}: malformed JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")
        return None
    except (RecursionError, ValueError) as exc:  # hostile JSON: absurd nesting or huge integers
        problems.append(
            f"{path}: malformed JSON ({'nested too deeply' if isinstance(exc, RecursionError) else exc})"
        )
        return None
    if not isinstance(meta, dict):
        problems.append(f"{path}: must hold a JSON object, found {type(meta).__name__}")
        return None
    return meta


def is_safe_name(name: str) -> bool:
    """True for a task name that is one plain path component (never '..', a separator or a control code)."""
    return bool(_SAFE_NAME_RE.match(name)) and name.strip(".") != ""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_labels(labels, where: str, problems: list[str]) -> dict[str, int]:
    if not isinstance(labels, dict) or not labels:
        problems.append(f"{where}: 'labels' must be a non-empty object mapping names to integer values")
        return {}
    out: dict[str, int] = {}
    seen: dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            problems.append(
                f"{where}: label {name!r} is region-based ({value}); only plain integer labels are supported"
            )
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _is_int(value) or value < 0:
            problems.append(
                f"{where}: label {name!r} has value {value!r}; values must be non-negative integers"
            )
            continue
        if value in seen:
            problems.append(f"{where}: labels {seen[value]!r} and {name!r} share the value {value}")
            continue
        seen[value] = name
        out[str(name)] = value
    if out and 0 not in seen:
        problems.append(f"{where}: 'labels' must contain background with value 0 (e.g. \"background\": 0)")
    return out


def _validate_channels(channels, where: str, problems: list[str]) -> dict[str, str]:
    if not isinstance(channels, dict) or not channels:
        problems.append(f'{where}: \'channel_names\' must be a non-empty object such as {{"0": "T1"}}')
        return {}
    keys = list(channels)
    expected = [str(i) for i in range(len(keys))]
    if sorted(keys, key=lambda k: (len(k), k)) != expected:
        problems.append(f'{where}: \'channel_names\' keys must be "0".."{len(keys) - 1}", found {keys}')
        return {}
    return {key: str(channels[key]) for key in expected}


def _header(root: Path, problems: list[str]) -> tuple[dict | None, dict[str, int], dict[str, str], str]:
    meta = _parse_dataset_json(root, problems)
    if meta is None:
        return None, {}, {}, ".nii.gz"
    where = str(root / DATASET_JSON)
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        problems.append(f"{where}: missing key(s) {', '.join(missing)}")
    channel_source = meta.get("channel_names", meta.get("modality"))
    channels = _validate_channels(channel_source, where, problems) if channel_source is not None else {}
    labels = _validate_labels(meta["labels"], where, problems) if "labels" in meta else {}
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending.startswith("."):
        problems.append(f"{where}: 'file_ending' must be a string such as \".nii.gz\", found {ending!r}")
        ending = ".nii.gz"
    elif ending.lower() not in NIFTI_ENDINGS:
        problems.append(
            f"{where}: file_ending {ending!r} is not supported; convert the images to .nii.gz or .nii"
        )
    if "numTraining" in meta and not _is_int(meta["numTraining"]):
        problems.append(f"{where}: 'numTraining' must be an integer, found {meta['numTraining']!r}")
    return meta, labels, channels, ending


# ----------------------------------------------------------------------------------------------------------------
# file listing


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _strip_ending(name: str, ending: str) -> str | None:
    return name[: -len(ending)] if name.endswith(ending) and len(name) > len(ending) else None


def _named_files(folder: Path, ending: str, problems: list[str]):
    """(file, name without the ending) of each visible file; folders and wrong endings are reported."""
    for path in _visible_files(folder):
        if path.is_dir():
            problems.append(f"{path}: unexpected folder inside {folder.name}/")
        elif (stem := _strip_ending(path.name, ending)) is None:
            problems.append(f"{path}: wrong file ending (dataset.json says {ending!r})")
        else:
            yield path, stem


def _scan_images(
    folder: Path, ending: str, n_channels: int, problems: list[str]
) -> dict[str, tuple[Path, ...]]:
    """Group ``{case}_{XXXX}{ending}`` files by case; report bad names, wrong endings and missing channels."""
    grouped: dict[str, dict[int, Path]] = {}
    for path, stem in _named_files(folder, ending, problems):
        match = _CHANNEL_RE.match(stem)
        if not match:
            problems.append(
                f"{path}: image name must be {{case}}_{{XXXX}}{ending} with a 4-digit channel index"
            )
            continue
        grouped.setdefault(match["case"], {})[int(match["channel"])] = path
    cases: dict[str, tuple[Path, ...]] = {}
    for case_id, channels in sorted(grouped.items()):
        wanted = set(range(n_channels)) if n_channels else set(channels)
        missing = sorted(wanted - set(channels))
        extra = sorted(set(channels) - wanted)
        if missing:
            names = ", ".join(f"{case_id}_{c:04d}{ending}" for c in missing)
            problems.append(f"{folder}: case {case_id!r} is missing channel file(s) {names}")
        if extra:
            names = ", ".join(f"{case_id}_{c:04d}{ending}" for c in extra)
            problems.append(
                f"{folder}: case {case_id!r} has channel file(s) {names} not declared in channel_names"
            )
        if not missing:
            cases[case_id] = tuple(channels[c] for c in sorted(wanted))
    return cases


def _scan_labels(folder: Path, ending: str, problems: list[str]) -> dict[str, Path]:
    labels: dict[str, Path] = {}
    for path, stem in _named_files(folder, ending, problems):
        labels[stem] = path
    return labels


def _pair(
    images_dir: Path,
    labels_dir: Path,
    ending: str,
    n_channels: int,
    *,
    labels_required: bool,
    problems: list[str],
) -> tuple[tuple[Case, ...], set[str]]:
    """Pair images with labels; return (complete cases, ids of every case with at least one image file)."""
    images = _scan_images(images_dir, ending, n_channels, problems) if images_dir.is_dir() else {}
    labels = _scan_labels(labels_dir, ending, problems) if labels_dir.is_dir() else {}
    image_ids = set(images)
    if images_dir.is_dir():
        # channel problems already reported: count cases with any channel file as present
        for path in _visible_files(images_dir):
            stem = _strip_ending(path.name, ending)
            match = _CHANNEL_RE.match(stem) if stem else None
            if match:
                image_ids.add(match["case"])
    for case_id in sorted(set(labels) - image_ids):
        problems.append(
            f"{labels[case_id]}: label without image (expected {images_dir.name}/{case_id}_0000{ending})"
        )
    cases = []
    for case_id in sorted(images):
        label = labels.get(case_id)
        if label is None and labels_required:
            problems.append(
                f"{images_dir}: case {case_id!r} has no label (expected {labels_dir.name}/{case_id}{ending})"
            )
            continue
        cases.append(Case(case_id, images[case_id], label))
    return tuple(cases), image_ids


def _scan(root) -> tuple[NnUNetDataset | None, list[str]]:
    """Parse structure; return (dataset or None when unusable, structural problems)."""
    root = Path(root)
    problems: list[str] = []
    if not root.is_dir():
        return None, [f"{root}: dataset folder not found"]
    meta, labels, channels, ending = _header(root, problems)
    if meta is None:
        return None, problems
    images_tr = root / "imagesTr"
    if not images_tr.is_dir():
        problems.append(f"{images_tr}: missing (training images go in imagesTr/{{case}}_0000{ending})")
    if not (root / "labelsTr").is_dir():
        problems.append(f"{root / 'labelsTr'}: missing (training labels go in labelsTr/{{case}}{ending})")
    if (root / "labelsTs").is_dir() and not (root / "imagesTs").is_dir():
        problems.append(f"{root / 'labelsTs'}: present but imagesTs/ is missing")
    training, training_ids = _pair(
        images_tr, root / "labelsTr", ending, len(channels), labels_required=True, problems=problems
    )
    test, test_ids = _pair(
        root / "imagesTs", root / "labelsTs", ending, len(channels), labels_required=False, problems=problems
    )
    for case_id in sorted(set(training_ids) & set(test_ids)):
        problems.append(
            f"{root / 'imagesTs'}: case {case_id!r} is also a training case in imagesTr/ "
            "(a test case must never be trained on; rename or remove one of them)"
        )
    if images_tr.is_dir() and not training_ids:
        problems.append(f"{images_tr}: holds no training cases")
    num_training = meta.get("numTraining")
    if _is_int(num_training) and images_tr.is_dir():
        n_found = len(training_ids)
        if num_training != n_found:
            problems.append(
                f"{root / DATASET_JSON}: numTraining is {num_training} but imagesTr/ holds {n_found} case(s)"
            )
    name = meta.get("name") if isinstance(meta.get("name"), str) and meta.get("name") else root.name
    if not is_safe_name(name):
        problems.append(
            f"{root / DATASET_JSON}: name {name!r} is not a plain folder name (it names output folders: use "
            "letters, digits, space, '.', '_', '+', '-', start with a letter or digit, at most 100 characters)"
        )
    dataset = NnUNetDataset(
        root=root,
        name=name,
        labels=labels,
        channel_names=channels,
        file_ending=ending,
        training=training,
        test=test,
        metadata=meta,
    )
    return dataset, problems


def _raise(problems: list[str], root) -> None:
    lines = "\n".join(f"  - {p}" for p in problems)
    raise DatasetError(f"Dataset {root} has {len(problems)} problem(s); fix them and try again:\n{lines}")


def read_dataset(root) -> NnUNetDataset:
    """Parse ``dataset.json`` and the file listing (files are not opened). DatasetError lists every structural problem."""
    dataset, problems = _scan(root)
    if problems or dataset is None:
        _raise(problems, root)
    return dataset


# ----------------------------------------------------------------------------------------------------------------
# contents


def _read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Array in its stored (scaled) dtype with trailing singleton axes beyond the third removed, and the affine."""
    array, affine = load_nifti(path, dtype=None)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise InputError(f"{path}: expected a 2D or 3D volume, found shape {array.shape}")
    return array, affine


def _affines_match(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=0.0, atol=AFFINE_TOLERANCE_MM))


def _label_values(array: np.ndarray, path: Path, problems: list[str]) -> set[int] | None:
    """Distinct label values; None (with a problem) when values are not integers or not finite."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            problems.append(f"{path}: label holds NaN/Inf values")
            return None
        if not np.array_equal(array, np.round(array)):
            problems.append(f"{path}: label holds non-integer values (labels must be whole numbers)")
            return None
        array = array.astype(np.int64)
    elif array.dtype.kind not in "iub":
        problems.append(f"{path}: label has unsupported data type {array.dtype}")
        return None
    low, high = int(array.min()), int(array.max())
    if low >= 0 and high < 1_000_000:
        counts = np.bincount(array.ravel().astype(np.int64, copy=False), minlength=high + 1)
        return set(np.nonzero(counts)[0].tolist())
    return set(np.unique(array).tolist())


def _check_case(case: Case, declared: set[int], present: set[int], problems: list[str]) -> None:
    reference_shape = reference_affine = None
    reference_path = None
    for path in case.image_paths:
        try:
            image, affine = _read_volume(path)
        except InputError as exc:
            problems.append(f"{exc} (unreadable or corrupt)")
            continue
        if image.dtype.kind not in "iufb":
            problems.append(f"{path}: unsupported image data type {image.dtype}")
            continue
        if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
            n_bad = int(np.count_nonzero(~np.isfinite(image)))
            problems.append(f"{path}: image holds {n_bad} NaN/Inf voxel(s)")
        else:
            low, high = image.min(), image.max()
            if low == high:
                what = "empty (every voxel is 0)" if low == 0 else f"constant (every voxel is {low})"
                problems.append(f"{path}: image is {what}")
        if reference_shape is None:
            reference_shape, reference_affine, reference_path = image.shape, affine, path
        else:
            if image.shape != reference_shape:
                problems.append(
                    f"{path}: shape {image.shape} differs from {reference_path.name} {reference_shape}"
                )
            elif not _affines_match(affine, reference_affine):
                problems.append(
                    f"{path}: affine differs from {reference_path.name} (by more than {AFFINE_TOLERANCE_MM} mm)"
                )
        del image
    if case.label_path is None:
        return
    try:
        label, label_affine = _read_volume(case.label_path)
    except InputError as exc:
        problems.append(f"{exc} (unreadable or corrupt)")
        return
    if reference_shape is not None:
        if label.shape != reference_shape:
            problems.append(
                f"{case.label_path}: label shape {label.shape} differs from image shape {reference_shape}"
            )
        elif not _affines_match(label_affine, reference_affine):
            delta = float(np.max(np.abs(label_affine - reference_affine)))
            problems.append(
                f"{case.label_path}: label affine differs from the image affine by up to {delta:.4g} mm"
            )
    values = _label_values(label, case.label_path, problems)
    if values is None:
        return
    undeclared = sorted(values - declared)
    if undeclared:
        shown = ", ".join(str(v) for v in undeclared[:10]) + (" ..." if len(undeclared) > 10 else "")
        problems.append(f"{case.label_path}: label value(s) {shown} not declared in dataset.json 'labels'")
    present.update(values)


def check_dataset(root) -> list[str]:
    """Validate structure and contents; return every problem as one readable line (empty list = clean).

    Opens every image and label file once. Checks: dataset.json (present, valid JSON, required keys, labels,
    channels, file ending, numTraining), image-label pairs both ways, channel files, file endings, readability,
    2D/3D shapes, image-label shape and affine agreement, NaN/Inf, empty or constant images, integer label values,
    label values not declared, and declared labels absent from every labelled case.
    """
    dataset, problems = _scan(root)
    if dataset is None:
        return problems
    declared = set(dataset.labels.values())
    present: set[int] = set()
    for case in dataset.training + dataset.test:
        _check_case(case, declared, present, problems)
    labelled = [c for c in dataset.training + dataset.test if c.label_path is not None]
    if labelled and declared:
        absent = sorted(declared - present - {0})
        if absent:
            names = {v: n for n, v in dataset.labels.items()}
            shown = ", ".join(f"{names[v]} ({v})" for v in absent[:20]) + (" ..." if len(absent) > 20 else "")
            problems.append(
                f"{Path(root) / DATASET_JSON}: {len(absent)} declared label(s) never present in any "
                f"case: {shown}"
            )
    return problems


def require_valid_dataset(root) -> NnUNetDataset:
    """``check_dataset``; raise DatasetError listing every problem (one per line) if there is any."""
    problems = check_dataset(root)
    if problems:
        _raise(problems, root)
    return read_dataset(root)


def as_volume(array: np.ndarray) -> np.ndarray:
    """A 2D slice (X, Y) as a one-slice volume (X, Y, 1), the form every grid function takes; 3D unchanged."""
    return array[..., None] if array.ndim == 2 else array


def load_case(case: Case) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Return (image float32 (C, X, Y, Z) or (C, X, Y), label int16/int32 or None, affine 4x4).

    2D slices stored as (X, Y, 1) keep their singleton axis. Raises DatasetError naming the file on any problem.
    """
    channels = []
    affine = None
    for path in case.image_paths:
        try:
            image, image_affine = _read_volume(path)
        except InputError as exc:
            raise DatasetError(str(exc)) from None
        image = image.astype(np.float32, copy=False)
        if affine is None:
            affine, shape = image_affine, image.shape
        elif image.shape != shape or not _affines_match(image_affine, affine):
            raise DatasetError(
                f"{path}: shape/affine differs from {case.image_paths[0].name}; run `lsseg data check`"
            )
        channels.append(image)
    if not channels:
        raise DatasetError(f"case {case.case_id!r} has no image files")
    image = np.stack(channels, axis=0)
    if case.label_path is None:
        return image, None, affine
    try:
        label, label_affine = _read_volume(case.label_path)
    except InputError as exc:
        raise DatasetError(str(exc)) from None
    if label.shape != shape or not _affines_match(label_affine, affine):
        raise DatasetError(
            f"{case.label_path}: label shape/affine differs from its image; run `lsseg data check`"
        )
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
            raise DatasetError(f"{case.label_path}: label holds non-integer or NaN values")
    low, high = (float(label.min()), float(label.max())) if label.size else (0.0, 0.0)
    target = np.int16 if -32768 <= low and high <= 32767 else np.int32
    return image, label.astype(target, copy=False), affine


CASE_FOLDERS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}


def make_case_folders(root: Path) -> None:
    """The four case folders of a new dataset folder."""
    for folders in CASE_FOLDERS.values():
        for name in folders:
            (Path(root) / name).mkdir()


def write_case(
    root: Path,
    split: str,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray,
    affine,
    ending: str = ".nii.gz",
) -> None:
    """One single-channel case of a ``train`` or ``test`` split: ``{case}_0000{ending}`` and ``{case}{ending}``."""
    images, labels = CASE_FOLDERS[split]
    save_nifti(Path(root) / images / f"{case_id}_0000{ending}", image, affine)
    save_nifti(Path(root) / labels / f"{case_id}{ending}", label, affine)


def write_dataset_json(
    root,
    *,
    name: str,
    labels: dict[str, int],
    channel_names,
    num_training: int,
    file_ending: str = ".nii.gz",
    **extra,
) -> Path:
    """Write ``root/dataset.json`` atomically in nnU-Net v2 form; ``extra`` keys (licence, description...) are kept."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist (create it first)")
    if isinstance(channel_names, dict):
        channels = {str(k): str(v) for k, v in channel_names.items()}
    else:
        channels = {str(i): str(v) for i, v in enumerate(channel_names)}
    problems: list[str] = []
    labels_clean = _validate_labels(dict(labels), "labels", problems)
    _validate_channels(channels, "channel_names", problems)
    if not _is_int(num_training) or num_training < 0:
        problems.append(f"numTraining must be a non-negative integer, found {num_training!r}")
    if not is_safe_name(name):
        problems.append(f"name must be a plain folder name, found {name!r}")
    if file_ending.lower() not in NIFTI_ENDINGS:
        problems.append(f"file_ending must be one of {NIFTI_ENDINGS}, found {file_ending!r}")
    if problems:
        raise DatasetError("Cannot write dataset.json: " + "; ".join(problems))
    content = {
        "channel_names": channels,
        "labels": dict(sorted(labels_clean.items(), key=lambda item: item[1])),
        "numTraining": int(num_training),
        "file_ending": file_ending,
        "name": name,
    }
    for key, value in extra.items():
        content.setdefault(key, value)
    path = root / DATASET_JSON
    write_text_atomic(path, json.dumps(content, indent=2, sort_keys=False, default=_json_default) + "\n")
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

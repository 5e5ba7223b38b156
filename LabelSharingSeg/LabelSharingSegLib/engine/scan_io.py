"""Reading a scan as it comes from a scanner or from Slicer: a DICOM series (a folder, or one of its files),
NIfTI, NRRD or MetaImage. Every reader returns the same thing: float32 voxels indexed [i, j, k] and the affine
from voxel (i, j, k) to RAS millimetres, as :mod:`.nifti_io` does for NIfTI.

DICOM series are read with SimpleITK (GDCM), which applies each file's rescale slope and intercept (a CT comes
out in Hounsfield units). A series whose slices are not evenly spaced along one straight line (a missing slice,
several images at one position such as echoes or time points, a gantry tilt) is refused: stacking it as one
volume would misplace anatomy silently.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .modality import HeaderStatement, weighting_of_name, weighting_of_timing
from .nifti_io import has_nifti_ending, load_nifti, nifti_ending

ITK_ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_ENDINGS = (".dcm", ".ima")
# Refused before any voxel is allocated: far beyond any scan (a 1024^3 float32 volume is 4 GiB), and a header of
# a few bytes may declare more.
MAX_SCAN_VOXELS = 2**31
# Slice positions may differ from even steps by this share of a step (scanners round positions to 0.01 mm or so).
_SPACING_TOLERANCE = 0.02
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_MAX_FOLDERS = 2000  # a DICOM export's tree, not a whole disk
# BIDS anatomical suffixes (the last underscore-separated part of a file's name) that name an MR weighting
_BIDS_WEIGHTINGS = {
    "T1w": "T1",
    "UNIT1": "T1",
    "inplaneT1": "T1",
    "T2w": "T2",
    "inplaneT2": "T2",
    "PDw": "PD",
    "FLAIR": "FLAIR",
}
_MAX_SIDECAR_BYTES = 1_000_000  # a sidecar holds a few kB of acquisition parameters


@dataclass(frozen=True)
class Scan:
    """Voxels (float32 [i, j, k]), the voxel -> RAS mm affine, what was read, in words, and what its metadata
    states about the kind of scan: a DICOM header; a NIfTI file's BIDS name and sidecar; nothing for NRRD and
    MetaImage."""

    image: np.ndarray
    affine: np.ndarray
    description: str
    stated: HeaderStatement = HeaderStatement()


def load_scan(path: str | os.PathLike, *, series: str | None = None) -> Scan:
    """Read ``path``: a folder holding a DICOM series in it or its sub-folders (``series``: its Series Instance
    UID, needed when the folder holds several), one DICOM file (its series is read, from its folder), or a
    NIfTI, NRRD or MetaImage file. Raises InputError naming the file and what is wrong."""
    path = Path(path)
    if path.is_dir():
        if has_nifti_ending(path):
            raise InputError(f"{path}: is a folder, not a NIfTI file")
        return _dicom_series(path, series)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    name = path.name.lower()
    if series is not None and not name.endswith(DICOM_ENDINGS):
        raise InputError(f"{path}: --series chooses a DICOM series; give a DICOM folder or file")
    if has_nifti_ending(path):
        image, affine = load_nifti(path)
        return Scan(image, affine, f"NIfTI {path.name}", bids_statement(path))
    if name.endswith(ITK_ENDINGS):
        return _itk_file(path)
    if name.endswith(DICOM_ENDINGS) or _is_dicom(path):
        return _dicom_series(path.parent, series or _series_of(path))
    raise InputError(
        f"{path}: not a scan this reads (a DICOM folder or file, .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd)"
    )


def _is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble, whatever their name."""
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _header(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read ({_itk_message(exc)})") from None
    return reader


def _itk_message(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def _check_declared(path: Path, size, components: int) -> None:
    voxels = int(np.prod([int(n) for n in size], dtype=np.int64))
    if voxels > MAX_SCAN_VOXELS:
        raise InputError(
            f"{path}: the header declares {voxels} voxels (size {list(size)}), more than any scan"
        )
    if components != 1:
        raise InputError(
            f"{path}: {components} values per voxel (colour or vector image); give a scalar (greyscale) scan"
        )


def _itk_file(path: Path, reader=None) -> Scan:
    """``reader``: ``path``'s header when already read (a DICOM header can take seconds to parse)."""
    import SimpleITK as sitk

    reader = reader if reader is not None else _header(path)
    _check_declared(path, reader.GetSize(), reader.GetNumberOfComponents())
    if reader.GetDimension() not in (2, 3):
        raise InputError(f"{path}: a {reader.GetDimension()}D image; give one 3D volume (or a 2D slice)")
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read ({_itk_message(exc)})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: a colour or vector image; give a scalar (greyscale) scan")
    voxels, affine = _array_and_affine(sitk, image)
    return Scan(voxels, affine, f"{path.suffix[1:].upper()} {path.name}")


def _array_and_affine(sitk, image) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK image (LPS, array [k, j, i]) -> (float32 [i, j, k], RAS affine); 2D images get a third axis."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    dims = image.GetDimension()
    direction = np.eye(3)
    direction[:dims, :dims] = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dims, dims)
    spacing = np.ones(3)
    spacing[:dims] = image.GetSpacing()
    origin = np.zeros(3)
    origin[:dims] = image.GetOrigin()
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:3, 3] = origin
    voxels = (
        np.ascontiguousarray(array.transpose()) if dims == 3 else np.ascontiguousarray(array.T)[..., None]
    )
    return voxels, _RAS_FROM_LPS @ lps


def _series_of(path: Path) -> str:
    reader = _header(path)
    if not reader.HasMetaDataKey("0020|000e"):
        raise InputError(f"{path}: a DICOM file without a Series Instance UID")
    return reader.GetMetaData("0020|000e").strip()


def _tag(reader, key: str, default: str = "") -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else default


def _series_in(folder: Path) -> list[str]:
    """Series Instance UIDs of the DICOM files in ``folder`` and its sub-folders (a CD or PACS export nests them),
    in the order first met."""
    import SimpleITK as sitk

    found: list[str] = []
    for count, (where, names, _) in enumerate(os.walk(folder)):
        if count >= _MAX_FOLDERS:
            raise InputError(
                f"{folder}: more than {_MAX_FOLDERS} folders below it; give the folder of the series"
            )
        names.sort()
        found += [uid for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(where) if uid not in found]
    return found


def _series_files(folder: Path, uid: str) -> list[str]:
    import SimpleITK as sitk

    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid, False, True))


def _dicom_series(folder: Path, series: str | None) -> Scan:
    import SimpleITK as sitk

    found = _series_in(folder)
    if not found:
        raise InputError(f"{folder}: no DICOM series in this folder or its sub-folders")
    if series is None and len(found) > 1:
        listing = "; ".join(_series_line(folder, uid) for uid in found)
        raise InputError(f"{folder}: {len(found)} DICOM series, choose one with --series UID: {listing}")
    uid = series if series is not None else found[0]
    if uid not in found:
        raise InputError(f"{folder}: no DICOM series {uid!r} (found: {', '.join(found)})")
    files = _series_files(folder, uid)
    first = _header(Path(files[0]))
    if len(files) == 1:  # one file: a single slice or a multi-frame (enhanced) image
        scan = _itk_file(Path(files[0]), first)
        return _dicom_scan(scan.image, scan.affine, first, uid, len(files))
    _check_declared(folder, list(first.GetSize()[:2]) + [len(files)], first.GetNumberOfComponents())
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # each file's tags, read in the same pass as its voxels
    # ITK warns on stderr of spacing variations far below what _check_stack refuses
    warned = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot read DICOM series {uid} ({_itk_message(exc)})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warned)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{folder}: series {uid} is a colour image; give a greyscale scan")
    _check_stack(folder, [_SliceTags(reader, index) for index in range(len(files))])
    voxels, affine = _array_and_affine(sitk, image)
    return _dicom_scan(voxels, affine, first, uid, len(files))


def _dicom_scan(voxels: np.ndarray, affine: np.ndarray, first, uid: str, count: int) -> Scan:
    """The scan with what its (first file's) header states (:func:`_statement`)."""
    return Scan(voxels, affine, _series_words(first, uid, count), _statement(first))


def dicom_header_statement(path: str | os.PathLike) -> HeaderStatement:
    """What the header of one DICOM file states (no voxels are read), for a scan read by another program (Slicer's
    DICOM module). InputError when the file cannot be read."""
    return _statement(_header(Path(path)))


def _statement(reader) -> HeaderStatement:
    """Modality and, for MR, the weighting, read from the series description or else from the repetition, echo
    and inversion times."""
    modality = _tag(reader, "0008|0060") or None
    if modality != "MR":
        return HeaderStatement(modality, source="DICOM header")
    keys = {"TR": "0018|0080", "TE": "0018|0081", "TI": "0018|0082"}
    times = {name: _milliseconds(reader, key) for name, key in keys.items()}
    return _mr_statement(None, "", _tag(reader, "0008|103e"), times, "DICOM header")


def _mr_statement(
    named: str | None, named_by: str, described: str, times: dict[str, float | None], source: str
) -> HeaderStatement:
    """An MR scan's weighting: ``named`` (by ``named_by``, in words) when given, else what the series description
    names, else what the repetition, echo and inversion times (ms) say."""
    weighting = (
        named or weighting_of_name(described) or weighting_of_timing(times["TR"], times["TE"], times["TI"])
    )
    timing = ", ".join(f"{name} {value:g} ms" for name, value in times.items() if value is not None)
    parts = (named_by, f"series {described!r}" if described else "", timing)
    return HeaderStatement("MR", weighting, ", ".join(part for part in parts if part), source)


def bids_statement(path: str | os.PathLike) -> HeaderStatement:
    """What a NIfTI file's BIDS name and JSON sidecar state: the name's suffix ('sub-01_T2w.nii.gz': T2), and the
    sidecar beside it ('sub-01_T2w.json', as dcm2niix writes it: Modality, SeriesDescription, and RepetitionTime,
    EchoTime and InversionTime in seconds). A sidecar that is missing, over 1 MB or not a JSON object states
    nothing: it is not the scan, and the scan is not refused for it."""
    path = Path(path)
    stem = path.name[: len(path.name) - len(nifti_ending(path))]
    suffix = stem.rsplit("_", 1)[-1]
    named = _BIDS_WEIGHTINGS.get(suffix)
    sidecar = _sidecar(path.with_name(stem + ".json"))
    stated = sidecar.get("Modality")
    modality = stated.strip().upper() if isinstance(stated, str) and stated.strip() else None
    if modality is None and named:
        modality = "MR"
    if modality != "MR":  # stated by the sidecar, or by nothing
        return HeaderStatement(modality, source="BIDS sidecar" if modality else "")
    source = "BIDS name" if named else "BIDS sidecar"  # the name's weighting comes first
    described = sidecar.get("SeriesDescription") or sidecar.get("ProtocolName") or ""
    keys = {"TR": "RepetitionTime", "TE": "EchoTime", "TI": "InversionTime"}
    times = {name: _seconds_as_ms(sidecar.get(key)) for name, key in keys.items()}
    named_by = f"BIDS suffix {suffix!r}" if named else ""
    return _mr_statement(named, named_by, described if isinstance(described, str) else "", times, source)


def _sidecar(path: Path) -> dict:
    """The JSON object in ``path``, or {} (missing, too big, unreadable, or not an object)."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_SIDECAR_BYTES:
            return {}
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return {}
    return content if isinstance(content, dict) else {}


def _seconds_as_ms(value) -> float | None:
    """A BIDS time in seconds (a number, or the first of a list for several echoes) in milliseconds."""
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) * 1000.0 if np.isfinite(value) and value > 0 else None


def _milliseconds(reader, key: str) -> float | None:
    try:
        value = float(_tag(reader, key).split("\\")[0])
    except ValueError:
        return None
    return value if np.isfinite(value) and value > 0 else None


class _SliceTags:
    """The tags of one file of a series as the series reader read them (the interface of a file's reader)."""

    def __init__(self, reader, index: int):
        self._reader, self._index = reader, index

    def HasMetaDataKey(self, key: str) -> bool:  # noqa: N802 (SimpleITK's name)
        return bool(self._reader.HasMetaDataKey(self._index, key))

    def GetMetaData(self, key: str) -> str:  # noqa: N802
        return str(self._reader.GetMetaData(self._index, key))


def _series_words(reader, uid: str, count: int) -> str:
    described = _tag(reader, "0008|103e") or "no description"
    return f"DICOM series {uid} ({_tag(reader, '0008|0060', 'modality not given')}, {described!r}), {count} file(s)"


def _series_line(folder: Path, uid: str) -> str:
    files = _series_files(folder, uid)
    return _series_words(_header(Path(files[0])), uid, len(files))


def _numbers(reader, key: str, count: int, where: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in _tag(reader, key).split("\\")])
    except ValueError:
        values = np.array([])
    if values.size != count or not np.isfinite(values).all():
        raise InputError(f"{where}: DICOM tag {key} is missing or malformed; cannot place the slices")
    return values


def _check_stack(folder: Path, headers: list) -> None:
    """The files must be slices of one straight, evenly spaced stack (see the module docstring)."""
    orientations = np.array([_numbers(h, "0020|0037", 6, str(folder)) for h in headers])
    if np.abs(orientations - orientations[0]).max() > 1e-3:
        raise InputError(f"{folder}: the series' slices are not all parallel (a localizer mixed in?)")
    row, column = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, column)
    positions = np.array([_numbers(h, "0020|0032", 3, str(folder)) for h in headers])
    along = positions @ normal
    order = np.argsort(along)
    steps = np.diff(along[order])
    step = float(np.median(steps))
    if steps.min() < 1e-3:
        raise InputError(
            f"{folder}: several images lie at one position (echoes, time points or a 4D series); export or "
            "choose one 3D volume"
        )
    if np.abs(steps - step).max() > _SPACING_TOLERANCE * step:
        raise InputError(
            f"{folder}: the slices are unevenly spaced (steps {steps.min():.2f} to {steps.max():.2f} mm along the "
            "slice normal): slices are missing or the series mixes stacks; read as one volume it would be "
            "distorted"
        )
    drift = np.diff(positions[order], axis=0) - np.outer(steps, normal)
    if np.linalg.norm(drift, axis=1).max() > _SPACING_TOLERANCE * step + 1e-3:
        raise InputError(
            f"{folder}: each slice is shifted sideways from the last (a gantry tilt): the volume is sheared; "
            "resample it to an upright grid first (e.g. Slicer's DICOM import does)"
        )

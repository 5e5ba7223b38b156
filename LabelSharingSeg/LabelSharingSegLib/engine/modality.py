"""Which kind of scan a bundle was trained on (MR or CT), and whether a scan given to it looks like one.

A network trained on T1 MR and run on a CT (or the reverse) returns a label map that looks confident and means
nothing. The two kinds differ in a way that needs no model: CT intensities are calibrated Hounsfield units (air
-1000, water 0, bone +1000 and more), while MR intensities have no unit and, as scanners store them, are not
negative. A bundle declares its kind in ``preprocessing.modality`` (training fills it from the datasets'
``channel_names``); a ``ct_window`` bundle is CT; a bundle that declares nothing is not checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .errors import InputError

MODALITIES = ("MR", "CT")

# Hounsfield band of air. A CT of a head holds plenty (the real head CT of the tests: 58% of its voxels); an MR
# scan has no values there at all, so a small share is already conclusive.
AIR_HU = (-1100.0, -900.0)
CT_AIR_SHARE = 0.02
_SAMPLED_VOXELS = 2_000_000  # a strided sample keeps the check at milliseconds on big volumes

# channel names (nnU-Net dataset.json ``channel_names``, MSD ``modality``) by the kind of scan they name
_CT_NAME = re.compile(r"^(ct|cta|cect|nect)\b", re.IGNORECASE)
_MR_NAME = re.compile(r"^(mr|t1|t2|flair|pd|dwi|adc|swi|dti|bold|fmri|mprage|spgr|tof)", re.IGNORECASE)


def modality_of_channel(name: str) -> str | None:
    """'MR', 'CT' or None (the name says neither) for one channel name such as 'T1', 'FLAIR' or 'CT'."""
    text = str(name).strip()
    if _CT_NAME.match(text):
        return "CT"
    if _MR_NAME.match(text):
        return "MR"
    return None


def _agreed(kinds: list[str | None]) -> str | None:
    """The one value all of ``kinds`` say, or None when any says none or they disagree."""
    return kinds[0] if kinds and all(kind == kinds[0] for kind in kinds) else None


def modality_of_channels(names: Iterable[str]) -> str | None:
    """The one kind every channel name says, or None when any says neither or they disagree."""
    return _agreed([modality_of_channel(name) for name in names])


# MR weightings a bundle may declare (``preprocessing.contrast``) and a scan's metadata may reveal. A network trained
# on one sees another as a different image: the real proton-density series of the tests, given to the shipped T1
# bundle, was not even aligned to its reference.
WEIGHTINGS = ("T1", "T2", "FLAIR", "PD")
_T1_NAME = re.compile(r"(^|[^a-z0-9])(t1|mprage|spgr|bravo|tfe)", re.IGNORECASE)
_T2_NAME = re.compile(r"(^|[^a-z0-9])t2(?!\*|star)", re.IGNORECASE)
_PD_NAME = re.compile(r"(^|[^a-z0-9])pd", re.IGNORECASE)
_FLAIR_NAME = re.compile(r"flair", re.IGNORECASE)


def weighting_of_name(name: str) -> str | None:
    """The MR weighting a channel name or series description names ('T1', 'T2', 'FLAIR', 'PD'), else None
    (none, or T2*, another contrast). T1-FLAIR is T1-weighted; T2-FLAIR, or FLAIR alone, is FLAIR."""
    text = str(name)
    t1 = bool(_T1_NAME.search(text))
    if _FLAIR_NAME.search(text):
        return "T1" if t1 else "FLAIR"
    if t1:
        return "T1"
    if _T2_NAME.search(text):
        return "T2"
    if _PD_NAME.search(text):
        return "PD"
    return None


def weighting_of_channels(names: Iterable[str]) -> str | None:
    """The one weighting every channel name says, or None."""
    return _agreed([weighting_of_name(name) for name in names])


def weighting_of_timing(tr_ms: float | None, te_ms: float | None, ti_ms: float | None) -> str | None:
    """The weighting MR physics reads from repetition, echo and inversion times (ms), None when they do not say
    it clearly: a long inversion nulls fluid (FLAIR); a long echo weights T2; a medium inversion prepares T1
    (MPRAGE, IR-SPGR); short repetition and echo weight T1; long repetition with short echo weights PD."""
    if ti_ms is not None and ti_ms >= 1500:
        return "FLAIR"
    if te_ms is not None and te_ms >= 60:
        return "T2"
    if ti_ms is not None and 300 <= ti_ms < 1500:
        return "T1"
    if tr_ms is None or te_ms is None:
        return None
    if tr_ms <= 1000 and te_ms <= 30:
        return "T1"
    if tr_ms >= 1500 and te_ms <= 40:
        return "PD"
    return None


def _sample(image: np.ndarray) -> np.ndarray:
    flat = np.asarray(image).reshape(-1)
    return flat[:: flat.size // _SAMPLED_VOXELS] if flat.size > 2 * _SAMPLED_VOXELS else flat


def air_share(image: np.ndarray) -> float:
    """Share of voxels in the Hounsfield band of air (about 0 for any MR scan)."""
    values = _sample(image)
    return float(np.count_nonzero((values >= AIR_HU[0]) & (values <= AIR_HU[1]))) / max(values.size, 1)


def modality_mismatch(image: np.ndarray, modality: str | None) -> str | None:
    """Why ``image`` plainly is not a ``modality`` scan, or None (also for ``modality`` None: nothing declared).

    Plainly not: air at -1000 in a scan for MR, and no negative value in a scan for CT (no air, fat or noise
    below water: not Hounsfield units)."""
    if modality is None:
        return None
    low, high = float(np.min(image)), float(np.max(image))
    if modality == "MR":
        share = air_share(image)
        if share >= CT_AIR_SHARE:
            return (
                f"looks like a CT, not an MR scan: {share:.0%} of its voxels lie near -1000 (air in Hounsfield "
                f"units; an MR scan has no values there), range {low:g} to {high:g}"
            )
    elif modality == "CT" and low >= 0.0:
        return (
            f"does not look like a CT in Hounsfield units: no voxel is below 0 (air is -1000, fat about -100), "
            f"range {low:g} to {high:g}"
        )
    return None


_WHAT_TO_DO = {
    "MR": "This bundle was trained on MR scans and would return labels that mean nothing; use a bundle trained on CT",
    "CT": (
        "This bundle was trained on CT. An MR scan needs a bundle trained on MR; a CT stored without its rescale "
        "(air at 0 in the file) needs its intercept, usually -1024, applied first"
    ),
}


def check_scan_modality(image: np.ndarray, modality: str | None, *, what: str = "image") -> None:
    """Raise InputError (evidence, then what to do) when ``image`` plainly is not a ``modality`` scan."""
    problem = modality_mismatch(image, modality)
    if problem is not None:
        raise InputError(f"{what}: {problem}. {_WHAT_TO_DO[str(modality)]}")


@dataclass(frozen=True)
class HeaderStatement:
    """What a scan's metadata states about its kind: its modality ('MR', 'CT', ...; None when not given), for MR
    the weighting it reveals ('T1', 'T2', 'FLAIR', 'PD' or None) and what revealed it, in words, and where that
    was read (``source``: 'DICOM header', 'BIDS name', 'BIDS sidecar')."""

    modality: str | None = None
    weighting: str | None = None
    evidence: str = ""
    source: str = ""


def check_stated_modality(
    stated: HeaderStatement | None, modality: str | None, *, what: str = "image"
) -> None:
    """Raise InputError when a scan's metadata states a kind of scan ('MR' or 'CT') other than ``modality``, the
    bundle's; other or missing statements are left to the voxels (:func:`check_scan_modality`)."""
    if (
        stated is not None
        and stated.modality in MODALITIES
        and modality is not None
        and stated.modality != modality
    ):
        raise InputError(
            f"{what}: its {stated.source or 'header'} says it is {stated.modality}, and this bundle was trained on "
            f"{modality} scans; {_WHAT_TO_DO[modality]}"
        )


def weighting_warning(stated: HeaderStatement | None, contrast: str | None) -> str | None:
    """A warning when a scan's metadata reveals another MR weighting than the bundle's ``contrast`` (None when
    either is unknown or they agree). A warning, not a refusal: metadata is read by rules that can be fooled."""
    if stated is None or stated.weighting is None or contrast is None or stated.weighting == contrast:
        return None
    return (
        f"the scan's {stated.source} describes a {stated.weighting}-weighted scan ({stated.evidence}), and this "
        f"bundle was trained on {contrast}-weighted scans: its labels may be wrong"
    )

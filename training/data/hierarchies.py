"""Fine -> coarse label tables of the packaged atlases (``label_hierarchy.json`` of ``lsseg data build``), for
coarse-train / fine-test LCS experiments (Ma et al. 2022): AAL regions (rules in ``sources.py``, also used by the
multitask set) and Neuromorphometrics labels (here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from LabelSharingSegLib.engine.errors import DatasetError

from . import sources

# Neuromorphometrics label (side prefix removed; cortical labels by their abbreviation) -> coarse structure.
# Lobes as in the Neuromorphometrics/Hammersmith protocols; the opercula go with the lobe they cover (frontal
# and central operculum: frontal, parietal operculum: parietal); the optic chiasm is white matter (nerve
# fibres); vessels go with the fluid spaces.
NMM_COARSE_GROUPS: dict[str, tuple[str, ...]] = {
    "frontal": (
        "AOrG",
        "FO",
        "CO",
        "FRP",
        "GRe",
        "LOrG",
        "MFC",
        "MFG",
        "MOrG",
        "MPrG",
        "MSFG",
        "OpIFG",
        "OrIFG",
        "POrG",
        "PrG",
        "SCA",
        "SFG",
        "SMC",
        "TrIFG",
    ),
    "insula": ("AIns", "PIns"),
    "limbic": ("ACgG", "MCgG", "PCgG", "Ent", "PHG", "Hippocampus", "Amygdala"),
    "occipital": ("Calc", "Cun", "IOG", "LiG", "MOG", "OCP", "OFuG", "SOG"),
    "parietal": ("AnG", "MPoG", "PCu", "PO", "PoG", "SMG", "SPL"),
    "temporal": ("FuG", "ITG", "MTG", "PP", "PT", "STG", "TMP", "TTG"),
    "deep_grey": (
        "Accumbens_Area",
        "Caudate",
        "Pallidum",
        "Putamen",
        "Thalamus_Proper",
        "Ventral_DC",
        "Basal_Forebrain",
    ),
    "cerebellum": (
        "Cerebellum_Exterior",
        "Cerebellum_White_Matter",
        "Cerebellar_Vermal_Lobules_I-V",
        "Cerebellar_Vermal_Lobules_VI-VII",
        "Cerebellar_Vermal_Lobules_VIII-X",
    ),
    "white_matter": ("Cerebral_White_Matter", "Optic_Chiasm"),
    "ventricles_csf": (
        "3rd_Ventricle",
        "4th_Ventricle",
        "Lateral_Ventricle",
        "Inf_Lat_Vent",
        "CSF",
        "vessel",
    ),
    "brain_stem": ("Brain_Stem",),
}
NMM_COARSE_NAMES = tuple(NMM_COARSE_GROUPS)


def nmm_coarse_name(label: str) -> str:
    """Coarse structure of a Neuromorphometrics label, e.g. 'Left_PrG_precentral_gyrus' -> 'frontal'."""
    core = label.removeprefix("Left_").removeprefix("Right_")
    for coarse, members in NMM_COARSE_GROUPS.items():
        if core in members or core.split("_", 1)[0] in members:
            return coarse
    raise DatasetError(f"Neuromorphometrics label {label!r} has no coarse group; extend NMM_COARSE_GROUPS")


@dataclass(frozen=True)
class Hierarchy:
    """Fine label name -> coarse structure name, for coarse-train / fine-test LCS experiments."""

    coarse_names: tuple[str, ...]
    coarse_of: Callable[[str], str]
    description: str


AAL_HIERARCHY = Hierarchy(
    sources.AAL_COARSE_NAMES,
    sources.aal_coarse_name,
    "AAL region (fine) -> coarse structure, from the region names; values are this dataset's label values.",
)
NMM_HIERARCHY = Hierarchy(
    NMM_COARSE_NAMES,
    nmm_coarse_name,
    "Neuromorphometrics label (fine) -> coarse structure (lobes, limbic, deep grey, cerebellum, white matter, "
    "ventricles/CSF, brain stem), from the label names; values are this dataset's label values.",
)

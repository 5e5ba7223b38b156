"""Which Python packages the engine needs and which are missing. Never installs anything: the Slicer
Widget shows the list, asks the user, and only then calls ``slicer.util.pip_install``.

torch is not pip-installed by this module: it comes from Slicer's PyTorch extension (``EXTENSION_DEPENDS``),
which picks the right CUDA/CPU build for the machine.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class PackageRequirement:
    importName: str
    requirement: str  # pip requirement specifier
    purpose: str


REQUIRED_PACKAGES = (
    PackageRequirement("monai", "monai>=1.3,<2", "network building blocks and sliding-window inference"),
    PackageRequirement("safetensors", "safetensors>=0.4,<1", "reading model weights without unpickling"),
    PackageRequirement("nibabel", "nibabel>=5.0,<7", "reading the atlas and NIfTI files of a bundle"),
    PackageRequirement("SimpleITK", "SimpleITK>=2.3,<3", "image resampling"),
)

TORCH_HINT = (
    "PyTorch is not available. Install the 'PyTorch' extension from the Extensions Manager, then use its "
    "'PyTorch Utils' module to install torch (it chooses the build that fits your GPU), and restart Slicer."
)


def isImportable(importName: str) -> bool:
    try:
        return importlib.util.find_spec(importName) is not None
    except (ImportError, ValueError):
        return False


def missingPackages(requirements=REQUIRED_PACKAGES) -> list[PackageRequirement]:
    """The requirements whose module cannot be found (nothing is imported or installed)."""
    return [req for req in requirements if not isImportable(req.importName)]


def torchAvailable() -> bool:
    return isImportable("torch")


def missingPackagesMessage(missing: list[PackageRequirement]) -> str:
    """Text for the confirmation dialog: what is missing, why, and what will be installed."""
    if not missing:
        return "All required Python packages are installed."
    lines = ["LabelSharingSeg needs these Python packages, which are not installed:", ""]
    lines += [f"  - {req.requirement}  ({req.purpose})" for req in missing]
    lines += [
        "",
        "Install them now with pip? This downloads from the Python Package Index and may take a few minutes.",
    ]
    return "\n".join(lines)


def pipRequirements(missing: list[PackageRequirement]) -> list[str]:
    return [req.requirement for req in missing]

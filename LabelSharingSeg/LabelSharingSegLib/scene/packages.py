"""Which Python packages the engine needs, which are missing, and the plan for installing them inside Slicer.

Never installs anything itself: the Slicer Widget shows the plan, asks the user, then runs it.

- torch is never pip-installed here: it comes from the PyTorch extension's ``PyTorchUtilsLogic().installTorch``,
  which picks the CUDA/CPU build for the machine (a plain ``pip install monai`` would replace it with PyPI's
  build: the SlicerMONAIAuto3DSeg and SlicerNNUnet extensions avoid the same trap).
- SimpleITK ships with Slicer and must not be replaced: it is only checked.
- The rest is installed with ``--no-deps`` and its dependencies listed explicitly, so pip cannot upgrade torch,
  numpy or SimpleITK behind the user's back.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass

# Slicer 5.10 is the first release with Python 3.12; older ones (5.8: Python 3.9) are not supported.
MINIMUM_SLICER_VERSION = (5, 10)
MINIMUM_PYTHON_VERSION = (3, 10)
TORCH_REQUIREMENT = ">=2.4.1"  # what monai 1.5+ needs
NEVER_PIP_INSTALLED = frozenset({"torch", "simpleitk"})  # normalised distribution names


@dataclass(frozen=True)
class PackageRequirement:
    importName: str
    requirement: str  # pip requirement specifier
    purpose: str
    dependencies: tuple[PackageRequirement, ...] = ()  # installed too when missing (pip runs with --no-deps)
    pipInstallable: bool = True  # False: comes with Slicer or another extension; only checked


_PACKAGING = PackageRequirement("packaging", "packaging>=20", "version parsing (nibabel)")
REQUIRED_PACKAGES = (
    PackageRequirement("monai", "monai>=1.3,<2", "network building blocks and sliding-window inference"),
    PackageRequirement("safetensors", "safetensors>=0.4,<1", "reading model weights without unpickling"),
    PackageRequirement(
        "nibabel",
        "nibabel>=5.0,<7",
        "reading the atlas and NIfTI files of a bundle",
        dependencies=(_PACKAGING,),
    ),
    PackageRequirement(
        "SimpleITK", "SimpleITK>=2.3,<3", "image resampling (ships with Slicer)", pipInstallable=False
    ),
)

TORCH_HINT = (
    "PyTorch is not available. Click 'Install' to install it through the PyTorch extension (it chooses the "
    "build that fits your GPU), or use the 'PyTorch Utils' module, then restart Slicer."
)


def distributionName(requirement: str) -> str:
    """The normalised distribution name of a pip requirement (``Torch>=2`` -> ``torch``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else requirement.strip().lower()


def isImportable(importName: str) -> bool:
    try:
        return importlib.util.find_spec(importName) is not None
    except (ImportError, ValueError):
        return False


def missingPackages(requirements=REQUIRED_PACKAGES, importable=isImportable) -> list[PackageRequirement]:
    """The requirements whose module cannot be found (nothing is imported or installed)."""
    return [req for req in requirements if not importable(req.importName)]


def torchAvailable() -> bool:
    return isImportable("torch")


@dataclass(frozen=True)
class PipPlan:
    """What the module will do about missing packages, in order."""

    installTorch: (
        bool  # first: PyTorchUtilsLogic().installTorch(askConfirmation=True, torchVersionRequirement=...)
    )
    torchRequirement: str
    requirements: tuple[str, ...]  # then: pip install --no-deps <requirements>
    notInstallable: tuple[PackageRequirement, ...]  # missing but never pip-installed here (e.g. SimpleITK)

    @property
    def pipArguments(self) -> list[str]:
        return ["--no-deps", *self.requirements] if self.requirements else []

    @property
    def empty(self) -> bool:
        return not (self.installTorch or self.requirements or self.notInstallable)


def pipPlan(missing: list[PackageRequirement], torchMissing: bool, importable=isImportable) -> PipPlan:
    """The install plan for ``missing``: their missing dependencies join them; torch and SimpleITK never do."""
    requirements: list[str] = []
    notInstallable = []

    def add(req: PackageRequirement) -> None:
        name = distributionName(req.requirement)
        if not req.pipInstallable or name in NEVER_PIP_INSTALLED:
            if req not in notInstallable:
                notInstallable.append(req)
            return
        for dependency in req.dependencies:
            if not importable(dependency.importName):
                add(dependency)
        if req.requirement not in requirements:
            requirements.append(req.requirement)

    for req in missing:
        add(req)
    return PipPlan(torchMissing, TORCH_REQUIREMENT, tuple(requirements), tuple(notInstallable))


def pipPlanMessage(plan: PipPlan) -> str:
    """Text for the confirmation dialog: what is missing, why, and what will be installed."""
    if plan.empty:
        return "All required Python packages are installed."
    lines = []
    if plan.installTorch:
        lines += [f"PyTorch (torch{plan.torchRequirement}) will be installed by the PyTorch extension.", ""]
    if plan.requirements:
        lines += ["These Python packages will be installed with pip (without touching torch or numpy):"]
        lines += [f"  - {requirement}" for requirement in plan.requirements]
        lines += ["", "This downloads from the Python Package Index and may take a few minutes.", ""]
    for req in plan.notInstallable:
        lines += [
            f"'{req.importName}' is missing but is not installed by this module ({req.purpose}): "
            "reinstall Slicer or ask for help on the Slicer forum."
        ]
    return "\n".join(lines).strip()


def missingPackagesMessage(missing: list[PackageRequirement]) -> str:
    return pipPlanMessage(pipPlan(missing, torchMissing=False))


def unsupportedVersionMessage(
    slicerVersion: tuple[int, int] | None, pythonVersion: tuple[int, int]
) -> str | None:
    """None when this Slicer/Python can run the module; else one clear sentence saying what to install."""
    if slicerVersion is not None and tuple(slicerVersion) < MINIMUM_SLICER_VERSION:
        have = ".".join(str(v) for v in slicerVersion)
        need = ".".join(str(v) for v in MINIMUM_SLICER_VERSION)
        return (
            f"LabelSharingSeg needs 3D Slicer {need} or newer (this is Slicer {have}): please update Slicer."
        )
    if tuple(pythonVersion) < MINIMUM_PYTHON_VERSION:
        have = ".".join(str(v) for v in pythonVersion)
        need = ".".join(str(v) for v in MINIMUM_PYTHON_VERSION)
        return f"LabelSharingSeg needs Python {need} or newer (this is Python {have}): please update Slicer."
    return None

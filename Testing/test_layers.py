"""The house's layering, checked on every import statement of the product code.

engine   -> never the scene, training, slicer, vtk, MRML or Qt (it runs anywhere: CLI, worker, server)
scene    -> slicer MRML and vtk, never Qt and never training (it runs on slicer-core)
worker   -> the engine only (it runs in a separate process, and later on a GPU server)
training -> the engine, never the scene, slicer or Qt (nothing in the product depends on training)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "LabelSharingSeg" / "LabelSharingSegLib"

# slicer.util and slicer.ScriptedLoadableModule import Qt themselves
QT = {
    "qt",
    "PythonQt",
    "ctk",
    "PySide2",
    "PySide6",
    "PyQt5",
    "PyQt6",
    "slicer.util",
    "slicer.ScriptedLoadableModule",
}
SLICER = {"slicer", "vtk", "mrml", "vtkSegmentationCorePython", "vtkSlicerSegmentationsModuleLogicPython"}

# layer folder -> top-level import names (or package prefixes) it must never import
FORBIDDEN = {
    "engine": QT | SLICER | {"lsseg_training", "LabelSharingSegLib.scene", "LabelSharingSegLib.worker"},
    "scene": QT | {"lsseg_training"},
    "worker": QT | SLICER | {"lsseg_training", "LabelSharingSegLib.scene"},
    "training": QT | SLICER | {"LabelSharingSegLib.scene"},
}


def _layer_files(layer: str) -> list[Path]:
    folder = {
        "engine": LIB / "engine",
        "scene": LIB / "scene",
        "worker": LIB / "worker",
        "training": ROOT / "training",
    }[layer]
    files = sorted(folder.rglob("*.py"))
    assert files, f"no Python files found under {folder}"
    return files


def _package_of(path: Path) -> str:
    """Dotted package of a product file, so that relative imports can be resolved."""
    if path.is_relative_to(LIB):
        parts = ("LabelSharingSegLib",) + path.relative_to(LIB).parent.parts
    else:
        parts = ("lsseg_training",) + path.relative_to(ROOT / "training").parent.parts
    return ".".join(parts)


def imported_names(path: Path, source: str | None = None) -> set[str]:
    """Absolute dotted names of every module a file imports (relative imports resolved)."""
    if source is None:
        source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    package = _package_of(path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            # `from pkg import sub` may import a submodule: check pkg.sub too
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def crossings(layer: str, path: Path, source: str | None = None) -> list[str]:
    bad = []
    for name in sorted(imported_names(path, source)):
        for forbidden in FORBIDDEN[layer]:
            if name == forbidden or name.startswith(forbidden + "."):
                bad.append(name)
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_import_crosses_the_layers(layer):
    problems = {
        str(path.relative_to(ROOT)): found
        for path in _layer_files(layer)
        if (found := crossings(layer, path))
    }
    assert not problems, f"imports crossing the {layer} layer's boundary: {problems}"


@pytest.mark.parametrize(
    "line", ["import slicer", "from lsseg_training import cli", "from ..scene import logic", "import qt"]
)
def test_the_check_catches_a_crossing(line):
    """The checker itself must fire: a forbidden import planted in an engine file's source is found."""
    path = LIB / "engine" / "errors.py"
    source = path.read_text(encoding="utf-8") + "\n" + line + "\n"
    assert crossings("engine", path, source), f"{line!r} was not detected"
    assert not crossings("engine", path), "the unmodified file must pass"


@pytest.mark.parametrize(
    ("layer", "line"),
    [
        ("scene", "from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic"),
        ("scene", "from slicer import util"),
        ("scene", "import lsseg_training"),
        ("worker", "from ..scene.logic import SegmentationSceneLogic"),
        ("worker", "import vtk"),
        ("engine", "from ..worker import client"),
    ],
)
def test_the_check_catches_a_crossing_in_each_layer(layer, line):
    path = LIB / layer / "__init__.py"
    source = path.read_text(encoding="utf-8") + "\n" + line + "\n"
    assert crossings(layer, path, source), f"{line!r} was not detected in the {layer} layer"

"""Static checks that catch breakage that would only show inside Slicer: files missing from the module's
CMakeLists (not installed), widget names the code reads but the .ui lacks, Python syntax newer than 3.10,
Qt imports in the MRML-only library, and the console API contract."""

import ast
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LabelSharingSeg"
MODULE_SCRIPT = MODULE_DIR / "LabelSharingSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LabelSharingSeg.ui"
ICON_FILE = MODULE_DIR / "Resources" / "Icons" / "LabelSharingSeg.png"


def _cmake_list(text, variable):
    match = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set"
    items = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    return {item.replace("${MODULE_NAME}", "LabelSharingSeg") for item in items if item}


@pytest.fixture(scope="module")
def cmake():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    return text, _cmake_list(text, "MODULE_PYTHON_SCRIPTS"), _cmake_list(text, "MODULE_PYTHON_RESOURCES")


def _module_python_files():
    return sorted(p for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_python_file_is_listed_and_every_listed_file_exists(cmake):
    _, scripts, _ = cmake
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in _module_python_files()}
    assert on_disk - scripts == set(), "not installed by slicerMacroBuildScriptedModule"
    assert scripts - on_disk == set(), "listed in CMakeLists but missing"


def test_every_resource_is_listed_and_exists(cmake):
    _, _, resources = cmake
    on_disk = {
        p.relative_to(MODULE_DIR).as_posix()
        for p in (MODULE_DIR / "Resources").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert on_disk - resources == set(), "resources not installed"
    assert resources - on_disk == set(), "listed resources missing"
    # the resources the code opens are among them
    source = MODULE_SCRIPT.read_text()
    for used in re.findall(r'resourcePath\("([^"]+)"\)', source):
        if used != "Bundles":
            assert f"Resources/{used}" in resources
    assert "Resources/Icons/LabelSharingSeg.png" in resources  # Slicer finds the module icon by name


def test_cmake_builds_the_module_and_registers_the_self_test(cmake):
    text, _, _ = cmake
    assert "slicerMacroBuildScriptedModule" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py", text)
    root = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r'EXTENSION_DEPENDS\s+"?PyTorch"?', root)
    assert re.search(r'EXTENSION_CATEGORY\s+"Segmentation"', root)
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
    ):
        assert re.search(key + r'\s+"[^"]+"', root), key
    assert re.search(r"add_subdirectory\(\s*LabelSharingSeg\s*\)", root)


@pytest.mark.parametrize("path", _module_python_files(), ids=lambda p: p.relative_to(MODULE_DIR).as_posix())
def test_module_files_parse_as_python_310(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def _ui_widget_names():
    tree = ET.parse(UI_FILE)
    return {w.get("name") for w in tree.iter("widget")}, tree


def test_every_widget_the_code_reads_exists_in_the_ui():
    names, _ = _ui_widget_names()
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_SCRIPT.read_text()))
    assert used, "the widget reads no ui members?"
    assert used - names == set()


def test_ui_parameter_bindings_match_the_parameter_node():
    _, tree = _ui_widget_names()
    bound = set()
    for widget in tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound.add(prop.find("string").text)
    module = ast.parse(MODULE_SCRIPT.read_text())
    wrapper = next(
        n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "LabelSharingSegParameterNode"
    )
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    assert bound and bound <= fields
    # every node selector gets the scene from the top widget
    connected = {
        c.findtext("receiver")
        for c in tree.iter("connection")
        if c.findtext("signal").startswith("mrmlSceneChanged")
    }
    selectors = {w.get("name") for w in tree.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors and selectors <= connected


def _class(module, name):
    return next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == name)


def test_module_classes_and_console_api():
    module = ast.parse(MODULE_SCRIPT.read_text())
    for name, base in (
        ("LabelSharingSeg", "ScriptedLoadableModule"),
        ("LabelSharingSegWidget", "ScriptedLoadableModuleWidget"),
        ("LabelSharingSegLogic", "ScriptedLoadableModuleLogic"),
        ("LabelSharingSegTest", "ScriptedLoadableModuleTest"),
    ):
        assert base in {b.id for b in _class(module, name).bases if isinstance(b, ast.Name)}
    logic = _class(module, "LabelSharingSegLogic")
    methods = {f.name: [a.arg for a in f.args.args] for f in logic.body if isinstance(f, ast.FunctionDef)}
    assert methods["loadBundle"] == ["self", "path"]
    assert methods["taskNames"] == ["self"]
    assert methods["segmentTask"][:4] == ["self", "volumeNode", "taskName", "outputSegmentationNode"]
    assert {"progress", "cancel"} <= set(methods["segmentTask"])
    assert methods["loadAtlas"] == ["self"]
    assert methods["segmentAtlasLabels"][:5] == [
        "self",
        "volumeNode",
        "atlasSegmentationNode",
        "segmentIds",
        "outputSegmentationNode",
    ]
    assert {"progress", "cancel"} <= set(methods["segmentAtlasLabels"])
    # help cites both papers and documents the console API
    text = MODULE_SCRIPT.read_text()
    assert "Anand" in text and "Sabuncu" in text and "segmentAtlasLabels(" in text
    test = _class(module, "LabelSharingSegTest")
    assert "runTest" in {f.name for f in test.body if isinstance(f, ast.FunctionDef)}


def test_library_never_imports_qt():
    lib = MODULE_DIR / "LabelSharingSegLib"
    for path in lib.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in (
                    "qt",
                    "ctk",
                    "PythonQt",
                    "PyQt5",
                    "PySide2",
                    "slicer.ScriptedLoadableModule",
                ), path
                if "engine" in path.relative_to(lib).parts:
                    assert top not in ("slicer", "vtk", "mrml"), f"{path}: the engine must not import {name}"


def test_icon_is_a_drawn_128px_png():
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)
    from PIL import Image

    colours = Image.open(ICON_FILE).convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 16, "looks like a placeholder, not a drawing"

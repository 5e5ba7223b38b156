"""Static checks that catch breakage that would only show inside Slicer: files missing from the module's
CMakeLists (not installed), widget names the code reads but the .ui lacks, Python syntax newer than the
oldest supported Python, the version check at load, and the console API (layering: test_layers.py)."""

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
SCENE_LOGIC = MODULE_DIR / "LabelSharingSegLib" / "scene" / "logic.py"


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


# The module needs Slicer 5.10+ (Python 3.12); its library also runs outside Slicer on Python 3.10+, so every
# file must parse with the oldest of those grammars.
OLDEST_PYTHON = (3, 10)


@pytest.mark.parametrize("path", _module_python_files(), ids=lambda p: p.relative_to(MODULE_DIR).as_posix())
def test_module_files_parse_with_the_oldest_supported_python(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=OLDEST_PYTHON)


def test_the_oldest_grammar_check_can_fail():
    newer = "try:\n    pass\nexcept* ValueError:\n    pass\n"  # Python 3.11 syntax
    with pytest.raises(SyntaxError):
        ast.parse(newer, feature_version=OLDEST_PYTHON)
    ast.parse(newer, feature_version=(3, 11))


def test_module_checks_the_slicer_version_at_load():
    from LabelSharingSegLib.scene import packages

    assert packages.MINIMUM_SLICER_VERSION == (5, 10)
    assert packages.MINIMUM_PYTHON_VERSION <= OLDEST_PYTHON
    module = ast.parse(MODULE_SCRIPT.read_text())
    init = next(f for f in _class(module, "LabelSharingSeg").body if isinstance(f, ast.FunctionDef))
    called = {
        n.func.attr for n in ast.walk(init) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    }
    assert "unsupportedVersionMessage" in called


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
    # one API: the Slicer Logic is the scene logic bound to slicer.mrmlScene, not a re-declaration of it
    assert "SegmentationSceneLogic" in {b.id for b in logic.bases if isinstance(b, ast.Name)}
    own = {f.name for f in logic.body if isinstance(f, ast.FunctionDef)}
    assert own <= {"__init__", "getParameterNode", "missingPythonPackages", "installMissingPythonPackages"}
    scene_logic = _class(ast.parse(SCENE_LOGIC.read_text()), "SegmentationSceneLogic")
    methods = {
        f.name: [a.arg for a in f.args.args] for f in scene_logic.body if isinstance(f, ast.FunctionDef)
    }
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
    assert "device" in methods and "setDevice" not in methods  # a property, as docs/SLICER.md says
    docs = (ROOT / "docs" / "SLICER.md").read_text()
    assert "setDevice(" not in docs and "setAlign(" not in docs and "logic.device = " in docs
    # help cites both papers and documents the console API
    text = MODULE_SCRIPT.read_text()
    assert "Anand" in text and "Sabuncu" in text and "segmentAtlasLabels(" in text
    test = _class(module, "LabelSharingSegTest")
    assert "runTest" in {f.name for f in test.body if isinstance(f, ast.FunctionDef)}


# Layering (Qt, MRML, training imports per layer) is checked, with tests that the check fires, in test_layers.py.


def test_icon_is_a_drawn_128px_png():
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)
    from PIL import Image

    colours = Image.open(ICON_FILE).convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 16, "looks like a placeholder, not a drawing"


RAW_BASE = "https://raw.githubusercontent.com/labelsharingseg/SlicerLabelSharingSeg/main/"


def _cmake_value(text, key):
    match = re.search(key + r'\s+"([^"]+)"', text)
    assert match, key
    return match.group(1)


def test_extensions_index_entry_and_files():
    import json

    root = (ROOT / "CMakeLists.txt").read_text()
    entry = json.loads((ROOT / "LabelSharingSeg.json").read_text())
    allowed = {
        "$schema",
        "build_dependencies",
        "build_subdirectory",
        "category",
        "scm_revision",
        "scm_type",
        "scm_url",
        "tier",
    }
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert "slicer-extension-catalog-entry-schema-v1.0" in entry["$schema"]
    assert entry["category"] == _cmake_value(root, "EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == [_cmake_value(root, "EXTENSION_DEPENDS")]
    assert re.search(r"project\(\s*LabelSharingSeg\s*\)", root)  # the entry's file name is the project name
    repository = entry["scm_url"].rstrip("/").removesuffix(".git").rsplit("/", 1)[1]
    assert repository.startswith("Slicer"), "the index requires repository names starting with 'Slicer'"
    assert _cmake_value(root, "EXTENSION_HOMEPAGE").rstrip("/").endswith("/" + repository)
    # the icon and screenshots the URLs name exist in the repository, as images
    urls = [_cmake_value(root, "EXTENSION_ICONURL")] + _cmake_value(root, "EXTENSION_SCREENSHOTURLS").split()
    assert len(urls) >= 3
    for url in urls:
        assert url.startswith(RAW_BASE), url
        path = ROOT / url.removeprefix(RAW_BASE)
        assert path.is_file(), path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    for contributor in _cmake_value(root, "EXTENSION_CONTRIBUTORS").split(","):
        assert re.fullmatch(r"[^()]+ \([^()]+\)", contributor.strip()), contributor
    description = _cmake_value(root, "EXTENSION_DESCRIPTION")
    for licence in ("AAL", "CC BY-NC", "Apache-2.0"):
        assert licence in description
    licence_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence_text and "Version 2.0" in licence_text
    assert "END OF TERMS AND CONDITIONS" in licence_text and len(licence_text) > 10000  # the full text

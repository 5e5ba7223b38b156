"""Dependencies inside Slicer (the install plan never touches torch or SimpleITK), the supported-version
check, and the bundle path the Browse dialog's choice resolves to. No MRML needed."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.scene import packages
from LabelSharingSegLib.scene.bundlechoice import resolveBundlePath
from LabelSharingSegLib.scene.packages import PackageRequirement, pipPlan


def _nothing_importable(name):
    return False


def test_the_module_loads_with_every_required_package_missing():
    """Slicer loads the module before anything is installed, and the module must load to offer the install: what
    LabelSharingSeg.py imports of its library at load time imports none of torch and the required packages (a
    header reader imported at load once pulled in nibabel)."""
    module = Path(__file__).resolve().parents[1] / "LabelSharingSeg" / "LabelSharingSeg.py"
    imported = sorted(
        node.module
        for node in ast.parse(module.read_text()).body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("LabelSharingSegLib")
    )
    assert "LabelSharingSegLib.scene.logic" in imported
    blocked = ["torch", *(req.importName for req in packages.REQUIRED_PACKAGES)]
    script = (
        "import importlib, sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        f"for name in {imported!r}: importlib.import_module(name)\n"
        "from LabelSharingSegLib.scene import packages\n"
        "print(sorted(req.importName for req in packages.missingPackages()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=module.parent, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sorted(blocked[1:]))


def test_this_environment_has_everything():
    assert packages.missingPackages() == []
    assert packages.torchAvailable()
    assert {r.importName for r in packages.REQUIRED_PACKAGES} == {
        "monai",
        "safetensors",
        "nibabel",
        "SimpleITK",
    }


def test_plan_with_everything_missing_never_pip_installs_torch_or_simpleitk():
    missing = packages.missingPackages(importable=_nothing_importable)
    assert [r.importName for r in missing] == ["monai", "safetensors", "nibabel", "SimpleITK"]
    plan = pipPlan(missing, torchMissing=True, importable=_nothing_importable)
    names = [packages.distributionName(r) for r in plan.requirements]
    assert names == ["monai", "safetensors", "packaging", "nibabel"]  # a dependency before its dependant
    assert "torch" not in names and "simpleitk" not in names
    assert plan.pipArguments[0] == "--no-deps"  # pip cannot pull torch/numpy in behind our back
    assert not any("torch" in a.lower() or "simpleitk" in a.lower() for a in plan.pipArguments)
    assert plan.installTorch and plan.torchRequirement.startswith(">=")
    assert [r.importName for r in plan.notInstallable] == ["SimpleITK"]
    message = packages.pipPlanMessage(plan)
    assert (
        "PyTorch extension" in message and "monai>=1.3,<2" in message and "'SimpleITK' is missing" in message
    )


@pytest.mark.parametrize("sneaky", ["torch>=2", "Torch==2.13.0", "SimpleITK", "simple_itk>=2"])
def test_torch_and_simpleitk_are_kept_out_whatever_their_spelling(sneaky):
    extra = PackageRequirement("sneaky", sneaky, "testing")
    plan = pipPlan([extra], torchMissing=False, importable=_nothing_importable)
    expected = () if packages.distributionName(sneaky) in ("torch", "simpleitk") else (sneaky,)
    assert plan.requirements == expected
    if not expected:
        assert plan.notInstallable == (extra,)
    assert packages.distributionName("Simple_ITK>=2") == "simple-itk"


def test_plan_installs_only_what_is_missing():
    monai = packages.REQUIRED_PACKAGES[0]
    plan = pipPlan([monai], torchMissing=False)
    assert plan.requirements == ("monai>=1.3,<2",) and not plan.installTorch and not plan.notInstallable
    assert pipPlan([], torchMissing=False).empty
    assert "All required" in packages.pipPlanMessage(pipPlan([], torchMissing=False))


def test_supported_versions():
    assert packages.unsupportedVersionMessage((5, 10), (3, 12)) is None
    assert packages.unsupportedVersionMessage((6, 0), (3, 13)) is None
    old = packages.unsupportedVersionMessage((5, 8), (3, 9))
    assert old and "5.10 or newer" in old and "Slicer 5.8" in old
    assert "Python 3.10" in packages.unsupportedVersionMessage(None, (3, 9))


def test_bundle_choice_folder_zip_or_manifest(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "bundle.json").write_text("{}")
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("bundle.json", "{}")
    assert resolveBundlePath(str(folder)) == folder
    assert resolveBundlePath(folder / "bundle.json") == folder  # what the Browse dialog hands over
    assert resolveBundlePath(f"  {archive}  ") == archive
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    for bad, message in (
        ("", "No bundle chosen"),
        (None, "No bundle chosen"),
        (tmp_path / "weights.safetensors", "not a bundle"),
        (tmp_path / "absent", "not found"),
    ):
        with pytest.raises(InputError, match=message):
            resolveBundlePath(bad)

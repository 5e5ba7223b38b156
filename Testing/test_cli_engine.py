"""`lsseg plan`, `lsseg segment`, `lsseg info` end to end on generated datasets and random bundles."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from LabelSharingSegLib.engine.labels import labels_from_csv
from LabelSharingSegLib.engine.labelspace import SharedLabelSpace
from lsseg_training.cli import main


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from lsseg_training.data.phantom import make_phantom_tasks

    return make_phantom_tasks(
        tmp_path_factory.mktemp("phantoms"), tasks=3, dims=2, size=32, cases=3, test_cases=1
    )


def test_plan_prints_table_and_writes_json(phantoms, tmp_path, capsys):
    out = tmp_path / "space.json"
    assert main(["plan", *map(str, phantoms), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "shared" in text and "Phantom0" in text
    space = SharedLabelSpace.from_dict(json.loads(out.read_text()))
    assert space.task_names == ["Phantom0", "Phantom1", "Phantom2"]
    assert space.n_shared == max(len(space.task(t).labels) for t in space.task_names)


def test_plan_reports_broken_datasets(phantoms, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(phantoms[0], broken)
    next((broken / "labelsTr").iterdir()).unlink()
    assert main(["plan", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lsseg: error:") and "labelsTr" in err


def _write_image(path, shape=(30, 34, 22)):
    affine = np.array([[0, -1.5, 0, 40], [1.2, 0, 0, -30], [0, 0, 2.5, 5], [0, 0, 0, 1.0]])
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), affine), str(path))
    return affine


def test_segment_task_writes_map_on_input_grid_and_names(ls_bundle_path, tmp_path, capsys):
    image = tmp_path / "ct.nii.gz"
    affine = _write_image(image)
    out = tmp_path / "seg.nii.gz"
    assert (
        main(
            [
                "segment",
                str(ls_bundle_path),
                "-i",
                str(image),
                "-o",
                str(out),
                "--task",
                "brain",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    result = nib.load(str(out))
    assert result.shape == (30, 34, 22)
    np.testing.assert_allclose(result.affine, affine)
    assert set(np.unique(np.asarray(result.dataobj))) <= {0, 1, 2, 3}
    names = labels_from_csv(tmp_path / "seg.csv")
    assert [lab.name for lab in names] == ["white matter", "grey matter", "ventricles"]
    assert "wrote" in capsys.readouterr().out


def test_segment_writes_a_slicer_segmentation_with_the_label_maps_voxels(ls_bundle_path, tmp_path, capsys):
    import slicer  # slicer-core: Slicer's own reader opens the file
    from vtk.util.numpy_support import vtk_to_numpy

    image = tmp_path / "scan.nii.gz"
    _write_image(image)
    common = [
        "segment",
        str(ls_bundle_path),
        "-i",
        str(image),
        "--task",
        "brain",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main([*common, "-o", str(tmp_path / "seg.nii.gz")]) == 0
    assert main([*common, "-o", str(tmp_path / "seg.seg.nrrd")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert not (tmp_path / "seg.seg.csv").exists() and not (tmp_path / "seg.seg.nrrd.csv").exists()
    labelmap = np.asarray(nib.load(str(tmp_path / "seg.nii.gz")).dataobj)
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "seg.seg.nrrd"))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["white matter", "grey matter", "ventricles"]
    for value, name in enumerate(names, start=1):
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
        voxels = vtk_to_numpy(segment.GetRepresentation("Binary labelmap").GetPointData().GetScalars())
        assert (voxels == segment.GetLabelValue()).sum() == (labelmap == value).sum(), name
    assert main([*common, "-o", str(tmp_path / "seg.nrrd")]) == 2
    assert "output must end in .nii, .nii.gz or .seg.nrrd" in capsys.readouterr().err


def test_segment_atlas_labels(lcs_bundle_path, tmp_path):
    from LabelSharingSegLib.engine.bundle import load_bundle

    bundle = load_bundle(lcs_bundle_path)
    atlas, affine = bundle.atlas_image()
    labels, _, _ = bundle.atlas_labels()
    drawn = np.zeros(labels.shape, np.int16)
    drawn[labels == 1] = 7  # a new structure drawn on the atlas
    nib.save(nib.Nifti1Image(drawn, affine), str(tmp_path / "drawn.nii.gz"))
    (tmp_path / "drawn.csv").write_text("value,name,color\n7,my structure,#ff8000\n")
    nib.save(nib.Nifti1Image(atlas, affine), str(tmp_path / "target.nii.gz"))
    out = tmp_path / "out.nii"
    assert (
        main(
            [
                "segment",
                str(lcs_bundle_path),
                "-i",
                str(tmp_path / "target.nii.gz"),
                "-o",
                str(out),
                "--atlas-labels",
                str(tmp_path / "drawn.nii.gz"),
                "--atlas-names",
                str(tmp_path / "drawn.csv"),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    assert nib.load(str(out)).shape == atlas.shape
    assert [lab.name for lab in labels_from_csv(tmp_path / "out.csv")] == ["my structure"]
    # the bundle's own atlas labels
    assert (
        main(
            [
                "segment",
                str(lcs_bundle_path),
                "-i",
                str(tmp_path / "target.nii.gz"),
                "-o",
                str(out),
                "--atlas-labels",
                "bundle",
                "--device",
                "cpu",
                "--quiet",
                "--overwrite",
            ]
        )
        == 0
    )
    assert len(labels_from_csv(tmp_path / "out.csv")) == 3
    # --method picks how drawn labels are segmented; the default carries them by deformable registration
    common = ["segment", str(lcs_bundle_path), "-i", str(tmp_path / "target.nii.gz"), "-o", str(out)]
    common += ["--atlas-labels", "bundle", "--device", "cpu", "--quiet", "--overwrite"]
    outputs = {}
    for method in ("lcs", "register-affine", "register-deformable"):
        assert main([*common, "--method", method]) == 0
        outputs[method] = np.asarray(nib.load(str(out)).dataobj)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), outputs["register-deformable"])
    for method in ("register-affine", "register-deformable"):  # the atlas carried onto itself
        assert (
            2
            * ((outputs[method] == 1) & (labels == 1)).sum()
            / ((outputs[method] == 1).sum() + (labels == 1).sum())
            > 0.8
        )
    assert main([*common, "--method", "lcs-refine"]) == 2  # the paper's network cannot refine


def test_segment_bad_input_is_one_clear_line(ls_bundle_path, lcs_bundle_path, tmp_path, capsys):
    image = tmp_path / "img.nii.gz"
    _write_image(image)
    cases = [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--atlas-labels", "bundle"], "atlas labels need an LCS bundle"),
    ]
    for extra, message in cases:
        assert (
            main(["segment", str(ls_bundle_path), "-i", str(image), "-o", str(tmp_path / "o.nii.gz"), *extra])
            == 2
        )
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert (
        main(
            [
                "segment",
                str(ls_bundle_path),
                "-i",
                str(image),
                "-o",
                str(tmp_path / "missing" / "o.nii.gz"),
                "--task",
                "brain",
            ]
        )
        == 2
    )
    assert "Output folder does not exist" in capsys.readouterr().err
    empty = np.zeros((24, 28, 20), np.int16)
    nib.save(nib.Nifti1Image(empty, np.diag([2.0, 2, 2, 1])), str(tmp_path / "empty.nii.gz"))
    assert (
        main(
            [
                "segment",
                str(lcs_bundle_path),
                "-i",
                str(image),
                "-o",
                str(tmp_path / "o.nii.gz"),
                "--atlas-labels",
                str(tmp_path / "empty.nii.gz"),
            ]
        )
        == 2
    )
    assert "atlas label map is empty" in capsys.readouterr().err
    nan_image = tmp_path / "nan.nii.gz"
    data = np.ones((10, 10, 10), np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(nan_image))
    assert (
        main(
            [
                "segment",
                str(ls_bundle_path),
                "-i",
                str(nan_image),
                "-o",
                str(tmp_path / "o.nii.gz"),
                "--task",
                "brain",
            ]
        )
        == 2
    )
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_console_script_help_and_info(ls_bundle_path):
    for args in (["--help"], ["plan", "--help"], ["segment", "--help"], ["info", str(ls_bundle_path)]):
        proc = subprocess.run(
            [sys.executable, "-m", "lsseg_training.cli", *args], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip()
    proc = subprocess.run(
        [sys.executable, "-m", "lsseg_training.cli", "info", "/nonexistent"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "bundle not found" in proc.stderr

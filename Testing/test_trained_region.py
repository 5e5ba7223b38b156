"""A task segments an aligned scan only inside the region of its reference it was trained on. The shipped 2D tasks
span the brain's box (the deep grey task: its structures' span of coronal slices); the mechanism is tested on the
shipped network with the narrow slabs of the ``multitask`` set, where what is kept and what is not are both large.
On a real whole head in a scanner pose (Colin 27, tilted), every slice of a 2D task used to be labelled - face,
neck and skull included; now only the trained region is, with the same labels there as before, and the run says
so. Real bundle, real head, real MRML and a real worker process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer  # slicer-core: a missing wheel fails the run, never skips it

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import ConfigError, InputError
from LabelSharingSegLib.engine.inference import segment_task
from LabelSharingSegLib.engine.manifest import TaskInfo
from LabelSharingSegLib.engine.trained_region import read_region, region_text, voxels_in
from LabelSharingSegLib.scene import geometry as geo
from LabelSharingSegLib.scene.logic import SegmentationSceneLogic
from lsseg_training.demo import LS_BUNDLE, shipped_bundles_dir
from lsseg_training.realscan import scanner_scan

BRAIN_BOX = ((-74.0, 74.0), (-110.0, 76.0), (-74.0, 84.0))
# the shipped bundle on Colin 27 at 3 mm, aligned: mean Dice of the labels AAL also defines, in each task's region
LOBES_DICE = 0.811
DEEP_DICE = 0.564


@pytest.fixture(scope="module")
def shipped():
    return load_bundle(shipped_bundles_dir() / LS_BUNDLE)


@pytest.fixture(scope="module")
def bundle(shipped, tmp_path_factory):
    """The shipped network with the ``multitask`` set's slabs as its tasks' regions."""
    import shutil

    from lsseg_training.bundle_factory import set_task_slicing
    from lsseg_training.data.build import SETS, trained_region

    path = shutil.copytree(shipped.path, tmp_path_factory.mktemp("slabs") / LS_BUNDLE)
    slabs = {spec.name: (spec.plane, trained_region(spec)) for spec in SETS["multitask"]}
    return load_bundle(set_task_slicing(path, slabs))


@pytest.fixture(scope="module")
def head(bundle):
    """Colin 27's whole head in the demo's scanner pose at 3 mm, and its alignment to the bundle's reference."""
    scan = scanner_scan(3.0)
    alignment = segment_task(bundle, scan.image, scan.affine, "AxialTissue", device="cpu").alignment
    assert alignment is not None and alignment.accepted
    return scan, alignment


def test_the_shipped_tasks_record_the_brain_box_and_the_deep_grey_span(shipped):
    regions = {task.name: task.region_mm for task in shipped.tasks}
    assert regions["AxialTissue"] == regions["SagittalLobes"] == (BRAIN_BOX,)
    assert regions["CoronalSubcortical"] == ((BRAIN_BOX[0], (-46.0, 30.0), BRAIN_BOX[2]),)
    assert "  trained on coronal slices at y -46 to 30 mm (x -74 to 74, z -74 to 84) of the reference" in (
        shipped.summary().splitlines()
    )


def test_the_shipped_tasks_label_a_real_head_across_their_regions(shipped, head):
    """Trained on slices through the whole brain, the shipped lobes task labels the aligned real head from one
    lateral surface to the other and at the midline, and the deep grey task its structures from the caudate's head
    to the hippocampus' tail; above Dice floors against the AAL regions drawn on this head (measured at 3 mm:
    LOBES_DICE, DEEP_DICE; ~0.05 below them)."""
    from lsseg_training.realscan import region_dice

    scan, alignment = head
    world = alignment.aligned_affine(scan.affine)
    lobes = segment_task(shipped, scan.image, scan.affine, "SagittalLobes", device="cpu", align=alignment)
    x = world[0, :3] @ np.argwhere(lobes.labelmap > 0).T + world[0, 3]
    assert x.min() < -55 and x.max() > 55 and np.count_nonzero(np.abs(x) < 6) > 100
    deep = segment_task(shipped, scan.image, scan.affine, "CoronalSubcortical", device="cpu", align=alignment)
    values = {label.name: label.value for label in deep.labels}
    y = world[1, :3] @ np.argwhere(deep.labelmap == values["Left_Caudate"]).T + world[1, 3]
    assert y.max() > 10  # the caudate's head, beyond the narrow slab's y -6
    y = world[1, :3] @ np.argwhere(deep.labelmap == values["Left_Hippocampus"]).T + world[1, 3]
    assert y.min() < -28  # the hippocampus' tail, behind the narrow slab's y -22
    assert region_dice(scan, shipped.task("SagittalLobes"), lobes) > LOBES_DICE - 0.05
    assert region_dice(scan, shipped.task("CoronalSubcortical"), deep) > DEEP_DICE - 0.05


def test_slab_regions_as_recorded_and_described(bundle):
    regions = {task.name: task.region_mm for task in bundle.tasks}
    assert regions["AxialTissue"] == ((BRAIN_BOX[0], BRAIN_BOX[1], (0.0, 30.0)),)
    assert regions["CoronalSubcortical"] == ((BRAIN_BOX[0], (-22.0, -6.0), BRAIN_BOX[2]),)
    assert regions["SagittalLobes"] == (
        ((-36.0, -24.0), BRAIN_BOX[1], BRAIN_BOX[2]),
        ((24.0, 36.0), BRAIN_BOX[1], BRAIN_BOX[2]),
    )
    assert region_text(regions["SagittalLobes"], "sagittal") == (
        "sagittal slices at x -36 to -24 and 24 to 36 mm (y -110 to 76, z -74 to 84)"
    )
    assert region_text(regions["AxialTissue"], None) == "x -74 to 74, y -110 to 76, z 0 to 30 mm"
    assert "  trained on coronal slices at y -22 to -6 mm (x -74 to 74, z -74 to 84) of the reference" in (
        bundle.summary().splitlines()
    )


@pytest.mark.parametrize("task", ["CoronalSubcortical", "SagittalLobes"])
def test_an_aligned_head_is_labelled_only_inside_the_trained_region_and_as_before_there(bundle, head, task):
    scan, alignment = head
    kept = segment_task(bundle, scan.image, scan.affine, task, device="cpu", align=alignment)
    every = segment_task(
        bundle, scan.image, scan.affine, task, device="cpu", align=alignment, all_slices=True
    )
    inside = voxels_in(bundle.task(task).region_mm, alignment.aligned_affine(scan.affine), scan.image.shape)
    assert inside.any() and not inside.all()
    assert not kept.labelmap[~inside].any()
    np.testing.assert_array_equal(kept.labelmap[inside], every.labelmap[inside])
    # what every slice gave: most labels lay outside the slab the network was trained on
    assert np.count_nonzero(every.labelmap[~inside]) > 3 * np.count_nonzero(kept.labelmap)
    assert kept.coverage is not None and every.coverage is None
    plane = bundle.task(task).plane
    assert f"segmented only inside the region task {task} was trained on, {plane} slices at" in kept.coverage


def test_the_labels_of_both_hemispheres_slabs_and_none_between(bundle, head):
    scan, alignment = head
    result = segment_task(bundle, scan.image, scan.affine, "SagittalLobes", device="cpu", align=alignment)
    world = alignment.aligned_affine(scan.affine)
    labelled = np.argwhere(result.labelmap > 0).T
    x = world[0, :3] @ labelled + world[0, 3]
    assert (x < -24 + 1e-3).sum() > 100 and (x > 24 - 1e-3).sum() > 100
    assert np.all(np.abs(x) >= 24 - 1e-3) and np.all(np.abs(x) <= 36 + 1e-3)


def test_a_scan_that_does_not_reach_the_slab_is_refused_unless_every_slice_is_asked_for(bundle, head):
    scan, alignment = head
    world = alignment.aligned_affine(scan.affine)
    # the scanner grid's first axis runs anterior: keep the slices that lie wholly behind y -40 mm
    index = np.indices(scan.image.shape).reshape(3, -1)
    y = (world[1, :3] @ index + world[1, 3]).reshape(scan.image.shape)
    behind = int(np.argmax(y.max(axis=(1, 2)) > -40.0))
    assert behind > 4
    image = np.ascontiguousarray(scan.image[:behind])
    with pytest.raises(InputError, match="does not reach them .* nothing to segment"):
        segment_task(bundle, image, scan.affine, "CoronalSubcortical", device="cpu", align=alignment)
    every = segment_task(
        bundle, image, scan.affine, "CoronalSubcortical", device="cpu", align=alignment, all_slices=True
    )
    assert every.labelmap.shape == image.shape and every.coverage is None


def test_an_unaligned_volume_and_a_single_slice_are_segmented_whole(bundle, head):
    scan, _ = head
    result = segment_task(bundle, scan.image, scan.affine, "CoronalSubcortical", device="cpu", align=False)
    assert result.alignment is None and result.coverage is None
    one = scan.image[:, :, 30:31]
    assert segment_task(bundle, one, scan.affine, "SagittalLobes", device="cpu").coverage is None


def test_voxels_in_a_region_match_their_world_positions_on_an_oblique_grid():
    rng = np.random.default_rng(3)
    affine = np.eye(4)
    affine[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] * [1.5, 2.0, 0.8]
    shape = (23, 17, 29)
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape) - 1) / 2 + [2.0, -1.0, 3.0]  # centred near the boxes
    region = (((-10.0, 4.0), (-30.0, 30.0), (-5.0, 6.0)), ((8.0, 12.0), (-3.0, 9.0), (-30.0, 30.0)))
    world = (affine[:3, :3] @ np.indices(shape).reshape(3, -1) + affine[:3, 3:4]).T
    expected = np.zeros(len(world), dtype=bool)
    for box in region:
        expected |= np.all(
            [(world[:, a] >= box[a][0]) & (world[:, a] <= box[a][1]) for a in range(3)], axis=0
        )
    inside = voxels_in(region, affine, shape)
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(inside.reshape(-1), expected)


@pytest.mark.parametrize(
    "value, message",
    [
        ([], "list of 1 to 16 boxes"),
        ([[[0, 1], [0, 1]]], r"must be \[\[x low"),
        ([[[0, 1], [0, 1], [2, 1]]], "z: low 2 is above high 1"),
        ([[[0, 1], [0, float("nan")], [0, 1]]], "finite numbers"),
        ([[[0, 1], [True, 2], [0, 1]]], "finite numbers"),
        ([[[0, 1], [0, 1e9], [0, 1]]], "finite numbers"),
        ([[[0, 1], [0, 1], [0, 1]]] * 17, "list of 1 to 16 boxes"),
        ({"x": [0, 1]}, "list of 1 to 16 boxes"),
    ],
)
def test_a_bad_region_in_bundle_json_is_refused_with_its_place(bundle, value, message):
    entry = bundle.task("AxialTissue").to_dict()
    entry["region_mm"] = value
    with pytest.raises(ConfigError, match=message) as caught:
        TaskInfo.from_dict(entry, 0, "tasks[0]")
    assert str(caught.value).startswith("tasks[0].region_mm")


def test_a_region_survives_bundle_json_and_an_absent_one_is_empty(bundle):
    task = bundle.task("SagittalLobes")
    again = TaskInfo.from_dict(json.loads(json.dumps(task.to_dict())), task.index, "tasks[1]")
    assert again == task
    entry = task.to_dict()
    del entry["region_mm"]
    assert TaskInfo.from_dict(entry, task.index, "tasks[1]").region_mm == ()
    assert read_region("r", None) == ()


def test_the_module_runs_the_task_in_a_worker_and_says_what_part_was_segmented(bundle):
    """Slicer's path: a whole head as a volume node, the task run in a real worker process (aligned there), the
    result written back only inside the trained region, and the status line saying so."""
    scan = scanner_scan(4.0)
    scene = slicer.vtkMRMLScene()
    try:
        volume = geo.createScalarVolumeNode(scene, "head", scan.image, scan.affine)
        logic = SegmentationSceneLogic(scene, device="cpu")
        logic.loadBundle(bundle.path)
        run = logic.prepareSegmentTask(volume, "CoronalSubcortical")
        worker = logic.startWorker(run)
        assert worker.wait(300)
        result = worker.result()
        assert result.alignment is not None and result.alignment.accepted
        assert result.coverage is not None and "coronal slices at y -22 to -6 mm" in result.coverage
        direct = segment_task(bundle, scan.image, scan.affine, "CoronalSubcortical", device="cpu")
        np.testing.assert_array_equal(np.asarray(result.labelmap), direct.labelmap)
        logic.applyRun(run, result)
        message = SegmentationSceneLogic.finishedMessage("out", 3.0, result)
        assert "Note: Segmented only inside the region task CoronalSubcortical was trained on" in message
    finally:
        scene.Clear(1)


def test_lsseg_segment_says_what_part_it_segmented_and_logs_progress_a_line_per_step(
    bundle, tmp_path, capsys
):
    from LabelSharingSegLib.engine.nifti_io import load_nifti, save_nifti
    from lsseg_training.cli import main

    scan = scanner_scan(4.0)
    save_nifti(tmp_path / "head.nii.gz", scan.image, scan.affine)
    args = ["segment", str(bundle.path), "-i", str(tmp_path / "head.nii.gz"), "--task", "AxialTissue"]
    assert main([*args, "-o", str(tmp_path / "kept.nii.gz")]) == 0
    out = capsys.readouterr().out
    assert (
        "segmented only inside the region task AxialTissue was trained on, axial slices at z 0 to 30 mm"
        in out
    )
    assert "(--all-slices segments every slice)" in out
    # stdout is not a terminal here: one line per step, no carriage return per network window
    assert "\r" not in out and out.count("running the network") == 1
    assert main([*args, "-o", str(tmp_path / "every.nii.gz"), "--all-slices"]) == 0
    assert "segmented only inside" not in capsys.readouterr().out
    kept, _ = load_nifti(tmp_path / "kept.nii.gz")
    every, _ = load_nifti(tmp_path / "every.nii.gz")
    assert 0 < np.count_nonzero(kept) < np.count_nonzero(every) / 3
    assert (
        main(
            [
                "segment",
                str(bundle.path),
                "-i",
                str(tmp_path / "head.nii.gz"),
                "-o",
                str(tmp_path / "x.nii.gz"),
                "--atlas-labels",
                "bundle",
                "--all-slices",
            ]
        )
        != 0
    )
    assert "--all-slices goes with --task" in capsys.readouterr().err


def test_a_3d_task_with_a_region_keeps_an_aligned_scan_to_its_box(ls_bundle_path, tmp_path):
    """Any task may record a region, not only 2D ones: a 3D task's result is kept to its box, unchanged inside."""
    import shutil

    from LabelSharingSegLib.engine.registration import Alignment
    from lsseg_training.bundle_factory import set_task_slicing

    path = shutil.copytree(ls_bundle_path, tmp_path / "bundle")
    region = (((-6.0, 40.0), (-40.0, 40.0), (-40.0, 3.0)),)
    three_d = load_bundle(set_task_slicing(path, {"organs": (None, region)}))
    assert three_d.task("organs").region_mm == region and three_d.task("brain").region_mm == ()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 18, 16)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, -18.0, -16.0]
    placed = Alignment(np.eye(4), metric=-0.5)  # the scan already lies in the reference's space
    kept = segment_task(three_d, image, affine, "organs", device="cpu", align=placed)
    every = segment_task(three_d, image, affine, "organs", device="cpu", align=placed, all_slices=True)
    inside = voxels_in(region, affine, image.shape)
    assert 0 < inside.sum() < inside.size
    assert not kept.labelmap[~inside].any() and every.labelmap[~inside].any()
    np.testing.assert_array_equal(kept.labelmap[inside], every.labelmap[inside])
    assert kept.coverage is not None and "x -6 to 40, y -40 to 40, z -40 to 3 mm" in kept.coverage
    # the other task records none: segmented whole
    assert segment_task(three_d, image, affine, "brain", device="cpu", align=placed).coverage is None


def test_a_dataset_json_with_a_broken_region_is_refused_with_its_folder(tmp_path):
    from types import SimpleNamespace

    from lsseg_training.bundle_factory import dataset_slicing

    good = [[[-74, 74], [-22, -6], [-74, 84]]]
    ok = SimpleNamespace(root=tmp_path, metadata={"lsseg": {"plane": "coronal", "region_mm": good}})
    assert dataset_slicing(ok) == ("coronal", (((-74.0, 74.0), (-22.0, -6.0), (-74.0, 84.0)),))
    assert dataset_slicing(SimpleNamespace(root=tmp_path, metadata={})) == (None, ())
    bad = SimpleNamespace(root=tmp_path, metadata={"lsseg": {"plane": "coronal", "region_mm": [[[5, 1]]]}})
    with pytest.raises(InputError, match=rf"{tmp_path}: dataset.json lsseg.region_mm\[0\] must be"):
        dataset_slicing(bad)


def test_the_region_bench_counts_labels_outside_and_times_both_ways(bundle, capsys):
    """``lsseg bench region`` on the shipped network with slabs (Colin 27 at 4 mm, one run each way): every slice
    labels mostly outside each task's region, the region none, with the same labels inside; times reported, never
    asserted. A bundle whose tasks record no region is refused."""
    from train_helpers import lsseg

    capsys.readouterr()
    assert lsseg("bench", "region", bundle.path, "--spacing", 4, "--repeats", 1, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in result["rows"]] == ["AxialTissue", "SagittalLobes", "CoronalSubcortical"]
    for row in result["rows"]:
        assert row["outside_region"] == 0 and row["same_inside"]
        assert row["outside_every_slice"] > 0.5 * row["labelled_every_slice"]
        assert row["seconds_every_slice"] > 0 and row["seconds_region"] > 0
    assert lsseg("bench", "region", bundle.path, "--repeats", 0) == 2


def test_the_region_bench_refuses_a_bundle_without_regions(ls_bundle_path, capsys):
    from train_helpers import lsseg

    assert lsseg("bench", "region", ls_bundle_path) == 2
    assert "none of its tasks records the region" in capsys.readouterr().err

"""2D tasks in their own plane: the shipped multitask bundle's tasks record their plane, and a volume of any
voxel order or obliquity is cut along that plane in world orientation - giving the same labels as the same
anatomy resliced to the task's plane. Real network (the shipped bundle), real anatomy (the held-out
template)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import BundleError
from LabelSharingSegLib.engine.inference import segment_task
from LabelSharingSegLib.engine.planes import plane_grid
from LabelSharingSegLib.engine.preprocessing import resample_to_grid
from lsseg_training.demo import LS_BUNDLE, shipped_bundles_dir

sources = pytest.importorskip("lsseg_training.data.sources")

TASK = "SagittalLobes"


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(shipped_bundles_dir() / LS_BUNDLE)


@pytest.fixture(scope="module")
def ras_slab():
    """A sagittal slab (x 24..36 mm) of the held-out template on a RAS grid at the bundle's 1.5 mm."""
    template, affine = sources.load_template(sources.TEST_TEMPLATE)
    grid = np.diag([1.5, 1.5, 1.5, 1.0])
    grid[:3, 3] = [24.0, -104.0, -60.0]
    shape = (9, 117, 94)
    image = resample_to_grid(
        torch.as_tensor(np.array(template))[None], grid, shape, mode="bilinear", src_affine=affine
    )[0].numpy()
    return image, grid


def _reorder(image, affine, order, flip):
    """The same voxels stored in another order (axes ``order``, axis ``flip`` reversed): same world content."""
    moved = np.transpose(image, order)
    out = affine[:, list(order) + [3]].copy()
    if flip is not None:
        moved = np.flip(moved, axis=flip).copy()
        out[:3, 3] += out[:3, flip] * (moved.shape[flip] - 1)
        out[:3, flip] *= -1
    return moved, out


def _back(labels, order, flip):
    """Undo _reorder on a label map."""
    if flip is not None:
        labels = np.flip(labels, axis=flip)
    return np.transpose(labels, np.argsort(order))


def _planeless(bundle):
    """The bundle as written before planes were recorded."""
    tasks = tuple(replace(t, plane=None) for t in bundle.tasks)
    return replace(bundle, manifest=replace(bundle.manifest, tasks=tasks))


def _agreement(a, b):
    return float(np.mean(a == b))


def test_shipped_multitask_tasks_record_their_planes(bundle):
    assert {t.name: t.plane for t in bundle.tasks} == {
        "AxialTissue": "axial",
        "SagittalLobes": "sagittal",
        "CoronalSubcortical": "coronal",
    }


@pytest.fixture(scope="module")
def in_plane_labels(bundle, ras_slab):
    """The sagittal task on the slab stored sagittally (A, S, R voxel order: already its plane)."""
    image, affine = ras_slab
    sagittal, sagittal_affine = _reorder(image, affine, (1, 2, 0), None)
    result = segment_task(bundle, sagittal, sagittal_affine, TASK, device="cpu", align=False)
    labels = _back(result.labelmap, (1, 2, 0), None)
    counts = np.bincount(labels.ravel(), minlength=9)
    assert (counts[1:] > 0).sum() >= 4  # several lobes found: the comparison below means something
    return labels


@pytest.mark.parametrize(
    "name, order, flip",
    [("axial (R, A, S)", (0, 1, 2), None), ("coronal, left-right flipped", (0, 2, 1), 0)],
)
def test_the_task_plane_is_honoured_whatever_the_voxel_order(
    bundle, ras_slab, in_plane_labels, name, order, flip
):
    image, affine = ras_slab
    stored, stored_affine = _reorder(image, affine, order, flip)
    result = segment_task(bundle, stored, stored_affine, TASK, device="cpu", align=False)
    assert result.labelmap.shape == stored.shape
    assert _agreement(_back(result.labelmap, order, flip), in_plane_labels) > 0.995


def test_without_a_plane_a_volume_is_cut_along_its_third_axis(bundle, ras_slab, in_plane_labels):
    """Older bundles (no plane) keep today's behaviour; on an axially stored volume that is the wrong
    plane for a sagittal task, and the labels differ - which is what the plane fixes."""
    image, affine = ras_slab
    planeless = _planeless(bundle)
    sagittal, sagittal_affine = _reorder(image, affine, (1, 2, 0), None)
    same = segment_task(planeless, sagittal, sagittal_affine, TASK, device="cpu", align=False)
    assert _agreement(_back(same.labelmap, (1, 2, 0), None), in_plane_labels) > 0.995
    wrong = segment_task(planeless, image, affine, TASK, device="cpu", align=False)
    assert _agreement(wrong.labelmap, in_plane_labels) < 0.9


def test_an_oblique_volume_gets_the_labels_of_its_reslicing(bundle, ras_slab):
    from scipy.spatial.transform import Rotation

    image, affine = ras_slab
    tilt = np.eye(4)
    tilt[:3, :3] = Rotation.from_euler("xyz", [10, 0, 14], degrees=True).as_matrix()
    oblique_affine = tilt @ np.diag([1.2, 1.3, 1.4, 1.0])
    oblique_affine[:3, 3] = affine[:3, 3] - [6.0, 0.0, 0.0]
    oblique_affine[:3, 3] += affine[:3, :3] @ [0, 10, 10]
    shape = (16, 100, 70)
    oblique = resample_to_grid(
        torch.as_tensor(image)[None], oblique_affine, shape, mode="bilinear", src_affine=affine
    )[0].numpy()
    result = segment_task(bundle, oblique, oblique_affine, TASK, device="cpu", align=False)
    # the same scan resliced to the task's plane by the user, segmented there, labels carried back
    grid_affine, grid_shape = plane_grid(oblique_affine, shape, "sagittal", (1.5, 1.5))
    resliced = resample_to_grid(
        torch.as_tensor(oblique)[None], grid_affine, grid_shape, mode="bilinear", src_affine=oblique_affine
    )[0].numpy()
    on_plane = segment_task(bundle, resliced, grid_affine, TASK, device="cpu", align=False)
    carried = resample_to_grid(
        torch.as_tensor(on_plane.labelmap.astype(np.float32))[None],
        oblique_affine,
        shape,
        mode="nearest",
        src_affine=grid_affine,
    )[0].numpy()
    labelled = (carried > 0) | (result.labelmap > 0)
    assert labelled.mean() > 0.2
    # labels differ only where two nearest-neighbour resamplings meet a boundary (measured 0.95)
    assert _agreement(result.labelmap[labelled], carried[labelled]) > 0.93
    # cutting the oblique volume along its own third axis (no plane) does not give these labels
    planeless = _planeless(bundle)
    along_axis = segment_task(planeless, oblique, oblique_affine, TASK, device="cpu", align=False)
    assert _agreement(along_axis.labelmap[labelled], carried[labelled]) < 0.5  # measured 0.09


def test_a_bad_or_misplaced_plane_is_refused(tmp_path, bundle):
    import json
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["tasks"][0]["plane"] = "transverse"
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="plane: 'transverse' is not one of axial, sagittal, coronal"):
        load_bundle(copy)


def test_a_grid_limited_to_the_imaged_object_keeps_the_slice_lattice():
    """``within``: the grid spans only the object (plus the margin), on the same lattice of positions as the
    grid over the whole volume, so every object voxel is covered and no slice moves."""
    from scipy.spatial.transform import Rotation

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("x", 14, degrees=True).as_matrix() @ np.diag([1.0, 1.0, 2.4])
    affine[:3, 3] = (-60.0, -80.0, -50.0)
    shape = (120, 140, 60)
    head = np.zeros(shape, dtype=bool)
    head[30:90, 40:110, 10:50] = True
    full_affine, full_shape = plane_grid(affine, shape, "sagittal", (1.5, 1.5))
    part_affine, part_shape = plane_grid(affine, shape, "sagittal", (1.5, 1.5), within=head, margin_mm=10.0)
    np.testing.assert_allclose(part_affine[:3, :3], full_affine[:3, :3])
    offset = np.linalg.solve(full_affine[:3, :3], part_affine[:3, 3] - full_affine[:3, 3])
    np.testing.assert_allclose(offset, np.round(offset), atol=1e-6)  # whole grid steps: the lattice is kept
    assert all(0 <= o and o + p <= f for o, p, f in zip(np.round(offset), part_shape, full_shape))
    assert np.prod(part_shape) < 0.6 * np.prod(full_shape)
    corners = np.array(np.meshgrid(*[[0, p - 1] for p in part_shape], indexing="ij")).reshape(3, -1)
    part_world = part_affine[:3, :3] @ corners + part_affine[:3, 3:4]
    voxels = np.argwhere(head).T
    world = affine[:3, :3] @ voxels + affine[:3, 3:4]
    low, high = part_world.min(axis=1), part_world.max(axis=1)
    assert np.all(world.min(axis=1) - 10.0 >= low - 2.4) and np.all(world.max(axis=1) + 10.0 <= high + 2.4)
    assert np.all(world.min(axis=1) >= low) and np.all(world.max(axis=1) <= high)

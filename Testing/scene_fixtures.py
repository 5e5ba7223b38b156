"""Test fixtures for the scene tests: tiny, randomly initialised bundles and synthetic volumes.

Built only through the engine's public bundle API (so a bundle written here is validated exactly like a
trained one). The weights are random: the segmentations are meaningless,
only the plumbing (names, colours, geometry, progress, cancel) is exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_CHANNELS = [4, 8]  # one pooling level: inputs must be divisible by 2
TINY_PATCH = [16, 16, 16]

DEMO_TASKS = {
    "Brain": {1: "White matter", 2: "Grey matter", 3: "CSF"},
    "Tumour": {1: "Oedema", 2: "Enhancing core"},
}
DEMO_TERMINOLOGY = {
    "White matter": {
        "category": ["SCT", "123037004", "Anatomical Structure"],
        "type": ["SCT", "68523003", "White matter"],
    },
}


def _preprocessing(spacing=(2.0, 2.0, 2.0)):
    from LabelSharingSegLib.engine.preprocessing_config import Preprocessing

    return Preprocessing(spatial_dims=3, spacing=tuple(spacing), patch_size=tuple(TINY_PATCH), overlap=0.25)


def writeTinyLabelSharingBundle(out, seed: int = 0, spacing=(2.0, 2.0, 2.0)) -> Path:
    """A 2-task label-sharing bundle (random weights) written to the folder ``out``."""
    import torch

    from LabelSharingSegLib.engine.bundle import TaskInfo, build_manifest, write_bundle
    from LabelSharingSegLib.engine.labels import LabelInfo, default_color
    from LabelSharingSegLib.engine.labelspace import SharedLabelSpace, TaskSizes
    from LabelSharingSegLib.engine.network_config import UNetConfig
    from LabelSharingSegLib.engine.networks import build_network

    sizes = []
    for name, labels in DEMO_TASKS.items():
        sizes.append(TaskSizes(name, dict(labels), {v: 1.0 / (v + 1) for v in labels}))
    space = SharedLabelSpace.build(sizes)
    tasks = []
    for index, (name, labels) in enumerate(DEMO_TASKS.items()):
        infos = tuple(
            LabelInfo(v, n, default_color(v), DEMO_TERMINOLOGY.get(n)) for v, n in sorted(labels.items())
        )
        tasks.append(TaskInfo(name, index, infos, space.task_to_shared(name)))
    network = UNetConfig(spatial_dims=3, out_channels=space.n_shared + 1, channels=tuple(TINY_CHANNELS))
    torch.manual_seed(seed)
    state = build_network(network).state_dict()
    manifest = build_manifest(
        kind="labelsharing",
        network=network,
        preprocessing=_preprocessing(spacing),
        tasks=tasks,
        label_space=space,
        name="Tiny label-sharing demo",
        description="Randomly initialised demo bundle (no training): for testing the module only.",
        training={"note": "random weights", "seed": seed},
    )
    return write_bundle(out, manifest, state)


def syntheticAtlas(shape=(24, 24, 20), spacing=(2.0, 2.0, 2.0)):
    """(image [i,j,k] float32, labelmap int16, affine, LabelInfo list): an ellipsoid 'brain' with two
    hemispheres and a central 'ventricle'."""
    from LabelSharingSegLib.engine.labels import LabelInfo

    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    radius = np.array(shape, dtype=np.float32) * 0.4
    r = np.sqrt(sum(((grid[a] - centre[a]) / radius[a]) ** 2 for a in range(3)))
    labelmap = np.zeros(shape, dtype=np.int16)
    inside = r < 1.0
    labelmap[inside & (grid[0] < centre[0])] = 1
    labelmap[inside & (grid[0] >= centre[0])] = 2
    labelmap[r < 0.35] = 3
    image = (labelmap * 40.0 + np.random.default_rng(0).normal(0, 5, shape)).astype(np.float32)
    affine = np.diag([float(spacing[0]), float(spacing[1]), float(spacing[2]), 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * np.array(spacing)
    labels = [
        LabelInfo(1, "Left hemisphere", (0.85, 0.45, 0.3)),
        LabelInfo(2, "Right hemisphere", (0.3, 0.55, 0.85)),
        LabelInfo(3, "Ventricles", (0.95, 0.85, 0.2)),
    ]
    return image, labelmap, affine, labels


def writeTinyAtlasBundle(out, seed: int = 0, shape=(24, 24, 20), spacing=(2.0, 2.0, 2.0)) -> Path:
    """A small LCS bundle (random weights) with a synthetic atlas, written to the folder ``out``."""
    import torch

    from LabelSharingSegLib.engine.bundle import build_manifest, write_bundle
    from LabelSharingSegLib.engine.network_config import LCSConfig
    from LabelSharingSegLib.engine.networks import build_network

    image, labelmap, affine, labels = syntheticAtlas(shape, spacing)
    network = LCSConfig(spatial_dims=3, channels=tuple(TINY_CHANNELS))
    torch.manual_seed(seed)
    state = build_network(network).state_dict()
    manifest = build_manifest(
        kind="lcs",
        network=network,
        preprocessing=_preprocessing(spacing),
        name="Tiny LCS demo",
        description="Randomly initialised atlas-conditioned demo bundle (no training): for testing only.",
        training={"note": "random weights", "seed": seed},
    )
    return write_bundle(out, manifest, state, atlas=(image, labelmap, affine, labels))


def obliqueAffine(
    spacing=(1.3, 0.9, 2.1), angles=(0.3, -0.2, 0.5), origin=(12.0, -30.0, 7.5), lps=True
) -> np.ndarray:
    """A voxel->RAS affine with rotation about all three axes, anisotropic spacing and (optionally) the
    LPS->RAS axis flip a DICOM-derived volume has."""
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rotation = rz @ ry @ rx
    if lps:
        rotation = np.diag([-1.0, -1.0, 1.0]) @ rotation
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _ijkToRas(node) -> np.ndarray:
    import vtk

    from LabelSharingSegLib.scene import geometry

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return geometry.vtkMatrixToArray(matrix)


def sceneSnapshot(scene):
    """What a user could see change: nodes, their names, segments, voxels and matrices."""
    import slicer
    from vtk.util import numpy_support

    from LabelSharingSegLib.scene import geometry as geo

    state = []
    nodes = scene.GetNodes()
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        entry = [node.GetID(), node.GetClassName(), node.GetName()]
        if node.IsA("vtkMRMLSegmentationNode"):
            segmentation = node.GetSegmentation()
            for s in range(segmentation.GetNumberOfSegments()):
                segment = segmentation.GetNthSegment(s)
                image = segment.GetRepresentation(geo.BINARY_LABELMAP)
                total = 0
                if image is not None and image.GetPointData().GetScalars() is not None:
                    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
                    total = int((values == segment.GetLabelValue()).sum())
                terminology = segment.GetTerminology() if hasattr(segment, "GetTerminology") else ""
                entry.append(
                    (
                        segmentation.GetNthSegmentID(s),
                        segment.GetName(),
                        segment.GetColor(),
                        total,
                        terminology,
                    )
                )
        elif node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is not None:
            entry.append(slicer.util.arrayFromVolume(node).copy().tobytes())
            entry.append(_ijkToRas(node).tobytes())
        state.append(tuple(entry))
    return state


def draw_segment(segmentation_node, name, mask, ijk_to_ras, color=(0.9, 0.5, 0.1)):
    """Add a segment from a numpy mask on any grid, the way a Segment Editor effect (or an import) writes it."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    from LabelSharingSegLib.scene import geometry as geo

    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", name, color)
    image = vtk.vtkImageData()
    image.SetDimensions(*mask.shape)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.transpose(2, 1, 0).ravel()
    oriented = slicer.vtkOrientedImageData()
    oriented.ShallowCopy(image)
    oriented.SetImageToWorldMatrix(geo.arrayToVtkMatrix(ijk_to_ras))
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
    )
    return segment_id

"""SegmentationSceneLogic: every decision of the Slicer module, on MRML only (no Qt, no widget).

A run has three phases so that the scene is only touched on the calling (main) thread and never changes
when a run fails or is cancelled:

1. ``prepare...`` (main thread): validate the inputs, copy voxels / atlas masks out of the nodes.
2. compute, on arrays only: in a worker process (:meth:`SegmentationSceneLogic.createWorkerJob`, what the
   Slicer widget runs, cancelled by ending the process) or in this process (``PreparedRun.compute``).
3. ``applyRun`` (main thread): write the result into the output segmentation, all or nothing.

``segmentTask`` and ``segmentAtlasLabels`` run the three phases synchronously for the Python console.
The engine is imported lazily so that this module loads (and can report missing packages) without torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..engine.errors import CancelledError, InputError
from ..engine.labels import LabelInfo
from ..engine.modality import check_scan_modality, check_stated_modality, weighting_warning
from ..worker.client import SubprocessWorker, WorkerJob
from . import atlassegments
from . import geometry as geo
from . import segments as seg
from .bundlechoice import resolveBundlePath
from .jobs import cancelCallable, progressCallable, raiseIfCancelled, scaledProgress
from .preparedrun import ATLAS_KIND, TASK_KIND, PreparedRun
from .transaction import SceneTransaction

if TYPE_CHECKING:
    from .scanheader import FileForInstance

DEVICE_CHOICES = ("auto", "cuda", "cpu", "mps")


def _alignmentTrusted(alignment) -> bool:
    """Accepted by the quality check and confident (an engine Alignment or the worker's ReportedAlignment)."""
    return bool(alignment.accepted and getattr(alignment, "confident", True))


class SegmentationSceneLogic:
    """Holds the loaded bundle and the device choice; implements both segmentation flows on ``scene``.

    ``segmentationsLogic`` is Slicer's ``vtkSlicerSegmentationsModuleLogic`` (in the app:
    ``slicer.modules.segmentations.logic()``); one is created when not given.
    """

    def __init__(
        self,
        scene,
        device: str = "auto",
        segmentationsLogic=None,
        dicomFileForInstance: FileForInstance | None = None,
    ):
        """``dicomFileForInstance``: the file of a DICOM SOP Instance UID (in the app: Slicer's DICOM database's
        ``fileForInstance``), so that volumes loaded from DICOM have their headers checked (scene/scanheader.py)."""
        import slicer

        if scene is None:
            raise InputError("SegmentationSceneLogic needs an MRML scene")
        self.scene = scene
        self._device = "auto"
        self.device = device
        if segmentationsLogic is None:
            segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
            segmentationsLogic.SetMRMLScene(scene)
        self.segmentationsLogic = segmentationsLogic
        self.dicomFileForInstance = dicomFileForInstance
        self.bundle = None
        # Automatic alignment to the bundle's reference image: None = whenever the bundle carries one
        # (scans as acquired are rarely in atlas space), True = always (error if none), False = never.
        self.align: bool | None = None
        self._atlasGeometry: tuple[tuple[int, int, int], np.ndarray] | None = None
        # engine method for atlas labels (worker/methods.py): "" = LCS; options go to it as keywords
        self.atlasMethod = ""
        self.atlasMethodOptions: dict = {}

    # ------------------------------------------------------------------ device
    @property
    def device(self) -> str:
        return self._device

    @device.setter
    def device(self, name: str) -> None:
        name = (name or "auto").strip().lower()
        if name.split(":")[0] not in DEVICE_CHOICES:
            raise InputError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
        self._device = name

    def deviceNote(self, device: str | None = None) -> str | None:
        """The engine's note about the effective device (e.g. running on the CPU), or None."""
        from ..engine.device import resolve_device

        _, note = resolve_device(device or self._device)
        return note

    # ------------------------------------------------------------------ bundle
    def loadBundle(self, path):
        """Load and validate a bundle folder, .zip, or the folder of a given bundle.json; on failure the
        previously loaded bundle stays."""
        from ..engine.bundle import load_bundle

        bundle = load_bundle(resolveBundlePath(path))
        self.bundle = bundle
        self._atlasGeometry = None
        if self.atlasMethodOptions.get("method") not in [m for m, _ in self.atlasMethodChoices()]:
            self.setAtlasMethod(None)  # a method the new bundle cannot run falls back to its default
        return bundle

    def unloadBundle(self) -> None:
        self.bundle = None
        self._atlasGeometry = None

    def requireBundle(self):
        if self.bundle is None:
            raise InputError(
                "No model bundle loaded: choose a bundle (folder or .zip) first, e.g. logic.loadBundle(path)."
            )
        return self.bundle

    @property
    def bundleKind(self) -> str | None:
        return None if self.bundle is None else self.bundle.kind.value

    def isAtlasBundle(self) -> bool:
        return self.bundle is not None and self.bundle.kind.has_atlas

    def atlasMethodChoices(self) -> list[tuple[str, str]]:
        """(method, title) of the ways the loaded atlas bundle can segment drawn labels, its default first."""
        from ..engine.atlas_methods import ATLAS_METHOD_TITLES, atlas_methods_for

        if not self.isAtlasBundle():
            return []
        methods = atlas_methods_for(self.bundle.network_config.arch, self.bundle.preprocessing.spatial_dims)
        return [(m, ATLAS_METHOD_TITLES[m] + (" (default)" if i == 0 else "")) for i, m in enumerate(methods)]

    def setAtlasMethod(self, method: str | None) -> None:
        """Segment atlas labels with ``method`` (one of ``atlasMethodChoices``); None or '': the bundle's default."""
        options = {k: v for k, v in self.atlasMethodOptions.items() if k != "method"}
        if method:
            allowed = [m for m, _ in self.atlasMethodChoices()]
            if method not in allowed:
                raise InputError(
                    f"atlas-label method {method!r} is not available for this bundle "
                    f"(choose {', '.join(allowed) or 'an atlas bundle first'})"
                )
            options["method"] = method
        self.atlasMethodOptions = options

    def taskNames(self) -> list[str]:
        return [] if self.bundle is None else list(self.bundle.task_names())

    def taskLabels(self, taskName: str) -> list[LabelInfo]:
        return list(self.requireBundle().task_labels(taskName))

    def bundleSummary(self) -> str:
        return "No bundle loaded." if self.bundle is None else self.bundle.summary()

    def _bundleDims(self, bundle) -> int:
        return bundle.network_config.spatial_dims

    # ------------------------------------------------------------------ common checks
    def _checkInputVolume(self, volumeNode, bundle, role="input volume"):
        geo.checkScalarVolumeNode(volumeNode, role)
        if volumeNode.GetScene() is not self.scene:
            raise InputError(f"'{volumeNode.GetName()}' is not in this logic's MRML scene.")
        image, geometry = geo.arrayFromVolumeNode(volumeNode)
        if self._bundleDims(bundle) == 3 and min(geometry.shape) < 2:
            raise InputError(
                f"'{volumeNode.GetName()}' is a 2D image (dimensions {geometry.shape}); this bundle segments "
                "3D volumes. Choose a 3D volume."
            )
        if not np.all(np.isfinite(image)):
            raise InputError(f"'{volumeNode.GetName()}' contains NaN or infinite voxel values.")
        # here, before a worker starts, so that a CT given to an MR bundle is refused at once
        what, prep = f"'{volumeNode.GetName()}'", bundle.preprocessing
        check_scan_modality(image, prep.scan_modality, what=what)
        from .scanheader import volumeHeaderStatement  # reads NIfTI and DICOM: needs nibabel and SimpleITK

        warnings = []
        stated = volumeHeaderStatement(volumeNode, self.dicomFileForInstance)
        # as `lsseg segment` checks a scan's metadata: another modality refused, another MR weighting warned about
        if stated is not None:
            check_stated_modality(stated, prep.scan_modality, what=what)
            warning = weighting_warning(stated, prep.contrast)
            warnings += [f"{what}: {warning}"] if warning else []
        return image, geometry, warnings

    def _checkOutputNode(self, outputNode):
        if outputNode is None:
            return
        seg.checkWritableSegmentation(outputNode)
        if outputNode.GetScene() is not self.scene:
            raise InputError(f"The output segmentation '{outputNode.GetName()}' is not in this scene.")
        if outputNode.GetAttribute(seg.ATTRIBUTE_ROLE) == seg.ROLE_ATLAS_LABELS:
            raise InputError(
                f"'{outputNode.GetName()}' is an atlas segmentation, which is never overwritten: choose a new "
                "output segmentation."
            )
        # the result must be expressible in the output's coordinates
        return

    # ------------------------------------------------------------------ task flow
    def prepareSegmentTask(self, volumeNode, taskName: str, outputSegmentationNode=None) -> PreparedRun:
        bundle = self.requireBundle()
        if bundle.kind.has_atlas:
            raise InputError(
                "The loaded bundle is an atlas-conditioned (LCS) bundle: it has no tasks. Use the atlas flow "
                "(loadAtlas / segmentAtlasLabels) or load a label-sharing bundle."
            )
        if not taskName:
            raise InputError(f"No task chosen: pick one of {', '.join(bundle.task_names())}.")
        bundle.task_labels(taskName)  # InputError naming the known tasks
        image, geometry, warnings = self._checkInputVolume(volumeNode, bundle)
        self._checkOutputNode(outputSegmentationNode)
        if outputSegmentationNode is not None:
            geo.localToLocal(volumeNode, outputSegmentationNode)
        return PreparedRun(
            kind=TASK_KIND,
            bundle=bundle,
            device=self._device,
            image=image,
            volumeGeometry=geometry,
            volumeNode=volumeNode,
            outputNode=outputSegmentationNode,
            outputName=f"{volumeNode.GetName()} {taskName}",
            taskName=taskName,
            description=f"Segmenting task '{taskName}' on '{volumeNode.GetName()}'",
            align=self.align,
            warnings=warnings,
        )

    def segmentTask(self, volumeNode, taskName: str, outputSegmentationNode=None, progress=None, cancel=None):
        """Segment ``taskName`` on ``volumeNode``; returns the output segmentation node."""
        run = self.prepareSegmentTask(volumeNode, taskName, outputSegmentationNode)
        return self._runSynchronously(run, progress, cancel)

    # ------------------------------------------------------------------ atlas flow
    def _requireAtlasBundle(self):
        bundle = self.requireBundle()
        if not bundle.kind.has_atlas:
            raise InputError(
                f"The loaded bundle is a {bundle.kind} bundle without an atlas: use segmentTask with one of its "
                "tasks, or load an atlas-conditioned (LCS) bundle for atlas labels."
            )
        return bundle

    def atlasGeometry(self) -> tuple[tuple[int, int, int], np.ndarray]:
        """(shape, voxel->RAS affine) of the loaded LCS bundle's atlas grid."""
        bundle = self._requireAtlasBundle()
        if self._atlasGeometry is None:
            image, affine = bundle.atlas_image()
            self._atlasGeometry = (tuple(int(s) for s in image.shape), np.asarray(affine, dtype=np.float64))
        return self._atlasGeometry

    def findAtlasNodes(self):
        """(atlas volume node, atlas segmentation node) of the loaded bundle already in the scene, else None
        for each missing one."""
        bundle = self._requireAtlasBundle()
        found = {seg.ROLE_ATLAS_IMAGE: None, seg.ROLE_ATLAS_LABELS: None}
        for className in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"):
            nodes = self.scene.GetNodesByClass(className)
            for index in range(nodes.GetNumberOfItems()):
                node = nodes.GetItemAsObject(index)
                role = node.GetAttribute(seg.ATTRIBUTE_ROLE)
                if (
                    role in found
                    and found[role] is None
                    and node.GetAttribute(seg.ATTRIBUTE_BUNDLE_ID) == bundle.bundle_id
                ):
                    found[role] = node
        return found[seg.ROLE_ATLAS_IMAGE], found[seg.ROLE_ATLAS_LABELS]

    def loadAtlas(self):
        """Put the bundle's atlas image and labels into the scene; returns (volume node, segmentation node).

        Nodes of this bundle already in the scene are reused (so segments drawn there are kept).
        """
        bundle = self._requireAtlasBundle()
        volumeNode, segmentationNode = self.findAtlasNodes()
        if volumeNode is not None and segmentationNode is not None:
            return volumeNode, segmentationNode
        # read everything before touching the scene
        image, affine = bundle.atlas_image()
        labelmap, labelAffine, labels = bundle.atlas_labels()
        self._atlasGeometry = (tuple(int(s) for s in image.shape), np.asarray(affine, dtype=np.float64))
        name = bundle.manifest.name.strip() or "LCS"
        specs = seg.specsFromLabelmap(labelmap, labels)
        with SceneTransaction(self.scene):
            if volumeNode is None:
                volumeNode = geo.createScalarVolumeNode(self.scene, f"{name} atlas", image, affine)
                volumeNode.SetAttribute(seg.ATTRIBUTE_BUNDLE_ID, bundle.bundle_id)
                volumeNode.SetAttribute(seg.ATTRIBUTE_ROLE, seg.ROLE_ATLAS_IMAGE)
            if segmentationNode is None:
                segmentationNode = seg.createSegmentationNode(self.scene, f"{name} atlas labels", volumeNode)
                segmentationNode.SetAttribute(seg.ATTRIBUTE_BUNDLE_ID, bundle.bundle_id)
                segmentationNode.SetAttribute(seg.ATTRIBUTE_ROLE, seg.ROLE_ATLAS_LABELS)
                seg.writeSegments(segmentationNode, specs, np.asarray(labelAffine, dtype=np.float64))
        return volumeNode, segmentationNode

    def checkAtlasSegmentation(self, atlasSegmentationNode) -> None:
        """InputError unless ``atlasSegmentationNode`` is the loaded bundle's atlas segmentation."""
        atlassegments.checkAtlasSegmentation(atlasSegmentationNode, self._requireAtlasBundle().bundle_id)

    def atlasSegmentMasks(self, atlasSegmentationNode, segmentIds=None):
        """(masks bool[K, *atlas_shape], list of segment IDs, names, colours, terminologies) read from the
        atlas segmentation on the bundle's atlas grid. Raises InputError for unknown or empty segments."""
        self.checkAtlasSegmentation(atlasSegmentationNode)
        shape, affine = self.atlasGeometry()
        return atlassegments.atlasSegmentMasks(atlasSegmentationNode, segmentIds, shape, affine)

    def prepareSegmentAtlasLabels(
        self, volumeNode, atlasSegmentationNode, segmentIds=None, outputSegmentationNode=None
    ) -> PreparedRun:
        bundle = self._requireAtlasBundle()
        image, geometry, warnings = self._checkInputVolume(volumeNode, bundle, role="target volume")
        self._checkOutputNode(outputSegmentationNode)
        if outputSegmentationNode is not None:
            geo.localToLocal(volumeNode, outputSegmentationNode)
        masks, chosen, names, colors, terminologies = self.atlasSegmentMasks(
            atlasSegmentationNode, segmentIds
        )
        labels = [
            LabelInfo(value=index + 1, name=name, color=color)
            for index, (name, color) in enumerate(zip(names, colors))
        ]
        _, masksAffine = self.atlasGeometry()
        return PreparedRun(
            kind=ATLAS_KIND,
            bundle=bundle,
            device=self._device,
            image=image,
            volumeGeometry=geometry,
            volumeNode=volumeNode,
            outputNode=outputSegmentationNode,
            outputName=f"{volumeNode.GetName()} atlas labels",
            masks=masks,
            masksAffine=masksAffine,
            labels=labels,
            terminologies={index + 1: text for index, text in enumerate(terminologies) if text},
            description=f"Segmenting {len(labels)} atlas label(s) on '{volumeNode.GetName()}'",
            align=self.align,
            warnings=warnings,
            method=self.atlasMethod,
            options=dict(self.atlasMethodOptions),
        )

    def segmentAtlasLabels(
        self,
        volumeNode,
        atlasSegmentationNode,
        segmentIds=None,
        outputSegmentationNode=None,
        progress=None,
        cancel=None,
    ):
        """Segment the chosen atlas segments (all when ``segmentIds`` is None) on ``volumeNode``; returns the
        output segmentation node."""
        run = self.prepareSegmentAtlasLabels(
            volumeNode, atlasSegmentationNode, segmentIds, outputSegmentationNode
        )
        return self._runSynchronously(run, progress, cancel)

    # ------------------------------------------------------------------ running and applying
    def _runSynchronously(self, run: PreparedRun, progress=None, cancel=None):
        report = progressCallable(progress)
        isCancelled = cancelCallable(cancel)
        note = self.deviceNote(run.device)
        report(0.0, note or run.description)
        result = run.compute(scaledProgress(report, 0.0, 0.95), isCancelled)
        raiseIfCancelled(isCancelled)
        report(0.95, "Writing segments")
        outputNode = self.applyRun(run, result)
        report(1.0, "Done")
        return outputNode

    def createWorkerJob(self, run: PreparedRun, python: str | None = None, tempRoot=None) -> WorkerJob:
        """Write ``run``'s inputs and request for a worker process (``python`` runs it; default: this
        interpreter). Start it with ``qt.QProcess`` (the widget) or :class:`SubprocessWorker`, then call
        ``applyRun(run, job.result())`` on the main thread and ``job.cleanup()``."""
        return WorkerJob.create(
            run.kind,
            run.bundle.path,
            run.image,
            run.volumeGeometry.engineAffine,
            task=run.taskName,
            masks=run.masks,
            masksAffine=run.masksAffine,
            labels=run.labels,
            device=run.device,
            method=run.methodName,
            options=run.methodOptions,
            bundleId=run.bundle.bundle_id,
            python=python,
            tempRoot=tempRoot,
        )

    def startWorker(self, run: PreparedRun, python: str | None = None) -> SubprocessWorker:
        """Run ``run`` in a worker process without Qt (scripts): ``poll()``, ``cancel()``, and
        ``applyRun(run, worker.result())`` once it finished."""
        return SubprocessWorker(self.createWorkerJob(run, python)).start()

    def applyRun(self, run: PreparedRun, result):
        """Write a finished run's result into the scene (main thread only); returns the output node.

        A new output node is created only here, after the engine succeeded. An existing output keeps every
        segment whose name this run does not produce. On any exception the scene is left exactly as it was.
        """
        alignment = getattr(result, "alignment", None)
        # the log shows the alignment's quality, a refused or uncertain one as a warning
        if alignment is not None:
            log = logging.info if _alignmentTrusted(alignment) else logging.warning
            log(f"LabelSharingSeg: {alignment.summary()}")
        for warning in run.warnings:
            logging.warning(f"LabelSharingSeg: {warning}")
        coverage = getattr(result, "coverage", None)
        if coverage:
            logging.info(f"LabelSharingSeg: {coverage}")
        labels = list(result.labels) or (run.labels if run.kind == ATLAS_KIND else self._taskLabels(run))
        specs = seg.specsFromLabelmap(np.asarray(result.labelmap), labels, run.terminologies)
        outputNode = run.outputNode
        if outputNode is not None and outputNode.GetScene() is not self.scene:
            outputNode = None  # deleted while the run was going on: write to a new node instead
        created = outputNode is None
        if created:
            ijkToOutput = run.volumeGeometry.ijkToLocal
        else:
            ijkToOutput = geo.localToLocal(run.volumeNode, outputNode) @ run.volumeGeometry.ijkToLocal
        with SceneTransaction(self.scene) as change:
            if created:
                inScene = run.volumeNode.GetScene() is self.scene
                parent = run.volumeNode.GetParentTransformNode() if inScene else None
                reference = run.volumeNode if inScene else None
                outputNode = seg.createSegmentationNode(self.scene, run.outputName, reference, parent)
                outputNode.SetAttribute(seg.ATTRIBUTE_ROLE, seg.ROLE_OUTPUT)
                outputNode.SetAttribute(seg.ATTRIBUTE_BUNDLE_ID, run.bundle.bundle_id)
            else:
                change.protectSegmentation(outputNode)
            seg.writeSegments(outputNode, specs, ijkToOutput)
        return outputNode

    @staticmethod
    def finishedMessage(outputName: str, seconds: float, result, warnings: Sequence[str] = ()) -> str:
        """The status line after ``applyRun``: where the output went; when the automatic alignment was refused or
        is uncertain, that the result needs checking (the details are in the log); which part of the scan was
        segmented when not all of it (a task's trained region); and the run's ``warnings`` about its input
        (``PreparedRun.warnings``)."""
        parts = [f"Done in {seconds:.1f} s: '{outputName}'."]
        alignment = getattr(result, "alignment", None)
        if alignment is not None and not alignment.accepted:
            parts.append(
                "Automatic alignment refused (the scan's world coordinates were used): check the result over "
                "the scan; details in the Python console."
            )
        elif alignment is not None and not _alignmentTrusted(alignment):
            parts.append(
                "Automatic alignment uncertain (it may be wrong): check the result over the scan; details in the "
                "Python console."
            )
        coverage = getattr(result, "coverage", None)
        if coverage:  # labels missing over most of a head would otherwise look like a failure
            parts.append(f"Note: {coverage[0].upper()}{coverage[1:]}.")
        return " ".join(parts + [f"Warning: {warning}." for warning in warnings])

    @staticmethod
    def _taskLabels(run: PreparedRun):
        return run.bundle.task_labels(run.taskName)


__all__ = ["SegmentationSceneLogic", "PreparedRun", "DEVICE_CHOICES", "CancelledError"]

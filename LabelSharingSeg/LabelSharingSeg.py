"""LabelSharingSeg: label-sharing multi-task segmentation and atlas-conditioned (LCS) segmentation of
labels drawn on an atlas, in 3D Slicer.

Module (metadata, help), Widget (Qt wiring only), Logic (thin console facade over
``LabelSharingSegLib.scene.SegmentationSceneLogic``, where every decision lives) and the self-test.
"""

import logging
import os

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LabelSharingSegLib.engine.errors import CancelledError, LabelSharingSegError
from LabelSharingSegLib.scene import packages
from LabelSharingSegLib.scene.logic import DEVICE_CHOICES, SegmentationSceneLogic

_CONSOLE_API = """
<p><b>Python console</b> (no widget needed):</p>
<pre>
logic = slicer.util.getModuleLogic("LabelSharingSeg")   # or LabelSharingSegLogic()
logic.loadBundle("/path/to/bundle.zip")
logic.taskNames()
seg = logic.segmentTask(volumeNode, "brain")            # -> segmentation node
atlasVolume, atlasSeg = logic.loadAtlas()              # LCS bundles
seg = logic.segmentAtlasLabels(volumeNode, atlasSeg, segmentIds=None)
logic.setDevice("auto"); logic.setAlign(None)          # align: None (when possible) / True / False
</pre>
<p>Both segment calls accept <code>progress=lambda fraction, message: ...</code> and
<code>cancel=</code> a callable returning True or a <code>threading.Event</code>.</p>
"""


#
# Module
#


class LabelSharingSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LabelSharingSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["LabelSharingSeg team"]
        self.parent.helpText = (
            """
<p>Segment volumes with a <b>label-sharing</b> network (one network, many tasks: pick the task) or an
<b>atlas-conditioned (LCS)</b> network (segment any label outlined on its atlas, including labels you draw
today, without retraining).</p>
<ol>
<li><b>Model</b>: choose a bundle folder or .zip and click <i>Load</i>; its kind, tasks, labels and training
summary appear (shipped demo models are listed beside the path). Choose the device (auto / CUDA / CPU / MPS).
Keep <i>Align scans to the bundle's reference automatically</i> on for scans that are not in the atlas
space: they are registered (affine) first and the result is written on the scan's own grid.</li>
<li><b>Segment a task</b> (label-sharing bundle): choose task, input volume and output segmentation
(default: a new one named after volume and task), then <i>Apply</i>.</li>
<li><b>Atlas labels</b> (LCS bundle): <i>Load atlas</i>, optionally <i>Edit atlas segments</i> to draw new
segments in the Segment Editor, tick the segments to segment, choose the target volume and <i>Apply</i>.</li>
</ol>
<p>Runs happen in the background with a progress bar and <i>Cancel</i>; a cancelled or failed run leaves
the scene unchanged. Choosing an existing output replaces only the segments of the same names.</p>
"""
            + _CONSOLE_API
            + '<p>See <a href="https://github.com/labelsharingseg/LabelSharingSeg">the project page</a>.</p>'
        )
        self.parent.acknowledgementText = """
<p>Developed by the LabelSharingSeg team. It implements:</p>
<ul>
<li>Anand, D., Das, B., Dangeti, V., Jerald, A., Mullick, R., Patil, U., Sharma, P., Sudhakar, P. (2024).
<i>Label Sharing Incremental Learning Framework for Independent Multi-Label Segmentation Tasks.</i>
arXiv:2411.11105.</li>
<li>Ma, T., Lee, B., Sabuncu, M. R. (2022). <i>Label conditioned segmentation</i> (LCS).
Medical Imaging with Deep Learning (MIDL).</li>
</ul>
<p>Please cite these papers when you use the respective networks.</p>
"""


#
# Parameter node
#


@parameterNodeWrapper
class LabelSharingSegParameterNode:
    bundlePath: str = ""
    device: str = "auto"
    alignToReference: bool = True
    taskName: str = ""
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    atlasSegmentation: slicer.vtkMRMLSegmentationNode
    targetVolume: slicer.vtkMRMLScalarVolumeNode
    atlasOutputSegmentation: slicer.vtkMRMLSegmentationNode


#
# Widget
#


class LabelSharingSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_INTERVAL_MS = 100

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._run = None
        self._outputSelector = None
        self._observedSegmentation = None
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._pollJob)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LabelSharingSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LabelSharingSegLogic()

        self.ui.deviceComboBox.clear()
        for name in DEVICE_CHOICES:
            self.ui.deviceComboBox.addItem(name.upper() if name != "auto" else "auto", name)
        self.ui.bundlePathLineEdit.filters = ctkPathFilters()
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setVisible(False)
        self.ui.bundleInfoTextEdit.setPlainText("No bundle loaded.")

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.loadBundleButton.connect("clicked(bool)", self.onLoadBundle)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.alignCheckBox.connect("toggled(bool)", self.onAlignToggled)
        self.ui.taskComboBox.connect("currentIndexChanged(int)", self.onTaskChanged)
        self.ui.applyTaskButton.connect("clicked(bool)", self.onApplyTask)
        self.ui.loadAtlasButton.connect("clicked(bool)", self.onLoadAtlas)
        self.ui.editAtlasButton.connect("clicked(bool)", self.onEditAtlas)
        self.ui.atlasSegmentationSelector.connect(
            "currentNodeChanged(vtkMRMLNode*)", self.onAtlasSegmentationChanged
        )
        self.ui.selectAllSegmentsButton.connect("clicked(bool)", lambda: self._checkAllSegments(True))
        self.ui.selectNoSegmentsButton.connect("clicked(bool)", lambda: self._checkAllSegments(False))
        self.ui.applyAtlasButton.connect("clicked(bool)", self.onApplyAtlas)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.installPackagesButton.connect("clicked(bool)", self.onInstallPackages)
        for selector in (
            self.ui.inputVolumeSelector,
            self.ui.targetVolumeSelector,
            self.ui.outputSegmentationSelector,
            self.ui.atlasOutputSegmentationSelector,
        ):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateButtons)

        self.initializeParameterNode()
        demo = self._demoBundlePaths()
        self.ui.shippedBundleComboBox.addItem("Shipped models..." if demo else "No shipped models", "")
        for path in demo:
            self.ui.shippedBundleComboBox.addItem(os.path.basename(path), path)
        self.ui.shippedBundleComboBox.setEnabled(bool(demo))
        self.ui.shippedBundleComboBox.connect("currentIndexChanged(int)", self.onShippedBundleChosen)
        if not self.ui.bundlePathLineEdit.currentPath and demo:
            self.ui.bundlePathLineEdit.currentPath = demo[0]
        self._updatePackagesStatus()
        self._updateBundleSections()

    def cleanup(self):
        if self._job is not None:
            self._job.requestCancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self._updatePackagesStatus()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        if self._job is not None:
            self._job.requestCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ---- parameter node
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            index = self.ui.deviceComboBox.findData(self._parameterNode.device or "auto")
            self.ui.deviceComboBox.setCurrentIndex(max(index, 0))
        self._updateButtons()

    # ---- helpers
    def _demoBundlePaths(self):
        folder = self.resourcePath("Bundles")
        if not os.path.isdir(folder):
            return []
        return sorted(
            os.path.join(folder, name)
            for name in os.listdir(folder)
            if name.endswith(".zip") or os.path.isfile(os.path.join(folder, name, "bundle.json"))
        )

    def _showError(self, what, error):
        logging.error(f"LabelSharingSeg: {what}: {error}")
        slicer.util.errorDisplay(f"{what}:\n\n{error}", windowTitle="LabelSharingSeg")

    def _updatePackagesStatus(self):
        missing = packages.missingPackages()
        torchMissing = not packages.torchAvailable()
        lines = []
        if torchMissing:
            lines.append(packages.TORCH_HINT)
        if missing:
            lines.append("Missing Python packages: " + ", ".join(r.importName for r in missing))
        self.ui.packagesLabel.setText("\n".join(lines))
        self.ui.packagesLabel.setVisible(bool(lines))
        self.ui.installPackagesButton.setVisible(bool(missing))
        return not missing and not torchMissing

    def _updateBundleSections(self):
        kind = self.logic.bundleKind()
        self.ui.taskCollapsibleButton.setEnabled(kind is not None and kind != "lcs")
        self.ui.atlasCollapsibleButton.setEnabled(kind == "lcs")
        self.ui.taskCollapsibleButton.collapsed = kind == "lcs"
        self.ui.atlasCollapsibleButton.collapsed = kind != "lcs"
        self._updateButtons()

    def _updateButtons(self, *unused):
        idle = self._job is None
        hasBundle = self.logic is not None and self.logic.bundleKind() is not None
        self.ui.loadBundleButton.enabled = idle
        self.ui.applyTaskButton.enabled = (
            idle
            and hasBundle
            and self.ui.taskComboBox.count > 0
            and self.ui.inputVolumeSelector.currentNode() is not None
        )
        self.ui.loadAtlasButton.enabled = idle and hasBundle
        self.ui.editAtlasButton.enabled = self.ui.atlasSegmentationSelector.currentNode() is not None
        self.ui.applyAtlasButton.enabled = (
            idle
            and hasBundle
            and self.ui.atlasSegmentationSelector.currentNode() is not None
            and self.ui.targetVolumeSelector.currentNode() is not None
            and bool(self._checkedSegmentIds())
        )

    # ---- model section
    def onInstallPackages(self):
        missing = packages.missingPackages()
        if not missing:
            self._updatePackagesStatus()
            return
        if not slicer.util.confirmOkCancelDisplay(
            packages.missingPackagesMessage(missing), windowTitle="LabelSharingSeg: install Python packages"
        ):
            return
        with slicer.util.WaitCursor():
            try:
                slicer.util.pip_install(packages.pipRequirements(missing))
            except Exception as error:
                self._showError("Installing Python packages failed", error)
        self._updatePackagesStatus()

    def onShippedBundleChosen(self, index):
        path = self.ui.shippedBundleComboBox.itemData(index)
        if path:
            self.ui.bundlePathLineEdit.currentPath = path
            self.onLoadBundle()

    def onLoadBundle(self):
        if not self._updatePackagesStatus():
            self.onInstallPackages()
            if not self._updatePackagesStatus():
                return
        path = self.ui.bundlePathLineEdit.currentPath
        try:
            with slicer.util.WaitCursor():
                self.logic.loadBundle(path)
        except (LabelSharingSegError, OSError) as error:
            self._showError("Cannot load the bundle", error)
            return
        self.ui.bundlePathLineEdit.addCurrentPathToHistory()
        if self._parameterNode:
            self._parameterNode.bundlePath = path
        self.ui.bundleInfoTextEdit.setPlainText(self.logic.bundleSummary())
        self.ui.taskComboBox.clear()
        for name in self.logic.taskNames():
            self.ui.taskComboBox.addItem(name)
        if self._parameterNode and self._parameterNode.taskName in self.logic.taskNames():
            self.ui.taskComboBox.setCurrentText(self._parameterNode.taskName)
        self.onDeviceChanged()
        self._updateBundleSections()

    def onDeviceChanged(self, *unused):
        device = self.ui.deviceComboBox.currentData or "auto"
        self.logic.setDevice(device)
        if self._parameterNode:
            self._parameterNode.device = device
        try:
            note = self.logic.deviceNote()
        except Exception as error:  # torch missing or broken: say so, do not crash the GUI
            note = f"Cannot check the device: {error}"
        self.ui.deviceNoteLabel.setText(note or "")
        self.ui.deviceNoteLabel.setVisible(bool(note))

    def onAlignToggled(self, checked):
        # checked: align whenever the bundle carries a reference; unchecked: never
        self.logic.setAlign(None if checked else False)

    def onTaskChanged(self, *unused):
        if self._parameterNode and self.ui.taskComboBox.currentText:
            self._parameterNode.taskName = self.ui.taskComboBox.currentText
        self._updateButtons()

    # ---- task section
    def onApplyTask(self):
        try:
            run = self.logic.prepareSegmentTask(
                self.ui.inputVolumeSelector.currentNode(),
                self.ui.taskComboBox.currentText,
                self.ui.outputSegmentationSelector.currentNode(),
            )
        except LabelSharingSegError as error:
            self._showError("Cannot segment", error)
            return
        self._startRun(run, self.ui.outputSegmentationSelector)

    # ---- atlas section
    def onLoadAtlas(self):
        try:
            with slicer.util.WaitCursor():
                volumeNode, segmentationNode = self.logic.loadAtlas()
        except LabelSharingSegError as error:
            self._showError("Cannot load the atlas", error)
            return
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        self.ui.atlasSegmentationSelector.setCurrentNode(segmentationNode)

    def onEditAtlas(self):
        segmentationNode = self.ui.atlasSegmentationSelector.currentNode()
        if segmentationNode is None:
            return
        volumeNode, _ = self.logic.findAtlasNodes()
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)
        if volumeNode is not None:
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(volumeNode)
            else:
                editor.setMasterVolumeNode(volumeNode)

    def onAtlasSegmentationChanged(self, node):
        if self._observedSegmentation is not None:
            self.removeObserver(
                self._observedSegmentation, vtk.vtkCommand.ModifiedEvent, self._refreshSegmentList
            )
        self._observedSegmentation = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self._refreshSegmentList)
        self._refreshSegmentList()

    def _refreshSegmentList(self, *unused):
        listWidget = self.ui.atlasSegmentsListWidget
        checked = set(self._checkedSegmentIds())
        known = {listWidget.item(i).data(qt.Qt.UserRole) for i in range(listWidget.count)}
        listWidget.clear()
        node = self.ui.atlasSegmentationSelector.currentNode()
        if node is not None:
            segmentation = node.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                segmentId = segmentation.GetNthSegmentID(index)
                segment = segmentation.GetSegment(segmentId)
                item = qt.QListWidgetItem(segment.GetName())
                item.setData(qt.Qt.UserRole, segmentId)
                color = segment.GetColor()
                item.setData(qt.Qt.DecorationRole, qt.QColor.fromRgbF(color[0], color[1], color[2]))
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                # keep the user's ticks; new segments (just drawn) start ticked
                item.setCheckState(
                    qt.Qt.Checked if segmentId in checked or segmentId not in known else qt.Qt.Unchecked
                )
                listWidget.addItem(item)
        self._updateButtons()

    def _checkedSegmentIds(self):
        listWidget = self.ui.atlasSegmentsListWidget
        return [
            listWidget.item(i).data(qt.Qt.UserRole)
            for i in range(listWidget.count)
            if listWidget.item(i).checkState() == qt.Qt.Checked
        ]

    def _checkAllSegments(self, checked):
        listWidget = self.ui.atlasSegmentsListWidget
        for i in range(listWidget.count):
            listWidget.item(i).setCheckState(qt.Qt.Checked if checked else qt.Qt.Unchecked)
        self._updateButtons()

    def onApplyAtlas(self):
        try:
            run = self.logic.prepareSegmentAtlasLabels(
                self.ui.targetVolumeSelector.currentNode(),
                self.ui.atlasSegmentationSelector.currentNode(),
                self._checkedSegmentIds(),
                self.ui.atlasOutputSegmentationSelector.currentNode(),
            )
        except LabelSharingSegError as error:
            self._showError("Cannot segment the atlas labels", error)
            return
        self._startRun(run, self.ui.atlasOutputSegmentationSelector)

    # ---- background run
    def _startRun(self, run, outputSelector):
        self._run = run
        self._outputSelector = outputSelector
        self._job = self.logic.startJob(run)
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self.ui.cancelButton.setVisible(True)
        self.ui.cancelButton.enabled = True
        self.ui.statusLabel.setText(run.description)
        self._updateButtons()
        self._timer.start()

    def onCancel(self):
        if self._job is not None:
            self._job.requestCancel()
            self.ui.cancelButton.enabled = False

    def _pollJob(self):
        if self._job is None:
            self._timer.stop()
            return
        status = self._job.poll()
        self.ui.progressBar.setValue(int(round(100 * status.fraction)))
        self.ui.statusLabel.setText(status.message)
        if not status.finished:
            return
        self._timer.stop()
        job, run = self._job, self._run
        self._job, self._run = None, None
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setVisible(False)
        try:
            result = job.result()
            if job.cancelRequested:
                raise CancelledError("Cancelled by the user; the scene was not changed.")
            outputNode = self.logic.applyRun(run, result)
        except CancelledError:
            self.ui.statusLabel.setText("Cancelled: the scene was not changed.")
        except Exception as error:
            self.ui.statusLabel.setText("Failed: the scene was not changed.")
            self._showError("Segmentation failed", error)
        else:
            self._outputSelector.setCurrentNode(outputNode)
            seconds = (job.endTime or 0) - (job.startTime or 0)
            self.ui.statusLabel.setText(f"Done in {seconds:.1f} s: '{outputNode.GetName()}'.")
        self._updateButtons()


def ctkPathFilters():
    import ctk

    return ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable


#
# Logic (console facade)
#


class LabelSharingSegLogic(ScriptedLoadableModuleLogic):
    """Console API. Every decision is in ``LabelSharingSegLib.scene.SegmentationSceneLogic``; this class only
    binds it to ``slicer.mrmlScene`` and keeps the documented camelCase names.

    >>> logic = LabelSharingSegLogic()
    >>> logic.loadBundle(path); logic.taskNames()
    >>> segmentationNode = logic.segmentTask(volumeNode, taskName)
    >>> atlasVolumeNode, atlasSegmentationNode = logic.loadAtlas()
    >>> segmentationNode = logic.segmentAtlasLabels(volumeNode, atlasSegmentationNode)
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.sceneLogic = SegmentationSceneLogic(
            slicer.mrmlScene, segmentationsLogic=slicer.modules.segmentations.logic()
        )

    def getParameterNode(self):
        return LabelSharingSegParameterNode(super().getParameterNode())

    # bundle and device
    def loadBundle(self, path):
        return self.sceneLogic.loadBundle(path)

    def bundle(self):
        return self.sceneLogic.bundle

    def bundleKind(self):
        return self.sceneLogic.bundleKind

    def bundleSummary(self):
        return self.sceneLogic.bundleSummary()

    def taskNames(self):
        return self.sceneLogic.taskNames()

    def taskLabels(self, taskName):
        return self.sceneLogic.taskLabels(taskName)

    def setDevice(self, device):
        self.sceneLogic.device = device

    def device(self):
        return self.sceneLogic.device

    def setAlign(self, align):
        """None: align scans to the bundle's reference when it has one (default); True: always; False: never."""
        self.sceneLogic.align = align

    def deviceNote(self):
        return self.sceneLogic.deviceNote()

    def missingPythonPackages(self):
        """Import names of required packages that are not installed (nothing is installed here)."""
        return [req.importName for req in packages.missingPackages()]

    def installMissingPythonPackages(self):
        """Explicit console request: pip-install the missing packages (torch comes from the PyTorch extension)."""
        missing = packages.missingPackages()
        if missing:
            slicer.util.pip_install(packages.pipRequirements(missing))
        return [req.importName for req in missing]

    # task flow
    def prepareSegmentTask(self, volumeNode, taskName, outputSegmentationNode=None):
        return self.sceneLogic.prepareSegmentTask(volumeNode, taskName, outputSegmentationNode)

    def segmentTask(self, volumeNode, taskName, outputSegmentationNode=None, progress=None, cancel=None):
        return self.sceneLogic.segmentTask(
            volumeNode, taskName, outputSegmentationNode, progress=progress, cancel=cancel
        )

    # atlas flow
    def loadAtlas(self):
        return self.sceneLogic.loadAtlas()

    def findAtlasNodes(self):
        return self.sceneLogic.findAtlasNodes()

    def prepareSegmentAtlasLabels(
        self, volumeNode, atlasSegmentationNode, segmentIds=None, outputSegmentationNode=None
    ):
        return self.sceneLogic.prepareSegmentAtlasLabels(
            volumeNode, atlasSegmentationNode, segmentIds, outputSegmentationNode
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
        return self.sceneLogic.segmentAtlasLabels(
            volumeNode,
            atlasSegmentationNode,
            segmentIds,
            outputSegmentationNode,
            progress=progress,
            cancel=cancel,
        )

    # background runs (used by the widget)
    def startJob(self, run):
        return self.sceneLogic.startJob(run)

    def applyRun(self, run, result):
        return self.sceneLogic.applyRun(run, result)


#
# Self-test
#


class LabelSharingSegTest(ScriptedLoadableModuleTest):
    """End-to-end flows inside Slicer on tiny random-weight bundles built through the engine."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TaskFlow()
        self.setUp()
        self.test_AtlasFlow()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def _bundleFolder(self, name):
        import shutil

        folder = os.path.join(slicer.app.temporaryPath, "LabelSharingSegTest", name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        return folder

    def _volume(self, name="target"):
        import numpy as np

        from LabelSharingSegLib.scene import demo, geometry

        image = np.random.default_rng(0).normal(50, 20, size=(22, 19, 15)).astype(np.float32)
        return geometry.createScalarVolumeNode(slicer.mrmlScene, name, image, demo.obliqueAffine())

    def test_TaskFlow(self):
        import numpy as np

        from LabelSharingSegLib.scene import demo

        self.delayDisplay("Task flow on an oblique, anisotropic volume")
        path = demo.writeTinyLabelSharingBundle(self._bundleFolder("ls"))
        logic = LabelSharingSegLogic()
        logic.setDevice("cpu")
        logic.loadBundle(path)
        self.assertEqual(logic.taskNames(), list(demo.DEMO_TASKS))
        volume = self._volume()
        before = slicer.util.arrayFromVolume(volume).copy()
        fractions = []
        output = logic.segmentTask(volume, "Brain", progress=lambda f, m: fractions.append(f))
        names = [
            output.GetSegmentation().GetNthSegment(i).GetName()
            for i in range(output.GetSegmentation().GetNumberOfSegments())
        ]
        self.assertEqual(names, [label.name for label in logic.taskLabels("Brain")])
        self.assertEqual(fractions[-1], 1.0)
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(volume), before))
        # the output lies on the input grid: export on the volume's geometry and compare extents
        labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(output, labelmapNode)
        exported = slicer.util.arrayFromVolume(labelmapNode)
        self.assertEqual(exported.ndim, 3)
        self.delayDisplay("Task flow passed")

    def test_AtlasFlow(self):
        import numpy as np

        from LabelSharingSegLib.scene import demo

        self.delayDisplay("Atlas flow with a newly drawn segment")
        path = demo.writeTinyAtlasBundle(self._bundleFolder("lcs"))
        logic = LabelSharingSegLogic()
        logic.setDevice("cpu")
        logic.loadBundle(path)
        atlasVolume, atlasSegmentation = logic.loadAtlas()
        mask = np.zeros(slicer.util.arrayFromVolume(atlasVolume).shape, np.uint8)  # [k, j, i]
        mask[5:12, 8:16, 6:14] = 1
        segmentId = atlasSegmentation.GetSegmentation().AddEmptySegment("", "Drawn today", (0.2, 0.7, 0.9))
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, atlasSegmentation, segmentId, atlasVolume)
        target = self._volume()
        output = logic.segmentAtlasLabels(target, atlasSegmentation, [segmentId])
        segment = output.GetSegmentation().GetNthSegment(0)
        self.assertEqual(segment.GetName(), "Drawn today")
        self.assertTrue(np.allclose(segment.GetColor(), (0.2, 0.7, 0.9)))
        self.delayDisplay("Atlas flow passed")

    def test_CancelLeavesSceneUnchanged(self):
        from LabelSharingSegLib.scene import demo

        self.delayDisplay("Cancel leaves the scene unchanged")
        path = demo.writeTinyLabelSharingBundle(self._bundleFolder("ls-cancel"))
        logic = LabelSharingSegLogic()
        logic.setDevice("cpu")
        logic.loadBundle(path)
        volume = self._volume()
        count = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(CancelledError):
            logic.segmentTask(volume, "Tumour", cancel=lambda: True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Cancel test passed")

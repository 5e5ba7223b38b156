"""LabelSharingSeg: label-sharing multi-task segmentation and atlas-conditioned (LCS) segmentation of
labels drawn on an atlas, in 3D Slicer.

Module (metadata, help, version check), Widget (Qt wiring only: every decision is in ``LabelSharingSegLib``),
Logic (``SegmentationSceneLogic`` bound to ``slicer.mrmlScene``: the console API) and the self-test.
Runs started from the GUI compute in a worker process (``python -m LabelSharingSegLib.worker``) driven by
``qt.QProcess``: Slicer keeps the Python GIL while idle, so a compute thread inside Slicer would crawl.
One file by Slicer's convention (the self-test must sit beside the module for ``slicer_add_python_unittest``);
the Qt-free logic it wires lives in ``LabelSharingSegLib`` and is tested there.
"""

import importlib
import logging
import os
import shutil
import sys
import time
import traceback

import qt
import slicer
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
from LabelSharingSegLib.scene.segmentlist import SegmentChecklist

HOMEPAGE = "https://github.com/labelsharingseg/SlicerLabelSharingSeg"
CONTRIBUTORS = ["LabelSharingSeg developers (independent)"]

_CONSOLE_API = """
<p><b>Python console</b> (no widget needed):</p>
<pre>
logic = slicer.util.getModuleLogic("LabelSharingSeg")   # or LabelSharingSegLogic()
logic.loadBundle("/path/to/bundle.zip")
logic.taskNames()
seg = logic.segmentTask(volumeNode, "brain")            # -> segmentation node
atlasVolume, atlasSeg = logic.loadAtlas()              # LCS bundles
seg = logic.segmentAtlasLabels(volumeNode, atlasSeg, segmentIds=None)
logic.device = "auto"; logic.align = None            # align: None (when possible) / True / False
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
        self.parent.contributors = CONTRIBUTORS
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
<p>Runs happen in a separate worker process with a progress bar and <i>Cancel</i> (which ends the process);
a cancelled or failed run leaves the scene unchanged. Choosing an existing output replaces only the segments
of the same names. <i>Show result in 3D</i> shows the output as surfaces after a run.</p>
<p>The shipped demo models use public atlases: AAL (GIN Bordeaux, licence unknown upstream) and
Neuromorphometrics (CC BY-NC); see the project page for each data source's licence.</p>
"""
            + _CONSOLE_API
            + f'<p>See <a href="{HOMEPAGE}">the project page</a>.</p>'
        )
        problem = packages.unsupportedVersionMessage(
            (slicer.app.majorVersion, slicer.app.minorVersion), sys.version_info[:2]
        )
        if problem:
            logging.error(problem)
            self.parent.helpText = f"<p><b>{problem}</b></p>" + self.parent.helpText
        self.parent.acknowledgementText = """
<p>Developed by the LabelSharingSeg developers. It implements:</p>
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
    showResultIn3D: bool = False
    taskName: str = ""
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    atlasSegmentation: slicer.vtkMRMLSegmentationNode
    targetVolume: slicer.vtkMRMLScalarVolumeNode
    atlasOutputSegmentation: slicer.vtkMRMLSegmentationNode


def pythonSlicerExecutable():
    """Slicer's own Python (the launcher sets up its environment); plain ``sys.executable`` elsewhere."""
    return shutil.which("PythonSlicer") or sys.executable


class WorkerProcess:
    """Runs a ``WorkerJob`` with ``qt.QProcess``: stdout goes to ``job.feed``, the end to ``job.finish``.
    ``onProgress(job)`` and ``onFinished(job)`` run on the main thread; ``kill()`` is cancel."""

    def __init__(self, job, onProgress, onFinished):
        self.job = job
        self._onProgress = onProgress
        self._onFinished = onFinished
        self.process = qt.QProcess()
        self.process.setProgram(job.program)
        self.process.setArguments(job.arguments)
        self.process.setWorkingDirectory(str(job.workDir))
        self.process.setStandardErrorFile(str(job.stderrPath))
        environment = qt.QProcessEnvironment()
        for key, value in job.environment().items():
            environment.insert(key, value)
        self.process.setProcessEnvironment(environment)
        self.process.connect("readyReadStandardOutput()", self._readOutput)
        self.process.connect("finished(int,QProcess::ExitStatus)", self._finished)
        self.process.connect("errorOccurred(QProcess::ProcessError)", self._error)
        self._ended = False

    def start(self):
        self.process.start()
        return self

    def isRunning(self):
        return not self._ended

    def kill(self):
        self.job.markCancelled()
        if self.process.state() != qt.QProcess.NotRunning:
            self.process.kill()

    def _readOutput(self):
        data = self.process.readAllStandardOutput().data()  # bytes (str in some PythonQt builds)
        self.job.feed(data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data))
        self._onProgress(self.job)

    def _finished(self, exitCode, exitStatus):
        self._end(exitCode if exitStatus == qt.QProcess.NormalExit else None)

    def _error(self, error):
        if error == qt.QProcess.FailedToStart:  # no finished() follows
            self._end(None)

    def _end(self, exitCode):
        if self._ended:
            return
        self._ended = True
        self._readOutput()
        self.job.finish(exitCode)
        self._onFinished(self.job)


#
# Widget
#


class LabelSharingSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._worker = None
        self._run = None
        self._runStart = 0.0
        self._outputSelector = None
        self._renderingList = False
        self.segmentChecklist = SegmentChecklist(onChanged=self._renderSegmentList)

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
            "currentNodeChanged(vtkMRMLNode*)", self.segmentChecklist.setSegmentationNode
        )
        self.ui.atlasSegmentsListWidget.connect("itemChanged(QListWidgetItem*)", self.onSegmentItemChanged)
        self.ui.selectAllSegmentsButton.connect(
            "clicked(bool)", lambda: self.segmentChecklist.setAllChecked(True)
        )
        self.ui.selectNoSegmentsButton.connect(
            "clicked(bool)", lambda: self.segmentChecklist.setAllChecked(False)
        )
        self.ui.atlasMethodComboBox.connect("currentIndexChanged(int)", self.onAtlasMethodChanged)
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

        demo = self._demoBundlePaths()
        self.ui.shippedBundleComboBox.addItem("Shipped models..." if demo else "No shipped models", "")
        for path in demo:
            self.ui.shippedBundleComboBox.addItem(os.path.basename(path), path)
        self.ui.shippedBundleComboBox.connect("currentIndexChanged(int)", self.onShippedBundleChosen)
        self.initializeParameterNode()
        if not self.ui.bundlePathLineEdit.currentPath and demo:
            self.ui.bundlePathLineEdit.currentPath = demo[0]
        self._updatePackagesStatus()
        self._updateBundleSections()

    def onReload(self):
        # drop the library's modules too, so Reload picks up edits in LabelSharingSegLib (developer mode)
        for name in [
            n for n in sys.modules if n == "LabelSharingSegLib" or n.startswith("LabelSharingSegLib.")
        ]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self):
        self._killWorker()
        self.segmentChecklist.close()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self._updatePackagesStatus()
        self.segmentChecklist.refresh()  # segments drawn while the module was hidden

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        self._killWorker()
        self.segmentChecklist.setSegmentationNode(None)
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
            if self._parameterNode.bundlePath:  # the scene remembers its bundle
                self.ui.bundlePathLineEdit.currentPath = self._parameterNode.bundlePath
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
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        logging.error(f"LabelSharingSeg: {what}: {error}\n{details}")
        slicer.util.errorDisplay(f"{what}:\n\n{error}", windowTitle="LabelSharingSeg", detailedText=details)

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
        self.ui.installPackagesButton.setVisible(bool(lines))
        return not missing and not torchMissing

    def _updateBundleSections(self):
        kind = self.logic.bundleKind
        self.ui.taskCollapsibleButton.setEnabled(kind is not None and kind != "lcs")
        self.ui.atlasCollapsibleButton.setEnabled(kind == "lcs")
        self.ui.taskCollapsibleButton.collapsed = kind == "lcs"
        self.ui.atlasCollapsibleButton.collapsed = kind != "lcs"
        self._fillAtlasMethods()
        self._updateButtons()

    def _fillAtlasMethods(self):
        chosen = self.logic.atlasMethodOptions.get("method")
        combo = self.ui.atlasMethodComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for method, title in self.logic.atlasMethodChoices():
            combo.addItem(title, method)
        combo.setCurrentIndex(max(0, combo.findData(chosen)) if chosen else 0)
        combo.blockSignals(wasBlocked)

    def _updateButtons(self, *unused):
        idle = self._worker is None
        hasBundle = self.logic is not None and self.logic.bundleKind is not None
        self.ui.loadBundleButton.enabled = idle
        self.ui.shippedBundleComboBox.enabled = idle and self.ui.shippedBundleComboBox.count > 1
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
            and bool(self.segmentChecklist.checkedIds())
        )

    # ---- model section
    def onInstallPackages(self):
        plan = packages.pipPlan(packages.missingPackages(), not packages.torchAvailable())
        if plan.empty:
            self._updatePackagesStatus()
            return
        if not slicer.util.confirmOkCancelDisplay(
            packages.pipPlanMessage(plan), windowTitle="LabelSharingSeg: install Python packages"
        ):
            return
        try:
            if plan.installTorch:
                import PyTorchUtils  # from the PyTorch extension (EXTENSION_DEPENDS)

                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=True, torchVersionRequirement=plan.torchRequirement
                )
                if torch is None:
                    return
            if plan.requirements:
                with slicer.util.WaitCursor():
                    slicer.util.pip_install(plan.pipArguments)
        except Exception as error:
            self._showError("Installing Python packages failed", error)
        finally:
            importlib.invalidate_caches()
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
        self.logic.device = device
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
        self.logic.align = None if checked else False

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

    def _renderSegmentList(self):
        """Show the checklist's entries (the checklist follows the segmentation's segment events)."""
        listWidget = self.ui.atlasSegmentsListWidget
        self._renderingList = True
        try:
            listWidget.clear()
            for entry in self.segmentChecklist.entries:
                item = qt.QListWidgetItem(entry.name)
                item.setData(qt.Qt.UserRole, entry.segmentId)
                item.setData(qt.Qt.DecorationRole, qt.QColor.fromRgbF(*entry.color))
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Checked if entry.checked else qt.Qt.Unchecked)
                listWidget.addItem(item)
        finally:
            self._renderingList = False
        self._updateButtons()

    def onSegmentItemChanged(self, item):
        if not self._renderingList:  # a tick by the user
            self.segmentChecklist.setChecked(item.data(qt.Qt.UserRole), item.checkState() == qt.Qt.Checked)

    def onAtlasMethodChanged(self, index):
        method = self.ui.atlasMethodComboBox.itemData(index) if index > 0 else None  # 0: the bundle's default
        try:
            self.logic.setAtlasMethod(method)
        except LabelSharingSegError as error:
            self._showError("Cannot use this method", error)

    def onApplyAtlas(self):
        try:
            run = self.logic.prepareSegmentAtlasLabels(
                self.ui.targetVolumeSelector.currentNode(),
                self.ui.atlasSegmentationSelector.currentNode(),
                self.segmentChecklist.checkedIds(),
                self.ui.atlasOutputSegmentationSelector.currentNode(),
            )
        except LabelSharingSegError as error:
            self._showError("Cannot segment the atlas labels", error)
            return
        self._startRun(run, self.ui.atlasOutputSegmentationSelector)

    # ---- background run (worker process)
    def _startRun(self, run, outputSelector):
        try:
            job = self.logic.createWorkerJob(run, python=pythonSlicerExecutable())
        except (LabelSharingSegError, OSError) as error:
            self._showError("Cannot start the segmentation", error)
            return
        self._run, self._outputSelector, self._runStart = run, outputSelector, time.monotonic()
        self._worker = WorkerProcess(job, self._onWorkerProgress, self._onWorkerFinished)
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self.ui.cancelButton.setVisible(True)
        self.ui.cancelButton.enabled = True
        self.ui.statusLabel.setText(run.description)
        self._updateButtons()
        self._worker.start()

    def onCancel(self):
        if self._worker is not None:
            self.ui.cancelButton.enabled = False
            self._worker.kill()

    def _killWorker(self):
        if self._worker is not None and self._worker.isRunning():
            self._worker.kill()
            self._worker.process.waitForFinished(3000)

    def _onWorkerProgress(self, job):
        status = job.status()
        self.ui.progressBar.setValue(int(round(100 * status.fraction)))
        self.ui.statusLabel.setText(status.message)

    def _onWorkerFinished(self, job):
        run, outputSelector = self._run, self._outputSelector
        self._worker, self._run = None, None
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setVisible(False)
        try:
            result = job.result()
            outputNode = self.logic.applyRun(run, result)
        except CancelledError:
            self.ui.statusLabel.setText("Cancelled: the scene was not changed.")
        except Exception as error:
            self.ui.statusLabel.setText("Failed: the scene was not changed.")
            self._showError("Segmentation failed", error)
        else:
            outputSelector.setCurrentNode(outputNode)
            self.ui.show3DButton.setSegmentationNode(outputNode)  # enables itself when there are segments
            if self.ui.autoShow3DCheckBox.checked:
                outputNode.CreateClosedSurfaceRepresentation()
            seconds = time.monotonic() - self._runStart
            message = self.logic.finishedMessage(outputNode.GetName(), seconds, result, run.warnings)
            self.ui.statusLabel.setText(message)
        finally:
            job.cleanup()
        self._updateButtons()


def _dicomFileForInstance(uid: str) -> str:
    """The file of a DICOM instance in Slicer's DICOM database ("" when there is no database or no such file)."""
    database = getattr(slicer, "dicomDatabase", None)
    return str(database.fileForInstance(uid) or "") if database else ""


def ctkPathFilters():
    import ctk

    # Files: the Browse dialog offers bundle.json (taken as its folder) and .zip; a folder can be typed
    return ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable


#
# Logic (console API)
#


class LabelSharingSegLogic(SegmentationSceneLogic, ScriptedLoadableModuleLogic):
    """Console API: ``SegmentationSceneLogic`` (every decision, tested on slicer-core) on ``slicer.mrmlScene``.

    >>> logic = LabelSharingSegLogic()
    >>> logic.loadBundle(path); logic.taskNames(); logic.device = "cuda"
    >>> segmentationNode = logic.segmentTask(volumeNode, taskName)
    >>> atlasVolumeNode, atlasSegmentationNode = logic.loadAtlas()
    >>> segmentationNode = logic.segmentAtlasLabels(volumeNode, atlasSegmentationNode)
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationSceneLogic.__init__(
            self,
            slicer.mrmlScene,
            segmentationsLogic=slicer.modules.segmentations.logic(),
            dicomFileForInstance=_dicomFileForInstance,
        )

    def getParameterNode(self):
        return LabelSharingSegParameterNode(super().getParameterNode())

    def missingPythonPackages(self):
        """Import names of required packages that are not installed (nothing is installed here)."""
        return [req.importName for req in packages.missingPackages()]

    def installMissingPythonPackages(self):
        """Explicit console request: pip-install the missing packages except torch and SimpleITK (see
        ``packages.pipPlan``); install torch with the PyTorch Utils module."""
        plan = packages.pipPlan(packages.missingPackages(), not packages.torchAvailable())
        if plan.requirements:
            slicer.util.pip_install(plan.pipArguments)
            importlib.invalidate_caches()
        return list(plan.requirements)


#
# Self-test
#


class LabelSharingSegTest(ScriptedLoadableModuleTest):
    """End to end inside Slicer on the shipped demo bundles: a run in the worker process (qt.QProcess) equal
    to the console path, cancel by killing the worker, the segment checklist following segment events, and
    the atlas flow with a newly drawn segment. Skipped, with the reason, where torch or a package is missing."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        missing = [r.importName for r in packages.missingPackages()]
        if not packages.torchAvailable():
            missing.insert(0, "torch")
        if missing:
            import unittest

            reason = f"LabelSharingSeg self-test skipped: missing Python packages {', '.join(missing)}"
            self.delayDisplay(reason)
            raise unittest.SkipTest(reason)
        for test in (
            self.test_WorkerTaskFlow,
            self.test_CancelKillsTheWorker,
            self.test_SegmentChecklist,
            self.test_AtlasFlow,
        ):
            self.setUp()
            test()

    def _shipped(self, name):
        path = os.path.join(os.path.dirname(__file__), "Resources", "Bundles", name)
        if not os.path.isdir(path):
            self.skipTest(f"the shipped bundle {name} is not installed")
        return path

    def _logic(self, bundle):
        logic = LabelSharingSegLogic()
        logic.device = "cpu"
        logic.loadBundle(self._shipped(bundle))
        return logic

    def _volume(self, shape=(40, 36, 3)):
        import numpy as np

        from LabelSharingSegLib.scene import geometry

        image = np.random.default_rng(7).normal(100, 30, size=shape).astype(np.float32)
        image[10:30, 8:28] += 150
        affine = np.diag([1.5, 1.5, 3.0, 1.0])
        affine[:3, 3] = [-30.0, -27.0, -3.0]
        return geometry.createScalarVolumeNode(slicer.mrmlScene, "scan", image, affine)

    def _runWorker(self, job, killAfterFirstProgress=False, timeoutSeconds=300):
        worker = WorkerProcess(job, lambda j: None, lambda j: None)
        worker.start()
        deadline = time.monotonic() + timeoutSeconds
        while worker.isRunning() and time.monotonic() < deadline:
            slicer.app.processEvents()
            if killAfterFirstProgress and job.message != "Starting the worker":
                worker.kill()
                killAfterFirstProgress = False
            time.sleep(0.01)
        self.assertFalse(worker.isRunning(), "the worker did not finish in time")
        return worker

    def _segmentNames(self, node):
        segmentation = node.GetSegmentation()
        return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]

    def test_WorkerTaskFlow(self):
        import numpy as np

        self.delayDisplay("Task run in the worker process (qt.QProcess)")
        logic = self._logic("labelsharing-multitask")
        task = logic.taskNames()[0]
        volume = self._volume()
        before = slicer.util.arrayFromVolume(volume).copy()
        run = logic.prepareSegmentTask(volume, task)
        job = logic.createWorkerJob(run, python=pythonSlicerExecutable())
        self._runWorker(job)
        try:
            output = logic.applyRun(run, job.result())
        finally:
            job.cleanup()
        self.assertFalse(os.path.exists(job.workDir))
        self.assertEqual(self._segmentNames(output), [label.name for label in logic.taskLabels(task)])
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(volume), before))
        expected = logic.segmentTask(volume, task)  # the console's synchronous path
        for name in self._segmentNames(output):
            a = slicer.util.arrayFromSegmentBinaryLabelmap(
                output, output.GetSegmentation().GetSegmentIdBySegmentName(name), volume
            )
            b = slicer.util.arrayFromSegmentBinaryLabelmap(
                expected, expected.GetSegmentation().GetSegmentIdBySegmentName(name), volume
            )
            self.assertTrue(np.array_equal(a, b), name)
        self.delayDisplay("Worker task flow passed")

    def test_CancelKillsTheWorker(self):
        self.delayDisplay("Cancel ends the worker process; the scene is unchanged")
        logic = self._logic("labelsharing-multitask")
        volume = self._volume()
        run = logic.prepareSegmentTask(volume, logic.taskNames()[1])
        count = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.createWorkerJob(run, python=pythonSlicerExecutable())
        self._runWorker(job, killAfterFirstProgress=True)
        self.assertFalse(os.path.exists(job.request.output))
        with self.assertRaises(CancelledError):
            job.result()
        job.cleanup()
        self.assertFalse(os.path.exists(job.workDir))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Cancel test passed")

    def test_SegmentChecklist(self):
        self.delayDisplay("The atlas segment list follows drawn, renamed and removed segments")
        logic = self._logic("lcs-brain-aal")
        _, atlasSegmentation = logic.loadAtlas()
        checklist = SegmentChecklist()
        checklist.setSegmentationNode(atlasSegmentation)
        count = len(checklist.entries)
        segmentation = atlasSegmentation.GetSegmentation()
        drawn = segmentation.AddEmptySegment("", "Drawn today", (0.2, 0.7, 0.9))
        self.assertEqual(len(checklist.entries), count + 1)
        self.assertIn(drawn, checklist.checkedIds())
        segmentation.GetSegment(drawn).SetName("Renamed")
        self.assertEqual(checklist.entries[-1].name, "Renamed")
        segmentation.RemoveSegment(drawn)
        self.assertEqual(len(checklist.entries), count)
        checklist.close()
        self.delayDisplay("Segment checklist passed")

    def test_AtlasFlow(self):
        import numpy as np

        self.delayDisplay("Atlas flow with a newly drawn segment")
        logic = self._logic("lcs-brain-aal")
        atlasVolume, atlasSegmentation = logic.loadAtlas()
        shape = slicer.util.arrayFromVolume(atlasVolume).shape  # [k, j, i]
        mask = np.zeros(shape, np.uint8)
        centre = [s // 2 for s in shape]
        mask[centre[0] - 4 : centre[0] + 4, centre[1] - 5 : centre[1] + 5, centre[2] - 4 : centre[2] + 4] = 1
        segmentId = atlasSegmentation.GetSegmentation().AddEmptySegment("", "Drawn today", (0.2, 0.7, 0.9))
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, atlasSegmentation, segmentId, atlasVolume)
        output = logic.segmentAtlasLabels(atlasVolume, atlasSegmentation, [segmentId])
        segment = output.GetSegmentation().GetNthSegment(0)
        self.assertEqual(segment.GetName(), "Drawn today")
        self.assertTrue(np.allclose(segment.GetColor(), (0.2, 0.7, 0.9)))
        self.delayDisplay("Atlas flow passed")

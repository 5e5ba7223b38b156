"""The caller's side of a worker run, without Qt: files in, command line, progress lines, result, cancel.

:class:`WorkerJob` holds the protocol state of one run. Whoever owns the process feeds it: in Slicer a
``qt.QProcess`` (the module's widget wires ``readyReadStandardOutput`` to :meth:`WorkerJob.feed` and
``finished`` to :meth:`WorkerJob.finish`), in scripts and tests :class:`SubprocessWorker`. Cancel is ending the
process; :meth:`WorkerJob.cleanup` removes the job's temporary folder (inputs, outputs, log) in every case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.errors import CancelledError, InputError, LabelSharingSegError
from .protocol import (
    EVENT_DONE,
    EVENT_ERROR,
    EVENT_PROGRESS,
    KIND_ATLAS_LABELS,
    KIND_TASK,
    LabelSpec,
    WorkerEvent,
    WorkerRequest,
    labelsFromJson,
)

LIBRARY_ROOT = Path(__file__).resolve().parents[2]  # the folder holding LabelSharingSegLib
_LOG_TAIL_CHARS = 2000
_MAX_LINE_CHARS = 1 << 20  # a longer line without newline is not a protocol event: drop it


@dataclass(frozen=True)
class ReportedAlignment:
    """The worker's account of the automatic alignment (what the caller shows; the matrix stays there)."""

    text: str
    accepted: bool
    confident: bool = True

    def summary(self) -> str:
        return self.text


@dataclass
class WorkerResult:
    """A finished run read back from the worker's files (attributes as the engine's SegmentationResult)."""

    labelmap: np.ndarray
    affine: np.ndarray
    labels: list  # LabelInfo
    seconds: float
    device_note: str | None
    alignment: ReportedAlignment | None = None
    coverage: str | None = None  # which part of the scan was segmented, when not all of it


@dataclass
class WorkerStatus:
    fraction: float
    message: str
    finished: bool
    cancelled: bool


class WorkerJob:
    """One worker run. Create with :meth:`create`, which writes the inputs and the request into a fresh
    temporary folder; then start :attr:`program` with :attr:`arguments` and :meth:`environment`."""

    def __init__(self, request: WorkerRequest, workDir: Path, python: str | None = None):
        self.request = request
        self.workDir = Path(workDir)
        self.requestPath = self.workDir / "request.json"
        self.stderrPath = self.workDir / "worker-stderr.log"
        self.program = python or sys.executable
        self.fraction = 0.0
        self.message = "Starting the worker"
        self.finished = False
        self.cancelled = False
        self.exitCode: int | None = None
        self.outputLines: list[str] = []  # stdout lines that are not protocol events (library prints)
        self._pending = ""
        self._done: WorkerEvent | None = None
        self._error: WorkerEvent | None = None

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        kind: str,
        bundlePath: str | os.PathLike,
        image: np.ndarray,
        affine: np.ndarray,
        *,
        task: str | None = None,
        masks: np.ndarray | None = None,
        masksAffine: np.ndarray | None = None,
        labels=(),
        device: str = "auto",
        method: str = "",
        options: dict | None = None,
        bundleId: str | None = None,
        python: str | None = None,
        tempRoot: str | os.PathLike | None = None,
    ) -> WorkerJob:
        """Write ``image`` (and for atlas labels ``masks`` (K, *atlas grid) with ``labels``) as NIfTI into a new
        temporary folder with the request. Nothing is left behind when this fails."""
        from ..engine.nifti_io import save_nifti

        workDir = Path(tempfile.mkdtemp(prefix="lsseg-worker-", dir=tempRoot))
        try:
            imagePath = workDir / "image.nii.gz"
            save_nifti(imagePath, np.asarray(image, dtype=np.float32), affine)
            masksPath = None
            specs = []
            if kind == KIND_ATLAS_LABELS:
                if masks is None or masksAffine is None:
                    raise InputError("an atlas-labels job needs the atlas masks and their affine")
                masksPath = workDir / "atlas_masks.nii.gz"
                save_nifti(masksPath, np.moveaxis(np.asarray(masks, dtype=np.uint8), 0, -1), masksAffine)
                specs = [
                    LabelSpec(
                        int(label.value), str(label.name), [float(c) for c in label.color], label.terminology
                    )
                    for label in labels
                ]
            request = WorkerRequest(
                bundle=str(Path(bundlePath).resolve()),
                kind=kind,
                image=str(imagePath),
                output=str(workDir / "result_labelmap.nii.gz"),
                labelsOutput=str(workDir / "result_labels.json"),
                device=device,
                method=method,
                options=dict(options or {}),
                task=task if kind == KIND_TASK else None,
                atlasMasks=str(masksPath) if masksPath else None,
                atlasLabels=specs,
                bundleId=bundleId,
                imageAffine=np.asarray(affine, dtype=np.float64).tolist(),
            )
            job = cls(request, workDir, python)
            job.requestPath.write_text(request.toJson(), encoding="utf-8")
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return job

    # ------------------------------------------------------------------ process
    @property
    def arguments(self) -> list[str]:
        return ["-m", "LabelSharingSegLib.worker", str(self.requestPath)]

    @property
    def command(self) -> list[str]:
        return [self.program, *self.arguments]

    def environment(self, base: dict | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with the library folder first on PYTHONPATH."""
        env = dict(os.environ if base is None else base)
        parts = [str(LIBRARY_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(parts)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # ------------------------------------------------------------------ protocol
    def feed(self, text: str) -> list[WorkerEvent]:
        """Take stdout text as it arrives (any chunking); returns the events completed by it."""
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        if len(self._pending) > _MAX_LINE_CHARS:
            self._pending = ""
        events = []
        for line in lines:
            event = WorkerEvent.fromLine(line)
            if event is None:
                if line.strip():
                    self.outputLines.append(line.rstrip())
                continue
            events.append(event)
            if event.event == EVENT_PROGRESS:
                self.fraction = event.fraction
                self.message = event.message or self.message
            elif event.event == EVENT_DONE:
                self._done = event
            elif event.event == EVENT_ERROR:
                self._error = event
        return events

    def finish(self, exitCode: int | None) -> None:
        """The process ended (``exitCode`` None or negative: it crashed or was killed)."""
        if self._pending:
            self.feed("\n")
        self.exitCode = exitCode
        self.finished = True

    def markCancelled(self) -> None:
        self.cancelled = True
        self.message = "Cancelled"

    def status(self) -> WorkerStatus:
        return WorkerStatus(self.fraction, self.message, self.finished, self.cancelled)

    def stderrTail(self) -> str:
        try:
            return self.stderrPath.read_text(encoding="utf-8", errors="replace")[-_LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def result(self) -> WorkerResult:
        """The run's result; raises CancelledError after cancel and LabelSharingSegError with the worker's own
        message when it failed. Call before :meth:`cleanup`."""
        from ..engine.labels import LabelInfo
        from ..engine.nifti_io import load_nifti

        if self.cancelled:
            raise CancelledError("Cancelled by the user; the scene was not changed.")
        if not self.finished:
            raise LabelSharingSegError("the worker has not finished yet")
        if self._error is not None:
            raise LabelSharingSegError(self._error.message)
        if self.exitCode != 0 or self._done is None:
            tail = self.stderrTail().strip()
            raise LabelSharingSegError(
                f"the segmentation worker stopped unexpectedly (exit code {self.exitCode})"
                + (f"; its last output:\n{tail}" if tail else "")
            )
        labels = [
            LabelInfo(s.value, s.name, tuple(s.color), s.terminology)
            for s in labelsFromJson(Path(self.request.labelsOutput).read_text(encoding="utf-8"))
        ]
        labelmap, affine = load_nifti(self.request.output, dtype=np.int32)
        done = self._done
        alignment = (
            ReportedAlignment(done.alignment, done.alignmentAccepted, done.alignmentConfident)
            if done.alignment
            else None
        )
        return WorkerResult(
            labelmap, affine, labels, done.seconds, done.deviceNote or None, alignment, done.coverage or None
        )

    def cleanup(self) -> None:
        shutil.rmtree(self.workDir, ignore_errors=True)


class SubprocessWorker:
    """Drive a :class:`WorkerJob` with ``subprocess`` (console scripts, tests): a reader thread feeds stdout
    to the job (I/O only, so it barely needs the GIL); ``cancel`` kills the process."""

    def __init__(self, job: WorkerJob):
        self.job = job
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> SubprocessWorker:
        with open(self.job.stderrPath, "wb") as stderr:
            self._process = subprocess.Popen(
                self.job.command,
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=self.job.environment(),
                cwd=str(self.job.workDir),
            )
        self._reader = threading.Thread(target=self._read, name="lsseg-worker-reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        stream = self._process.stdout
        for raw in iter(stream.readline, b""):
            with self._lock:
                self.job.feed(raw.decode("utf-8", errors="replace"))
        stream.close()
        code = self._process.wait()
        with self._lock:
            self.job.finish(code)

    def poll(self) -> WorkerStatus:
        with self._lock:
            return self.job.status()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the process ended and its output was read."""
        self._reader.join(timeout)
        return not self._reader.is_alive()

    def cancel(self) -> None:
        """End the process now (no cooperation needed); the job then reports CancelledError."""
        with self._lock:
            self.job.markCancelled()
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self.wait()

    def result(self, timeout: float | None = None) -> WorkerResult:
        """Wait, read the result and remove the temporary folder (also when the run failed)."""
        try:
            if not self.wait(timeout):
                self.cancel()
                raise LabelSharingSegError(f"the segmentation worker did not finish within {timeout} s")
            return self.job.result()
        finally:
            self.job.cleanup()

"""Background jobs: run engine work in a worker thread while the caller (Slicer's main thread) polls.

The worker never touches MRML: a job's ``work(progress, cancel)`` gets only numpy arrays captured on the
main thread beforehand and returns plain results; the caller applies them to the scene after ``poll()``
reports the job as finished. No Qt here: the Widget polls with a ``qt.QTimer``, the console can ``wait()``.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine.errors import CancelledError, InputError

ProgressCallback = Callable[[float, str], None]


def cancelCallable(cancel) -> Callable[[], bool] | None:
    """Normalise a cancel flag: None, a callable returning bool, or an object with ``is_set()``
    (e.g. ``threading.Event``) -> a callable returning bool (or None)."""
    if cancel is None:
        return None
    if hasattr(cancel, "is_set"):
        return lambda: bool(cancel.is_set())
    if callable(cancel):
        return lambda: bool(cancel())
    raise InputError("cancel must be a callable returning bool or an object with is_set() (threading.Event)")


def progressCallable(progress) -> ProgressCallback:
    """A progress callback that clamps the fraction to 0..1 and never lets a broken callback kill a run."""
    if progress is None:
        return lambda fraction, message="": None
    if not callable(progress):
        raise InputError("progress must be a callable taking (fraction: float, message: str)")

    def report(fraction: float, message: str = "") -> None:
        try:
            progress(min(1.0, max(0.0, float(fraction))), str(message))
        except Exception:  # a faulty progress display must not abort the segmentation
            traceback.print_exc()

    return report


def scaledProgress(progress: ProgressCallback, start: float, stop: float) -> ProgressCallback:
    """Map a sub-step's 0..1 onto [start, stop] of the overall progress."""
    return lambda fraction, message="": progress(
        start + (stop - start) * min(1.0, max(0.0, float(fraction))), message
    )


def raiseIfCancelled(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise CancelledError("Cancelled by the user; the scene was not changed.")


@dataclass
class JobStatus:
    """Snapshot of a job for the main thread."""

    fraction: float
    message: str
    running: bool
    finished: bool
    cancelled: bool
    result: Any = None
    error: BaseException | None = None


class BackgroundJob:
    """Runs ``work(progress, cancel)`` in a daemon thread.

    ``progress(fraction, message)`` and ``cancel()`` are handed to ``work``; ``cancel()`` turns True after
    ``requestCancel()``. The main thread calls ``poll()`` (non-blocking) or ``wait()``. Exceptions raised by
    ``work`` are captured and re-raised by ``result()`` on the caller's thread.
    """

    def __init__(
        self, work: Callable[[ProgressCallback, Callable[[], bool]], Any], name: str = "LabelSharingSeg job"
    ):
        self._work = work
        self._name = name
        self._lock = threading.Lock()
        self._cancelEvent = threading.Event()
        self._fraction = 0.0
        self._message = "Waiting to start"
        self._result = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self.startTime: float | None = None
        self.endTime: float | None = None

    # ---- worker side
    def _report(self, fraction: float, message: str = "") -> None:
        with self._lock:
            self._fraction = min(1.0, max(0.0, float(fraction)))
            if message:
                self._message = str(message)

    def _run(self) -> None:
        try:
            result = self._work(self._report, self._cancelEvent.is_set)
            with self._lock:
                self._result = result
                self._fraction = 1.0
        except BaseException as exc:  # captured, re-raised on the main thread
            with self._lock:
                self._error = exc
        finally:
            self.endTime = time.monotonic()
            self._done.set()

    # ---- main-thread side
    def start(self) -> BackgroundJob:
        if self._thread is not None:
            raise RuntimeError("a BackgroundJob can only be started once")
        self.startTime = time.monotonic()
        self._message = "Starting"
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def requestCancel(self) -> None:
        self._cancelEvent.set()
        with self._lock:
            if not self._done.is_set():
                self._message = "Cancelling..."

    @property
    def cancelRequested(self) -> bool:
        return self._cancelEvent.is_set()

    @property
    def isRunning(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    def poll(self) -> JobStatus:
        with self._lock:
            finished = self._done.is_set()
            return JobStatus(
                fraction=self._fraction,
                message=self._message,
                running=self._thread is not None and not finished,
                finished=finished,
                cancelled=isinstance(self._error, CancelledError),
                result=self._result,
                error=self._error,
            )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (True) or ``timeout`` seconds pass (False)."""
        return self._done.wait(timeout)

    def result(self):
        """The work's return value; re-raises its exception. Only valid once finished."""
        if not self._done.is_set():
            raise RuntimeError("the job has not finished yet")
        if self._error is not None:
            raise self._error
        return self._result

"""Progress and cancel callbacks of a run: normalised forms for the synchronous console path.

Background runs go to a worker process (``LabelSharingSegLib.worker``), not a thread: Slicer's main thread
keeps the Python GIL while its event loop idles, so a compute thread would crawl there.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

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

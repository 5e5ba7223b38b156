"""Progress/cancel normalisation of the synchronous console path (no MRML needed)."""

import threading

import pytest

from LabelSharingSegLib.engine.errors import CancelledError, InputError
from LabelSharingSegLib.scene.jobs import cancelCallable, progressCallable, raiseIfCancelled, scaledProgress


def test_cancel_flag_forms():
    event = threading.Event()
    check = cancelCallable(event)
    assert check() is False
    event.set()
    assert check() is True
    assert cancelCallable(lambda: 1)() is True
    assert cancelCallable(None) is None
    with pytest.raises(InputError):
        cancelCallable(42)


def test_progress_is_clamped_and_a_broken_callback_does_not_abort():
    seen = []
    report = progressCallable(lambda f, m: seen.append((f, m)))
    report(1.7, "a")
    report(-1, "b")
    assert seen == [(1.0, "a"), (0.0, "b")]
    progressCallable(lambda f, m: 1 / 0)(0.5, "x")  # swallowed
    scaled = scaledProgress(report, 0.5, 1.0)
    scaled(0.5, "half")
    assert seen[-1] == (0.75, "half")


def test_raise_if_cancelled():
    raiseIfCancelled(None)
    raiseIfCancelled(lambda: False)
    with pytest.raises(CancelledError, match="scene was not changed"):
        raiseIfCancelled(lambda: True)

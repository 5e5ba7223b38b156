"""Background jobs, progress/cancel normalisation and the package check (no MRML needed)."""

import threading
import time

import pytest

from LabelSharingSegLib.engine.errors import CancelledError, InputError
from LabelSharingSegLib.scene import packages
from LabelSharingSegLib.scene.jobs import BackgroundJob, cancelCallable, progressCallable, scaledProgress


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


def test_background_job_runs_off_the_calling_thread_and_reports():
    caller = threading.get_ident()
    threads = []

    def work(progress, cancel):
        threads.append(threading.get_ident())
        progress(0.5, "halfway")
        return 42

    job = BackgroundJob(work).start()
    assert job.wait(10)
    status = job.poll()
    assert status.finished and not status.running and status.result == 42 and status.fraction == 1.0
    assert status.message == "halfway"
    assert threads and threads[0] != caller
    assert job.result() == 42
    with pytest.raises(RuntimeError):
        job.start()


def test_background_job_cancel_and_errors():
    started = threading.Event()

    def slow(progress, cancel):
        started.set()
        for _ in range(500):
            if cancel():
                raise CancelledError("stopped")
            time.sleep(0.01)
        return "finished"

    job = BackgroundJob(slow).start()
    assert started.wait(5)
    assert job.poll().running
    with pytest.raises(RuntimeError):
        job.result()  # not finished yet
    job.requestCancel()
    assert job.wait(5)
    status = job.poll()
    assert status.cancelled and isinstance(status.error, CancelledError)
    with pytest.raises(CancelledError):
        job.result()

    failing = BackgroundJob(lambda p, c: (_ for _ in ()).throw(ValueError("bad"))).start()
    assert failing.wait(5)
    assert isinstance(failing.poll().error, ValueError) and not failing.poll().cancelled


def test_missing_packages_are_reported_not_installed():
    assert packages.missingPackages() == []  # this environment has all of them
    fake = packages.PackageRequirement("surely_not_installed_pkg_xyz", "surely-not-installed>=1", "testing")
    missing = packages.missingPackages(packages.REQUIRED_PACKAGES + (fake,))
    assert missing == [fake]
    message = packages.missingPackagesMessage(missing)
    assert "surely-not-installed>=1" in message and "Install them now" in message
    assert packages.pipRequirements(missing) == ["surely-not-installed>=1"]
    assert {r.importName for r in packages.REQUIRED_PACKAGES} == {
        "monai",
        "safetensors",
        "nibabel",
        "SimpleITK",
    }
    assert packages.torchAvailable()

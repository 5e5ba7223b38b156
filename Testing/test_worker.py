"""The inference worker: protocol, method dispatch, and ``python -m LabelSharingSegLib.worker`` as a real
subprocess on a shipped bundle (progress lines, result equal to the in-process engine, kill = cancel)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from LabelSharingSegLib.engine import atlas_segmentation, inference
from LabelSharingSegLib.engine.bundle import load_bundle
from LabelSharingSegLib.engine.errors import CancelledError, InputError, LabelSharingSegError
from LabelSharingSegLib.engine.labels import LabelInfo
from LabelSharingSegLib.worker.client import SubprocessWorker, WorkerJob
from LabelSharingSegLib.worker.methods import checkOptions, resolveMethod
from LabelSharingSegLib.worker.protocol import (
    PROTOCOL_VERSION,
    LabelSpec,
    WorkerEvent,
    WorkerRequest,
    labelsFromJson,
    labelsToJson,
)
from LabelSharingSegLib.worker.runner import runRequest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TASK_BUNDLE = ROOT / "LabelSharingSeg" / "Resources" / "Bundles" / "labelsharing-multitask"
TIMEOUT_S = 300


def _request(**changes) -> dict:
    data = {
        "bundle": "/b",
        "kind": "task",
        "image": "/i.nii.gz",
        "output": "/o.nii.gz",
        "labelsOutput": "/o.json",
        "task": "T",
    }
    data.update(changes)
    return data


# ---------------------------------------------------------------------------------------------- protocol


def test_request_round_trips_through_json_and_fills_the_default_method():
    request = WorkerRequest.fromDict(_request(options={"align": False}))
    assert request.method == "task" and request.protocol == PROTOCOL_VERSION
    again = WorkerRequest.fromJson(request.toJson())
    assert again == request
    atlas = WorkerRequest.fromDict(
        _request(
            kind="atlas-labels", task=None, atlasMasks="/m.nii.gz", atlasLabels=[{"value": 1, "name": "a"}]
        )
    )
    assert atlas.method == "lcs" and atlas.atlasLabels == [LabelSpec(1, "a", [1.0, 1.0, 1.0])]
    assert WorkerRequest.fromJson(atlas.toJson()) == atlas


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"protocol": 99}, "protocol 99 is not supported"),
        ({"kind": "magic"}, "unknown job kind"),
        ({"task": None}, "needs 'task'"),
        ({"surprise": 1}, "unknown key"),
        ({"options": [1]}, "'options' must be a JSON object"),
        ({"output": "/o.json"}, "must differ"),
        ({"kind": "atlas-labels", "atlasMasks": "/m.nii.gz"}, "needs 'atlasLabels'"),
        (
            {"kind": "atlas-labels", "atlasMasks": "/m", "atlasLabels": [{"value": 0, "name": "a"}]},
            "positive",
        ),
        (
            {
                "kind": "atlas-labels",
                "atlasMasks": "/m",
                "atlasLabels": [{"value": 1, "name": "a", "color": [2, 0, 0]}],
            },
            "0..1",
        ),
    ],
)
def test_bad_requests_are_refused_with_one_line(changes, message):
    data = _request(**changes)
    with pytest.raises(InputError, match=message) as info:
        WorkerRequest.fromDict(data)
    assert "\n" not in str(info.value)


def test_request_json_that_is_not_json_or_too_deep():
    with pytest.raises(InputError, match="not valid JSON"):
        WorkerRequest.fromJson("{")
    with pytest.raises(InputError, match="not valid JSON"):
        WorkerRequest.fromJson("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="expected a JSON object"):
        WorkerRequest.fromJson("[]")


def test_progress_lines_are_parsed_in_any_chunking_and_noise_is_kept_aside(tmp_path):
    job = WorkerJob(WorkerRequest.fromDict(_request()), tmp_path)
    lines = (
        "Some library banner\n"
        + WorkerEvent("progress", fraction=0.25, message="windows 1/4").toLine()
        + "\n{not json\n"
        + WorkerEvent("progress", fraction=0.5, message="windows 2/4").toLine()
        + "\n"
    )
    events = []
    for start in range(0, len(lines), 7):  # chunks that cut lines anywhere
        events += job.feed(lines[start : start + 7])
    assert [(e.fraction, e.message) for e in events] == [(0.25, "windows 1/4"), (0.5, "windows 2/4")]
    assert job.status().fraction == 0.5 and job.status().message == "windows 2/4"
    assert job.outputLines == ["Some library banner", "{not json"]
    assert WorkerEvent.fromLine('{"event": "hello"}') is None


def test_a_crashed_worker_gives_a_clear_error_with_its_log(tmp_path):
    job = WorkerJob(WorkerRequest.fromDict(_request()), tmp_path)
    job.stderrPath.write_text("Segmentation fault in libtorch\n")
    job.feed(WorkerEvent("progress", fraction=0.3, message="x").toLine() + "\n")
    job.finish(-11)
    with pytest.raises(LabelSharingSegError, match=r"(?s)stopped unexpectedly \(exit code -11\).*libtorch"):
        job.result()
    job.markCancelled()
    with pytest.raises(CancelledError):
        job.result()


def test_labels_json_round_trip_keeps_terminology():
    labels = [LabelInfo(2, "White matter", (0.1, 0.2, 0.3), {"category": ["SCT", "1", "x"]})]
    (spec,) = labelsFromJson(labelsToJson(labels))
    assert (spec.value, spec.name, spec.color, spec.terminology) == (
        2,
        "White matter",
        [0.1, 0.2, 0.3],
        labels[0].terminology,
    )


# ---------------------------------------------------------------------------------------------- methods


def test_methods_resolve_to_engine_functions_only():
    assert resolveMethod("task") is inference.segment_task
    assert resolveMethod("lcs") is atlas_segmentation.segment_atlas_labels
    independently = resolveMethod("atlas_segmentation:atlas_labels_independently")
    assert independently is atlas_segmentation.atlas_labels_independently
    # atlas labels live in their own module; a function only imported there (a re-export) is refused
    moved = ("inference:segment_atlas_labels", "atlas_segmentation:check_image", "atlas_segmentation:_align")
    for bad in ("os:system", "inference:_align", "../x:y", "inference:np", "nope", "networks:torch", *moved):
        with pytest.raises(InputError, match="unknown method"):
            resolveMethod(bad)


def test_options_are_checked_against_the_method_signature():
    assert checkOptions(inference.segment_task, "task", {"align": False}) == {"align": False}
    with pytest.raises(InputError, match=r"unknown option\(s\) sigma \(accepted: align, all_slices\)"):
        checkOptions(inference.segment_task, "task", {"sigma": 1})
    with pytest.raises(InputError, match="set by the worker itself"):
        checkOptions(inference.segment_task, "task", {"device": "cpu"})


# ---------------------------------------------------------------------------------------------- real process


def _volume():
    rng = np.random.default_rng(7)
    image = rng.normal(100, 30, size=(40, 36, 3)).astype(np.float32)
    image[10:30, 8:28] += 150
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = [-30, -27, -3]
    return image, affine


@pytest.fixture(scope="module")
def shipped_task_bundle():
    return load_bundle(SHIPPED_TASK_BUNDLE)


def test_worker_command_line_reports_progress_lines_and_refuses_existing_outputs(
    tmp_path, shipped_task_bundle
):
    image, affine = _volume()
    job = WorkerJob.create(
        "task", SHIPPED_TASK_BUNDLE, image, affine, task=shipped_task_bundle.task_names()[1], device="cpu"
    )
    try:
        done = subprocess.run(
            job.command, env=job.environment(), capture_output=True, text=True, timeout=TIMEOUT_S
        )
        assert done.returncode == 0, done.stderr
        events = [json.loads(line) for line in done.stdout.splitlines()]
        fractions = [e["fraction"] for e in events if e["event"] == "progress"]
        assert len(fractions) >= 3 and fractions == sorted(fractions)
        assert events[-1]["event"] == "done" and Path(events[-1]["output"]).is_file()
        assert events[-1]["alignment"] == ""  # three slices: a 2D bundle does not align them
        before = Path(job.request.output).read_bytes()
        again = subprocess.run(
            job.command, env=job.environment(), capture_output=True, text=True, timeout=TIMEOUT_S
        )
        assert again.returncode == 1
        last = json.loads(again.stdout.splitlines()[-1])
        assert (
            last["event"] == "error"
            and "already exists" in last["message"]
            and "never overwrites" in last["message"]
        )
        assert Path(job.request.output).read_bytes() == before
    finally:
        job.cleanup()
    usage = subprocess.run(
        [sys.executable, "-m", "LabelSharingSegLib.worker"],
        env=job.environment(),
        capture_output=True,
        text=True,
    )
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_worker_errors_arrive_as_one_line(shipped_task_bundle):
    image, affine = _volume()
    job = WorkerJob.create("task", SHIPPED_TASK_BUNDLE, image, affine, device="cpu", task="NoSuchTask")
    worker = SubprocessWorker(job).start()
    with pytest.raises(LabelSharingSegError, match="NoSuchTask") as info:
        worker.result(TIMEOUT_S)
    assert "\n" not in str(info.value) and job.exitCode == 1
    assert not job.workDir.exists()


def test_runner_refuses_before_writing_anything(shipped_task_bundle, tmp_path):
    """The same runner the process runs, called in this process (fast): every refusal writes nothing."""
    image, affine = _volume()
    task = shipped_task_bundle.task_names()[0]
    cases = [
        ({"bundleId": "0" * 64}, "changed since it was loaded"),
        ({"options": {"sigma": 2}}, "unknown option"),
        ({"method": "os:system"}, "unknown method"),
        ({"imageAffine": (np.eye(4) * 3).tolist()}, "does not match"),
    ]
    for changes, message in cases:
        job = WorkerJob.create(
            "task", SHIPPED_TASK_BUNDLE, image, affine, device="cpu", task=task, tempRoot=tmp_path
        )
        request = WorkerRequest.fromDict({**job.request.toDict(), **changes})
        with pytest.raises(LabelSharingSegError, match=message):
            runRequest(request, lambda event: None)
        assert not Path(request.output).exists() and not Path(request.labelsOutput).exists()
        job.cleanup()
    job = WorkerJob.create(
        "task", SHIPPED_TASK_BUNDLE, image, affine, device="cpu", task=task, tempRoot=tmp_path
    )
    Path(job.request.labelsOutput).write_text("mine")
    with pytest.raises(InputError, match="never overwrites"):
        runRequest(job.request, lambda event: None)
    assert Path(job.request.labelsOutput).read_text() == "mine"
    job.cleanup()
    assert list(tmp_path.iterdir()) == []


def test_runner_checks_the_atlas_masks(lcs_bundle_path, tmp_path):
    image, affine = _volume()
    labels = [LabelInfo(1, "a", (1.0, 0.0, 0.0)), LabelInfo(2, "b", (0.0, 1.0, 0.0))]
    masks = np.zeros((2, 4, 4, 4), bool)
    job = WorkerJob.create(
        "atlas-labels",
        lcs_bundle_path,
        image,
        affine,
        masks=masks,
        masksAffine=np.eye(4),
        labels=labels,
        device="cpu",
        tempRoot=tmp_path,
    )
    request = WorkerRequest.fromDict({**job.request.toDict(), "atlasLabels": [{"value": 1, "name": "a"}]})
    with pytest.raises(InputError, match="expected a 4D mask volume with 1 masks"):
        runRequest(request, lambda event: None)
    job.cleanup()


def test_result_carries_the_alignment_report(tmp_path):
    from LabelSharingSegLib.engine.nifti_io import save_nifti

    request = WorkerRequest.fromDict(
        _request(output=str(tmp_path / "map.nii.gz"), labelsOutput=str(tmp_path / "labels.json"))
    )
    save_nifti(request.output, np.ones((3, 4, 5), np.int16), np.eye(4))
    Path(request.labelsOutput).write_text(labelsToJson([LabelInfo(1, "a", (1.0, 0.0, 0.0))]))
    job = WorkerJob(request, tmp_path)
    done = WorkerEvent("done", output=request.output, labelsOutput=request.labelsOutput, seconds=1.5)
    done.alignment, done.alignmentAccepted = "alignment refused: overlap 0.12", False
    job.feed(done.toLine())  # the last line may come without a newline
    job.finish(0)
    result = job.result()
    assert result.alignment.summary() == "alignment refused: overlap 0.12" and not result.alignment.accepted
    assert result.labelmap.shape == (3, 4, 5) and result.seconds == 1.5 and result.labels[0].name == "a"
    # an accepted but uncertain alignment (a flat optimum) is reported as such
    line = WorkerEvent(
        "done", alignment="UNCERTAIN", alignmentAccepted=True, alignmentConfident=False
    ).toLine()
    again = WorkerEvent.fromLine(line)
    assert again is not None and again.alignmentAccepted and not again.alignmentConfident

"""Run one worker request in this process: read the inputs, call the engine method, write the result.

The result is the label map (NIfTI, on the input image's grid and affine) and the labels JSON, each written
atomically; outputs that already exist are refused, never overwritten. Only the engine is imported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..engine.errors import BundleError, InputError, LabelSharingSegError
from .methods import checkOptions, resolveMethod
from .protocol import EVENT_DONE, EVENT_PROGRESS, KIND_TASK, WorkerEvent, WorkerRequest, labelsToJson

EventSink = Callable[[WorkerEvent], None]


def _refuseExisting(*paths: str) -> None:
    for path in paths:
        if Path(path).exists():
            raise InputError(f"{path}: already exists; the worker never overwrites a file")


def _readMasks(path: str, count: int) -> np.ndarray:
    from ..engine.nifti_io import load_nifti

    data, _ = load_nifti(path, dtype=np.uint8)
    if data.ndim != 4 or data.shape[-1] != count:
        raise InputError(
            f"{path}: expected a 4D mask volume with {count} masks in the last axis, got shape {data.shape}"
        )
    return np.moveaxis(data > 0, -1, 0)


def runRequest(request: WorkerRequest, emit: EventSink) -> WorkerEvent:
    """Run ``request``; ``emit`` receives progress events. Returns the final ``done`` event (not emitted)."""
    from ..engine.atomic import write_text_atomic
    from ..engine.bundle import load_bundle
    from ..engine.labels import LabelInfo
    from ..engine.nifti_io import load_nifti, save_nifti

    started = time.monotonic()
    _refuseExisting(request.output, request.labelsOutput)
    function = resolveMethod(request.method)
    options = checkOptions(function, request.method, request.options)

    def report(fraction: float, message: str) -> None:
        emit(WorkerEvent(EVENT_PROGRESS, fraction=min(1.0, max(0.0, float(fraction))), message=str(message)))

    def progress(fraction: float, message: str = "") -> None:  # the engine's 0..1 -> 0.05..0.95 overall
        report(0.05 + 0.9 * min(1.0, max(0.0, float(fraction))), message)

    report(0.0, "Loading the bundle")
    bundle = load_bundle(request.bundle)
    if request.bundleId and bundle.bundle_id != request.bundleId:
        raise BundleError(f"{request.bundle}: changed since it was loaded; load the bundle again")
    image, affine = load_nifti(request.image)
    if request.imageAffine is not None:
        exact = np.asarray(request.imageAffine, dtype=np.float64)
        if not np.allclose(exact, affine, rtol=1e-4, atol=1e-3):
            raise InputError(f"{request.image}: its affine does not match the request's imageAffine")
        affine = exact
    if request.kind == KIND_TASK:
        result = function(
            bundle, image, affine, request.task, device=request.device, progress=progress, **options
        )
    else:
        labels = [LabelInfo(s.value, s.name, tuple(s.color), s.terminology) for s in request.atlasLabels]
        masks = _readMasks(request.atlasMasks, len(labels))
        result = function(
            bundle, image, affine, masks, labels, device=request.device, progress=progress, **options
        )
    labelmap = np.asarray(getattr(result, "labelmap", None))
    if labelmap.shape != image.shape:
        raise LabelSharingSegError(
            f"method {request.method!r} returned a label map of shape {labelmap.shape} for an image of shape "
            f"{image.shape}; nothing was written"
        )
    report(0.97, "Writing the result")
    write_text_atomic(request.labelsOutput, labelsToJson(result.labels))
    try:
        save_nifti(request.output, labelmap, affine)
    except BaseException:
        Path(request.labelsOutput).unlink(missing_ok=True)  # both or neither
        raise
    alignment = getattr(result, "alignment", None)
    return WorkerEvent(
        EVENT_DONE,
        fraction=1.0,
        message="Done",
        output=request.output,
        labelsOutput=request.labelsOutput,
        seconds=round(time.monotonic() - started, 3),
        deviceNote=str(getattr(result, "device_note", "") or ""),
        alignment=alignment.summary() if alignment is not None else "",
        alignmentAccepted=bool(getattr(alignment, "accepted", True)),
        alignmentConfident=bool(getattr(alignment, "confident", True)),
        coverage=str(getattr(result, "coverage", "") or ""),
    )

"""The worker protocol: one request file in, JSON-line events on stdout, one result (label map + labels JSON).

Everything here is plain JSON-able dataclasses, so the same messages can later travel over HTTP to a GPU
server: a request names its inputs and outputs by path (a server would map them to uploads/downloads) and
the events are self-describing JSON objects. No engine, no torch, no MRML: safe to import anywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..engine.errors import InputError

PROTOCOL_VERSION = 1
KIND_TASK = "task"
KIND_ATLAS_LABELS = "atlas-labels"
KINDS = (KIND_TASK, KIND_ATLAS_LABELS)
# the engine function a kind runs when the request names no method (see methods.py)
DEFAULT_METHODS = {KIND_TASK: "task", KIND_ATLAS_LABELS: "lcs"}

EVENT_PROGRESS = "progress"
EVENT_DONE = "done"
EVENT_ERROR = "error"


def _fromDict(cls, data: Any, what: str):
    """Build dataclass ``cls`` from a JSON object, refusing unknown or missing keys with one clear line."""
    if not isinstance(data, dict):
        raise InputError(f"{what}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{what}: unknown key(s) {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as exc:  # a required key is missing
        raise InputError(f"{what}: {exc}") from None


@dataclass
class LabelSpec:
    """One output label: value in the label map, name and RGB colour (0..1)."""

    value: int
    name: str
    color: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    terminology: dict | None = None  # DICOM-style codes as in bundle.json, carried to the segments

    def __post_init__(self):
        if isinstance(self.value, bool) or not isinstance(self.value, int) or self.value < 1:
            raise InputError(f"label value must be a positive integer, got {self.value!r}")
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"label {self.value}: name must be a non-empty string")
        if not isinstance(self.color, (list, tuple)) or len(self.color) != 3:
            raise InputError(f"label {self.name!r}: color must be three numbers")
        try:
            color = [float(c) for c in self.color]
        except (TypeError, ValueError):
            raise InputError(f"label {self.name!r}: color must be three numbers") from None
        if not all(math.isfinite(c) and 0.0 <= c <= 1.0 for c in color):
            raise InputError(f"label {self.name!r}: color components must be within 0..1")
        self.color = color
        if self.terminology is not None and not isinstance(self.terminology, dict):
            raise InputError(f"label {self.name!r}: terminology must be a JSON object")

    @classmethod
    def fromDict(cls, data: Any) -> LabelSpec:
        return _fromDict(cls, data, "label")


@dataclass
class WorkerRequest:
    """One job. Paths are absolute; ``output`` (label map NIfTI) and ``labelsOutput`` (JSON) must not exist.

    ``method`` names the engine function (methods.py) and ``options`` are passed to it as keyword arguments,
    so a new engine method needs no protocol change. ``bundleId`` (sha256 of bundle.json) guards against
    the bundle file changing between loading it in Slicer and running the job.
    """

    bundle: str
    kind: str
    image: str
    output: str
    labelsOutput: str
    device: str = "auto"
    method: str = ""
    options: dict = field(default_factory=dict)
    task: str | None = None
    atlasMasks: str | None = None  # NIfTI, 4D uint8: (*atlas grid, K)
    atlasLabels: list = field(default_factory=list)  # LabelSpec dicts, one per mask, in mask order
    bundleId: str | None = None
    imageAffine: list | None = None  # exact 4x4 voxel->RAS (NIfTI headers hold it only in float32)
    protocol: int = PROTOCOL_VERSION

    def __post_init__(self):
        if self.protocol != PROTOCOL_VERSION:
            raise InputError(
                f"worker protocol {self.protocol!r} is not supported (this worker speaks {PROTOCOL_VERSION}); "
                "update the extension"
            )
        if self.kind not in KINDS:
            raise InputError(f"unknown job kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        for name in ("bundle", "image", "output", "labelsOutput"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InputError(f"request: '{name}' must be a non-empty path")
        if not isinstance(self.options, dict):
            raise InputError("request: 'options' must be a JSON object")
        if not isinstance(self.method, str):
            raise InputError("request: 'method' must be a string")
        self.method = self.method or DEFAULT_METHODS[self.kind]
        if self.kind == KIND_TASK and not self.task:
            raise InputError("request: a task job needs 'task'")
        if self.kind == KIND_ATLAS_LABELS:
            if not self.atlasMasks:
                raise InputError("request: an atlas-labels job needs 'atlasMasks'")
            if not isinstance(self.atlasLabels, list) or not self.atlasLabels:
                raise InputError("request: an atlas-labels job needs 'atlasLabels'")
            self.atlasLabels = [
                label if isinstance(label, LabelSpec) else LabelSpec.fromDict(label)
                for label in self.atlasLabels
            ]
        if self.imageAffine is not None:
            rows = self.imageAffine
            if not (
                isinstance(rows, list)
                and len(rows) == 4
                and all(isinstance(r, list) and len(r) == 4 for r in rows)
                and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for r in rows
                    for v in r
                )
            ):
                raise InputError("request: 'imageAffine' must be a 4x4 array of finite numbers")
        if self.output == self.labelsOutput:
            raise InputError("request: 'output' and 'labelsOutput' must differ")

    def toDict(self) -> dict:
        return asdict(self)

    def toJson(self) -> str:
        return json.dumps(self.toDict(), indent=1)

    @classmethod
    def fromDict(cls, data: Any) -> WorkerRequest:
        return _fromDict(cls, data, "request")

    @classmethod
    def fromJson(cls, text: str) -> WorkerRequest:
        return cls.fromDict(parseJson(text, "request"))


@dataclass
class WorkerEvent:
    """One line on the worker's stdout. progress: fraction + message; done: outputs + seconds;
    error: errorType + message (one line, the worker's own traceback goes to stderr)."""

    event: str
    fraction: float = 0.0
    message: str = ""
    errorType: str = ""
    output: str = ""
    labelsOutput: str = ""
    seconds: float = 0.0
    deviceNote: str = ""
    alignment: str = ""  # done: the engine's alignment summary when the scan was aligned first
    alignmentAccepted: bool = True
    # False: accepted, but uncertain (a flat optimum); the user is told to check the result
    alignmentConfident: bool = True
    # done: which part of the scan was segmented, when not all of it (engine result.coverage)
    coverage: str = ""

    def toLine(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def fromLine(cls, line: str) -> WorkerEvent | None:
        """The event on ``line``, or None for a line that is not a protocol event (e.g. a library's print)."""
        line = line.strip()
        if not line.startswith("{"):
            return None
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            return None
        if not isinstance(data, dict) or data.get("event") not in (EVENT_PROGRESS, EVENT_DONE, EVENT_ERROR):
            return None
        try:
            return _fromDict(cls, data, "event")
        except InputError:
            return None


def parseJson(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise InputError(f"{what}: not valid JSON ({exc})") from None


def labelsToJson(labels) -> str:
    """The result's labels JSON: ``{"protocol": 1, "labels": [{"value", "name", "color"}, ...]}``."""
    items = [
        {
            "value": int(label.value),
            "name": str(label.name),
            "color": [float(c) for c in label.color],
            "terminology": getattr(label, "terminology", None) or None,
        }
        for label in labels
    ]
    return json.dumps({"protocol": PROTOCOL_VERSION, "labels": items}, indent=1)


def labelsFromJson(text: str) -> list[LabelSpec]:
    data = parseJson(text, "labels")
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list):
        raise InputError("labels: expected an object with a 'labels' list")
    return [LabelSpec.fromDict(item) for item in data["labels"]]

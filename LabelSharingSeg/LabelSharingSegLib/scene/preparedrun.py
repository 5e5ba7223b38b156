"""PreparedRun: one segmentation run captured on the main thread, computed on arrays only.

``SegmentationSceneLogic.prepare...`` fills it from MRML nodes; ``compute`` runs the engine in this process
(``applyRun`` then writes the result back), or the logic hands it to a worker process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.errors import LabelSharingSegError
from ..worker.methods import resolveMethod
from ..worker.protocol import DEFAULT_METHODS, KIND_ATLAS_LABELS, KIND_TASK
from . import geometry as geo
from .jobs import cancelCallable, progressCallable, raiseIfCancelled

TASK_KIND = KIND_TASK
ATLAS_KIND = KIND_ATLAS_LABELS


@dataclass
class PreparedRun:
    """Everything a run needs, captured on the main thread. ``compute`` touches no MRML node."""

    kind: str
    bundle: Any
    device: str
    image: np.ndarray
    volumeGeometry: geo.VolumeGeometry
    volumeNode: Any
    outputNode: Any
    outputName: str
    taskName: str | None = None
    masks: np.ndarray | None = None
    masksAffine: np.ndarray | None = None  # the atlas grid the masks lie on (voxel -> RAS)
    labels: list = field(default_factory=list)
    terminologies: dict = field(default_factory=dict)
    description: str = ""
    align: bool | None = None  # register to the bundle's reference first; None: when the bundle has one
    warnings: list[str] = field(default_factory=list)  # about the input, for the log and the status line
    method: str = ""  # engine method (worker/methods.py); "" = the kind's default
    options: dict = field(default_factory=dict)  # extra keyword arguments for the method

    @property
    def methodName(self) -> str:
        return self.method or DEFAULT_METHODS[self.kind]

    @property
    def methodOptions(self) -> dict:
        return {"align": self.align, **self.options}

    def compute(self, progress=None, cancel=None):
        """Run the engine in this process on arrays only. Returns the engine's SegmentationResult."""
        report = progressCallable(progress)
        isCancelled = cancelCallable(cancel)
        raiseIfCancelled(isCancelled)
        function = resolveMethod(self.methodName)
        affine = self.volumeGeometry.engineAffine
        common = dict(device=self.device, progress=report, cancel=isCancelled, **self.methodOptions)
        if self.kind == TASK_KIND:
            result = function(self.bundle, self.image, affine, self.taskName, **common)
        else:
            result = function(self.bundle, self.image, affine, self.masks, self.labels, **common)
        raiseIfCancelled(isCancelled)
        labelmap = np.asarray(result.labelmap)
        if labelmap.shape != tuple(self.volumeGeometry.shape):
            raise LabelSharingSegError(
                f"internal error: the engine returned a label map of shape {labelmap.shape} for a volume of "
                f"shape {tuple(self.volumeGeometry.shape)}; nothing was written"
            )
        return result

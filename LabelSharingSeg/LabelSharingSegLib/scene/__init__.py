"""Scene side: MRML nodes <-> engine arrays. Imports slicer MRML classes, never Qt.

Modules: ``geometry`` (volume nodes <-> [i, j, k] arrays + voxel->RAS affine), ``segments`` (segmentation
nodes: names, colours, terminology, masks), ``jobs`` (worker thread, progress, cancel), ``packages``
(missing Python packages; never installs), ``logic`` (:class:`SegmentationSceneLogic`, every decision).

Names are imported lazily so that ``packages`` can be used where ``slicer`` or torch are missing.
"""

_LAZY = {
    "SegmentationSceneLogic": "logic",
    "PreparedRun": "logic",
    "DEVICE_CHOICES": "logic",
    "BackgroundJob": "jobs",
    "JobStatus": "jobs",
    "missingPackages": "packages",
    "missingPackagesMessage": "packages",
    "pipRequirements": "packages",
    "torchAvailable": "packages",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Scene side: MRML nodes <-> engine arrays. Imports slicer MRML classes, never Qt.

Modules: ``geometry`` (volume nodes <-> [i, j, k] arrays + voxel->RAS affine), ``segments`` (segmentation
nodes: names, colours, terminology, masks), ``segmentlist`` (the atlas segment checklist following segment
events), ``transaction`` (undo scene writes on failure), ``bundlechoice`` (picked path -> bundle path),
``jobs`` (progress and cancel callbacks), ``packages`` (missing packages and the install plan; never installs),
``atlassegments`` (the drawn atlas segmentation: whose it is, its segments as masks), ``preparedrun`` (a run
captured from the scene, computed on arrays), ``logic`` (:class:`SegmentationSceneLogic`, every decision). Runs
compute in ``LabelSharingSegLib.worker``.

Names are imported lazily so that ``packages`` can be used where ``slicer`` or torch are missing.
"""

_LAZY = {
    "SegmentationSceneLogic": "logic",
    "PreparedRun": "preparedrun",
    "DEVICE_CHOICES": "logic",
    "SegmentChecklist": "segmentlist",
    "SceneTransaction": "transaction",
    "resolveBundlePath": "bundlechoice",
    "pipPlan": "packages",
    "missingPackages": "packages",
    "missingPackagesMessage": "packages",
    "torchAvailable": "packages",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

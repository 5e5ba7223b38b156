"""Which engine function a request's ``method`` runs, and how its ``options`` reach it.

A method is a short alias (``task``, ``lcs``) or ``module:function`` naming a public function of an engine
module (``LabelSharingSegLib.engine.<module>``), so a new engine method (e.g. registration propagation of
atlas labels) is usable by naming it; the protocol does not change. The calling convention is fixed per kind:

- task:         ``function(bundle, image, affine, task, device=, progress=, cancel=, **options)``
- atlas-labels: ``function(bundle, image, affine, masks, labels, device=, progress=, cancel=, **options)``

and the function returns an object with ``labelmap`` (on the input grid) and ``labels`` (LabelInfo list), as
the engine's ``SegmentationResult``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from ..engine.errors import InputError

METHOD_ALIASES = {
    "task": "inference:segment_task",
    "lcs": "atlas_segmentation:segment_atlas_labels",
}
# keyword arguments the worker itself passes: options cannot override them
RESERVED_OPTIONS = frozenset({"device", "progress", "cancel", "network"})


def _identifier(text: str) -> bool:
    return text.isidentifier() and not text.startswith("_")


def resolveMethod(name: str) -> Callable:
    """The engine function for ``name``; InputError for anything that is not a public engine function."""
    target = METHOD_ALIASES.get(name, name)
    moduleName, separator, functionName = target.partition(":")
    if not separator or not _identifier(moduleName) or not _identifier(functionName):
        raise InputError(
            f"unknown method {name!r}: use one of {', '.join(METHOD_ALIASES)} or 'module:function' of the engine"
        )
    try:
        module = importlib.import_module(f"{__package__.rpartition('.')[0]}.engine.{moduleName}")
    except ModuleNotFoundError:
        raise InputError(f"unknown method {name!r}: the engine has no module {moduleName!r}") from None
    function = getattr(module, functionName, None)
    if not inspect.isfunction(function) or function.__module__ != module.__name__:
        raise InputError(f"unknown method {name!r}: engine.{moduleName} defines no function {functionName!r}")
    return function


def checkOptions(function: Callable, name: str, options: dict) -> dict:
    """``options`` as keyword arguments for ``function``; refuses reserved or unknown names with one line."""
    reserved = sorted(RESERVED_OPTIONS & set(options))
    if reserved:
        raise InputError(f"method {name!r}: option(s) {', '.join(reserved)} are set by the worker itself")
    parameters = inspect.signature(function).parameters
    takesAny = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = sorted(
        p.name
        for p in parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in RESERVED_OPTIONS
    )
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takesAny:
        raise InputError(
            f"method {name!r}: unknown option(s) {', '.join(unknown)} (accepted: {', '.join(accepted) or 'none'})"
        )
    return dict(options)

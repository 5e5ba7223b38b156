"""Inference in a separate process: ``python -m LabelSharingSegLib.worker REQUEST.json``.

Slicer's main thread holds the Python GIL while its event loop idles, so a compute thread inside Slicer crawls;
a worker process runs at full speed and is cancelled by ending it. Modules: ``protocol`` (request, events,
result: plain JSON dataclasses), ``methods`` (method name -> engine function), ``runner`` (runs one request),
``client`` (the caller's side: files, command line, progress lines, result, cancel, cleanup). Imports only the
engine (docs/WORKER.md describes the protocol).
"""

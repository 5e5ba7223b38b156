"""``python -m LabelSharingSegLib.worker REQUEST.json``: run one job, JSON-line events on stdout.

Exit codes: 0 done (last line is a ``done`` event), 1 refused or failed with a LabelSharingSegError (last line
is an ``error`` event with one clear message), 2 unexpected error (``error`` event; traceback on stderr),
2 also for a wrong command line. Killing the process is how a job is cancelled: nothing is written then.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from ..engine.errors import LabelSharingSegError
from .protocol import EVENT_ERROR, WorkerEvent, WorkerRequest
from .runner import runRequest


def _emit(event: WorkerEvent) -> None:
    sys.stdout.write(event.toLine() + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m LabelSharingSegLib.worker REQUEST.json\n")
        return 2
    try:
        path = Path(argv[0])
        if not path.is_file():
            raise LabelSharingSegError(f"{path}: request file not found")
        request = WorkerRequest.fromJson(path.read_text(encoding="utf-8"))
        done = runRequest(request, _emit)
    except LabelSharingSegError as error:
        _emit(WorkerEvent(EVENT_ERROR, message=str(error), errorType=type(error).__name__))
        return 1
    except Exception as error:  # unexpected: one line for the caller, the traceback for the log
        traceback.print_exc(file=sys.stderr)
        _emit(
            WorkerEvent(
                EVENT_ERROR, message=f"{type(error).__name__}: {error}", errorType=type(error).__name__
            )
        )
        return 2
    _emit(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())

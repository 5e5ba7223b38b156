"""The ``lsseg`` command line. Each command group lives in its own module and registers itself here.

Every failure ends in one line on stderr (``lsseg: error: ...``) and a non-zero exit: 2 for errors of the
project's exception family (bad input, refused output), 1 for anything unexpected, 130 for Ctrl-C; ``--debug``
adds the traceback. Output cut off by a closed pipe (``lsseg info ... | head -1``) ends quietly. Everything
printed is stripped of terminal control sequences (see :mod:`lsseg_training.terminal`).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from LabelSharingSegLib import __version__
from LabelSharingSegLib.engine.errors import LabelSharingSegError
from lsseg_training.terminal import PrintableStream

# Modules that add subcommands: each has ``register(subparsers)`` and sets ``func`` on its parsers.
_COMMAND_MODULES = (
    "lsseg_training.commands_engine",  # plan, segment, info
    "lsseg_training.data.cli",  # data build / phantom / check
    "lsseg_training.train_cli",  # train, add-task, evaluate
    "lsseg_training.demo",  # demo
    "lsseg_training.bench",  # bench
    "lsseg_training.experiments.cli",  # experiment labelsharing / lcs
)

EXIT_REFUSED = 2
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="lsseg",
        description="LabelSharingSeg: label-sharing and atlas-conditioned (LCS) segmentation - "
        "plan shared label spaces, build data, train, evaluate and segment.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command group not part of this build
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = PrintableStream(stdout), PrintableStream(stderr)
    try:
        return exit_code(lambda: _parse_and_run(argv), "--debug" in (sys.argv[1:] if argv is None else argv))
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _parse_and_run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and usage errors print (and may meet a closed pipe) here
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    return int(result or 0)


def exit_code(call, debug: bool = False) -> int:
    """Run ``call()`` as a command: its exit status, or one clear error line and 2 (refused input or output), 1
    (anything unexpected), 130 (Ctrl-C) or 141 (the reader of stdout went away); the traceback only with ``debug``."""
    try:
        return int(call() or 0)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except LabelSharingSegError as exc:
        return _fail(debug, str(exc), EXIT_REFUSED)
    except KeyboardInterrupt:
        return _fail(debug, "interrupted", EXIT_INTERRUPTED, prefix="lsseg: ")
    except OSError as exc:  # outside the atomic writers, which say more
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return _fail(debug, f"{where}{exc.strerror or exc}", EXIT_UNEXPECTED)
    except MemoryError:
        return _fail(debug, "out of memory (try a smaller input or another device)", EXIT_UNEXPECTED)
    except Exception as exc:  # a bug: still one line, the traceback with --debug
        return _fail(
            debug,
            f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback and please report it)",
            EXIT_UNEXPECTED,
        )


def _fail(debug: bool, message: str, code: int, prefix: str = "lsseg: error: ") -> int:
    if debug:
        traceback.print_exc()
    print(f"{prefix}{message}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    """The reader went away: point the process's stdout at /dev/null so the flush at exit cannot fail again
    (only the real stdout; a stream a caller put in its place is left alone)."""
    stream = getattr(sys.stdout, "wrapped", sys.stdout)
    if stream is not sys.__stdout__:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, AttributeError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())

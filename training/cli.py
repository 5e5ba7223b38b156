"""The ``lsseg`` command line. Each command group lives in its own module and registers itself here.

Errors of the project's exception family exit non-zero with one clear line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from LabelSharingSegLib import __version__
from LabelSharingSegLib.engine.errors import LabelSharingSegError

# Modules that add subcommands: each has ``register(subparsers)`` and sets ``func`` on its parsers.
_COMMAND_MODULES = (
    "lsseg_training.commands_engine",  # plan, segment, info
    "lsseg_training.data.cli",  # data build / phantom / check
    "lsseg_training.train_cli",  # train, add-task, evaluate
    "lsseg_training.demo",  # demo
    "lsseg_training.bench",  # bench
)


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


def exit_code(call, debug: bool = False) -> int:
    """Run ``call()`` as a command: its exit status, or 2 with one clear error line (the traceback only with
    ``debug``), or 130 after Ctrl-C."""
    try:
        return int(call() or 0)
    except LabelSharingSegError as exc:
        if debug:
            traceback.print_exc()
        print(f"lsseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lsseg: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return exit_code(lambda: args.func(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())

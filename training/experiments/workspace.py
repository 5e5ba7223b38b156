"""An experiment's output folder: its configuration, its runs' bundles, its evaluations, its log.

Layout: ``experiment.json`` (what was asked: data, budgets, seeds, command), ``runs/<run>`` (bundles, with their
``.training`` checkpoint folders beside them), ``evals/<run>`` (metrics.csv of each evaluation), ``report.md`` and the
plots. Running the same experiment again continues it: finished runs and evaluations are skipped. Running it with a
different configuration into the same folder is refused (the differing settings are named), so a report never mixes
results of two configurations.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

from LabelSharingSegLib.engine.atomic import write_text_atomic
from LabelSharingSegLib.engine.errors import InputError

CONFIG = "experiment.json"


def _comparable(config: dict, key: str):
    """A setting as a rerun must repeat it: how the runs are watched (--verbose) does not change their results."""
    value = config.get(key)
    if key == "budget" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "quiet"}
    return value


class Workspace:
    def __init__(
        self, root: Path, config: dict, *, echo: bool = True, extendable: tuple[str, ...] = ()
    ) -> None:
        """``extendable``: list-valued settings that name extra runs; a rerun may add entries to them (the finished
        runs stay valid), never drop any."""
        self.root = Path(root)
        self.echo = echo
        if not self.root.parent.is_dir():
            raise InputError(f"{self.root.parent}: output folder does not exist; create it first")
        stored_path = self.root / CONFIG
        if stored_path.is_file():
            stored = json.loads(stored_path.read_text(encoding="utf-8"))
            differing = sorted(
                k for k in set(stored) | set(config) if _comparable(stored, k) != _comparable(config, k)
            )
            grown = [
                k
                for k in differing
                if k in extendable and set(stored.get(k) or []) <= set(config.get(k) or [])
            ]
            differing = [k for k in differing if k not in grown]
            if grown and not differing:
                write_text_atomic(stored_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
            if differing:
                raise InputError(
                    f"{self.root} holds an experiment with other settings ({', '.join(differing)}); "
                    "rerun with the same settings to continue it, or choose a new --out"
                )
            self.resumed = True
        else:
            if self.root.exists() and any(self.root.iterdir()):
                raise InputError(f"{self.root}: exists and is not an experiment folder; choose a new --out")
            self.root.mkdir(exist_ok=True)
            write_text_atomic(stored_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
            self.resumed = False
        self.config = config
        (self.root / "runs").mkdir(exist_ok=True)
        (self.root / "evals").mkdir(exist_ok=True)

    def run(self, name: str) -> Path:
        return self.root / "runs" / name

    def evaluation(self, name: str) -> Path:
        return self.root / "evals" / name

    def cached_rows(self, name: str, compute) -> list[dict]:
        """Rows computed once per experiment folder and kept as ``name`` (a CSV); later runs read them back."""
        from .runner import read_csv, write_csv

        path = self.root / name
        if not path.is_file():
            write_csv(path, compute())
        return read_csv(path)

    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with open(self.root / "log.txt", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if self.echo:
            print(message, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def capture(self):
        """Training's own progress lines go to log.txt (and the terminal when echoing)."""
        if self.echo:
            yield
            return
        with open(self.root / "log.txt", "a", encoding="utf-8") as handle, contextlib.redirect_stdout(handle):
            yield

    def timed(self, name: str, fn, *args, **kwargs):
        """Run one training step of the plan with its output captured; log whether it trained or was skipped."""
        start = time.perf_counter()
        with self.capture():
            result = fn(*args, **kwargs)
        if isinstance(result, bool):  # a training run: False when an earlier invocation finished it
            self.step(name, result, time.perf_counter() - start)
        return result

    def step(self, name: str, did_work: bool, seconds: float) -> None:
        """Log one run: done now (with its time) or skipped because an earlier invocation did it."""
        self.log(f"{name}: done in {seconds:.1f} s" if did_work else f"{name}: already done, skipped")

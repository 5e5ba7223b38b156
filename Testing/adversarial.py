"""The adversarial suite's table runner: one row per bad input, hostile file or fault (issue 14).

A row (:class:`Case`) says what is run - ``lsseg`` arguments (run in-process through ``main(argv)``) or a call
into the engine - and what must hold afterwards:

* the exit code (a call that raises a LabelSharingSegError counts as exit 2, as the CLI would exit);
* the first line on stderr (a regex; failures must start with ``lsseg:``), never a traceback, and no terminal
  escape character anywhere in stdout or stderr;
* the files afterwards: exactly ``creates`` are new in the row's output folder, exactly ``changes`` were
  replaced, exactly ``removes`` are gone, and every input (the shared, read-only folder) is unchanged by
  checksum - so nothing is lost, overwritten or left behind.

New commands join by adding rows: a test module builds its inputs once (a fixture returning a
:class:`Workspace` root), lists its ``Case`` rows and calls :func:`run_case` from one parametrised test.
Placeholders in arguments: ``{in}`` the shared inputs folder, ``{out}`` the row's own output folder, plus any
name the module adds to ``Workspace.names``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from LabelSharingSegLib.engine.errors import LabelSharingSegError


@dataclass
class Workspace:
    inputs: Path  # shared inputs, built once per module; rows must never change them
    out: Path  # the row's own folder for outputs
    names: dict[str, str] = field(default_factory=dict)  # extra placeholders

    def fill(self, text: str) -> str:
        return text.format(**{"in": str(self.inputs), "out": str(self.out), **self.names})


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...] | None = None  # lsseg arguments with placeholders
    call: Callable[[Workspace], object] | None = None  # or a call into the engine
    exit: int = 0
    error: str | None = None  # regex searched in the first "lsseg..." stderr line (rows that fail)
    details: str | None = None  # regex searched in the whole of stderr
    stdout: str | None = None  # regex searched in stdout
    creates: tuple[str, ...] = ()  # paths relative to the row's output folder
    changes: tuple[str, ...] = ()
    removes: tuple[str, ...] = ()  # fnmatch patterns (a killed process's temporary names hold its pid)
    setup: Callable[[Workspace], None] | None = None  # prepares the output folder (before the checksums)
    faults: Callable[[pytest.MonkeyPatch, Workspace], None] | None = None  # injected failures
    check: Callable[[Workspace], None] | None = None  # extra assertions afterwards

    def __post_init__(self):
        if (self.argv is None) == (self.call is None):
            raise ValueError(f"{self.id}: give argv or call")
        if self.exit != 0 and self.error is None and self.stdout is None:
            raise ValueError(f"{self.id}: a failing row names its error (or, for a report, its stdout)")


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden ones too; links by their target text)."""
    sums = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                sums[rel] = "link:" + os.readlink(path)
            else:
                sums[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        for name in dirs:
            rel = str(Path(folder, name).relative_to(root)) + "/"
            sums[rel] = "dir"
    return sums


def _run(case: Case, ws: Workspace, capsys) -> tuple[int, str, str]:
    from lsseg_training.cli import main

    if case.argv is not None:
        try:
            code = main([ws.fill(a) for a in case.argv])
        except SystemExit as exc:  # argparse refusals
            code = exc.code if isinstance(exc.code, int) else 2
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    try:
        case.call(ws)
        code, err = 0, ""
    except LabelSharingSegError as exc:
        code, err = 2, f"lsseg: error: {exc}\n"
    captured = capsys.readouterr()
    return code, captured.out, captured.err + err


def run_case(case: Case, ws: Workspace, capsys, monkeypatch) -> None:
    umask = os.umask(0o022)  # rows may change the umask; it is restored afterwards
    os.umask(umask)
    try:
        _run_and_check(case, ws, capsys, monkeypatch)
    finally:
        os.umask(umask)


def _run_and_check(case: Case, ws: Workspace, capsys, monkeypatch) -> None:
    if case.setup is not None:
        case.setup(ws)
    inputs_before = checksums(ws.inputs)
    out_before = checksums(ws.out)
    if case.faults is not None:
        case.faults(monkeypatch, ws)
    try:
        code, out, err = _run(case, ws, capsys)
    finally:
        monkeypatch.undo()
    report = f"\n[{case.id}] exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"
    assert "\x1b" not in out + err, "terminal escape character printed" + report
    assert "Traceback" not in err, "traceback printed" + report
    assert code == case.exit, report
    first = next((line for line in err.splitlines() if line.startswith("lsseg")), "")  # after a usage line
    if case.error is not None:
        assert first, "no 'lsseg...' error line on stderr" + report
        assert re.search(case.error, first), f"first stderr line does not match {case.error!r}" + report
    if case.details is not None:
        assert re.search(case.details, err), f"stderr does not match {case.details!r}" + report
    if case.stdout is not None:
        assert re.search(case.stdout, out), f"stdout does not match {case.stdout!r}" + report
    assert checksums(ws.inputs) == inputs_before, "an input changed" + report
    out_after = checksums(ws.out)
    created = sorted(set(out_after) - set(out_before))
    removed = sorted(set(out_before) - set(out_after))
    changed = sorted(k for k in set(out_before) & set(out_after) if out_before[k] != out_after[k])
    assert created == sorted(case.creates), (
        f"files created {created}, expected {sorted(case.creates)}" + report
    )
    unmatched = [p for p in case.removes if not any(fnmatch.fnmatch(r, p) for r in removed)]
    unexpected = [r for r in removed if not any(fnmatch.fnmatch(r, p) for p in case.removes)]
    assert not unmatched and not unexpected, (
        f"files removed {removed}, expected {list(case.removes)}" + report
    )
    assert changed == sorted(case.changes), (
        f"files changed {changed}, expected {sorted(case.changes)}" + report
    )
    if case.check is not None:
        case.check(ws)


def ids(cases: list[Case]) -> list[str]:
    names = [c.id for c in cases]
    assert len(set(names)) == len(names), "row ids repeat"
    return names

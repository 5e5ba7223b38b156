"""Adversarial suite, commands: ``lsseg segment``, ``plan``, ``info`` and ``data check`` against bad inputs,
colliding or existing outputs and injected faults (disk full, permission denied, Ctrl-C, a failing rename,
a bug), plus a few real subprocesses (a closed pipe, a SIGKILL during a write).

Each row is one case; see Testing/adversarial.py for what every row checks.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from adversarial import Case, Workspace, ids, run_case
from conftest import atlas_volume

DEAD_PID = subprocess.run(
    [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
)
DEAD_PID = int(DEAD_PID.stdout)  # a process that has ended: its temporary files are stale
LONG = "s" * 248  # 248 + len(".nii.gz") = 255 bytes, the longest valid file name


def _save(path: Path, array, affine=None, dtype=None) -> None:
    array = np.asarray(array) if dtype is None else np.asarray(array, dtype=dtype)
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine), str(path))


@pytest.fixture(scope="module")
def workspace_root(tmp_path_factory, ls_bundle_path, lcs_bundle_path):
    from lsseg_training.data.phantom import make_phantom_tasks

    root = tmp_path_factory.mktemp("adversarial_cli")
    shutil.copytree(ls_bundle_path, root / "bundles" / "ls")
    shutil.copytree(lcs_bundle_path, root / "bundles" / "lcs")
    img = root / "img"
    img.mkdir()
    rng = np.random.default_rng(0)
    scan = rng.random((30, 34, 22)).astype(np.float32)
    _save(img / "scan.nii.gz", scan)
    _save(img / "scan.nii", scan)
    _save(img / "scan2d.nii.gz", scan[:, :, 0])
    _save(img / "slab1.nii.gz", scan[:, :, :1])
    _save(img / "zeros.nii.gz", np.zeros_like(scan))
    _save(img / "const.nii.gz", np.full_like(scan, 5.0))
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        bad = scan.copy()
        bad[3, 4, 5] = value
        _save(img / f"{name}.nii.gz", bad)
    _save(img / "complex.nii.gz", scan.astype(np.complex64) * (1 + 1j))
    _save(img / "channels.nii.gz", np.stack([scan] * 3, axis=-1))
    _save(img / "five_d.nii.gz", rng.random((8, 8, 8, 2, 2)).astype(np.float32))
    _save(img / "uint8.nii.gz", (scan * 255).astype(np.uint8))
    singular = nib.Nifti1Image(scan, None)
    singular.set_sform(np.diag([1.5, 0.0, 2.0, 1.0]), code=2)  # nibabel cannot store it as a qform
    nib.save(singular, str(img / "singular.nii.gz"))
    (img / "corrupt.nii.gz").write_bytes(rng.bytes(500))
    (img / "corrupt_gzip.nii.gz").write_bytes(gzip.compress(rng.bytes(500)))
    whole = (img / "scan.nii.gz").read_bytes()
    (img / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    (img / "empty.nii.gz").write_bytes(b"")
    header = nib.Nifti1Header()
    header.set_data_shape((1000, 1000, 400))  # declares 1.6 GB of float32 voxels
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    declared = header.binaryblock + b"\0" * 4 + rng.bytes(64)
    (img / "declares_huge.nii").write_bytes(declared)
    (img / "declares_huge.nii.gz").write_bytes(gzip.compress(declared))
    (img / "notes.txt").write_text("not an image")
    (img / "folder.nii.gz").mkdir()
    (img / "folder.nii.gz" / "inside.txt").write_text("a folder named like an image")
    atlas_image, atlas_labels, atlas_affine, _ = atlas_volume()
    _save(img / "target.nii.gz", atlas_image, atlas_affine)
    drawn = np.where(atlas_labels == 1, 7, atlas_labels).astype(np.int16)
    _save(img / "drawn.nii.gz", drawn, atlas_affine)
    (img / "drawn.csv").write_text("value,name,color\n7,my structure,#ff8000\n")
    (img / "bad_names.csv").write_text("this is,not\na names,table,at all,really\n")
    float_map = drawn.astype(np.float32)
    float_map[0, 0, 0] = np.nan
    _save(img / "drawn_nan.nii.gz", float_map, atlas_affine)
    _save(img / "drawn_frac.nii.gz", drawn.astype(np.float32) * 1.5, atlas_affine)
    _save(img / "drawn_empty.nii.gz", np.zeros_like(drawn), atlas_affine)
    _save(img / "drawn_cropped_grid.nii.gz", drawn[:-2], atlas_affine)  # inside the atlas: resampled onto it
    moved = atlas_affine.copy()
    moved[0, 3] += 16.0  # 8 voxels along x: the blobs near the atlas's far x face now reach past it
    _save(img / "drawn_outside.nii.gz", drawn, moved)
    data = root / "data"
    make_phantom_tasks(data, tasks=2, dims=2, size=32, cases=2, test_cases=0)
    for name, text in {
        "deep": "[" * 100_000 + "]" * 100_000,
        "huge_int": '{"name": "x", "numTraining": ' + "9" * 5000 + "}",
        "listjson": "[1, 2]",
        "inflabel": None,  # labels {"structure": 1e999}: an infinite label value
    }.items():
        folder = shutil.copytree(data / "Dataset900_Phantom0", data / f"Dataset95{len(name)}_{name}")
        if text is None:
            meta = json.loads((folder / "dataset.json").read_text())
            text = json.dumps(meta).replace('"labels": {', '"labels": {"structure": 1e999, ', 1)
        (folder / "dataset.json").write_text(text)
    return root


@pytest.fixture
def workspace(workspace_root, tmp_path):
    return Workspace(workspace_root, tmp_path)


# ---------------------------------------------------------------------------------------------- helpers

LS = ("segment", "{in}/bundles/ls", "--task", "brain", "--device", "cpu", "--quiet")
SCAN = ("-i", "{in}/img/scan.nii.gz")
LCS = (
    "segment",
    "{in}/bundles/lcs",
    "-i",
    "{in}/img/target.nii.gz",
    "--device",
    "cpu",
    "--quiet",
    "--align",
    "off",
)
OUT = ("-o", "{out}/seg.nii.gz")
SEG = ("seg.nii.gz", "seg.csv")
PLAN = ("plan", "{in}/data/Dataset900_Phantom0", "{in}/data/Dataset901_Phantom1")


def existing(*names: str):
    def setup(ws: Workspace) -> None:
        for name in names:
            (ws.out / name).write_text(f"the user's own {name}\n")

    return setup


def _link(kind: str):
    def setup(ws: Workspace) -> None:
        scan = ws.inputs / "img" / "scan.nii.gz"
        if kind == "symlink":
            (ws.out / "link.nii.gz").symlink_to(scan)
        else:
            os.link(scan, ws.out / "link.nii.gz")

    return setup


def folder_at(name: str):
    def setup(ws: Workspace) -> None:
        (ws.out / name).mkdir()
        (ws.out / name / "keep.txt").write_text("mine")

    return setup


def _fail_writes(exc: BaseException, after_bytes: int = 10):
    """Fault: writing an output (a temporary part) writes a little, then fails with ``exc``."""

    def faults(monkeypatch, ws):
        from LabelSharingSegLib.engine import nifti_io

        def failing(path, *args, **kwargs):
            Path(path).write_bytes(b"x" * after_bytes)
            raise exc

        monkeypatch.setattr(nifti_io, "write_nifti_file", failing)
        import lsseg_training.commands_engine as commands

        monkeypatch.setattr(commands, "write_nifti_file", failing)

    return faults


def _fail_text_parts(exc: BaseException):
    """Fault: text written to a temporary part (names table, JSON) fails with ``exc`` after a few bytes."""

    def faults(monkeypatch, ws):
        original_text, original_bytes = Path.write_text, Path.write_bytes

        def text(self, data, *args, **kwargs):
            if self.name.startswith(".lsseg-part-"):
                original_bytes(self, b"partial")
                raise exc
            return original_text(self, data, *args, **kwargs)

        def data(self, content):
            if self.name.startswith(".lsseg-part-"):
                original_bytes(self, content[:7])
                raise exc
            return original_bytes(self, content)

        monkeypatch.setattr(Path, "write_text", text)
        monkeypatch.setattr(Path, "write_bytes", data)

    return faults


def _second_rename_fails(monkeypatch, ws):
    from LabelSharingSegLib.engine import atomic

    calls = []
    original = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".lsseg-part-") and not Path(src).name.endswith(".old"):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(errno.EIO, "Input/output error", str(dst))
        return original(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "replace", replace)


def _part_creation_denied(monkeypatch, ws):
    from LabelSharingSegLib.engine import atomic

    original = os.open

    def guarded(path, flags, mode=0o777, *args, **kwargs):
        if ".lsseg-part-" in str(path) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return original(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "open", guarded)


def _folder_not_writable(monkeypatch, ws):
    from LabelSharingSegLib.engine import outputs

    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)


def _engine_raises(exc: BaseException):
    def faults(monkeypatch, ws):
        from LabelSharingSegLib.engine import inference

        def broken(*args, **kwargs):
            raise exc

        monkeypatch.setattr(inference, "segment_task", broken)

    return faults


def _umask(value: int):
    def faults(monkeypatch, ws):
        os.umask(value)  # the runner restores the umask

    return faults


def _modes(expected: int, *names: str):
    def check(ws: Workspace) -> None:
        for name in names:
            assert stat.S_IMODE((ws.out / name).stat().st_mode) == expected, name

    return check


def _stale_parts(ws: Workspace) -> None:
    (ws.out / f".lsseg-part-{DEAD_PID}-deadbeef.nii.gz").write_bytes(b"left by a killed run")
    (ws.out / f".lsseg-part-{DEAD_PID}-0badf00d").mkdir()
    (ws.out / ".lsseg-part-1-cafebabe.csv").write_text("a running process's part (pid 1 runs)")
    (ws.out / ".hidden_user_file").write_text("not ours")


def _killed_during_write(ws: Workspace) -> None:
    """A real process SIGKILLed in the middle of an atomic write: its temporary part stays behind."""
    code = (
        "import os, signal\n"
        "from LabelSharingSegLib.engine.atomic import atomic_path\n"
        f"with atomic_path({str(ws.out / 'seg.nii.gz')!r}) as part:\n"
        "    part.write_bytes(b'half a label map')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9, proc.stderr
    assert [p.name for p in ws.out.iterdir() if p.name.startswith(".lsseg-part-")], "the kill left no part"


def _no_parts(ws: Workspace) -> None:
    left = [p.name for p in ws.out.iterdir() if p.name.startswith(".lsseg-part-") and "-1-" not in p.name]
    assert not left, left


def _closed_pipe(ws: Workspace) -> None:
    """``lsseg info BUNDLE | head -1`` where the reader has gone before lsseg writes: no traceback, exit 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run(
        [sys.executable, "-m", "lsseg_training.cli", "info", str(ws.inputs / "bundles" / "ls")],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == "", (proc.returncode, proc.stderr)


class _ClosedPipe:
    """A stdout whose reader has gone: every write fails as a pipe closed by ``head -1`` does."""

    def write(self, text):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self):
        pass


# argparse itself ignores write errors while printing help (exit 0, nothing printed); every other command
# ends with exit 141 and no traceback.
def _stdout_closed(monkeypatch, ws):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())


def _names_of(path: str, expected: list[str]):
    def check(ws: Workspace) -> None:
        from LabelSharingSegLib.engine.labels import labels_from_csv

        assert [label.name for label in labels_from_csv(ws.out / path)] == expected

    return check


# ---------------------------------------------------------------------------------------------- rows

CASES = [
    # segment: results and what an output may replace
    Case("seg-task", (*LS, *SCAN, *OUT), creates=SEG, stdout=r"wrote .*seg\.nii\.gz"),
    Case("seg-task-uncompressed-input", (*LS, "-i", "{in}/img/scan.nii", *OUT), creates=SEG),
    Case("seg-task-uint8-input", (*LS, "-i", "{in}/img/uint8.nii.gz", *OUT), creates=SEG),
    Case("seg-task-nii-output", (*LS, *SCAN, "-o", "{out}/seg.nii"), creates=("seg.nii", "seg.csv")),
    Case("seg-lcs-bundle-labels", (*LCS, "--atlas-labels", "bundle", *OUT), creates=SEG),
    Case(
        "seg-lcs-drawn-labels",
        (*LCS, "--atlas-labels", "{in}/img/drawn.nii.gz", "--atlas-names", "{in}/img/drawn.csv", *OUT),
        creates=SEG,
        check=_names_of("seg.csv", ["right blob", "box", "my structure"]),
    ),
    Case(
        "seg-existing-output",
        (*LS, *SCAN, *OUT),
        exit=2,
        error=r"seg\.nii\.gz: already exists \(pass --overwrite",
        setup=existing(*SEG),
    ),
    Case(
        "seg-existing-names-only",
        (*LS, *SCAN, *OUT),
        exit=2,
        error=r"seg\.csv: already exists \(pass --overwrite",
        setup=existing("seg.csv"),
    ),
    Case(
        "seg-existing-map-only",
        (*LS, *SCAN, *OUT),
        exit=2,
        error=r"--overwrite",
        setup=existing("seg.nii.gz"),
    ),
    Case("seg-overwrite", (*LS, *SCAN, *OUT, "--overwrite"), changes=SEG, setup=existing(*SEG)),
    Case(
        "seg-overwrite-one-existing",
        (*LS, *SCAN, *OUT, "--overwrite"),
        creates=("seg.csv",),
        changes=("seg.nii.gz",),
        setup=existing("seg.nii.gz"),
    ),
    Case("seg-output-is-input", (*LS, *SCAN, "-o", "{in}/img/scan.nii.gz"), exit=2, error=r"is the input -i"),
    Case(
        "seg-output-is-input-overwrite",
        (*LS, *SCAN, "-o", "{in}/img/scan.nii.gz", "--overwrite"),
        exit=2,
        error=r"is the input -i",
    ),
    Case(
        "seg-output-is-input-other-spelling",
        (*LS, *SCAN, "-o", "{in}/img/../img/./scan.nii.gz", "--overwrite"),
        exit=2,
        error=r"is the input -i",
    ),
    Case(
        "seg-output-symlink-to-input",
        (*LS, *SCAN, "-o", "{out}/link.nii.gz", "--overwrite"),
        exit=2,
        error=r"is the input -i",
        setup=_link("symlink"),
    ),
    Case(
        "seg-output-hard-link-to-input",
        (*LS, *SCAN, "-o", "{out}/link.nii.gz", "--overwrite"),
        exit=2,
        error=r"is the input -i",
        setup=_link("hard"),
    ),
    Case(
        "seg-names-table-is-atlas-names",
        (
            *LCS,
            "--atlas-labels",
            "{in}/img/drawn.nii.gz",
            "--atlas-names",
            "{in}/img/drawn.csv",
            "-o",
            "{in}/img/drawn.nii.gz",
        ),
        exit=2,
        error=r"is the input --atlas-labels",
    ),
    Case(
        "seg-names-table-is-atlas-names-2",
        (
            *LCS,
            "--atlas-labels",
            "bundle",
            "--atlas-names",
            "{in}/img/drawn.csv",
            "-o",
            "{in}/img/drawn.nii",
            "--overwrite",
        ),
        exit=2,
        error=r"drawn\.csv: is the input --atlas-names",
    ),
    Case(
        "seg-output-inside-bundle",
        (*LS, *SCAN, "-o", "{in}/bundles/ls/new.nii.gz"),
        exit=2,
        error=r"inside the input folder .*\(bundle\)",
    ),
    Case(
        "seg-output-is-folder",
        (*LS, *SCAN, "-o", "{out}/dir.nii.gz"),
        exit=2,
        error=r"dir\.nii\.gz: is a folder",
        setup=folder_at("dir.nii.gz"),
    ),
    Case(
        "seg-output-is-folder-overwrite",
        (*LS, *SCAN, "-o", "{out}/dir.nii.gz", "--overwrite"),
        exit=2,
        error=r"is a folder",
        setup=folder_at("dir.nii.gz"),
    ),
    Case(
        "seg-names-table-is-folder",
        (*LS, *SCAN, *OUT, "--overwrite"),
        exit=2,
        error=r"seg\.csv: is a folder",
        setup=folder_at("seg.csv"),
    ),
    Case(
        "seg-output-missing-parent",
        (*LS, *SCAN, "-o", "{out}/no/such/seg.nii.gz"),
        exit=2,
        error=r"Output folder does not exist",
    ),
    Case(
        "seg-output-not-nifti",
        (*LS, *SCAN, "-o", "{out}/seg.png"),
        exit=2,
        error=r"must end in \.nii, \.nii\.gz or \.seg\.nrrd",
    ),
    Case(
        "seg-output-long-name",
        (*LS, *SCAN, "-o", f"{{out}}/{LONG}.nii.gz"),
        creates=(f"{LONG}.nii.gz", f"{LONG}.csv"),
    ),
    Case(
        "seg-output-name-too-long",
        (*LS, *SCAN, "-o", f"{{out}}/{LONG}xxxxxx.nii.gz"),
        exit=2,
        error=r"file name too long \(261 bytes; the limit is 255\)",
    ),
    Case("seg-umask-022", (*LS, *SCAN, *OUT), creates=SEG, faults=_umask(0o022), check=_modes(0o644, *SEG)),
    Case("seg-umask-027", (*LS, *SCAN, *OUT), creates=SEG, faults=_umask(0o027), check=_modes(0o640, *SEG)),
    Case(
        "seg-stale-parts-cleaned",
        (*LS, *SCAN, *OUT),
        creates=SEG,
        setup=_stale_parts,
        removes=(f".lsseg-part-{DEAD_PID}-*",),
    ),
    Case(
        "seg-after-sigkill-during-write",
        (*LS, *SCAN, *OUT),
        creates=SEG,
        setup=_killed_during_write,
        removes=(".lsseg-part-*",),
    ),
    # segment: faults while writing; nothing is left and existing files stay as they were
    Case(
        "seg-disk-full-label-map",
        (*LS, *SCAN, *OUT),
        exit=2,
        error=r"seg\.nii\.gz, .*seg\.csv: no space left on the device.*nothing was written",
        faults=_fail_writes(OSError(errno.ENOSPC, "No space left on device")),
    ),
    Case(
        "seg-disk-full-names-table",
        (*LS, *SCAN, *OUT),
        exit=2,
        error=r"no space left on the device",
        faults=_fail_text_parts(OSError(errno.ENOSPC, "No space left on device")),
    ),
    Case(
        "seg-disk-full-names-table-overwrite",
        (*LS, *SCAN, *OUT, "--overwrite"),
        exit=2,
        error=r"no space left",
        setup=existing(*SEG),
        faults=_fail_text_parts(OSError(errno.ENOSPC, "No space left on device")),
    ),
    Case(
        "seg-quota-exceeded",
        (*LS, *SCAN, *OUT),
        exit=2,
        error=r"no space left",
        faults=_fail_writes(OSError(errno.EDQUOT, "Disk quota exceeded")),
    ),
    Case(
        "seg-read-only-file-system",
        (*LS, *SCAN, *OUT),
        exit=2,
        error=r"read-only",
        faults=_fail_writes(OSError(errno.EROFS, "Read-only file system")),
    ),
    Case(
        "seg-second-rename-fails",
        (*LS, *SCAN, *OUT, "--overwrite"),
        exit=2,
        error=r"seg\.csv: cannot write",
        setup=existing(*SEG),
        faults=_second_rename_fails,
    ),
    Case(
        "seg-second-rename-fails-new",
        (*LS, *SCAN, *OUT),
        exit=2,
        error=r"cannot write",
        faults=_second_rename_fails,
    ),
    Case(
        "seg-folder-not-writable",
        (*LS, *SCAN, *OUT),
        exit=2,
        error=r"permission denied",
        faults=_folder_not_writable,
    ),
    Case(
        "seg-part-creation-denied",
        (*LS, *SCAN, *OUT),
        exit=2,
        error=r"permission denied",
        faults=_part_creation_denied,
    ),
    Case(
        "seg-ctrl-c-while-writing",
        (*LS, *SCAN, *OUT),
        exit=130,
        error=r"^lsseg: interrupted",
        faults=_fail_writes(KeyboardInterrupt()),
    ),
    Case(
        "seg-ctrl-c-while-writing-overwrite",
        (*LS, *SCAN, *OUT, "--overwrite"),
        exit=130,
        error=r"interrupted",
        setup=existing(*SEG),
        faults=_fail_writes(KeyboardInterrupt()),
    ),
    Case(
        "seg-bug-in-engine",
        (*LS, *SCAN, *OUT),
        exit=1,
        error=r"unexpected RuntimeError: injected .*--debug",
        faults=_engine_raises(RuntimeError("injected")),
    ),
    Case(
        "seg-out-of-memory",
        (*LS, *SCAN, *OUT),
        exit=1,
        error=r"out of memory",
        faults=_engine_raises(MemoryError()),
    ),
    Case(
        "seg-io-error",
        (*LS, *SCAN, *OUT),
        exit=1,
        error=r"scan\.nii\.gz: Input/output error",
        faults=_engine_raises(OSError(errno.EIO, "Input/output error", "scan.nii.gz")),
    ),
    # segment: inputs that must be refused with one clear line
    Case(
        "seg-input-missing",
        (*LS, "-i", "{in}/img/nope.nii.gz", *OUT),
        exit=2,
        error=r"nope\.nii\.gz: file not found",
    ),
    Case(
        "seg-input-folder",
        (*LS, "-i", "{in}/img/folder.nii.gz", *OUT),
        exit=2,
        error=r"folder\.nii\.gz: is a folder, not a NIfTI file",
    ),
    Case(
        "seg-input-not-a-scan",
        (*LS, "-i", "{in}/img/notes.txt", *OUT),
        exit=2,
        error=r"notes\.txt: not a scan this reads \(a DICOM folder or file, \.nii",
    ),
    Case(
        "seg-input-corrupt", (*LS, "-i", "{in}/img/corrupt.nii.gz", *OUT), exit=2, error=r"cannot read NIfTI"
    ),
    Case(
        "seg-input-corrupt-gzip",
        (*LS, "-i", "{in}/img/corrupt_gzip.nii.gz", *OUT),
        exit=2,
        error=r"cannot read NIfTI",
    ),
    Case(
        "seg-input-truncated",
        (*LS, "-i", "{in}/img/truncated.nii.gz", *OUT),
        exit=2,
        error=r"cannot read NIfTI",
    ),
    Case(
        "seg-input-empty-file", (*LS, "-i", "{in}/img/empty.nii.gz", *OUT), exit=2, error=r"cannot read NIfTI"
    ),
    Case(
        "seg-input-nan",
        (*LS, "-i", "{in}/img/nan.nii.gz", *OUT),
        exit=2,
        error=r"1 voxel\(s\) are NaN or Inf",
    ),
    Case("seg-input-inf", (*LS, "-i", "{in}/img/inf.nii.gz", *OUT), exit=2, error=r"NaN or Inf"),
    Case(
        "seg-input-complex",
        (*LS, "-i", "{in}/img/complex.nii.gz", *OUT),
        exit=2,
        error=r"complex-valued voxels",
    ),
    Case(
        "seg-input-all-zero",
        (*LS, "-i", "{in}/img/zeros.nii.gz", *OUT),
        exit=2,
        error=r"every voxel has the value 0",
    ),
    Case(
        "seg-input-all-zero-lcs-auto-align",
        (
            "segment",
            "{in}/bundles/lcs",
            "-i",
            "{in}/img/zeros.nii.gz",
            "--atlas-labels",
            "bundle",
            "--device",
            "cpu",
            "--quiet",
            *OUT,
        ),
        exit=2,
        error=r"every voxel has the value 0",
    ),
    Case(
        "seg-input-constant",
        (*LS, "-i", "{in}/img/const.nii.gz", *OUT),
        exit=2,
        error=r"every voxel has the value 5",
    ),
    Case(
        "seg-input-channels",
        (*LS, "-i", "{in}/img/channels.nii.gz", *OUT),
        exit=2,
        error=r"expected a 2D or 3D scalar image",
    ),
    Case(
        "seg-input-5d",
        (*LS, "-i", "{in}/img/five_d.nii.gz", *OUT),
        exit=2,
        error=r"expected a 2D or 3D scalar image",
    ),
    Case(
        "seg-input-2d-to-3d-task-bundle",
        (*LS, "-i", "{in}/img/scan2d.nii.gz", *OUT),
        exit=2,
        error=r"a 2D image .* 3D bundle",
    ),
    Case(
        "seg-input-slab-to-3d-task-bundle",
        (*LS, "-i", "{in}/img/slab1.nii.gz", *OUT),
        exit=2,
        error=r"a 2D image",
    ),
    Case(
        "seg-input-2d-to-3d-lcs-bundle",
        (
            "segment",
            "{in}/bundles/lcs",
            "-i",
            "{in}/img/scan2d.nii.gz",
            "--atlas-labels",
            "bundle",
            "--align",
            "off",
            "--device",
            "cpu",
            *OUT,
        ),
        exit=2,
        error=r"a 2D image",
    ),
    Case(
        "seg-input-singular-affine", (*LS, "-i", "{in}/img/singular.nii.gz", *OUT), exit=2, error=r"singular"
    ),
    Case(
        "seg-unknown-task",
        ("segment", "{in}/bundles/ls", *SCAN, *OUT, "--task", "liver"),
        exit=2,
        error=r"unknown task 'liver'; this bundle's tasks: organs, brain",
    ),
    Case(
        "seg-atlas-labels-with-task-bundle",
        ("segment", "{in}/bundles/ls", *SCAN, *OUT, "--atlas-labels", "bundle"),
        exit=2,
        error=r"atlas labels need an LCS bundle",
    ),
    Case(
        "seg-task-with-lcs-bundle",
        ("segment", "{in}/bundles/lcs", *SCAN, *OUT, "--task", "x"),
        exit=2,
        error=r"segments atlas labels, not tasks",
    ),
    Case(
        "seg-atlas-labels-nan",
        (*LCS, "--atlas-labels", "{in}/img/drawn_nan.nii.gz", *OUT),
        exit=2,
        error=r"drawn_nan\.nii\.gz: 1 voxel\(s\) are NaN or Inf",
    ),
    Case(
        "seg-atlas-labels-fractional",
        (*LCS, "--atlas-labels", "{in}/img/drawn_frac.nii.gz", *OUT),
        exit=2,
        error=r"fractional voxel values",
    ),
    Case(
        "seg-atlas-labels-empty",
        (*LCS, "--atlas-labels", "{in}/img/drawn_empty.nii.gz", *OUT),
        exit=2,
        error=r"atlas label map is empty",
    ),
    Case(
        "seg-atlas-labels-cropped-grid",
        (*LCS, "--atlas-labels", "{in}/img/drawn_cropped_grid.nii.gz", *OUT),
        creates=SEG,
    ),
    Case(
        "seg-atlas-labels-outside-field-of-view",
        (*LCS, "--atlas-labels", "{in}/img/drawn_outside.nii.gz", *OUT),
        exit=2,
        error=r"drawn_outside\.nii\.gz: label\(s\) .* reach outside the atlas's field of view",
    ),
    Case(
        "seg-atlas-labels-missing",
        (*LCS, "--atlas-labels", "{in}/img/nope.nii.gz", *OUT),
        exit=2,
        error=r"file not found",
    ),
    Case(
        "seg-atlas-labels-folder",
        (*LCS, "--atlas-labels", "{in}/img/folder.nii.gz", *OUT),
        exit=2,
        error=r"is a folder",
    ),
    Case(
        "seg-atlas-names-malformed",
        (*LCS, "--atlas-labels", "{in}/img/drawn.nii.gz", "--atlas-names", "{in}/img/bad_names.csv", *OUT),
        exit=2,
        error=r"bad_names\.csv",
    ),
    Case(
        "seg-atlas-names-missing",
        (*LCS, "--atlas-labels", "{in}/img/drawn.nii.gz", "--atlas-names", "{in}/img/nope.csv", *OUT),
        exit=2,
        error=r"nope\.csv",
    ),
    Case(
        "seg-bundle-missing",
        ("segment", "{in}/bundles/nope", *SCAN, *OUT, "--task", "brain"),
        exit=2,
        error=r"bundle not found",
    ),
    Case("seg-unknown-device", (*LS, *SCAN, *OUT, "--device", "tpu"), exit=2, error=r"invalid choice: 'tpu'"),
    Case("seg-no-output-argument", (*LS, *SCAN), exit=2, error=r"required: -o/--output"),
    Case(
        "seg-task-and-atlas-labels",
        (*LS, *SCAN, *OUT, "--atlas-labels", "bundle"),
        exit=2,
        error=r"not allowed with argument",
    ),
    # plan
    Case("plan-print-only", PLAN, stdout=r"Shared label space: n\* = \d+"),
    Case("plan-out", (*PLAN, "--out", "{out}/space.json"), creates=("space.json",)),
    Case(
        "plan-out-existing",
        (*PLAN, "--out", "{out}/space.json"),
        exit=2,
        error=r"space\.json: already exists \(pass --overwrite",
        setup=existing("space.json"),
    ),
    Case(
        "plan-out-existing-overwrite",
        (*PLAN, "--out", "{out}/space.json", "--overwrite"),
        changes=("space.json",),
        setup=existing("space.json"),
    ),
    Case(
        "plan-out-dataset-json",
        (*PLAN, "--out", "{in}/data/Dataset900_Phantom0/dataset.json"),
        exit=2,
        error=r"inside the input folder",
    ),
    Case(
        "plan-out-dataset-json-overwrite",
        (*PLAN, "--out", "{in}/data/Dataset901_Phantom1/dataset.json", "--overwrite"),
        exit=2,
        error=r"inside the input folder",
    ),
    Case(
        "plan-out-new-file-in-dataset",
        (*PLAN, "--out", "{in}/data/Dataset900_Phantom0/space.json"),
        exit=2,
        error=r"inside the input folder",
    ),
    Case(
        "plan-out-folder",
        (*PLAN, "--out", "{out}/space"),
        exit=2,
        error=r"space: is a folder",
        setup=folder_at("space"),
    ),
    Case(
        "plan-out-missing-parent",
        (*PLAN, "--out", "{out}/no/space.json"),
        exit=2,
        error=r"Output folder does not exist",
    ),
    Case("plan-out-long-name", (*PLAN, "--out", f"{{out}}/{LONG}.json"), creates=(f"{LONG}.json",)),
    Case(
        "plan-out-disk-full",
        (*PLAN, "--out", "{out}/space.json"),
        exit=2,
        error=r"space\.json: no space left",
        faults=_fail_text_parts(OSError(errno.ENOSPC, "No space left on device")),
    ),
    Case(
        "plan-out-stale-parts-cleaned",
        (*PLAN, "--out", "{out}/space.json"),
        creates=("space.json",),
        setup=_stale_parts,
        removes=(f".lsseg-part-{DEAD_PID}-*",),
    ),
    Case("plan-dataset-missing", ("plan", "{in}/data/nope"), exit=2, error=r"nope"),
    Case(
        "plan-dataset-deep-json",
        ("plan", "{in}/data/Dataset954_deep"),
        exit=2,
        error=r"problem",
        details=r"nested too deeply",
    ),
    Case(
        "plan-dataset-huge-int",
        ("plan", "{in}/data/Dataset958_huge_int"),
        exit=2,
        error=r"problem",
        details=r"integer with 5000 digits|Exceeds the limit",
    ),
    Case(
        "plan-dataset-json-list",
        ("plan", "{in}/data/Dataset958_listjson"),
        exit=2,
        error=r"problem",
        details=r"must hold a JSON object",
    ),
    Case(
        "plan-dataset-infinite-label",
        ("plan", "{in}/data/Dataset958_inflabel"),
        exit=2,
        error=r"problem",
        details=r"structure",
    ),
    # data check (a report: exit 1 lists the problems on stdout)
    Case("data-check-clean", ("data", "check", "{in}/data/Dataset900_Phantom0"), stdout=r"1 clean"),
    Case(
        "data-check-deep-json",
        ("data", "check", "{in}/data/Dataset954_deep"),
        exit=1,
        stdout=r"nested too deeply",
    ),
    Case(
        "data-check-infinite-label",
        ("data", "check", "{in}/data/Dataset958_inflabel"),
        exit=1,
        stdout=r"structure",
    ),
    Case(
        "data-check-huge-int",
        ("data", "check", "{in}/data/Dataset958_huge_int"),
        exit=1,
        stdout=r"integer with 5000 digits|Exceeds the limit",
    ),
    # info and printing
    Case("info-task-bundle", ("info", "{in}/bundles/ls"), stdout=r"Task brain \(3 labels\)"),
    Case("info-json", ("info", "{in}/bundles/ls", "--json"), stdout=r'"kind": "labelsharing"'),
    Case("info-closed-pipe", call=_closed_pipe),
    Case(
        "info-closed-pipe-in-process",
        ("info", "{in}/bundles/ls"),
        exit=141,
        faults=_stdout_closed,
        stdout=r"^$",
    ),
    Case("help-closed-pipe", ("--help",), exit=0, faults=_stdout_closed, stdout=r"^$"),
    Case("segment-help-closed-pipe", ("segment", "--help"), exit=0, faults=_stdout_closed, stdout=r"^$"),
    Case("plan-closed-pipe", PLAN, exit=141, faults=_stdout_closed, stdout=r"^$"),
    Case(
        "seg-progress-closed-pipe",
        ("segment", "{in}/bundles/ls", "--task", "brain", "--device", "cpu", *SCAN, *OUT),
        exit=141,
        faults=_stdout_closed,
        stdout=r"^$",
    ),
    Case(
        "no-stale-parts-after-failures",
        (*LS, *SCAN, *OUT),
        exit=2,
        error=r"no space left",
        faults=_fail_writes(OSError(errno.ENOSPC, "full")),
        check=_no_parts,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_command_row(case: Case, workspace, capsys, monkeypatch):
    run_case(case, workspace, capsys, monkeypatch)


def test_table_has_rows_for_what_held_and_what_was_fixed():
    from test_adversarial_bundles import CASES as BUNDLE_CASES

    assert len(CASES) + len(BUNDLE_CASES) >= 150

"""Hostile inputs and faults against the training-side commands (issue 14), one row per case: the command, the exit
status, what the first error line says, the files it leaves in the working folder, and every input (datasets, the
user's folders, bundles, reports) unchanged by checksum. New training-side commands join by adding rows.

All rows share one tiny phantom world (module fixture) with one trained bundle, its checkpoint folder and one report.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from train_helpers import TINY, lsseg, phantoms, tree_hashes

from LabelSharingSegLib.engine.bundle import load_bundle

STEPS = ["--steps", "2", "--val-fraction", "0"]


@dataclass(frozen=True)
class Row:
    id: str
    argv: list[str]  # {d0} {d1} {bad_*} {victim} {bundle} {ck} {report} {notreport} {work} are filled in
    exit: int
    first_line: str  # expected in the first line of stderr ('out:' prefix: in some line of stdout)
    leaves: set[str] = field(default_factory=set)  # top-level names the command leaves in {work}
    setup: str = ""  # a prepared copy in {work}: 'report' or 'ck'
    detail: str = ""  # expected further down the message (the problems a dataset check lists)


ROWS = [
    # a dataset's name never chooses a path
    Row(
        "name-traversal-individual",
        ["train", "individual", "--data", "{bad_traversal}", "{d1}", "--out", "{work}/ind", *STEPS, *TINY],
        2,
        "problem(s)",
        detail="is not a plain folder name",
    ),
    Row(
        "name-absolute-individual",
        ["train", "individual", "--data", "{bad_absolute}", "--out", "{work}/ind", *STEPS, *TINY],
        2,
        "problem(s)",
        detail="is not a plain folder name",
    ),
    Row(
        "name-traversal-labelsharing",
        ["train", "labelsharing", "--data", "{bad_traversal}", "{d1}", "--out", "{work}/ls", *STEPS, *TINY],
        2,
        "problem(s)",
        detail="is not a plain folder name",
    ),
    Row(
        "name-traversal-lcs",
        ["train", "lcs", "--data", "{bad_traversal}", "--out", "{work}/lcs", *STEPS, *TINY],
        2,
        "problem(s)",
        detail="is not a plain folder name",
    ),
    Row(
        "name-traversal-data-check",
        ["data", "check", "{bad_traversal}"],
        1,
        "out:is not a plain folder name",
    ),
    # the user's folders are never overwritten
    Row(
        "checkpoint-dir-user-folder",
        [
            "train",
            "labelsharing",
            "--data",
            "{d0}",
            "{d1}",
            "--out",
            "{work}/ls",
            "--checkpoint-dir",
            "{victim}",
        ]
        + [*STEPS, *TINY],
        2,
        "holds files that training did not write",
    ),
    Row(
        "checkpoint-dir-user-folder-individual",
        ["train", "individual", "--data", "{d0}", "--out", "{work}/ind", "--checkpoint-dir", "{victim}"]
        + [*STEPS, *TINY],
        2,
        "holds files that training did not write",
    ),
    Row(
        "checkpoint-dir-is-a-file",
        [
            "train",
            "multichannel",
            "--data",
            "{d0}",
            "--out",
            "{work}/mc",
            "--checkpoint-dir",
            "{victim}/config.json",
        ]
        + [*STEPS, *TINY],
        2,
        "is a file",
    ),
    Row(
        "checkpoint-dir-missing-parent",
        ["train", "multichannel", "--data", "{d0}", "--out", "{work}/mc", "--checkpoint-dir", "{work}/no/ck"]
        + [*STEPS, *TINY],
        2,
        "does not exist",
    ),
    Row(
        "checkpoint-dir-of-finished-run-without-resume",
        ["train", "labelsharing", "--data", "{d0}", "{d1}", "--out", "{work}/ls", "--checkpoint-dir", "{ck}"]
        + [*STEPS, *TINY],
        2,
        "pass --resume",
    ),
    Row(
        "out-is-existing-bundle",
        ["train", "labelsharing", "--data", "{d0}", "{d1}", "--out", "{bundle}", *STEPS, *TINY],
        2,
        "already exists (bundles are never overwritten",
    ),
    Row(
        "out-missing-parent",
        ["train", "labelsharing", "--data", "{d0}", "{d1}", "--out", "{work}/no/ls", *STEPS, *TINY],
        2,
        "does not exist",
    ),
    # --resume
    Row(
        "resume-without-checkpoint",
        ["train", "labelsharing", "--data", "{d0}", "{d1}", "--out", "{work}/ls", "--resume", *STEPS, *TINY],
        2,
        "no checkpoint to resume from",
    ),
    Row(
        "resume-corrupt-config-json",
        ["train", "labelsharing", "--data", "{d0}", "{d1}", "--out", "{work}/ls", "--checkpoint-dir"]
        + ["{work}/ck", "--resume", "--steps", "4", "--val-fraction", "0", *TINY],
        2,
        "corrupt run configuration",
        leaves={"ck"},
        setup="ck",
    ),
    # bad options are refused up front, nothing written
    *[
        Row(
            f"option{option}={value}",
            ["train", "labelsharing", "--data", "{d0}", "{d1}", "--out", "{work}/ls", *TINY, *STEPS]
            + [option, value],
            2,
            message,
        )
        for option, value, message in [
            ("--lr", "nan", "--lr must be a positive finite number"),
            ("--lr", "0", "--lr must be a positive finite number"),
            ("--lr", "inf", "--lr must be a positive finite number"),
            ("--weight-decay", "nan", "--weight-decay must be"),
            ("--seed", "-1", "--seed must be between"),
            ("--val-fraction", "1.5", "--val-fraction must be"),
            ("--val-fraction", "1", "--val-fraction must be"),
            ("--val-fraction", "-0.2", "--val-fraction must be"),
            ("--foreground-prob", "7", "--foreground-prob must be between 0 and 1"),
            ("--foreground-prob", "nan", "--foreground-prob must be between 0 and 1"),
            ("--steps", "0", "--steps must be >= 1"),
            ("--epochs", "-3", "--epochs must be >= 1"),
            ("--batch", "0", "--batch must be >= 1"),
            ("--checkpoint-every", "0", "--checkpoint-every must be >= 1"),
            ("--warmup", "-1", "--warmup must be >= 0"),
            ("--patch", "0,0", "--patch must be positive integers"),
            ("--spacing", "0,1", "--spacing must be positive"),
            ("--spacing", "nan,1", "--spacing must be positive"),
            ("--channels", "4", "--channels needs at least 2 levels"),
            ("--channels", "4,0,8", "--channels must be positive integers"),
        ]
    ],
    Row(
        "lcs-merge-prob-2",
        ["train", "lcs", "--data", "{d0}", "--out", "{work}/lcs", "--merge-prob", "2", *STEPS, *TINY],
        2,
        "--merge-prob must be between 0 and 1",
    ),
    Row(
        "lcs-labels-per-image-0",
        ["train", "lcs", "--data", "{d0}", "--out", "{work}/lcs", "--labels-per-image", "0", *STEPS, *TINY],
        2,
        "--labels-per-image must be an integer from 1 to 64",
    ),
    Row(
        "refine-with-lcs-variant",
        [
            "train",
            "lcs",
            "--data",
            "{d0}",
            "--out",
            "{work}/lcs",
            "--arch",
            "lcs_refine",
            "--loss",
            "dice-bce",
            *STEPS,
            *TINY,
        ],
        2,
        "--conditioning, --labels-per-image, --loss, --label-draw, --align-cases and --label-codes are options of "
        "--arch lcs, not lcs_refine",
    ),  # fmt: skip
    Row(
        "time-limit-zero",
        ["train", "labelsharing", "--data", "{d0}", "{d1}", "--out", "{work}/ls", "--time-limit", "0", *TINY],
        2,
        "the time limit must be a positive number",
    ),
    # evaluate --out: never overwritten silently; parents are never created
    Row(
        "evaluate-existing-report",
        [
            "evaluate",
            "{bundle}",
            "--data",
            "{d0}",
            "{d1}",
            "--out",
            "{report}",
            "--device",
            "cpu",
            "--no-hd95",
        ],
        2,
        "pass --overwrite",
    ),
    Row(
        "evaluate-overwrite-non-report",
        ["evaluate", "{bundle}", "--data", "{d0}", "--out", "{notreport}", "--overwrite", "--device", "cpu"]
        + ["--no-hd95"],
        2,
        "is not a evaluation report folder",
    ),
    Row(
        "evaluate-missing-parents",
        [
            "evaluate",
            "{bundle}",
            "--data",
            "{d0}",
            "--out",
            "{work}/no/such/report",
            "--device",
            "cpu",
            "--no-hd95",
        ],
        2,
        "does not exist",
    ),
    Row(
        "evaluate-out-is-a-file",
        [
            "evaluate",
            "{bundle}",
            "--data",
            "{d0}",
            "--out",
            "{victim}/log.csv",
            "--device",
            "cpu",
            "--no-hd95",
        ],
        2,
        "is not a folder",
    ),
    Row(
        "evaluate-overwrite-replaces-report",
        ["evaluate", "{bundle}", "--data", "{d0}", "--out", "{work}/report", "--overwrite", "--device", "cpu"]
        + ["--no-hd95"],
        0,
        "",
        leaves={"report"},
        setup="report",
    ),
    # datasets
    Row("data-check-train-test-duplicate", ["data", "check", "{bad_dup}"], 1, "out:is also a training case"),
    Row(
        "train-on-train-test-duplicate",
        ["train", "multichannel", "--data", "{bad_dup}", "--out", "{work}/mc", *STEPS, *TINY],
        2,
        "problem(s)",
        detail="is also a training case",
    ),
    Row("data-check-deep-json", ["data", "check", "{bad_deep}"], 1, "out:malformed JSON"),
    Row("data-check-huge-integer", ["data", "check", "{bad_bigint}"], 1, "out:malformed JSON"),
]


def _edit_name(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "dataset.json").read_text())
    meta.update(changes)
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    d0, d1 = phantoms(root / "data", tasks=2, cases=3, test_cases=1)
    victim = root / "victim"
    victim.mkdir()
    (victim / "config.json").write_text('{"mine": true}\n')
    (victim / "log.csv").write_text("my,own,log\n")
    notreport = root / "notreport"
    notreport.mkdir()
    (notreport / "thesis.txt").write_text("chapter 1\n")
    bad = root / "bad"
    bad.mkdir()
    dup = bad / "dup"
    shutil.copytree(d0, dup)
    shutil.copy(dup / "imagesTr" / "phantom0_000_0000.nii.gz", dup / "imagesTs" / "phantom0_000_0000.nii.gz")
    shutil.copy(dup / "labelsTr" / "phantom0_000.nii.gz", dup / "labelsTs" / "phantom0_000.nii.gz")
    deep = bad / "deep"
    shutil.copytree(d0, deep)
    (deep / "dataset.json").write_text("[" * 100_000 + "]" * 100_000)
    bigint = _edit_name(d0, bad / "bigint")
    (bigint / "dataset.json").write_text(
        (bigint / "dataset.json").read_text()[:-1] + ', "x": ' + "9" * 5000 + "}"
    )
    bundle = root / "bundle"
    assert lsseg("train", "labelsharing", "--data", d0, d1, "--out", bundle, *STEPS, *TINY) == 0
    report = root / "report"
    assert lsseg("evaluate", bundle, "--data", d0, d1, "--out", report, "--device", "cpu", "--no-hd95") == 0
    return {
        "root": root,
        "d0": d0,
        "d1": d1,
        "victim": victim,
        "notreport": notreport,
        "bundle": bundle,
        "ck": root / "bundle.training",
        "report": report,
        "bad_traversal": _edit_name(d0, bad / "traversal", name="../escaped_by_name"),
        "bad_absolute": _edit_name(d0, bad / "absolute", name=str(victim)),
        "bad_dup": dup,
        "bad_deep": deep,
        "bad_bigint": bigint,
    }


def _run(argv: list[str]) -> int:
    try:
        return lsseg(*argv)
    except SystemExit as exc:  # argparse refusals
        return int(exc.code)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_adversarial(row: Row, world, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    if row.setup == "report":
        shutil.copytree(world["report"], work / "report")
    if row.setup == "ck":
        shutil.copytree(world["ck"], work / "ck")
        (work / "ck" / "config.json").write_text('{"method": "labelsh')
    places = {**{k: str(v) for k, v in world.items()}, "work": str(work)}
    argv = [a.format(**places) for a in row.argv]
    inputs_before = tree_hashes(world["root"])
    work_before = tree_hashes(work)
    capsys.readouterr()

    code = _run(argv)
    out, err = capsys.readouterr()

    assert code == row.exit, (out, err)
    if row.first_line.startswith("out:"):
        assert any(row.first_line[4:] in line for line in out.splitlines()), out
    elif row.exit:
        lines = err.strip().splitlines() or [""]
        if lines[0].startswith("usage:"):  # argparse: the usage, then its one error line
            assert ": error: " in lines[-1] and row.first_line in lines[-1], err
        else:
            assert lines[0].startswith("lsseg: error:") and row.first_line in lines[0], err
    assert row.detail in out + err
    assert "Traceback" not in out + err
    assert {p.name for p in work.iterdir()} == row.leaves
    assert not (tmp_path / "escaped_by_name").exists() and not (work / "escaped_by_name").exists()
    assert tree_hashes(world["root"]) == inputs_before
    if row.setup == "ck":
        assert tree_hashes(work) == work_before  # the checkpoint folder is left as it was
    if row.setup == "report":  # replaced by the report of the new run (one dataset instead of two)
        assert tree_hashes(work / "report") != tree_hashes(world["report"])
        assert "Phantom1" not in (work / "report" / "summary.md").read_text()


KILL_WHILE_WRITING = """
import os, sys
import LabelSharingSegLib.engine.bundle as bundle
def killed(path):  # the staging folder is complete and not yet renamed: the worst moment to die
    os.kill(os.getpid(), 9)
bundle.load_bundle = killed
from lsseg_training.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_while_writing_the_bundle_then_resume_writes_it(world, tmp_path, capsys):
    out = tmp_path / "endkill"
    argv = ["train", "labelsharing", "--data", str(world["d0"]), str(world["d1"]), "--out", str(out)]
    argv += ["--steps", "3", "--checkpoint-every", "1", "--val-fraction", "0", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, *argv], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".endkill.")
    ]  # the staging folder is left
    checkpoints = tree_hashes(tmp_path / "endkill.training")
    capsys.readouterr()
    assert lsseg(*argv, "--resume") == 0
    assert "writing its bundle again" in capsys.readouterr().out
    bundle = load_bundle(out)
    assert bundle.manifest.training["steps"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["endkill", "endkill.training"]  # staging cleaned up
    assert tree_hashes(tmp_path / "endkill.training").keys() == checkpoints.keys()
    # delivered now: a second --resume is told so, and nothing is trained or written
    capsys.readouterr()
    assert lsseg(*argv, "--resume") == 2
    assert "already exists" in capsys.readouterr().err

"""`lsseg experiment lcs` end to end on a phantom task: every table and plot, equal budgets, nothing redone."""

from __future__ import annotations

import csv

from train_helpers import lsseg, phantoms

from lsseg_training import api
from lsseg_training.experiments.lcs import default_counts
from lsseg_training.experiments.memory import measure


def test_lcs_experiment_reports_every_table_and_resumes(tmp_path, monkeypatch):
    data = phantoms(tmp_path / "data", tasks=1, cases=3)[0]  # Phantom0: 3 labels
    out = tmp_path / "exp"
    command = ["experiment", "lcs", "--data", data, "--out", out, "--steps", 3, "--label-counts", "2,3"]
    command += ["--memory-label-counts", "2,16", "--channels", "4,8,16", "--device", "cpu", "--threads", 1]
    command += ["--val-labels", 2]
    assert lsseg(*command) == 0
    report = (out / "report.md").read_text()
    for heading in (
        "## Mean Dice at 3 labels",
        "## Dice against the label count",
        "## Coarse training labels, fine labels at test time",
        "## Memory against the label count",
    ):
        assert heading in report, heading
    for plot in ("dice_vs_labels", "coarse_to_fine", "memory_vs_labels"):
        assert (out / f"{plot}.png").stat().st_size > 1000
        assert f"![{plot}]({plot}.png)" in report
    # the 2-label copy keeps labels 1 and 2 only; the source dataset is untouched
    subset = out / "data" / "Phantom0_2labels"
    assert '"large_blob": 1' in (subset / "dataset.json").read_text()
    assert "small_blob" not in (subset / "dataset.json").read_text()
    with open(out / "budget.csv", newline="") as handle:
        assert {int(r["samples"]) for r in csv.DictReader(handle)} == {6}
    with open(out / "metrics.csv", newline="") as handle:
        metrics = list(csv.DictReader(handle))
    assert {(r["method"], r["label_count"]) for r in metrics} == {
        (m, k) for m in ("lcs", "multichannel") for k in ("2", "3")
    }
    assert {r["label_value"] for r in metrics if r["label_count"] == "2"} == {"1", "2"}
    assert "| large_blob+medium_blob (1) |" in report  # the pairwise coarse map: labels 1 and 2 merged
    # capped validation: the same seeded labels for both methods at every count, stated in the report
    assert "a fixed sample of at most 2 labels drawn with seed 0" in report
    assert report.count("(LCS and multi-channel the same: **yes**)") == 2
    assert "--val-labels 2" in report.splitlines()[2]  # the reproduce line
    # the registration baseline a 2D bundle has joins the coarse-to-fine table
    assert (
        "| coarse label | coarse Dice | fine label | naive | fine-grained (LCS) | atlas at world coordinates |"
        in (report)
    )

    # continuing a finished experiment trains and measures nothing again
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(api, "train_lcs", refuse)
    monkeypatch.setattr(api, "train_tasks", refuse)
    monkeypatch.setattr("lsseg_training.experiments.lcs.measure", refuse)
    assert lsseg(*command) == 0
    assert (out / "report.md").read_text() == report

    # variants join the finished experiment: only they train, each with its own change recorded in its bundle
    monkeypatch.undo()
    variants = ["--variants", "every-level", "labels-per-image", "long", "reseeded", "every-level-reseeded"]
    assert lsseg(*command, *variants) == 0
    report = (out / "report.md").read_text()
    assert "## Why LCS trails: variants at 3 labels (issue #15)" in report
    assert (
        "--variants every-level labels-per-image long reseeded every-level-reseeded" in report.splitlines()[2]
    )
    assert "Paired over two seeds, `every-level` minus the published LCS:" in report
    for run, change in (("every-level", "atlas image and mask at every decoder level too"),
                        ("long", "4x the steps (4x the budget)")):  # fmt: skip
        assert f"| lcs {run} |" in report and change in report
    manifest = (out / "runs" / "lcs_every-level" / "bundle.json").read_text()
    assert '"conditioning": "every-level"' in manifest
    # the experiment's LCS is the paper's network (bottleneck conditioning), not `lsseg train lcs`'s default
    assert '"conditioning"' not in (out / "runs" / "lcs_3" / "bundle.json").read_text()
    # 4 labels per image asked, the phantom atlas has 3: every label each step (more is refused by training)
    assert '"labels_per_image": 3' in (out / "runs" / "lcs_labels-per-image" / "bundle.json").read_text()
    with open(out / "budget.csv", newline="") as handle:
        spent = {r["run"]: int(r["samples"]) for r in csv.DictReader(handle)}
    assert spent["lcs_long"] == 24 and spent["lcs_every-level"] == spent["lcs_3"] == 6
    with open(out / "metrics.csv", newline="") as handle:
        methods = {r["method"] for r in csv.DictReader(handle)}
    assert {"lcs every-level", "lcs labels-per-image", "lcs long", "lcs reseeded"} <= methods
    assert (out / "variants_validation.png").stat().st_size > 1000
    assert "seeds" in report and "Largest gain at the same budget and seed:" in report
    # the conditioning variant also answers Table 1: its own naive and fine-grained columns
    assert (
        "| naive | fine-grained (LCS) | naive (lcs every-level) | fine-grained (lcs every-level) |" in report
    )
    assert spent["lcs_coarse_every-level"] == spent["lcs_coarse"]
    # variants need the full label count among the trained ones
    fewer = [str(c) for c in command]
    fewer[fewer.index("2,3")], fewer[fewer.index(str(out))] = "2", str(tmp_path / "other")
    assert lsseg(*fewer, *variants) == 2


def test_memory_multichannel_grows_with_labels_lcs_does_not():
    small = {m: measure(m, 2, 2, 32, [4, 8, 16], 2, "cpu") for m in ("lcs", "multichannel")}
    large = {m: measure(m, 64, 2, 32, [4, 8, 16], 2, "cpu") for m in ("lcs", "multichannel")}
    assert large["lcs"]["training_mb"] == small["lcs"]["training_mb"]
    assert large["lcs"]["parameters"] == small["lcs"]["parameters"]
    # 62 more output channels of 2 x 32 x 32 float32 logits alone add about 0.5 MB (plus softmax, one-hot, grads)
    assert large["multichannel"]["training_mb"] - small["multichannel"]["training_mb"] > 0.5
    assert large["multichannel"]["inference_mb"] > small["multichannel"]["inference_mb"]


def test_default_label_counts():
    assert default_counts(3, 3) == [2, 3]
    assert default_counts(116, 116) == [2, 4, 8, 16, 32, 64, 116]
    assert default_counts(136, 136)[-2:] == [128, 136]
    assert default_counts(5, 128) == [2, 4, 5, 8, 16, 32, 64, 128]


def test_coarse_to_fine_table_has_every_registration_baseline(tmp_path):
    from lsseg_training import sidebyside
    from lsseg_training.experiments.lcs import _coarse_section

    class Root:
        root = tmp_path

    table1, side = [], []
    for fine in range(1, 21):  # more labels than bar groups fit: a line plot
        table1.append({"coarse_value": 1, "coarse_name": "lobe", "fine_value": fine, "fine_name": f"f{fine}",
                       "coarse_dice": 0.9, "naive_dice": 0.1, "fine_dice": 0.4})  # fmt: skip
        for method, value in (
            (sidebyside.NAIVE, 0.2),
            (sidebyside.AFFINE, 0.3),
            (sidebyside.DEFORMABLE, 0.5),
        ):
            side.append({"method": method, "fine_value": str(fine), "dice": str(value)})
    plots = []
    lines = "\n".join(_coarse_section(table1, side, {}, "a test map", Root(), plots))
    header = "| coarse label | coarse Dice | fine label | naive | fine-grained (LCS) | atlas at world coordinates | "
    assert header + "affine propagation | deformable propagation |" in lines
    assert "| lobe (1) | 0.900 | f3 (3) | 0.100 | 0.400 | 0.200 | 0.300 | 0.500 |" in lines
    assert (
        "naive 0.100, fine-grained (LCS) 0.400, atlas at world coordinates 0.200, affine propagation 0.300, "
        in lines
    )
    assert plots == [tmp_path / "coarse_to_fine.png"] and plots[0].stat().st_size > 1000
    # without fine_methods.csv the table says the baselines were not measured
    assert "Registration baselines: not measured" in "\n".join(
        _coarse_section(table1, [], {}, "m", Root(), [])
    )


def test_aligned_variants_pair_with_the_run_they_change_and_need_3d(tmp_path):
    flat = phantoms(tmp_path / "flat", tasks=1, cases=3)[0]
    refused = tmp_path / "refused"
    command = ["experiment", "lcs", "--data", flat, "--out", refused, "--steps", 2, "--channels", "4,8,16"]
    command += ["--device", "cpu", "--threads", 1, "--variants", "every-level", "aligned-k4"]
    assert lsseg(*command) == 2
    assert not refused.exists()  # refused before anything trained or was written

    data = phantoms(tmp_path / "data", tasks=1, dims=3, size=24, cases=3)[0]
    out = tmp_path / "exp"
    command = ["experiment", "lcs", "--data", data, "--out", out, "--steps", 2, "--label-counts", "3"]
    command += ["--memory-label-counts", "2", "--channels", "4,8,16", "--device", "cpu", "--threads", 1]
    command += ["--variants", "every-level", "every-level-aligned", "aligned-k4", "aligned-k4-competing"]
    command += ["aligned-codes", "aligned-deformable"]
    assert lsseg(*command) == 0
    # registration with one and with 2 annotated cases joins the finished experiment, scored beside LCS
    assert lsseg(*command, "--atlas-baselines", 2) == 0
    report = (out / "report.md").read_text()
    assert "--atlas-baselines 2" in report.splitlines()[2]
    for name in ("registration: deformable propagation", "registration: multi-atlas x2"):
        assert f"| {name} | " in report
        assert f"- LCS at least {name.removeprefix('registration: ')} (no network) at 3 labels: " in report
    with open(out / "metrics.csv", newline="") as handle:
        scored = [r for r in csv.DictReader(handle) if r["method"] == "registration: multi-atlas x2"]
    assert scored and {r["label_count"] for r in scored} == {"3"}
    assert lsseg(*command, "--atlas-baselines", 4) == 2  # the phantom data has 3 training cases
    rows = {
        line.split(" | ")[0].lstrip("| "): line for line in report.splitlines() if line.startswith("| lcs ")
    }
    # each one is compared with the run it changes by one option, not with the published LCS
    assert rows["lcs every-level"].endswith("|") and " vs " not in rows["lcs every-level"]
    assert " vs every-level |" in rows["lcs every-level-aligned"]
    assert " vs every-level-aligned |" in rows["lcs aligned-k4"]
    assert " vs aligned-k4 |" in rows["lcs aligned-k4-competing"]
    assert " vs every-level-aligned |" in rows["lcs aligned-codes"]
    assert '"label_codes": 3' in (out / "runs" / "lcs_aligned-codes" / "bundle.json").read_text()
    assert " vs every-level-aligned |" in rows["lcs aligned-deformable"]
    assert (
        '"atlas_warp": "deformable"' in (out / "runs" / "lcs_aligned-deformable" / "bundle.json").read_text()
    )
    manifest = (out / "runs" / "lcs_aligned-k4-competing" / "bundle.json").read_text()
    # 4 labels per image, capped at the phantom atlas's 3
    for option in ('"align_cases": "affine"', '"labels_per_image": 3', '"loss": "competing"',
                   '"label_draw": "neighbours"', '"conditioning": "every-level"'):  # fmt: skip
        assert option in manifest, option
    assert '"loss": "competing"' not in (out / "runs" / "lcs_aligned-k4" / "bundle.json").read_text()

"""`lsseg bench` runs and reports consistent results (timings are reported, never asserted)."""

from __future__ import annotations

import json

from lsseg_training.cli import main


def test_bench_lcs_and_heads(capsys):
    assert (
        main(
            [
                "bench",
                "lcs",
                "--labels",
                "3",
                "--size",
                "32",
                "--chunk",
                "2",
                "--repeats",
                "1",
                "--device",
                "cpu",
                "--many",
                "4",
                "--grid",
                "32,24,32",
                "--json",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{") :])
    assert result["labels"] == 3 and result["max_abs_difference"] < 1e-5 and result["speedup"] > 0
    many = result["many_vs_one"]
    assert many["labels"] == 4 and many["grid"] == "32x24x32" and set(many["rows"]) == {"lcs", "lcs_refine"}
    assert all(row["ratio"] > 0 for row in many["rows"].values())
    assert (
        main(
            [
                "bench",
                "heads",
                "--task-labels",
                "2,5",
                "--size",
                "32",
                "--repeats",
                "1",
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("{") :])["rows"]
    assert rows["labelsharing"]["output_channels"] == 6 and rows["multichannel"]["output_channels"] == 8
    assert rows["individual"]["models"] == 2

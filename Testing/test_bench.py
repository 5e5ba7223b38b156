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
    assert many["labels"] == 4 and many["grid"] == "32x24x32"
    assert set(many["rows"]) == {"lcs", "lcs_every_level", "lcs_refine"}
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
    # label sharing's default head keeps its outputs, adds the controller's parameters
    assert rows["ls-dynamic"]["output_channels"] == 6 and rows["ls-dynamic"]["models"] == 1
    assert rows["ls-dynamic"]["parameters"] > rows["labelsharing"]["parameters"]


def test_bench_train_json_has_every_field_on_cpu(capsys):
    from lsseg_training.bench_train import FIELDS, METHODS

    argv = ["bench", "train", "--steps", "2", "--size-2d", "32", "--size-3d", "16", "--cases", "2"]
    argv += ["--device", "cpu", "--train-args", "--channels 4,8,16 --batch 1", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{") :])
    assert result["device"] == "cpu" and result["threads"] >= 1
    assert set(result["methods"]) == set(METHODS)
    for name, row in result["methods"].items():
        assert row["device_vs_legacy"] > 0 and row["legacy_vs_device_data_time"] > 0, name
        for pipeline in ("device", "legacy"):
            r = row[pipeline]
            assert all(field in r for field in FIELDS), (name, pipeline, r)
            assert r["steps"] >= 1 and r["steps_per_s"] > 0 and r["samples_per_s"] == r["steps_per_s"]
            assert 0.0 <= r["data_wait_share"] <= 1.0 and r["data_ms_per_step"] >= 0
            assert r["peak_memory_mb"] > 0 and r["peak_memory_kind"] == "process_resident"
            assert r["gpu_utilisation"] is None  # no GPU: null, not a made-up number


def test_bench_train_compares_settings_in_one_run(capsys):
    argv = ["bench", "train", "--methods", "lcs", "--pipelines", "device", "--steps", "2", "--size-3d", "16"]
    argv += ["--cases", "2", "--device", "cpu", "--train-args", "--channels 4,8,16 --batch 1", "--json"]
    assert main([*argv, "--compare", "--labels-per-image 2", "--amp bf16"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{") :])
    assert result["train_args"] == "--channels 4,8,16 --batch 1"
    assert "steps_per_s_vs_baseline" not in result["methods"]["lcs"]["device"]  # the baseline itself
    assert [c["train_args"] for c in result["compare"]] == ["--labels-per-image 2", "--amp bf16"]
    for compared in result["compare"]:
        row, base = compared["methods"]["lcs"]["device"], result["methods"]["lcs"]["device"]
        assert row["steps_per_s_vs_baseline"] == round(row["steps_per_s"] / base["steps_per_s"], 3)
        assert row["peak_memory_vs_baseline"] > 0
    # the text report names each setting; a repeated or empty setting is refused
    assert main([*argv[:-1], "--compare", "--labels-per-image 2"]) == 0
    assert (
        "with --labels-per-image 2 (steps/s and peak memory over the baseline's above):"
        in capsys.readouterr().out
    )
    assert main([*argv, "--compare", "--amp bf16", " --amp bf16"]) == 2
    assert main([*argv, "--compare", " "]) == 2

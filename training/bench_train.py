"""``lsseg bench train``: training throughput of every method at its default settings, through the real
``lsseg train`` command on phantom data, once per input pipeline (``device`` and ``legacy``) in the same run.

For each (method, pipeline) it reports steps/s, samples/s, the share of step time spent waiting for the next
batch, peak memory (CUDA: the allocator's peak; CPU: the process's peak resident memory during the loop) and
the mean GPU utilisation (NVML through ``torch.cuda.utilization``; null where unavailable), as read from the
run's ``throughput.json``, plus the data time per step in milliseconds. The first step of every run is warm-up
and not counted. ``device_vs_legacy`` is samples/s of the device pipeline over the legacy one and
``legacy_vs_device_data_time`` the ratio of their data time per step, measured one after the other in this
process (``--repeats N``: alternately N times, each pipeline's fastest run kept). ``--compare ARGS ...`` measures
further settings (a lever, ``--labels-per-image 4``, ...) in the same run and gives each one's steps/s and peak
memory as ratios to the baseline's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

from LabelSharingSegLib.engine.device import DEVICE_CHOICES

from .pipeline import PIPELINES
from .throughput import THROUGHPUT_FILE

# name -> (train command, dims of its data, tasks it trains on)
METHODS = {
    "labelsharing_2d": ("labelsharing", 2, 2),
    "labelsharing_3d": ("labelsharing", 3, 2),
    "lcs": ("lcs", 3, 1),
    "multichannel": ("multichannel", 2, 2),
    "individual": ("individual", 2, 2),
}
FIELDS = (
    "steps_per_s",
    "samples_per_s",
    "data_wait_share",
    "data_ms_per_step",
    "peak_memory_mb",
    "peak_memory_kind",
    "gpu_utilisation",
)


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="training throughput per method, device pipeline vs legacy pipeline",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated from {','.join(METHODS)}")
    p.add_argument("--pipelines", default=",".join(PIPELINES), help="comma-separated from device,legacy")
    p.add_argument("--steps", type=int, default=12, help="steps per run (the first is warm-up)")
    p.add_argument("--size-2d", type=int, default=128, help="phantom image edge for 2D methods")
    p.add_argument("--size-3d", type=int, default=64, help="phantom volume edge for 3D methods")
    p.add_argument("--cases", type=int, default=4, help="training cases per phantom task")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the pipelines alternately this many times and keep each one's fastest run (on a shared "
        "machine the best of several runs is the least disturbed one)",
    )
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument(
        "--train-args",
        default="",
        help="extra `lsseg train` options for every run, e.g. '--channels 4,8,16 --batch 4' (default: none, "
        "i.e. each method's default settings)",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="ARGS",
        help="further `lsseg train` options, each measured in the same run beside --train-args alone (the "
        "baseline) and reported as its ratio to it, e.g. --compare '--labels-per-image 4' '--amp off' (each on top "
        "of --train-args; with --repeats the settings alternate too)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run_train)


def _choices(text: str, allowed, what: str) -> list[str]:
    from LabelSharingSegLib.engine.errors import InputError

    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise InputError(f"--{what}: unknown or empty {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return names


def _combine(paths: list[Path]) -> dict:
    """One row from the throughput.json files of a run (several for `individual`: one per task)."""
    parts = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    first = parts[0]
    steps = sum(p["steps"] for p in parts)
    step_s = max(sum(p["step_seconds"] for p in parts), 1e-9)
    utils = [p["gpu_utilisation"] for p in parts if p["gpu_utilisation"] is not None]
    peaks = [p["peak_memory_mb"] for p in parts if p["peak_memory_mb"] is not None]
    return {
        "device": first["device"],
        "device_name": first["device_name"],
        "threads": first["threads"],
        "steps": steps,
        "samples_per_step": first["samples_per_step"],
        "steps_per_s": round(steps / step_s, 4),
        "samples_per_s": round(steps * first["samples_per_step"] / step_s, 4),
        "data_wait_share": round(sum(p["data_seconds"] for p in parts) / step_s, 4),
        "data_ms_per_step": round(1000 * sum(p["data_seconds"] for p in parts) / max(steps, 1), 3),
        "peak_memory_mb": max(peaks) if peaks else None,
        "peak_memory_kind": first["peak_memory_kind"],
        "gpu_utilisation": round(sum(utils) / len(utils), 1) if utils else None,
    }


def run_train(args: argparse.Namespace) -> int:
    import shlex

    from LabelSharingSegLib.engine.errors import InputError

    from .data.phantom import make_phantom_tasks

    methods = _choices(args.methods, METHODS, "methods")
    pipelines = _choices(args.pipelines, PIPELINES, "pipelines")
    if args.steps < 2 or args.repeats < 1:
        raise InputError("--steps must be at least 2 (the first step is warm-up) and --repeats at least 1")
    compared = [c.strip() for c in args.compare]
    if "" in compared or len(set(compared)) != len(compared):
        raise InputError("--compare: each setting once, and none empty (the baseline is measured anyway)")
    settings = ["", *compared]  # "" = the baseline: --train-args alone
    extra = shlex.split(args.train_args)
    # setting -> method -> pipeline -> its fastest row
    rows: dict[str, dict[str, dict]] = {setting: {} for setting in settings}
    with tempfile.TemporaryDirectory(prefix="lsseg-bench-train-") as tmp:
        root = Path(tmp)
        data: dict[tuple[int, int], list[Path]] = {}
        for name in methods:
            command, dims, tasks = METHODS[name]
            key = (dims, tasks)
            if key not in data:
                size = args.size_2d if dims == 2 else args.size_3d
                data[key] = make_phantom_tasks(
                    root / f"data{dims}d{tasks}", tasks=tasks, dims=dims, size=size, cases=args.cases, seed=0
                )
            runs = [(r, i, p) for r in range(args.repeats) for i in range(len(settings)) for p in pipelines]
            for repeat, index, pipeline in runs:
                out = root / f"{name}_{index}_{pipeline}_{repeat}"
                head = [command, "--data", *map(str, data[key]), "--out", str(out)]
                options = extra + shlex.split(settings[index])
                row = _measure(head, options, args, pipeline, f"{name} / {pipeline}")
                best = rows[settings[index]].setdefault(name, {}).get(pipeline)
                if best is None or row["samples_per_s"] > best["samples_per_s"]:
                    rows[settings[index]][name][pipeline] = row
            for setting in settings:
                _pipeline_ratios(rows[setting][name])
                if setting:
                    _baseline_ratios(rows[setting][name], rows[""][name], pipelines)
    first = next(iter(next(iter(rows[""].values())).values()))
    result = {
        "device": first["device"],
        "device_name": first["device_name"],
        "threads": first["threads"],
        "steps": args.steps,
        "repeats": args.repeats,
        "train_args": args.train_args,
        "methods": rows[""],
        "compare": [{"train_args": setting, "methods": rows[setting]} for setting in settings[1:]],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print_table(result, pipelines)
    return 0


def _measure(head: list[str], options: list[str], args: argparse.Namespace, pipeline: str, what: str) -> dict:
    """One real `lsseg train` run through ``pipeline``: ``head`` (method, data, out), the bench's own settings,
    then ``options`` (last, so that they win); its throughput row."""
    from LabelSharingSegLib.engine.errors import InputError

    from .cli import main

    out = Path(head[head.index("--out") + 1])
    argv = ["train", *head, "--steps", str(args.steps), "--val-fraction", "0", "--quiet"]
    argv += ["--device", args.device, "--checkpoint-every", str(args.steps), "--pipeline", pipeline]
    argv += ["--sync-data-timing", *options]
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        code = main(argv)
    if code != 0:
        raise InputError(f"bench run {what} failed ({code}): {captured.getvalue()[-500:]}")
    return _combine(sorted(out.with_name(out.name + ".training").rglob(THROUGHPUT_FILE)))


def _pipeline_ratios(row: dict) -> None:
    """The device pipeline against the legacy one, where both ran."""
    if "device" in row and "legacy" in row:
        legacy = row["legacy"]["samples_per_s"]
        row["device_vs_legacy"] = round(row["device"]["samples_per_s"] / max(legacy, 1e-9), 3)
        data_device = max(row["device"]["data_ms_per_step"], 1e-6)
        row["legacy_vs_device_data_time"] = round(row["legacy"]["data_ms_per_step"] / data_device, 3)


def _baseline_ratios(row: dict, baseline: dict, pipelines: list[str]) -> None:
    """A compared setting's steps/s and peak memory over the baseline's, per pipeline (same run, same data)."""
    for pipeline in pipelines:
        mine, base = row[pipeline], baseline[pipeline]
        mine["steps_per_s_vs_baseline"] = round(mine["steps_per_s"] / max(base["steps_per_s"], 1e-9), 3)
        if mine["peak_memory_mb"] is not None and base["peak_memory_mb"]:
            mine["peak_memory_vs_baseline"] = round(mine["peak_memory_mb"] / base["peak_memory_mb"], 3)


def _print_table(result: dict, pipelines: list[str]) -> None:
    print(
        f"training throughput on {result['device_name']} ({result['device']}, {result['threads']} threads), "
        f"{result['steps']} steps per run, first step not counted, best of {result['repeats']}"
    )
    header = f"  {'method':16s} {'pipeline':8s} {'steps/s':>8s} {'samples/s':>10s} {'data wait':>9s} "
    print(header + f"{'data ms':>8s} {'peak MB':>8s} {'GPU util':>8s}")
    for setting in [{"train_args": "", "methods": result["methods"]}, *result["compare"]]:
        if setting["train_args"]:
            print(f"  with {setting['train_args']} (steps/s and peak memory over the baseline's above):")
        for name, row in setting["methods"].items():
            for pipeline in pipelines:
                r = row[pipeline]
                util = "n/a" if r["gpu_utilisation"] is None else f"{r['gpu_utilisation']:.0f}%"
                peak = "n/a" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
                versus = ""
                if "steps_per_s_vs_baseline" in r:
                    versus = f"  {r['steps_per_s_vs_baseline']:.2f}x steps/s"
                    if "peak_memory_vs_baseline" in r:
                        versus += f", {r['peak_memory_vs_baseline']:.2f}x memory"
                print(
                    f"  {name:16s} {pipeline:8s} {r['steps_per_s']:8.3f} {r['samples_per_s']:10.3f} "
                    f"{100 * r['data_wait_share']:8.1f}% {r['data_ms_per_step']:8.1f} {peak:>8s} {util:>8s}{versus}"
                )
            if "device_vs_legacy" in row:
                print(
                    f"  {name:16s} device / legacy samples/s: {row['device_vs_legacy']:.2f}x; legacy / device "
                    f"data time per step: {row['legacy_vs_device_data_time']:.2f}x"
                )

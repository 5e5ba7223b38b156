"""``lsseg bench``: performance measured as ratios within one run on one machine (never asserted in tests).

* ``lsseg bench lcs``   - LCS inference over K atlas labels: a naive loop (full network per label, the encoder
  re-run every time) vs our split (encoder once, conditioned decoder batched in chunks). Also checks that
  both give the same probabilities.
* ``lsseg bench heads`` - label sharing vs the multi-channel baseline vs one model per task for given task
  label counts: output channels, parameters and forward time.
* ``lsseg bench train`` - training throughput of every method, device vs legacy input pipeline
  (``bench_train.py``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from LabelSharingSegLib.engine.device import DEVICE_CHOICES, resolve_device
from LabelSharingSegLib.engine.network_config import LCSConfig, UNetConfig
from LabelSharingSegLib.engine.networks import build_network


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="performance benchmarks (ratios measured in one run)")
    sub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    lcs = sub.add_parser("lcs", help="LCS: batched conditioned decoding vs a naive per-label loop")
    lcs.add_argument("--labels", type=int, default=16)
    lcs.add_argument("--size", type=int, default=64, help="cubic volume edge in voxels (multiple of 16)")
    lcs.add_argument("--chunk", type=int, default=8)
    lcs.add_argument("--repeats", type=int, default=2)
    lcs.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    lcs.add_argument("--json", action="store_true", help="print the results as JSON")
    lcs.set_defaults(func=run_lcs)
    heads = sub.add_parser("heads", help="label sharing vs multi-channel vs individual models")
    heads.add_argument("--task-labels", default="3,8,22", help="comma-separated label counts per task")
    heads.add_argument("--size", type=int, default=128, help="2D image edge in pixels")
    heads.add_argument("--repeats", type=int, default=5)
    heads.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    heads.add_argument("--json", action="store_true")
    heads.set_defaults(func=run_heads)
    from .bench_train import register as register_train

    register_train(sub)


def _timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def run_lcs(args: argparse.Namespace) -> int:
    device, note = resolve_device(args.device)
    if note:
        print(note)
    torch.manual_seed(0)
    net = build_network(LCSConfig(spatial_dims=3)).to(device).eval()
    shape = (1, 1) + (args.size,) * 3
    image = torch.randn(shape, device=device)
    atlas = torch.randn(shape, device=device)
    masks = (torch.rand((args.labels, 1) + (args.size,) * 3, device=device) > 0.8).float()

    def naive():
        with torch.no_grad():
            return torch.cat([torch.sigmoid(net(image, atlas, masks[k : k + 1])) for k in range(args.labels)])

    def split():
        with torch.no_grad():
            encoded = net.encode(image)
            return torch.cat(
                [
                    torch.sigmoid(
                        net.decode_conditioned(encoded, net.condition(atlas, masks[s : s + args.chunk]))
                    )
                    for s in range(0, args.labels, args.chunk)
                ]
            )

    difference = float((naive() - split()).abs().max())
    t_naive = _timed(naive, args.repeats, device)
    t_split = _timed(split, args.repeats, device)
    result = {
        "device": str(device),
        "labels": args.labels,
        "size": args.size,
        "chunk": args.chunk,
        "naive_s": round(t_naive, 4),
        "split_s": round(t_split, 4),
        "speedup": round(t_naive / t_split, 3),
        "max_abs_difference": difference,
    }
    _report(
        result,
        args.json,
        f"LCS, {args.labels} labels on {args.size}^3: naive {t_naive:.3f} s, encoder-once "
        f"batched {t_split:.3f} s -> {t_naive / t_split:.2f}x faster (max |diff| {difference:.2e})",
    )
    return 0


def run_heads(args: argparse.Namespace) -> int:
    device, note = resolve_device(args.device)
    if note:
        print(note)
    counts = [int(c) for c in args.task_labels.split(",") if c.strip()]
    x = torch.randn(4, 1, args.size, args.size, device=device)
    rows = {}
    configs = {
        "labelsharing": [UNetConfig(spatial_dims=2, out_channels=max(counts) + 1)],
        "multichannel": [UNetConfig(spatial_dims=2, out_channels=sum(counts) + 1)],
        "individual": [UNetConfig(spatial_dims=2, out_channels=c + 1) for c in counts],
    }
    for name, cfgs in configs.items():
        nets = [build_network(c).to(device).eval() for c in cfgs]

        def forward(nets=nets):
            with torch.no_grad():
                for n in nets:  # every model once: what segmenting all tasks costs
                    n(x)

        rows[name] = {
            "models": len(nets),
            "output_channels": sum(c.out_channels for c in cfgs),
            "parameters": sum(sum(p.numel() for p in n.parameters()) for n in nets),
            "forward_all_tasks_s": round(_timed(forward, args.repeats, device), 4),
        }
    base = rows["labelsharing"]
    for row in rows.values():
        row["parameters_ratio"] = round(row["parameters"] / base["parameters"], 3)
        row["time_ratio"] = round(row["forward_all_tasks_s"] / base["forward_all_tasks_s"], 3)
    lines = [
        f"tasks with {counts} labels, batch 4 of {args.size}x{args.size} (ratios relative to label sharing):"
    ]
    for name, row in rows.items():
        lines.append(
            f"  {name:13s} models {row['models']}  outputs {row['output_channels']:3d}  params "
            f"{row['parameters']:8d} ({row['parameters_ratio']}x)  time {row['forward_all_tasks_s']:.4f} s "
            f"({row['time_ratio']}x)"
        )
    _report({"device": str(device), "task_labels": counts, "rows": rows}, args.json, "\n".join(lines))
    return 0


def _report(result: dict, as_json: bool, text: str) -> None:
    print(json.dumps(result, indent=2) if as_json else text)

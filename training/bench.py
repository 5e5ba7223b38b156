"""``lsseg bench``: performance measured as ratios within one run on one machine (never asserted in tests).

* ``lsseg bench lcs``   - LCS inference over K atlas labels: a naive loop (full network per label, the encoder
  re-run every time) vs our split (encoder once, conditioned decoder batched in chunks). Also checks that
  both give the same probabilities. Then the cost of ``--many`` labels vs one label, in one run, for the paper's
  LCS, for LCS with every-level conditioning (``lsseg train lcs``'s default) and for the refine network that runs
  in a box around each label (goal: ratio <= 10).
* ``lsseg bench heads`` - label sharing vs the multi-channel baseline vs one model per task for given task
  label counts: output channels, parameters and forward time.
* ``lsseg bench train`` - training throughput of every method, device vs legacy input pipeline
  (``bench_train.py``).
* ``lsseg bench region`` - a task kept to the region it was trained on vs every slice, on a real whole head:
  labelled voxels outside the region, and time (``bench_region.py``).
* ``lsseg bench registration`` - deformable registration methods (fine-label Dice, time) and what the
  registration cache saves, on real test cases (``bench_registration.py``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from LabelSharingSegLib.engine.device import DEVICE_CHOICES, resolve_device
from LabelSharingSegLib.engine.errors import InputError
from LabelSharingSegLib.engine.network_config import (
    DoDNetConfig,
    LCSConfig,
    NetworkConfig,
    RefineLCSConfig,
    UNetConfig,
)
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
    lcs.add_argument(
        "--many",
        type=int,
        default=116,
        help="label count for the cost-follows-labels ratio (K labels vs 1; default 116 = AAL)",
    )
    lcs.add_argument(
        "--grid",
        default="64,80,64",
        help="grid of the K-vs-1 measurement (default: a brain at about 3 mm)",
    )
    lcs.add_argument(
        "--archs",
        default="lcs,lcs_every_level,lcs_refine",
        help="networks of the K-vs-1 measurement (comma-separated from lcs = the paper's conditioning, "
        "lcs_every_level = the training default, lcs_refine; default all three)",
    )
    lcs.set_defaults(func=run_lcs)
    heads = sub.add_parser("heads", help="label sharing vs multi-channel vs individual models")
    heads.add_argument("--task-labels", default="3,8,22", help="comma-separated label counts per task")
    heads.add_argument("--size", type=int, default=128, help="2D image edge in pixels")
    heads.add_argument("--repeats", type=int, default=5)
    heads.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    heads.add_argument("--json", action="store_true")
    heads.set_defaults(func=run_heads)
    from .bench_alignment import register as register_alignment
    from .bench_region import register as register_region
    from .bench_registration import register as register_registration
    from .bench_train import register as register_train

    register_train(sub)
    register_registration(sub)
    register_alignment(sub)
    register_region(sub)


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
    many = _many_vs_one(args, device)
    result = {
        "device": str(device),
        "labels": args.labels,
        "size": args.size,
        "chunk": args.chunk,
        "naive_s": round(t_naive, 4),
        "split_s": round(t_split, 4),
        "speedup": round(t_naive / t_split, 3),
        "max_abs_difference": difference,
        "many_vs_one": many,
    }
    lines = [
        f"LCS, {args.labels} labels on {args.size}^3: naive {t_naive:.3f} s, encoder-once "
        f"batched {t_split:.3f} s -> {t_naive / t_split:.2f}x faster (max |diff| {difference:.2e})",
        f"{args.many} labels vs 1 on a {many['grid']} grid (time ratio, goal <= 10):",
    ]
    for arch, row in many["rows"].items():
        lines.append(
            f"  {arch:15s} 1 label {row['one_s']:.3f} s, {args.many} labels {row['many_s']:.3f} s -> "
            f"ratio {row['ratio']:.2f}"
        )
    _report(result, args.json, "\n".join(lines))
    return 0


def _blob_masks(count: int, grid: tuple[int, ...], seed: int) -> torch.Tensor:
    """``count`` random balls of radius 3-7 voxels (AAL regions at about 3 mm) inside the grid."""
    generator = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.arange(g, dtype=torch.float32) for g in grid], indexing="ij")
    masks = torch.zeros((count, *grid))
    for k in range(count):
        u = torch.rand(4, generator=generator)
        radius = 3.0 + 4.0 * float(u[3])
        centre = [radius + float(u[a]) * (g - 2 * radius) for a, g in enumerate(grid)]
        distance = sum((axis - c) ** 2 for axis, c in zip(axes, centre))
        masks[k] = (distance <= radius**2).float()
    return masks


def _many_vs_one(args: argparse.Namespace, device: torch.device) -> dict:
    """Segmenting K labels vs 1, in one run: LCS (conditioned decoder over the whole grid, batched) with the
    paper's conditioning and with every-level conditioning, and the refine network (encoder once, local head in a
    box around each label, batched)."""
    from LabelSharingSegLib.engine.registered import refined_in_boxes

    grid = tuple(int(g) for g in args.grid.split(","))
    masks = _blob_masks(args.many, grid, seed=0).to(device)
    scan, atlas = torch.randn((1, 1, *grid), device=device), torch.randn((1, 1, *grid), device=device)
    # the shipped bundles' widths (lcs-brain-aal: 8-64; lcs-refine-brain-aal: encoder 8, head 16)
    refine = build_network(RefineLCSConfig(spatial_dims=3, channels=(8, 16))).to(device).eval()

    def conditioned(conditioning: str):
        config = LCSConfig(spatial_dims=3, channels=(8, 16, 32, 64), conditioning=conditioning)
        lcs = build_network(config).to(device).eval()

        def run(count: int):
            with torch.no_grad():
                encoded = lcs.encode(scan)
                for s in range(0, count, args.chunk):
                    lcs.decode_conditioned(
                        encoded, lcs.condition(atlas, masks[s : min(count, s + args.chunk), None])
                    )

        return run

    def boxed(count: int):
        with torch.no_grad():
            features = refine.encode(scan, atlas)
            for _ in refined_in_boxes(refine, features, masks[:count], args.chunk):
                pass

    rows = {}
    runs = {
        "lcs": conditioned("bottleneck"),
        "lcs_every_level": conditioned("every-level"),
        "lcs_refine": boxed,
    }
    archs = getattr(args, "archs", None)
    wanted = set(runs) if archs is None else {a.strip() for a in archs.split(",")}
    unknown = wanted - set(runs)
    if unknown:
        raise InputError(
            f"--archs: unknown network(s) {', '.join(sorted(unknown))}; choose {', '.join(runs)}"
        )
    for name, fn in runs.items():
        if name not in wanted:
            continue
        one = _timed(lambda fn=fn: fn(1), args.repeats, device)
        many = _timed(lambda fn=fn: fn(args.many), args.repeats, device)
        rows[name] = {"one_s": round(one, 4), "many_s": round(many, 4), "ratio": round(many / one, 3)}
    return {"grid": "x".join(map(str, grid)), "labels": args.many, "rows": rows}


def run_heads(args: argparse.Namespace) -> int:
    device, note = resolve_device(args.device)
    if note:
        print(note)
    counts = [int(c) for c in args.task_labels.split(",") if c.strip()]
    x = torch.randn(4, 1, args.size, args.size, device=device)
    rows = {}
    shared = max(counts) + 1
    codes = [torch.full((x.shape[0],), t, device=device) for t in range(len(counts))]
    configs: dict[str, list[NetworkConfig]] = {
        "labelsharing": [UNetConfig(spatial_dims=2, out_channels=shared)],
        # the default head is generated per task, so every task needs a pass of its own
        "ls-dynamic": [DoDNetConfig(spatial_dims=2, out_channels=shared, num_tasks=len(counts))],
        "multichannel": [UNetConfig(spatial_dims=2, out_channels=sum(counts) + 1)],
        "individual": [UNetConfig(spatial_dims=2, out_channels=c + 1) for c in counts],
    }
    for name, cfgs in configs.items():
        nets = [build_network(c).to(device).eval() for c in cfgs]

        def forward(nets=nets, cfgs=cfgs):
            with torch.no_grad():
                for n, c in zip(nets, cfgs):  # every model once: what segmenting all tasks costs
                    if c.TAKES_TASK:
                        for code in codes:
                            n(x, code)
                    else:
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

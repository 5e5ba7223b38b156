#!/usr/bin/env bash
# Run ON the lent GPU machine, in one device call (at most 9.3 minutes), after, here:
#   bash scripts/gpu_wheels.sh && bash scripts/gpu_data.sh DATA/Dataset801_BrainAAL   (the 2 mm AAL brain)
#   device run, carry [".whl", ".gpudata"], timeout 600:  bash scripts/gpu_lcs_vs_mc.sh
# Issue #15's GPU question: LCS against one multi-channel U-Net on 116 AAL labels at 2 mm (the issue's run:
# multi-channel 0.764, LCS 0.533 at 6000 steps; this script's first run, docs/EXPERIMENTS.md: 0.775 against 0.418).
# By default three trainings side by side on the one GPU, each on its own 5 of the 16 cores, with the same budget
# (6000 steps x batch 2, stopped at the same wall-clock limit if slower) and the same U-Net widths: LCS as
# `lsseg train lcs` trains it (every-level conditioning), LCS as Ma et al. 2022 (bottleneck) and the multi-channel
# U-Net; RUNS (below) sets other trainings. Then `lsseg evaluate` of all of them on the held-out test cases, the
# memory of both methods against the label count on the GPU (as `lsseg experiment lcs` measures it), and
# `lsseg bench train` (issue #10) in the time left. The test cases lie in the frame the networks trained in, so
# they are scored as they are (`--align off`: the machine has no SimpleITK). At most 8 files come back from $OUT:
# keep it that way.
set -u
source "$(dirname "$0")/gpu_env.sh"
deadline=$((SECONDS + ${BUDGET_S:-540}))
left() { echo $((deadline - SECONDS)); }
data=${DATA:-$PWD/.gpudata/Dataset801_BrainAAL}
work=${WORK:-/tmp/lcs-vs-mc}
rm -rf "$work" && mkdir -p "$work"
# RUNS: the trainings, "name method [options]" separated by ';' (e.g. to test an LCS lever at this budget:
# RUNS="lcs-k8 lcs --labels-per-image 8; multichannel multichannel"); each gets an equal share of 15 cores.
# LCS on cases registered to the atlas (the CPU's best LCS, docs/EXPERIMENTS.md): prepare with ALIGN=1
# scripts/gpu_data.sh, then RUNS="lcs-aligned lcs --align-cases affine --registration-cache $PWD/.gpudata/alignments;
# ..."; score its weights here with `lsseg evaluate` (alignment on), not by this script's --align off. On the CPU
# four labels per image added +0.03/+0.04 to aligned LCS (docs/EXPERIMENTS.md, "Deciding between labels"): the run
# that says whether it holds here is "lcs-aligned-k4 lcs --align-cases affine --labels-per-image 4 ...". Label codes
# (--label-codes) changed nothing on the CPU, where each code saw about 8 samples; at this budget with 4 labels per
# image each sees about 155: a fourth run "lcs-aligned-k4-codes lcs --align-cases affine --labels-per-image 4
# --label-codes ..." says whether they help once trained. Each bundle keeps its best-validation weights (picked on
# a sample of labels); on the CPU at 4x the steps two of four runs kept early steps' (1440, 960), 0.011 and 0.022
# below their last step's. LCS correcting a deformable registration (--align-cases deformable; prepare with
# ALIGN=deformable scripts/gpu_data.sh, which compacts the registrations to fit the trip; the CPU's best LCS, level
# with deformable propagation there): "lcs-deformable lcs --align-cases deformable --registration-cache ...";
# its bundle reads the atlas registered onto each scan, so step 2 (--align off) leaves it to be scored here.
# Score LCS bundles here with `lsseg evaluate ... --atlas-baselines 10`: registration of one and of ten annotated
# cases beside them (on the CPU at 4 mm ten cases gave 0.697 against LCS's 0.567; docs/EXPERIMENTS.md).
RUNS=${RUNS:-"lcs-every-level lcs; lcs-paper lcs --conditioning bottleneck; multichannel multichannel"}
IFS=';' read -ra runs <<< "$RUNS"
if [ "${SMOKE:-0}" = 1 ]; then
    steps=4 minutes=1 channels=4,8,16,32 val_every=4 val_labels=4 bench="--steps 3 --size-2d 32 --size-3d 32 --cases 2"
    threads=1
else
    steps=6000 minutes=5.5 channels=16,32,64,128,256 val_every=500 val_labels=24 bench="--steps 40"
    threads=$((15 / ${#runs[@]}))
fi
cores_of() {  # run index -> its cores (all cores in a smoke run)
    if [ "${SMOKE:-0}" = 1 ]; then echo "0-$(($(nproc) - 1))"; else echo "$(($1 * threads))-$(($1 * threads + threads - 1))"; fi
}

train() {  # name cpus method [options]
    local name=$1 cpus=$2 method=$3
    shift 3
    timeout $(($(left) - 120)) taskset -c "$cpus" lsseg train "$method" --data "$data" --out "$work/$name" \
        --steps $steps --batch 2 --spacing 2,2,2 --channels $channels --seed 0 --time-limit $minutes \
        --val-every $val_every --val-labels $val_labels --threads $threads --device $dev --quiet "$@" > "$work/train-$name.log" 2>&1
    echo "$name: rc $? $(tail -n 2 "$work/train-$name.log" | tr '\n' ' ')" | tee -a "$OUT/log.txt"
}
section "1. trainings side by side (${#runs[@]}): $steps steps x batch 2, at most $minutes min each, channels $channels"
pids=() names=()
for i in "${!runs[@]}"; do
    read -ra run <<< "${runs[$i]}"
    train "${run[0]}" "$(cores_of "$i")" "${run[@]:1}" &
    pids+=($!) names+=("${run[0]}")
done
wait "${pids[@]}"  # the trainings only: a bare `wait` would also wait for the nvidia-smi sampler, which never ends

section "2. evaluate on the test cases"
bundles=()
for name in "${names[@]}"; do
    [ -f "$work/$name/bundle.json" ] || continue
    grep -q '"atlas_warp"' "$work/$name/bundle.json" && continue  # needs registration (no SimpleITK here)
    bundles+=("$work/$name")
done
[ ${#bundles[@]} -gt 0 ] && timeout $(($(left) - 60)) lsseg evaluate "${bundles[@]}" --data "$data" --no-hd95 \
    --align off --device $dev --out "$work/evaluation" >> "$OUT/log.txt" 2>&1

section "3. memory against the label count"
timeout $(($(left) - 40)) "$PY" - "$dev" "$channels" > "$OUT/memory.json" 2>> "$OUT/log.txt" <<'PY'
import json, sys
from lsseg_training.experiments.memory import measure
device, channels = sys.argv[1], [int(c) for c in sys.argv[2].split(",")]
rows = [
    measure(method, labels, 3, 64, channels, 2, device)
    for labels in (1, 2, 4, 8, 16, 32, 64, 116, 128)
    for method in ("lcs", "multichannel")
]
print(json.dumps(rows, indent=1))
PY

section "4. lsseg bench train in the time left ($(left) s)"
if [ "$(left)" -gt 100 ]; then
    timeout $(($(left) - 15)) lsseg bench train --device $dev --repeats 1 $bench --json > "$OUT/bench_train.json" 2>> "$OUT/log.txt"
fi
section done
gpu_env_done
# everything else (training logs, throughput, validation curves, evaluation) in one archive, each bundle's weights
# beside it (16 MB a file at most), to evaluate here with registration too
cat "$OUT/device.txt" >> "$OUT/log.txt" && rm -f "$OUT/device.txt"
for name in "${names[@]:0:3}"; do  # 8 files come back at most: the weights of the first three runs
    cp "$work/$name/weights.safetensors" "$OUT/weights-$name.safetensors" 2>/dev/null
done
(cd "$work" && tar czf "$OUT/results.tgz" --exclude='*.safetensors' --exclude='*.pt' .)
ls -la "$OUT"

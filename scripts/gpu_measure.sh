#!/usr/bin/env bash
# Run ON the lent GPU machine, in one device call (at most about 8.5 minutes), after scripts/gpu_wheels.sh here:
#   device run, carry [".whl"], timeout 600:  bash scripts/gpu_measure.sh
# Measures the GPU figures of docs/PERFORMANCE.md (issue #10): `lsseg bench train` for every method and both
# pipelines, the GPU levers one at a time, and two trainings side by side against one alone, with nvidia-smi
# sampled every second. EXTRA=1 adds --fused-optimizer off and --compile (about 3 minutes more: a second call). Everything lands in $OUT (at most 8 files come back: keep it that way).
set -u
source "$(dirname "$0")/gpu_env.sh"
if [ "${SMOKE:-0}" = 1 ]; then
    steps=3 sbs_steps=3 small="--size-2d 32 --size-3d 32 --cases 2" size3d=32 repeats=1
else
    steps=40 sbs_steps=150 small="" size3d=64 repeats=2
fi
section "1. every method, device vs legacy pipeline, default settings"
timeout 240 lsseg bench train --device $dev --steps $steps --repeats $repeats $small --json > "$OUT/bench_default.json" 2>> "$OUT/log.txt"

section "2. levers, device pipeline, each against the defaults in the same run (--compare)"
levers=("--amp off" "--channels-last" "--loss-sync-every 1" "--labels-per-image 3")  # the last: LCS only (its phantom has 3 labels)
[ "${EXTRA:-0}" = 1 ] && levers+=("--fused-optimizer off")
timeout 150 lsseg bench train --device $dev --methods lcs --pipelines device --steps $steps $small \
    --compare "${levers[@]}" --json > "$OUT/bench_levers.jsonl" 2>> "$OUT/log.txt"
timeout 60 lsseg bench train --device $dev --methods labelsharing_2d --pipelines device --steps $steps $small \
    --compare "${levers[@]:0:3}" --json >> "$OUT/bench_levers.jsonl" 2>> "$OUT/log.txt"

section "3. two trainings side by side vs one alone (LCS 3D, half the cores each)"
data=/tmp/sbs
rm -rf "$data"
lsseg data phantom --out "$data" --tasks 1 --dims 3 --size $size3d --cases 4 --seed 0 >> "$OUT/log.txt" 2>&1
set -- "$data"/Dataset*
run_lcs() {  # data cpus name threads
    timeout 70 taskset -c "$2" lsseg train lcs --data "$1" --out "/tmp/sbs-$3" --steps $sbs_steps --device $dev --quiet --threads "$4" --val-fraction 0
}
cpus=$(nproc)
half=$((cpus / 2))
second="$half-$((cpus - 1))"
first="0-$((half - 1))"
threads=$half
if [ "$half" -lt 1 ]; then first=0 second=0 threads=1; fi
rm -rf /tmp/sbs-solo* /tmp/sbs-left* /tmp/sbs-right*
run_lcs "$1" "$first" solo "$threads" >> "$OUT/log.txt" 2>&1
run_lcs "$1" "$first" left "$threads" >> "$OUT/log.txt" 2>&1 &
left=$!
run_lcs "$1" "$second" right "$threads" >> "$OUT/log.txt" 2>&1
wait "$left"
for name in solo left right; do
    echo "$name $(cat /tmp/sbs-$name.training/throughput.json 2>/dev/null)" >> "$OUT/side_by_side.txt"
done

if [ "${EXTRA:-0}" = 1 ]; then
section "4. torch.compile (first steps compile)"
timeout 120 lsseg bench train --device $dev --methods lcs --pipelines device --steps $steps $small --train-args=--compile \
    --json > "$OUT/bench_compile.json" 2>> "$OUT/log.txt"
fi
section done
gpu_env_done

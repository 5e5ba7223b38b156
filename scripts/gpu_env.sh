# Sourced by the scripts that run ON the lent GPU machine (gpu_measure.sh, gpu_lcs_vs_mc.sh): installs the carried
# wheels (.whl/, from scripts/gpu_wheels.sh), points the project's two import names at the checkout without
# installing it, puts an `lsseg` command on PATH (also for `timeout` and `taskset`, which cannot run shell functions),
# starts nvidia-smi sampling into $OUT/smi.csv (stopped by gpu_env_done) and writes $OUT/device.txt.
# SMOKE=1 PYTHON=.venv/bin/python runs a script on the CPU with tiny sizes, to check it before spending device time.
PY=${PYTHON:-python3}  # the lent machine's python3 holds torch
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p /tmp/pkgs
ln -sfn "$PWD/training" /tmp/pkgs/lsseg_training
ln -sfn "$PWD/LabelSharingSeg/LabelSharingSegLib" /tmp/pkgs/LabelSharingSegLib
export PYTHONPATH=/tmp/pkgs${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
printf '#!/usr/bin/env bash\nexec "%s" -c "import sys; from lsseg_training.cli import main; sys.exit(main(sys.argv[1:]))" "$@"\n' \
    "$(cd "$(dirname "$(command -v "$PY")")" && pwd)/$(basename "$PY")" > /tmp/pkgs/lsseg
chmod +x /tmp/pkgs/lsseg
export PATH=/tmp/pkgs:$PATH
if [ "${SMOKE:-0}" = 1 ]; then dev=cpu; else dev=cuda; fi

smi_pid=
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -l 1 > "$OUT/smi.csv" 2>&1 &
    smi_pid=$!
    nvidia-smi -L > "$OUT/device.txt" 2>&1
fi
"$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")' \
    >> "$OUT/device.txt" 2>&1

section() { echo "=== $(date +%T) $*" | tee -a "$OUT/log.txt"; }
gpu_env_done() { [ -n "$smi_pid" ] && kill "$smi_pid" 2>/dev/null; true; }

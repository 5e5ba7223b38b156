#!/usr/bin/env bash
# Run HERE (not on the GPU machine): download the wheels the lent GPU machine lacks into .whl/ (ignored by git),
# for Python 3.12 on x86-64. The machine has torch, numpy, scipy, matplotlib, tqdm and safetensors already.
# SimpleITK (53 MB of the 64 MiB a device call may carry) only with WITH_SITK=1: the benchmarks don't register.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
py=${PYTHON:-python3}
specs=(monai==1.6.1 nibabel==5.4.2)
[ "${WITH_SITK:-0}" = 1 ] && specs+=(SimpleITK==2.5.7)
for spec in "${specs[@]}"; do
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$spec"
done
ls -la .whl

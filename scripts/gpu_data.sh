#!/usr/bin/env bash
# Run HERE: copy nnU-Net datasets into .gpudata/ (ignored by git) small enough to carry to the lent GPU machine
# (64 MiB a call, wheels and checkout included). Images are stored as int16 with a NIfTI scale factor: half the
# float32 size; the largest change is about 1e-5 of the intensity range. Labels and the other files are copied as
# they are.
# Usage: bash scripts/gpu_data.sh DATASET_DIR...   (e.g. the 2 mm Dataset801_BrainAAL of `lsseg data build`)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
grep -qx '/.gpudata/' "$root/.git/info/exclude" 2>/dev/null || echo '/.gpudata/' >> "$root/.git/info/exclude"
py=${PYTHON:-$root/.venv/bin/python}
for src in "$@"; do
    dst="$root/.gpudata/$(basename "$src")"
    rm -rf "$dst" && mkdir -p "$(dirname "$dst")" && cp -r "$src" "$dst"
    "$py" - "$dst" <<'PY'
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

for path in sorted(Path(sys.argv[1]).glob("images*/*.nii.gz")):
    image = nib.load(path)
    data = image.get_fdata(dtype=np.float32)
    compact = nib.Nifti1Image(data, image.affine, image.header)
    compact.set_data_dtype(np.int16)  # nibabel chooses the scale factor
    nib.save(compact, path)
PY
done
du -sh "$root/.gpudata"/*

#!/usr/bin/env bash
# Run HERE: copy nnU-Net datasets into .gpudata/ (ignored by git) small enough to carry to the lent GPU machine
# (64 MiB a call, wheels and checkout included). Images are stored as int16 with a NIfTI scale factor: half the
# float32 size; the largest change is about 1e-5 of the intensity range. Labels and the other files are copied as
# they are.
# Usage: bash scripts/gpu_data.sh DATASET_DIR...   (e.g. the 2 mm Dataset801_BrainAAL of `lsseg data build`)
# ALIGN=1 also registers every training case of each copy to its atlas (the first training case) for
# `lsseg train lcs --align-cases affine`, kept in .gpudata/alignments: the GPU machine has no SimpleITK and trains
# from them (pass `--align-cases affine --registration-cache .gpudata/alignments`). The atlas grid depends on the
# spacing and the network's depth: ALIGN_SPACING (default 2,2,2) and ALIGN_CHANNELS (default 16,32,64,128,256,
# gpu_lcs_vs_mc.sh's) must be the GPU run's. ALIGN=deformable keeps the deformable registrations as well, for
# `--align-cases deformable` (the same cache folder serves both), compacted for the trip (half resolution, float16:
# about 0.4 MB a case at 2 mm instead of 6 MB, points moved by at most 0.1 mm; pair_registrations.compact_for_transfer)
# because the GPU machine takes at most 64 MiB along.
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
    if [ "${ALIGN:-0}" != 0 ]; then  # one CPU step of the GPU run's LCS: it registers every case first
        mode=affine
        [ "$ALIGN" = deformable ] && mode=deformable
        scratch=$(mktemp -d)
        "$root/.venv/bin/lsseg" train lcs --data "$dst" --out "$scratch/lcs" --align-cases "$mode" \
            --registration-cache "$root/.gpudata/alignments" --spacing "${ALIGN_SPACING:-2,2,2}" \
            --channels "${ALIGN_CHANNELS:-16,32,64,128,256}" --steps 1 --batch 2 --seed 0 --device cpu --val-fraction 0
        rm -rf "$scratch"
        if [ "$mode" = deformable ]; then
            "$py" -c 'import sys; from lsseg_training.pair_registrations import compact_for_transfer as c
print(c(sys.argv[1]), "deformable registrations compacted")' "$root/.gpudata/alignments"
        fi
    fi
done
du -sh "$root/.gpudata"/*

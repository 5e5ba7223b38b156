#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything into it.
# torch is installed first and pinned (LSSEG_TORCH, default torch==2.13.0: the CPU build on machines
# without a GPU) so that the open ranges in pyproject.toml never pull a multi-GB CUDA build by accident.
# On a GPU machine, set LSSEG_TORCH to the CUDA build you want, e.g. LSSEG_TORCH="torch==2.13.0".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LSSEG_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.lsseg-installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/bootstrap.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing dependencies (first run takes a few minutes)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${LSSEG_TORCH:-torch==2.13.0}"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[test,data]"
  echo "$want" > "$stamp"
fi
echo "$venv"

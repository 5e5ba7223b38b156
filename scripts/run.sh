#!/usr/bin/env bash
# README command 1: set everything up and run the main job (the demo) into ./demo-out (or the folder given).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/scripts/bootstrap.sh" | tail -n 1)"
bash "$root/scripts/system_data.sh"
cd "$root"
out="${1:-demo-out}"
shift || true
exec "$venv/bin/lsseg" demo --out "$out" "$@"

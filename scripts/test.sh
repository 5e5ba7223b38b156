#!/usr/bin/env bash
# README command 2: set everything up and run the test suite (extra pytest arguments are passed on).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/scripts/bootstrap.sh" | tail -n 1)"
cd "$root"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"

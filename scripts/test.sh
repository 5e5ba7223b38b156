#!/usr/bin/env bash
# README command 2: set everything up, check lint and format, and run the test suite
# (extra arguments are passed on to pytest).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/scripts/bootstrap.sh" | tail -n 1)"
bash "$root/scripts/system_data.sh"
cd "$root"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy"  # the engine (settings in pyproject.toml)
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Install the Debian-packaged data the project needs beyond PyPI: mricron-data (Colin 27 whole-head T1 with its
# AAL regions: the demo's real scan and the tests of whole-head alignment). Idempotent; a no-op when present.
set -euo pipefail
templates="${LSSEG_MRICRON_DIR:-/usr/share/mricron/templates}"
if [ -f "$templates/ch2.nii.gz" ] && [ -f "$templates/aal.nii.gz" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[system-data] $templates/ch2.nii.gz is missing and apt-get is not available: install the Debian" \
    "package mricron-data, or set LSSEG_MRICRON_DIR to a folder holding ch2.nii.gz, ch2bet.nii.gz," \
    "aal.nii.gz and aal.nii.txt" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != "0" ]; then
  sudo="sudo"
fi
echo "[system-data] installing the Debian package mricron-data (real whole-head scan for the demo and tests)"
$sudo apt-get install -y -q mricron-data >/dev/null 2>&1 || {
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q mricron-data >/dev/null
}

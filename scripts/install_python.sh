#!/usr/bin/env bash
# Builds the PyTorch extension with pip (through CMake, warnings as errors)
# and installs the moe_eplb package into a venv that sees Debian's torch
# (python3-torch is installed for /usr/bin/python3 only). MOE_EPLB_VENV names
# the venv (default .venv), MAX_JOBS the parallel compile jobs (default: every
# core), CMAKE_ARGS adds CMake options. Rebuilds incrementally in
# build-python/ (MOE_EPLB_BUILD_DIR overrides), so a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MOE_EPLB_VENV:-.venv}
if [[ ! -x $venv/bin/python ]]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
CMAKE_ARGS="-DMOE_EPLB_WERROR=ON ${CMAKE_ARGS:-}" \
  "$venv/bin/python" -m pip install --no-build-isolation --no-deps --no-index -q .

#!/usr/bin/env bash
# Builds the PyTorch extension with pip (through CMake, warnings as errors)
# into a venv that sees Debian's torch (python3-torch is installed for
# /usr/bin/python3 only) and runs pytest. MOE_EPLB_MODULES_LOG, when set, is
# passed on: pytest lists the files it loaded there for scripts/check_deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MOE_EPLB_VENV:-.venv}
if [[ ! -x $venv/bin/python ]]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
CMAKE_ARGS="-DMOE_EPLB_WERROR=ON ${CMAKE_ARGS:-}" \
  "$venv/bin/python" -m pip install --no-build-isolation --no-deps --no-index -q .
"$venv/bin/python" -m pytest -q -rs -p no:cacheprovider tests/python

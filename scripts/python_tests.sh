#!/usr/bin/env bash
# Builds the PyTorch extension with pip into a venv that sees Debian's torch
# (python3-torch is installed for /usr/bin/python3 only) and runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -f setup.py ]]; then
  echo "python: no setup.py, skipping"
  exit 0
fi
venv=${MOE_EPLB_VENV:-.venv}
if [[ ! -x $venv/bin/python ]]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$venv/bin/python" -m pip install --no-build-isolation --no-deps --no-index -q .
"$venv/bin/python" -m pytest -q -rs tests/python

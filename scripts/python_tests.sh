#!/usr/bin/env bash
# Builds and installs the PyTorch extension into a venv (scripts/install_python.sh)
# and runs pytest. MOE_EPLB_MODULES_LOG, when set, is passed on: pytest lists
# the files it loaded there for scripts/check_deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_python.sh
"${MOE_EPLB_VENV:-.venv}/bin/python" -m pytest -q -rs -p no:cacheprovider tests/python

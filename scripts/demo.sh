#!/usr/bin/env bash
# The main job on its built-in default scenario: builds the tool if needed and
# runs `moe-eplb demo` (DeepSeek-V3 shape: 256 experts, top-8, EP 32, 9 slots
# per rank). Extra arguments go to that demo, e.g. --help. Then the online
# run: builds and installs the Python package into .venv (as the Python tests
# do) and runs `python -m moe_eplb.distributed.demo`: 4 gloo ranks on this
# machine, 2 MoE layers on drifting traffic, rebalanced and migrated while
# they run, checked against a dense model; writes moe-eplb-online.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
if [[ ! -x build/tools/moe-eplb ]]; then
  cmake --preset default >/dev/null
fi
cmake --build --preset default --target moe-eplb >/dev/null
build/tools/moe-eplb demo "$@"
echo
echo "== online: expert-parallel MoE on torch.distributed, rebalanced while it runs =="
bash scripts/install_python.sh
exec "${MOE_EPLB_VENV:-.venv}/bin/python" -m moe_eplb.distributed.demo --svg moe-eplb-online.svg

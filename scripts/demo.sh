#!/usr/bin/env bash
# The main job on its built-in default scenario. First `moe-eplb demo`
# (DeepSeek-V3 shape: 256 experts, top-8, EP 32, 9 slots per rank; extra
# arguments go to it, e.g. --help), then the online run,
# `python -m moe_eplb.distributed.demo`: 4 gloo ranks on this machine, 2 MoE
# layers on drifting traffic, rebalanced and migrated while they run, checked
# against a dense model; writes moe-eplb-online.svg.
#
# One CMake build serves both: installing the Python package (the extension,
# through CMake in build-python/) also configures the tool, which then reuses
# the compiled libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
build_dir=${MOE_EPLB_BUILD_DIR:-build-python}
CMAKE_ARGS="-DMOE_EPLB_BUILD_TOOLS=ON ${CMAKE_ARGS:-}" bash scripts/install_python.sh
cmake --build "$build_dir" --target moe-eplb >/dev/null
"$build_dir/tools/moe-eplb" demo "$@"
echo
echo "== online: expert-parallel MoE on torch.distributed, rebalanced while it runs =="
exec "${MOE_EPLB_VENV:-.venv}/bin/python" -m moe_eplb.distributed.demo --svg moe-eplb-online.svg

#!/usr/bin/env bash
# The main job on its built-in default scenario: builds the tool if needed and
# runs `moe-eplb demo` (DeepSeek-V3 shape: 256 experts, top-8, EP 32, 9 slots
# per rank). Extra arguments go to the demo, e.g. --help.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
if [[ ! -x build/tools/moe-eplb ]]; then
  cmake --preset default >/dev/null
fi
cmake --build --preset default --target moe-eplb >/dev/null
exec build/tools/moe-eplb demo "$@"

#!/usr/bin/env bash
# Builds everything from scratch and runs every test:
#   1. C++ (Release, warnings as errors, CUDA compiled if nvcc is present):
#      GoogleTest suites, CLI end-to-end tests, fuzz-corpus replays
#   2. the same suites under AddressSanitizer + UndefinedBehaviorSanitizer
#   3. the PyTorch extension: pip install (through CMake) into a venv, pytest
#   4. the dependency check: every file those builds and tests read comes from
#      a Debian package scripts/deps.sh installs (and dropping any listed
#      package the builds need is caught)
#   5. clang-format check
# GPU tests skip with a visible message when there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
stage() { printf '\n==== %s (%ds)\n' "$1" "$SECONDS"; }

stage "dependencies"
bash scripts/deps.sh

stage "C++ build and tests (preset ci)"
cmake --preset ci >/dev/null
cmake --build --preset ci
ctest --preset ci -j "$(nproc)"

stage "C++ tests under ASan + UBSan (preset asan)"
cmake --preset asan >/dev/null
cmake --build --preset asan
ctest --preset asan -j "$(nproc)"

stage "PyTorch extension and pytest"
MOE_EPLB_TOOL=$PWD/build-ci/tools/moe-eplb MOE_EPLB_MODULES_LOG=$PWD/build-python/loaded-files.txt \
  bash scripts/python_tests.sh

stage "dependency check"
bash scripts/check_deps.sh --self-test --files build-python/loaded-files.txt \
  build-ci build-asan build-python

stage "clang-format"
git ls-files '*.cpp' '*.hpp' '*.cu' '*.cuh' | xargs clang-format --dry-run --Werror

stage "all tests passed"

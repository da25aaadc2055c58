#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test moe-eplb
# (apt only; nothing comes from PyPI). Skips apt entirely when all is present.
# `deps.sh --print` lists the packages, one per line, and installs nothing
# (scripts/check_deps.sh reads the list that way).
set -euo pipefail

packages=(
  cmake ninja-build g++ clang libclang-rt-dev clang-format
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev
  python3-torch libtorch-dev python3-pytest python3-numpy python3-venv python3-setuptools
  python3-wheel python3-yaml
)
if [[ ${1-} == --print ]]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "deps: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null

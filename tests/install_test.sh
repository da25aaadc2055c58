#!/usr/bin/env bash
# Installs the built library into a temporary prefix and builds a separate
# project against it with find_package(moe_eplb), then runs it.
set -euo pipefail
build_dir=$1
source_dir=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log=$work/log.txt
# Show the log of whichever step fails.
run() { "$@" >"$log" 2>&1 || { cat "$log"; exit 1; }; }
run cmake --install "$build_dir" --prefix "$work/prefix"
run cmake -S "$source_dir/examples/consumer" -B "$work/consumer" -G Ninja \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release
run cmake --build "$work/consumer"
"$work/consumer/consumer"

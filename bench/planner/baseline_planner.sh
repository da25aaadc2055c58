#!/usr/bin/env bash
# Builds window_bench against an older rule-aware planner, to put "today's
# planner" next to the current one on the same inputs and machine:
# src/plan/{plan.cpp, rule_aware.cpp, planners.hpp} from COMMIT, everything
# else (scenarios, FlashLB, DeepSeek, analyzer, the bench) from the working
# tree; planner files added after COMMIT are left out.
#
#   bash bench/planner/baseline_planner.sh COMMIT OUT_DIR LIBMOE_EPLB_A
#
# LIBMOE_EPLB_A is a built libmoe_eplb.a (the operator layer, e.g.
# build-bench/src/libmoe_eplb.a). Writes OUT_DIR/window_bench_baseline.
set -euo pipefail
commit=$1
out=$2
library=$3
root=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$out/src"
mkdir -p "$out/src"
cp -r "$root/src/plan" "$out/src/"
for file in "$out"/src/plan/*; do
  name=$(basename "$file")
  git -C "$root" cat-file -e "$commit:src/plan/$name" 2>/dev/null || case $name in
    scenario.cpp | flashlb.cpp | flashlb.hpp | svg.cpp | migration.cpp | table_diff.cpp) ;;
    *) rm "$file" ;;  # the newer planner's own files
  esac
done
for name in plan.cpp rule_aware.cpp planners.hpp; do
  git -C "$root" show "$commit:src/plan/$name" >"$out/src/plan/$name"
done
g++ -std=c++17 -O3 -DNDEBUG -I"$root/include" "$out"/src/plan/*.cpp \
  "$root/bench/planner/window_bench.cpp" "$library" -o "$out/window_bench_baseline"
echo "built $out/window_bench_baseline (planner of $commit)"

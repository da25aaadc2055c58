#!/usr/bin/env bash
# Issue 10's planner benchmarks in one run, as Markdown tables:
#   1. the multi-window suite (4 families), rank and token mode, moe-eplb vs
#      DeepSeek vs FlashLB, planned on windows 0-3 and scored on window 4;
#   2. real DeepSeek-V3 statistics: plan on one SGLang run, score on the next;
#   3. replays: replay() (what `moe-eplb replay` prints) on every suite
#      scenario (several draws), moves per rebalance and time-averaged
#      balance per family, migration-aware vs from scratch;
#   4. planning time next to DeepSeek's algorithm in PyTorch, timed in this run.
#
#   bash bench/planner/run.sh [BUILD_DIR] [DATA_DIR] [--quick]
#   MOE_EPLB_BASELINE=COMMIT bash bench/planner/run.sh ...   (also: the suite and the
#       real runs with the rule-aware planner of COMMIT, see baseline_planner.sh)
#
# BUILD_DIR (default build-bench) is configured and built here (Release, CPU
# only); DATA_DIR defaults to ../shared/data/sglang-deepseek-v3, read in place.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-bench}
data=${2:-../shared/data/sglang-deepseek-v3}
quick=${3:-}

[[ -d $data ]] || { echo "run.sh: no data folder $data" >&2; exit 1; }
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_EPLB_CUDA=OFF \
  -DMOE_EPLB_BUILD_BENCH=ON >/dev/null
cmake --build "$build" -j2 --target moe_eplb_bench_windows >/dev/null

echo "# moe-eplb planner benchmarks (issue 10)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src include || echo ' (+ uncommitted changes)')"
echo "- machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs, $(uname -sr)"
echo "- command: ${MOE_EPLB_BASELINE:+MOE_EPLB_BASELINE=$MOE_EPLB_BASELINE }bash bench/planner/run.sh $*"
echo

pairs=$(mktemp -d)
trap 'rm -rf "$pairs"' EXIT
"$build/bench/planner/moe_eplb_bench_windows" --data "$data" --section suite --section real ${quick:+--quick} \
  --per-draw "$pairs/new.csv"

if [[ -n ${MOE_EPLB_BASELINE:-} ]]; then
  bash bench/planner/baseline_planner.sh "$MOE_EPLB_BASELINE" "$build/baseline" \
    "$build/src/libmoe_eplb.a" >/dev/null
  echo "## The same with the rule-aware planner of $MOE_EPLB_BASELINE (before issue 10)"
  echo
  echo "Only its moe-eplb columns differ from the tables above."
  echo
  "$build/baseline/window_bench_baseline" --data "$data" --section suite --section real \
    ${quick:+--quick} --per-draw "$pairs/old.csv" | awk '
      /^Geometric means/ {on = 1}
      /^## Real/ {on = 0; print "Real runs:\n"}
      /^EP [0-9]+ x/ {print ""; print; print ""; next}
      on || /geometric mean|range:|^\| plan on|^\|---\|---\|---:/ {print}'
  echo
  echo "moe-eplb against the planner of $MOE_EPLB_BASELINE on the same draws (pair_draws.py): the"
  echo "geometric mean of new / old max/mean, one standard error, and the draws where new is worse."
  echo
  python3 bench/planner/pair_draws.py "$pairs/new.csv" "$pairs/old.csv"
fi

"$build/bench/planner/moe_eplb_bench_windows" --section replay ${quick:+--quick}

"$build/bench/planner/moe_eplb_bench_windows" --data "$data" --section timing ${quick:+--quick}
/usr/bin/python3 bench/planner/deepseek_reference.py --data "$data" --repetitions "$([[ $quick == --quick ]] && echo 3 || echo 11)"

#!/usr/bin/env bash
# Issue 10's planner benchmarks in one run, as Markdown tables:
#   1. the multi-window suite (4 families), rank and token mode, moe-eplb vs
#      DeepSeek vs FlashLB, planned on windows 0-3 and scored on window 4;
#   2. real DeepSeek-V3 statistics: plan on one SGLang run, score on the next;
#   3. replays: `moe-eplb replay` on every suite scenario (several draws),
#      moves per rebalance and time-averaged balance per family,
#      migration-aware vs from scratch;
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
windows=16
[[ $quick == --quick ]] && windows=8

[[ -d $data ]] || { echo "run.sh: no data folder $data" >&2; exit 1; }
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_EPLB_CUDA=OFF \
  -DMOE_EPLB_BUILD_BENCH=ON >/dev/null
cmake --build "$build" -j2 --target moe_eplb_bench_windows moe-eplb >/dev/null

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

draws=8
[[ $quick == --quick ]] && draws=2
echo "## Replays: $windows windows of every suite scenario, $draws draws each, rebalancing after every window on the last 4"
echo
echo "\`moe-eplb replay --scenario NAME --draw K --windows $windows --json\` for K = 0..$((draws - 1)), rank mode:"
echo "each policy is scored on the next window; moe-eplb-capped plans against the table in force with"
echo "--max-moves = 10% of the slots. Time-averaged max/mean over windows 1..$((windows - 1)), geometric mean"
echo "over the draws; slots changed per rebalance, of W x S, mean over the draws (max: the largest)."
echo
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$pairs"' EXIT
scenarios=$("$build/bench/planner/moe_eplb_bench_windows" --list)
for scenario in $scenarios; do
  for ((draw = 0; draw < draws; ++draw)); do
    "$build/tools/moe-eplb" replay --scenario "$scenario" --draw "$draw" --windows "$windows" \
      --json >"$tmp/$scenario.$draw.json" 2>/dev/null
  done
done
python3 bench/planner/summarize_replays.py "$tmp" $scenarios

"$build/bench/planner/moe_eplb_bench_windows" --data "$data" --section timing ${quick:+--quick}
/usr/bin/python3 bench/planner/deepseek_reference.py --data "$data" --repetitions "$([[ $quick == --quick ]] && echo 3 || echo 11)"

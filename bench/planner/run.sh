#!/usr/bin/env bash
# Issue 10's planner benchmarks in one run, as Markdown tables:
#   1. the multi-window suite (4 families), rank and token mode, moe-eplb vs
#      DeepSeek vs FlashLB, planned on windows 0-3 and scored on window 4;
#   2. real DeepSeek-V3 statistics: plan on one SGLang run, score on the next;
#   3. drifting replays: `moe-eplb replay` on the drifting family, moves per
#      rebalance and time-averaged balance, migration-aware vs from scratch;
#   4. planning time next to DeepSeek's algorithm in PyTorch, timed in this run.
#
#   bash bench/planner/run.sh [BUILD_DIR] [DATA_DIR] [--quick]
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
echo "- command: bash bench/planner/run.sh $* "
echo

"$build/bench/planner/moe_eplb_bench_windows" --data "$data" --section suite --section real ${quick:+--quick}

echo "## Drifting traffic: replay of $windows windows, rebalance after every window on the last 4"
echo
echo "Rank mode; each policy scored on the next window; moe-eplb-capped plans against the table"
echo "in force with --max-moves = 10% of the slots. Slots changed: per rebalance, of W x S."
echo
scenarios="drifting-deepseek-v3-ep32 drifting-deepseek-v3-ep64 drifting-qwen3-ep16 drifting-mixtral-ep6
  drifting-deepseek-v3-ep48"  # window_suite()'s drifting family
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for scenario in $scenarios; do
  "$build/tools/moe-eplb" replay --scenario "$scenario" --windows "$windows" --json \
    >"$tmp/$scenario.json"
done
python3 - "$tmp" $scenarios <<'EOF'
import json, math, sys
folder, names = sys.argv[1], sys.argv[2:]
print("| scenario | policy | time-avg max/mean | vs moe-eplb from scratch | slots changed per "
      "rebalance (mean) | max | bytes: experts received |")
print("|---|---|---:|---:|---:|---:|---:|")
ratios, shares, worst_share = [], [], 0.0
for name in names:
    replay = json.load(open(f"{folder}/{name}.json"))
    slots = replay["world_size"] * replay["slots_per_rank"] * replay["layers"]
    policies = {p["name"]: p for p in replay["policies"]}
    scratch = policies["moe-eplb"]["mean_max_over_mean"]
    for p in replay["policies"]:
        changed = p["mean_slots_changed"]
        moved = "-" if changed is None else f"{changed:.1f} ({100 * changed / slots:.1f}%)"
        most = "-" if p["max_slots_changed"] is None else f"{p['max_slots_changed']:.0f}"
        print(f"| {name.removeprefix('drifting-')} | {p['name']} | {p['mean_max_over_mean']:.4f} | "
              f"{100 * (p['mean_max_over_mean'] / scratch - 1):+.1f}% | {moved} | {most} | "
              f"{p['experts_received']:.0f} |")
    capped = policies["moe-eplb-capped"]
    ratios.append(capped["mean_max_over_mean"] / scratch)
    shares.append(capped["mean_slots_changed"] / slots)
    worst_share = max(worst_share, capped["max_slots_changed"] / slots)
print(f"\nmoe-eplb-capped over moe-eplb from scratch, time-averaged max/mean: "
      f"{100 * (math.prod(ratios) ** (1 / len(ratios)) - 1):+.2f}% geometric mean, worst "
      f"{100 * (max(ratios) - 1):+.2f}%; slots changed per rebalance: mean "
      f"{100 * sum(shares) / len(shares):.1f}%, at most {100 * worst_share:.1f}%\n")
EOF

"$build/bench/planner/moe_eplb_bench_windows" --data "$data" --section timing ${quick:+--quick}
/usr/bin/python3 bench/planner/deepseek_reference.py --data "$data" --repetitions "$([[ $quick == --quick ]] && echo 3 || echo 11)"

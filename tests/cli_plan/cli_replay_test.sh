#!/usr/bin/env bash
# cli_replay_test.sh CASE MOE_EPLB WORKDIR: one end-to-end case of
# `moe-eplb replay`. Fails (exit 1) with the command and its output on the
# first unexpected result. No Python needed: inputs come from bash and the
# tool itself.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case_name=$1
tool=$2
work=$3
rm -rf "$work"
mkdir -p "$work"
cd "$work"

source "$here/cli_lib.sh"

# run CMD...: as cli_lib.sh's, but stderr (replay's progress) lands in err.txt.
run() {
  if ! "$@" >out.txt 2>err.txt; then
    cat out.txt err.txt >&2
    fail "command failed: $*"
  fi
}

# The per-window table of a replay's text output (the lines that start with
# a window number), for comparing two replays.
window_rows() {
  awk '/^max\/mean on the window/ {on = 1; next} on && $1 ~ /^[0-9]+$/ {print}' "$1"
}

# Windows from `moe-eplb demo --save-dir`: load.npy (W, E) statistics and
# expert_ids.npy (W, BS, K) traces of Mixtral on EP 4, one folder per seed.
demo_windows() {
  local seed
  for seed in "$@"; do
    mkdir -p "w$seed"
    run "$tool" demo --scenario mixtral-ep4-zipf --tokens-per-rank 64 --seed "$seed" --svg '' \
      --save-dir "w$seed"
  done
}

case $case_name in
  scenario)
    run "$tool" replay --scenario drifting-mixtral-ep6 --windows 7 --expert-bytes 1000 \
      --svg replay.svg
    for policy in never deepseek flashlb moe-eplb moe-eplb-capped; do
      expect "  $policy " out.txt
    done
    expect "replay of 7 windows: scenario drifting-mixtral-ep6" out.txt
    window_rows out.txt >draw0.txt
    expect "6 ranks x 2 slots, rank mode" out.txt
    expect "capped at 1 moves per layer" out.txt  # 10% of 12 slots
    expect "wrote replay.svg" out.txt
    expect "</svg>" replay.svg
    expect "slots changed per rebalance" replay.svg
    expect "moe-eplb-capped" replay.svg
    # Six scored windows, five rebalances after the first plan.
    [[ $(window_rows out.txt | wc -l) -eq 6 ]] || { cat out.txt >&2; fail "expected 6 window rows"; }
    awk '$1 == "deepseek" && $4 == 5 {found = 1} END {exit !found}' out.txt ||
      { cat out.txt >&2; fail "deepseek should rebalance 5 times"; }
    awk '$1 == "never" && $4 == 0 {found = 1} END {exit !found}' out.txt ||
      { cat out.txt >&2; fail "never should not rebalance"; }
    # The cap holds at every rebalance.
    capped_max=$(awk '$1 == "moe-eplb-capped" {for (i = 1; i < NF; ++i) if ($i == "max") print $(i + 1)}' \
      out.txt | tr -d ,)
    [[ -n $capped_max && $capped_max -le 1 ]] || { cat out.txt >&2; fail "capped moved $capped_max > 1"; }
    # --every 3: rebalances after windows 0 and 3 only.
    run "$tool" replay --scenario drifting-mixtral-ep6 --windows 7 --every 3 --history 2 --json
    expect '"every": 3' out.txt
    [[ $(grep -c '"rebalanced_before": true' out.txt) -eq 1 ]] || fail "expected 1 rebalance"
    expect '"rebalances": 1' out.txt
    run "$tool" replay --list
    for family in transient persistent mixed drifting; do
      expect "  $family-deepseek-v3-ep32 " out.txt
    done
    expect "  mixtral-ep8-hot " out.txt
    # --draw 0 is the scenario's own windows; another draw is other traffic.
    run "$tool" replay --scenario drifting-mixtral-ep6 --windows 7 --expert-bytes 1000 --draw 0 \
      --svg ''
    window_rows out.txt | cmp -s - draw0.txt || fail "--draw 0 differs from the default windows"
    run "$tool" replay --scenario drifting-mixtral-ep6 --windows 7 --expert-bytes 1000 --draw 1 \
      --svg ''
    expect "tokens per rank per window, draw 1;" out.txt
    ! window_rows out.txt | cmp -s - draw0.txt || fail "--draw 1 replays the same windows as draw 0"
    ;;

  loads)
    # Hand-worked: 4 experts on 2 ranks x 2 slots (no room for replicas).
    # Window 1 sends everything to expert 0: whatever the placement, one rank
    # gets it all, max/mean 2. Window 2 is uniform again: 1 for everyone.
    npy_int32 w0.npy "(4,)" 100 100 100 100
    npy_int32 w1.npy "(4,)" 400 0 0 0
    npy_int32 w2.npy "(4,)" 100 100 100 100
    run "$tool" replay --load w0.npy --load w1.npy --load w2.npy --world-size 2 --slots-per-rank 2
    expect "global statistics" out.txt
    window_rows out.txt >rows.txt
    awk '$1 == 1 {for (i = 2; i <= NF; ++i) if ($i ~ /\./ && $i != "2.000") exit 1; print "ok"}' \
      rows.txt | grep -q ok || { cat out.txt >&2; fail "window 1 should be 2.000 for every policy"; }
    awk '$1 == 2 {for (i = 2; i <= NF; ++i) if ($i ~ /\./ && $i != "1.000") exit 1; print "ok"}' \
      rows.txt | grep -q ok || { cat out.txt >&2; fail "window 2 should be 1.000 for every policy"; }
    # Per-layer (L, 1, E) windows: layer 1 repeats the hand-worked case, layer 0 stays
    # uniform (1.000), so window 1 scores (1 + 2) / 2 = 1.500 for every policy.
    npy_int32 l0.npy "(2, 1, 4)" 100 100 100 100 100 100 100 100
    npy_int32 l1.npy "(2, 1, 4)" 100 100 100 100 400 0 0 0
    run "$tool" replay --load l0.npy --load l1.npy --world-size 2 --slots-per-rank 2 --json
    expect '"layers": 2' out.txt
    [[ $(grep -c '"max_over_mean": 1.5,' out.txt) -eq 5 ]] || { cat out.txt >&2; fail "expected 1.5 for all 5"; }
    # Per-rank (W, E) windows from the tool's own demo.
    demo_windows 1 2 3
    run "$tool" replay --layout WE --load w1/load.npy --load w2/load.npy --load w3/load.npy --world-size 4 \
      --slots-per-rank 3 --balance-mode 1 --history 1
    expect "per-source-rank statistics" out.txt
    expect "token mode" out.txt
    [[ $(window_rows out.txt | wc -l) -eq 2 ]] || { cat out.txt >&2; fail "expected 2 window rows"; }
    ;;

  traces)
    # Traces are counted as `moe-eplb record` counts them: the same replay
    # as on the recorded loads.
    demo_windows 4 5 6
    for seed in 4 5 6; do
      run "$tool" record --expert-ids "w$seed/expert_ids.npy" --num-experts 8 --out "rec$seed.npy"
    done
    run "$tool" replay --trace w4/expert_ids.npy --trace w5/expert_ids.npy \
      --trace w6/expert_ids.npy --num-experts 8 --world-size 4 --slots-per-rank 3
    expect "3 routing traces" out.txt
    window_rows out.txt >from_traces.txt
    run "$tool" replay --layout WE --load rec4.npy --load rec5.npy --load rec6.npy --world-size 4 \
      --slots-per-rank 3
    window_rows out.txt >from_loads.txt
    [[ -s from_traces.txt ]] || fail "no window rows"
    cmp -s from_traces.txt from_loads.txt ||
      { diff from_traces.txt from_loads.txt >&2; fail "traces and recorded loads differ"; }
    ;;

  errors)
    npy_int32 e4.npy "(4,)" 1 2 3 4
    npy_int32 e5.npy "(5,)" 1 2 3 4 5
    npy_int32 w3.npy "(3, 4)" 1 2 3 4 1 2 3 4 1 2 3 4
    printf 'not an npy file' >garbage.npy
    local_args=(--world-size 2 --slots-per-rank 2 --svg out.svg)
    run_fails "replay(): --load window 1 (e5.npy) is (1 layers, 1 source ranks, 5 experts), but window 0 (e4.npy) is (1 layers, 1 source ranks, 4 experts)" \
      "$tool" replay --load e4.npy --load e5.npy "${local_args[@]}"
    run_fails "replay(): give at least 2 --load windows (plan on one, score on the next), got 1" \
      "$tool" replay --load e4.npy "${local_args[@]}"
    run_fails "differs from world_size 2" "$tool" replay --layout WE --load w3.npy --load w3.npy \
      "${local_args[@]}"
    run_fails "--load garbage.npy" "$tool" replay --load e4.npy --load garbage.npy "${local_args[@]}"
    run_fails "--load missing.npy" "$tool" replay --load e4.npy --load missing.npy "${local_args[@]}"
    run_fails "moe-eplb: error: --every: must be 1 or more, got 0" \
      "$tool" replay --load e4.npy --load e4.npy --every 0 "${local_args[@]}"
    run_fails "moe-eplb: error: --history: must be 1 or more, got 0" \
      "$tool" replay --load e4.npy --load e4.npy --history 0 "${local_args[@]}"
    run_fails "moe-eplb: error: --max-moves: must be -1 (no cap) or 0 or more, got -3" \
      "$tool" replay --load e4.npy --load e4.npy --max-moves -3 "${local_args[@]}"
    run_fails "moe-eplb: error: --expert-bytes: must be a finite number >= 0, got -1" \
      "$tool" replay --load e4.npy --load e4.npy --expert-bytes -1 "${local_args[@]}"
    run_fails "moe-eplb: error: --balance-mode: must be in 0..2, got 3" \
      "$tool" replay --load e4.npy --load e4.npy --balance-mode 3 "${local_args[@]}"
    run_fails "moe-eplb: error: --rule: sglang not in" \
      "$tool" replay --load e4.npy --load e4.npy --rule sglang "${local_args[@]}"
    run_fails "replay(): --world-size is required with --load or --trace and must be positive, got 0" \
      "$tool" replay --load e4.npy --load e4.npy --slots-per-rank 2
    run_fails "plan(): world_size 2 x slots_per_rank 1 = 2 physical slots cannot hold 4 experts" \
      "$tool" replay --load e4.npy --load e4.npy --world-size 2 --slots-per-rank 1 --svg out.svg
    run_fails "replay(): give the windows one way" \
      "$tool" replay --load e4.npy --load e4.npy --scenario mixed-mixtral-ep6 --windows 3 \
      "${local_args[@]}"
    run_fails "replay(): give the windows one way" "$tool" replay "${local_args[@]}"
    run_fails "replay(): --windows N goes with --scenario" \
      "$tool" replay --load e4.npy --load e4.npy --windows 3 "${local_args[@]}"
    run_fails "moe-eplb: error: --windows: must be in 2..100000, got 1" \
      "$tool" replay --scenario mixed-mixtral-ep6 --windows 1 --svg out.svg
    run_fails "find_scenario(): unknown scenario 'nope'" \
      "$tool" replay --scenario nope --windows 3 --svg out.svg
    run_fails "moe-eplb: error: --draw: must be in 0..2147483647, got -1" \
      "$tool" replay --scenario mixed-mixtral-ep6 --windows 3 --draw -1 --svg out.svg
    run_fails "replay(): --draw goes with --scenario" \
      "$tool" replay --load e4.npy --load e4.npy --draw 2 "${local_args[@]}"
    [[ ! -e out.svg ]] || fail "a refused replay wrote out.svg"
    run_fails "replay(): --world-size 8 differs from scenario mixed-mixtral-ep6's 6" \
      "$tool" replay --scenario mixed-mixtral-ep6 --windows 3 --world-size 8
    run_fails "replay(): --num-experts E goes with --trace (and --trace needs it)" \
      "$tool" replay --trace a.npy --trace b.npy "${local_args[@]}"
    demo_windows 7 8
    run_fails "replay(): --trace w7/expert_ids.npy has 4 source ranks (first dimension), expected --world-size 2" \
      "$tool" replay --trace w7/expert_ids.npy --trace w8/expert_ids.npy --num-experts 8 \
      "${local_args[@]}"
    run_fails "--trace w7/load.npy" \
      "$tool" replay --trace w7/load.npy --trace w8/expert_ids.npy --num-experts 8 \
      --world-size 4 --slots-per-rank 3 --svg out.svg
    # An expert id outside --num-experts is the recorder's error, with its position.
    run_fails "expert" \
      "$tool" replay --trace w7/expert_ids.npy --trace w8/expert_ids.npy --num-experts 4 \
      --world-size 4 --slots-per-rank 3 --svg out.svg
    [[ ! -e out.svg ]] || fail "a failed replay wrote out.svg"
    ;;

  *)
    fail "unknown case"
    ;;
esac
echo "ok [$case_name]"

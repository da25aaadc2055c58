#!/usr/bin/env bash
# cli_plan_test.sh CASE MOE_EPLB WORKDIR: one end-to-end case of the planner
# commands. Fails (exit 1) with the command and its output on the first
# unexpected result.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case_name=$1
tool=$2
work=$3
rm -rf "$work"
mkdir -p "$work"
cd "$work"

source "$here/cli_lib.sh"

case $case_name in
  demo)
    # The README's main job: a before/after table and a plot.
    run "$tool" demo --svg demo.svg
    expect "no redundancy" out.txt
    expect "DeepSeek EPLB" out.txt
    expect "moe-eplb (planned for token)" out.txt
    expect "[4/4] routing" out.txt
    expect "</svg>" demo.svg
    expect "moe-eplb, rank mode" demo.svg
    # moe-eplb under rank mode beats DeepSeek under rank mode on the default scenario.
    ours=$(awk '$1 == "moe-eplb" && $2 == "rank" {print $3}' out.txt)
    theirs=$(awk '$1 == "DeepSeek" && $3 == "rank" {print $4}' out.txt)
    [[ -n $ours && -n $theirs ]] || { cat out.txt >&2; fail "could not read the table"; }
    awk -v a="$ours" -v b="$theirs" 'BEGIN { exit !(a < b && a < 1.10) }' ||
      fail "moe-eplb $ours is not below DeepSeek $theirs and 1.10"
    # The README shows this table: it must be what the tool prints (a planner
    # change that moves a number updates the README; the table to paste is below).
    awk '/^  placement /, /^  moe-eplb \(planned for token\)/' out.txt | sed 's/ *$//' >printed.txt
    awk '/^`moe-eplb demo` on the built-in/ {on = 1; next}
         on && /^```$/ {if (started) exit; started = 1; next}
         on && started {print}' "$here/../../README.md" >readme.txt
    [[ -s printed.txt ]] || { cat out.txt >&2; fail "no table in the demo output"; }
    cmp -s printed.txt readme.txt || {
      diff readme.txt printed.txt >&2 || true
      fail "the README's demo table differs from what moe-eplb demo prints (above: < README, > printed)"
    }
    run "$tool" demo --list
    expect "mixtral-ep6-lognormal" out.txt
    ;;

  plan_simulate)
    run "$tool" demo --scenario qwen3-ep16-lognormal --tokens-per-rank 512 --svg '' --save-dir .
    for mode in 0 1; do
      run "$tool" plan --layout WE --load load.npy --world-size 16 --slots-per-rank 9 --ranks-per-node 8 \
        --balance-mode $mode --out table$mode.npy
      expect "wrote table$mode.npy: int32 (128," out.txt
      run "$tool" validate --table table$mode.npy --world-size 16 --num-physical 144
      expect "valid (0 errors, 0 warnings)" out.txt
      run "$tool" simulate --table table$mode.npy --world-size 16 --slots-per-rank 9 \
        --expert-ids expert_ids.npy --balance-mode $mode --ranks-per-node 8 --svg sim$mode.svg
      expect "before: no redundancy" out.txt
      expect "</svg>" sim$mode.svg
    done
    # Rank mode from recorded statistics is exact: the same balance as the trace.
    run "$tool" record --expert-ids expert_ids.npy --num-experts 128 --out recorded.npy
    expect "wrote recorded.npy: int64 (16, 128)" out.txt
    run "$tool" simulate --table table0.npy --world-size 16 --slots-per-rank 9 \
      --layout WE --load recorded.npy --json
    grep '"max_over_mean"' out.txt >from_load.txt
    run "$tool" simulate --table table0.npy --world-size 16 --slots-per-rank 9 \
      --expert-ids expert_ids.npy --json
    grep '"max_over_mean"' out.txt >from_trace.txt
    cmp from_load.txt from_trace.txt || fail "statistics and trace disagree under rank mode"
    run "$tool" simulate --table table0.npy --world-size 16 --slots-per-rank 9 --layout WE --load load.npy --json
    expect '"max_over_mean"' out.txt
    expect '"dead_replicas": 0' out.txt
    expect '"replicas_sharing_rank": 0' out.txt
    run "$tool" plan --layout WE --load load.npy --world-size 16 --slots-per-rank 9 --algorithm deepseek \
      --columns 17 --out deepseek.npy
    expect "int32 (128, 17)" out.txt
    ;;

  convert)
    run "$tool" demo --scenario mixtral-ep6-lognormal --tokens-per-rank 256 --svg '' --save-dir .
    run "$tool" convert --from ascend --to log2phy --in table.npy --out l2p.npy --logcnt-out cnt.npy
    run "$tool" convert --from log2phy --to ascend --in l2p.npy --logcnt cnt.npy --out back.npy
    cmp table.npy back.npy || fail "ascend -> log2phy -> ascend changed the table"
    run "$tool" convert --from ascend --to sglang --in table.npy --out sglang.npy
    run "$tool" convert --from sglang --to ascend --in sglang.npy --out back2.npy
    cmp table.npy back2.npy || fail "ascend -> sglang -> ascend changed the table"
    run "$tool" convert --from ascend --to phy2log --in table.npy --out p2l.npy --num-physical 12 \
      --sort-replicas
    run "$tool" convert --from phy2log --to ascend --in p2l.npy --out sorted.npy
    run "$tool" convert --from ascend --to phy2log --in sorted.npy --out p2l2.npy --num-physical 12
    cmp p2l.npy p2l2.npy || fail "phy2log -> ascend -> phy2log changed phy2log"
    ;;

  # Each case below is one issue-18 finding, so each fails on its own on a tool
  # that has it back.
  convert_order)
    # phy2log keeps no replica order, and in either mode the order is the
    # routing: a table whose replicas are not ascending is refused (nothing
    # written) unless --sort-replicas accepts the reorder, said in the name.
    npy_int32 order.npy "(2, 3)" 2 3 0 1 1 -1
    run_fails "moe-eplb: error: convert(): --in order.npy: expert 0 has replica 1 in slot 3 and replica 2 in slot 0; phy2log keeps no replica order" \
      "$tool" convert --from ascend --to phy2log --in order.npy --out order_p2l.npy
    [[ ! -e order_p2l.npy ]] || fail "a refused conversion wrote order_p2l.npy"
    run "$tool" convert --from ascend --to phy2log --in order.npy --out order_p2l.npy --sort-replicas
    run "$tool" convert --from phy2log --to ascend --in order_p2l.npy --out order_back.npy
    npy_int32 order_sorted.npy "(2, 3)" 2 0 3 1 1 -1
    cmp order_back.npy order_sorted.npy || fail "--sort-replicas did not give ascending replicas"
    # log2phy keeps the order exactly.
    run "$tool" convert --from ascend --to log2phy --in order.npy --out order_l2p.npy \
      --logcnt-out order_cnt.npy
    run "$tool" convert --from log2phy --to ascend --in order_l2p.npy --logcnt order_cnt.npy \
      --out order_back2.npy
    cmp order.npy order_back2.npy || fail "ascend -> log2phy -> ascend changed the order"
    ;;

  convert_duplicates)
    # A duplicate slot in SGLang's map is refused, not copied into a table.
    npy_int32 dup_sglang.npy "(2, 2)" 0 0 1 -1
    run_fails "moe-eplb: error: slots_from_sglang(): slot 0 is named twice, by [0, 0] and [0, 1]" \
      "$tool" convert --from sglang --to ascend --in dup_sglang.npy --out dup.npy
    [[ ! -e dup.npy ]] || fail "an invalid table was written"
    npy_int32 shared_sglang.npy "(2, 2)" 0 1 1 -1
    run_fails "slot 1 is named twice, by [0, 1] and [1, 0]" \
      "$tool" convert --from sglang --to ascend --in shared_sglang.npy --out dup.npy
    [[ ! -e dup.npy ]] || fail "an invalid table was written"
    ;;

  convert_atomic)
    # Two outputs appear together or not at all: an unwritable --logcnt-out
    # leaves no --out behind.
    npy_int32 order.npy "(2, 3)" 2 3 0 1 1 -1
    run_fails "moe-eplb: error: missing/cnt.npy: cannot open for writing" \
      "$tool" convert --from ascend --to log2phy --in order.npy --out both_l2p.npy \
      --logcnt-out missing/cnt.npy
    [[ ! -e both_l2p.npy ]] || fail "--out was written although --logcnt-out failed"
    [[ -z $(ls ./*.tmp-* 2>/dev/null) ]] || fail "temporary files left behind"
    ;;

  per_layer)
    # (L, W, E) = (2, 2, 4) counts in, (2, E, F) tables out.
    npy_int32 load3.npy "(2, 2, 4)" 9 1 1 1 8 1 2 1  1 1 1 20 1 1 1 15
    run "$tool" plan --load load3.npy --world-size 2 --slots-per-rank 3 --out tables.npy
    expect "planned 2 layers" out.txt
    expect "int32 (2, 4, 3)" out.txt
    run "$tool" simulate --table tables.npy --load load3.npy --world-size 2 --slots-per-rank 3
    expect "layer  before  after" out.txt
    # Global counts per layer: (L, 1, E).
    npy_int32 global3.npy "(2, 1, 4)" 9 1 1 1 1 1 1 20
    run "$tool" plan --load global3.npy --world-size 2 --slots-per-rank 3 --out tables.npy
    expect "global (even split over ranks assumed)" out.txt
    ;;

  errors)
    npy_int32 load.npy "(2, 4)" 5 1 1 1 1 1 1 1
    # A 2-D load's rows are source ranks or layers: the user says which.
    run_fails "moe-eplb: error: plan(): --load load.npy has shape (2, 4): are its rows source ranks (W, E) or layers (L, E)? Pass --layout WE or --layout LE" \
      "$tool" plan --load load.npy --world-size 2 --slots-per-rank 3 --out t.npy
    [[ ! -e t.npy ]] || fail "a refused plan wrote t.npy"
    run "$tool" plan --layout LE --load load.npy --world-size 2 --slots-per-rank 3 --out layers.npy
    expect "planned 2 layers" out.txt
    expect "global (even split over ranks assumed)" out.txt
    expect "wrote layers.npy: int32 (2, 4," out.txt
    run_fails "--layout: EW not in {E,WE,LE,LWE}" \
      "$tool" plan --layout EW --load load.npy --world-size 2 --slots-per-rank 3 --out t.npy
    run_fails "plan(): world_size 2 x slots_per_rank 1 = 2 physical slots cannot hold 4 experts" \
      "$tool" plan --layout WE --load load.npy --world-size 2 --slots-per-rank 1 --out t.npy
    run_fails "plan(): slots_per_rank 5 is more than the 4 experts" \
      "$tool" plan --layout WE --load load.npy --world-size 2 --slots-per-rank 5 --out t.npy
    run_fails "has layout WE, but W = 2 differs from world_size 4" \
      "$tool" plan --layout WE --load load.npy --world-size 4 --slots-per-rank 2 --out t.npy
    npy_int32 negative.npy "(2, 4)" 5 1 1 1 1 1 -3 1
    run_fails "plan(): load has a negative value -3 at (rank 1, expert 2)" \
      "$tool" plan --layout WE --load negative.npy --world-size 2 --slots-per-rank 3 --out t.npy
    printf 'not an npy file' >garbage.npy
    run_fails "--load" "$tool" plan --load garbage.npy --world-size 2 --slots-per-rank 3 --out t.npy
    run_fails "--load" "$tool" plan --load missing.npy --world-size 2 --slots-per-rank 3 --out t.npy
    run "$tool" plan --layout WE --load load.npy --world-size 2 --slots-per-rank 3 --out t.npy
    run_fails "simulate(): give exactly one of --load (statistics) and --expert-ids (traces)" \
      "$tool" simulate --table t.npy --world-size 2 --slots-per-rank 3
    run_fails "convert(): --from log2phy needs --logcnt" \
      "$tool" convert --from log2phy --to ascend --in t.npy --out x.npy
    ;;

  windows)
    # Several windows, oldest first: identical windows persist fully.
    run "$tool" demo --scenario qwen3-ep16-lognormal --tokens-per-rank 256 --svg '' --save-dir .
    run "$tool" plan --layout WE --load load.npy --load load.npy --load load.npy --world-size 16 \
      --slots-per-rank 9 --out table.npy
    expect "planned 1 layer on 3 windows" out.txt
    expect "persistence of per-rank deviations from the global share: 1.00" out.txt
    expect "predicted max/mean per-rank load on the next window, rank mode: " out.txt
    expect "about 68% between" out.txt
    run "$tool" validate --table table.npy --world-size 16 --num-physical 144
    expect "valid (0 errors, 0 warnings)" out.txt
    # One window: the documented conservative default, said as such.
    run "$tool" plan --layout WE --load load.npy --world-size 16 --slots-per-rank 9 --out one.npy
    expect "one window: a conservative default" out.txt
    # Windows that swap two ranks' preferences every window do not persist.
    npy_int32 a.npy "(2, 4)" 90 10 50 50 10 90 50 50
    npy_int32 b.npy "(2, 4)" 10 90 50 50 90 10 50 50
    run "$tool" plan --layout WE --load a.npy --load b.npy --load a.npy --load b.npy --world-size 2 \
      --slots-per-rank 3 --out t.npy
    expect "persistence of per-rank deviations from the global share: 0.00" out.txt
    # Global counts per window: no per-rank persistence to report.
    npy_int32 g0.npy "(4,)" 9 1 1 1
    npy_int32 g1.npy "(4,)" 8 2 1 1
    run "$tool" plan --load g0.npy --load g1.npy --world-size 2 --slots-per-rank 3 --out g.npy
    expect "planned 1 layer on 2 windows" out.txt
    expect "predicted max/mean" out.txt
    ;;

  replan)
    run "$tool" demo --scenario qwen3-ep16-lognormal --tokens-per-rank 256 --svg '' --save-dir .
    run "$tool" plan --layout WE --load load.npy --world-size 16 --slots-per-rank 9 --out old.npy
    # A cap of 0 keeps every slot's expert.
    run "$tool" plan --layout WE --load load.npy --world-size 16 --slots-per-rank 9 --previous old.npy \
      --max-moves 0 --out same.npy
    expect "slots changed against old.npy: 0 of 144 (0.0%)" out.txt
    # Token-mode statistics on a rank-mode table: at most 5 slots change.
    run "$tool" plan --layout WE --load load.npy --world-size 16 --slots-per-rank 9 --balance-mode 1 \
      --previous old.npy --max-moves 5 --out capped.npy
    grep -Eq "slots changed against old.npy: [0-5] of 144" out.txt ||
      { cat out.txt >&2; fail "more than 5 slots changed"; }
    run "$tool" validate --table capped.npy --world-size 16 --num-physical 144
    expect "valid (0 errors" out.txt
    # A high move cost buys no moves.
    run "$tool" plan --layout WE --load load.npy --world-size 16 --slots-per-rank 9 --balance-mode 1 \
      --previous old.npy --move-cost 100 --out costly.npy
    expect "slots changed against old.npy: 0 of 144" out.txt
    ;;

  replan_errors)
    # Every bad input: exit 1, a message naming it, and no output file.
    npy_int32 load.npy "(2, 4)" 5 1 1 1 1 1 1 1
    npy_int32 global.npy "(4,)" 5 1 1 1
    run "$tool" plan --layout WE --load load.npy --world-size 2 --slots-per-rank 3 --out old.npy
    no_output() { [[ ! -e t.npy ]] || fail "t.npy was written after an error"; }
    run_fails "plan(): load of shape (4,) is 1-D but layout WE is 2-D (--load global.npy)" \
      "$tool" plan --layout WE --load load.npy --load global.npy --world-size 2 --slots-per-rank 3 --out t.npy
    no_output
    run_fails "moe-eplb: error: --max-moves: must be -1 (no cap) or 0 or more, got -2" \
      "$tool" plan --layout WE --load load.npy --world-size 2 --slots-per-rank 3 --previous old.npy \
      --max-moves -2 --out t.npy
    no_output
    run_fails "plan(): --max-moves needs --previous" \
      "$tool" plan --layout WE --load load.npy --world-size 2 --slots-per-rank 3 --max-moves 3 --out t.npy
    no_output
    run_fails "plan(): --move-cost needs --previous" \
      "$tool" plan --layout WE --load load.npy --world-size 2 --slots-per-rank 3 --move-cost 0.1 --out t.npy
    no_output
    run_fails "moe-eplb: error: --move-cost: must be a finite number >= 0, got -1" \
      "$tool" plan --layout WE --load load.npy --world-size 2 --slots-per-rank 3 --previous old.npy \
      --move-cost -1 --out t.npy
    no_output
    npy_int32 three.npy "(3, 2)" 1 0 1 1 1 2
    run_fails "plan(): previous table has 1 layers of 3 experts, but the load has 1 layers of 4" \
      "$tool" plan --layout WE --load load.npy --world-size 2 --slots-per-rank 3 --previous three.npy \
      --out t.npy
    no_output
    npy_int32 bad.npy "(4, 2)" 1 0 1 1 1 2 1 9
    run_fails "plan(): previous table, layer 0 is not a valid table for 2 ranks x 3 slots" \
      "$tool" plan --layout WE --load load.npy --world-size 2 --slots-per-rank 3 --previous bad.npy \
      --out t.npy
    no_output
    run_fails "--previous" \
      "$tool" plan --layout WE --load load.npy --world-size 2 --slots-per-rank 3 --previous missing.npy \
      --out t.npy
    no_output
    run_fails "max_moves and move_cost are only honoured by the moe-eplb" \
      "$tool" plan --layout WE --load load.npy --world-size 2 --slots-per-rank 3 --previous old.npy \
      --max-moves 1 --algorithm deepseek --out t.npy
    no_output
    ;;

  rules)
    # SGLang's statistics as JSON: (passes, layers, experts) summed over the passes.
    printf '{"logical_count": [[[10, 1, 1, 1, 1, 1, 1, 90], [1, 1, 1, 1, 1, 1, 1, 1]],
                               [[10, 1, 1, 1, 1, 1, 1, 90], [1, 1, 1, 1, 1, 1, 1, 1]]]}' >stat.json
    run "$tool" plan --load stat.json --world-size 4 --slots-per-rank 3 --ranks-per-node 2 \
      --rule sglang-static --out static.npy
    expect "sglang-static rule" out.txt
    run "$tool" simulate --table static.npy --load stat.json --world-size 4 --slots-per-rank 3 \
      --ranks-per-node 2 --rule sglang-static --json
    expect '"rule": "sglang-static"' out.txt
    expect '"balance_mode": -1' out.txt
    # The hot expert's replicas sit on distinct nodes: its traffic splits in two there.
    run "$tool" simulate --table static.npy --load stat.json --world-size 4 --slots-per-rank 3 \
      --ranks-per-node 2 --rule sglang-static --layer 0
    expect "sglang-static rule" out.txt
    for rule in ascend-rank ascend-token vllm sglang-dynamic trtllm; do
      run "$tool" plan --load stat.json --world-size 4 --slots-per-rank 3 --rule $rule --out t.npy
      run "$tool" simulate --table t.npy --load stat.json --world-size 4 --slots-per-rank 3 \
        --rule $rule --json
      expect "\"rule\": \"$rule\"" out.txt
    done
    # --balance-mode 2 is the vllm rule.
    run "$tool" plan --load stat.json --world-size 4 --slots-per-rank 3 --balance-mode 2 --out m.npy
    expect "vllm rule" out.txt
    run "$tool" plan --load stat.json --world-size 4 --slots-per-rank 3 --rule vllm --out v.npy
    cmp m.npy v.npy || fail "--balance-mode 2 and --rule vllm planned differently"
    run "$tool" replay --load stat.json --load stat.json --load stat.json --world-size 4 \
      --slots-per-rank 3 --rule vllm
    expect "vllm rule" out.txt
    printf '{"physical_to_logical_map": [[0, 1]]}' >bad.json
    run_fails "--load bad.json: expected SGLang's statistics {\"logical_count\": [...]}" \
      "$tool" plan --load bad.json --world-size 4 --slots-per-rank 3 --out t.npy
    printf '{"logical_count": [[1, 2], [3]]}' >ragged.json
    run_fails "logical_count is not rectangular" \
      "$tool" plan --load ragged.json --world-size 4 --slots-per-rank 3 --out t.npy
    ;;

  *)
    fail "unknown case"
    ;;
esac
echo "ok [$case_name]"

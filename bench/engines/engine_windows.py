"""Each engine's default planner against moe-eplb's adapter, both called as the
engine calls them, over consecutive windows: the placement in force goes in,
the next window scores what comes out under the engine's own replica rule.

    python3 bench/engines/engine_windows.py [--data DIR] [--move-cost C ...] [--scenario NAME ...]

Windows:
  - real: the eight SGLang DeepSeek-V3 prefill runs in ../shared/data (layers
    3-60, global counts), in name order, as eight consecutive windows;
  - drifting suite scenarios (moe-eplb replay's generator, through
    bench/engines/dump_scenario), global sums of each window.
Topology: EP 32 x 9 slots (DeepSeek-V3 on 4 nodes of 8 GPUs, 8 expert groups)
for the real runs; each scenario's own for the suite. The first placement
is the engines' trivial one (slot p holds expert p % E).

Baselines, reimplemented from the engines' sources (docs/SPEC.md "Replica rules"):
  vLLM default    DeepSeek's EPLB (hierarchical when num_groups % num_nodes == 0),
                  then preserve_intragpu_slots: experts that stay on a GPU keep
                  their slot (moe-eplb's align_to_previous does the same).
  SGLang auto     DeepSeek's EPLB (hierarchical likewise), log2phy in DeepSeek's
                  replica order, no placement in force.
  TensorRT-LLM    doReplication / doPlacement (moeLoadBalancer.cpp): water-filling
                  on load / count, then replicas heaviest first onto the least
                  loaded rank with room: DeepSeek's global policy, one node. It
                  has no online planner hook; both sides plan from scratch.
Scores: next-window max/mean per-rank load under the engine's rule (analyze),
averaged over layers and windows; slots changed per rebalance (slots whose
expert changes, as the engines move weights), as a share of all slots.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import moe_eplb
from moe_eplb.engines import _common
from moe_eplb.engines import sglang as eplb_sglang
from moe_eplb.engines import vllm as eplb_vllm

HERE = os.path.dirname(os.path.abspath(__file__))


class Shape:
    def __init__(self, world_size, slots_per_rank, ranks_per_node, num_groups):
        self.world_size = world_size
        self.slots_per_rank = slots_per_rank
        self.ranks_per_node = ranks_per_node
        self.num_groups = num_groups
        self.num_nodes = world_size // ranks_per_node if ranks_per_node else 1
        self.num_physical = world_size * slots_per_rank


def real_windows(data):
    files = sorted(glob.glob(os.path.join(data, "*.json")))
    windows = []
    for path in files:
        with open(path, encoding="utf-8") as stream:
            counts = torch.tensor(json.load(stream)["logical_count"], dtype=torch.float64)
        windows.append(counts[3:])  # layers 0-2 are dense
    return [os.path.basename(f)[:-5] for f in files], windows


def scenario_windows(tool, name, draw, num_windows):
    """Global (L, E) counts of each window of a suite scenario draw."""
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run([tool, name, str(draw), str(num_windows), folder], check=True,
                             capture_output=True, text=True).stdout.split()
        shape = Shape(*map(int, out))
        windows = [torch.from_numpy(np.load(os.path.join(folder, "window%d.npy" % w)))
                   .sum(dim=1) for w in range(num_windows)]
    return shape, windows


def trivial_table(num_layers, num_experts, num_physical):
    phy2log = torch.arange(num_physical).remainder(num_experts).expand(num_layers, -1)
    return eplb_vllm.from_vllm(phy2log, num_logical_experts=num_experts)


def deepseek_table(weight, shape):
    return moe_eplb.plan(weight.unsqueeze(1), shape.world_size, shape.slots_per_rank,
                         algorithm="deepseek", num_groups=shape.num_groups,
                         ranks_per_node=shape.ranks_per_node).table


# ---- the policies, each: (weight (L, E), table in force (L, E, F)) -> new table ----

def vllm_default(weight, in_force, shape):
    fresh = deepseek_table(weight, shape)
    aligned = torch.stack([moe_eplb.align_to_previous(in_force[layer], fresh[layer],
                                                      shape.world_size, shape.slots_per_rank)
                           for layer in range(fresh.shape[0])])
    return eplb_vllm.from_vllm(eplb_vllm.to_vllm(aligned, shape.num_physical)[0],
                               num_logical_experts=weight.shape[1])


def vllm_adapter(options):
    def policy(weight, in_force, shape):
        old = eplb_vllm.to_vllm(in_force, shape.num_physical)[0]
        eplb_vllm.MoeEplbPolicy.options = dict(options)
        new = eplb_vllm.MoeEplbPolicy.rebalance_experts(
            weight, shape.num_physical, shape.num_groups, shape.num_nodes, shape.world_size, old)
        return eplb_vllm.from_vllm(new, num_logical_experts=weight.shape[1])
    return policy


def sglang_auto(weight, in_force, shape):
    return deepseek_table(weight, shape)


def sglang_adapter(dispatch, options):
    def policy(weight, in_force, shape):
        old = eplb_vllm.to_vllm(in_force, shape.num_physical)[0]
        _, log2phy, logcnt = eplb_sglang.rebalance_experts(
            weight.unsqueeze(0), shape.num_physical, shape.slots_per_rank, shape.num_groups,
            shape.num_nodes, dispatch=dispatch, previous=old, **options)
        return eplb_vllm.from_vllm(logical_to_physical_map=log2phy, logical_replica_count=logcnt)
    return policy


def trtllm_default(weight, in_force, shape):
    return moe_eplb.plan(weight.unsqueeze(1), shape.world_size, shape.slots_per_rank,
                         algorithm="deepseek").table


def trtllm_adapter(options):
    def policy(weight, in_force, shape):
        # What plan_config() plans offline: TensorRT-LLM's rule, from scratch.
        return _common.plan_layers(weight, shape.world_size, shape.slots_per_rank,
                                   rule="trtllm", ranks_per_node=shape.ranks_per_node)
    return policy


def run(policy, windows, shape, rule):
    """(mean next-window max/mean, mean slots moved per rebalance / slots, seconds per call,
    per-transition max/mean)."""
    num_layers, num_experts = windows[0].shape
    in_force = trivial_table(num_layers, num_experts, shape.num_physical)
    balance, moved, seconds, per_window = [], [], [], []
    for window, following in zip(windows, windows[1:]):
        start = time.perf_counter()
        new = policy(window, in_force, shape)
        seconds.append(time.perf_counter() - start)
        moves = 0
        for layer in range(num_layers):
            report = moe_eplb.analyze(new[layer], following[layer], shape.world_size,
                                      shape.slots_per_rank, rule=rule,
                                      ranks_per_node=shape.ranks_per_node)
            balance.append(report.max_over_mean)
            moves += moe_eplb.table_diff(in_force[layer], new[layer], shape.world_size,
                                         shape.slots_per_rank).slots_changed
        moved.append(moves / (num_layers * shape.num_physical))
        per_window.append(float(np.mean(balance[-num_layers:])))
        in_force = new
    return (float(np.mean(balance)), float(np.mean(moved)), float(np.median(seconds)),
            per_window)


ENGINES = [("vLLM", "vllm", vllm_default, lambda options: vllm_adapter(options)),
           ("SGLang static", "sglang-static", sglang_auto,
            lambda options: sglang_adapter("static", options)),
           ("SGLang dynamic", "sglang-dynamic", sglang_auto,
            lambda options: sglang_adapter("dynamic", options)),
           ("TensorRT-LLM", "trtllm", trtllm_default, trtllm_adapter)]


def evaluate(windows, shape, move_costs):
    """One row per (engine, planner): dicts of the table's columns."""
    rows = []
    for engine, rule, default, adapter in ENGINES:
        balance, changed, seconds, theirs = run(default, windows, shape, rule)
        name = {"vllm": "default policy", "trtllm": "doReplication/doPlacement"}.get(rule, "auto")
        rows.append(dict(engine="%s (%s)" % (engine, rule), planner=name, balance=[balance],
                         wins=0, windows=0, changed=[changed], ratio=[1.0], seconds=[seconds]))
        for move_cost in move_costs:
            options = dict(eplb_vllm.DEFAULT_OPTIONS)
            if move_cost is not None:
                options["move_cost"] = move_cost
            ours, ours_changed, ours_seconds, per_window = run(adapter(options), windows, shape,
                                                               rule)
            label = "from scratch" if rule == "trtllm" else "move_cost %g%s" % (
                options["move_cost"], "" if move_cost is not None else " (default)")
            rows.append(dict(engine="%s (%s)" % (engine, rule), planner="moe-eplb, " + label,
                             balance=[ours], wins=sum(a < b for a, b in zip(per_window, theirs)),
                             windows=len(theirs), changed=[ours_changed],
                             ratio=[ours_changed / changed if changed else 0.0],
                             seconds=[ours_seconds]))
            if rule == "trtllm":
                break
    return rows


def merge(rows, more):
    """Adds a draw's rows to the rows of earlier draws."""
    if not rows:
        return more
    for row, extra in zip(rows, more):
        for key in ("balance", "changed", "ratio", "seconds"):
            row[key] += extra[key]
        row["wins"] += extra["wins"]
        row["windows"] += extra["windows"]
    return rows


def print_rows(title, rows, draws=1):
    print("### %s\n" % title)
    print("| engine (rule) | planner | next-window max/mean%s | windows better | slots changed "
          "per rebalance | changed / default's | time per call |"
          % (" (geometric mean of %d draws)" % draws if draws > 1 else ""))
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        balance = float(np.exp(np.mean(np.log(row["balance"]))))
        better = "%d of %d" % (row["wins"], row["windows"]) if row["windows"] else ""
        print("| %s | %s | %.4f | %s | %.1f%% | %.3f | %.2f s |"
              % (row["engine"], row["planner"], balance, better, 100 * np.mean(row["changed"]),
                 np.mean(row["ratio"]), np.median(row["seconds"])))
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "..", "shared", "data",
                                                       "sglang-deepseek-v3"),
                        help="folder of the real runs' JSON files ('' skips them)")
    parser.add_argument("--move-cost", type=float, action="append", default=None,
                        help="adapter move_cost values to compare (default: the adapters' own)")
    parser.add_argument("--scenario", action="append", default=[],
                        help="drifting suite scenario, e.g. drifting-deepseek-v3-ep32")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--dump-tool", default=os.path.join("build-bench", "bench", "engines",
                                                            "dump_scenario"))
    args = parser.parse_args()
    move_costs = args.move_cost or [None]
    torch.set_num_threads(1)
    print("- date: %s, commit %s" % (
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                       text=True).stdout.strip()))
    print("- command: python3 bench/engines/engine_windows.py %s\n" % " ".join(sys.argv[1:]))
    names, windows = real_windows(args.data) if args.data else ([], [])
    if windows:
        print_rows("Real DeepSeek-V3 runs (%s), EP 32 x 9, 4 nodes" % ", ".join(names),
                   evaluate(windows, Shape(32, 9, 8, 8), move_costs))
    for scenario in args.scenario:
        rows = []
        for draw in range(args.draws):
            shape, windows = scenario_windows(args.dump_tool, scenario, draw, args.windows)
            rows = merge(rows, evaluate(windows, shape, move_costs))
        print_rows("%s, draws 0-%d (%d windows each), EP %d x %d"
                   % (scenario, args.draws - 1, args.windows, shape.world_size,
                      shape.slots_per_rank), rows, args.draws)


if __name__ == "__main__":
    main()

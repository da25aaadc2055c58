"""What a rebalance moves, and what migrating costs a running model.

    .venv/bin/python bench/bench_migration.py [--quick] [--skip-stall]

Part 1, moves (one process, no communication): per rebalance on drifting
traffic, the experts received, bytes, point-to-point messages, cross-node
messages and local copies of four strategies, with the balance each gets on
the next window (max/mean rank load, rank mode, analyze()):
  naive       plan from scratch, then every slot whose expert changed
              receives it from the expert's first old holder (the rank may
              already hold it; no de-duplication);
  vllm        plan from scratch, keep experts that stay on a rank in their
              slots (align_to_previous), each rank receives each new expert
              once from holders chosen without regard to nodes (vLLM's
              rearrange_expert_weights_inplace rule);
  moe-eplb    plan with the table in force as `previous`, align, then
              migration_plan (same node first, spread over holders);
  capped      moe-eplb with max_moves = 10% of the slots.
Traffic: the shapes and parameters of the planner's multi-window
"drifting" family (src/plan/scenario.cpp), generated here with NumPy (the
C++ generator is not exposed to Python, so the draws differ): Zipf or
log-normal popularity whose log-weights take a random walk (std `drift` per
window), per-source-rank preferences exp(0.3 z) with window-to-window
correlation 0.5, 4096 tokens per rank, top-k counts per rank drawn as a
multinomial (with replacement, unlike the C++ generator). Rebalance after every window on the last
two windows; expert bytes of DeepSeek-V3 (3 x 7168 x 2048, FP8, plus scales).

Part 2, stall (gloo, CPU processes): the online demo's model scaled up (4
ranks, 2 ExpertParallelMoE layers, float32 experts of 3 MiB) on an
EplbRuntime that migrates one layer per step after each rebalance; the
step time (forward + step(), slowest rank) of steps that migrate and of
the planning step, as ratios to the median normal step.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

import moe_eplb
from moe_eplb.distributed import EplbRuntime, ExpertParallelMoE
from moe_eplb.distributed import demo
from moe_eplb.distributed.moe import slot_experts

# The drifting family of scenario.cpp's window suite: name, experts, top-k,
# world size, slots per rank, ranks per node (0: one node), popularity, skew,
# drift (rank variation 0.3 and persistence 0.5 for all; 4096 tokens per rank).
SHAPES = [
    ("deepseek-v3-ep32", 256, 8, 32, 9, 8, "zipf", 0.9, 0.15),
    ("deepseek-v3-ep64", 256, 8, 64, 5, 8, "lognormal", 0.8, 0.10),
    ("qwen3-ep16", 128, 8, 16, 9, 8, "zipf", 1.0, 0.20),
    ("mixtral-ep6", 8, 2, 6, 2, 0, "lognormal", 0.8, 0.25),
    ("deepseek-v3-ep48", 256, 8, 48, 6, 8, "zipf", 0.9, 0.15),
]
TOKENS_PER_RANK = 4096
# DeepSeek-V3's expert: three 7168 x 2048 FP8 matrices and their FP32 scales per 128 x 128 block.
DEEPSEEK_EXPERT_BYTES = 3 * 7168 * 2048 + 3 * (7168 // 128) * (2048 // 128) * 4


# ---------------------------------------------------------------- part 1


def drifting_windows(rng, num_experts, top_k, world_size, popularity, skew, drift, num_windows,
                     rank_variation=0.3, persistence=0.5):
    """num_windows (W, E) float64 count arrays, oldest first."""
    if popularity == "zipf":
        log_weight = -skew * np.log1p(rng.permutation(num_experts))
    else:
        log_weight = skew * rng.standard_normal(num_experts)
    fixed = rng.standard_normal((world_size, num_experts))
    windows = []
    for _ in range(num_windows):
        log_weight = log_weight + drift * rng.standard_normal(num_experts)
        z = np.sqrt(persistence) * fixed + np.sqrt(1 - persistence) * rng.standard_normal(
            (world_size, num_experts))
        weights = np.exp(log_weight + rank_variation * z)
        probabilities = weights / weights.sum(axis=1, keepdims=True)
        windows.append(np.stack([rng.multinomial(TOKENS_PER_RANK * top_k, p)
                                 for p in probabilities]).astype(np.float64))
    return windows


def naive_moves(old, new, world_size, slots_per_rank, ranks_per_node):
    """Every changed slot receives from the expert's first old holder."""
    num_slots = world_size * slots_per_rank
    before, after = slot_experts(old, num_slots), slot_experts(new, num_slots)
    first_holder = {}
    for slot, expert in enumerate(before):
        first_holder.setdefault(expert, slot)
    messages = cross_node = copies = 0
    for slot, expert in enumerate(after):
        if expert < 0 or before[slot] == expert:
            continue
        source_rank, rank = first_holder[expert] // slots_per_rank, slot // slots_per_rank
        if source_rank == rank:
            copies += 1
        else:
            messages += 1
            cross_node += bool(ranks_per_node) and source_rank // ranks_per_node != \
                rank // ranks_per_node
    return dict(messages=messages, cross_node=cross_node, local_copies=copies)


def planned_moves(old, new, world_size, slots_per_rank, ranks_per_node, node_aware):
    plan = moe_eplb.migration_plan(old, new, world_size, slots_per_rank,
                                   ranks_per_node=ranks_per_node if node_aware else 0)
    cross_node = plan.cross_node
    if not node_aware and ranks_per_node:  # count what crossed the real nodes
        receives = (plan.action == int(moe_eplb.MigrationAction.RECEIVE)).nonzero().flatten()
        destination_node = receives // slots_per_rank // ranks_per_node
        cross_node = int((plan.source_rank[receives] // ranks_per_node !=
                          destination_node).sum())
    return dict(messages=plan.received, cross_node=cross_node, local_copies=plan.local_copies)


def run_moves(shape, num_rebalances, seed):
    name, experts, top_k, world_size, slots, per_node, popularity, skew, drift = shape
    rng = np.random.default_rng(seed)
    windows = drifting_windows(rng, experts, top_k, world_size, popularity, skew, drift,
                               num_rebalances + 3)
    options = dict(balance_mode=0, ranks_per_node=per_node)
    first = moe_eplb.plan(windows[:2], world_size, slots, **options)
    width = first.shape[1]
    tables = dict(naive=first, vllm=first, **{"moe-eplb": first, "capped": first})
    cap = (world_size * slots) // 10
    rows = {strategy: [] for strategy in tables}
    for step in range(1, num_rebalances + 1):
        history, upcoming = windows[step:step + 2], windows[step + 2]
        scratch = moe_eplb.plan(history, world_size, slots, num_columns=width, **options)
        new = dict(naive=scratch,
                   vllm=moe_eplb.align_to_previous(scratch, tables["vllm"], world_size, slots))
        for strategy, max_moves in (("moe-eplb", None), ("capped", cap)):
            planned = moe_eplb.plan(history, world_size, slots, num_columns=width,
                                    previous=tables[strategy], max_moves=max_moves, **options)
            new[strategy] = moe_eplb.align_to_previous(planned, tables[strategy], world_size,
                                                       slots)
        for strategy, table in new.items():
            old = tables[strategy]
            if strategy == "naive":
                moves = naive_moves(old, table, world_size, slots, per_node)
            else:
                moves = planned_moves(old, table, world_size, slots, per_node,
                                      node_aware=strategy != "vllm")
            moves["max_over_mean"] = moe_eplb.analyze(
                table, upcoming, world_size, slots, **options)["max_over_mean"]
            rows[strategy].append(moves)
            tables[strategy] = table
    return rows


def print_moves(shapes, num_rebalances, seed, out):
    print("## moves per rebalance (mean over %d rebalances, seed %d)\n" % (num_rebalances, seed),
          file=out)
    print("| shape | strategy | experts received = messages | GB moved | cross-node messages | "
          "local copies | max/mean next window |", file=out)
    print("|---|---|---:|---:|---:|---:|---:|", file=out)
    for shape in shapes:
        rows = run_moves(shape, num_rebalances, seed)
        for strategy, values in rows.items():
            mean = {key: statistics.mean(v[key] for v in values) for key in values[0]}
            print("| %s | %s | %.1f | %.2f | %.1f | %.1f | %.3f |" % (
                shape[0], strategy, mean["messages"],
                mean["messages"] * DEEPSEEK_EXPERT_BYTES / 1e9, mean["cross_node"],
                mean["local_copies"], mean["max_over_mean"]), file=out)
    out.flush()


# ---------------------------------------------------------------- part 2


def stall_rank(rank, world_size, options):
    dense = demo.dense_layers(2, options.experts, options.hidden, options.intermediate, 3)
    dense = [tuple(w.float() for w in weights) for weights in dense]
    runtime = EplbRuntime(2, options.experts, options.slots_per_rank, window_steps=4,
                          num_windows=2, rebalance_every=options.rebalance_every,
                          layers_per_step=1, ranks_per_node=2)
    layers = [ExpertParallelMoE.from_dense(*weights, 2, options.slots_per_rank, runtime=runtime,
                                           layer=idx) for idx, weights in enumerate(dense)]
    generator = torch.Generator().manual_seed(rank)
    kinds, seconds = [], []
    for step in range(options.steps):
        hidden = demo.drifting_batch(dense[0][0].double(), step, rank, world_size,
                                     options.tokens, generator, period=40.0).float()
        kind = "migrate" if runtime.migrating else "normal"
        dist.barrier()
        started = time.perf_counter()
        demo.run_model(layers, hidden)
        if runtime.step() is not None:
            kind = "plan"
        elapsed = torch.tensor([time.perf_counter() - started], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        kinds.append(kind)
        seconds.append(elapsed.item())
    slot_bytes = sum(t[0].numel() * t.element_size() for t in layers[0].slot_tensors())
    moved = sum(sum(r.experts_moved) for r in runtime.rebalances if r.done_step is not None)
    return dict(kinds=kinds, seconds=seconds, slot_bytes=slot_bytes, moved=moved,
                rebalances=len(runtime.rebalances))


def print_stall(options, out):
    log = demo.run_gloo_ranks(stall_rank, options.world_size, (options,), timeout_s=900)[0]
    warm = options.rebalance_every  # the first steps warm up
    by_kind = {}
    for kind, seconds in list(zip(log["kinds"], log["seconds"]))[warm:]:
        by_kind.setdefault(kind, []).append(seconds)
    normal = statistics.median(by_kind["normal"])
    print("\n## stall while migrating (gloo, %d CPU processes)\n" % options.world_size, file=out)
    print("%d experts of %.1f MiB per slot (float32 SwiGLU, H %d, I %d), %d slots per rank, "
          "2 layers, %d tokens per rank per step; %d rebalances, %d experts moved.\n" % (
              options.experts, log["slot_bytes"] / 2**20, options.hidden, options.intermediate,
              options.slots_per_rank, options.tokens, log["rebalances"], log["moved"]), file=out)
    print("| step | count | median ms | max ms | median / normal step |", file=out)
    print("|---|---:|---:|---:|---:|", file=out)
    for kind in ("normal", "migrate", "plan"):
        values = by_kind.get(kind, [])
        if values:
            print("| %s | %d | %.1f | %.1f | %.2f |" % (
                {"normal": "normal", "migrate": "migrates one layer",
                 "plan": "gathers windows and plans"}[kind], len(values),
                1e3 * statistics.median(values), 1e3 * max(values),
                statistics.median(values) / normal), file=out)
    out.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rebalances and steps")
    parser.add_argument("--skip-stall", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--slots-per-rank", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rebalance-every", type=int, default=8)
    parser.add_argument("--steps", type=int, default=56)
    options = parser.parse_args(argv)
    if options.quick:
        options.steps = 24
    print("machine: %s, %d CPUs, torch %s; %s" % (platform.processor() or platform.machine(),
                                                  os.cpu_count(), torch.__version__,
                                                  time.strftime("%Y-%m-%d")))
    print_moves(SHAPES, 3 if options.quick else 10, options.seed, sys.stdout)
    if not options.skip_stall:
        print_stall(options, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
  capped      moe-eplb with max_moves = 10% of the slots;
  cost        moe-eplb with move_cost 0.02 (a move must buy 0.02 of max/mean).
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

import torch
import torch.distributed as dist

import moe_eplb
from moe_eplb import PreparedTable
from moe_eplb.distributed import EplbRuntime, ExpertParallelMoE
from moe_eplb.distributed import demo
from moe_eplb.distributed._local import free_port

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
    import numpy as np  # only this part needs NumPy
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
    before = moe_eplb.slot_experts(old, world_size, slots_per_rank).tolist()
    after = moe_eplb.slot_experts(new, world_size, slots_per_rank).tolist()
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
    import numpy as np
    rng = np.random.default_rng(seed)
    windows = drifting_windows(rng, experts, top_k, world_size, popularity, skew, drift,
                               num_rebalances + 3)
    options = dict(layout="WE", balance_mode=0, ranks_per_node=per_node)
    first = moe_eplb.plan(windows[:2], world_size, slots, **options).table
    width = first.shape[1]
    tables = {"naive": first, "vllm": first, "moe-eplb": first, "capped": first, "cost": first}
    cap = (world_size * slots) // 10
    rows = {strategy: [] for strategy in tables}
    for step in range(1, num_rebalances + 1):
        history, upcoming = windows[step:step + 2], windows[step + 2]
        scratch = moe_eplb.plan(history, world_size, slots, num_columns=width, **options).table
        new = dict(naive=scratch,
                   vllm=moe_eplb.align_to_previous(tables["vllm"], scratch, world_size, slots))
        for strategy, max_moves, move_cost in (("moe-eplb", None, 0.0), ("capped", cap, 0.0),
                                               ("cost", None, 0.02)):
            planned = moe_eplb.plan(history, world_size, slots, num_columns=width,
                                    previous=tables[strategy], max_moves=max_moves,
                                    move_cost=move_cost, **options).table
            new[strategy] = moe_eplb.align_to_previous(tables[strategy], planned, world_size,
                                                       slots)
        for strategy, table in new.items():
            old = tables[strategy]
            if strategy == "naive":
                moves = naive_moves(old, table, world_size, slots, per_node)
            else:
                moves = planned_moves(old, table, world_size, slots, per_node,
                                      node_aware=strategy != "vllm")
            moves["max_over_mean"] = moe_eplb.analyze(
                table, upcoming, world_size, slots, **options).max_over_mean
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


def stall_rank(rank, world_size, options, device=None):
    """The timed run on one rank: per step its kind (normal, migrate, plan)
    and the slowest rank's forward + step() time. With one rank (S = E)
    the planner cannot change the placement, so each rebalance rotates the
    slots instead (every move a local copy)."""
    device = torch.device("cpu") if device is None else device
    dense = demo.dense_layers(2, options.experts, options.hidden, options.intermediate, 3)
    dense = [tuple(w.float().to(device) for w in weights) for weights in dense]
    runtime = EplbRuntime(2, options.experts, options.slots_per_rank, window_steps=4,
                          num_windows=2, rebalance_every=options.rebalance_every,
                          layers_per_step=1, ranks_per_node=2 if world_size % 2 == 0 else 0,
                          device=device)
    if world_size == 1:
        runtime._plan = lambda windows, old: torch.cat(
            [old[:, :, :1], torch.where(old[:, :, 1:] >= 0, (old[:, :, 1:] + 1) % options.experts,
                                        old[:, :, 1:])], dim=2)
    layers = [ExpertParallelMoE.from_dense(*weights, 2, options.slots_per_rank, runtime=runtime,
                                           layer=idx) for idx, weights in enumerate(dense)]
    generator = torch.Generator().manual_seed(rank)
    gate = dense[0][0].double().cpu()
    kinds, seconds = [], []
    for step in range(options.steps):
        hidden = demo.drifting_batch(gate, step, rank, world_size, options.tokens, generator,
                                     period=40.0).float().to(device)
        kind = "migrate" if runtime.migrating else "normal"
        dist.barrier()
        _synchronize(device)
        started = time.perf_counter()
        demo.run_model(layers, hidden)
        if runtime.step() is not None:
            kind = "plan"
        _synchronize(device)
        elapsed = torch.tensor([time.perf_counter() - started], dtype=torch.float64,
                               device=device)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        kinds.append(kind)
        seconds.append(elapsed.item())
    slot_bytes = sum(t[0].numel() * t.element_size() for t in layers[0].slot_tensors())
    moved = sum(sum(r.experts_moved) for r in runtime.rebalances if r.done_step is not None)
    copies = sum(r.this_rank_received for r in runtime.rebalances)
    return dict(kinds=kinds, seconds=seconds, slot_bytes=slot_bytes, moved=moved,
                rebalances=len(runtime.rebalances), world_size=world_size, copies=copies)


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def print_stall(log, options, where, out):
    warm = options.rebalance_every  # the first steps warm up
    by_kind = {}
    for kind, seconds in list(zip(log["kinds"], log["seconds"]))[warm:]:
        by_kind.setdefault(kind, []).append(seconds)
    normal = statistics.median(by_kind["normal"])
    print("\n## stall while migrating (%s)\n" % where, file=out)
    print("%d experts of %.1f MiB per slot (float32 SwiGLU, H %d, I %d), %d slots per rank, "
          "2 layers, %d tokens per rank per step; %d rebalances, %d experts received over "
          "all ranks.\n" % (
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


def device_check(device_type, options, out):
    """World size 1 on NCCL (CUDA) or gloo (CPU, to test this check itself):
    dispatch and combine, migrate_experts, the runtime with a CUDA graph
    captured around the routing, and the cost of step() with nothing due.
    Prints PASS/FAIL lines; returns the number of failures."""
    import datetime
    from moe_eplb.distributed import combine, dispatch, migrate_experts

    backend = "nccl" if device_type == "cuda" else "gloo"
    device = torch.device(device_type, 0) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method="tcp://127.0.0.1:%d" % free_port(),
                            rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
    failures = []

    def check(name, ok, detail=""):
        print("%s %s%s" % ("PASS" if ok else "FAIL", name, (": " + detail) if detail else ""),
              file=out)
        if not ok:
            failures.append(name)

    def sync():
        if device_type == "cuda":
            torch.cuda.synchronize()

    generator = torch.Generator().manual_seed(0)
    num_experts, top_k, tokens, hidden_size = 8, 2, 64, 32
    try:
        # dispatch / combine against the rows they must carry
        table = torch.tensor([[1, (e + 3) % num_experts] for e in range(num_experts)],
                             dtype=torch.int32)
        hidden = torch.randn(tokens, hidden_size, generator=generator)
        ids = torch.randint(0, num_experts, (tokens, top_k), generator=generator)
        weights = torch.rand(tokens, top_k, generator=generator)
        recv, slots, handle = dispatch(hidden.to(device), ids.to(device), table.to(device),
                                       slots_per_rank=num_experts)
        expected_slots = table[ids, 1].reshape(-1).long()
        check("dispatch rows and slots", torch.equal(recv.cpu(), hidden.repeat_interleave(
            top_k, dim=0)) and torch.equal(slots.cpu(), expected_slots))
        out_rows = combine(recv * (slots + 1).unsqueeze(1).to(recv.dtype), handle,
                           weights.to(device))
        reference = sum(weights[:, k:k + 1] * hidden * (table[ids[:, k], 1] + 1).unsqueeze(1)
                        for k in range(top_k))
        check("combine", torch.allclose(out_rows.cpu(), reference, rtol=1e-5, atol=1e-5))

        # migrate_experts: a cycle of every slot, three dtypes, bitwise
        slots_per_rank = num_experts
        contents = [torch.randn(num_experts, 4, 4, generator=generator),
                    torch.randint(-128, 128, (num_experts, 3), generator=generator,
                                  dtype=torch.int8),
                    torch.randn(num_experts, 2, generator=generator).to(torch.bfloat16)]
        old = torch.tensor([[1, e] for e in range(num_experts)], dtype=torch.int32)
        new = torch.tensor([[1, (e + 1) % num_experts] for e in range(num_experts)],
                           dtype=torch.int32)
        tensors = [c.clone().to(device) for c in contents]
        stats = migrate_experts(tensors, old, new, slots_per_rank=slots_per_rank)
        moved = all(torch.equal(t.cpu()[(e + 1) % num_experts], c[e])
                    for t, c in zip(tensors, contents) for e in range(num_experts))
        check("migrate_experts", moved and stats.local_copies == num_experts, str(stats))

        # the runtime: two layers, a rebalance that permutes the slots (with one
        # rank the planner cannot change the placement, as S = E), outputs
        # against the dense model, and a CUDA graph around the routing
        dense = demo.dense_layers(2, num_experts, 16, 8, 5)
        runtime = EplbRuntime(2, num_experts, num_experts, balance_mode=1, window_steps=2,
                              num_windows=1, rebalance_every=4, device=device)

        def roll_slots(windows, old_tables):  # every expert 3 slots further
            rolled = old_tables.clone()
            slots_used = rolled[:, :, 1:]
            rolled[:, :, 1:] = torch.where(slots_used >= 0, (slots_used + 3) % num_experts,
                                           slots_used)
            return rolled
        runtime._plan = roll_slots
        layers = [ExpertParallelMoE.from_dense(*(w.to(device) for w in weights), top_k,
                                               num_experts, runtime=runtime, layer=idx)
                  for idx, weights in enumerate(dense)]
        prepared = runtime.prepared_table(0)
        static_ids = ids.to(device)
        graph = None
        if device_type == "cuda":
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                prepared.map(static_ids)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = prepared.map(static_ids)
        equal, swaps = True, 0
        for step in range(12):
            x = demo.drifting_batch(dense[0][0], step, 0, 1, 32, generator).to(device)
            equal &= bool(torch.allclose(demo.run_model(layers, x).cpu(),
                                         demo.run_dense(dense, x.cpu(), top_k), rtol=1e-9,
                                         atol=1e-9))
            before = runtime.table(0)
            runtime.step()
            if not torch.equal(before, runtime.table(0)):
                swaps += 1
                if graph is not None:
                    graph.replay()
                    sync()
                    check("CUDA graph replay sees the swap at step %d" % (step + 1),
                          torch.equal(static_out, prepared.map(static_ids)) and not torch.equal(
                              static_out.cpu(), PreparedTable(before, -1, -1, balance_mode=1)
                              .map(static_ids.cpu())))
        check("runtime output equals the dense model at every step", equal)
        check("runtime swapped tables", swaps >= 2, "%d swaps" % swaps)
        graph_forward_check(device, generator, check, sync)

        # step() with nothing due: no host synchronisation, and its cost
        idle = EplbRuntime(1, num_experts, num_experts, window_steps=4, num_windows=2,
                           rebalance_every=10**9, device=device)
        for _ in range(10):
            idle.step()
        sync()
        if device_type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            started = time.perf_counter()
            for _ in range(1000):
                idle.step()
            host_us = (time.perf_counter() - started) * 1e3
            no_sync = True
        except RuntimeError as error:
            no_sync, host_us = False, float("nan")
            print(error, file=out)
        finally:
            if device_type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
        sync()
        check("step() with nothing due does not synchronise", no_sync,
              "%.1f us per call on the host (a window closes every 4th)" % host_us)

        # the stall at world size 1 (every move a local copy)
        options.slots_per_rank = options.experts
        log = stall_rank(0, 1, options, device)
        print_stall(log, options, "%s, world size 1" % backend, out)
    except Exception as error:  # reported as a failure; the stage goes on
        import traceback
        traceback.print_exc(file=out)
        check("device check ran to the end", False, "%s: %s" % (type(error).__name__, error))
    finally:
        dist.destroy_process_group()
    return len(failures)


def graph_forward_check(device, generator, check, sync):
    """Capacity-mode dispatch and combine (ExpertParallelMoE with
    max_tokens_per_rank) and EplbRuntime.route(), captured in CUDA graphs on
    CUDA, replayed across rebalances that rotate the slots: after each
    replay the forward equals the dense model and route() gives what the
    table in force gives eagerly. On the CPU the same steps run eagerly."""
    num_experts, top_k, tokens = 8, 2, 16
    dense = demo.dense_layers(2, num_experts, 16, 8, 7)
    runtime = EplbRuntime(2, num_experts, num_experts, window_steps=2, num_windows=1,
                          rebalance_every=3, device=device)

    def roll_slots(windows, old_tables):
        rolled = old_tables.clone()
        used = rolled[:, :, 1:]
        rolled[:, :, 1:] = torch.where(used >= 0, (used + 5) % num_experts, used)
        return rolled
    runtime._plan = roll_slots
    layers = [ExpertParallelMoE.from_dense(*(w.to(device) for w in weights), top_k, num_experts,
                                           runtime=runtime, layer=idx,
                                           max_tokens_per_rank=tokens)
              for idx, weights in enumerate(dense)]
    static_x = demo.drifting_batch(dense[0][0], 0, 0, 1, tokens, generator).to(device)
    static_ids = torch.randint(0, num_experts, (tokens, top_k), generator=generator).to(device)

    def forward():
        return demo.run_model(layers, static_x), runtime.route(0, static_ids)
    graph = None
    if device.type == "cuda":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: NCCL communicators, allocator
                forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out, static_route = forward()
    expected = demo.run_dense(dense, static_x.cpu(), top_k)
    swaps, equal, routes = 0, True, True
    for step in range(10):
        before = runtime.table(0)
        if graph is not None:
            graph.replay()
            sync()
            out, route = static_out, static_route
        else:
            out, route = forward()
        equal &= bool(torch.allclose(out.cpu(), expected, rtol=1e-9, atol=1e-9))
        routes &= torch.equal(route.cpu(), PreparedTable(before, 0, 1).map(static_ids.cpu()))
        runtime.step()
        swaps += not torch.equal(before, runtime.table(0))
    where = "in a CUDA graph on NCCL" if graph is not None else "eagerly on %s" % device
    check("capacity-mode forward %s equals the dense model across %d table swaps" % (
        where, swaps), equal and swaps >= 2)
    check("route() %s follows the table in force across %d swaps" % (where, swaps),
          routes and swaps >= 2)


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
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rebalance-every", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device-check", choices=("cuda", "cpu"),
                        help="only run the world-size-1 check on this device (NCCL for cuda)")
    options = parser.parse_args(argv)
    if options.device_check:
        if options.device_check == "cuda" and not torch.cuda.is_available():
            print("SKIP device check: no CUDA device")
            return 0
        return 1 if device_check(options.device_check, options, sys.stdout) else 0
    if options.quick:
        options.steps = 24
    print("machine: %s, %d CPUs, torch %s; %s" % (platform.processor() or platform.machine(),
                                                  os.cpu_count(), torch.__version__,
                                                  time.strftime("%Y-%m-%d")))
    print_moves(SHAPES, 3 if options.quick else 10, options.seed, sys.stdout)
    if not options.skip_stall:
        log = demo.run_gloo_ranks(stall_rank, options.world_size, (options,), timeout_s=900)[0]
        print_stall(log, options, "gloo, %d CPU processes" % options.world_size, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

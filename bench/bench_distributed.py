"""What agreement costs dispatch() and combine(), capacity mode against the
uneven mode, and the stall of a rebalance step with experts of tens of MB.

    .venv/bin/python bench/bench_distributed.py [--quick] [--baseline COMMIT]

Part 1 (gloo, W CPU processes): one dispatch() + combine() round of T tokens
x H hidden (float32) with top-K routing over E experts, timed on the slowest
rank after a barrier, the implementations interleaved within each repetition:
  baseline    dispatch/combine of COMMIT (before issue 16: a header without
              the table's fingerprint, a separate exchange of slot ids, no
              combine header), loaded from git;
  uneven      today's, uneven all_to_all (agreement in both headers);
  capacity    max_tokens_per_rank=T, checked (fixed-size buffers);
  unchecked   max_tokens_per_rank=T, checked=False (no host read at all);
  bf16        uneven with bfloat16 hidden states (the baseline fails on gloo).
Reported: median ms per round and the median of the per-repetition ratios to
the baseline (paired, so that load on the machine cancels); the capacity
rounds run in a block of their own (with uneven ones between them), so that
they do not disturb the comparison with the baseline.

Part 1 also times a fault: dispatch() where rank 1's table has two rows
swapped (every rank raises ValueError in the header exchange), from the call
to the exception, slowest rank.

Part 2 (gloo): the stall of EplbRuntime.step() when it switches one layer,
with bfloat16 expert tensors of M MiB per slot: a rebalance that rotates
every rank's first slot to the next rank (each rank receives one expert)
and one that moves every slot (each rank receives S). Median ms of step()
(slowest rank) and the bytes each rank received per second.
"""
import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist

import moe_eplb
from moe_eplb.distributed import EplbRuntime, combine, dispatch
from moe_eplb.distributed._local import run_local_ranks, values_or_raise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_baseline(commit):
    """dispatch/combine of `commit` as a module, or None (with the reason)."""
    try:
        source = subprocess.run(["git", "-C", ROOT, "show",
                                 "%s:python/moe_eplb/distributed/_dispatch.py" % commit],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        return None, "git show failed: %s" % error
    source = source.replace("from .._ops import", "from moe_eplb._ops import")
    path = os.path.join(tempfile.mkdtemp(), "baseline_dispatch.py")
    with open(path, "w") as out:
        out.write(source)
    spec = importlib.util.spec_from_file_location("baseline_dispatch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, None


def slowest(started):
    elapsed = torch.tensor([time.perf_counter() - started], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return elapsed.item()


def round_trip_rank(rank, world_size, options):
    """Part 1 on one rank: {name: [seconds per repetition]}."""
    baseline, why = load_baseline(options.baseline) if options.baseline else (None, "none")
    generator = torch.Generator().manual_seed(rank)
    slots_per_rank = options.experts // world_size + 2
    table = moe_eplb.plan(torch.ones(options.experts), world_size, slots_per_rank).table
    hidden = torch.randn(options.tokens, options.hidden, generator=generator)
    ids = torch.stack([torch.randperm(options.experts, generator=generator)[:options.top_k]
                       for _ in range(options.tokens)])
    weights = torch.rand(options.tokens, options.top_k, generator=generator)
    prepared = moe_eplb.PreparedTable(table, rank, world_size,
                                      num_physical_experts=world_size * slots_per_rank)

    def round_of(module, x, **kwargs):
        recv_hidden, _, handle = module.dispatch(x, ids, prepared, slots_per_rank=slots_per_rank,
                                                 **kwargs)
        return module.combine(recv_hidden, handle, weights)

    this = sys.modules[dispatch.__module__]
    variants = {"uneven": lambda: round_of(this, hidden),
                "capacity": lambda: round_of(this, hidden, max_tokens_per_rank=options.tokens),
                "unchecked": lambda: round_of(this, hidden, max_tokens_per_rank=options.tokens,
                                              checked=False),
                "bf16": lambda: round_of(this, hidden.to(torch.bfloat16))}
    if baseline is not None:
        variants = dict(baseline=lambda: round_of(baseline, hidden), **variants)
    swapped = table.clone()
    swapped[[0, 1]] = swapped[[1, 0]]

    def fault():
        try:
            dispatch(hidden, ids, swapped if rank == 1 else table, slots_per_rank=slots_per_rank)
        except ValueError:
            return
        raise AssertionError("the fault did not raise")
    variants["fault (raises)"] = fault
    times = {name: [] for name in variants}
    times["uneven (capacity block)"] = []
    # Two blocks, so that the heavy capacity rounds do not disturb the
    # comparison with the baseline: each block alternates its variants.
    light = [name for name in variants if name not in ("capacity", "unchecked")]
    for block in (light, ["uneven", "capacity", "unchecked"]):
        for repetition in range(options.warmup + options.reps):
            order = block if repetition % 2 == 0 else block[::-1]
            for name in order:
                dist.barrier()
                started = time.perf_counter()
                variants[name]()
                seconds = slowest(started)
                if repetition >= options.warmup:
                    times[name if block is light or name != "uneven" else
                          "uneven (capacity block)"].append(seconds)
    return dict(times=times, baseline_note=why)


def print_round_trips(log, options, out):
    times = log["times"]
    print("\n## dispatch() + combine(): %d gloo ranks, %d tokens x %d hidden, top-%d of %d "
          "experts, %d repetitions\n" % (options.world_size, options.tokens, options.hidden,
                                          options.top_k, options.experts, options.reps), file=out)
    if "baseline" not in times:
        print("(no baseline: %s)\n" % log["baseline_note"], file=out)
    print("| implementation | median ms | p90 ms | median ratio, paired | to |", file=out)
    print("|---|---:|---:|---:|---|", file=out)
    for name, values in times.items():
        if name == "uneven (capacity block)":
            continue
        ordered = sorted(values)
        reference = "uneven (capacity block)" if name in ("capacity", "unchecked") else "baseline"
        ratio = ""
        if reference in times and name != "baseline":
            ratio = "%.3f" % statistics.median(a / b for a, b in zip(values, times[reference]))
        print("| %s | %.2f | %.2f | %s | %s |" % (
            name, 1e3 * statistics.median(values), 1e3 * ordered[int(0.9 * (len(ordered) - 1))],
            ratio, "uneven, same block" if reference != "baseline" else "baseline"), file=out)
    out.flush()


def stall_rank(rank, world_size, options, expert_mib, moved):
    """Part 2 on one rank: step() times of switching steps, bytes received."""
    slots_per_rank = 4
    num_experts = world_size * slots_per_rank
    elements = expert_mib * 2**20 // 2 // 3
    runtime = EplbRuntime(1, num_experts, slots_per_rank, window_steps=1, num_windows=1,
                          rebalance_every=2)
    tensors = [torch.zeros(slots_per_rank, 3, elements, dtype=torch.bfloat16)]
    runtime.register_expert_tensors(0, tensors)

    def rotate(windows, old_tables):
        """Every rank's first `moved` slots go to the next rank's same slots."""
        new = old_tables.clone()
        used = new[:, :, 1:]
        rank_of, slot = used // slots_per_rank, used % slots_per_rank
        shifted = ((rank_of + 1) % world_size) * slots_per_rank + slot
        new[:, :, 1:] = torch.where((used >= 0) & (slot < moved), shifted, used)
        return new
    runtime._plan = rotate
    times, received = [], 0
    for step in range(2 * options.stall_rebalances + 2):
        runtime.route(0, torch.zeros(1, 1, dtype=torch.int64))
        migrating = runtime.migrating
        dist.barrier()
        started = time.perf_counter()
        runtime.step()
        seconds = slowest(started)
        if migrating:
            times.append(seconds)
    received = sum(r.this_rank_received for r in runtime.rebalances)
    return dict(times=times, received=received, slot_bytes=tensors[0][0].numel() * 2)


def print_stall(results, options, out):
    print("\n## the stall of a step() that switches one layer: %d gloo ranks, 4 slots per rank,"
          " bfloat16 experts\n" % options.world_size, file=out)
    print("| MiB per expert | experts each rank receives | switching steps | median ms | "
          "max ms | MB/s received per rank |", file=out)
    print("|---:|---:|---:|---:|---:|---:|", file=out)
    for (expert_mib, moved), log in results:
        median = statistics.median(log["times"])
        per_step = log["received"] / max(len(log["times"]), 1)
        print("| %d | %d | %d | %.1f | %.1f | %.0f |" % (
            expert_mib, moved, len(log["times"]), 1e3 * median, 1e3 * max(log["times"]),
            per_step * log["slot_bytes"] / median / 1e6), file=out)
    out.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--world-size", type=int, default=4)
    add("--tokens", type=int, default=128)
    add("--hidden", type=int, default=1024)
    add("--top-k", type=int, default=8)
    add("--experts", type=int, default=32)
    add("--reps", type=int, default=60)
    add("--warmup", type=int, default=5)
    add("--baseline", default="62e9a9f", help="commit whose dispatch/combine is the baseline "
                                              "('' for none)")
    add("--expert-mib", default="16,64", help="expert sizes for the stall, MiB")
    add("--stall-rebalances", type=int, default=3)
    add("--quick", action="store_true", help="fewer repetitions, one expert size")
    add("--skip-stall", action="store_true")
    options = parser.parse_args(argv)
    if options.quick:
        options.reps, options.expert_mib, options.stall_rebalances = 10, "16", 1
    print("machine: %s, %d CPUs, torch %s; %s" % (platform.processor() or platform.machine(),
                                                  os.cpu_count(), torch.__version__,
                                                  time.strftime("%Y-%m-%d")))
    log = values_or_raise(run_local_ranks(round_trip_rank, options.world_size, (options,),
                                          timeout_s=1800, group_timeout_s=300))[0]
    print_round_trips(log, options, sys.stdout)
    if not options.skip_stall:
        results = []
        for expert_mib in (int(size) for size in options.expert_mib.split(",")):
            for moved in (1, 4):
                stall = values_or_raise(run_local_ranks(
                    stall_rank, options.world_size, (options, expert_mib, moved),
                    timeout_s=1800, group_timeout_s=300))[0]
                results.append(((expert_mib, moved), stall))
        print_stall(results, options, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

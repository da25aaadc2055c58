#!/usr/bin/env python3
"""Benchmark of torch.ops.moe_eplb against torch baselines (a program, not a test).

Candidates, on the same inputs (rank mode, E=256 logical experts, world_size
32, 16 slots per rank, F=5, random replica counts):
  op          torch.ops.moe_eplb.update_expert (stateless: validates shapes,
              reads the table)
  op-token    the same op in token mode (balance_mode=1: replica by token
              index), for information: no target, no baseline
  op-pruned   update_expert_pruned: the op plus expert pruning (bfloat16
              scales, a threshold per k), for information
  prepared    torch.ops.moe_eplb.update_expert_prepared (one gather through
              PreparedTable routes)
  formula     the same formula written with torch ops (index_select, where,
              gather, ...)
  gather      torch.index_select on a precomputed rank map (what a user could
              write after precomputing the map themselves)
  copy        a device-to-device (or memcpy) copy of the same bytes: the
              bandwidth ceiling
  empty       an empty kernel (torch.cuda._sleep(0)): the launch-cost floor
  op-pdl,     op and prepared with programmatic dependent launch on (CUDA,
  prepared-pdl  sm_90+; the per-call enable_pdl=True)
  op-host     the op on an empty (0, K) slice of the same ids: everything a
              call costs on the host except the kernel launch (stream column)

GPU timings: "graph" = per-call time inside a CUDA graph of N back-to-back
calls (replayed, CUDA events, median over replays); "stream" = per-call time
of N calls issued back to back from Python on one stream (host-bound for small
shapes). CPU timings: perf_counter, median over repetitions. GB/s counts the
bytes the operator must move: read expert_ids and write the output. Every
candidate's result is checked against the op's after timing.

    python3 bench/bench_torch.py --device cuda --json out.json --markdown out.md
    python3 bench/bench_torch.py --device cpu
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

import moe_eplb

OPS = torch.ops.moe_eplb
SHAPES = [(8, 8), (512, 16), (65536, 8), (1048576, 8)]
NUM_EXPERTS, WORLD_SIZE, SLOTS_PER_RANK, NUM_COLUMNS, RANK = 256, 32, 16, 5, 7
NUM_PHYSICAL = WORLD_SIZE * SLOTS_PER_RANK

# Targets: GPU numbers are for an H100, the CPU one for the CI machine.
TARGET_PREPARED_GRAPH_US = 1.5     # 512x16, prepared path, graph replay
TARGET_OP_GRAPH_US = 2.0           # 512x16, stateless op, graph replay
TARGET_OP_STREAM_US = 8.0          # 512x16, torch op back to back (host-bound)
TARGET_COPY_FRACTION = 0.90        # 1048576x8, op and prepared vs device copy
TARGET_CPU_SPEEDUP = 10.0          # 512x16 on the CPU, op vs torch-ops formula


def make_table(generator):
    """A valid table: random counts 1..4, distinct slots across the table."""
    slots = torch.randperm(NUM_PHYSICAL, generator=generator)
    table = torch.full((NUM_EXPERTS, NUM_COLUMNS), -1, dtype=torch.int32)
    spare = NUM_PHYSICAL - NUM_EXPERTS
    next_slot = 0
    for expert in range(NUM_EXPERTS):
        count = int(torch.randint(1, NUM_COLUMNS, (1,), generator=generator))
        count = max(1, min(count, 1 + spare))
        spare -= count - 1
        table[expert, 0] = count
        table[expert, 1:count + 1] = slots[next_slot:next_slot + count]
        next_slot += count
    return table


def torch_formula(expert_ids, eplb_table, local_rank_id, world_size):
    """SPEC.md's formula (rank mode) in plain torch ops."""
    flat = expert_ids.reshape(-1).long()
    rows = eplb_table.index_select(0, flat)                   # (BS*K, F)
    count = rows[:, 0].long()
    ranks_per_replica = (world_size + count - 1) // count     # ceil(world_size / c)
    column = 1 + local_rank_id // ranks_per_replica
    column = torch.where(count == 1, torch.ones_like(column), column)
    out = rows.gather(1, column.unsqueeze(1)).squeeze(1)
    return out.to(expert_ids.dtype).view(expert_ids.shape)


def median(values):
    return statistics.median(values)


class GpuTimer:
    def __init__(self, reps):
        self.reps = reps
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def graph_us(self, fn, calls):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                result = fn()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.reps):
            self.start.record()
            graph.replay()
            self.end.record()
            self.end.synchronize()
            times.append(self.start.elapsed_time(self.end) * 1e3 / calls)
        del graph
        return median(times), result

    def stream_us(self, fn, calls):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.reps):
            self.start.record()
            for _ in range(calls):
                fn()
            self.end.record()
            self.end.synchronize()
            times.append(self.start.elapsed_time(self.end) * 1e3 / calls)
        return median(times)


def cpu_us(fn, reps):
    fn()
    calls = 1
    while True:  # enough calls per repetition for ~2 ms
        begin = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - begin > 2e-3 or calls >= 1 << 16:
            break
        calls *= 2
    times = []
    for _ in range(reps):
        begin = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter_ns() - begin) / 1e3 / calls)
    return median(times)


def pruning_inputs(ids, generator):
    """bfloat16 scales sorted like a router's top-k, and a threshold per k."""
    scales = torch.rand(ids.shape, generator=generator).sort(dim=1, descending=True).values
    threshold = torch.full((ids.shape[1],), 0.5 / ids.shape[1])
    return scales.to(torch.bfloat16).to(ids.device), threshold.to(ids.device)


def candidates(ids, table, prepared, rank_map, copy_out, pruning, device):
    scales, threshold = pruning
    result = {
        "op": lambda: OPS.update_expert(ids, table, RANK, WORLD_SIZE),
        "op-token": lambda: OPS.update_expert(ids, table, RANK, WORLD_SIZE, balance_mode=1),
        "op-pruned": lambda: OPS.update_expert_pruned(ids, table, scales, threshold, None, RANK,
                                                      WORLD_SIZE)[0],
        "prepared": lambda: OPS.update_expert_prepared(
            ids, prepared.routes, balance_mode=0, num_physical_experts=NUM_PHYSICAL),
        "formula": lambda: torch_formula(ids, table, RANK, WORLD_SIZE),
        "gather": lambda: torch.index_select(rank_map, 0, ids.view(-1)).view(ids.shape),
        "copy": lambda: copy_out.copy_(ids),
    }
    if device == "cuda":
        result["empty"] = lambda: torch.cuda._sleep(0)
        empty_ids = ids[:0]
        result["op-host"] = lambda: OPS.update_expert(empty_ids, table, RANK, WORLD_SIZE)
        result["op-pdl"] = lambda: OPS.update_expert(ids, table, RANK, WORLD_SIZE, enable_pdl=True)
        result["prepared-pdl"] = lambda: OPS.update_expert_prepared(
            ids, prepared.routes, balance_mode=0, num_physical_experts=NUM_PHYSICAL,
            enable_pdl=True)
    return result


def run(args):
    device = args.device
    generator = torch.Generator().manual_seed(args.seed)
    table_cpu = make_table(generator)
    table = table_cpu.to(device)
    prepared = moe_eplb.PreparedTable(table, RANK, WORLD_SIZE, num_physical_experts=NUM_PHYSICAL)
    rows = []
    for num_tokens, top_k in args.shapes:
        for dtype in (torch.int32, torch.int64):
            ids = torch.randint(0, NUM_EXPERTS, (num_tokens, top_k), generator=generator,
                                dtype=torch.int64).to(dtype).to(device)
            rank_map = prepared.routes.view(-1).to(dtype)
            copy_out = torch.empty_like(ids)
            expected = OPS.update_expert(ids, table, RANK, WORLD_SIZE)
            expected_token = OPS.update_expert(ids, table, RANK, WORLD_SIZE, balance_mode=1)
            pruning = pruning_inputs(ids, generator)
            nbytes = 2 * ids.numel() * ids.element_size()
            elements = ids.numel()
            # Small batches: many calls per graph; large: few (memory, time).
            calls = int(max(2, min(200, 4e8 // max(nbytes, 1))))
            for name, fn in candidates(ids, table, prepared, rank_map, copy_out, pruning,
                                       device).items():
                row = {"shape": "%dx%d" % (num_tokens, top_k), "dtype": str(dtype)[6:],
                       "candidate": name, "bytes": nbytes}
                if device == "cuda":
                    timer = GpuTimer(args.reps)
                    if name == "op-host":  # launches nothing: no graph to time
                        row["graph_us"], result = float("nan"), None
                    else:
                        row["graph_us"], result = timer.graph_us(fn, calls)
                    row["stream_us"] = timer.stream_us(fn, calls)
                    main = row["graph_us"]
                else:
                    result = fn()
                    row["cpu_us"] = cpu_us(fn, args.reps)
                    main = row["cpu_us"]
                if name not in ("copy", "empty", "op-host"):
                    reference = expected_token if name == "op-token" else expected
                    if not torch.equal(result, reference):  # checked after timing
                        raise SystemExit("%s gave a wrong result at %s %s" % (
                            name, row["shape"], row["dtype"]))
                row["gbps"] = nbytes / main / 1e3 if name not in ("empty", "op-host") else None
                row["elements"] = elements
                rows.append(row)
                print(format_row(row, device), flush=True)
                del result
            torch.cuda.empty_cache() if device == "cuda" else None
    return rows


def format_row(row, device):
    times = ("graph %9.2f us  stream %9.2f us" % (row["graph_us"], row["stream_us"])
             if device == "cuda" else "cpu %10.2f us" % row["cpu_us"])
    gbps = "%8.1f GB/s" % row["gbps"] if row["gbps"] is not None else " " * 13
    return "%-10s %-6s %-9s %s %s" % (row["shape"], row["dtype"], row["candidate"], times, gbps)


def lookup(rows, shape, dtype, candidate, key):
    for row in rows:
        if (row["shape"], row["dtype"], row["candidate"]) == (shape, dtype, candidate):
            return row[key]
    return None


def summarize(rows, device):
    """Ratios per shape and dtype, and the issue's targets as PASS/FAIL."""
    key = "graph_us" if device == "cuda" else "cpu_us"
    lines = ["| shape | dtype | op us | prepared us | formula us | gather us | copy us | "
             "op/copy bw | prepared/copy bw | formula/op | token-mode op us | pruned op us |"
             + (" op pdl us | prepared pdl us |" if device == "cuda" else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"
             + ("---|---|" if device == "cuda" else "")]
    seen = []
    for row in rows:
        pair = (row["shape"], row["dtype"])
        if pair in seen:
            continue
        seen.append(pair)
        get = {c: lookup(rows, pair[0], pair[1], c, key)
               for c in ("op", "prepared", "formula", "gather", "copy", "op-token", "op-pruned",
                         "op-pdl", "prepared-pdl")}
        lines.append(
            "| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f%% | %.0f%% | %.1fx | %.2f | %.2f |"
            % (pair[0], pair[1], get["op"], get["prepared"], get["formula"], get["gather"],
               get["copy"], 100 * get["copy"] / get["op"], 100 * get["copy"] / get["prepared"],
               get["formula"] / get["op"], get["op-token"], get["op-pruned"])
            + (" %.2f | %.2f |" % (get["op-pdl"], get["prepared-pdl"]) if device == "cuda" else ""))
    checks = []

    def check(name, value, target, better):
        if value is None:
            return
        ok = value <= target if better == "lower" else value >= target
        checks.append("%-4s %s: %.3g (target %s %.3g)" % (
            "PASS" if ok else "FAIL", name, value, "<=" if better == "lower" else ">=", target))

    for dtype in ("int32", "int64"):
        if device == "cuda":
            check("512x16 %s prepared, graph replay us" % dtype,
                  lookup(rows, "512x16", dtype, "prepared", "graph_us"),
                  TARGET_PREPARED_GRAPH_US, "lower")
            check("512x16 %s op, graph replay us" % dtype,
                  lookup(rows, "512x16", dtype, "op", "graph_us"), TARGET_OP_GRAPH_US, "lower")
            check("512x16 %s op, back-to-back stream us" % dtype,
                  lookup(rows, "512x16", dtype, "op", "stream_us"), TARGET_OP_STREAM_US, "lower")
            # For information: the same targets with programmatic dependent launch.
            check("512x16 %s prepared-pdl, graph replay us" % dtype,
                  lookup(rows, "512x16", dtype, "prepared-pdl", "graph_us"),
                  TARGET_PREPARED_GRAPH_US, "lower")
            check("512x16 %s op-pdl, graph replay us" % dtype,
                  lookup(rows, "512x16", dtype, "op-pdl", "graph_us"), TARGET_OP_GRAPH_US,
                  "lower")
            for candidate in ("op", "prepared"):
                op = lookup(rows, "1048576x8", dtype, candidate, "graph_us")
                copy = lookup(rows, "1048576x8", dtype, "copy", "graph_us")
                if op and copy:
                    check("1048576x8 %s %s, fraction of copy bandwidth" % (dtype, candidate),
                          copy / op, TARGET_COPY_FRACTION, "higher")
        else:
            op = lookup(rows, "512x16", dtype, "op", "cpu_us")
            formula = lookup(rows, "512x16", dtype, "formula", "cpu_us")
            if op and formula:
                check("512x16 %s CPU op speedup over torch-ops formula" % dtype, formula / op,
                      TARGET_CPU_SPEEDUP, "higher")
    return lines, checks


def describe_machine(device):
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return "%s (%d SMs, %.0f GiB), torch %s, CUDA %s" % (
            props.name, props.multi_processor_count, props.total_memory / 2**30,
            torch.__version__, torch.version.cuda)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = (line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
            model = next(names)
    except (OSError, StopIteration):
        pass
    return "%s, %d cores, %d torch threads, torch %s" % (
        model, os.cpu_count() or 0, torch.get_num_threads(), torch.__version__)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default=",".join("%dx%d" % s for s in SHAPES),
                        help="comma-separated BSxK list (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=30, help="repetitions per median")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write all rows and checks here")
    parser.add_argument("--markdown", help="write the summary table and checks here")
    args = parser.parse_args()
    args.shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    if args.device == "cuda" and not (torch.cuda.is_available() and moe_eplb.with_cuda):
        sys.exit("bench_torch.py: --device cuda needs a GPU and a CUDA build of moe_eplb")

    machine = describe_machine(args.device)
    command = " ".join(["python3"] + sys.argv)
    date = time.strftime("%Y-%m-%d %H:%M %Z")
    print("# %s | %s | %s" % (machine, command, date), flush=True)
    rows = run(args)
    table, checks = summarize(rows, args.device)
    print()
    print("\n".join(table))
    print()
    print("\n".join(checks))
    header = "Machine: %s\nCommand: `%s`\nDate: %s\n" % (machine, command, date)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "command": command, "date": date, "rows": rows,
                       "checks": checks}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(header + "\n" + "\n".join(table) + "\n\n```\n" + "\n".join(checks) + "\n```\n")
    # The -pdl lines are for information; the targets are the plain launches'.
    return 1 if any(c.startswith("FAIL") and "-pdl" not in c for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())

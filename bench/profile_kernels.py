#!/usr/bin/env python3
"""Kernels for Nsight Compute to profile, and a reader of its raw CSV.

Without hardware counters, where a kernel's time goes (launch latency at
512x16, bandwidth at 1048576x8) can only be guessed at; with them, one profile
says where its warps wait. bench/gpu_check.sh runs, when ncu works:

    ncu --clock-control none --kernel-name regex:UpdateExpert \\
        --launch-skip N --section ... -o OUT/kernels python3 bench/profile_kernels.py run
    ncu --import OUT/kernels.ncu-rep --page raw --csv > OUT/kernels_raw.csv
    python3 bench/profile_kernels.py summarize OUT/kernels_raw.csv

`run` makes the same inputs as bench_torch.py, calls every kernel once to
warm up (`warmup_launches` prints how many: ncu skips them), then once each
to be profiled. `summarize` prints one line per kernel: duration, DRAM
throughput, achieved occupancy and the warp stall reasons that dominate.
"""
import csv
import sys

SHAPES = [(512, 16), (1048576, 8)]
DTYPES = ("int32", "int64")
VARIANTS = ("op", "prepared")


def warmup_launches():
    return len(SHAPES) * len(DTYPES) * len(VARIANTS)


def run():
    import torch

    import moe_eplb
    from bench_torch import NUM_EXPERTS, NUM_PHYSICAL, RANK, WORLD_SIZE, make_table

    ops = torch.ops.moe_eplb
    generator = torch.Generator().manual_seed(0)
    table = make_table(generator).cuda()
    prepared = moe_eplb.PreparedTable(table, RANK, WORLD_SIZE, num_physical_experts=NUM_PHYSICAL)
    calls = []
    for num_tokens, top_k in SHAPES:
        for dtype in DTYPES:
            ids = torch.randint(0, NUM_EXPERTS, (num_tokens, top_k), generator=generator)
            ids = ids.to(getattr(torch, dtype)).cuda()
            calls.append(lambda ids=ids: ops.update_expert(ids, table, RANK, WORLD_SIZE))
            calls.append(lambda ids=ids: ops.update_expert_prepared(
                ids, prepared.routes, balance_mode=0, num_physical_experts=NUM_PHYSICAL))
    assert len(calls) == warmup_launches()
    for call in calls:  # warm-up launches, skipped by ncu --launch-skip
        call()
    torch.cuda.synchronize()
    for call in calls:  # profiled, in the order summarize() labels them
        call()
    torch.cuda.synchronize()


def labels():
    return ["%dx%d %s %s" % (s[0], s[1], d, v) for s in SHAPES for d in DTYPES for v in VARIANTS]


def number(text):
    try:
        return float(text.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def summarize(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    # Raw page: a header row of metric names, a row of units, then one row per kernel.
    header = rows[0]
    kernels = [r for r in rows[2:] if len(r) == len(header)]
    column = {name: i for i, name in enumerate(header)}

    def metric(row, *names):
        for name in names:
            if name in column:
                value = number(row[column[name]])
                if value is not None:
                    return value
        return None

    stall_prefix = "smsp__pcsamp_warps_issue_stalled_"
    stall_columns = [n for n in header if n.startswith(stall_prefix) and not n.endswith("_not_issued")]
    names = labels()
    print("%-26s %9s %7s %7s %9s  %s" % ("kernel", "us", "dram%", "occ%", "cyc/inst", "top stalls (share of samples)"))
    for index, row in enumerate(kernels):
        label = names[index] if index < len(names) else row[column.get("Kernel Name", 0)][:26]
        duration = metric(row, "gpu__time_duration.sum")
        unit = rows[1][column["gpu__time_duration.sum"]] if "gpu__time_duration.sum" in column else ""
        if duration is not None and unit == "nsecond":
            duration /= 1e3
        elif duration is not None and unit == "msecond":
            duration *= 1e3
        dram = metric(row, "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
                      "dram__throughput.avg.pct_of_peak_sustained_elapsed")
        occupancy = metric(row, "sm__warps_active.avg.pct_of_peak_sustained_active")
        cycles = metric(row, "smsp__average_warp_latency_per_inst_issued.ratio",
                        "smsp__average_warps_issue_stalled_per_issue_active.ratio")
        stalls = [(n[len(stall_prefix):], number(row[column[n]]) or 0.0) for n in stall_columns]
        total = sum(v for _, v in stalls) or 1.0
        top = sorted(stalls, key=lambda s: -s[1])[:4]
        fmt = lambda v, f: (f % v) if v is not None else "-"
        print("%-26s %9s %7s %7s %9s  %s" % (
            label, fmt(duration, "%.2f"), fmt(dram, "%.1f"), fmt(occupancy, "%.1f"),
            fmt(cycles, "%.1f"),
            ", ".join("%s %.0f%%" % (name, 100.0 * v / total) for name, v in top if v > 0)))
    if not kernels:
        print("no kernel rows in %s" % path)
        return 1
    return 0


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "run":
        run()
        return 0
    if len(sys.argv) >= 2 and sys.argv[1] == "warmup-launches":
        print(warmup_launches())
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "summarize":
        return summarize(sys.argv[2])
    sys.exit("usage: profile_kernels.py run | warmup-launches | summarize RAW.csv")


if __name__ == "__main__":
    sys.exit(main())

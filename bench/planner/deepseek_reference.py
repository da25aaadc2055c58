#!/usr/bin/python3
"""DeepSeek's published EPLB algorithm in PyTorch: the timing reference for issue 10.

Written from the description in ../shared/EPLB_BASELINE.md (deepseek-ai/EPLB,
``rebalance_experts``), not from its code: greedy water-filling replication
(vectorised over rows with torch, as the reference does) and greedy balanced
packing into equal-size packs (a Python loop per item, which is what makes the
reference slow). Hierarchical when expert groups divide evenly over nodes,
else global.

    /usr/bin/python3 bench/planner/deepseek_reference.py --data DIR [--repetitions N]

DIR holds prefill_*.json files, {"logical_count": [61][256]}; the first one
(sorted by name) is timed on the same inputs as bench/planner/window_bench.cpp:
58 MoE layers x 256 experts on EP 32 x 9 slots and 61 layers on EP 64 x 5
slots, 8 ranks per node, 8 expert groups. Prints the median time and, to
check moe-eplb's C++ implementation against this one, the mean over layers of
the per-GPU max/mean load under DeepSeek's own even-split model.
"""

import argparse
import glob
import json
import os
import statistics
import time

import torch


def water_fill(weight: torch.Tensor, num_slots: int):
    """Replicas for each row of weight (R, n) over num_slots slots.

    Starts from one replica per item, then gives each further slot to the item
    with the largest weight / count (the first one on ties). Returns the slot
    owners (R, num_slots), each slot's replica index within its item
    (R, num_slots) and the counts (R, n).
    """
    rows, n = weight.shape
    owners = torch.empty(rows, num_slots, dtype=torch.int64)
    owners[:, :n] = torch.arange(n)
    replica = torch.zeros(rows, num_slots, dtype=torch.int64)
    counts = torch.ones(rows, n, dtype=torch.int64)
    every_row = torch.arange(rows)
    for slot in range(n, num_slots):
        best = torch.argmax(weight / counts, dim=1)
        owners[:, slot] = best
        replica[:, slot] = counts[every_row, best]
        counts[every_row, best] += 1
    return owners, replica, counts


def pack(weights, num_packs: int):
    """Greedy balanced packing of a list of floats into num_packs equal-size packs.

    Heaviest first (stable on ties), each into the lightest pack that still has
    room (the first one on ties). Returns, per item, (pack, position in pack).
    """
    per_pack = len(weights) // num_packs
    load = [0.0] * num_packs
    size = [0] * num_packs
    placed = [None] * len(weights)
    for item in sorted(range(len(weights)), key=lambda i: -weights[i]):
        best = -1
        for p in range(num_packs):
            if size[p] < per_pack and (best < 0 or load[p] < load[best]):
                best = p
        placed[item] = (best, size[best])
        size[best] += 1
        load[best] += weights[item]
    return placed


def rebalance(weight: torch.Tensor, num_slots: int, num_groups: int, num_nodes: int,
              num_gpus: int):
    """DeepSeek's planner for weight (L, E) global counts.

    Returns phy2log (L, num_slots): the logical expert of each slot, GPU-major
    (slot p on GPU p // (num_slots // num_gpus)), and logcnt (L, E).
    """
    layers, num_experts = weight.shape
    if num_nodes <= 1 or num_groups % num_nodes != 0:
        num_groups, num_nodes = 1, 1
    group_size = num_experts // num_groups
    experts_per_node = num_experts // num_nodes
    slots_per_node = num_slots // num_nodes
    gpus_per_node = num_gpus // num_nodes
    slots_per_gpu = num_slots // num_gpus
    weight = weight.double()

    # 1. Whole expert groups onto nodes; node_experts[l][n] lists node n's experts.
    group_load = weight.view(layers, num_groups, group_size).sum(dim=2).tolist()
    node_experts = torch.empty(layers, num_nodes, experts_per_node, dtype=torch.int64)
    for layer in range(layers):
        for group, (node, position) in enumerate(pack(group_load[layer], num_nodes)):
            first = position * group_size
            node_experts[layer, node, first:first + group_size] = torch.arange(
                group * group_size, (group + 1) * group_size)

    # 2. Replicate inside every node of every layer at once.
    node_weight = weight.gather(1, node_experts.view(layers, -1)).view(-1, experts_per_node)
    owners, _, counts = water_fill(node_weight, slots_per_node)

    # 3. Each node's replicas onto its GPUs by load / count.
    replica_load = (node_weight / counts).gather(1, owners).tolist()
    owner_list = owners.tolist()
    flat_experts = node_experts.view(-1, experts_per_node).tolist()
    phy2log = torch.empty(layers, num_slots, dtype=torch.int64)
    for row in range(layers * num_nodes):
        layer, node = divmod(row, num_nodes)
        for replica, (gpu, position) in enumerate(pack(replica_load[row], gpus_per_node)):
            slot = node * slots_per_node + gpu * slots_per_gpu + position
            phy2log[layer, slot] = flat_experts[row][owner_list[row][replica]]
    logcnt = torch.zeros(layers, num_experts, dtype=torch.int64)
    logcnt.scatter_add_(1, phy2log, torch.ones_like(phy2log))
    return phy2log, logcnt


def even_split_balance(weight: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor,
                       num_gpus: int) -> float:
    """Mean over layers of max/mean per-GPU load when each replica gets load / count."""
    weight = weight.double()
    per_replica = (weight / logcnt.clamp(min=1)).gather(1, phy2log)
    per_gpu = per_replica.view(weight.shape[0], num_gpus, -1).sum(dim=2)
    ratios = per_gpu.max(dim=1).values / per_gpu.mean(dim=1).clamp(min=1e-30)
    ratios[per_gpu.sum(dim=1) == 0] = 1.0
    return float(ratios.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of prefill_*.json")
    parser.add_argument("--repetitions", type=int, default=11)
    args = parser.parse_args()
    paths = sorted(glob.glob(os.path.join(args.data, "prefill_*.json")))
    if not paths:
        raise SystemExit(f"deepseek_reference.py: no prefill_*.json in {args.data}")
    with open(paths[0]) as file:
        counts = torch.tensor(json.load(file)["logical_count"], dtype=torch.float64)
    torch.set_num_threads(1)
    print(f"DeepSeek's algorithm in PyTorch {torch.__version__} (bench/planner/"
          f"deepseek_reference.py), {os.path.basename(paths[0])}, median of "
          f"{args.repetitions} after a warm-up, 1 thread:\n")
    print("| input | DeepSeek (Python) |\n|---|---:|")
    cases = [("58 layers x 256, EP 32 x 9, global counts", counts[3:], 32, 9),
             ("61 layers x 256, EP 64 x 5, global counts", counts, 64, 5)]
    balance = None
    for label, weight, num_gpus, slots_per_gpu in cases:
        num_slots = num_gpus * slots_per_gpu
        arguments = (weight, num_slots, 8, num_gpus // 8, num_gpus)
        result = rebalance(*arguments)  # warm-up
        seconds = []
        for _ in range(args.repetitions):
            start = time.perf_counter()
            result = rebalance(*arguments)
            seconds.append(time.perf_counter() - start)
        print(f"| {label} | {statistics.median(seconds) * 1e3:.1f} ms |")
        if balance is None:
            balance = even_split_balance(weight, result[0], result[1], num_gpus)
    print(f"\nDeepSeek (Python), 58 x 256, EP 32 x 9: mean over layers of max/mean per-GPU load "
          f"under an even split over replicas = {balance:.4f}")


if __name__ == "__main__":
    main()

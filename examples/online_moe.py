"""A runnable expert-parallel MoE on torch.distributed, rebalanced while it runs.

    .venv/bin/python examples/online_moe.py      # after bash scripts/install_python.sh

Two gloo processes on this machine; each runs one ExpertParallelMoE layer
(16 experts, top-2, 10 slots per rank, so 4 redundant replicas) on an
EplbRuntime. Traffic favours a few experts; after 8 steps the runtime
replans on the recorded load and moves the experts' weights between ranks.
"""
import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moe_eplb.distributed import EplbRuntime, ExpertParallelMoE

NUM_EXPERTS, HIDDEN, INTERMEDIATE, TOP_K, SLOTS_PER_RANK = 16, 32, 64, 2, 10


def run(rank, world_size, port):
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=30))
    torch.manual_seed(0)  # the same dense weights on every rank
    gate = torch.randn(NUM_EXPERTS, HIDDEN)
    w_gate, w_up = (torch.randn(NUM_EXPERTS, HIDDEN, INTERMEDIATE) / 8 for _ in range(2))
    w_down = torch.randn(NUM_EXPERTS, INTERMEDIATE, HIDDEN) / 8
    runtime = EplbRuntime(1, NUM_EXPERTS, SLOTS_PER_RANK, window_steps=4, num_windows=2,
                          rebalance_every=8)
    layer = ExpertParallelMoE.from_dense(gate, w_gate, w_up, w_down, TOP_K, SLOTS_PER_RANK,
                                         runtime=runtime, layer=0)
    torch.manual_seed(1 + rank)  # each rank its own tokens, leaning to experts 0..3
    hot = gate[:4].sum(0)
    with torch.inference_mode():  # as serving engines run the forward
        for step in range(12):
            tokens = torch.randn(64, HIDDEN) + hot
            out = layer(tokens)  # gate -> top-k -> dispatch -> experts -> combine
            runtime.step()       # records load; replans and migrates when due
    if rank == 0:
        print("output", tuple(out.shape), "| replicas per expert:", runtime.table(0)[:, 0].tolist())
        for rebalance in runtime.rebalances:
            print("rebalance at step %d: max/mean %.3f -> %.3f, %d experts moved"
                  % (rebalance.step, rebalance.max_over_mean_before[0],
                     rebalance.max_over_mean_after[0], rebalance.experts_moved[0]))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with socket.socket() as probe:  # a free port for the process group's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(run, args=(2, port), nprocs=2)

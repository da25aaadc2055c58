"""moe-eplb as a drop-in for DeepSeek's EPLB (deepseek-ai/EPLB), on its README's
example. Runs without DeepSeek's package:

    python3 examples/engines/deepseek_eplb.py
"""
import torch

from moe_eplb.engines.deepseek import rebalance_experts  # was: from eplb import rebalance_experts

weight = torch.tensor([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                       [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
num_replicas, num_groups, num_nodes, num_gpus = 16, 4, 2, 8
phy2log, log2phy, logcnt = rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)
print("phy2log", tuple(phy2log.shape), "log2phy", tuple(log2phy.shape), "logcnt",
      tuple(logcnt.shape))
print(phy2log)

"""moe-eplb as a vllm-ascend EPLB policy, called the way its EPLB worker calls it.

vllm-ascend's EplbWorker passes the expert table in force (layers, ranks,
slots per rank) and each slot's workload to policy.rebalance_experts(), then
refuses any layer whose new table fails its placement check. Runs without
vllm-ascend:

    python3 examples/engines/vllm_ascend_eplb.py
"""
import torch

import moe_eplb.engines.vllm_ascend as eplb_ascend

num_layers, num_ranks, slots, num_experts = 3, 8, 5, 32
torch.manual_seed(3)
# vllm-ascend's default placement (generate_global_placement): experts, then redundant copies.
current = torch.cat([torch.arange(num_experts), torch.arange(num_ranks * slots - num_experts)])
current = current.view(num_ranks, slots).expand(num_layers, -1, -1).contiguous()
policy = eplb_ascend.MoeEplbPolicy()  # where vllm-ascend's EPLB worker takes PolicyFactory.generate_policy(...)
for step in range(3):
    workload = (torch.rand(num_layers, num_ranks, slots) ** 3 * 1000).round()
    changed, priority, new_table = policy.rebalance_experts(current, workload)
    eplb_ascend.check_placement(current, new_table)  # what vllm-ascend's worker checks
    print("step %d: changed %d, layer priority %s, %d slots differ"
          % (step, changed, priority, int((new_table != current).sum())))
    current = new_table

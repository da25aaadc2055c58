"""moe-eplb as SGLang's EPLB algorithm, called the way SGLang calls it.

SGLang's ExpertLocationMetadata.init_by_eplb() passes the recorder's
logical_count (passes, layers, experts) to
eplb_algorithms.rebalance_experts(); install() puts moe-eplb there. Called
directly, with the placement in force and SGLang's dispatch rule. Runs
without SGLang:

    python3 examples/engines/sglang_eplb.py
"""
import torch

import moe_eplb
import moe_eplb.engines.sglang as eplb_sglang
import moe_eplb.engines.vllm as eplb_vllm

num_layers, num_experts, ep_size, local, nnodes, num_groups = 4, 64, 16, 5, 2, 8
num_physical = ep_size * local
torch.manual_seed(1)
logical_count = (torch.rand(3, num_layers, num_experts) ** 4 * 3000).round()

for dispatch in ("static", "dynamic"):
    previous = None
    for step in range(2):
        physical_to_logical_map, logical_to_all_physical_map, expert_count = \
            eplb_sglang.rebalance_experts(logical_count * (1 + step), num_physical, local,
                                          num_groups, nnodes, dispatch=dispatch,
                                          previous=previous)
        previous = physical_to_logical_map
    table = eplb_vllm.from_vllm(logical_to_physical_map=logical_to_all_physical_map,
                                logical_replica_count=expert_count)
    balance = [moe_eplb.analyze(table[layer], logical_count.sum(0)[layer], ep_size, local,
                                rule="sglang-" + dispatch,
                                ranks_per_node=ep_size // nnodes).max_over_mean
               for layer in range(num_layers)]
    print("%s dispatch: max/mean %.3f (worst layer)" % (dispatch, max(balance)))

# In SGLang, one call before it plans makes its EPLB manager use moe-eplb for
# the dispatch rule in force (--ep-dispatch-algorithm).
try:
    eplb_sglang.install()
except ImportError:
    print("SGLang is not installed here: install() skipped")

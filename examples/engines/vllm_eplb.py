"""moe-eplb as vLLM's EPLB policy, called the way vLLM calls it.

vLLM's EplbState.rearrange() hands the policy the load window summed over
steps and ranks (layers, logical experts), the shape, and the placement in
force (physical_to_logical_map); it then derives logical_to_physical_map and
logical_replica_count, and routes every token through
eplb_map_to_physical_and_record(). Runs without vLLM:

    python3 examples/engines/vllm_eplb.py
"""
import torch

import moe_eplb.engines.vllm as eplb_vllm

num_layers, num_experts, num_ranks, slots_per_rank, top_k = 4, 64, 8, 10, 6
num_replicas = num_ranks * slots_per_rank
torch.manual_seed(0)
popularity = torch.rand(num_layers, num_experts) ** 4

# vLLM's initial placement: every expert once, then the redundant slots (i % E).
physical_to_logical_map = torch.arange(num_replicas).remainder(num_experts).expand(
    num_layers, -1).contiguous()
for step in range(3):
    load = (popularity * (1 + 0.1 * step) * 10000).round()  # expert_load_window summed
    new_map = eplb_vllm.MoeEplbPolicy.rebalance_experts(
        load, num_replicas, 8, 1, num_ranks, physical_to_logical_map)
    changed = int((new_map != physical_to_logical_map).sum())
    print("rebalance %d: %d of %d slots change" % (step, changed, new_map.numel()))
    physical_to_logical_map = new_map

# The maps vLLM routes by, then one batch through vLLM's rule on the CPU
# (vLLM itself maps only on CUDA).
_, logical_to_physical_map, logical_replica_count = eplb_vllm.to_vllm(
    eplb_vllm.from_vllm(physical_to_logical_map, num_logical_experts=num_experts),
    num_replicas, max_replicas=num_replicas - num_experts + 1)
topk_ids = torch.multinomial(popularity[0], top_k * 512, replacement=True).view(512, top_k)
expert_load_view = torch.zeros(num_replicas, dtype=torch.int32)
physical = eplb_vllm.map_to_physical_and_record(
    topk_ids, expert_load_view, logical_to_physical_map[0], logical_replica_count[0],
    torch.tensor(True))
per_rank = expert_load_view.view(num_ranks, -1).sum(dim=1).double()
print("mapped %s ids, per-rank max/mean %.3f" % (tuple(physical.shape),
                                                 float(per_rank.max() / per_rank.mean())))

# In vLLM, one call before it builds its EplbState (e.g. from a
# vllm.general_plugins entry point) makes sync and async EPLB plan with moe-eplb.
try:
    eplb_vllm.install()
except ImportError:
    print("vLLM is not installed here: install() skipped")

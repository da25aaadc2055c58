"""A drop-in for DeepSeek's EPLB (deepseek-ai/EPLB, eplb.py at d52c72d):

    from moe_eplb.engines.deepseek import rebalance_experts   # was: from eplb import ...
    phy2log, log2phy, logcnt = rebalance_experts(weight, num_replicas, num_groups,
                                                 num_nodes, num_gpus)

Same arguments, same returns, same AssertionError for the shapes DeepSeek's
asserts refuse; the plan is moe-eplb's (C++), for an even split of every
expert's tokens over its replicas unless `rule` says otherwise.
"""
from . import _common

__all__ = ["rebalance_experts"]


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus, *,
                      rule="ascend-token"):
    """DeepSeek's entry point, planned by moe-eplb.

    Args:
        weight: (layers, num_logical_experts) load statistics, any real dtype
            and device (read on the CPU, as DeepSeek does).
        num_replicas: physical experts, a multiple of num_gpus.
        num_groups, num_nodes: expert groups and server nodes. DeepSeek packs
            groups onto nodes when num_groups % num_nodes == 0; moe-eplb plans
            every expert freely and uses the nodes (num_gpus // num_nodes GPUs
            each, when that divides) for locality.
        num_gpus: GPUs (ranks), a multiple of num_nodes.
        rule: keyword only, not DeepSeek's: the replica rule the engine
            routes by (moe_eplb.RULES); every even split plans alike.

    Returns:
        physical_to_logical_map (layers, num_replicas) int64: the expert of
            each physical slot (slot p on GPU p // (num_replicas // num_gpus));
        logical_to_physical_map (layers, num_logical_experts, X) int64: each
            expert's slots in replica order, padded with -1, X the largest count;
        expert_count (layers, num_logical_experts) int64.
        All on the CPU, like DeepSeek's.

    Raises:
        AssertionError where DeepSeek's asserts fail (num_replicas % num_gpus,
        and with num_groups % num_nodes == 0: experts % num_groups, num_gpus %
        num_nodes); ValueError for what moe-eplb's planner refuses besides
        (more than one slot per GPU per expert: num_replicas // num_gpus above
        the experts) or for bad values, naming them.
    """
    weight = _common.host_load("rebalance_experts()", "weight", weight, (2,))
    num_layers, num_experts = weight.shape
    assert num_replicas % num_gpus == 0
    if num_groups % num_nodes == 0:
        assert num_experts % num_groups == 0
        assert num_gpus % num_nodes == 0
    table = _common.plan_layers(weight, num_gpus, num_replicas // num_gpus, rule=rule,
                                ranks_per_node=_common.ranks_per_node(num_gpus, num_nodes))
    phy2log = _common.phy2log_from_table(table, num_replicas, sort_replicas=True)
    log2phy, logcnt = _common.log2phy_from_table(table)
    return phy2log, log2phy, logcnt

"""moe-eplb in vLLM (vllm/distributed/eplb/; facts from vLLM main as mirrored
by neuralmagic/vllm at 017e9f4).

The one line, before the engine starts (a launcher, or a vLLM general plugin):

    import moe_eplb.engines.vllm as eplb_vllm
    eplb_vllm.install()             # vLLM's "default" EPLB policy is now moe-eplb's

vLLM accepts one policy name, "default" (EPLB_POLICIES, and async EPLB
refuses any other), so install() puts MoeEplbPolicy under that name: sync
and async EPLB both call it, with the placement in force.

What changes: vLLM's DefaultEplbPolicy is DeepSeek's EPLB (hierarchical or
global) followed by preserve_intragpu_slots; it replans from scratch and
moves most slots at every rebalance. MoeEplbPolicy plans for vLLM's replica
rule (an even split by a token hash, the same on every rank) against the
placement in force (old_global_expert_indices), keeping experts where they
are unless a move buys balance: with the default options it balances the
next window better and moves a fraction of the slots (README, "vLLM";
bench/RESULTS.md section 8).

Also here: map_to_physical_and_record(), vLLM's eplb_map_to_physical_and_record
with its exact rule through moe-eplb's kernel (balance_mode=2), on CPU and
CUDA (vLLM's own returns the ids unchanged off CUDA); to_vllm() / from_vllm()
between eplb_tables and vLLM's three maps.
"""
import torch

from .. import _ops
from . import _common

__all__ = ["DEFAULT_OPTIONS", "MoeEplbPolicy", "from_vllm", "install",
           "map_to_physical_and_record", "to_vllm"]

# Chosen by measurement (bench/engines/engine_windows.py, bench/RESULTS.md
# section 8): a move must buy this much of the predicted max/mean. On the real
# DeepSeek-V3 runs every value from 0.001 to 0.01 balances the next window
# better than vLLM's default at under a quarter of its moves; 0.001 also keeps
# up with drifting traffic where 0.002 falls behind on one scenario.
DEFAULT_OPTIONS = dict(move_cost=0.001)

try:  # vLLM's base class when vLLM is importable, a plain class otherwise
    from vllm.distributed.eplb.policy.abstract import AbstractEplbPolicy as _PolicyBase
except Exception:  # noqa: BLE001 (no vLLM, or one that fails to import here)
    _PolicyBase = object


class MoeEplbPolicy(_PolicyBase):
    """vLLM's EPLB policy interface, planned by moe-eplb for vLLM's rule.

    options (class attribute; install(**options) sets it): keyword arguments
    of moe_eplb.plan() besides the shape (move_cost, max_moves,
    num_columns...); DEFAULT_OPTIONS unless changed.
    """

    options = dict(DEFAULT_OPTIONS)

    @classmethod
    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                          old_global_expert_indices=None):
        """vLLM's AbstractEplbPolicy.rebalance_experts.

        Args:
            weight: (layers, num_logical_experts) load statistics, any real
                dtype, any device.
            num_replicas: physical experts, a multiple of num_ranks.
            num_groups: expert groups (moe-eplb plans every expert freely).
            num_nodes: server nodes; with num_ranks // num_nodes ranks each
                (when that divides) for locality, else one node.
            num_ranks: EP ranks.
            old_global_expert_indices: (layers, num_replicas), the placement
                in force (vLLM's physical_to_logical_map), any device; None,
                another shape or slots holding -1 plan from scratch.

        Returns:
            physical_to_logical_map (layers, num_replicas) int64 on the CPU:
            the expert of each slot, every expert at least once. Experts that
            stay on a rank keep their slot.

        Raises:
            AssertionError when num_replicas % num_ranks != 0 (as vLLM's
            default); ValueError for what moe-eplb's planner refuses besides
            (num_replicas // num_ranks above the experts) or bad values.
        """
        weight = _common.host_load("rebalance_experts()", "weight", weight, (2,))
        num_layers, num_experts = weight.shape
        assert num_replicas % num_ranks == 0, (
            "num_replicas %d must be a multiple of num_ranks %d" % (num_replicas, num_ranks))
        previous = _common.previous_table("rebalance_experts()", old_global_expert_indices,
                                          num_layers, num_replicas, num_experts)
        table = _common.plan_layers(
            weight, num_ranks, num_replicas // num_ranks, rule="vllm",
            ranks_per_node=_common.ranks_per_node(num_ranks, num_nodes), previous=previous,
            **cls.options)
        return _common.phy2log_from_table(table, num_replicas, sort_replicas=True)


def install(**options):
    """Makes vLLM's EPLB use MoeEplbPolicy (sync and async), with `options`
    (moe_eplb.plan() keywords; DEFAULT_OPTIONS when none are given), and
    returns the policy class it replaced. Call it before vLLM builds its
    EplbState (e.g. from a vllm.general_plugins entry point); undo with
    vllm.distributed.eplb.policy.EPLB_POLICIES["default"] = replaced.

    Raises ImportError when vLLM cannot be imported."""
    from vllm.distributed.eplb import policy as vllm_policy

    MoeEplbPolicy.options = dict(options) if options else dict(DEFAULT_OPTIONS)
    replaced = vllm_policy.EPLB_POLICIES["default"]
    vllm_policy.EPLB_POLICIES["default"] = MoeEplbPolicy
    return replaced


def map_to_physical_and_record(topk_ids, expert_load_view, logical_to_physical_map,
                               logical_replica_count, record_enabled, num_unpadded_tokens=None):
    """vLLM's eplb_map_to_physical_and_record, bit for bit, on CPU and CUDA.

    Each choice of token t = flat_index // top_k (top_k = topk_ids.shape[-1])
    goes to replica ((t * 2654435769) & 0xFFFFFFFF) % count of its expert, in
    logical_to_physical_map's order: moe-eplb's operator with balance_mode=2
    (one kernel; the maps become an (E, 1 + X) table per call, X at most
    num_physical_experts - E + 1 columns). When record_enabled is nonzero, each
    mapped choice of the first num_unpadded_tokens tokens adds 1 to
    expert_load_view[slot].

    Args:
        topk_ids: (..., top_k) logical expert ids, any integer dtype.
        expert_load_view: (num_physical_experts,) load counters (int32 in vLLM).
        logical_to_physical_map: (E, X) int64 slots, -1 padded.
        logical_replica_count: (E,) int64.
        record_enabled: a one-element tensor (vLLM's should_record_tensor).
        num_unpadded_tokens: optional one-element tensor.

    Returns:
        the physical ids, topk_ids' shape and dtype.

    Differences from vLLM, on bad input only: an id outside [0, E), a count
    outside [1, X] or a selected slot outside [0, num_physical_experts) raises
    IndexError on the CPU; on CUDA its output is -1 and it is counted
    (moe_eplb.read_error_counter()), where vLLM writes -1 or reads past the
    row.
    """
    if topk_ids.numel() == 0:
        return topk_ids
    num_physical_experts = expert_load_view.shape[0]
    num_experts = logical_replica_count.shape[0]
    width = min(logical_to_physical_map.shape[1], max(1, num_physical_experts - num_experts + 1))
    table = torch.cat([logical_replica_count.reshape(-1, 1),
                       logical_to_physical_map[:, :width]], dim=1)
    top_k = topk_ids.shape[-1]
    ids = topk_ids.reshape(-1, top_k)
    if ids.dtype not in (torch.int32, torch.int64):
        ids = ids.to(torch.int32)
    physical = _ops.update_expert(ids, table, 0, 1, balance_mode=2,
                                  num_physical_experts=num_physical_experts)
    flat = physical.reshape(-1)
    record = (record_enabled.reshape(()) != 0) & (flat >= 0)
    if num_unpadded_tokens is not None:
        index = torch.arange(flat.numel(), device=flat.device)
        record = record & (index < num_unpadded_tokens.reshape(()) * top_k)
    expert_load_view.index_add_(0, flat.clamp(min=0).to(torch.int64),
                                record.to(expert_load_view.dtype))
    return physical.reshape(topk_ids.shape).to(topk_ids.dtype)


def to_vllm(table, num_physical_experts, max_replicas=0):
    """vLLM's three maps of a table (E, F) or (L, E, F):
    (physical_to_logical_map (L, P) int64, logical_to_physical_map (L, E, X)
    int64 padded with -1, logical_replica_count (L, E) int64), the layer
    dimension as the table's. vLLM keeps no replica order: it derives each
    expert's slots in ascending order from physical_to_logical_map
    (compute_logical_maps), and so does this. X = max_replicas (vLLM's state
    uses 1024), or the largest count when 0."""
    phy2log = _common.phy2log_from_table(table, num_physical_experts, sort_replicas=True)
    ordered = _common.table_from_phy2log(phy2log, _num_experts(table))
    log2phy, logcnt = _common.log2phy_from_table(ordered, max_replicas=max_replicas)
    return phy2log, log2phy, logcnt


def from_vllm(physical_to_logical_map=None, logical_to_physical_map=None,
              logical_replica_count=None, *, num_logical_experts=None, num_columns=0):
    """A table (E, F) or (L, E, F) int32 from vLLM's maps: from
    physical_to_logical_map (with num_logical_experts), or from
    logical_to_physical_map and logical_replica_count (replica order kept:
    the order vLLM's rule picks by). num_columns 0 = the largest count + 1."""
    operation = "from_vllm()"
    if logical_to_physical_map is not None:
        if logical_replica_count is None:
            raise ValueError("%s: logical_to_physical_map needs logical_replica_count" % operation)
        return _common.table_from_log2phy(
            _common.host_int64(operation, "logical_to_physical_map", logical_to_physical_map),
            _common.host_int64(operation, "logical_replica_count", logical_replica_count),
            num_columns)
    if physical_to_logical_map is None or num_logical_experts is None:
        raise ValueError("%s: give physical_to_logical_map with num_logical_experts, or "
                         "logical_to_physical_map with logical_replica_count" % operation)
    return _common.table_from_phy2log(
        _common.host_int64(operation, "physical_to_logical_map", physical_to_logical_map),
        num_logical_experts, num_columns)


def _num_experts(table):
    return table.shape[-2]

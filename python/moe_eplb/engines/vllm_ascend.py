"""moe-eplb in vllm-ascend (vllm_ascend/eplb/; facts from vllm-project/vllm-ascend
at 182b75e).

vllm-ascend's dynamic EPLB calls a policy object from its PolicyFactory,
EplbPolicy.rebalance_experts(current_expert_table, expert_workload) ->
(changed, priority, new_table) (eplb/core/policy/policy_abstract.py), in its
EPLB worker process (eplb/core/eplb_worker.py). Tables are (layers, ranks,
slots per rank) of expert ids; expert_workload holds the load of each of
those slots. The worker refuses (keeps the old table of) a layer whose new
table leaves an expert out, puts two replicas of an expert on one device,
or moves an expert that stays on a device to another of its slots
(check_expert_placement); MoeEplbPolicy's tables always pass that check.

    from moe_eplb.engines.vllm_ascend import MoeEplbPolicy
    policy = MoeEplbPolicy()     # instead of PolicyFactory.generate_policy(...)

Static placements use its expert-map JSON (--expert-map-path):
{"moe_layer_count": L, "layer_list": [{"layer_id", "device_count",
"device_list": [{"device_id", "device_expert": [...]}]}]}
(tests/ut/eplb/core/a2/expert_map.json); read_expert_map() /
write_expert_map() convert it.

The plan is for an even split of each expert's tokens over its replicas
(rule "ascend-token"): vllm-ascend's routing tables spread a rank's tokens
over the replicas (ops/fused_moe/eplb.py).
"""
import json

import torch

from .. import planning
from . import _common

__all__ = ["DEFAULT_OPTIONS", "MoeEplbPolicy", "check_placement", "read_expert_map",
           "write_expert_map"]

# vLLM's measured default (bench/RESULTS.md section 8): the same even split.
DEFAULT_OPTIONS = dict(move_cost=0.001)

try:  # vllm-ascend's base class when it is importable, a plain class otherwise
    from vllm_ascend.eplb.core.policy.policy_abstract import EplbPolicy as _PolicyBase
except Exception:  # noqa: BLE001 (no vllm-ascend, or one that fails to import here)
    _PolicyBase = object


class MoeEplbPolicy(_PolicyBase):
    """vllm-ascend's EplbPolicy, planned by moe-eplb against the table in force.

    options: moe_eplb.plan() keywords (DEFAULT_OPTIONS unless given); rule:
    the replica rule to plan for (moe_eplb.RULES).
    """

    def __init__(self, rule="ascend-token", **options):
        self.rule = rule
        self.options = dict(options) if options else dict(DEFAULT_OPTIONS)

    def rebalance_experts(self, current_expert_table, expert_workload):
        """vllm-ascend's EplbPolicy.rebalance_experts.

        Args:
            current_expert_table: (layers, ranks, slots per rank) expert ids in
                force, tensor, NumPy array or nested lists.
            expert_workload: the load of each of those slots, (layers, ranks,
                slots) or (windows, layers, ranks, slots), oldest first.

        Returns:
            (changed, priority, new_table): changed 1 if any slot changes, else
            0; priority, the layers ordered by predicted improvement, most
            first (a list); new_table (layers, ranks, slots) int64 tensor.
        """
        operation = "rebalance_experts()"
        current = _common.host_int64(operation, "current_expert_table", current_expert_table)
        if current.dim() != 3:
            raise ValueError("%s: current_expert_table must be (layers, ranks, slots), got "
                             "shape %s" % (operation, tuple(current.shape)))
        workload = _common.host_load(operation, "expert_workload", expert_workload, (3, 4))
        windows = workload if workload.dim() == 4 else workload.unsqueeze(0)
        if tuple(windows.shape[1:]) != tuple(current.shape):
            raise ValueError("%s: expert_workload has shape %s, expected %s (or windows of it)"
                             % (operation, tuple(workload.shape), tuple(current.shape)))
        num_layers, num_ranks, slots_per_rank = current.shape
        phy2log = current.reshape(num_layers, -1)
        num_experts = int(phy2log.max()) + 1
        previous = _common.table_from_phy2log(phy2log, num_experts)
        # Per-slot loads summed per expert: one (layers, experts) window each.
        loads = [torch.zeros(num_layers, num_experts, dtype=torch.float64).scatter_add_(
            1, phy2log, window.reshape(num_layers, -1)) for window in windows]
        table = planning.plan([load.unsqueeze(1) for load in loads], num_ranks, slots_per_rank,
                              rule=self.rule, previous=previous, **self.options).table
        new_phy2log = _common.phy2log_from_table(table, phy2log.shape[1], sort_replicas=True)
        new_table = new_phy2log.reshape(current.shape)
        check_placement(current, new_table)
        ratios = []
        for layer in range(num_layers):
            before = planning.analyze(previous[layer], loads[-1][layer], num_ranks,
                                      slots_per_rank, rule=self.rule).max_over_mean
            after = planning.analyze(table[layer], loads[-1][layer], num_ranks, slots_per_rank,
                                     rule=self.rule).max_over_mean
            ratios.append(after / before)
        priority = sorted(range(num_layers), key=lambda layer: (ratios[layer], layer))
        changed = int(bool((new_table != current).any()))
        return changed, priority, new_table


def check_placement(old_table, new_table):
    """vllm-ascend's check of a new table (EplbWorker.check_expert_placement),
    raising ValueError where it would keep a layer's old table: an expert of
    the old layer missing from the new one, two replicas of an expert on one
    device, or an expert that stays on a device moved to another of its slots."""
    old = _common.host_int64("check_placement()", "old_table", old_table)
    new = _common.host_int64("check_placement()", "new_table", new_table)
    for layer in range(old.shape[0]):
        if torch.unique(new[layer]).numel() < torch.unique(old[layer]).numel():
            raise ValueError("check_placement(): layer %d leaves an expert out" % layer)
        for rank in range(old.shape[1]):
            after, before = new[layer, rank], old[layer, rank]
            if torch.unique(after).numel() != after.numel():
                raise ValueError("check_placement(): layer %d, device %d holds an expert twice"
                                 % (layer, rank))
            stays = torch.isin(after, before)
            if not torch.equal(after[stays], before[stays]):
                raise ValueError("check_placement(): layer %d, device %d moves an expert that "
                                 "stays on it to another slot" % (layer, rank))


def read_expert_map(path):
    """vllm-ascend's expert-map JSON as a (layers, devices, slots) int64 tensor."""
    operation = "read_expert_map()"
    with open(path, encoding="utf-8") as stream:
        data = json.load(stream)
    try:
        layers = sorted(data["layer_list"], key=lambda layer: layer["layer_id"])
        rows = [[device["device_expert"] for device in
                 sorted(layer["device_list"], key=lambda device: device["device_id"])]
                for layer in layers]
        declared = data["moe_layer_count"]
    except (KeyError, TypeError) as error:
        raise ValueError("%s: %s is not an expert map (%s missing)" % (operation, path, error))
    if declared != len(rows):
        raise ValueError("%s: %s says moe_layer_count %d but lists %d layers"
                         % (operation, path, declared, len(rows)))
    try:
        return torch.tensor(rows, dtype=torch.int64)
    except (ValueError, TypeError) as error:
        raise ValueError("%s: %s has devices of unequal slot counts" % (operation, path)) from error


def write_expert_map(path, table):
    """Writes a (layers, devices, slots) expert table as vllm-ascend's
    expert-map JSON (layer ids 0..L-1)."""
    table = _common.host_int64("write_expert_map()", "table", table)
    if table.dim() != 3:
        raise ValueError("write_expert_map(): table must be (layers, devices, slots), got shape %s"
                         % (tuple(table.shape),))
    data = {"moe_layer_count": table.shape[0], "layer_list": [
        {"layer_id": layer, "device_count": table.shape[1],
         "device_list": [{"device_id": device, "device_expert": row}
                         for device, row in enumerate(table[layer].tolist())]}
        for layer in range(table.shape[0])]}
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=1)

"""What the engine modules share: the engines' tensors in and out, the layout
converters (C++ ops), and one planning call.

Layouts (one layer shown; every function takes a leading layer dimension too):
  table     moe-eplb's eplb_table (E, F) int32, row e = [c, slot_1 .. slot_c, -1 ...]
  phy2log   (P,) int64, the logical expert of each physical slot (vLLM's
            physical_to_logical_map, SGLang's and DeepSeek's phy2log,
            TensorRT-LLM's initial_global_assignments, vllm-ascend's
            expert table flattened); -1 marks an unused slot
  log2phy   (E, X) int64, each expert's slots padded with -1, and logcnt (E,)
Slot p lives on rank p // slots_per_rank everywhere.
"""
import torch

from .. import planning
from .._ops import int32_table

_OPS = torch.ops.moe_eplb


def call(op, *args, **kwargs):
    """Runs a moe_eplb op; its core errors become ValueError."""
    return planning._call(op, *args, **kwargs)


def _as_tensor(operation, name, value, what):
    """`value` as a tensor (a tensor as it is, a NumPy array or a list
    converted); ValueError "<name> must be <what>" when it cannot be."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError("%s: %s must be %s, got %s"
                         % (operation, name, what, type(value).__name__)) from error


def host_int64(operation, name, value):
    """A CPU int64 tensor from a tensor on any device, a NumPy array or a list."""
    value = _as_tensor(operation, name, value, "an integer tensor")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise ValueError("%s: %s must hold integers, got %s" % (operation, name, value.dtype))
    return value.detach().to("cpu", torch.int64)


def host_load(operation, name, value, dims):
    """A CPU float64 load (finite, not negative) from a tensor on any device,
    a NumPy array or a list, with one of the dimensions in `dims`."""
    value = _as_tensor(operation, name, value, "a tensor of counts")
    value = value.detach().to("cpu", torch.float64)
    if value.dim() not in dims:
        raise ValueError("%s: %s must have %s dimensions, got shape %s"
                         % (operation, name, " or ".join(map(str, dims)), tuple(value.shape)))
    if value.numel() and not bool(torch.isfinite(value).all() and (value >= 0).all()):
        raise ValueError("%s: %s must hold finite counts >= 0" % (operation, name))
    return value.contiguous()


def table_from_phy2log(phy2log, num_experts, num_columns=0):
    """Table (L, E, F) from phy2log (L, P): each expert's replicas in ascending slot order."""
    return call(_OPS.table_from_phy2log.default, phy2log, num_experts, num_columns=num_columns)


def table_from_log2phy(log2phy, logcnt=None, num_columns=0):
    """Table from log2phy (L, E, X) and logcnt (L, E), or from SGLang's map
    alone (logcnt None: the count is the leading non-negative entries); the
    replica order kept."""
    return call(_OPS.table_from_log2phy.default, log2phy, logcnt, num_columns=num_columns)


def phy2log_from_table(table, num_physical_experts, sort_replicas=False):
    """phy2log (L, P) int64 of a table (L, E, F); sort_replicas accepts that
    phy2log drops the replicas' order (else a table not in ascending slot
    order is refused)."""
    table = int32_table("phy2log_from_table()", "table", table)
    return call(_OPS.table_to_phy2log.default, table, num_physical_experts, sort_replicas=sort_replicas)


def log2phy_from_table(table, max_replicas=0):
    """(log2phy (L, E, X) int64 padded with -1, logcnt (L, E) int64) of a
    table, its replica order kept; X = max_replicas or the largest count."""
    table = int32_table("log2phy_from_table()", "table", table)
    return call(_OPS.table_to_log2phy.default, table, max_replicas=max_replicas)


def ranks_per_node(num_ranks, num_nodes):
    """The ranks of a node, or 0 (one node) when num_nodes does not divide the
    ranks (the engines then fall back to their global policy too)."""
    if num_nodes is None or num_nodes <= 1 or num_ranks % num_nodes != 0:
        return 0
    return num_ranks // num_nodes


def previous_table(operation, phy2log, num_layers, num_physical_experts, num_experts):
    """The table in force from an engine's phy2log (L, P), or None when there
    is none to plan against: absent, another shape, or with slots no expert
    holds (e.g. vLLM's elastic scale-up marks new slots -1)."""
    if phy2log is None:
        return None
    phy2log = host_int64(operation, "the placement in force", phy2log)
    if phy2log.dim() == 1:
        phy2log = phy2log.unsqueeze(0)
    if tuple(phy2log.shape) != (num_layers, num_physical_experts) or bool((phy2log < 0).any()):
        return None
    return table_from_phy2log(phy2log, num_experts)


def plan_layers(load, num_ranks, slots_per_rank, *, rule, ranks_per_node=0, previous=None,
                **options):
    """One plan of every layer: load (L, E) global or (L, W, E) per source
    rank, float64 CPU; previous (L, E, F') or None. Returns (L, E, F) int32."""
    if load.dim() == 2:
        load = load.unsqueeze(1)
    if previous is None:
        options.pop("max_moves", None)
        options.pop("move_cost", None)
    return planning.plan(load, num_ranks, slots_per_rank, rule=rule,
                         ranks_per_node=ranks_per_node, previous=previous, **options).table

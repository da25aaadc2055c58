"""moe_eplb: rewrite MoE tokens' top-K logical expert ids into the physical
slots of expert replicas for an Expert-Parallel Load Balancer, on CPU and
CUDA, eager, under torch.compile and inside CUDA graphs.

    import torch, moe_eplb
    table = torch.tensor([[1, 0, -1], [2, 1, 2], [1, 3, -1]], dtype=torch.int32)
    ids = torch.tensor([[0, 1], [1, 2]])
    moe_eplb.update_expert(ids, table, local_rank_id=1, world_size=2)
    # tensor([[0, 2], [2, 3]])
    prepared = moe_eplb.PreparedTable(table, 1, 2)   # validate once
    prepared.map(ids)                                # then one gather per call

Functions: update_expert, update_expert_pruned, PreparedTable, error_counter,
read_error_counter, programmatic_dependent_launch, int32_table (the table
rule: int32, or int64 whose values fit); torch_npu drop-ins
npu_moe_eplb_update_expert and npu_moe_update_expert (also in
moe_eplb.compat). Planning (C++ underneath, CPU tensors or NumPy arrays):
plan, analyze, validate_table, migration_plan, align_to_previous, table_diff,
slot_experts, widest_plan_columns, for the replica rules RULES of the engines.
Expert parallelism on torch.distributed (dispatch, combine, migrate_experts,
EplbRuntime, ExpertParallelMoE): moe_eplb.distributed. The engines' own
interfaces (vLLM, SGLang, DeepSeek EPLB, TensorRT-LLM, vllm-ascend):
moe_eplb.engines.

Operators, usable directly and from TorchScript / torch.compile:
torch.ops.moe_eplb.{update_expert, update_expert_pruned,
update_expert_counted, prepare_table, update_expert_prepared,
update_expert_prepared_counted} and the planning ops (schemas in
torch/csrc/library.cpp).

Formula (token b, choice k):
"""
import importlib.machinery
import os

import torch


def _load_library():
    """Loads the compiled extension, which registers torch.ops.moe_eplb and
    torch.classes.moe_eplb (a plain shared library, not a Python module)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_C" + suffix)
        if os.path.exists(path):
            torch.ops.load_library(path)
            return
    raise ImportError(
        "moe_eplb: the compiled extension _C is missing from %s; build it with "
        "pip install --no-build-isolation ." % here
    )


_load_library()

from ._ops import (  # noqa: E402  (the ops exist once the library is loaded)
    FORMULA,
    PreparedTable,
    error_counter,
    int32_table,
    programmatic_dependent_launch,
    read_error_counter,
    update_expert,
    update_expert_pruned,
    with_cuda,
)
from .compat import npu_moe_eplb_update_expert, npu_moe_update_expert  # noqa: E402
from .planning import ALGORITHMS, RULES  # noqa: E402
from .planning import BalanceReport, MigrationAction, MigrationPlan, PlanResult  # noqa: E402
from .planning import TableDiff, TableReport  # noqa: E402
from .planning import align_to_previous, analyze, migration_plan, plan  # noqa: E402
from .planning import slot_experts, table_diff, validate_table, widest_plan_columns  # noqa: E402

__doc__ += FORMULA
__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "BalanceReport",
    "RULES",
    "MigrationAction",
    "MigrationPlan",
    "PlanResult",
    "PreparedTable",
    "TableDiff",
    "TableReport",
    "align_to_previous",
    "analyze",
    "error_counter",
    "int32_table",
    "migration_plan",
    "npu_moe_eplb_update_expert",
    "npu_moe_update_expert",
    "plan",
    "programmatic_dependent_launch",
    "read_error_counter",
    "slot_experts",
    "table_diff",
    "update_expert",
    "update_expert_pruned",
    "validate_table",
    "widest_plan_columns",
    "with_cuda",
]

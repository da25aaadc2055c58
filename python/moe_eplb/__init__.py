"""moe_eplb: rewrite MoE tokens' top-K logical expert ids into physical replica
ids for an Expert-Parallel Load Balancer, on CPU and CUDA, eager, under
torch.compile and inside CUDA graphs.

    import torch, moe_eplb
    table = torch.tensor([[1, 0, -1], [2, 1, 2], [1, 3, -1]], dtype=torch.int32)
    ids = torch.tensor([[0, 1], [1, 2]])
    moe_eplb.update_expert(ids, table, local_rank_id=1, world_size=2)
    # tensor([[0, 2], [2, 3]])
    prepared = moe_eplb.PreparedTable(table, 1, 2)   # validate once
    prepared.map(ids)                                # then one gather per call

Functions: update_expert, update_expert_pruned, PreparedTable, error_counter,
error_count, programmatic_dependent_launch; torch_npu drop-ins
npu_moe_eplb_update_expert and npu_moe_update_expert (also in
moe_eplb.compat). Operators, usable directly and from TorchScript /
torch.compile: torch.ops.moe_eplb.{update_expert, update_expert_pruned,
update_expert_counted, prepare_table, update_expert_prepared,
update_expert_prepared_counted}.

Formula (token b, choice k):
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  (registers torch.ops.moe_eplb)
from ._ops import (
    FORMULA,
    PreparedTable,
    error_count,
    error_counter,
    programmatic_dependent_launch,
    update_expert,
    update_expert_pruned,
)
from .compat import npu_moe_eplb_update_expert, npu_moe_update_expert

__doc__ += FORMULA
__version__ = "0.1.0"
with_cuda = _C.with_cuda  # whether this build has the CUDA kernels

__all__ = [
    "PreparedTable",
    "error_count",
    "error_counter",
    "npu_moe_eplb_update_expert",
    "npu_moe_update_expert",
    "programmatic_dependent_launch",
    "update_expert",
    "update_expert_pruned",
    "with_cuda",
]

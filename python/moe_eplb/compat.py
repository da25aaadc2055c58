"""Drop-in replacements for torch_npu's update-expert operators.

Same names, keyword names and defaults as torch_npu, and the same limits (the
Ascend profiles), so code written for torch_npu runs unchanged on CPU and
CUDA. Either import the functions, or import this module under torch_npu's
name where only these calls are needed:

    import moe_eplb.compat as torch_npu
    balanced = torch_npu.npu_moe_eplb_update_expert(
        expert_ids=expert_ids, eplb_table=eplb_table,
        local_rank_id=rank, world_size=world_size, balance_mode=0)
"""
import torch

from . import _ops

__all__ = ["npu_moe_eplb_update_expert", "npu_moe_update_expert"]


def npu_moe_eplb_update_expert(
    expert_ids, eplb_table, local_rank_id, world_size, *, balance_mode=0
):
    """torch_npu.npu_moe_eplb_update_expert: (BS, K) logical ids -> replicas' slots.

    expert_ids (BS, K) int32/int64, eplb_table (E, F) int32, same device.
    Limits of the "ascend_seed" profile: 0 < BS <= 512, 0 < K <= 16, K <= E,
    0 < E <= 512, world_size in 2..384, F >= 2, at most 1024 physical slots,
    balance_mode must be 0. Returns (BS, K), dtype of expert_ids.

    Formula:
    """
    return _ops.update_expert(
        expert_ids, eplb_table, local_rank_id, world_size,
        balance_mode=balance_mode, profile="ascend_seed",
    )


npu_moe_eplb_update_expert.__doc__ += _ops.FORMULA


def npu_moe_update_expert(
    expert_ids,
    eplb_table,
    *,
    expert_scales=None,
    pruning_threshold=None,
    active_mask=None,
    local_rank_id=-1,
    world_size=-1,
    balance_mode=0,
):
    """torch_npu.npu_moe_update_expert (aclnnMoeUpdateExpert): mapping plus
    optional pruning -> (balanced_expert_ids, balanced_active_mask).

    Limits of the "ascend" profile: 0 < BS <= 512, 0 < K <= 16, K <= E,
    0 < E <= 1024, world_size in 2..768 and F <= world_size + 1 (rank mode),
    at most 1024 physical slots, balance_mode 0 or 1. In token mode
    (balance_mode=1) local_rank_id and world_size may stay -1.
    expert_scales (BS, K) float32/float16/bfloat16 and pruning_threshold (K,)
    or (1, K) float32 come together; active_mask (BS,) bool needs them.
    Without pruning inputs the returned mask is all True.
    """
    # The counted op without counters: its mask is all True without pruning,
    # and it checks which pruning inputs go together.
    return torch.ops.moe_eplb.update_expert_counted.default(
        expert_ids, eplb_table, local_rank_id, world_size, balance_mode=balance_mode,
        expert_scales=expert_scales, pruning_threshold=pruning_threshold,
        active_mask=active_mask, profile="ascend",
    )

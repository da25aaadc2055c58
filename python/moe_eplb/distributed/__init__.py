"""Expert parallelism on torch.distributed through the EPLB table: dispatch and
combine tokens (uneven all_to_all_single), move expert weights between
placements (batch_isend_irecv, transactional), and the online runtime that
records load, replans and migrates without stalling the forward pass.

gloo on CPU and NCCL on CUDA; nothing of our own below torch.distributed.
"""
from ._dispatch import PADDING_ROW, SHARED_ROW, DispatchHandle, combine, dispatch
from ._migrate import MigrationStats, migrate_experts
from .moe import ExpertParallelMoE
from .runtime import EplbRuntime

__all__ = [
    "DispatchHandle",
    "EplbRuntime",
    "ExpertParallelMoE",
    "MigrationStats",
    "PADDING_ROW",
    "SHARED_ROW",
    "combine",
    "dispatch",
    "migrate_experts",
]

"""Python entry points over torch.ops.moe_eplb (see the package docstring).

Everything here is a thin wrapper: argument plumbing, the optional checked
mode, and the PreparedTable handle. All values are computed by the compiled
core, on the device of the inputs.
"""
import torch

from . import _C

_OPS = torch.ops.moe_eplb
_update_expert = _OPS.update_expert.default
_update_expert_pruned = _OPS.update_expert_pruned.default
_update_expert_counted = _OPS.update_expert_counted.default
_prepare_table = _OPS.prepare_table.default
_update_expert_prepared = _OPS.update_expert_prepared.default
_update_expert_prepared_counted = _OPS.update_expert_prepared_counted.default

FORMULA = """\
    e = expert_ids[b, k];  c = eplb_table[e, 0]
    j = 1                                             if c == 1
    j = 1 + local_rank_id // ceil(world_size / c)     balance_mode 0 (by rank)
    j = 1 + b % c                                     balance_mode 1 (by token)
    balanced_expert_ids[b, k] = eplb_table[e, j]

    pruning (optional):
    balanced_active_mask[b, k] = active_mask[b] and
        float32(expert_scales[b, k]) >= pruning_threshold[k] * sum_k float32(expert_scales[b, k])
"""


def _with_formula(function):
    function.__doc__ = function.__doc__.replace("{FORMULA}", FORMULA)
    return function


def _run_checked(operation, run, rerun_on_cpu, device, error_count):
    """Runs `run(counter)` with a private CUDA error counter, synchronises and
    raises if any element was bad: first by rerunning on the CPU, whose error
    names the first bad (b, k); the count is the fallback message."""
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    result = run(counter)
    if error_count is not None:
        error_count.add_(counter)
    num_bad = int(counter.item())  # synchronises
    if num_bad:
        rerun_on_cpu()
        raise IndexError(
            "%s: %d elements had an expert id, replica count or instance id out of range "
            "(their outputs are -1)" % (operation, num_bad)
        )
    return result


@_with_formula
def update_expert(
    expert_ids,
    eplb_table,
    local_rank_id,
    world_size,
    *,
    balance_mode=0,
    num_physical_experts=-1,
    profile="native",
    load_counts=None,
    error_count=None,
    checked=False,
):
    """Maps each token's top-K logical expert ids to physical replica ids.

    Args:
        expert_ids: (BS, K) int32 or int64, any strides, CPU or CUDA.
        eplb_table: (E, F) int32 on the same device; row e is
            [c, p_1, ..., p_c, unused...]: c replicas with physical ids p_j.
        local_rank_id: this rank, 0 <= local_rank_id < world_size (rank mode).
        world_size: expert-parallel group size (rank mode; ignored by mode 1).
        balance_mode: 0 = by rank (torch_npu's only mode), 1 = by token.
        num_physical_experts: total physical slots (world_size * slots per
            rank), or -1 if unknown; selected ids must lie below it (below the
            profile's limit when -1). Required with load_counts.
        profile: limits to enforce: "native" (none), "ascend" or "ascend_seed"
            (the torch_npu operators' ranges, e.g. BS <= 512, K <= 16).
        load_counts: optional (num_physical_experts,) int64 tensor on the same
            device; each mapped choice adds 1 at its physical id.
        error_count: optional one-element int32 CUDA tensor; the number of bad
            elements is added to it (otherwise to error_counter(device)).
        checked: on CUDA, synchronise after the call and raise IndexError if
            any element was bad (not for CUDA graphs or torch.compile).

    Returns:
        balanced_expert_ids: (BS, K), dtype of expert_ids, contiguous, on the
        input's device.

    Formula (token b, choice k):
{FORMULA}
    Errors: shape, dtype, device, range and profile problems raise ValueError
    naming the argument, the allowed range and the value. A bad element (id
    outside [0, E), count outside [1, F-1], selected id out of range) raises
    IndexError naming (b, k) on the CPU; on CUDA it becomes -1 and is counted.
    """
    if not (checked and expert_ids.is_cuda) and load_counts is None and error_count is None:
        return _update_expert(
            expert_ids, eplb_table, local_rank_id, world_size,
            balance_mode=balance_mode, num_physical_experts=num_physical_experts, profile=profile,
        )
    return _stateless_counted(
        expert_ids, eplb_table, local_rank_id, world_size, balance_mode, num_physical_experts,
        profile, None, None, None, load_counts, error_count, checked,
    )[0]


@_with_formula
def update_expert_pruned(
    expert_ids,
    eplb_table,
    local_rank_id,
    world_size,
    *,
    expert_scales,
    pruning_threshold,
    active_mask=None,
    balance_mode=0,
    num_physical_experts=-1,
    profile="native",
    load_counts=None,
    error_count=None,
    checked=False,
):
    """update_expert() plus expert pruning (the successor operator's option).

    Args (besides those of update_expert()):
        expert_scales: (BS, K) float32, float16 or bfloat16, the router's top-K
            weights, any strides, same device.
        pruning_threshold: (K,) or (1, K) float32, same device.
        active_mask: optional (BS,) bool; False marks a padding/inactive token,
            all of whose choices are pruned.
        load_counts: as in update_expert(), counting only kept choices.

    Returns:
        (balanced_expert_ids, balanced_active_mask): (BS, K) ids as in
        update_expert() and a (BS, K) bool mask, True = send, False = pruned.
        Pruning never changes the ids.

    Formula:
{FORMULA}
    """
    if not (checked and expert_ids.is_cuda) and load_counts is None and error_count is None:
        return _update_expert_pruned(
            expert_ids, eplb_table, expert_scales, pruning_threshold, active_mask,
            local_rank_id, world_size,
            balance_mode=balance_mode, num_physical_experts=num_physical_experts, profile=profile,
        )
    return _stateless_counted(
        expert_ids, eplb_table, local_rank_id, world_size, balance_mode, num_physical_experts,
        profile, expert_scales, pruning_threshold, active_mask, load_counts, error_count, checked,
    )


def _stateless_counted(
    expert_ids, eplb_table, local_rank_id, world_size, balance_mode, num_physical_experts,
    profile, scales, threshold, active_mask, load_counts, error_count, checked,
):
    """The counted op behind update_expert() and update_expert_pruned(); with
    checked=True on CUDA, through _run_checked() (a CPU rerun names the first
    bad element)."""

    def run(counter):
        return _update_expert_counted(
            expert_ids, eplb_table, local_rank_id, world_size,
            balance_mode=balance_mode, expert_scales=scales, pruning_threshold=threshold,
            active_mask=active_mask, load_counts=load_counts, error_count=counter,
            num_physical_experts=num_physical_experts, profile=profile,
        )

    if not (checked and expert_ids.is_cuda):
        return run(error_count)

    def rerun_on_cpu():
        _update_expert(
            expert_ids.cpu(), eplb_table.cpu(), local_rank_id, world_size,
            balance_mode=balance_mode, num_physical_experts=num_physical_experts,
            profile=profile,
        )

    return _run_checked("update_expert()", run, rerun_on_cpu, expert_ids.device, error_count)


class PreparedTable:
    """A validated EPLB table precomputed for one rank: mapping is one gather.

    Construct it when a table is installed (validates every entry on the host:
    counts, id ranges, duplicates, slots claimed twice; raises ValueError
    listing every problem), call map() every step, and swap in a new table with
    update().

    update() is safe under CUDA graphs: the routes tensor is written in place
    (same storage, a copy ordered on the current stream), so a graph captured
    around map() reads the new table on its next replay, without recapture.
    Call update() between replays, not while capturing, and on the stream the
    graph replays on (or order the two streams yourself).

    Args:
        eplb_table: (E, F) int32 tensor, any device.
        local_rank_id, world_size: this rank and the group size (rank mode;
            may be -1 in token mode).
        balance_mode, num_physical_experts, profile: as in update_expert();
            num_physical_experts = -1 infers it from the table (smallest
            multiple of world_size above the largest id) and keeps it for
            later updates.
        device: where the routes live (default: the table's device).

    Attributes:
        routes: int32 (E, 1) in rank mode (the physical id this rank uses for
            each expert) or (E, F) in token mode ([count, ids..., -1 padding]).
        num_physical_experts: the resolved slot count.
    """

    def __init__(
        self,
        eplb_table,
        local_rank_id=-1,
        world_size=-1,
        *,
        balance_mode=0,
        num_physical_experts=-1,
        profile="native",
        device=None,
    ):
        routes, num_physical_experts = _prepare_table(
            eplb_table, local_rank_id, world_size,
            balance_mode=balance_mode, num_physical_experts=num_physical_experts, profile=profile,
        )
        self.routes = routes if device is None else routes.to(device)
        self.num_physical_experts = num_physical_experts
        self.local_rank_id = local_rank_id
        self.world_size = world_size
        self.balance_mode = balance_mode
        self.profile = profile
        self.table_shape = tuple(eplb_table.shape)

    def map(self, expert_ids, *, load_counts=None, error_count=None, checked=False):
        """Maps (BS, K) int32/int64 expert_ids on the routes' device; same
        result, errors and options as update_expert() with this table."""
        if checked and expert_ids.is_cuda:

            def run(counter):
                return self._counted(expert_ids, None, None, None, load_counts, counter)[0]

            return _run_checked(
                "update_expert_prepared()", run, lambda: self._rerun_on_cpu(expert_ids),
                expert_ids.device, error_count,
            )
        if load_counts is None and error_count is None:
            return _update_expert_prepared(
                expert_ids, self.routes, balance_mode=self.balance_mode,
                num_physical_experts=self.num_physical_experts, profile=self.profile,
            )
        return self._counted(expert_ids, None, None, None, load_counts, error_count)[0]

    def map_pruned(
        self,
        expert_ids,
        expert_scales,
        pruning_threshold,
        active_mask=None,
        *,
        load_counts=None,
        error_count=None,
        checked=False,
    ):
        """map() plus pruning; returns (balanced_expert_ids,
        balanced_active_mask) as update_expert_pruned() does."""
        if checked and expert_ids.is_cuda:

            def run(counter):
                return self._counted(
                    expert_ids, expert_scales, pruning_threshold, active_mask, load_counts, counter
                )

            return _run_checked(
                "update_expert_prepared()", run, lambda: self._rerun_on_cpu(expert_ids),
                expert_ids.device, error_count,
            )
        return self._counted(
            expert_ids, expert_scales, pruning_threshold, active_mask, load_counts, error_count
        )

    def update(self, eplb_table):
        """Validates `eplb_table` (same shape as the first one) and installs it
        in place. Raises ValueError, keeping the current table, if it is invalid."""
        if tuple(eplb_table.shape) != self.table_shape:
            raise ValueError(
                "PreparedTable.update(): eplb_table has shape %s, expected %s, the shape this "
                "table was prepared with" % (tuple(eplb_table.shape), self.table_shape)
            )
        routes, _ = _prepare_table(
            eplb_table.cpu(), self.local_rank_id, self.world_size,
            balance_mode=self.balance_mode, num_physical_experts=self.num_physical_experts,
            profile=self.profile,
        )
        if self.routes.is_cuda:
            # Pinned source: an asynchronous copy ordered on the current stream.
            self.routes.copy_(routes.pin_memory(), non_blocking=True)
        else:
            self.routes.copy_(routes)

    def _counted(self, expert_ids, scales, threshold, active_mask, load_counts, error_count):
        return _update_expert_prepared_counted(
            expert_ids, self.routes, balance_mode=self.balance_mode,
            num_physical_experts=self.num_physical_experts, expert_scales=scales,
            pruning_threshold=threshold, active_mask=active_mask, load_counts=load_counts,
            error_count=error_count, profile=self.profile,
        )

    def _rerun_on_cpu(self, expert_ids):
        _update_expert_prepared(
            expert_ids.cpu(), self.routes.cpu(), balance_mode=self.balance_mode,
            num_physical_experts=self.num_physical_experts, profile=self.profile,
        )

    def __repr__(self):
        return (
            "PreparedTable(table_shape=%s, balance_mode=%d, local_rank_id=%d, world_size=%d, "
            "num_physical_experts=%d, profile=%r, device=%s)"
            % (self.table_shape, self.balance_mode, self.local_rank_id, self.world_size,
               self.num_physical_experts, self.profile, self.routes.device)
        )


def _cuda_device_index(device):
    if device is None:
        return torch.cuda.current_device()
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("error_counter(): expected a CUDA device, got %s" % device)
    return torch.cuda.current_device() if device.index is None else device.index


def error_counter(device=None):
    """The library's error counter on a CUDA device: a one-element int32 tensor
    aliasing device memory that every CUDA call without an explicit
    error_count adds its bad elements to. Read it asynchronously (copy it),
    reset it with .zero_(); its address never changes, so CUDA graphs may use it."""
    return _C.error_counter(_cuda_device_index(device))


def error_count(device=None, *, reset=False):
    """Synchronises and returns the library's error count on a CUDA device
    (see error_counter()); reset=True sets it back to 0 afterwards."""
    counter = error_counter(device)
    count = int(counter.item())
    if reset:
        counter.zero_()
    return count


def programmatic_dependent_launch(enabled=None):
    """Returns whether the CUDA kernels use programmatic dependent launch, and
    first sets it when `enabled` is given (process-wide; default off, or on
    with the environment variable MOE_EPLB_PDL=1).

    On sm_90 and newer (H100, H200) each kernel is then launched so that the
    GPU may start it while the previous kernel on the stream is finishing; the
    kernel waits for that kernel to complete before it reads or writes global
    memory, so results and ordering are unchanged and only launch latency
    overlaps. CUDA graphs captured while it is on keep it (programmatic edges).
    Older GPUs and CPU tensors ignore it; the setting is read at each launch."""
    if enabled is not None:
        _C.set_programmatic_dependent_launch(bool(enabled))
    return _C.programmatic_dependent_launch()

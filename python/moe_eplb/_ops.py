"""Python entry points over torch.ops.moe_eplb (see the package docstring).

Everything here is argument plumbing: every mapping entry point goes through
_map(), the one path that picks the plain or the counted op and runs the
optional checked mode; PreparedTable holds the C++ object that owns the
prepared routes and their in-place swap. All values are computed by the
compiled core, on the device of the inputs.
"""
import collections
import numbers

import torch

_OPS = torch.ops.moe_eplb

FORMULA = """\
    e = expert_ids[b, k];  c = eplb_table[e, 0]
    j = 1                                             if c == 1
    j = 1 + local_rank_id // ceil(world_size / c)     balance_mode 0 (by rank)
    j = 1 + b % c                                     balance_mode 1 (by token)
    j = 1 + ((b * 2654435769) & 0xFFFFFFFF) % c       balance_mode 2 (vLLM's token hash)
    balanced_expert_ids[b, k] = eplb_table[e, j]     (the slot of replica j)

    pruning (optional):
    balanced_active_mask[b, k] = active_mask[b] and not (
        float32(expert_scales[b, k]) < pruning_threshold[k] * sum_k float32(expert_scales[b, k]))
    (kept unless smaller: a NaN scale or threshold never prunes; each token's
    active_mask entry decides for that token alone)
"""


_INT32_MIN, _INT32_MAX = -2**31, 2**31 - 1


def int32_table(operation, name, table):
    """The one table rule of the Python entry points: an int32 table passes
    unchanged; an int64 one (vLLM's and SGLang's maps are int64) becomes int32
    when its values fit. On the CPU a value outside int32 raises ValueError
    naming it. On other devices, where looking would synchronise, such a value
    becomes -1, which the operator then rejects like any bad entry (on CUDA: a
    -1 output, counted). Anything else (other dtypes, non-tensors) is returned
    as is, for the caller's own checks."""
    if not isinstance(table, torch.Tensor) or table.dtype != torch.int64:
        return table
    if table.device.type == "cpu":
        if table.numel():
            low, high = int(table.min()), int(table.max())
            if low < _INT32_MIN or high > _INT32_MAX:
                raise ValueError("%s: %s is int64 with value %d, outside int32 (%d..%d)"
                                 % (operation, name, low if low < _INT32_MIN else high,
                                    _INT32_MIN, _INT32_MAX))
        return table.to(torch.int32)
    if table.device.type == "meta":
        return table.to(torch.int32)
    fits = (table >= _INT32_MIN) & (table <= _INT32_MAX)
    return torch.where(fits, table, torch.full_like(table, -1)).to(torch.int32)


def _with_formula(function):
    function.__doc__ = function.__doc__.replace("{FORMULA}", FORMULA)
    return function


class _Ops(collections.namedtuple("_Ops", "operation inputs plain pruned counted")):
    """The ops of one form of the mapping (`inputs` names their positional
    arguments), called as
    plain(*inputs, **options) -> ids;
    pruned(*inputs, expert_scales, pruning_threshold, active_mask, **options) -> (ids, mask);
    counted(*inputs, [pruning,] load_counts, error_counter, **options) -> (ids, mask)."""


def _stateless_pruned(expert_ids, eplb_table, local_rank_id, world_size, *, expert_scales,
                      pruning_threshold, active_mask, **options):
    return _OPS.update_expert_pruned.default(expert_ids, eplb_table, expert_scales,
                                             pruning_threshold, active_mask, local_rank_id,
                                             world_size, **options)


_STATELESS_INPUTS = ("expert_ids", "eplb_table", "local_rank_id", "world_size")
_STATELESS = _Ops("update_expert()", _STATELESS_INPUTS, _OPS.update_expert.default,
                  _stateless_pruned, _OPS.update_expert_counted.default)
_STATELESS_PRUNED = _STATELESS._replace(operation="update_expert_pruned()")
_PREPARED = _Ops("PreparedTable.map()", ("expert_ids", "routes"),
                 _OPS.update_expert_prepared.default,
                 _OPS.update_expert_prepared_counted.default,
                 _OPS.update_expert_prepared_counted.default)
_PREPARED_PRUNED = _PREPARED._replace(operation="PreparedTable.map_pruned()")


# The arguments of the mapping entry points and the Python types they take,
# to name a wrong one (the dispatcher's own message is a long dump).
_TENSOR = (torch.Tensor, "a torch.Tensor")
_OPTIONAL_TENSOR = ((torch.Tensor, type(None)), "a torch.Tensor or None")
_INT = (numbers.Integral, "an int")
_ARGUMENT_TYPES = dict(
    expert_ids=_TENSOR, eplb_table=_TENSOR, routes=_TENSOR, local_rank_id=_INT, world_size=_INT,
    expert_scales=_TENSOR, pruning_threshold=_TENSOR, active_mask=_OPTIONAL_TENSOR,
    load_counts=_OPTIONAL_TENSOR, error_counter=_OPTIONAL_TENSOR, balance_mode=_INT,
    num_physical_experts=_INT, profile=(str, "a str"),
    enable_pdl=((bool, type(None)), "a bool or None"))


def _check_types(operation, arguments):
    """Raises TypeError naming the first argument of a wrong Python type
    (bool is not an int here: True is no rank)."""
    for name, value in arguments.items():
        kinds, expected = _ARGUMENT_TYPES[name]
        if not isinstance(value, kinds) or (kinds is numbers.Integral and isinstance(value, bool)):
            raise TypeError("%s: %s must be %s, got %s" % (operation, name, expected,
                                                             type(value).__name__))


def _map(ops, inputs, options, pruning, *, load_counts, error_counter, checked):
    """The one path behind every mapping entry point: inputs (expert_ids
    first) and options go to ops.plain, ops.pruned (when `pruning` holds
    expert_scales, pruning_threshold and active_mask) or, to count, ops.counted.

    A wrong Python type raises TypeError naming the argument: checked when
    the dispatcher refuses the call, so correct calls pay nothing for it.

    With checked=True on CUDA the call counts its bad elements into a private
    counter, synchronises and raises IndexError if there were any: first by
    rerunning ops.plain on the CPU (whose error names the first bad (b, k);
    pruning never changes the ids), else with the count.
    """
    try:
        return _map_checked(ops, inputs, options, pruning, load_counts=load_counts,
                            error_counter=error_counter, checked=checked)
    except (RuntimeError, AttributeError):
        arguments = dict(zip(ops.inputs, inputs), **options, **(pruning or {}),
                         load_counts=load_counts, error_counter=error_counter)
        _check_types(ops.operation, arguments)
        raise


def _map_checked(ops, inputs, options, pruning, *, load_counts, error_counter, checked):
    expert_ids = inputs[0]
    checked = checked and expert_ids.is_cuda
    if not checked and load_counts is None and error_counter is None:
        return ops.pruned(*inputs, **pruning, **options) if pruning else ops.plain(*inputs, **options)
    counter = torch.zeros(1, dtype=torch.int32, device=expert_ids.device) if checked else error_counter
    ids, mask = ops.counted(*inputs, **(pruning or {}), load_counts=load_counts,
                            error_counter=counter, **options)
    if checked:
        if error_counter is not None:
            error_counter.add_(counter)
        num_bad = int(counter.item())  # synchronises
        if num_bad:
            ops.plain(*(x.cpu() if isinstance(x, torch.Tensor) else x for x in inputs), **options)
            raise IndexError(
                "%s: %d elements had an expert id, replica count or slot out of range (their "
                "outputs are -1)" % (ops.operation, num_bad)
            )
    return (ids, mask) if pruning else ids


def _check_ranks(operation, local_rank_id, world_size):
    """The dispatcher takes True for an int; a rank that is a bool is a mistake."""
    if local_rank_id.__class__ is bool or world_size.__class__ is bool:
        name = "local_rank_id" if local_rank_id.__class__ is bool else "world_size"
        raise TypeError("%s: %s must be an int, got bool" % (operation, name))


def _options(balance_mode, num_physical_experts, profile, enable_pdl):
    return dict(balance_mode=balance_mode, num_physical_experts=num_physical_experts,
                profile=profile, enable_pdl=enable_pdl)


def _pruning(expert_scales, pruning_threshold, active_mask):
    return dict(expert_scales=expert_scales, pruning_threshold=pruning_threshold,
                active_mask=active_mask)


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
    error_counter=None,
    checked=False,
    enable_pdl=None,
):
    """Maps each token's top-K logical expert ids to the physical slots of replicas.

    Args:
        expert_ids: (BS, K) int32 or int64, any strides, CPU or CUDA.
        eplb_table: (E, F) int32 (or int64 whose values fit, see
            int32_table()) on the same device; row e is
            [c, p_1, ..., p_c, unused...]: c replicas in slots p_j.
        local_rank_id: this rank, 0 <= local_rank_id < world_size (rank mode).
        world_size: expert-parallel group size (rank mode; ignored by modes 1 and 2).
        balance_mode: 0 = by rank (torch_npu's only mode), 1 = by token, 2 =
            vLLM's token hash (native profile only).
        num_physical_experts: total physical slots (world_size * slots per
            rank), or -1 if unknown; selected slots must lie below it (below the
            profile's limit when -1). Required with load_counts.
        profile: limits to enforce: "native" (none), "ascend" or "ascend_seed"
            (the torch_npu operators' ranges, e.g. BS <= 512, K <= 16).
        load_counts: optional (num_physical_experts,) int64 tensor on the same
            device; each mapped choice adds 1 at its slot.
        error_counter: optional one-element int32 CUDA tensor; the number of
            bad elements is added to it (otherwise to error_counter(device)).
        checked: on CUDA, synchronise after the call and raise IndexError if
            any element was bad (not for CUDA graphs or torch.compile).
        enable_pdl: CUDA only: programmatic dependent launch for this call;
            None takes the process default (programmatic_dependent_launch()).

    Returns:
        balanced_expert_ids: (BS, K), dtype of expert_ids, contiguous, on the
        input's device.

    Formula (token b, choice k):
{FORMULA}
    Errors: shape, dtype, device, range and profile problems raise ValueError
    naming the argument, the allowed range and the value. A bad element (id
    outside [0, E), count outside [1, F-1], selected slot out of range) raises
    IndexError naming (b, k) on the CPU; on CUDA it becomes -1 and is counted.
    A wrong Python type (a list for expert_ids, a float or a bool for a rank)
    raises TypeError naming the argument.
    """
    _check_ranks("update_expert()", local_rank_id, world_size)
    eplb_table = int32_table("update_expert()", "eplb_table", eplb_table)
    return _map(
        _STATELESS, (expert_ids, eplb_table, local_rank_id, world_size),
        _options(balance_mode, num_physical_experts, profile, enable_pdl),
        None, load_counts=load_counts, error_counter=error_counter, checked=checked,
    )


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
    error_counter=None,
    checked=False,
    enable_pdl=None,
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
    _check_ranks("update_expert_pruned()", local_rank_id, world_size)
    eplb_table = int32_table("update_expert_pruned()", "eplb_table", eplb_table)
    return _map(
        _STATELESS_PRUNED, (expert_ids, eplb_table, local_rank_id, world_size),
        _options(balance_mode, num_physical_experts, profile, enable_pdl),
        _pruning(expert_scales, pruning_threshold, active_mask),
        load_counts=load_counts, error_counter=error_counter, checked=checked,
    )


# Odd 64-bit constants (as signed int64) for table_fingerprint()'s mixing.
_MIX = (-7046029254386353131, -4658895280553007687, -7723592293110705685)


def table_fingerprint(eplb_table):
    """A one-element int64 tensor on the table's device that names an (E, F)
    table's routing: its counts and each row's replica slots in order;
    columns past a row's count are ignored, so padding and F do not matter.
    Torch ops only (CPU, CUDA, inside CUDA graphs), no host synchronisation;
    every process computes the same value. Not cryptographic: it tells
    tables apart that a caller passed by mistake (rows swapped, another
    rebalance's table), not an adversary's."""
    table = eplb_table.to(torch.int64)
    num_experts, num_columns = table.shape
    column = torch.arange(num_columns, device=table.device)
    live = (column.unsqueeze(0) <= table[:, :1]) | (column == 0).unsqueeze(0)
    row = torch.arange(num_experts, device=table.device).unsqueeze(1)
    mixed = (row * 1000003 + column) * _MIX[0] + (table & 0xFFFFFFFF)
    mixed = (mixed ^ (mixed >> 31)) * _MIX[1]
    mixed = (mixed ^ (mixed >> 29)) * _MIX[2]
    mixed = mixed ^ (mixed >> 32)
    return (mixed * live).sum().reshape(1)


class PreparedTable:
    """A validated EPLB table precomputed for one rank: mapping is one gather.

    Construct it when a table is installed (validates every entry on the host:
    counts, slot ranges, duplicates, slots claimed twice; raises ValueError
    listing every problem), call map() every step, and swap in a new table with
    update().

    It holds the C++ prepared table (torch.classes.moe_eplb.HostPreparedTable
    or CudaPreparedTable), which owns the routes and the swap: update()
    validates on the host and writes the routes in place (on CUDA, a
    stream-ordered copy on the current stream; refused while that stream is
    capturing). A CUDA graph captured around map() therefore reads the new
    table on its next replay, without recapture. Call update() between
    replays, on the stream the graph replays on (or order the two streams).

    Args:
        eplb_table: (E, F) int32 tensor (or int64 whose values fit), any device.
        local_rank_id, world_size: this rank and the group size; required in
            rank mode (balance_mode=0), ignored by the per-token modes 1 and 2
            (leave them out).
        balance_mode, num_physical_experts, profile: as in update_expert();
            num_physical_experts = -1 infers it from the table (smallest
            multiple of world_size above the largest slot) and keeps it for
            later updates.
        device: where the routes live (default: the table's device).

    Attributes (read-only: they are what the routes were built for):
        routes: int32 (E, 1) in rank mode (the slot this rank uses for each
            expert) or (E, F) in modes 1 and 2 ([count, slots..., -1 padding]).
        local_rank_id, world_size (None in modes 1 and 2 when not given),
        balance_mode, num_physical_experts (the resolved slot count),
        profile, device.
        fingerprint: one-element int64 tensor beside the routes,
            table_fingerprint() of the table in force, updated in place with
            it (moe_eplb.distributed.dispatch() checks with it that every rank
            routes through the same table, also inside CUDA graphs).

    Errors: TypeError for an argument of a wrong Python type, ValueError for
    a wrong value or an invalid table (listing every problem).
    """

    def __init__(
        self,
        eplb_table,
        local_rank_id=None,
        world_size=None,
        *,
        balance_mode=0,
        num_physical_experts=-1,
        profile="native",
        device=None,
    ):
        operation = "PreparedTable()"
        if not isinstance(eplb_table, torch.Tensor):
            raise TypeError("%s: eplb_table must be a torch.Tensor, got %s"
                            % (operation, type(eplb_table).__name__))
        _check_types(operation, dict(balance_mode=balance_mode,
                                     num_physical_experts=num_physical_experts, profile=profile))
        if balance_mode == 0 and (local_rank_id is None or world_size is None):
            raise TypeError("%s: rank mode (balance_mode=0) needs local_rank_id and world_size"
                            % operation)
        for name, value in (("local_rank_id", local_rank_id), ("world_size", world_size)):
            if value is not None:
                _check_types(operation, {name: value})
        device = eplb_table.device if device is None else torch.device(device)
        if device.type == "cuda":
            index = torch.cuda.current_device() if device.index is None else device.index
            owner = torch.classes.moe_eplb.CudaPreparedTable
        elif device.type == "cpu":
            index = -1
            owner = torch.classes.moe_eplb.HostPreparedTable
        else:
            raise ValueError("%s: device must be cpu or cuda, got %s" % (operation, device))
        eplb_table = int32_table(operation, "eplb_table", eplb_table)
        self._table = owner(eplb_table, -1 if local_rank_id is None else local_rank_id,
                            -1 if world_size is None else world_size, balance_mode,
                            num_physical_experts, profile, index)
        self._routes = self._table.routes()
        self._fingerprint = table_fingerprint(eplb_table).to(self._routes.device)
        self._identity = (local_rank_id, world_size, balance_mode,
                          self._table.num_physical_experts(), profile)

    routes = property(lambda self: self._routes, doc="int32 routes the mapping gathers from")
    fingerprint = property(lambda self: self._fingerprint, doc="the table's, updated in place")
    local_rank_id = property(lambda self: self._identity[0], doc="this rank (rank mode)")
    world_size = property(lambda self: self._identity[1], doc="the group size (rank mode)")
    balance_mode = property(lambda self: self._identity[2], doc="0 by rank, 1 and 2 by token")
    num_physical_experts = property(lambda self: self._identity[3], doc="the slot count")
    profile = property(lambda self: self._identity[4], doc="the limits enforced")
    device = property(lambda self: self._routes.device, doc="where the routes live")

    def map(self, expert_ids, *, load_counts=None, error_counter=None, checked=False,
            enable_pdl=None):
        """Maps (BS, K) int32/int64 expert_ids on the routes' device; same
        result, errors and options as update_expert() with this table."""
        return _map(
            _PREPARED, (expert_ids, self._routes), self._options(enable_pdl), None,
            load_counts=load_counts, error_counter=error_counter, checked=checked,
        )

    def map_pruned(self, expert_ids, expert_scales, pruning_threshold, active_mask=None, *,
                   load_counts=None, error_counter=None, checked=False, enable_pdl=None):
        """map() plus pruning; returns (balanced_expert_ids,
        balanced_active_mask) as update_expert_pruned() does."""
        return _map(
            _PREPARED_PRUNED, (expert_ids, self._routes), self._options(enable_pdl),
            _pruning(expert_scales, pruning_threshold, active_mask),
            load_counts=load_counts, error_counter=error_counter, checked=checked,
        )

    def update(self, eplb_table):
        """Validates `eplb_table` (same shape as the first one) and installs it
        in place. Raises ValueError, keeping the current table, if it is invalid."""
        if not isinstance(eplb_table, torch.Tensor):
            raise TypeError("PreparedTable.update(): eplb_table must be a torch.Tensor, got %s"
                            % type(eplb_table).__name__)
        eplb_table = int32_table("PreparedTable.update()", "eplb_table", eplb_table)
        self._table.update(eplb_table)
        with torch.inference_mode():  # in place, whichever mode made it
            self._fingerprint.copy_(table_fingerprint(eplb_table))

    def report(self):
        """The warnings validation found in the latest table, one per line."""
        return self._table.report()

    def _options(self, enable_pdl):
        return _options(self.balance_mode, self.num_physical_experts, self.profile, enable_pdl)

    def __repr__(self):
        return (
            "PreparedTable(routes=%s, balance_mode=%d, local_rank_id=%s, world_size=%s, "
            "num_physical_experts=%d, profile=%r, device=%s)"
            % (tuple(self.routes.shape), self.balance_mode, self.local_rank_id, self.world_size,
               self.num_physical_experts, self.profile, self.routes.device)
        )


def _with_cuda():
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("moe_eplb::update_expert", "CUDA")
    except (AttributeError, RuntimeError):
        return False


with_cuda = _with_cuda()  # whether this build has the CUDA kernels


def _cuda_device_index(operation, device):
    if not with_cuda:
        raise RuntimeError("%s: moe_eplb was built without CUDA" % operation)
    if device is None:
        return torch.cuda.current_device()
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("%s: expected a CUDA device, got %s" % (operation, device))
    return torch.cuda.current_device() if device.index is None else device.index


def error_counter(device=None):
    """The library's error counter on a CUDA device: a one-element int32 tensor
    aliasing device memory that every CUDA call without an explicit
    error_counter adds its bad elements to. Read it asynchronously (copy it),
    reset it with .zero_(); its address never changes, so CUDA graphs may use it.
    Raises RuntimeError in a build without CUDA."""
    return _OPS.library_error_counter(_cuda_device_index("error_counter()", device))


def read_error_counter(device=None, *, reset=False):
    """Synchronises and returns the value of error_counter(device); reset=True
    sets it back to 0 afterwards. Raises RuntimeError in a build without CUDA."""
    counter = _OPS.library_error_counter(_cuda_device_index("read_error_counter()", device))
    count = int(counter.item())
    if reset:
        counter.zero_()
    return count


def programmatic_dependent_launch(enabled=None):
    """Returns the process default for programmatic dependent launch of the
    CUDA kernels, first setting it when `enabled` is given (default off, or on
    with the environment variable MOE_EPLB_PDL=1). A call's enable_pdl
    argument overrides it.

    On sm_90 and newer (H100, H200) each kernel is then launched so that the
    GPU may start it while the previous kernel on the stream is finishing; the
    kernel waits for that kernel to complete before it reads or writes global
    memory, so results and ordering are unchanged and only launch latency
    overlaps. CUDA graphs captured while it is on keep it (programmatic edges).
    Older GPUs and CPU tensors ignore it; builds without CUDA return False."""
    if not with_cuda:
        return False
    if enabled is not None:
        _OPS.set_default_programmatic_dependent_launch(bool(enabled))
    return _OPS.default_programmatic_dependent_launch()

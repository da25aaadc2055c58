"""Expert-parallel dispatch and combine through the EPLB table.

    recv_hidden, recv_slot, handle = dispatch(hidden, topk_ids, table, slots_per_rank=S)
    expert_out = experts(recv_hidden, recv_slot)          # one row out per row in
    out = combine(expert_out, handle, topk_weights)

dispatch() maps every (token b, choice k) to a physical slot p with the
library op (this rank's answer to update_expert()), sends row b of `hidden`
to the rank that holds p, and returns the rows this rank received with their
local slot p % S. combine() sends the expert outputs back along the same
routes and sums them with the router weights.

Ranks. The group has W ranks; the first n = shared_expert_rank_num host the
shared expert and no MoE slots, the other M = W - n are the MoE ranks. Slot p
lives on group rank n + p // S, and the op sees world_size = M. A MoE rank's
local_rank_id is its MoE index (group rank - n); a shared-expert rank has no
slots but routes its own tokens as MoE rank (group rank mod M) does, so in
rank mode it uses the same replicas as that rank. Every token also goes, once,
to shared-expert rank (source rank mod n); those rows arrive with
recv_slot == -1 and combine() adds their output with weight 1.

Communication, identical on every rank: one all_to_all_single of a small
per-destination header (row count plus the values every rank must agree on),
one host read of it (the only host synchronisation on CUDA), then one uneven
all_to_all_single of the hidden rows and one of the slot ids. Rows go out
grouped by destination rank, within a destination in (token, k) order (a
shared-expert rank receives only shared rows, in token order); they arrive
grouped by source rank, each source's rows in that order.

Errors. Arguments are checked on each rank before any communication and
raise ValueError naming the argument. The checks see only this rank's
arguments: a rank whose arguments are bad raises while its peers wait in the
header exchange until the group's timeout, so give every rank consistent
arguments (tests check the ValueError on all ranks with the same bad input).
What only the ranks together can see is checked from the header, on every
rank alike: ranks that disagree on hidden size, hidden dtype, number of
experts, slots_per_rank, balance_mode or shared_expert_rank_num raise
ValueError, and a topk_ids element the table cannot map (IndexError from the
op on the CPU, a counted -1 on CUDA) makes every rank raise IndexError; no
rows are exchanged in either case.
"""
import zlib

import torch
import torch.distributed as dist

from .._ops import PreparedTable, update_expert

# Header columns, one row per destination rank: the row count, then the
# values that every rank must agree on (checked after the exchange).
_ROWS, _BAD = 0, 1
_AGREED = ("hidden size", "hidden dtype", "number of experts", "slots_per_rank",
           "balance_mode", "shared_expert_rank_num")
_NUM_FIELDS = 2 + len(_AGREED)


class DispatchHandle:
    """What combine() needs to bring one dispatch()'s rows back.

    Attributes:
        group: the process group of the dispatch.
        physical_ids: (T, K) the physical slot of every choice (dtype of topk_ids).
        send_order: (T*K + T_shared,) int64; row i sent (in destination order)
            is row send_order[i] of the list [(b, k) in (token, k) order,
            then one shared-expert row per token when n > 0].
        send_splits, recv_splits: rows sent to / received from each rank.
        num_tokens, top_k, num_shared_rows: T, K and T or 0.
        num_received: N, the rows dispatch() returned.
    """

    def __init__(self, group, physical_ids, send_order, send_splits, recv_splits, num_tokens,
                 top_k, num_shared_rows, device):
        self.group = group
        self.physical_ids = physical_ids
        self.send_order = send_order
        self.send_splits = send_splits
        self.recv_splits = recv_splits
        self.num_tokens = num_tokens
        self.top_k = top_k
        self.num_shared_rows = num_shared_rows
        self.num_received = sum(recv_splits)
        self.device = device

    def __repr__(self):
        return "DispatchHandle(num_tokens=%d, top_k=%d, num_received=%d, send_splits=%s, " \
               "recv_splits=%s)" % (self.num_tokens, self.top_k, self.num_received,
                                    self.send_splits, self.recv_splits)


def _fail(operation, message, *values):
    raise ValueError("%s(): %s" % (operation, message % values))


def _check_int(operation, name, value, low, high=None):
    """An int (not a bool) in low..high, or >= low when high is None."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if high is None:
        if not (is_int and value >= low):
            _fail(operation, "%s must be an integer >= %d, got %r", name, low, value)
    elif not (is_int and low <= value <= high):
        _fail(operation, "%s must be an integer in %d..%d, got %r", name, low, high, value)


def _check_tensor(operation, name, value, dims, shape_text):
    if not isinstance(value, torch.Tensor):
        _fail(operation, "%s must be a tensor %s, got %s", name, shape_text, type(value).__name__)
    if value.dim() != dims:
        _fail(operation, "%s must be %s, got shape %s", name, shape_text, tuple(value.shape))


def _check_device(operation, name, value, device):
    if value.device != device:
        _fail(operation, "%s must be on %s (hidden's device), got %s", name, device, value.device)


def _group_ranks(operation, group):
    """(group rank, group size); raises unless this process is a member."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("%s(): torch.distributed is not initialized; call "
                           "torch.distributed.init_process_group() first" % operation)
    rank = dist.get_rank(group)
    if rank < 0:
        _fail(operation, "group: this process (global rank %d) is not a member",
              dist.get_rank())
    return rank, dist.get_world_size(group)


def _check_table(table, *, num_slots, moe_rank, moe_world_size, balance_mode, device):
    """The number of experts E of an (E, F) table or a PreparedTable."""
    if isinstance(table, PreparedTable):
        routes = table.routes
        _check_device("dispatch", "table (PreparedTable routes)", routes, device)
        if table.num_physical_experts != num_slots:
            _fail("dispatch", "table is a PreparedTable for %d physical slots, expected "
                  "%d (MoE ranks * slots_per_rank)", table.num_physical_experts, num_slots)
        if table.balance_mode != balance_mode:
            _fail("dispatch", "table is a PreparedTable for balance_mode %d, got balance_mode=%d",
                  table.balance_mode, balance_mode)
        if balance_mode == 0 and (table.local_rank_id, table.world_size) != (moe_rank,
                                                                             moe_world_size):
            _fail("dispatch", "table is a PreparedTable for local_rank_id %d of world_size %d, "
                  "expected %d of %d (this rank's MoE index and the MoE rank count)",
                  table.local_rank_id, table.world_size, moe_rank, moe_world_size)
        return routes.shape[0]
    _check_tensor("dispatch", "table", table, 2, "(E, F) int32 or a moe_eplb.PreparedTable")
    if table.dtype != torch.int32:
        _fail("dispatch", "table must be int32, got %s", table.dtype)
    _check_device("dispatch", "table", table, device)
    num_experts, num_columns = table.shape
    if not 1 <= num_experts <= num_slots or num_columns < 2:
        _fail("dispatch", "table must be (E, F) with 1 <= E <= %d (MoE ranks * slots_per_rank) "
              "and F >= 2, got shape %s", num_slots, tuple(table.shape))
    return num_experts


def _check_load_counts(load_counts, num_slots, device):
    if load_counts is None:
        return
    _check_tensor("dispatch", "load_counts", load_counts, 1, "(%d,)" % num_slots)
    if load_counts.dtype not in (torch.int32, torch.int64):
        _fail("dispatch", "load_counts must be int32 or int64, got %s", load_counts.dtype)
    if load_counts.shape[0] != num_slots:
        _fail("dispatch", "load_counts must have %d elements (MoE ranks * slots_per_rank), got %d",
              num_slots, load_counts.shape[0])
    _check_device("dispatch", "load_counts", load_counts, device)
    if load_counts.dtype == torch.int64 and not load_counts.is_contiguous():
        _fail("dispatch", "load_counts must be contiguous, got stride %d", load_counts.stride(0))


def _map_ids(topk_ids, table, *, moe_rank, moe_world_size, balance_mode, num_slots, load_counts,
             error_counter):
    """The op's physical ids; load_counts recorded by the op (int32 through
    an int64 scratch). On the CPU a bad element raises IndexError."""
    counts = load_counts
    if load_counts is not None and load_counts.dtype != torch.int64:
        counts = torch.zeros(num_slots, dtype=torch.int64, device=load_counts.device)
    if isinstance(table, PreparedTable):
        physical = table.map(topk_ids, load_counts=counts, error_counter=error_counter)
    else:
        physical = update_expert(topk_ids, table, moe_rank, moe_world_size,
                                 balance_mode=balance_mode, num_physical_experts=num_slots,
                                 load_counts=counts, error_counter=error_counter)
    if counts is not load_counts:
        load_counts.add_(counts.to(load_counts.dtype))
    return physical


def _dtype_code(dtype):
    return zlib.crc32(str(dtype).encode()) & 0x7FFFFFFF  # the same in every process


def dispatch(hidden, topk_ids, table, *, slots_per_rank, balance_mode=0, group=None,
             load_counts=None, shared_expert_rank_num=0):
    """Sends every token's hidden row to the ranks that hold its experts' replicas.

    Args:
        hidden: (T, H) floating point, this rank's tokens; T may be 0 and
            may differ between ranks; H and the dtype must agree.
        topk_ids: (T, K) int32 or int64 logical expert ids, same device.
        table: (E, F) int32 eplb_table on hidden's device, the same on every
            rank, or a moe_eplb.PreparedTable prepared for this rank
            (local_rank_id = this rank's MoE index, world_size = M,
            num_physical_experts = M * slots_per_rank, this balance_mode).
        slots_per_rank: S, slots per MoE rank.
        balance_mode: 0 (by rank) or 1 (by token), as in update_expert().
        group: the process group (default: the world).
        load_counts: optional (M * S,) int64 or int32 tensor on hidden's
            device; each of this rank's choices adds 1 at its physical slot
            (recorded by the op itself; int32 goes through an int64 scratch).
        shared_expert_rank_num: n, leading ranks that host the shared expert
            and no slots (see Ranks below).

    Returns:
        recv_hidden: (N, H) the rows routed to this rank, grouped by source
            rank, each source's rows in (token, k) order.
        recv_slot: (N,) int64 local slot in [0, S), or -1 for a
            shared-expert row.
        handle: a DispatchHandle for combine().

    Ranks: of the group's W ranks the first n host the shared expert, the
    other M = W - n are MoE ranks. The physical slot of choice (b, k) is
    p = update_expert(topk_ids, table, local_rank_id, M, balance_mode)[b, k]
    and lives on group rank n + p // S, as local slot p % S. local_rank_id
    is a MoE rank's index (rank - n); a shared-expert rank, which has no
    slots, routes as MoE rank (rank mod M). With n > 0 every token also
    goes, once, to shared-expert rank (rank mod n), arriving with slot -1.
    Raises ValueError (bad argument, or ranks that disagree), IndexError (an
    id the table cannot map, on any rank; load_counts is then unchanged on
    the CPU, and on CUDA holds the choices that did map), RuntimeError (no
    process group). Forward only: no gradient flows through the exchange.
    """
    rank, world_size = _group_ranks("dispatch", group)
    _check_int("dispatch", "shared_expert_rank_num", shared_expert_rank_num, 0, world_size - 1)
    _check_int("dispatch", "slots_per_rank", slots_per_rank, 1, 2**31 - 1)
    _check_int("dispatch", "balance_mode", balance_mode, 0, 1)
    _check_tensor("dispatch", "hidden", hidden, 2, "(T, H)")
    if not hidden.is_floating_point():
        _fail("dispatch", "hidden must be floating point, got %s", hidden.dtype)
    device = hidden.device
    num_tokens = hidden.shape[0]
    _check_tensor("dispatch", "topk_ids", topk_ids, 2, "(T, K) with T = %d" % num_tokens)
    if topk_ids.dtype not in (torch.int32, torch.int64):
        _fail("dispatch", "topk_ids must be int32 or int64, got %s", topk_ids.dtype)
    if topk_ids.shape[0] != num_tokens or topk_ids.shape[1] < 1:
        _fail("dispatch", "topk_ids must be (T, K) with T = %d (hidden's rows) and K >= 1, got "
              "shape %s", num_tokens, tuple(topk_ids.shape))
    _check_device("dispatch", "topk_ids", topk_ids, device)
    num_shared = shared_expert_rank_num
    moe_world_size = world_size - num_shared
    moe_rank = rank - num_shared if rank >= num_shared else rank % moe_world_size
    num_slots = moe_world_size * slots_per_rank
    num_experts = _check_table(table, num_slots=num_slots, moe_rank=moe_rank,
                               moe_world_size=moe_world_size, balance_mode=balance_mode,
                               device=device)
    _check_load_counts(load_counts, num_slots, device)

    # Map, and count bad elements instead of raising, so that every rank
    # reaches the header exchange and all raise together.
    top_k = topk_ids.shape[1]
    error_counter = torch.zeros(1, dtype=torch.int32, device=device)
    map_error = None
    try:
        physical = _map_ids(topk_ids, table, moe_rank=moe_rank, moe_world_size=moe_world_size,
                            balance_mode=balance_mode, num_slots=num_slots,
                            load_counts=load_counts, error_counter=error_counter)
    except IndexError as error:  # the CPU op names the first bad (b, k)
        map_error = error
        physical = torch.zeros_like(topk_ids)
        error_counter.fill_(1)

    flat_physical = physical.reshape(-1).long()
    # -1 (a bad element on CUDA) goes nowhere: its count is exchanged and raised.
    destination = torch.where(flat_physical >= 0,
                              num_shared + torch.div(flat_physical, slots_per_rank,
                                                     rounding_mode="floor"),
                              torch.zeros_like(flat_physical))
    slot = torch.remainder(flat_physical, slots_per_rank)
    source_token = torch.arange(num_tokens, device=device).unsqueeze(1).expand(
        num_tokens, top_k).reshape(-1)  # not repeat_interleave, which may read the host
    num_shared_rows = num_tokens if num_shared > 0 else 0
    if num_shared_rows:
        shared_rank = rank % num_shared
        destination = torch.cat([destination, torch.full((num_tokens,), shared_rank,
                                                         dtype=torch.int64, device=device)])
        slot = torch.cat([slot, torch.full((num_tokens,), -1, dtype=torch.int64, device=device)])
        source_token = torch.cat([source_token, torch.arange(num_tokens, device=device)])
    destination, send_order = torch.sort(destination, stable=True)

    header = torch.empty((world_size, _NUM_FIELDS), dtype=torch.int64, device=device)
    header[:, _ROWS] = torch.zeros(world_size, dtype=torch.int64, device=device).scatter_add_(
        0, destination, torch.ones_like(destination))
    header[:, _BAD] = error_counter
    agreed = (hidden.shape[1], _dtype_code(hidden.dtype), num_experts, slots_per_rank,
              balance_mode, shared_expert_rank_num)
    for column, value in enumerate(agreed, 2):
        header[:, column] = value
    received_header = torch.empty_like(header)
    dist.all_to_all_single(received_header, header, group=group)
    host = torch.cat([header[:, _ROWS], received_header.reshape(-1)]).tolist()  # the one sync
    send_splits = host[:world_size]
    received = [host[world_size + source * _NUM_FIELDS:world_size + (source + 1) * _NUM_FIELDS]
                for source in range(world_size)]
    _check_agreement(received, map_error)

    recv_splits = [row[_ROWS] for row in received]
    num_received = sum(recv_splits)
    send_hidden = hidden.index_select(0, source_token.index_select(0, send_order))
    recv_hidden = hidden.new_empty((num_received, hidden.shape[1]))
    dist.all_to_all_single(recv_hidden, send_hidden, output_split_sizes=recv_splits,
                           input_split_sizes=send_splits, group=group)
    send_slot = slot.index_select(0, send_order)
    recv_slot = torch.empty(num_received, dtype=torch.int64, device=device)
    dist.all_to_all_single(recv_slot, send_slot, output_split_sizes=recv_splits,
                           input_split_sizes=send_splits, group=group)
    handle = DispatchHandle(group, physical, send_order, send_splits, recv_splits, num_tokens,
                            top_k, num_shared_rows, device)
    return recv_hidden, recv_slot, handle


def _check_agreement(received, map_error):
    """Raises on every rank alike from the exchanged headers (one per source rank)."""
    for index, name in enumerate(_AGREED, 2):
        values = [row[index] for row in received]
        if len(set(values)) > 1:
            if name == "hidden dtype":
                values = "differing dtypes"
            raise ValueError("dispatch(): the ranks disagree on %s (by rank: %s); every rank "
                             "must pass the same" % (name, values))
    bad_ranks = [source for source, row in enumerate(received) if row[_BAD]]
    if bad_ranks:
        detail = (": %s" % map_error) if map_error is not None else ""
        raise IndexError("dispatch(): rank(s) %s had topk_ids elements the table cannot map "
                         "(expert id outside [0, E), or a bad table row); no rows were "
                         "exchanged%s" % (bad_ranks, detail))


def combine(expert_out, handle, topk_weights):
    """Sends the expert outputs back and sums them per token.

    Args:
        expert_out: (N, H') floating point, one output row per row that
            dispatch() returned, in that order; H' must agree across ranks.
        handle: the DispatchHandle of that dispatch().
        topk_weights: (T, K) floating point router weights, same device.

    Returns:
        (T, H') in expert_out's dtype:
        out[b] = sum over k, in k order, of topk_weights[b, k] * row(b, k),
        plus the shared-expert row (weight 1) when shared_expert_rank_num > 0.
        Accumulated in float64 for float64 expert_out, otherwise in float32,
        each term rounded once (a product, then a sum: no fused multiply-add).
    """
    if not isinstance(handle, DispatchHandle):
        _fail("combine", "handle must be the DispatchHandle that dispatch() returned, got %s",
              type(handle).__name__)
    _check_tensor("combine", "expert_out", expert_out, 2, "(N, H) with N = %d"
                  % handle.num_received)
    if not expert_out.is_floating_point():
        _fail("combine", "expert_out must be floating point, got %s", expert_out.dtype)
    if expert_out.shape[0] != handle.num_received:
        _fail("combine", "expert_out must have N = %d rows (the rows dispatch() returned), got "
              "shape %s", handle.num_received, tuple(expert_out.shape))
    if expert_out.device != handle.device:
        _fail("combine", "expert_out must be on %s (the dispatch's device), got %s",
              handle.device, expert_out.device)
    num_tokens, top_k = handle.num_tokens, handle.top_k
    _check_tensor("combine", "topk_weights", topk_weights, 2, "(T, K) = (%d, %d)"
                  % (num_tokens, top_k))
    if tuple(topk_weights.shape) != (num_tokens, top_k):
        _fail("combine", "topk_weights must be (T, K) = (%d, %d), got shape %s", num_tokens,
              top_k, tuple(topk_weights.shape))
    if not topk_weights.is_floating_point():
        _fail("combine", "topk_weights must be floating point, got %s", topk_weights.dtype)
    if topk_weights.device != handle.device:
        _fail("combine", "topk_weights must be on %s (the dispatch's device), got %s",
              handle.device, topk_weights.device)

    width = expert_out.shape[1]
    returned = expert_out.new_empty((len(handle.send_order), width))
    dist.all_to_all_single(returned, expert_out.contiguous(),
                           output_split_sizes=handle.send_splits,
                           input_split_sizes=handle.recv_splits, group=handle.group)
    rows = torch.empty_like(returned).index_copy_(0, handle.send_order, returned)
    accumulate = torch.float64 if expert_out.dtype == torch.float64 else torch.float32
    choices = rows[:num_tokens * top_k].reshape(num_tokens, top_k, width).to(accumulate)
    weights = topk_weights.to(accumulate)
    out = torch.zeros((num_tokens, width), dtype=accumulate, device=handle.device)
    for k in range(top_k):
        out.add_(weights[:, k:k + 1] * choices[:, k])
    if handle.num_shared_rows:
        out.add_(rows[num_tokens * top_k:].to(accumulate))
    return out.to(expert_out.dtype)

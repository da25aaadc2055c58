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
recv_slot == -1 (SHARED_ROW) and combine() adds their output with weight 1.

Two modes, the same results:
- uneven (default): rows go out grouped by destination rank, within a
  destination in (token, k) order (a shared-expert rank receives only shared
  rows, in token order), and arrive grouped by source rank, each source's rows
  in that order. One host synchronisation per dispatch (the row counts).
- capacity (max_tokens_per_rank=N): fixed-size buffers of C = N * K rows per
  (source, destination) pair, equal splits, no host synchronisation, so it
  can be captured in a CUDA graph. Row i of the output belongs to source
  rank i // C; rows past what that source sent are padding, recv_slot ==
  -2 (PADDING_ROW). handle.slot_counts counts the real rows per local slot.

Agreement. Every dispatch exchanges one small header per destination (its row
count, and a record of the values every rank must agree on: this dispatch's
sequence number on the group, the mode, hidden's size and layout, K, E, S,
balance_mode, n, and a fingerprint of the table's content) together with
this rank's verdict on its own arguments. Every rank then raises alike, in
that one exchange, before any row moves: ValueError naming the argument and
the rank when a rank's argument is bad, or the value and the ranks when they
disagree; IndexError when a rank had a topk_ids element the table cannot
map. combine() exchanges a header too: the dispatch it belongs to, the width
and dtype of expert_out, and the verdicts. So a fault never leaves a peer
waiting for the group's timeout, and no row reaches the wrong expert.

Checked and unchecked. With checked=True (the default, except while a CUDA
graph is being captured) the headers are read on the host and every rank
raises as above. With checked=False (capacity mode only) nothing reads the
device: what only the ranks together can see (tables that differ, an id a
table cannot map, a rank's bad argument that reached the header) makes every
rank's dispatch deliver padding only and every rank's combine return NaN for
every token, and handle.status (a device tensor) is nonzero. Arguments that
this rank can see are bad still raise here at once, and then the peers wait
for the group's timeout; sizes (H, K, N, expert_out's width and dtype) must
then agree, because the exchange of rows is sized from them. Run the same
step once checked before capturing a graph.

Bytes. Rows travel as bytes (moe_eplb.distributed._transport), so every
dtype moves bit-exact on every backend: bfloat16 and float8 on gloo, and
quantized hidden states with their scales as a tuple (x, x_scales).
"""
import collections

import torch
import torch.distributed as dist

from .._ops import PreparedTable, update_expert
from ._checks import (Agreement, check_device, check_int, check_tensor,
                      communication_device, dtype_code, fail, group_ranks,
                      int32_table_argument, is_int, layout_fingerprint, normal_tensors,
                      table_fingerprint)
from ._transport import RowLayout, row_bytes

SHARED_ROW = -1   # recv_slot of a row for the shared expert
PADDING_ROW = -2  # recv_slot of an unused row of capacity mode

# Header columns, one row per destination rank: the row count, the number of
# choices the table could not map, then the Agreement record, whose first
# value says which call it is. dispatch() and combine() headers have one
# width, so that ranks out of step (one in dispatch(), one in combine()) meet
# in an exchange of equal sizes and raise, rather than crash in the backend.
_ROWS, _BAD, _RECORD = 0, 1, 2
_HEADER_WIDTH = 16
_CALL = "the call (1: dispatch(), 2: combine())"
_DISPATCH_CALL, _COMBINE_CALL = 1, 2
_DISPATCH_ARGUMENTS = ("shared_expert_rank_num", "slots_per_rank", "balance_mode",
                       "max_tokens_per_rank", "checked", "hidden", "topk_ids", "table",
                       "load_counts")
_COMBINE_ARGUMENTS = ("handle", "expert_out", "topk_weights")

# Dispatches that went through, per process group: the sequence number every
# rank must agree on. One that raised does not count, so that ranks that met
# out of step (one in dispatch(), one in combine()) are in step again.
_SEQUENCES = {}


def _sequence_key(group):
    return dist.group.WORLD if group is None else group


class DispatchHandle:
    """What combine() needs to bring one dispatch()'s rows back.

    Attributes:
        group: the process group of the dispatch.
        sequence: the dispatch's number on its group (the same on every rank).
        physical_ids: (T, K) the physical slot of every choice (dtype of topk_ids).
        num_tokens, top_k, num_shared_rows: T, K and T or 0.
        num_received: N, the rows dispatch() returned (W * C in capacity mode).
        slot_counts: (S,) int64 on the device, real rows received per local
            slot (for a grouped GEMM; all 0 on a shared-expert rank).
        capacity: C rows per (source, destination) pair, or None (uneven).
        checked: whether the headers are read on the host.
        status: one-element int64 device tensor, nonzero when the dispatch
            failed unchecked (see the module docstring); 0 when checked.
    Uneven mode also: send_order ((T*K + T_shared,) int64: row i sent, in
    destination order, is row send_order[i] of the list [(b, k) in (token, k)
    order, then one shared-expert row per token when n > 0]), send_splits and
    recv_splits (rows sent to / received from each rank). Capacity mode:
    positions ((T*K + T_shared,) int64, where each of that list's rows went
    in the (W * C) rows sent).
    """

    def __init__(self, group, sequence, physical_ids, num_tokens, top_k, num_shared_rows,
                 device, num_received, slot_counts, *, capacity=None, checked=True, status=None,
                 send_order=None, send_splits=None, recv_splits=None, positions=None):
        self.group = group
        self.sequence = sequence
        self.physical_ids = physical_ids
        self.num_tokens = num_tokens
        self.top_k = top_k
        self.num_shared_rows = num_shared_rows
        self.device = device
        self.num_received = num_received
        self.slot_counts = slot_counts
        self.capacity = capacity
        self.checked = checked
        self.status = status if status is not None else torch.zeros(1, dtype=torch.int64,
                                                                    device=device)
        self.send_order = send_order
        self.send_splits = send_splits
        self.recv_splits = recv_splits
        self.positions = positions
        self.combined = False

    def __repr__(self):
        mode = ("capacity=%d" % self.capacity if self.capacity is not None else
                "send_splits=%s, recv_splits=%s" % (self.send_splits, self.recv_splits))
        return "DispatchHandle(sequence=%d, num_tokens=%d, top_k=%d, num_received=%d, %s)" % (
            self.sequence, self.num_tokens, self.top_k, self.num_received, mode)


_Request = collections.namedtuple(
    "_Request", "tensors single topk_ids table layout num_tokens top_k num_shared "
                "moe_world_size moe_rank num_slots num_experts capacity fingerprint")


def dispatch(hidden, topk_ids, table, *, slots_per_rank, balance_mode=0, group=None,
             load_counts=None, shared_expert_rank_num=0, max_tokens_per_rank=None, checked=None):
    """Sends every token's hidden row to the ranks that hold its experts' replicas.

    Args:
        hidden: (T, H) tensor of any dtype, this rank's tokens, or a tuple of
            (T, ...) tensors that travel together (e.g. fp8 x and its
            per-token scales); T may be 0 and may differ between ranks;
            dtypes and row shapes must agree.
        topk_ids: (T, K) int32 or int64 logical expert ids, same device; K
            must agree.
        table: (E, F) int32 eplb_table (int64 accepted when its values fit)
            on hidden's device, the same on every rank, or a
            moe_eplb.PreparedTable prepared for this rank (local_rank_id =
            this rank's MoE index, world_size = M, num_physical_experts =
            M * slots_per_rank, this balance_mode).
        slots_per_rank: S, slots per MoE rank.
        balance_mode: the replica rule, as in update_expert(): 0 by rank, 1 by
            token, 2 vLLM's hash of the token index.
        group: the process group (default: the world).
        load_counts: optional (M * S,) int64 or int32 tensor on hidden's
            device; each of this rank's choices adds 1 at its physical slot,
            once the dispatch went through (not when it raised).
        shared_expert_rank_num: n, leading ranks that host the shared expert
            and no slots (see Ranks in the module docstring).
        max_tokens_per_rank: None (uneven mode) or N >= 1 (capacity mode,
            every rank's T <= N; see the module docstring).
        checked: None (True unless a CUDA graph is being captured), True, or
            False (capacity mode only: no host read; see the module docstring).

    Returns:
        recv_hidden: (N, H) the rows routed to this rank (a tuple like hidden
            when hidden is one), grouped by source rank, each source's rows in
            (token, k) order; capacity mode: (W * C, ...), padded.
        recv_slot: (N,) int64 local slot in [0, S), SHARED_ROW (-1) for a
            shared-expert row, PADDING_ROW (-2) for padding.
        handle: a DispatchHandle for combine().

    The physical slot of choice (b, k) is p = update_expert(topk_ids, table,
    local_rank_id, M, balance_mode)[b, k] and lives on group rank n + p // S
    as local slot p % S. Raises ValueError (a bad argument on any rank, or
    ranks that disagree), IndexError (an id the table cannot map, on any
    rank), RuntimeError (no process group). Forward only: no gradient flows
    through the exchange.
    """
    rank, world_size = group_ranks("dispatch", group)
    with normal_tensors():  # buffers the backends write; the outputs are normal tensors
        return _dispatch(rank, world_size, hidden, topk_ids, table, slots_per_rank,
                         balance_mode, group, load_counts, shared_expert_rank_num,
                         max_tokens_per_rank, checked)


def _dispatch(rank, world_size, hidden, topk_ids, table, slots_per_rank, balance_mode, group,
              load_counts, shared_expert_rank_num, max_tokens_per_rank, checked):
    sequence = _SEQUENCES.get(_sequence_key(group), 0)
    agreement = Agreement("dispatch", _DISPATCH_ARGUMENTS)
    request = None
    with agreement.checking():
        request = _check_dispatch(rank, world_size, hidden, topk_ids, table, slots_per_rank,
                                  balance_mode, load_counts, shared_expert_rank_num,
                                  max_tokens_per_rank, checked)
        checked = _resolve_checked(checked, request.tensors[0].device)
    device = request.tensors[0].device if agreement.ok else _device_of(hidden, group)
    # A rank whose own argument is bad reads the header (and raises) even in
    # unchecked mode: peers that passed the same argument do the same.
    checked = checked or not agreement.ok
    _agree_on_dispatch(agreement, request, sequence, slots_per_rank, balance_mode,
                       shared_expert_rank_num, max_tokens_per_rank, device)
    routed = _route(request, rank, balance_mode, slots_per_rank, device,
                    load_counts) if agreement.ok else None

    header = _header(agreement, world_size, device)
    if routed is not None:
        header[:, _ROWS] = routed.rows_per_rank
        header[:, _BAD] = routed.error_counter
    received_header = _exchange_header(header, group)
    if checked:
        host = torch.cat([header[:, _ROWS], received_header.reshape(-1)]).tolist()  # the sync
        records = [host[world_size + source * _HEADER_WIDTH:
                        world_size + (source + 1) * _HEADER_WIDTH]
                   for source in range(world_size)]
        agreement.resolve([record[_RECORD:_RECORD + agreement.width] for record in records],
                          "no rows were exchanged")
        _raise_bad_ids(records, routed.map_error)
        status = torch.zeros(1, dtype=torch.int64, device=device)
        send_splits, recv_splits = host[:world_size], [record[_ROWS] for record in records]
    else:
        status = agreement.device_status(
            received_header[:, _RECORD:_RECORD + agreement.width]) | \
            (received_header[:, _BAD] != 0).any().to(torch.int64).reshape(1)
        send_splits = recv_splits = None
    _SEQUENCES[_sequence_key(group)] = sequence + 1
    if load_counts is not None:
        with torch.inference_mode():  # the caller's tensor, made in either mode
            load_counts.add_((routed.counts * (status == 0)).to(load_counts.dtype))

    if request.capacity is None:
        return _exchange_uneven(request, routed, group, sequence, send_splits, recv_splits,
                                slots_per_rank, device)
    return _exchange_capacity(request, routed, group, sequence, received_header, status, checked,
                              world_size, slots_per_rank, device)


def _header(agreement, world_size, device):
    """A (W, _HEADER_WIDTH) int64 header holding the agreement's record."""
    assert _RECORD + agreement.width <= _HEADER_WIDTH, "widen _HEADER_WIDTH"
    header = torch.zeros((world_size, _HEADER_WIDTH), dtype=torch.int64, device=device)
    agreement.write(header[:, _RECORD:_RECORD + agreement.width])
    return header


def _exchange_header(header, group):
    received = torch.empty_like(header)
    dist.all_to_all_single(received, header, group=group)
    return received


def _resolve_checked(checked, device):
    if checked is None:
        return not _capturing(device)
    return checked


def _capturing(device):
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _device_of(hidden, group):
    """The device to exchange the header on when the arguments are bad."""
    first = hidden[0] if isinstance(hidden, (tuple, list)) and hidden else hidden
    if isinstance(first, torch.Tensor) and first.device == communication_device(group):
        return first.device
    return communication_device(group)


def _hidden_tensors(hidden):
    """hidden as a list of (T, ...) tensors."""
    if isinstance(hidden, torch.Tensor):
        check_tensor("dispatch", "hidden", hidden, 2, "(T, H)")
        return [hidden]
    if not isinstance(hidden, (tuple, list)) or not hidden or not all(
            isinstance(t, torch.Tensor) for t in hidden):
        fail("dispatch", "hidden", "hidden must be a tensor (T, H) or a tuple of (T, ...) "
             "tensors, got %s", type(hidden).__name__)
    tensors = list(hidden)
    for idx, tensor in enumerate(tensors):
        if tensor.dim() < 1 or tensor.shape[0] != tensors[0].shape[0]:
            fail("dispatch", "hidden", "hidden[%d] must be (T, ...) with T = %d (hidden[0]'s "
                 "rows), got shape %s", idx, tensors[0].shape[0], tuple(tensor.shape))
        check_device("dispatch", "hidden", tensor, tensors[0].device, "hidden[0]'s device")
    return tensors


def _check_dispatch(rank, world_size, hidden, topk_ids, table, slots_per_rank, balance_mode,
                    load_counts, shared_expert_rank_num, max_tokens_per_rank, checked):
    """This rank's arguments, checked without communicating; raises BadArgument."""
    check_int("dispatch", "shared_expert_rank_num", shared_expert_rank_num, 0, world_size - 1)
    check_int("dispatch", "slots_per_rank", slots_per_rank, 1, 2**31 - 1)
    check_int("dispatch", "balance_mode", balance_mode, 0, 2)
    if max_tokens_per_rank is not None:
        check_int("dispatch", "max_tokens_per_rank", max_tokens_per_rank, 1, 2**31 - 1)
    if checked is not None and not isinstance(checked, bool):
        fail("dispatch", "checked", "checked must be None, True or False, got %r", checked)
    if checked is False and max_tokens_per_rank is None:
        fail("dispatch", "checked", "checked=False needs capacity mode (max_tokens_per_rank=N): "
             "the uneven mode reads its row counts on the host anyway")
    tensors = _hidden_tensors(hidden)
    for idx, tensor in enumerate(tensors):
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.dtype == torch.bool:
            fail("dispatch", "hidden", "hidden%s must be a dense strided tensor of numbers, got "
                 "%s%s", "" if len(tensors) == 1 else "[%d]" % idx, tensor.dtype,
                 " (quantized)" if tensor.is_quantized else "")
    device = tensors[0].device
    num_tokens = tensors[0].shape[0]
    check_tensor("dispatch", "topk_ids", topk_ids, 2, "(T, K) with T = %d" % num_tokens)
    if topk_ids.dtype not in (torch.int32, torch.int64):
        fail("dispatch", "topk_ids", "topk_ids must be int32 or int64, got %s", topk_ids.dtype)
    if topk_ids.shape[0] != num_tokens or topk_ids.shape[1] < 1:
        fail("dispatch", "topk_ids", "topk_ids must be (T, K) with T = %d (hidden's rows) and "
             "K >= 1, got shape %s", num_tokens, tuple(topk_ids.shape))
    check_device("dispatch", "topk_ids", topk_ids, device)
    if max_tokens_per_rank is not None and num_tokens > max_tokens_per_rank:
        fail("dispatch", "max_tokens_per_rank", "this rank has T = %d tokens, more than "
             "max_tokens_per_rank = %d (capacity mode never drops a token)", num_tokens,
             max_tokens_per_rank)
    num_shared = shared_expert_rank_num
    moe_world_size = world_size - num_shared
    moe_rank = rank - num_shared if rank >= num_shared else rank % moe_world_size
    num_slots = moe_world_size * slots_per_rank
    table, num_experts, fingerprint = _check_table(table, num_slots=num_slots,
                                                   moe_rank=moe_rank,
                                                   moe_world_size=moe_world_size,
                                                   balance_mode=balance_mode, device=device)
    _check_load_counts(load_counts, num_slots, device)
    top_k = topk_ids.shape[1]
    capacity = None if max_tokens_per_rank is None else max_tokens_per_rank * top_k
    return _Request(tensors, isinstance(hidden, torch.Tensor), topk_ids, table,
                    RowLayout.of(tensors),
                    num_tokens, top_k, num_shared, moe_world_size, moe_rank, num_slots,
                    num_experts, capacity, fingerprint)


def _check_table(table, *, num_slots, moe_rank, moe_world_size, balance_mode, device):
    """(the table to map through, E, its fingerprint) of an (E, F) table or
    a PreparedTable."""
    if isinstance(table, PreparedTable):
        check_device("dispatch", "table", table.routes, device)
        if table.num_physical_experts != num_slots:
            fail("dispatch", "table", "table is a PreparedTable for %d physical slots, expected "
                 "%d (MoE ranks * slots_per_rank)", table.num_physical_experts, num_slots)
        if table.balance_mode != balance_mode:
            fail("dispatch", "table", "table is a PreparedTable for balance_mode %d, got "
                 "balance_mode=%d", table.balance_mode, balance_mode)
        if balance_mode == 0 and (table.local_rank_id, table.world_size) != (moe_rank,
                                                                             moe_world_size):
            fail("dispatch", "table", "table is a PreparedTable for local_rank_id %d of "
                 "world_size %d, expected %d of %d (this rank's MoE index and the MoE rank count)",
                 table.local_rank_id, table.world_size, moe_rank, moe_world_size)
        return table, table.routes.shape[0], table.fingerprint
    check_tensor("dispatch", "table", table, 2, "(E, F) int32 or a moe_eplb.PreparedTable")
    if table.dtype not in (torch.int32, torch.int64):
        fail("dispatch", "table", "table must be int32 (or int64 with int32 values), got %s",
             table.dtype)
    check_device("dispatch", "table", table, device)
    num_experts, num_columns = table.shape
    if not 1 <= num_experts <= num_slots or num_columns < 2:
        fail("dispatch", "table", "table must be (E, F) with 1 <= E <= %d (MoE ranks * "
             "slots_per_rank) and F >= 2, got shape %s", num_slots, tuple(table.shape))
    # The fingerprint names what is routed: an int64 value that becomes -1 on
    # a device differs from a peer's value, as it routes differently.
    table = int32_table_argument("dispatch", "table", table)
    return table, num_experts, table_fingerprint(table)


def _check_load_counts(load_counts, num_slots, device):
    if load_counts is None:
        return
    check_tensor("dispatch", "load_counts", load_counts, 1, "(%d,)" % num_slots)
    if load_counts.dtype not in (torch.int32, torch.int64):
        fail("dispatch", "load_counts", "load_counts must be int32 or int64, got %s",
             load_counts.dtype)
    if load_counts.shape[0] != num_slots:
        fail("dispatch", "load_counts", "load_counts must have %d elements (MoE ranks * "
             "slots_per_rank), got %d", num_slots, load_counts.shape[0])
    check_device("dispatch", "load_counts", load_counts, device)


def _agree_on_dispatch(agreement, request, sequence, slots_per_rank, balance_mode,
                       shared_expert_rank_num, max_tokens_per_rank, device):
    ok = agreement.ok
    agreement.agree(_CALL, _DISPATCH_CALL)
    agreement.agree("the dispatch it is (its sequence number on the group: every rank must "
                    "call dispatch() on the group equally often)", sequence)
    agreement.agree("max_tokens_per_rank (-1: uneven mode)",
                    max_tokens_per_rank if ok and max_tokens_per_rank is not None else -1)
    agreement.agree("hidden size", request.tensors[0].shape[1]
                    if ok and request.tensors[0].dim() > 1 else 0)
    agreement.agree("hidden's dtypes and row shapes",
                    layout_fingerprint(request.tensors) if ok else 0, shown=False)
    agreement.agree("K (topk_ids' columns)", request.top_k if ok else 0)
    agreement.agree("the number of experts", request.num_experts if ok else 0)
    agreement.agree("slots_per_rank", slots_per_rank if ok else 0)
    agreement.agree("balance_mode", balance_mode if ok and is_int(balance_mode) else 0)
    agreement.agree("shared_expert_rank_num", shared_expert_rank_num if ok else 0)
    agreement.agree("the table (its counts and replica slots)",
                    request.fingerprint if ok else torch.zeros(1, dtype=torch.int64,
                                                               device=device), shown=False)


_Routed = collections.namedtuple(
    "_Routed", "physical destination source_row slot order rows_per_rank counts error_counter "
               "map_error")


def _route(request, rank, balance_mode, slots_per_rank, device, load_counts):
    """Maps the choices (counting bad elements rather than raising, so that
    every rank reaches the header) and orders the rows by destination."""
    counts = None
    if load_counts is not None:
        counts = torch.zeros(request.num_slots, dtype=torch.int64, device=device)
    error_counter = torch.zeros(1, dtype=torch.int32, device=device)
    map_error = None
    topk_ids, table = request.topk_ids, request.table
    try:
        if isinstance(table, PreparedTable):
            physical = table.map(topk_ids, load_counts=counts, error_counter=error_counter)
        else:
            physical = update_expert(topk_ids, table, request.moe_rank,
                                     request.moe_world_size, balance_mode=balance_mode,
                                     num_physical_experts=request.num_slots, load_counts=counts,
                                     error_counter=error_counter)
    except IndexError as error:  # the CPU op names the first bad (b, k); counts unchanged
        map_error = error
        physical = torch.zeros_like(topk_ids)
        error_counter.fill_(1)
        if counts is not None:
            counts.zero_()
    num_tokens, top_k, num_shared = request.num_tokens, request.top_k, request.num_shared
    flat = physical.reshape(-1).long()
    # A bad element on CUDA (-1) goes to the trash destination W, never sent.
    world_size = request.moe_world_size + num_shared
    destination = torch.where(flat >= 0, num_shared + torch.div(flat, slots_per_rank,
                                                                rounding_mode="floor"),
                              torch.full_like(flat, world_size))
    slot = torch.remainder(flat, slots_per_rank)
    source_row = torch.arange(num_tokens, device=device).unsqueeze(1).expand(
        num_tokens, top_k).reshape(-1)  # not repeat_interleave, which may read the host
    if num_shared:
        destination = torch.cat([destination, torch.full((num_tokens,), rank % num_shared,
                                                         dtype=torch.int64, device=device)])
        slot = torch.cat([slot, torch.full((num_tokens,), SHARED_ROW, dtype=torch.int64,
                                           device=device)])
        source_row = torch.cat([source_row, torch.arange(num_tokens, device=device)])
    destination, order = torch.sort(destination, stable=True)
    rows_per_rank = torch.zeros(world_size + 1, dtype=torch.int64, device=device).scatter_add_(
        0, destination, torch.ones_like(destination))[:world_size]
    return _Routed(physical, destination, source_row, slot, order, rows_per_rank, counts,
                   error_counter, map_error)


def _raise_bad_ids(records, map_error):
    bad_ranks = [source for source, record in enumerate(records) if record[_BAD]]
    if bad_ranks:
        detail = (": %s" % map_error) if map_error is not None else ""
        raise IndexError("dispatch(): rank(s) %s had topk_ids elements the table cannot map "
                         "(expert id outside [0, E), or a bad table row); no rows were "
                         "exchanged%s" % (bad_ranks, detail))


def _exchange_uneven(request, routed, group, sequence, send_splits, recv_splits, slots_per_rank,
                     device):
    layout = request.layout
    num_received = sum(recv_splits)
    send = layout.pack(request.tensors, routed.source_row.index_select(0, routed.order))
    received = torch.empty((num_received, layout.record_bytes), dtype=torch.uint8, device=device)
    dist.all_to_all_single(received, send, output_split_sizes=recv_splits,
                           input_split_sizes=send_splits, group=group)
    recv_slot = torch.empty(num_received, dtype=torch.int64, device=device)
    dist.all_to_all_single(recv_slot, routed.slot.index_select(0, routed.order),
                           output_split_sizes=recv_splits, input_split_sizes=send_splits,
                           group=group)
    handle = DispatchHandle(group, sequence, routed.physical, request.num_tokens, request.top_k,
                            request.num_tokens if request.num_shared else 0, device, num_received,
                            _slot_counts(recv_slot, slots_per_rank), send_order=routed.order,
                            send_splits=send_splits, recv_splits=recv_splits)
    return _hidden_like(request, layout.unpack(received, contiguous=True)), recv_slot, handle


def _exchange_capacity(request, routed, group, sequence, received_header, status, checked,
                       world_size, slots_per_rank, device):
    layout, capacity = request.layout, request.capacity
    # Where each row goes: block `destination` (W: the trash block), at its
    # rank among that destination's rows (they are sorted by destination).
    starts = torch.cumsum(routed.rows_per_rank, 0) - routed.rows_per_rank
    starts = torch.cat([starts, starts.new_zeros(1)])
    index = torch.arange(routed.destination.shape[0], device=device)
    position = routed.destination * capacity + (index - starts[routed.destination])
    position = torch.where(routed.destination < world_size, position,
                           torch.full_like(position, world_size * capacity))
    # The send buffers as gathers (a scatter of bytes is slow on the CPU):
    # each of the W * C positions takes its row, or the zero row appended last.
    num_rows = routed.destination.shape[0]
    row_at = torch.full(((world_size + 1) * capacity,), num_rows, dtype=torch.int64,
                        device=device).scatter_(0, position, index)[:world_size * capacity]
    rows = layout.pack(request.tensors, routed.source_row.index_select(0, routed.order))
    send = torch.cat([rows, rows.new_zeros((1, rows.shape[1]))]).index_select(0, row_at)
    slots = routed.slot.index_select(0, routed.order)
    send_slot = torch.cat([slots, slots.new_full((1,), PADDING_ROW)]).index_select(0, row_at)
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    recv_slot = torch.empty_like(send_slot)
    dist.all_to_all_single(recv_slot, send_slot, group=group)
    if not checked:  # a failed dispatch delivers padding only
        recv_slot = torch.where(status == 0, recv_slot, torch.full_like(recv_slot, PADDING_ROW))
    positions = torch.empty_like(position).index_copy_(0, routed.order, position)
    handle = DispatchHandle(group, sequence, routed.physical, request.num_tokens, request.top_k,
                            request.num_tokens if request.num_shared else 0, device,
                            world_size * capacity, _slot_counts(recv_slot, slots_per_rank),
                            capacity=capacity, checked=checked, status=status,
                            positions=positions)
    return _hidden_like(request, layout.unpack(received, contiguous=True)), recv_slot, handle


def _slot_counts(recv_slot, slots_per_rank):
    """(S,) rows per local slot, without reading the device."""
    real = recv_slot >= 0
    return torch.zeros(slots_per_rank, dtype=torch.int64, device=recv_slot.device).scatter_add_(
        0, torch.where(real, recv_slot, torch.zeros_like(recv_slot)), real.to(torch.int64))


def _hidden_like(request, tensors):
    return tensors[0] if request.single else tuple(tensors)


def combine(expert_out, handle, topk_weights):
    """Sends the expert outputs back and sums them per token.

    Args:
        expert_out: (N, H') floating point, one output row per row that
            dispatch() returned, in that order (padding rows in capacity mode
            are ignored); H' and the dtype must agree across ranks.
        handle: the DispatchHandle of that dispatch() (each handle once).
        topk_weights: (T, K) floating point router weights, same device.

    Returns:
        (T, H') in expert_out's dtype:
        out[b] = sum over k, in k order, of topk_weights[b, k] * row(b, k),
        plus the shared-expert row (weight 1) when shared_expert_rank_num > 0.
        Accumulated in float64 for float64 expert_out, otherwise in float32,
        each term rounded once (a product, then a sum: no fused multiply-add).
        NaN everywhere after an unchecked dispatch or combine that failed.

    Raises ValueError on every rank alike when a rank's argument is bad, or
    the ranks disagree on the dispatch they combine (handles of different
    dispatches, e.g. micro-batches out of step), on H' or on the dtype.
    """
    if not isinstance(handle, DispatchHandle):  # no group to tell: raise here
        raise ValueError("combine(): handle must be the DispatchHandle that dispatch() returned, "
                         "got %s" % type(handle).__name__)
    with normal_tensors():  # buffers the backends write; the output is a normal tensor
        return _combine(expert_out, handle, topk_weights)


def _combine(expert_out, handle, topk_weights):
    world_size = dist.get_world_size(handle.group)
    agreement = Agreement("combine", _COMBINE_ARGUMENTS)
    with agreement.checking():
        _check_combine(expert_out, handle, topk_weights)
    ok = agreement.ok
    checked = handle.checked or not ok  # as in dispatch()
    agreement.agree(_CALL, _COMBINE_CALL)
    agreement.agree("the dispatch it combines (its sequence number on the group)",
                    handle.sequence)
    agreement.agree("expert_out's width H'", expert_out.shape[1] if ok else -1)
    agreement.agree("expert_out's dtype", dtype_code(expert_out.dtype) if ok else -1)
    records = _exchange_header(_header(agreement, world_size, handle.device),
                               handle.group)[:, _RECORD:_RECORD + agreement.width]
    if checked:
        agreement.resolve(records.tolist(), "no rows were exchanged")
        status = handle.status
    else:
        status = handle.status | agreement.device_status(records)
    handle.combined = True
    rows = _return_rows(expert_out, handle, world_size)
    num_tokens, top_k, width = handle.num_tokens, handle.top_k, expert_out.shape[1]
    accumulate = torch.float64 if expert_out.dtype == torch.float64 else torch.float32
    choices = rows[:num_tokens * top_k].reshape(num_tokens, top_k, width).to(accumulate)
    weights = topk_weights.to(accumulate)
    out = torch.zeros((num_tokens, width), dtype=accumulate, device=handle.device)
    for k in range(top_k):
        out.add_(weights[:, k:k + 1] * choices[:, k])
    if handle.num_shared_rows:
        out.add_(rows[num_tokens * top_k:].to(accumulate))
    if not handle.checked:
        out = torch.where(status == 0, out, torch.full_like(out, float("nan")))
    return out.to(expert_out.dtype)


def _check_combine(expert_out, handle, topk_weights):
    if handle.combined:
        fail("combine", "handle", "handle was already combined (each dispatch() is combined "
             "once; with micro-batches, combine each batch's output with its own handle)")
    check_tensor("combine", "expert_out", expert_out, 2, "(N, H) with N = %d"
                 % handle.num_received)
    if not expert_out.is_floating_point():
        fail("combine", "expert_out", "expert_out must be floating point, got %s",
             expert_out.dtype)
    if expert_out.shape[0] != handle.num_received:
        fail("combine", "expert_out", "expert_out must have N = %d rows (the rows dispatch() "
             "returned), got shape %s", handle.num_received, tuple(expert_out.shape))
    check_device("combine", "expert_out", expert_out, handle.device, "the dispatch's device")
    num_tokens, top_k = handle.num_tokens, handle.top_k
    check_tensor("combine", "topk_weights", topk_weights, 2, "(T, K) = (%d, %d)"
                 % (num_tokens, top_k))
    if tuple(topk_weights.shape) != (num_tokens, top_k):
        fail("combine", "topk_weights", "topk_weights must be (T, K) = (%d, %d), got shape %s",
             num_tokens, top_k, tuple(topk_weights.shape))
    if not topk_weights.is_floating_point():
        fail("combine", "topk_weights", "topk_weights must be floating point, got %s",
             topk_weights.dtype)
    check_device("combine", "topk_weights", topk_weights, handle.device, "the dispatch's device")


def _return_rows(expert_out, handle, world_size):
    """The expert rows back at their sources, in the order of the list
    [(b, k) in (token, k) order, then the shared rows]."""
    data = row_bytes(expert_out)
    if handle.capacity is None:
        returned = torch.empty((handle.send_order.shape[0], data.shape[1]), dtype=torch.uint8,
                               device=handle.device)
        dist.all_to_all_single(returned, data, output_split_sizes=handle.send_splits,
                               input_split_sizes=handle.recv_splits, group=handle.group)
        # Back to list order as a gather (a scatter of bytes is slow on the CPU).
        order = handle.send_order
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(
            order.shape[0], device=order.device))
        rows = returned.index_select(0, inverse)
    else:
        returned = torch.empty_like(data)
        dist.all_to_all_single(returned, data, group=handle.group)
        # Trash rows (W * C) come back as zeros: they were never sent.
        padded = torch.cat([returned, returned.new_zeros((1, returned.shape[1]))])
        rows = padded.index_select(0, handle.positions.clamp(max=world_size * handle.capacity))
    return rows.view(expert_out.dtype).view(rows.shape[0], expert_out.shape[1])

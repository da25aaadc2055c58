"""migrate_experts: move every expert's tensors from one placement to the next.

Design note: validate, stage, agree, commit.

1. Validate. Each rank checks its own arguments and computes
   moe_eplb.migration_plan() (C++; pure and deterministic) without
   communicating. One all_gather of a small int64 record per rank then gives
   every rank every rank's verdict and the hashes of its tables and tensor
   layout, so all ranks reach the same decision: all raise ValueError (an
   argument was bad somewhere, or the tables differ), or all go on.
2. Stage. The plan's receives are cut into rounds that every rank derives
   identically from the plan, each run as one batch_isend_irecv. Senders read
   old slot contents; received experts go into a holding buffer, never into a
   slot. Since no slot is written before the commit, a slot that is both a
   source and a destination, or a cycle of moves, needs no special care.
3. Agree. Every round starts with a vote (an all_gather of one flag), so a
   rank that fails between rounds makes every rank raise at once, and the
   group stays usable. A rank that dies or hangs makes its peers' next
   collective fail, at the latest after the group's timeout. A last vote
   follows the transfers.
4. Commit. Only after the last vote does anything write slots, from memory
   that is already allocated (local copies are snapshotted before the vote).
   A rank that raised at any point left every slot as it was. The commit
   cannot fail: everything that could make a write fail is checked in step
   1 (memory shared by several elements, the device, the layout), the
   commit's own operation is tried on every tensor (its first element written
   with what it holds),
   and the writes run inside torch.inference_mode(), where torch lets any
   tensor be updated in place (also one made inside the mode, or a leaf
   that requires grad). Everything else runs outside inference mode
   (normal_tensors()): the backends write received data from their own
   threads, where an inference tensor may not be written.

Bytes. Every message is one tensor's slot row as bytes
(moe_eplb.distributed._transport.row_bytes): bfloat16, float8, int8 weights
and their scales move bit-exact on gloo and NCCL alike. A contiguous slot
row is sent as it is, without a copy (the commit, the only write, comes
after every transfer); a row of a non-contiguous tensor through a staging row.

Memory. The transaction needs every received expert held until the commit:
this rank's received count times the slot's bytes (a whole layer's new
experts, which is what migration_plan() says this rank receives).
`staging_bytes` bounds what one round puts in flight on a rank: the bytes of
the messages it posts in one batch_isend_irecv (sends and receives together,
one slot's bytes each), and so the staging rows of non-contiguous tensors,
which are reused from round to round. A smaller budget means more rounds,
not less holding.
"""
import collections

import torch
import torch.distributed as dist

import moe_eplb

from ._checks import (Agreement, BadArgument, communication_device, int32_table_argument,
                      group_ranks, is_int, layout_fingerprint, normal_tensors, table_fingerprint,
                      writable_problem)
from ._transport import RowLayout, row_bytes

MigrationStats = collections.namedtuple(
    "MigrationStats", "received sent local_copies bytes_received bytes_sent rounds")
MigrationStats.__doc__ = """What migrate_experts() did on this rank.

received, sent: experts received from / sent to other ranks (one message each);
local_copies: slots filled by a copy within this rank; bytes_received,
bytes_sent: those messages' bytes (every tensor's slot bytes together);
rounds: batch_isend_irecv rounds the staging budget needed (the same on every
rank)."""

# Rounds put at most this many slots in flight per rank by default.
_DEFAULT_MESSAGES_PER_ROUND = 8
# The arguments in the order they are checked (Agreement's verdicts).
_ARGUMENTS = ("slots_per_rank", "ranks_per_node", "staging_bytes", "slot_tensors", "old_table",
              "new_table")
_COPY_LOCAL, _RECEIVE, _COPY_RECEIVED = (moe_eplb.MigrationAction.COPY_LOCAL,
                                        moe_eplb.MigrationAction.RECEIVE,
                                        moe_eplb.MigrationAction.COPY_RECEIVED)

# Test seams: when set, called on every rank as _before_round(round_idx)
# before each round's vote, _before_transfer(round_idx) after it, just before
# the round's messages are posted, and _before_commit() before the last vote,
# so tests can make one rank fail mid-migration at each point.
_before_round = None
_before_transfer = None
_before_commit = None


def migrate_experts(slot_tensors, old_table, new_table, *, slots_per_rank, group=None,
                    ranks_per_node=0, staging_bytes=None):
    """Moves expert tensors between placements, in place, on every rank of `group`.

    Args:
        slot_tensors: list of tensors, each (S, ...) with S == slots_per_rank:
            everything per expert that must move together (weights, int8
            weights, scales, biases), this rank's slots; any dtypes and
            shapes, one device (CPU for gloo, CUDA for NCCL), the same dtypes
            and per-slot shapes on every rank.
        old_table, new_table: (E, F) int32 eplb_tables valid for
            world_size * slots_per_rank slots (F may differ), identical on
            every rank; any device.
        slots_per_rank: S.
        group: the process group (default: the world).
        ranks_per_node: ranks per node for source locality (0: one node).
        staging_bytes: bytes one round may put in flight per rank, at least
            one slot's bytes (the sum over slot_tensors of one slot's bytes);
            default 8 slots. Ranks may differ; the smallest wins.

    Afterwards slot s of this rank holds, in every tensor and bitwise, what the
    old placement held for the expert the new table puts at physical id
    rank * S + s (slots no row of new_table names keep their content). It
    follows moe_eplb.migration_plan(), so stats.received is the number of
    distinct experts new to this rank. Every rank must call it.

    Returns:
        MigrationStats for this rank.

    Raises:
        ValueError on every rank, before any transfer, naming the argument:
        a bad argument on any rank, or tables, slots_per_rank, ranks_per_node
        or tensor layouts that differ between ranks.
        RuntimeError (or the failing rank's own exception) on every rank that
        is still running when a rank fails mid-migration; slots unchanged.
    """
    with normal_tensors():
        return _migrate(slot_tensors, old_table, new_table, slots_per_rank, group,
                        ranks_per_node, staging_bytes)


def _migrate(slot_tensors, old_table, new_table, slots_per_rank, group, ranks_per_node,
             staging_bytes):
    rank, world_size = group_ranks("migrate_experts", group)
    device = communication_device(group)
    agreement = Agreement("migrate_experts", _ARGUMENTS)
    layout = plan = None
    messages_per_round = 0
    with agreement.checking():
        layout, plan, messages_per_round = _check_arguments(
            agreement, slot_tensors, old_table, new_table, slots_per_rank, ranks_per_node,
            staging_bytes, world_size, device)
    if not agreement.ok:  # placeholders, so that every rank's record has one shape
        agreement.names, agreement.values, agreement.shown = [], [], []
        for name in _AGREED:
            agreement.agree(name, 0, shown=False)
    # Every rank's record, plus the staging budget it allows (the smallest wins).
    records = torch.empty((world_size, agreement.width + 1), dtype=torch.int64, device=device)
    mine = torch.empty_like(records)
    agreement.write(mine[:, :-1])
    mine[:, -1] = messages_per_round
    dist.all_to_all_single(records, mine, group=group)
    records = records.tolist()
    agreement.resolve([record[:-1] for record in records], "no rank transferred anything")
    rounds = _rounds(plan, world_size, slots_per_rank, min(record[-1] for record in records))
    return _transfer_and_commit(slot_tensors, layout, plan, rounds, rank, world_size,
                                slots_per_rank, device, group)


# What every rank must pass alike, in the order _check_arguments() agrees on them.
_AGREED = ("old_table", "new_table", "slots_per_rank", "ranks_per_node",
           "slot_tensors' dtypes and per-slot shapes")


def _fail(argument, message, *values):
    raise BadArgument("migrate_experts", argument, "%s: %s" % (argument, message % values))


def _check_arguments(agreement, slot_tensors, old_table, new_table, slots_per_rank,
                     ranks_per_node, staging_bytes, world_size, device):
    """Checks every argument on this rank (no communication) and agrees on
    what every rank must share; returns (layout, plan, messages per round)."""
    if not is_int(slots_per_rank) or slots_per_rank < 1:
        _fail("slots_per_rank", "expected an int >= 1, got %r", slots_per_rank)
    if not is_int(ranks_per_node) or ranks_per_node < 0 or (
            ranks_per_node > 0 and world_size % ranks_per_node != 0):
        _fail("ranks_per_node", "expected 0 or an int dividing world_size %d, got %r",
              world_size, ranks_per_node)
    if staging_bytes is not None and (not is_int(staging_bytes) or staging_bytes < 1):
        _fail("staging_bytes", "expected None or an int >= 1, got %r", staging_bytes)
    layout = _check_slot_tensors(slot_tensors, slots_per_rank, device)
    budget = staging_bytes
    if budget is None:
        budget = _DEFAULT_MESSAGES_PER_ROUND * layout.row_bytes
    if budget < layout.row_bytes:
        _fail("staging_bytes", "expected at least one slot's bytes (%d, the sum over "
              "slot_tensors), got %d", layout.row_bytes, budget)
    num_physical = world_size * slots_per_rank
    old_cpu = _check_table("old_table", old_table, world_size, num_physical)
    new_cpu = _check_table("new_table", new_table, world_size, num_physical)
    if new_cpu.shape[0] != old_cpu.shape[0]:
        _fail("new_table", "has %d rows (experts) but old_table has %d", new_cpu.shape[0],
              old_cpu.shape[0])
    try:
        plan = moe_eplb.migration_plan(old_cpu, new_cpu, world_size, slots_per_rank,
                                       ranks_per_node=ranks_per_node,
                                       expert_bytes=layout.row_bytes)
    except (ValueError, RuntimeError) as error:
        raise BadArgument("migrate_experts", "new_table", "new_table: %s" % error) from error
    for name, value in zip(_AGREED, (table_fingerprint(old_cpu), table_fingerprint(new_cpu),
                                     slots_per_rank, ranks_per_node,
                                     layout_fingerprint(slot_tensors))):
        agreement.agree(name, value, shown=name in ("slots_per_rank", "ranks_per_node"))
    return layout, plan, budget // max(layout.row_bytes, 1)


def _check_slot_tensors(slot_tensors, slots_per_rank, device):
    """The slot tensors' RowLayout; every write the commit will make is
    possible (checked, then tried: the first element written with what it holds)."""
    if isinstance(slot_tensors, torch.Tensor) or not isinstance(slot_tensors, (list, tuple)):
        _fail("slot_tensors", "expected a list of tensors, got %s", type(slot_tensors).__name__)
    if not slot_tensors:
        _fail("slot_tensors", "expected at least one tensor, got an empty list")
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        _fail("slot_tensors", "cannot be migrated while a CUDA graph is being captured on the "
              "current stream (migrate between replays)")
    for idx, tensor in enumerate(slot_tensors):
        name = "slot_tensors[%d]" % idx
        if not isinstance(tensor, torch.Tensor):
            _fail("slot_tensors", "%s is a %s, expected a tensor", name, type(tensor).__name__)
        if tensor.layout != torch.strided or tensor.is_quantized:
            _fail("slot_tensors", "%s must be a dense strided tensor, got layout %s%s", name,
                  tensor.layout, " (quantized)" if tensor.is_quantized else "")
        if tensor.dim() < 1 or tensor.shape[0] != slots_per_rank:
            _fail("slot_tensors", "%s has shape %s, expected (slots_per_rank=%d, ...)", name,
                  tuple(tensor.shape), slots_per_rank)
        if tensor.device.type != device.type or (
                device.type == "cuda" and tensor.device.index != device.index):
            _fail("slot_tensors", "%s is on %s, expected %s (the device this group's backend "
                  "communicates on)", name, tensor.device, device)
        problem = writable_problem(tensor)
        if problem is not None:
            _fail("slot_tensors", "%s cannot be written in place: %s", name, problem)
        try:  # the commit's operation, on one element, writing what it holds
            if tensor.numel():
                first = tensor[(0,) * tensor.dim()]
                with torch.inference_mode():
                    first.copy_(first.clone())
        except RuntimeError as error:
            _fail("slot_tensors", "%s cannot be written in place: %s", name, error)
    return RowLayout.of(slot_tensors)


def _check_table(argument, table, world_size, num_physical):
    if not isinstance(table, torch.Tensor):
        _fail(argument, "expected an (E, F) int32 tensor, got %s", type(table).__name__)
    if table.dim() != 2 or table.dtype not in (torch.int32, torch.int64):
        _fail(argument, "expected an (E, F) int32 (or int64) tensor, got %s of shape %s",
              table.dtype, tuple(table.shape))
    table = int32_table_argument("migrate_experts", argument, table.detach().cpu()).contiguous()
    try:
        torch.ops.moe_eplb.prepare_table(table, 0, world_size, num_physical_experts=num_physical)
    except (ValueError, RuntimeError) as error:
        raise BadArgument("migrate_experts", argument, "%s: not valid for world_size %d and %d "
                          "slots: %s" % (argument, world_size, num_physical, error)) from error
    return table


def _rounds(plan, world_size, slots_per_rank, messages_per_round):
    """The plan's receives as rounds, identical on every rank: a list of
    lists of (destination slot, source rank, source slot), physical
    destination order, each rank with at most messages_per_round messages
    (sends plus receives) per round, first fit."""
    actions = plan.action.tolist()
    source_ranks = plan.source_rank.tolist()
    source_slots = plan.source_slot.tolist()
    rounds, in_flight = [], []
    for physical, action in enumerate(actions):
        if action != _RECEIVE:
            continue
        dst_rank, src_rank = physical // slots_per_rank, source_ranks[physical]
        round_idx = 0
        while round_idx < len(rounds) and (in_flight[round_idx][dst_rank] >= messages_per_round or
                                           in_flight[round_idx][src_rank] >= messages_per_round):
            round_idx += 1
        if round_idx == len(rounds):
            rounds.append([])
            in_flight.append([0] * world_size)
        rounds[round_idx].append((physical, src_rank, source_slots[physical]))
        in_flight[round_idx][dst_rank] += 1
        in_flight[round_idx][src_rank] += 1
    return rounds


def _transfer_and_commit(slot_tensors, layout, plan, rounds, rank, world_size, slots_per_rank,
                         device, group):
    first = rank * slots_per_rank
    actions = plan.action[first:first + slots_per_rank].tolist()
    source_slots = plan.source_slot[first:first + slots_per_rank].tolist()
    receive_slots = [s for s, action in enumerate(actions) if action == _RECEIVE]
    holding_row = {s: row for row, s in enumerate(receive_slots)}
    # One message per tensor and expert: a contiguous slot row is sent as it
    # is (no copy), another through a staging row; received rows wait here.
    holding = [torch.empty((len(receive_slots), part.size), dtype=torch.uint8, device=device)
               for part in layout.parts]
    sends_per_round = [sum(1 for _, src, _ in moves if src == rank) for moves in rounds]
    staging = [None if tensor.is_contiguous() else
               torch.empty((max(sends_per_round, default=0), part.size), dtype=torch.uint8,
                           device=device) for tensor, part in zip(slot_tensors, layout.parts)]
    num_sent = 0
    for round_idx, moves in enumerate(rounds):
        ops = _vote_then(lambda: _post_round(round_idx, moves, slot_tensors, staging, holding,
                                             holding_row, rank, slots_per_rank),
                         "before round %d of %d" % (round_idx + 1, len(rounds)), rank,
                         world_size, device, group)
        num_sent += sum(1 for op in ops if op.op == dist.isend) // len(slot_tensors)
        if _before_transfer is not None:
            _before_transfer(round_idx)
        try:
            for work in dist.batch_isend_irecv(ops) if ops else []:
                work.wait()
        except Exception as error:
            raise RuntimeError("migrate_experts(): the transfers of round %d of %d failed on rank "
                               "%d (a peer failed or is gone past the group's timeout): %s; no "
                               "slot on this rank was changed"
                               % (round_idx + 1, len(rounds), rank, error)) from error
    commit = _vote_then(lambda: _prepare_commit(slot_tensors, layout, actions, source_slots,
                                                holding, holding_row, device),
                        "before the commit", rank, world_size, device, group)
    commit()
    num_local = sum(1 for action in actions if action in (_COPY_LOCAL, _COPY_RECEIVED))
    return MigrationStats(len(receive_slots), num_sent, num_local,
                          len(receive_slots) * layout.row_bytes, num_sent * layout.row_bytes,
                          len(rounds))


def _vote_then(prepare, when, rank, world_size, device, group):
    """Runs prepare() (local work that may fail), then votes: returns its
    result when every rank succeeded, else raises on every rank."""
    error = None
    result = None
    try:
        result = prepare()
    except Exception as caught:  # voted on, then re-raised below
        error = caught
    flags = [torch.empty(1, dtype=torch.int64, device=device) for _ in range(world_size)]
    try:
        dist.all_gather(flags, torch.tensor([0 if error is None else 1], dtype=torch.int64,
                                            device=device), group=group)
    except Exception as vote_error:
        raise RuntimeError("migrate_experts(): the vote %s failed on rank %d (a peer failed or is "
                           "gone past the group's timeout): %s; no slot on this rank was changed"
                           % (when, rank, vote_error)) from (error or vote_error)
    if error is not None:
        raise error
    failed = [r for r, flag in enumerate(flags) if flag.item() != 0]
    if failed:
        raise RuntimeError("migrate_experts(): rank(s) %s failed %s; no slot on any rank was "
                           "changed" % (failed, when))
    return result


def _post_round(round_idx, moves, slot_tensors, staging, holding, holding_row, rank,
                slots_per_rank):
    """This rank's P2P ops of one round, one per expert and tensor, in the
    round's order (so the k-th message between two ranks matches on both)."""
    if _before_round is not None:
        _before_round(round_idx)
    ops = []
    num_staged = 0
    for physical, src_rank, src_slot in moves:
        dst_rank = physical // slots_per_rank
        if src_rank == rank:
            for tensor, rows in zip(slot_tensors, staging):
                if rows is None:
                    message = row_bytes(tensor)[src_slot]
                else:
                    message = rows[num_staged]
                    message.view(tensor.dtype).view(tensor.shape[1:]).copy_(tensor[src_slot])
                ops.append(dist.P2POp(dist.isend, message, dst_rank))
            num_staged += 1
        elif dst_rank == rank:
            row = holding_row[physical % slots_per_rank]
            ops += [dist.P2POp(dist.irecv, rows[row], src_rank) for rows in holding]
    return ops


def _prepare_commit(slot_tensors, layout, actions, source_slots, holding, holding_row, device):
    """Allocates everything the commit needs (snapshots of local copies'
    sources) and returns the commit: one copy_ per tensor and changed slot,
    the operation _check_slot_tensors() tried, from memory already there."""
    if _before_commit is not None:
        _before_commit()
    values = [rows.view(part.dtype).view((rows.shape[0],) + part.row_shape)
              for rows, part in zip(holding, layout.parts)]  # the received bytes, typed
    local = [slot for slot, action in enumerate(actions) if action == _COPY_LOCAL]
    local_sources = torch.tensor([source_slots[slot] for slot in local], dtype=torch.int64,
                                 device=device)
    snapshots = [tensor.index_select(0, local_sources) for tensor in slot_tensors]
    writes = [(slot, row, True) for row, slot in enumerate(local)]
    writes += [(slot, holding_row[slot if action == _RECEIVE else source_slots[slot]], False)
               for slot, action in enumerate(actions) if action in (_RECEIVE, _COPY_RECEIVED)]

    def commit():
        # Inside inference_mode any tensor may be written in place, also one
        # made inside the mode or a leaf that requires grad. A slot at a time:
        # copy_ runs at memory speed for every dtype (index_copy_ of bytes does not).
        with torch.inference_mode():
            for tensor, snapshot, value in zip(slot_tensors, snapshots, values):
                for slot, row, from_snapshot in writes:
                    tensor[slot].copy_(snapshot[row] if from_snapshot else value[row])
    return commit

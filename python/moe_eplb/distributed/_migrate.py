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
   A rank that raised at any point left every slot as it was.

Memory. The transaction needs every received expert held until the commit:
this rank's received count times the slot's bytes (a whole layer's new
experts, which is what migration_plan() says this rank receives).
`staging_bytes` bounds what one round puts in flight on a rank: the bytes of
the messages it posts in one batch_isend_irecv (sends and receives together,
one slot's bytes each) and so the packing buffer for sends, which is reused
from round to round. A smaller budget means more rounds, not less holding.
"""
import collections
import hashlib

import torch
import torch.distributed as dist

import moe_eplb

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
# Each tensor's bytes start at a multiple of this within a packed message, so
# that the bytes can be viewed as any dtype (complex128 is 16 bytes).
_ALIGNMENT = 16
# The arguments in the order they are checked; a verdict is 1 + the index of
# the first bad one (0: all good). "arguments": checking them raised
# something unexpected (told to every rank like a bad argument).
_ARGUMENTS = ("slots_per_rank", "ranks_per_node", "staging_bytes", "slot_tensors", "old_table",
              "new_table", "arguments")
_KEEP, _COPY_LOCAL, _RECEIVE, _COPY_RECEIVED = 0, 1, 2, 3

# Test seams: when set, called as _before_round(round_idx) on every rank
# before each round's vote, and _before_transfer(round_idx) after it, just
# before the round's messages are posted, so tests can make one rank fail
# mid-migration at either point.
_before_round = None
_before_transfer = None


class _BadArgument(ValueError):
    def __init__(self, argument, message):
        super().__init__("migrate_experts(): %s: %s" % (argument, message))
        self.argument = argument


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
    with torch.no_grad():
        return _migrate(slot_tensors, old_table, new_table, slots_per_rank, group,
                        ranks_per_node, staging_bytes)


def _migrate(slot_tensors, old_table, new_table, slots_per_rank, group, ranks_per_node,
             staging_bytes):
    # Without a usable group there is no one to tell: raise here alone.
    if not dist.is_initialized():
        raise ValueError("migrate_experts(): torch.distributed is not initialized "
                         "(call torch.distributed.init_process_group first)")
    rank = dist.get_rank(group)
    world_size = dist.get_world_size(group)
    if rank < 0:
        raise ValueError("migrate_experts(): group: this process is not a member of it")
    device = _communication_device(group)

    local = _LocalCheck()
    try:
        layout, plan = _check_arguments(slot_tensors, old_table, new_table, slots_per_rank,
                                        ranks_per_node, staging_bytes, world_size, device, local)
    except _BadArgument as error:
        local.error = error
    except Exception as error:  # no rank may be left waiting in the agreement
        local.error = _BadArgument("arguments", "checking them raised %s: %s"
                                   % (type(error).__name__, error))
        local.error.__cause__ = error
    _agree_on_arguments(local, rank, world_size, device, group)

    rounds = _rounds(plan, world_size, slots_per_rank, local.messages_per_round)
    return _transfer_and_commit(slot_tensors, layout, plan, rounds, rank, world_size,
                                slots_per_rank, device, group)


class _LocalCheck:
    """This rank's verdict and the fingerprints every rank must share."""

    def __init__(self):
        self.error = None
        self.old_hash = self.new_hash = self.params_hash = self.layout_hash = 0
        self.messages_per_round = 0

    def record(self, device):
        verdict = 0 if self.error is None else 1 + _ARGUMENTS.index(self.error.argument)
        return torch.tensor([verdict, self.old_hash, self.new_hash, self.params_hash,
                             self.layout_hash, self.messages_per_round],
                            dtype=torch.int64, device=device)


_Layout = collections.namedtuple("_Layout", "offsets sizes record_bytes slot_bytes")


def _check_arguments(slot_tensors, old_table, new_table, slots_per_rank, ranks_per_node,
                     staging_bytes, world_size, device, local):
    """Checks every argument on this rank (no communication); returns the
    packed-message layout and the migration plan; raises _BadArgument."""
    if not _is_int(slots_per_rank) or slots_per_rank < 1:
        raise _BadArgument("slots_per_rank", "expected an int >= 1, got %r" % (slots_per_rank,))
    if not _is_int(ranks_per_node) or ranks_per_node < 0 or (
            ranks_per_node > 0 and world_size % ranks_per_node != 0):
        raise _BadArgument("ranks_per_node", "expected 0 or an int dividing world_size %d, got %r"
                           % (world_size, ranks_per_node))
    if staging_bytes is not None and (not _is_int(staging_bytes) or staging_bytes < 1):
        raise _BadArgument("staging_bytes", "expected None or an int >= 1, got %r"
                           % (staging_bytes,))
    layout = _check_slot_tensors(slot_tensors, slots_per_rank, device)
    budget = staging_bytes
    if budget is None:
        budget = _DEFAULT_MESSAGES_PER_ROUND * layout.slot_bytes
    if budget < layout.slot_bytes:
        raise _BadArgument("staging_bytes", "expected at least one slot's bytes (%d, the sum over "
                           "slot_tensors), got %d" % (layout.slot_bytes, budget))
    local.messages_per_round = budget // max(layout.slot_bytes, 1)
    num_physical = world_size * slots_per_rank
    old_cpu = _check_table("old_table", old_table, world_size, num_physical)
    new_cpu = _check_table("new_table", new_table, world_size, num_physical)
    if new_cpu.shape[0] != old_cpu.shape[0]:
        raise _BadArgument("new_table", "has %d rows (experts) but old_table has %d"
                           % (new_cpu.shape[0], old_cpu.shape[0]))
    try:
        plan = moe_eplb.migration_plan(old_cpu, new_cpu, world_size, slots_per_rank,
                                       ranks_per_node=ranks_per_node,
                                       expert_bytes=layout.slot_bytes)
    except (ValueError, RuntimeError) as error:
        raise _BadArgument("new_table", str(error)) from error
    local.old_hash = _hash(old_cpu)
    local.new_hash = _hash(new_cpu)
    local.params_hash = _hash(torch.tensor([slots_per_rank, ranks_per_node]))
    local.layout_hash = _hash_text(";".join(
        "%s%s" % (tensor.dtype, tuple(tensor.shape[1:])) for tensor in slot_tensors))
    return layout, plan


def _check_slot_tensors(slot_tensors, slots_per_rank, device):
    if isinstance(slot_tensors, torch.Tensor) or not isinstance(slot_tensors, (list, tuple)):
        raise _BadArgument("slot_tensors", "expected a list of tensors, got %s"
                           % type(slot_tensors).__name__)
    if not slot_tensors:
        raise _BadArgument("slot_tensors", "expected at least one tensor, got an empty list")
    offsets, sizes = [], []
    record_bytes = 0
    for idx, tensor in enumerate(slot_tensors):
        name = "slot_tensors[%d]" % idx
        if not isinstance(tensor, torch.Tensor):
            raise _BadArgument("slot_tensors", "%s is a %s, expected a tensor"
                               % (name, type(tensor).__name__))
        if tensor.layout != torch.strided or tensor.is_quantized:
            raise _BadArgument("slot_tensors", "%s must be a dense strided tensor, got layout %s%s"
                               % (name, tensor.layout, " (quantized)" if tensor.is_quantized
                                  else ""))
        if tensor.dim() < 1 or tensor.shape[0] != slots_per_rank:
            raise _BadArgument("slot_tensors", "%s has shape %s, expected (slots_per_rank=%d, ...)"
                               % (name, tuple(tensor.shape), slots_per_rank))
        if tensor.device.type != device.type or (
                device.type == "cuda" and tensor.device.index != device.index):
            raise _BadArgument("slot_tensors", "%s is on %s, expected %s (the device this "
                               "group's backend communicates on)" % (name, tensor.device, device))
        size = (tensor.numel() // slots_per_rank) * tensor.element_size()
        offsets.append(record_bytes)
        sizes.append(size)
        record_bytes += -(-size // _ALIGNMENT) * _ALIGNMENT
    return _Layout(offsets, sizes, record_bytes, sum(sizes))


def _check_table(argument, table, world_size, num_physical):
    if not isinstance(table, torch.Tensor):
        raise _BadArgument(argument, "expected an (E, F) int32 tensor, got %s"
                           % type(table).__name__)
    if table.dim() != 2 or table.dtype != torch.int32:
        raise _BadArgument(argument, "expected an (E, F) int32 tensor, got %s of shape %s"
                           % (table.dtype, tuple(table.shape)))
    table = table.detach().cpu().contiguous()
    try:
        torch.ops.moe_eplb.prepare_table(table, 0, world_size, num_physical_experts=num_physical)
    except (ValueError, RuntimeError) as error:
        raise _BadArgument(argument, "not valid for world_size %d and %d slots: %s"
                           % (world_size, num_physical, error)) from error
    return table


def _agree_on_arguments(local, rank, world_size, device, group):
    """All ranks exchange verdicts and fingerprints; all raise, or none does."""
    gathered = [torch.empty(6, dtype=torch.int64, device=device) for _ in range(world_size)]
    dist.all_gather(gathered, local.record(device), group=group)
    records = [record.tolist() for record in gathered]
    rejected = [(r, record[0]) for r, record in enumerate(records) if record[0] != 0]
    if rejected:
        if local.error is not None:
            raise ValueError(str(local.error)) from local.error.__cause__
        first_rank, verdict = rejected[0]
        raise ValueError("migrate_experts(): rank %d rejected its argument %s (that rank's error "
                         "says why)%s; no rank transferred anything"
                         % (first_rank, _ARGUMENTS[verdict - 1],
                            "" if len(rejected) == 1 else ", as did ranks %s"
                            % [r for r, _ in rejected[1:]]))
    for field, argument in ((1, "old_table"), (2, "new_table"),
                            (3, "slots_per_rank or ranks_per_node"), (4, "slot_tensors")):
        differing = [r for r, record in enumerate(records) if record[field] != records[0][field]]
        if differing:
            what = ("dtypes or per-slot shapes" if argument == "slot_tensors" else "values")
            raise ValueError("migrate_experts(): %s differs between ranks: the %s on ranks %s "
                             "differ from rank 0's; every rank must pass the same; no rank "
                             "transferred anything" % (argument, what, differing))
    local.messages_per_round = min(record[5] for record in records)


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
    holding = torch.empty((len(receive_slots), layout.record_bytes), dtype=torch.uint8,
                          device=device)
    sends_per_round = [sum(1 for _, src, _ in moves if src == rank) for moves in rounds]
    packing = torch.empty((max(sends_per_round, default=0), layout.record_bytes),
                          dtype=torch.uint8, device=device)
    num_sent = 0
    for round_idx, moves in enumerate(rounds):
        ops = _vote_then(lambda: _post_round(round_idx, moves, slot_tensors, layout, packing,
                                             holding, holding_row, rank, slots_per_rank),
                         "before round %d of %d" % (round_idx + 1, len(rounds)), rank,
                         world_size, device, group)
        num_sent += sum(1 for op in ops if op.op == dist.isend)
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
                          len(receive_slots) * layout.slot_bytes, num_sent * layout.slot_bytes,
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


def _post_round(round_idx, moves, slot_tensors, layout, packing, holding, holding_row, rank,
                slots_per_rank):
    """Packs this rank's sends of one round and returns its P2P ops, in the
    round's order (so the k-th message between two ranks matches on both)."""
    if _before_round is not None:
        _before_round(round_idx)
    ops = []
    num_packed = 0
    for physical, src_rank, src_slot in moves:
        dst_rank = physical // slots_per_rank
        if src_rank == rank:
            row = packing[num_packed]
            num_packed += 1
            for tensor, offset, size in zip(slot_tensors, layout.offsets, layout.sizes):
                row[offset:offset + size].copy_(_bytes_of(tensor[src_slot]))
            ops.append(dist.P2POp(dist.isend, row, dst_rank))
        elif dst_rank == rank:
            row = holding[holding_row[physical % slots_per_rank]]
            ops.append(dist.P2POp(dist.irecv, row, src_rank))
    return ops


def _prepare_commit(slot_tensors, layout, actions, source_slots, holding, holding_row, device):
    """Allocates everything the commit needs (snapshots of local copies'
    sources) and returns the commit, which only copies into slots."""
    copy_local = [s for s, action in enumerate(actions) if action == _COPY_LOCAL]
    local_dst = torch.tensor(copy_local, dtype=torch.int64, device=device)
    local_src = torch.tensor([source_slots[s] for s in copy_local], dtype=torch.int64,
                             device=device)
    snapshots = [tensor.index_select(0, local_src) for tensor in slot_tensors]
    received = [s for s, action in enumerate(actions) if action == _RECEIVE]
    received_dst = torch.tensor(received, dtype=torch.int64, device=device)
    copy_received = [(s, holding_row[source_slots[s]]) for s, action in enumerate(actions)
                     if action == _COPY_RECEIVED]
    values = [holding[:, offset:offset + size].view(tensor.dtype).view(
        (holding.shape[0],) + tuple(tensor.shape[1:]))
        for tensor, offset, size in zip(slot_tensors, layout.offsets, layout.sizes)]

    def commit():
        for tensor, snapshot, value in zip(slot_tensors, snapshots, values):
            if copy_local:
                tensor.index_copy_(0, local_dst, snapshot)
            if received:
                tensor.index_copy_(0, received_dst, value)
            for slot, row in copy_received:
                tensor[slot].copy_(value[row])
    return commit


def _bytes_of(tensor):
    """The tensor's bytes, in row-major element order, as a 1-D uint8 tensor."""
    return tensor.contiguous().view(-1).view(torch.uint8)


def _communication_device(group):
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _hash(tensor):
    digest = hashlib.blake2b(digest_size=8)
    digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
    digest.update(tensor.numpy().tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def _hash_text(text):
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little",
                          signed=True)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)

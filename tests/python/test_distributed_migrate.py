"""moe_eplb.distributed.migrate_experts on gloo ranks (one process each).

Every expert has known contents in every slot tensor (float32 weights, int8
weights, bfloat16 scales, a float64 bias and a non-contiguous float16 view);
a slot that holds no expert holds poison unique to (rank, slot). After a
migration, each slot must hold bitwise what the new table says, slots the new
table leaves unused must be untouched, and the counts must be what
migration_plan says. Each spawn runs many scenarios (spawning costs seconds).
"""
import os
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist

import moe_eplb
from dist_harness import ERROR, OK, TIMEOUT, expect_all_ok, run_ranks

distributed = pytest.importorskip("moe_eplb.distributed")


# ---------------------------------------------------------------- tables


def random_table(rng, num_experts, world_size, slots_per_rank, *, unused=0, extra_columns=0,
                 shared_rank=False):
    """A valid (E, F) table: every expert on >= 1 slot, `unused` slots left
    empty, the rest random replicas (replicas of one expert may share a rank
    when shared_rank), replica order random."""
    num_slots = world_size * slots_per_rank
    slots = rng.permutation(num_slots)
    owner = {int(slots[e]): e for e in range(num_experts)}
    for slot in slots[num_experts:num_slots - unused]:
        slot = int(slot)
        for _ in range(100):
            expert = int(rng.integers(num_experts))
            ranks = [s // slots_per_rank for s, owner_e in owner.items() if owner_e == expert]
            if shared_rank or slot // slots_per_rank not in ranks:
                break
        owner[slot] = expert
    return table_from_owner(rng, owner, num_experts, extra_columns)


def table_from_owner(rng, owner, num_experts, extra_columns=0):
    rows = [[] for _ in range(num_experts)]
    for slot, expert in owner.items():
        rows[expert].append(slot)
    width = max(len(row) for row in rows) + 1 + extra_columns
    table = np.full((num_experts, width), -1, dtype=np.int32)
    for expert, row in enumerate(rows):
        row = list(rng.permutation(row)) if rng is not None else sorted(row)
        table[expert, 0] = len(row)
        table[expert, 1:1 + len(row)] = row
    return torch.from_numpy(table)


def slot_owner(table, num_slots):
    """(num_slots,) expert of each slot, -1 where none (the test's own reading)."""
    owner = [-1] * num_slots
    for expert, row in enumerate(table.tolist()):
        for slot in row[1:1 + row[0]]:
            owner[slot] = expert
    return owner


# ---------------------------------------------------------------- slot contents


def expert_contents(num_experts, seed):
    """Per-expert contents of every slot tensor: list of (E, ...) tensors."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(num_experts, 3, 4, generator=generator)
    weights.view(torch.int32)[:, 0, 0] = 0x7FC00000 + torch.arange(num_experts, dtype=torch.int32)
    quantized = torch.randint(-128, 128, (num_experts, 5), generator=generator, dtype=torch.int8)
    scales = torch.randn(num_experts, 2, generator=generator).to(torch.bfloat16)
    bias = torch.randn(num_experts, generator=generator, dtype=torch.float64)
    flags = torch.randint(0, 2, (num_experts, 3), generator=generator).bool()
    extra = [flags]
    if hasattr(torch, "float8_e4m3fn"):  # torch >= 2.1
        extra.append(torch.randn(num_experts, 6, generator=generator).to(torch.float8_e4m3fn))
    halves = torch.randn(num_experts, 4, 3, generator=generator).to(torch.float16)
    return [weights, quantized, scales, bias] + extra + [halves]


def poison(contents, rank, slot):
    """Contents for a slot no expert holds, unique to (rank, slot)."""
    fill = 100 + 10 * rank + slot  # fits int8
    return [torch.full_like(c[0], fill if c.dtype != torch.bool else slot % 2 == 0)
            for c in contents]


def make_slot_tensors(contents, table, rank, world_size, slots_per_rank, made="plain"):
    """This rank's slot tensors under `table`: the last one is a non-contiguous
    view. made: "plain", "inference" (made under torch.inference_mode(), as
    weights loaded there are) or "parameters" (leaves that require grad)."""
    with torch.inference_mode(made == "inference"):
        tensors = _make_slot_tensors(contents, table, rank, world_size, slots_per_rank)
    if made == "parameters":
        tensors = [torch.nn.Parameter(t, requires_grad=t.is_floating_point()) for t in tensors]
    return tensors


def _make_slot_tensors(contents, table, rank, world_size, slots_per_rank):
    owner = slot_owner(table, world_size * slots_per_rank)
    tensors = [torch.empty((slots_per_rank,) + tuple(c.shape[1:]), dtype=c.dtype)
               for c in contents[:-1]]
    halves = contents[-1]
    tensors.append(torch.empty((halves.shape[1], slots_per_rank, halves.shape[2]),
                               dtype=halves.dtype).permute(1, 0, 2))
    for slot in range(slots_per_rank):
        expert = owner[rank * slots_per_rank + slot]
        values = [c[expert] for c in contents] if expert >= 0 else poison(contents, rank, slot)
        for tensor, value in zip(tensors, values):
            tensor[slot] = value
    assert not tensors[-1].is_contiguous()
    return tensors


def bitwise_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


def slots_holding(tensors, contents, before, table, rank, world_size, slots_per_rank):
    """Names of slots whose contents differ from `table`'s placement (slots
    the table leaves unused must equal `before`)."""
    owner = slot_owner(table, world_size * slots_per_rank)
    wrong = []
    for slot in range(slots_per_rank):
        expert = owner[rank * slots_per_rank + slot]
        for idx, tensor in enumerate(tensors):
            expected = contents[idx][expert] if expert >= 0 else before[idx][slot]
            if not bitwise_equal(tensor[slot], expected):
                wrong.append("rank %d slot %d tensor %d (expected expert %d)"
                             % (rank, slot, idx, expert))
    return wrong


def new_experts_on_rank(old_table, new_table, rank, world_size, slots_per_rank):
    num_slots = world_size * slots_per_rank
    mine = range(rank * slots_per_rank, (rank + 1) * slots_per_rank)
    old = {slot_owner(old_table, num_slots)[p] for p in mine}
    new = {slot_owner(new_table, num_slots)[p] for p in mine} - {-1}
    return len(new - old)


def slot_bytes(contents):
    return sum(c[0].numel() * c[0].element_size() for c in contents)


# ---------------------------------------------------------------- scenarios


def scenarios(rng, num_experts, world_size, slots_per_rank):
    """(name, old_table, new_table) pairs, the same on every rank (same seed)."""
    args = (num_experts, world_size, slots_per_rank)
    unused = world_size * slots_per_rank - num_experts
    out = []
    for trial in range(3):
        out.append(("random %d" % trial, random_table(rng, *args, shared_rank=True),
                    random_table(rng, *args, extra_columns=trial)))
    out.append(("random to partly unused", random_table(rng, *args),
                random_table(rng, *args, unused=min(unused, 2))))
    out.append(("partly unused to random", random_table(rng, *args, unused=min(unused, 2)),
                random_table(rng, *args, shared_rank=True)))
    # A cycle within rank 0 (its first two slots swap experts).
    num_slots = world_size * slots_per_rank
    old = random_table(rng, *args)
    owner = dict(enumerate(slot_owner(old, num_slots)))
    within = dict(owner)
    within[0], within[1] = owner[1], owner[0]
    clean = lambda o: {slot: e for slot, e in o.items() if e >= 0}  # noqa: E731
    out.append(("cycle within a rank", old, table_from_owner(rng, clean(within), num_experts)))
    # A cycle across all ranks: expert r lives only in slot 0 of rank r and
    # moves to rank r + 1, so every rank sends one and receives one.
    ring = {r * slots_per_rank: r for r in range(world_size)}
    for slot in range(num_slots):
        if slot not in ring:
            ring[slot] = int(world_size + rng.integers(num_experts - world_size))
    others = [slot for slot in range(num_slots) if slot % slots_per_rank != 0]
    for expert in range(world_size, num_experts):  # every expert somewhere
        ring[others[expert - world_size]] = expert
    shifted = dict(ring)
    for r in range(world_size):
        shifted[((r + 1) % world_size) * slots_per_rank] = r
    out.append(("cycle across ranks", table_from_owner(rng, ring, num_experts),
                table_from_owner(rng, shifted, num_experts)))
    out.append(("unchanged", old, old.clone()))
    # int64 tables (vLLM's and SGLang's maps are int64) whose values fit
    out.append(("int64 tables", random_table(rng, *args).long(),
                random_table(rng, *args, extra_columns=1).long()))
    return out


def check_migrations(rank, world_size, seed, num_experts, slots_per_rank, ranks_per_node):
    """Every scenario with the default budget and with one slot per round."""
    rng = np.random.default_rng(seed)
    contents = expert_contents(num_experts, seed)
    one_slot = slot_bytes(contents)
    report = []
    variants = [("plain", False), ("inference", False), ("parameters", True),
                ("plain", True), ("inference", True)]
    for index, (name, old, new) in enumerate(scenarios(rng, num_experts, world_size,
                                                       slots_per_rank)):
        plan = moe_eplb.migration_plan(old, new, world_size, slots_per_rank,
                                       ranks_per_node=ranks_per_node)
        # Slot tensors made in or out of inference mode (or parameters that
        # require grad), migrated in or out of it: every combination works.
        made, inside = variants[index % len(variants)]
        for staging in (None, one_slot):
            tensors = make_slot_tensors(contents, old, rank, world_size, slots_per_rank, made)
            before = [t.detach().clone() for t in tensors]
            with torch.inference_mode(inside):
                stats = distributed.migrate_experts(
                    tensors, old, new, slots_per_rank=slots_per_rank,
                    ranks_per_node=ranks_per_node, staging_bytes=staging)
            wrong = slots_holding(tensors, contents, before, new, rank, world_size,
                                  slots_per_rank)
            assert not wrong, "%s, staging %s: %s" % (name, staging, wrong)
            expected_new = new_experts_on_rank(old, new, rank, world_size, slots_per_rank)
            assert stats.received == expected_new == plan.received_per_rank[rank], (name, stats)
            assert stats.sent == plan.sent_per_rank[rank], (name, stats, plan.sent_per_rank)
            assert stats.bytes_received == stats.received * one_slot
            assert stats.bytes_sent == stats.sent * one_slot
            if staging == one_slot:
                # One message per rank per round: at least as many rounds as
                # any rank has messages.
                busiest = max(r + s for r, s in zip(plan.received_per_rank, plan.sent_per_rank))
                assert stats.rounds >= busiest, (name, stats)
            report.append((name, staging, tuple(stats)))
    return report


def check_migrations_and_faults(rank, world_size, seed, num_experts, slots_per_rank,
                               ranks_per_node, faults):
    report = check_migrations(rank, world_size, seed, num_experts, slots_per_rank,
                              ranks_per_node)
    return report, check_faults(rank, world_size, seed) if faults else None


@pytest.mark.parametrize("world_size, num_experts, slots_per_rank, ranks_per_node", [
    (2, 5, 3, 0),
    (3, 4, 2, 0),   # replica counts that do not divide the world; also the faults
    (4, 7, 3, 2),   # two nodes
])
def test_migrate_places_every_expert_bitwise(world_size, num_experts, slots_per_rank,
                                            ranks_per_node):
    outcomes = expect_all_ok(run_ranks(
        check_migrations_and_faults, world_size,
        args=(1234 + world_size, num_experts, slots_per_rank, ranks_per_node, world_size == 3)))
    reports = [report for report, _ in outcomes]
    if world_size == 3:
        check_fault_outcomes([faults for _, faults in outcomes])
    # What ranks sent, others received; nothing moved in the unchanged scenario.
    for idx, (name, staging, _) in enumerate(reports[0]):
        stats = [distributed.MigrationStats(*report[idx][2]) for report in reports]
        assert sum(s.sent for s in stats) == sum(s.received for s in stats), name
        assert len({s.rounds for s in stats}) == 1, (name, staging)
        if name == "unchanged":
            assert all(s.received == s.sent == s.local_copies == 0 for s in stats)
        if name == "cycle across ranks":
            assert all(s.received == 1 and s.sent == 1 for s in stats), stats


# ---------------------------------------------------------------- faults (group stays usable)


class CountingTransfers:
    """Counts batch_isend_irecv calls (the transfers) in this process."""

    def __init__(self):
        self.calls = 0
        self.original = dist.batch_isend_irecv

    def __enter__(self):
        def counted(ops):
            self.calls += 1
            return self.original(ops)
        dist.batch_isend_irecv = counted
        return self

    def __exit__(self, *exc):
        dist.batch_isend_irecv = self.original


def attempt(tensors, old, new, slots_per_rank, **options):
    """Runs migrate_experts; returns (exception type name, message), or None."""
    try:
        distributed.migrate_experts(tensors, old, new, slots_per_rank=slots_per_rank, **options)
    except Exception as error:  # the test inspects it
        return type(error).__name__, str(error)
    return None


def rotation(world_size, slots_per_rank):
    """One expert per slot, then every rank's experts move to the next rank:
    each rank sends and receives slots_per_rank experts (many rounds with a
    one-slot budget)."""
    num_slots = world_size * slots_per_rank
    old = table_from_owner(None, {slot: slot for slot in range(num_slots)}, num_slots)
    new = table_from_owner(None, {(slot + slots_per_rank) % num_slots: slot
                                  for slot in range(num_slots)}, num_slots)
    return old, new


def check_faults(rank, world_size, seed):
    """Bad arguments on one rank, tables that differ, and a rank that raises
    mid-migration: every rank must raise, nothing may change, and afterwards
    the group must still work."""
    from moe_eplb.distributed import _migrate

    slots_per_rank = 2
    num_experts = world_size * slots_per_rank
    rng = np.random.default_rng(seed)
    contents = expert_contents(num_experts, seed)
    old, new = rotation(world_size, slots_per_rank)
    other_new = random_table(rng, num_experts, world_size, slots_per_rank)
    tensors = make_slot_tensors(contents, old, rank, world_size, slots_per_rank)
    before = [t.clone() for t in tensors]
    bad_rank = 1
    bad_table = old.clone()
    bad_table[0, 0] = 0
    # (case, argument named, the bad rank's arguments): error inputs.
    cases = [
        ("slots_per_rank mismatch", "slot_tensors",
         dict(slot_tensors=[t[:1] for t in tensors])),
        ("a tensor without a slot dimension", "slot_tensors",
         dict(slot_tensors=tensors[:1] + [torch.tensor(1.0)])),
        ("not a list", "slot_tensors", dict(slot_tensors=tensors[0])),
        ("empty list", "slot_tensors", dict(slot_tensors=[])),
        ("float table", "old_table", dict(old=old.double())),
        ("1-D table", "new_table", dict(new=new[0])),
        ("replica count 0", "old_table", dict(old=bad_table)),
        ("table of another shape", "new_table", dict(new=new[:-1])),
        ("staging below one slot", "staging_bytes", dict(staging_bytes=1)),
        ("slots_per_rank 0", "slots_per_rank", dict(slots_per_rank=0)),
        ("ranks_per_node not dividing", "ranks_per_node", dict(ranks_per_node=world_size + 1)),
        # What would make the commit's writes fail, checked before any transfer:
        ("an expanded view", "slot_tensors",
         dict(slot_tensors=tensors[:1] + [tensors[1][:1].expand_as(tensors[1])] + tensors[2:])),
    ]
    results = {}
    with CountingTransfers() as transfers:
        for case, argument, bad in cases:
            args = dict(slot_tensors=tensors, old=old, new=new, slots_per_rank=slots_per_rank)
            if rank == bad_rank:
                args.update(bad)
            options = {k: v for k, v in args.items()
                       if k in ("staging_bytes", "ranks_per_node")}
            error = attempt(args["slot_tensors"], args["old"], args["new"],
                            args["slots_per_rank"], **options)
            results[case] = (argument, error)
        # Something unexpected while checking on one rank: told to all alike.
        original_plan = moe_eplb.migration_plan
        if rank == bad_rank:
            moe_eplb.migration_plan = lambda *args, **kwargs: 1 / 0
        results["unexpected error"] = ("arguments", attempt(tensors, old, new, slots_per_rank))
        moe_eplb.migration_plan = original_plan
        # Tables that differ between ranks.
        results["new_table differs"] = ("new_table", attempt(
            tensors, old, other_new if rank == 2 else new, slots_per_rank))
        results["old_table differs"] = ("old_table", attempt(
            tensors, new if rank == 0 else old, new, slots_per_rank))
        assert transfers.calls == 0, "transfers ran before the arguments were rejected"
    unchanged = all(bitwise_equal(t, b) for t, b in zip(tensors, before))

    # A rank that raises between rounds (one slot per round forces several).
    def fail_in_round_two(round_idx):
        if rank == bad_rank and round_idx == 1:
            raise RuntimeError("injected failure on rank %d" % rank)
    _migrate._before_round = fail_in_round_two
    results["raises mid-migration"] = ("", attempt(tensors, old, new, slots_per_rank,
                                                   staging_bytes=slot_bytes(contents)))
    _migrate._before_round = None
    # A rank that fails after every transfer, preparing the commit.
    def fail_before_commit():
        if rank == bad_rank:
            raise RuntimeError("injected failure before the commit on rank %d" % rank)
    _migrate._before_commit = fail_before_commit
    results["fails preparing the commit"] = ("", attempt(tensors, old, new, slots_per_rank))
    _migrate._before_commit = None
    unchanged_after_fault = all(bitwise_equal(t, b) for t, b in zip(tensors, before))

    # The group still works: the same migration now succeeds.
    stats = distributed.migrate_experts(tensors, old, new, slots_per_rank=slots_per_rank,
                                        staging_bytes=slot_bytes(contents))
    wrong = slots_holding(tensors, contents, before, new, rank, world_size, slots_per_rank)
    return dict(results=results, unchanged=unchanged, unchanged_after_fault=unchanged_after_fault,
                wrong_after_retry=wrong, rounds=stats.rounds)


def check_fault_outcomes(outcomes):
    """Every rank raised for every fault, named the argument, changed nothing."""
    bad_rank = 1
    for rank, outcome in enumerate(outcomes):
        assert outcome["unchanged"] and outcome["unchanged_after_fault"], rank
        assert not outcome["wrong_after_retry"], outcome["wrong_after_retry"]
        assert outcome["rounds"] >= 2
        for case, (argument, error) in outcome["results"].items():
            assert error is not None, "rank %d did not raise for %s" % (rank, case)
            kind, message = error
            if case in ("raises mid-migration", "fails preparing the commit"):
                when = "round 2" if case == "raises mid-migration" else "the commit"
                if rank == bad_rank:
                    assert "injected failure" in message
                else:
                    assert kind == "RuntimeError" and \
                        "rank(s) [1] failed before %s" % when in message, message
                    assert "no slot on any rank was changed" in message
                continue
            assert kind == "ValueError", (rank, case, error)
            assert message.startswith("migrate_experts(): "), message
            if "differs" in case:
                assert "the ranks disagree on %s (ranks [" % argument in message, (case, message)
            elif rank == bad_rank and argument == "arguments":
                assert message.startswith("migrate_experts(): checking the arguments raised "
                                          "ZeroDivisionError"), (case, message)
            elif rank == bad_rank:
                assert message.startswith("migrate_experts(): %s: " % argument), (case, message)
                if case == "an expanded view":
                    assert "slot_tensors[1] cannot be written in place: it is an expanded or " \
                        "self-overlapping view" in message, message
            else:
                assert "rank 1 rejected its argument %s" % argument in message, (case, message)


# ---------------------------------------------------------------- faults (a rank gone)


def check_peer_gone(rank, world_size, seed, how, hang_s):
    """In the third round rank 1 dies before the round's vote (how="exit"),
    dies after it, with its peers' messages posted (how="exit in transfer"),
    or hangs for hang_s, past the group timeout (how="hang"); the others must
    raise with their slots unchanged."""
    from moe_eplb.distributed import _migrate

    slots_per_rank = 2
    num_experts = world_size * slots_per_rank
    contents = expert_contents(num_experts, seed)
    old, new = rotation(world_size, slots_per_rank)
    tensors = make_slot_tensors(contents, old, rank, world_size, slots_per_rank)
    before = [t.clone() for t in tensors]
    started = []

    def fault(round_idx):
        # Round 3 of the rotation's six (one message per rank per round):
        # rank 0 sends to rank 1 in it.
        if round_idx != 2:
            return
        started.append(time.monotonic())
        if rank == 1 and how in ("exit", "exit in transfer"):
            os._exit(3)
        if rank == 1 and how == "hang":
            time.sleep(hang_s)
    if how == "exit in transfer":
        _migrate._before_transfer = fault
    else:
        _migrate._before_round = fault
    error = attempt(tensors, old, new, slots_per_rank, staging_bytes=slot_bytes(contents))
    seconds = time.monotonic() - started[0] if started else None
    unchanged = all(bitwise_equal(t, b) for t, b in zip(tensors, before))
    return dict(error=error, seconds=seconds, unchanged=unchanged)


# A process that exits closes its connections, so its peers fail at once
# (a long group timeout keeps a slow machine from failing them earlier); a
# hung one is only noticed at the group timeout, kept short.
@pytest.mark.parametrize("how, world_size, group_timeout_s", [("exit", 3, 10.0),
                                                              ("exit in transfer", 3, 10.0),
                                                              ("hang", 2, 2.5)])
def test_migrate_peer_gone_makes_every_survivor_raise(how, world_size, group_timeout_s):
    outcomes = run_ranks(check_peer_gone, world_size, args=(7, how, group_timeout_s + 1.5),
                         timeout_s=60.0, group_timeout_s=group_timeout_s)
    survivors = [r for r in range(world_size) if how == "hang" or r != 1]
    if how != "hang":
        assert outcomes[1][0] in (TIMEOUT, ERROR), outcomes[1]
    for rank in survivors:
        status, value = outcomes[rank]
        assert status == OK, (rank, status, value)
        assert value["error"] is not None, "rank %d did not raise" % rank
        assert value["unchanged"], "rank %d changed a slot" % rank
        assert value["error"][0] == "RuntimeError", value["error"]
        assert "no slot on this rank was changed" in value["error"][1], value["error"]
        if rank != 1:
            limit = 4.0 if how != "hang" else group_timeout_s + 4.0
            assert value["seconds"] is not None and value["seconds"] < limit, value
    if how == "exit in transfer":  # rank 0 was waiting for its message to rank 1
        assert "the transfers of round 3 of 6 failed" in outcomes[0][1]["error"][1], outcomes[0]

"""moe_eplb.distributed.dispatch / combine on gloo ranks against a dense
single-process reference (float64, bitwise).

One 4-rank run goes through groups of 2, 3 and 4 ranks and many cases (both
balance modes, shared-expert ranks, int32 and int64 ids, raw and prepared
tables, ranks with zero tokens, subgroups, bad arguments): spawning ranks
costs seconds, a case costs milliseconds. Every rank builds every rank's
inputs from the same seed, so each can compute what it must receive and
return; ranks collect mismatches instead of raising, so that they stay in
step through the collectives and the test reports all of them.
"""
import re
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist

import moe_eplb
from moe_eplb.distributed import PADDING_ROW, DispatchHandle, combine, dispatch
from dist_harness import expect_all_ok, run_ranks
from reference import reference_update_expert

HIDDEN_SIZE = 3


# ---- inputs ------------------------------------------------------------------


def random_table(rng, num_experts, moe_world_size, slots_per_rank, fill_all):
    """(E, W + 1) int32 table: each expert 1..W replicas (W = MoE ranks) in
    distinct slots, -1 padding; fill_all uses every slot when E * W allows,
    otherwise a random number of slots stays empty."""
    num_slots = moe_world_size * slots_per_rank
    counts = np.ones(num_experts, dtype=np.int64)
    spare = num_slots - num_experts
    if not fill_all:
        spare = int(rng.integers(0, spare + 1))
    for _ in range(spare):
        growable = np.flatnonzero(counts < moe_world_size)
        if len(growable) == 0:
            break
        counts[rng.choice(growable)] += 1
    slots = rng.permutation(num_slots).tolist()
    table = np.full((num_experts, moe_world_size + 1), -1, dtype=np.int32)
    for expert, count in enumerate(counts):
        table[expert, 0] = count
        table[expert, 1:count + 1] = [slots.pop() for _ in range(count)]
    return torch.from_numpy(table)


def make_case(seed, world_size, num_shared, balance_mode, id_dtype, tokens="random"):
    """Every rank's inputs, the table and the per-slot expert function.

    tokens: "random" (0..6 per rank), "one_empty" (a random rank has none),
    "all_empty"."""
    rng = np.random.default_rng(seed)
    moe_world_size = world_size - num_shared
    slots_per_rank = int(rng.integers(1, 4))
    num_slots = moe_world_size * slots_per_rank
    num_experts = int(rng.integers(1, num_slots + 1))
    top_k = int(rng.integers(1, 5))  # may exceed E: a token may repeat an expert
    table = random_table(rng, num_experts, moe_world_size, slots_per_rank,
                         fill_all=bool(rng.integers(2)))
    num_tokens = rng.integers(0, 7, size=world_size)
    if tokens == "one_empty":
        num_tokens[rng.integers(world_size)] = 0
    elif tokens == "all_empty":
        num_tokens[:] = 0
    ranks = []
    for count in num_tokens.tolist():
        ranks.append(dict(
            hidden=torch.from_numpy(rng.standard_normal((count, HIDDEN_SIZE))),
            topk_ids=torch.from_numpy(
                rng.integers(0, num_experts, size=(count, top_k))).to(id_dtype),
            topk_weights=torch.from_numpy(rng.random((count, top_k))),
        ))
    return dict(
        world_size=world_size, num_shared=num_shared, balance_mode=balance_mode,
        slots_per_rank=slots_per_rank, table=table, ranks=ranks, top_k=top_k,
        max_tokens=max(1, int(num_tokens.max())),
        # expert p computes x * scale[p] + bias[p]; index num_slots is the shared expert
        scale=torch.from_numpy(rng.random(num_slots + 1) + 0.5),
        bias=torch.from_numpy(rng.standard_normal(num_slots + 1)),
    )


def moe_rank_of(rank, case):
    """The local_rank_id a rank routes with (dispatch's documented rule)."""
    num_shared, moe_world_size = case["num_shared"], case["world_size"] - case["num_shared"]
    return rank - num_shared if rank >= num_shared else rank % moe_world_size


def expert_function(case, slot, rows):
    """The "expert" of global slot `slot` (-1: the shared expert) on rows (n, H)."""
    index = slot if slot >= 0 else len(case["scale"]) - 1
    return rows * case["scale"][index] + case["bias"][index]


# ---- the dense reference -----------------------------------------------------


def reference_physical(case, rank):
    """(T, K) physical slots of a rank's choices, from the scalar reference."""
    inputs = case["ranks"][rank]
    rows = reference_update_expert(inputs["topk_ids"], case["table"], moe_rank_of(rank, case),
                                   case["world_size"] - case["num_shared"], case["balance_mode"])
    return [list(row) for row in rows]


def reference_received(case, rank):
    """(rows, slots) this rank must receive: by source rank, each source's
    rows to it in (token, k) order, or the shared rows in token order."""
    num_shared, slots_per_rank = case["num_shared"], case["slots_per_rank"]
    rows, slots = [], []
    for source, inputs in enumerate(case["ranks"]):
        if rank < num_shared:
            if source % num_shared == rank:
                rows += list(inputs["hidden"])
                slots += [-1] * len(inputs["hidden"])
            continue
        for token, choices in enumerate(reference_physical(case, source)):
            for slot in choices:
                if num_shared + slot // slots_per_rank == rank:
                    rows.append(inputs["hidden"][token])
                    slots.append(slot % slots_per_rank)
    hidden = torch.stack(rows) if rows else torch.zeros(0, HIDDEN_SIZE, dtype=torch.float64)
    return hidden, torch.tensor(slots, dtype=torch.int64)


def reference_output(case, rank):
    """(T, H): sum over k, in k order, of weight * expert(slot, x), then + shared."""
    inputs = case["ranks"][rank]
    out = torch.zeros(len(inputs["hidden"]), HIDDEN_SIZE, dtype=torch.float64)
    for token, choices in enumerate(reference_physical(case, rank)):
        row = torch.zeros(HIDDEN_SIZE, dtype=torch.float64)
        for k, slot in enumerate(choices):
            row = row + inputs["topk_weights"][token, k] * expert_function(
                case, slot, inputs["hidden"][token])
        if case["num_shared"]:
            row = row + expert_function(case, -1, inputs["hidden"][token])
        out[token] = row
    return out


def reference_load(case, rank):
    counts = torch.zeros((case["world_size"] - case["num_shared"]) * case["slots_per_rank"],
                         dtype=torch.int64)
    for choices in reference_physical(case, rank):
        for slot in choices:
            counts[slot] += 1
    return counts


# ---- what a rank runs ----------------------------------------------------------


def run_experts(case, rank, recv_hidden, recv_slot):
    """Each received row through the expert of its slot, as the rank that holds it."""
    out = torch.empty_like(recv_hidden)
    first_slot = (rank - case["num_shared"]) * case["slots_per_rank"]
    for row, slot in enumerate(recv_slot.tolist()):
        out[row] = expert_function(case, slot if slot < 0 else first_slot + slot,
                                   recv_hidden[row])
    return out


# Row dtypes the transport must move bit-exact: float64 (computed exactly by
# the reference), then formats gloo itself lacks or that travel in pairs.
ROW_FORMATS = ("float64", "bfloat16", "float16", "int8+scales")


def hidden_in(hidden, row_format):
    """A rank's float64 hidden rows in a row format: a tensor, or a tuple
    (int8 values, float32 per-token scales) as quantized dispatch sends."""
    if row_format == "float64":
        return hidden
    if row_format == "int8+scales":
        scales = hidden.abs().amax(dim=1, keepdim=True).float() / 127 + 1e-3
        return ((hidden / scales).round().clamp(-127, 127).to(torch.int8), scales)
    return hidden.to(getattr(torch, row_format))


def bitwise_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def check_case(case, rank, group, failures, name, prepared=False, load_dtype=torch.int64,
               strided=False, device="cpu", capacity=None, checked=None, row_format="float64",
               inference=False, int64_table=False):
    """One dispatch -> experts -> combine round on `group` (every member
    calls it with the same case); appends mismatches to failures. strided:
    hidden, topk_ids and topk_weights as non-contiguous views; capacity:
    max_tokens_per_rank (capacity mode); row_format: the rows' format (the
    experts and combine then run on the rows cast back to float64, so the
    output stays exact); inference: everything inside torch.inference_mode()."""
    with torch.inference_mode(inference):
        _check_case(case, rank, group, failures, name, prepared, load_dtype, strided, device,
                    capacity, checked, row_format, int64_table)


def _check_case(case, rank, group, failures, name, prepared, load_dtype, strided, device,
                capacity, checked, row_format, int64_table):
    inputs = case["ranks"][rank]
    hidden, topk_ids, topk_weights = (inputs[name].to(device)
                                      for name in ("hidden", "topk_ids", "topk_weights"))
    if strided:
        hidden = torch.stack([hidden, -hidden], dim=2)[:, :, 0]
        topk_ids = topk_ids.t().contiguous().t()
        topk_weights = topk_weights.t().contiguous().t()
    sent = hidden_in(hidden, row_format)
    moe_world_size = case["world_size"] - case["num_shared"]
    num_slots = moe_world_size * case["slots_per_rank"]
    table = case["table"].to(device)
    if int64_table:  # vLLM's and SGLang's maps are int64: accepted when the values fit
        table = table.long()
    if prepared:
        table = moe_eplb.PreparedTable(table, moe_rank_of(rank, case), moe_world_size,
                                       balance_mode=case["balance_mode"],
                                       num_physical_experts=num_slots)
    load_counts = torch.full((num_slots,), 5, dtype=load_dtype, device=device)
    recv_hidden, recv_slot, handle = dispatch(
        sent, topk_ids, table, slots_per_rank=case["slots_per_rank"],
        balance_mode=case["balance_mode"], group=group, load_counts=load_counts,
        shared_expert_rank_num=case["num_shared"], max_tokens_per_rank=capacity,
        checked=checked)
    expected_hidden, expected_slot = reference_received(case, rank)
    context = "%s, rank %d" % (name, rank)
    received = list(recv_hidden) if isinstance(recv_hidden, tuple) else [recv_hidden]
    if not isinstance(handle, DispatchHandle) or any(r.shape[0] != handle.num_received
                                                     for r in received):
        failures.append("%s: handle %r" % (context, handle))
    if any(r.device != hidden.device for r in received) or recv_slot.device != hidden.device:
        failures.append("%s: outputs on %s and %s" % (context, [r.device for r in received],
                                                      recv_slot.device))
    received, recv_slot = [r.cpu() for r in received], recv_slot.cpu()
    if capacity is not None:  # compact each source's block; padding must be PADDING_ROW
        block = capacity * case["top_k"]
        keep = []
        for source in range(case["world_size"]):
            rows = recv_slot[source * block:(source + 1) * block]
            count = int((rows != PADDING_ROW).sum())
            if not (rows[count:] == PADDING_ROW).all():
                failures.append("%s: padding of source %d is not at its block's end: %s"
                                % (context, source, rows.tolist()))
            keep += list(range(source * block, source * block + count))
        keep = torch.tensor(keep, dtype=torch.int64)
        received = [r.index_select(0, keep) for r in received]
        full_slot, recv_slot = recv_slot, recv_slot.index_select(0, keep)
    if not (recv_slot.dtype == torch.int64 and torch.equal(recv_slot, expected_slot)):
        failures.append("%s: recv_slot %s, expected %s" % (context, recv_slot.tolist(),
                                                          expected_slot.tolist()))
    expected_rows = hidden_in(expected_hidden, row_format)
    expected_rows = list(expected_rows) if isinstance(expected_rows, tuple) else [expected_rows]
    if len(received) != len(expected_rows) or not all(
            bitwise_equal(r, e) for r, e in zip(received, expected_rows)):
        failures.append("%s: recv_hidden %s, expected %s" % (
            context, [r.tolist() for r in received], [e.tolist() for e in expected_rows]))
    expected_counts = torch.zeros(case["slots_per_rank"], dtype=torch.int64).scatter_add_(
        0, expected_slot.clamp(min=0), (expected_slot >= 0).long())
    if not torch.equal(handle.slot_counts.cpu(), expected_counts):
        failures.append("%s: slot_counts %s, expected %s" % (
            context, handle.slot_counts.tolist(), expected_counts.tolist()))
    expected_load = reference_load(case, rank) + 5
    load_counts = load_counts.cpu()
    if load_counts.dtype != load_dtype or not torch.equal(load_counts.long(), expected_load):
        failures.append("%s: load_counts %s, expected %s" % (context, load_counts.tolist(),
                                                            expected_load.tolist()))
    expected_physical = torch.tensor(reference_physical(case, rank), dtype=torch.int64)
    if not torch.equal(handle.physical_ids.cpu().long().reshape(expected_physical.shape),
                       expected_physical):
        failures.append("%s: handle.physical_ids %s, expected %s" % (
            context, handle.physical_ids.tolist(), expected_physical.tolist()))
    rows = expected_hidden if row_format != "float64" else received[0]
    expert_out = run_experts(case, rank, rows, recv_slot)
    if capacity is not None:  # back to the padded layout dispatch returned
        padded = torch.full((full_slot.shape[0], HIDDEN_SIZE), float("nan"), dtype=torch.float64)
        expert_out = padded.index_copy_(0, keep, expert_out)
    out = combine(expert_out.to(device), handle, topk_weights).cpu()
    expected = reference_output(case, rank)
    if not (out.dtype == torch.float64 and torch.equal(out, expected)):
        failures.append("%s: combine %s, expected %s" % (context, out.tolist(), expected.tolist()))


def sweep(rank, world_size, group, seed, failures):
    """Random cases: both modes, every shared-expert count this size allows
    (up to 2), id dtypes, token patterns, raw and prepared tables, uneven and
    capacity mode (checked and not), row formats, inside inference mode."""
    index = 0
    for balance_mode in (0, 1, 2):
        for num_shared in range(min(3, world_size)):
            for tokens in ("random", "one_empty", "random", "all_empty"):
                if tokens == "all_empty" and (balance_mode, num_shared) != (0, 0):
                    continue
                id_dtype = (torch.int32, torch.int64)[index % 2]
                case = make_case(seed + index, world_size, num_shared, balance_mode, id_dtype,
                                 tokens)
                capacity = case["max_tokens"] + index % 2 if index % 3 != 2 else None
                checked = False if capacity is not None and index % 3 == 1 else None
                row_format = ROW_FORMATS[index % len(ROW_FORMATS)]
                name = "%d ranks, case %d (mode %d, shared %d, %s, %s, capacity %s%s, %s)" % (
                    world_size, index, balance_mode, num_shared, tokens, id_dtype, capacity,
                    " unchecked" if checked is False else "", row_format)
                check_case(case, rank, group, failures, name, prepared=index % 3 == 1,
                           load_dtype=(torch.int64, torch.int32)[index % 4 // 2],
                           strided=index % 5 == 2, capacity=capacity, checked=checked,
                           row_format=row_format, inference=index % 2 == 1,
                           int64_table=index % 4 == 3 and index % 3 != 1)
                index += 1
    return index


def check_hand_worked(rank, group, failures):
    # Two ranks, two slots each; expert 0 in slot 3, expert 1 in slots 0 and 2.
    # Rank mode: rank r uses replica 1 + r // 1, so rank 0 -> slot 0, rank 1 -> slot 2.
    # Rank 0: ids [[0, 1], [1, 0]] -> [[3, 0], [0, 3]]; rank 1: [[1, 1]] -> [[2, 2]].
    # Expert p multiplies by p + 1.
    table = torch.tensor([[1, 3, -1], [2, 0, 2]], dtype=torch.int32)
    hidden = [torch.tensor([[1.0], [2.0]]), torch.tensor([[10.0]])][rank]
    ids = [torch.tensor([[0, 1], [1, 0]]), torch.tensor([[1, 1]])][rank]
    weights = [torch.tensor([[0.5, 0.25], [1.0, 2.0]]), torch.tensor([[1.0, 1.0]])][rank]
    recv_hidden, recv_slot, handle = dispatch(hidden, ids, table, slots_per_rank=2, group=group)
    expected_rows = [[[1.0], [2.0]], [[1.0], [2.0], [10.0], [10.0]]][rank]
    expected_slots = [[0, 0], [1, 1, 0, 0]][rank]
    if recv_hidden.tolist() != expected_rows or recv_slot.tolist() != expected_slots:
        failures.append("hand-worked, rank %d: received %s slots %s" % (
            rank, recv_hidden.tolist(), recv_slot.tolist()))
    out = combine(recv_hidden * (rank * 2 + recv_slot + 1).unsqueeze(1).to(recv_hidden.dtype),
                  handle, weights)
    # rank 0: 0.5 * 4 * 1 + 0.25 * 1 * 1 = 2.25 and 1 * 1 * 2 + 2 * 4 * 2 = 18; rank 1: 30 + 30.
    expected_out = [[[2.25], [18.0]], [[60.0]]][rank]
    if out.tolist() != expected_out or out.dtype != torch.float32:
        failures.append("hand-worked, rank %d: combine %s (%s), expected %s" % (
            rank, out.tolist(), out.dtype, expected_out))


# ---- bad input -------------------------------------------------------------------


def dispatch_error_inputs(case, rank):
    """(argument named, argument overrides, message pattern) for a rank."""
    inputs = case["ranks"][rank]
    hidden, ids, table = inputs["hidden"], inputs["topk_ids"], case["table"]
    num_slots = (case["world_size"] - case["num_shared"]) * case["slots_per_rank"]
    other_rank = moe_eplb.PreparedTable(table, (moe_rank_of(rank, case) + 1) % case["world_size"],
                                        case["world_size"], num_physical_experts=num_slots)
    other_mode = moe_eplb.PreparedTable(table, -1, -1, balance_mode=1,
                                        num_physical_experts=num_slots)
    return [
        ("hidden", dict(hidden=hidden[:, 0]), r"hidden must be \(T, H\), got shape"),
        ("hidden", dict(hidden=hidden > 0), r"hidden must be a dense strided tensor of numbers, "
                                            r"got torch.bool"),
        ("hidden", dict(hidden=[1.0, 2.0]), r"hidden must be a tensor \(T, H\) or a tuple"),
        ("hidden", dict(hidden=(hidden, torch.zeros(len(hidden) + 1, 2))),
         r"hidden\[1\] must be \(T, \.\.\.\) with T = %d" % len(hidden)),
        ("topk_ids", dict(topk_ids=ids.double()), r"topk_ids must be int32 or int64, got "
                                                  r"torch.float64"),
        ("topk_ids", dict(topk_ids=torch.zeros(len(hidden) + 1, 2, dtype=torch.int64)),
         r"topk_ids must be \(T, K\) with T = %d" % len(hidden)),
        ("topk_ids", dict(topk_ids=ids[:, :0]), r"topk_ids must be \(T, K\) .* K >= 1"),
        ("table", dict(table=table.double()), r"table must be int32 \(or int64 with int32 "
                                              r"values\), got torch.float64"),
        ("table", dict(table=table[0]), r"table must be \(E, F\) int32"),
        ("table", dict(table=torch.ones(num_slots + 1, 2, dtype=torch.int32)),
         r"table must be \(E, F\) with 1 <= E <= %d" % num_slots),
        ("table", dict(table=table[:, :1]), r"table must be \(E, F\) .* F >= 2, got shape "
                                            r"\(\d+, 1\)"),
        ("table", dict(table=other_rank), r"table is a PreparedTable for local_rank_id"),
        ("table", dict(table=other_mode), r"table is a PreparedTable for balance_mode 1"),
        ("slots_per_rank", dict(slots_per_rank=0), r"slots_per_rank must be an integer in "
                                                   r"1\.\.\d+, got 0"),
        ("slots_per_rank", dict(slots_per_rank=2.0), r"slots_per_rank must be an integer"),
        ("balance_mode", dict(balance_mode=3), r"balance_mode must be an integer in 0\.\.2, "
                                               r"got 3"),
        ("shared_expert_rank_num", dict(shared_expert_rank_num=case["world_size"]),
         r"shared_expert_rank_num must be an integer in 0\.\.%d" % (case["world_size"] - 1)),
        ("load_counts", dict(load_counts=torch.zeros(num_slots + 1, dtype=torch.int64)),
         r"load_counts must have %d elements" % num_slots),
        ("load_counts", dict(load_counts=torch.zeros(num_slots)),
         r"load_counts must be int32 or int64"),
        ("max_tokens_per_rank", dict(max_tokens_per_rank=0),
         r"max_tokens_per_rank must be an integer in 1\.\."),
        ("checked", dict(checked=False), r"checked=False needs capacity mode"),
    ]


def expect_value_error(failures, context, pattern, call):
    try:
        call()
    except ValueError as error:
        if not re.search(pattern, str(error)):
            failures.append("%s: message %r does not match %r" % (context, str(error), pattern))
    else:
        failures.append("%s: no ValueError" % context)


def expect_raises(failures, context, error_type, pattern, call, limit_s=5.0):
    """call() must raise error_type matching pattern, within limit_s seconds
    (a peer that waited for the group's timeout would take far longer)."""
    started = time.monotonic()
    try:
        call()
        failures.append("%s: no error" % context)
    except error_type as error:
        if not re.search(pattern, str(error)):
            failures.append("%s: %r does not match %r" % (context, str(error), pattern))
    except Exception as error:  # reported, so that the ranks stay in step
        failures.append("%s: %s: %s" % (context, type(error).__name__, error))
    seconds = time.monotonic() - started
    if seconds > limit_s:
        failures.append("%s: took %.1f s" % (context, seconds))


def check_errors(rank, world_size, group, seed, failures):
    """A bad argument on one rank (the others pass good ones) raises
    ValueError on every rank within the one header exchange: the bad rank's
    names the argument, the others name the rank and the argument. Ranks that
    disagree (tables, sizes, dtypes, K), an id one rank cannot map, combines
    out of step or of another dispatch: every rank raises. Then all are still
    in step."""
    for offset in range(1000):  # a case whose table rows 0 and 1 differ (to swap them)
        case = make_case(seed + offset, world_size, 0, 0, torch.int64)
        if len(case["table"]) >= 2 and not torch.equal(case["table"][0], case["table"][1]):
            break
    inputs = case["ranks"][rank]
    arguments = dict(hidden=inputs["hidden"], topk_ids=inputs["topk_ids"], table=case["table"],
                     slots_per_rank=case["slots_per_rank"], group=group)
    for index, (argument, overrides, pattern) in enumerate(dispatch_error_inputs(case, rank)):
        bad_rank = index % world_size
        context = "%d ranks, dispatch(%s) bad on rank %d, rank %d" % (
            world_size, sorted(overrides), bad_rank, rank)
        expected = r"^dispatch\(\): " + (pattern if rank == bad_rank else
                                          r"rank %d rejected its argument %s \(its error says "
                                          r"why\); no rows were exchanged" % (bad_rank, argument))
        call_arguments = dict(arguments, **overrides) if rank == bad_rank else arguments
        expect_raises(failures, context, ValueError, expected, lambda: dispatch(**call_arguments))

    # combine: a bad argument on one rank; then the valid combine
    recv_hidden, _, handle = dispatch(**arguments)
    weights = inputs["topk_weights"]
    for index, (argument, call, pattern) in enumerate([
        ("expert_out", lambda: combine(torch.zeros(handle.num_received + 1, HIDDEN_SIZE,
                                                   dtype=torch.float64), handle, weights),
         r"expert_out must have N = %d rows" % handle.num_received),
        ("expert_out", lambda: combine(recv_hidden.long(), handle, weights),
         r"expert_out must be floating point"),
        ("expert_out", lambda: combine(recv_hidden.reshape(-1), handle, weights),
         r"expert_out must be \(N, H\) with N = %d" % handle.num_received),
        ("topk_weights", lambda: combine(recv_hidden, handle, weights.t()[:, :, None]),
         r"topk_weights must be \(T, K\)"),
        ("topk_weights", lambda: combine(recv_hidden, handle, torch.zeros(len(weights) + 1,
                                                                          weights.shape[1])),
         r"topk_weights must be \(T, K\) = \(%d, %d\), got shape" % tuple(weights.shape)),
        ("topk_weights", lambda: combine(recv_hidden, handle, weights.long()),
         r"topk_weights must be floating point"),
    ]):
        bad_rank = index % world_size
        expected = r"^combine\(\): " + (pattern if rank == bad_rank else
                                         r"rank %d rejected its argument %s" % (bad_rank, argument))
        expect_raises(failures, "%d ranks, combine %d bad on rank %d, rank %d" % (
            world_size, index, bad_rank, rank), ValueError, expected,
            call if rank == bad_rank else lambda: combine(recv_hidden, handle, weights))
    expect_value_error(failures, "combine(handle=None)", r"^combine\(\): handle must be the "
                       r"DispatchHandle", lambda: combine(recv_hidden, None, weights))
    combine(recv_hidden, handle, weights)
    # The same handle again: every rank refuses (each dispatch is combined once).
    expect_raises(failures, "%d ranks, combined twice, rank %d" % (world_size, rank), ValueError,
                  r"rank 0 rejected its argument handle|handle was already combined",
                  lambda: combine(recv_hidden, handle, weights))

    # What only the ranks together see: every rank raises, then all are still in step.
    swapped = case["table"].clone()
    swapped[[0, 1]] = swapped[[1, 0]]  # two rows swapped on rank 1 only
    last = world_size - 1
    for name, overrides, error_type, pattern in [
        ("table rows swapped on rank 1", dict(table=swapped if rank == 1 else case["table"]),
         ValueError, r"the ranks disagree on the table \(its counts and replica slots\) "
                     r"\(ranks \[1\] differ from rank 0\)"),
        ("hidden size", dict(hidden=torch.zeros(len(inputs["hidden"]), 1 + (rank == 0),
                                                dtype=torch.float64)),
         ValueError, r"ranks disagree on hidden size \(by rank: \[2, 1"),
        ("hidden dtype (bfloat16 on rank 1)",
         dict(hidden=inputs["hidden"].to((torch.float64, torch.bfloat16)[rank == 1])),
         ValueError, r"ranks disagree on hidden's dtypes and row shapes \(ranks \[1\] differ"),
        ("K", dict(topk_ids=torch.cat([inputs["topk_ids"], inputs["topk_ids"][:, :1]], dim=1)
                   if rank == last else inputs["topk_ids"]),
         ValueError, r"ranks disagree on K \(topk_ids' columns\)"),
        ("capacity mode on one rank", dict(max_tokens_per_rank=8 if rank == 0 else None),
         ValueError, r"ranks disagree on max_tokens_per_rank"),
        ("too many tokens for the capacity on rank 1", dict(
            max_tokens_per_rank=1 if rank == 1 else 2,
            hidden=torch.zeros(2, HIDDEN_SIZE, dtype=torch.float64),
            topk_ids=torch.zeros(2, 1, dtype=torch.int64)),
         ValueError, r"this rank has T = 2 tokens, more than max_tokens_per_rank = 1" if rank == 1
         else r"rank 1 rejected its argument max_tokens_per_rank"),
        ("slots_per_rank", dict(slots_per_rank=case["slots_per_rank"] + (rank == 1),
                                table=case["table"][:1],
                                topk_ids=torch.zeros_like(inputs["topk_ids"])),
         ValueError, r"ranks disagree on slots_per_rank"),
        ("bad id on rank 1", dict(topk_ids=torch.full((2, 1), len(case["table"]) * (rank == 1)),
                                  hidden=torch.zeros(2, HIDDEN_SIZE, dtype=torch.float64)),
         IndexError, r"rank\(s\) \[1\] had topk_ids elements the table cannot map"),
    ]:
        expect_raises(failures, "%d ranks, %s, rank %d" % (world_size, name, rank), error_type,
                      pattern, lambda: dispatch(**dict(arguments, **overrides)))

    # combine: widths or dtypes that differ, and handles of different dispatches.
    recv_hidden, _, handle = dispatch(**arguments)
    for name, expert_out, pattern in [
        ("width", torch.zeros(handle.num_received, HIDDEN_SIZE + (rank == 1),
                              dtype=torch.float64), r"disagree on expert_out's width"),
        ("dtype", recv_hidden.to((torch.float64, torch.bfloat16)[rank == last]),
         r"disagree on expert_out's dtype"),
    ]:
        expect_raises(failures, "%d ranks, combine %s differs, rank %d" % (world_size, name, rank),
                      ValueError, pattern, lambda: combine(expert_out, handle, weights))
    # Two micro-batches; rank 0 combines the second while the others combine the first.
    second_hidden, _, second = dispatch(**arguments)
    mine = (second, second_hidden) if rank == 0 else (handle, recv_hidden)
    expect_raises(failures, "%d ranks, micro-batches out of step, rank %d" % (world_size, rank),
                  ValueError, r"disagree on the dispatch it combines",
                  lambda: combine(mine[1], mine[0], weights))
    combine(recv_hidden, handle, weights)
    combine(second_hidden, second, weights)
    # One rank in dispatch() while the others are in combine(): both raise.
    recv_hidden, _, handle = dispatch(**arguments)
    expect_raises(failures, "%d ranks, dispatch meets combine, rank %d" % (world_size, rank),
                  ValueError, r"disagree on the call \(1: dispatch\(\), 2: combine\(\)\)",
                  (lambda: dispatch(**arguments)) if rank == 0 else
                  (lambda: combine(recv_hidden, handle, weights)))
    combine(recv_hidden, handle, weights)
    check_unchecked_failures(rank, world_size, group, case, failures)
    check_case(case, rank, group, failures, "%d ranks, after the errors" % world_size)
    # load_counts and the table made inside torch.inference_mode(), the call
    # outside it (as when a runtime is built in one mode and served in the other).
    with torch.inference_mode():
        counts = torch.zeros(world_size * case["slots_per_rank"], dtype=torch.int64)
        inference_table = case["table"].clone()
    recv_hidden, _, handle = dispatch(**dict(arguments, table=inference_table,
                                             load_counts=counts))
    out = combine(recv_hidden, handle, inputs["topk_weights"])
    if not torch.equal(counts, reference_load(case, rank)) or out.is_inference():
        failures.append("%d ranks, inference-made load_counts, rank %d: %s" % (
            world_size, rank, counts.tolist()))


def check_unchecked_failures(rank, world_size, group, case, failures):
    """Unchecked capacity mode reads nothing on the host: tables that differ
    or an id a table cannot map deliver padding only on every rank, combine
    gives NaN on every rank, and handle.status says so; nothing raises."""
    hidden = torch.ones(2, HIDDEN_SIZE, dtype=torch.float64)
    ids = torch.tensor([[0], [1]])
    swapped = case["table"].clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    for name, table, ids in [
        ("tables differ", swapped if rank == 1 else case["table"], ids),
        ("bad id", case["table"], ids if rank != 1 else torch.full_like(ids, len(case["table"]))),
    ]:
        context = "%d ranks, unchecked, %s, rank %d" % (world_size, name, rank)
        load_counts = torch.zeros(world_size * case["slots_per_rank"], dtype=torch.int64)
        try:
            recv_hidden, recv_slot, handle = dispatch(
                hidden, ids, table, slots_per_rank=case["slots_per_rank"], group=group,
                max_tokens_per_rank=2, checked=False, load_counts=load_counts)
            out = combine(torch.zeros_like(recv_hidden), handle, torch.ones(2, 1))
        except Exception as error:  # reported; the ranks stay in step
            failures.append("%s: raised %s: %s" % (context, type(error).__name__, error))
            continue
        if (recv_slot != PADDING_ROW).any() or handle.status.item() == 0 or \
                handle.slot_counts.any() or load_counts.any():
            failures.append("%s: slots %s, status %s, slot counts %s, load %s" % (
                context, recv_slot.tolist(), handle.status.tolist(), handle.slot_counts.tolist(),
                load_counts.tolist()))
        if out.numel() and not out.isnan().all():
            failures.append("%s: combine gave %s, expected NaN" % (context, out.tolist()))


def check_groups(rank, world_size, seed, failures):
    """Single-rank groups (each rank alone: everything stays local, bad input
    still raises) and a subgroup without rank 0."""
    singles = [dist.new_group([member]) for member in range(world_size)]
    single_case = make_case(seed, 1, 0, 1, torch.int32)  # each rank is group rank 0 of its own
    check_case(single_case, 0, singles[rank], failures, "single-rank group")
    inputs = single_case["ranks"][0]
    expect_value_error(failures, "single-rank group, rank %d" % rank, r"hidden must be \(T, H\)",
                       lambda: dispatch(inputs["hidden"][0], inputs["topk_ids"],
                                        single_case["table"],
                                        slots_per_rank=single_case["slots_per_rank"],
                                        group=singles[rank]))
    subgroup = dist.new_group(list(range(1, world_size)))
    sub_case = make_case(seed + 1, world_size - 1, 1, 0, torch.int64)
    if rank == 0:
        expect_value_error(failures, "non-member", r"group: this process \(global rank 0\) "
                           "is not a member", lambda: dispatch(
                               torch.zeros(1, HIDDEN_SIZE), torch.zeros(1, 1, dtype=torch.int64),
                               sub_case["table"], slots_per_rank=sub_case["slots_per_rank"],
                               group=subgroup))
    else:
        check_case(sub_case, rank - 1, subgroup, failures, "subgroup without rank 0")


def rank_main(rank, world_size, seed):
    """Groups of 2 and 3 ranks (the first ones) and the world of 4: one spawn."""
    groups = {2: dist.new_group([0, 1]), 3: dist.new_group([0, 1, 2]), 4: None}
    failures, num_cases = [], 0
    for size, group in groups.items():
        if rank >= size:
            continue
        if size == 2:
            check_hand_worked(rank, group, failures)
        num_cases += sweep(rank, size, group, seed + 100 * size, failures)
        check_errors(rank, size, group, seed + 100 * size + 50, failures)
    check_groups(rank, world_size, seed + 1000, failures)
    return num_cases, failures


def test_dispatch_combine_equal_dense_reference_on_2_3_and_4_ranks(rng):
    # 2: the hand-worked case; 3: replica counts that do not divide it; 4: up
    # to two shared-expert ranks; 1: each rank alone. All in one 4-rank run.
    seed = int(rng.integers(2**31))
    results = expect_all_ok(run_ranks(rank_main, 4, args=(seed,), timeout_s=120))
    failures = [failure for _, rank_failures in results for failure in rank_failures]
    assert not failures, "seed %d:\n%s" % (seed, "\n".join(failures[:20]))
    assert [num_cases for num_cases, _ in results] == [19 + 28 + 28, 19 + 28 + 28, 28 + 28, 28]


def rank_main_cuda(rank, world_size, seed):
    """World size 1 on NCCL (a group beside the harness's gloo one), CUDA
    tensors: the same cases, the counted bad id, a float32 round."""
    nccl = dist.new_group([0], backend="nccl")
    failures, index = [], 0
    for balance_mode in (0, 1):
        for tokens in ("random", "all_empty"):
            for id_dtype in (torch.int32, torch.int64):
                case = make_case(seed + index, 1, 0, balance_mode, id_dtype, tokens)
                check_case(case, 0, nccl, failures, "cuda case %d" % index, device="cuda",
                           prepared=index % 2 == 1,
                           load_dtype=(torch.int64, torch.int32)[index % 4 // 2])
                index += 1
    table = torch.tensor([[1, 0]], dtype=torch.int32, device="cuda")
    try:  # an id outside [0, E): on CUDA the op counts it, and dispatch raises after the header
        dispatch(torch.zeros(2, 1, device="cuda"), torch.tensor([[0], [1]], device="cuda"),
                 table, slots_per_rank=1, group=nccl)
        failures.append("cuda bad id: no error")
    except IndexError as error:
        if "rank(s) [0] had topk_ids elements the table cannot map" not in str(error):
            failures.append("cuda bad id: %s" % error)
    recv_hidden, recv_slot, handle = dispatch(
        torch.ones(3, 2, device="cuda"), torch.zeros(3, 2, dtype=torch.int64, device="cuda"),
        table, slots_per_rank=1, group=nccl)
    out = combine(recv_hidden * 2, handle, torch.full((3, 2), 0.25, device="cuda"))
    if out.dtype != torch.float32 or out.device.type != "cuda" or out.tolist() != [[1.0] * 2] * 3:
        failures.append("cuda float32 round: %s" % out)
    return index, failures


@pytest.mark.skipif(not torch.cuda.is_available() or not moe_eplb.with_cuda
                    or not dist.is_nccl_available(), reason="needs CUDA, NCCL and a CUDA build")
def test_dispatch_combine_on_cuda_nccl_world_size_1(rng):
    seed = int(rng.integers(2**31))
    [(num_cases, failures)] = expect_all_ok(run_ranks(rank_main_cuda, 1, args=(seed,),
                                                      timeout_s=120))
    assert not failures, "seed %d:\n%s" % (seed, "\n".join(failures[:20]))
    assert num_cases == 8


@pytest.mark.skipif(dist.is_initialized(), reason="this process already has a process group")
def test_dispatch_without_a_process_group_raises():
    # A single process that never called init_process_group: a clear error, not torch's.
    with pytest.raises(RuntimeError, match=r"^dispatch\(\): torch.distributed is not initialized"):
        dispatch(torch.zeros(1, 2), torch.zeros(1, 1, dtype=torch.int64),
                 torch.tensor([[1, 0]], dtype=torch.int32), slots_per_rank=1)

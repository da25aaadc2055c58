"""moe_eplb.distributed.ExpertParallelMoE on gloo ranks against a dense
single-process MoE with the same weights and gate (float64).

One 3-rank run (a group of its first 2, then all 3) goes through every case: fixed
tables in both balance modes, ranks with zero tokens, a float32 layer, and
a layer on a runtime whose slot tensors are permuted in place under it.
"""
import re

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import moe_eplb

from moe_eplb.distributed import ExpertParallelMoE, combine, dispatch
from moe_eplb.distributed.moe import slots_from_dense
from dist_harness import expect_all_ok, run_ranks
from reference import make_table

HIDDEN, INTERMEDIATE, NUM_EXPERTS, TOP_K = 4, 3, 5, 2


def dense_weights(rng):
    """gate (E, H), w_gate (E, H, I), w_up (E, H, I), w_down (E, I, H), float64."""
    def draw(*shape):
        return torch.from_numpy(rng.standard_normal(shape))
    return (draw(NUM_EXPERTS, HIDDEN), draw(NUM_EXPERTS, HIDDEN, INTERMEDIATE),
            draw(NUM_EXPERTS, HIDDEN, INTERMEDIATE), draw(NUM_EXPERTS, INTERMEDIATE, HIDDEN))


def dense_moe(hidden, weights):
    """Every token through its top-K experts on one process, token by token:
    softmax, top-k, renormalise, sum of weight * SwiGLU(x) in k order."""
    gate, w_gate, w_up, w_down = weights
    out = torch.zeros_like(hidden)
    for token, x in enumerate(hidden):
        probabilities = torch.softmax(gate @ x, dim=0)
        top_weights, top_ids = torch.topk(probabilities, TOP_K)
        top_weights = top_weights / top_weights.sum()
        for weight, expert in zip(top_weights, top_ids.tolist()):
            out[token] += weight * ((F.silu(x @ w_gate[expert]) * (x @ w_up[expert]))
                                    @ w_down[expert])
    return out


def token_counts(rng, world_size):
    """Tokens per rank, 0..7, one rank with none."""
    counts = rng.integers(0, 8, size=world_size)
    counts[rng.integers(world_size)] = 0
    return counts.tolist()


def compare(failures, context, out, expected, tolerance=1e-12):
    if out.shape != expected.shape or out.dtype != expected.dtype:
        failures.append("%s: got %s %s, expected %s %s" % (context, tuple(out.shape), out.dtype,
                                                          tuple(expected.shape), expected.dtype))
    elif not torch.allclose(out, expected, rtol=tolerance, atol=tolerance):
        failures.append("%s: max difference %g" % (context, (out - expected).abs().max().item()))


class PermutingRuntime:
    """The part of EplbRuntime's interface the layer uses, over a fixed table
    that permute() changes by moving each rank's slots in place, as a
    rebalance does."""

    def __init__(self, table, slots_per_rank, balance_mode, group):
        self._table = table
        self.group = group
        self.slots_per_rank = slots_per_rank
        self.balance_mode = balance_mode
        self.tensors = None
        self.dispatches = 0

    def register_expert_tensors(self, layer, tensors):
        assert layer == 7
        self.tensors = tensors

    def table(self, layer):
        assert layer == 7
        return self._table

    def dispatch(self, layer, hidden, topk_ids):
        self.dispatches += 1
        return dispatch(hidden, topk_ids, self.table(layer), slots_per_rank=self.slots_per_rank,
                        balance_mode=self.balance_mode, group=self.group)

    def combine(self, layer, expert_out, handle, topk_weights):
        assert layer == 7
        assert handle.group is self.group
        return combine(expert_out, handle, topk_weights)

    def permute(self, rng, rank, world_size):
        """Shuffles the slots within every rank (the same draws on every
        rank): moves this rank's tensors in place and rewrites the table."""
        slots_per_rank = self.slots_per_rank
        new_slot = []
        for owner in range(world_size):
            permutation = rng.permutation(slots_per_rank)
            new_slot += [owner * slots_per_rank + int(p) for p in permutation]
        table = self._table.clone()
        for expert in range(table.shape[0]):
            for column in range(1, int(table[expert, 0]) + 1):
                table[expert, column] = new_slot[int(table[expert, column])]
        first = rank * slots_per_rank
        source_of = [0] * slots_per_rank  # new local slot <- old local slot
        for old in range(slots_per_rank):
            source_of[new_slot[first + old] - first] = old
        with torch.no_grad():
            for tensor in self.tensors:
                tensor.copy_(tensor[source_of].clone())
        self._table = table


def check_fixed_tables(rank, world_size, group, rng, slots_per_rank, weights, failures):
    """Standalone layers over random tables in both modes, float64 and float32."""
    for balance_mode in (0, 1):
        for repeat in range(2):
            table = make_table(rng, NUM_EXPERTS, world_size, slots_per_rank, world_size + 1,
                               "random")
            layer = ExpertParallelMoE.from_dense(*weights, TOP_K, slots_per_rank, table=table,
                                                 balance_mode=balance_mode, group=group)
            counts = token_counts(rng, world_size)
            hidden = [torch.from_numpy(rng.standard_normal((count, HIDDEN))) for count in counts]
            context = "%d ranks, mode %d, table %d, rank %d (%d tokens)" % (
                world_size, balance_mode, repeat, rank, counts[rank])
            compare(failures, context, layer(hidden[rank]), dense_moe(hidden[rank], weights))
            if repeat == 1:  # the same layer from nn.Linear-style (out, in) weights
                linear = ExpertParallelMoE.from_dense(
                    weights[0], *(w.transpose(1, 2).contiguous() for w in weights[1:]), TOP_K,
                    slots_per_rank, table=table, balance_mode=balance_mode, group=group,
                    layout="out_in")
                compare(failures, context + ", layout out_in", linear(hidden[rank]),
                        dense_moe(hidden[rank], weights))
            if repeat == 0:  # (..., H) input; a float32 layer
                batch = torch.from_numpy(rng.standard_normal((2, 3, HIDDEN)))
                compare(failures, context + ", (2, 3, H)", layer(batch),
                        dense_moe(batch.reshape(-1, HIDDEN), weights).reshape(2, 3, HIDDEN))
                single = ExpertParallelMoE.from_dense(
                    *(w.float() for w in weights), TOP_K, slots_per_rank, table=table,
                    balance_mode=balance_mode, group=group)
                compare(failures, context + ", float32", single(hidden[rank].float()),
                        dense_moe(hidden[rank], weights).float(), tolerance=1e-4)


def check_runtime(rank, world_size, group, rng, slots_per_rank, weights, failures):
    """On a runtime: the slot tensors it was given are the layer's (moved in
    place, the output follows), and every dispatch goes through it."""
    table = make_table(rng, NUM_EXPERTS, world_size, slots_per_rank, world_size + 1, "max")
    runtime = PermutingRuntime(table, slots_per_rank, balance_mode=0, group=group)
    layer = ExpertParallelMoE.from_dense(*weights, TOP_K, slots_per_rank, runtime=runtime,
                                         layer=7)
    for registered, parameter in zip(runtime.tensors, (layer.w_gate, layer.w_up, layer.w_down)):
        if registered.data_ptr() != parameter.data_ptr():
            failures.append("rank %d: a registered tensor does not share the layer's storage"
                            % rank)
    for step in range(3):
        counts = token_counts(rng, world_size)
        hidden = [torch.from_numpy(rng.standard_normal((count, HIDDEN))) for count in counts]
        compare(failures, "%d ranks, runtime step %d, rank %d" % (world_size, step, rank),
                layer(hidden[rank]),
                dense_moe(hidden[rank], weights))
        runtime.permute(rng, rank, world_size)
    if runtime.dispatches != 3:
        failures.append("rank %d: %d dispatches through the runtime, expected 3"
                        % (rank, runtime.dispatches))


def check_errors(rank, world_size, group, slots_per_rank, weights, failures):
    table = make_table(np.random.default_rng(0), NUM_EXPERTS, world_size, slots_per_rank, 2,
                       "single")
    layer = ExpertParallelMoE.from_dense(*weights, TOP_K, slots_per_rank, table=table,
                                         group=group)
    for name, call, pattern in [
        ("no table", lambda: ExpertParallelMoE(HIDDEN, INTERMEDIATE, NUM_EXPERTS, TOP_K,
                                               slots_per_rank),
         r"table is required without a runtime"),
        ("top_k", lambda: ExpertParallelMoE(HIDDEN, INTERMEDIATE, NUM_EXPERTS, NUM_EXPERTS + 1,
                                            slots_per_rank, table=table),
         r"top_k must be <= num_experts = 5, got 6"),
        ("slots_per_rank", lambda: ExpertParallelMoE(HIDDEN, INTERMEDIATE, NUM_EXPERTS, TOP_K, 0,
                                                     table=table),
         r"slots_per_rank must be an integer >= 1, got 0"),
        ("weights", lambda: layer.load_dense_weights(weights[0], weights[1][:, :1], *weights[2:]),
         r"w_gate must be \(5, 4, 3\) \(layout='in_out'.*\), got \(5, 1, 3\)$"),
        ("table rows", lambda: layer.set_table(table[:1]), r"table must be \(E, F\) with E = 5"),
        ("hidden", lambda: layer(torch.zeros(2, HIDDEN + 1, dtype=torch.float64)),
         r"hidden must be \(\.\.\., 4\), got shape \(2, 5\)"),
        ("hidden dtype", lambda: layer(torch.zeros(2, HIDDEN, dtype=torch.float32)),
         r"hidden is torch.float32 but the layer's weights are torch.float64; cast hidden"),
        # Hugging Face / vLLM weights (nn.Linear's (out, in)) without saying so: the
        # message names w_gate and the layout to pass, not the gate.
        ("Linear layout", lambda: ExpertParallelMoE.from_dense(
            weights[0], *(w.transpose(1, 2) for w in weights[1:]), TOP_K, slots_per_rank,
            table=table, group=group),
         r"from_dense\(\): w_gate has shape \(5, 3, 4\), whose axis 1 should be H = 4 .* "
         r"that is the 'out_in' layout .* pass layout='out_in'"),
        ("layout name", lambda: ExpertParallelMoE.from_dense(
            *weights, TOP_K, slots_per_rank, table=table, group=group, layout="hf"),
         r"layout must be one of \['in_out', 'out_in'\], got 'hf'"),
        ("w_down layout", lambda: layer.load_dense_weights(*weights[:3], weights[3].transpose(1, 2)),
         r"w_down must be \(5, 3, 4\) \(layout='in_out'.*\), got \(5, 4, 3\); that is the "
         r"'out_in' layout"),
    ]:
        try:
            call()
            failures.append("%s, rank %d: no ValueError" % (name, rank))
        except ValueError as error:
            if not re.search(pattern, str(error)):
                failures.append("%s, rank %d: %r does not match %r" % (name, rank, str(error),
                                                                        pattern))


def rank_main(rank, world_size, seed):
    """A group of the first 2 ranks, then all 3 (replica counts that do not divide it)."""
    groups = {2: dist.new_group([0, 1]), 3: None}
    failures = []
    for size, group in groups.items():
        if rank >= size:
            continue
        rng = np.random.default_rng(seed + size)  # the same draws on every rank
        slots_per_rank = 3 if size == 2 else 2  # 6 slots for 5 experts
        weights = dense_weights(rng)
        check_fixed_tables(rank, size, group, rng, slots_per_rank, weights, failures)
        check_runtime(rank, size, group, rng, slots_per_rank, weights, failures)
        check_errors(rank, size, group, slots_per_rank, weights, failures)
    return failures


def test_expert_parallel_moe_equals_dense_moe_on_2_and_3_ranks(rng):
    seed = int(rng.integers(2**31))
    failures = sum(expect_all_ok(run_ranks(rank_main, 3, args=(seed,), timeout_s=120)), [])
    assert not failures, "seed %d:\n%s" % (seed, "\n".join(failures[:20]))


def test_slot_experts_names_each_slots_expert():
    # The C++ answer (the runtime folds load with it; nothing re-derives it).
    table = torch.tensor([[1, 3, -1], [2, 0, 2]], dtype=torch.int32)
    assert moe_eplb.slot_experts(table, 2, 2).tolist() == [1, -1, 1, 0]
    with pytest.raises(ValueError, match=r"slot_experts\(\): table is not a valid table"):
        moe_eplb.slot_experts(torch.tensor([[1, 3, -1], [2, 0, 3]], dtype=torch.int32), 2, 2)


def test_slots_from_dense_fills_each_ranks_slots():
    # 2 ranks, 2 slots each: expert 0 in slot 3; expert 1 in slots 0 and 2; slot 1 empty
    table = torch.tensor([[1, 3, -1], [2, 0, 2]], dtype=torch.int32)
    dense = torch.tensor([[10.0, 11.0], [20.0, 21.0]])
    assert slots_from_dense(dense, table, 0, 2, 2).tolist() == [[20.0, 21.0], [0.0, 0.0]]
    assert slots_from_dense(dense, table, 1, 2, 2).tolist() == [[20.0, 21.0], [10.0, 11.0]]
    with pytest.raises(ValueError, match=r"dense must be \(E, \.\.\.\) with E = 2"):
        slots_from_dense(dense[:1], table, 0, 2, 2)

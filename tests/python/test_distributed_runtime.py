"""moe_eplb.distributed.EplbRuntime on gloo ranks: an online run on drifting
traffic through two ExpertParallelMoE layers, checked at every step against a
dense single-process model, plus the runtime's faults and error inputs.

Per spawn (each costs seconds): one 30-step run, then (3 ranks) the fault
cases on a fresh runtime.
"""
import hashlib

import pytest
import torch
import torch.distributed as dist

from dist_harness import expect_all_ok, run_ranks

distributed = pytest.importorskip("moe_eplb.distributed")
from moe_eplb.distributed import demo  # noqa: E402  (the traffic and the model)

NUM_LAYERS, NUM_EXPERTS, TOP_K, HIDDEN, INTERMEDIATE = 2, 6, 2, 8, 4
NUM_STEPS = 30
# Windows of 2 steps, a rebalance every 6. The traffic drifts in jumps of
# about one expert that land on the window each rebalance plans from
# (forwards 6k + 4 .. 6k + 9 see one traffic pattern), so the window before a
# rebalance and the window after its layers switch see the same traffic.
# One window per plan: with jumps, an older window would describe traffic
# that is gone (the window history is checked in runtime_faults()).
WINDOW_STEPS, NUM_WINDOWS, REBALANCE_EVERY, PERIOD = 2, 1, 6, 18.0


def traffic_step(step):
    return REBALANCE_EVERY * ((step + 2) // REBALANCE_EVERY)


def table_hash(tables):
    digest = hashlib.blake2b(digest_size=8)
    for table in tables:
        digest.update(table.numpy().tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def gathered(value):
    """Every rank's int64 value (a list by rank)."""
    values = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(values, torch.tensor([value], dtype=torch.int64))
    return [v.item() for v in values]


def max_over_mean(loads):
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean else 1.0


def online_run(rank, world_size, seed, slots_per_rank, balance_mode, ranks_per_node,
               layers_per_step):
    """30 steps; per step: rows each rank received per layer, whether the
    output equals the dense model, whether all ranks' tables agree."""
    dense = demo.dense_layers(NUM_LAYERS, NUM_EXPERTS, HIDDEN, INTERMEDIATE, seed)
    runtime = distributed.EplbRuntime(NUM_LAYERS, NUM_EXPERTS, slots_per_rank,
                                      balance_mode=balance_mode, window_steps=WINDOW_STEPS,
                                      num_windows=NUM_WINDOWS, rebalance_every=REBALANCE_EVERY,
                                      layers_per_step=layers_per_step,
                                      ranks_per_node=ranks_per_node)
    layers = [distributed.ExpertParallelMoE.from_dense(*weights, TOP_K, slots_per_rank,
                                                       runtime=runtime, layer=idx)
              for idx, weights in enumerate(dense)]
    counts = []
    for layer in layers:
        demo._count_received(layer, counts)
    generator = torch.Generator().manual_seed(seed * 31 + rank)
    steps = []
    for step in range(NUM_STEPS):
        # Rank 0 has no tokens every other step (so once in every window,
        # keeping the windows comparable); the others have 160.
        num_tokens = 0 if rank == 0 and step % 2 == 1 else 160
        hidden = demo.drifting_batch(dense[0][0], traffic_step(step), rank, world_size,
                                     num_tokens, generator, period=PERIOD)
        counts.clear()
        out = demo.run_model(layers, hidden)
        expected = demo.run_dense(dense, hidden, TOP_K)
        equal = bool(torch.allclose(out, expected, rtol=1e-10, atol=1e-10))
        runtime.step()
        hashes = gathered(table_hash(runtime.table(layer) for layer in range(NUM_LAYERS)))
        loads = [gathered(count) for count in counts]  # per layer, by rank
        steps.append(dict(equal=equal, same_tables=len(set(hashes)) == 1, loads=loads,
                          migrating=runtime.migrating))
    return dict(steps=steps, rebalances=[vars(r) for r in runtime.rebalances])


def check_online_run(outcomes, window_steps=WINDOW_STEPS):
    steps = outcomes[0]["steps"]
    for rank, outcome in enumerate(outcomes):
        bad = [s for s, step in enumerate(outcome["steps"]) if not step["equal"]]
        assert not bad, "rank %d: output differs from the dense model at steps %s" % (rank, bad)
        split = [s for s, step in enumerate(outcome["steps"]) if not step["same_tables"]]
        assert not split, "rank %d: tables differ between ranks at steps %s" % (rank, split)
        # Every rank saw the same rebalances (all of them: lengths first).
        assert len(outcome["rebalances"]) == len(outcomes[0]["rebalances"]), rank
        for a, b in zip(outcome["rebalances"], outcomes[0]["rebalances"]):
            assert {k: v for k, v in a.items() if not k.startswith("this_rank")} == \
                {k: v for k, v in b.items() if not k.startswith("this_rank")}, (rank, a, b)
    rebalances = [r for r in outcomes[0]["rebalances"] if r["layers"]]
    assert len(rebalances) >= 2, outcomes[0]["rebalances"]
    for idx, record in enumerate(outcomes[0]["rebalances"]):
        if record["done_step"] is not None:  # what the ranks received is what was planned
            received = sum(o["rebalances"][idx]["this_rank_received"] for o in outcomes)
            assert received == sum(record["experts_moved"]), record

    def window_ratio(first_step, layer):
        """Measured max/mean over the window_steps forwards from first_step."""
        totals = [sum(steps[s]["loads"][layer][r] for s in range(first_step,
                                                                  first_step + window_steps))
                  for r in range(len(outcomes))]
        return max_over_mean(totals)

    # The last window the plan saw (the window_steps forwards before it, 0-based)
    # against the window after the last layer switched: the same traffic.
    checked = 0
    for record in rebalances:
        if record["done_step"] is None or record["done_step"] + window_steps > NUM_STEPS:
            continue
        assert traffic_step(record["step"] - window_steps) == traffic_step(
            record["done_step"] + window_steps - 1), "the test's timeline is off"
        checked += 1
        before = [window_ratio(record["step"] - window_steps, l) for l in record["layers"]]
        after = [window_ratio(record["done_step"], l) for l in record["layers"]]
        # Lower on average over the layers that changed, and no layer
        # clearly worse (one layer alone can tie within the sampling noise).
        assert sum(after) < sum(before), (record, before, after)
        assert all(a < b + 0.05 for a, b in zip(after, before)), (record, before, after)
    assert checked >= 2


def runtime_faults(rank, world_size, seed):
    """A migration that fails on one rank mid-run: every rank raises, the
    layer keeps its table and weights, and the runtime goes on. Then
    initial tables that differ, and bad arguments."""
    from moe_eplb.distributed import _migrate

    slots_per_rank = 3
    dense = demo.dense_layers(1, NUM_EXPERTS, HIDDEN, INTERMEDIATE, seed)
    runtime = distributed.EplbRuntime(1, NUM_EXPERTS, slots_per_rank, window_steps=2,
                                      num_windows=2, rebalance_every=2)
    layer = distributed.ExpertParallelMoE.from_dense(*dense[0], TOP_K, slots_per_rank,
                                                     runtime=runtime)
    generator = torch.Generator().manual_seed(seed + rank)
    results = {}
    step_counts = []  # this rank's choices per logical expert, per step

    def forward(step):
        hidden = demo.drifting_batch(dense[0][0], step, rank, world_size, 24, generator,
                                     period=4.0)
        _, ids = layer.route(hidden)
        step_counts.append(torch.bincount(ids.reshape(-1), minlength=NUM_EXPERTS))
        return bool(torch.allclose(layer(hidden), demo.dense_moe(hidden, *dense[0], TOP_K),
                                   rtol=1e-10, atol=1e-10))

    def fail(round_idx):
        if rank == 1:
            raise RuntimeError("injected failure")
    step, failed_at = 0, None
    while failed_at is None and step < 20:
        results.setdefault("equal", []).append(forward(step))
        table_before = runtime.table(0)
        weights_before = [t.clone() for t in layer.slot_tensors()]
        _migrate._before_round = fail if runtime.migrating else None
        try:
            runtime.step()
        except Exception as error:  # the fault under test
            failed_at = step
            results["error"] = (type(error).__name__, str(error))
            results["table_kept"] = torch.equal(runtime.table(0), table_before)
            results["weights_kept"] = all(torch.equal(a, b) for a, b in
                                          zip(layer.slot_tensors(), weights_before))
        _migrate._before_round = None
        step += 1
    results["failed_at"] = failed_at
    results["migrating_after"] = runtime.migrating
    for extra in range(4):  # still serves, and rebalances again
        results["equal"].append(forward(step + extra))
        runtime.step()
    results["rebalances"] = len(runtime.rebalances)
    # The two windows kept: each the sum of its two steps' choices per
    # logical expert, whatever tables were in force (they changed).
    closed = 2 * (len(step_counts) // 2)  # forwards up to the last window's end
    expected = [sum(step_counts[closed - 4:closed - 2]), sum(step_counts[closed - 2:closed])]
    results["windows"] = [torch.equal(w[0], e) for w, e in zip(runtime.windows(), expected)] + [
        len(runtime.windows())]

    # Initial tables that differ between ranks: ValueError on every rank.
    tables = [runtime.table(0)]
    if rank == 2:
        tables = [tables[0][[1, 0] + list(range(2, NUM_EXPERTS))]]
    results["differ"] = raises(lambda: distributed.EplbRuntime(
        1, NUM_EXPERTS, slots_per_rank, initial_tables=tables, window_steps=1, num_windows=1,
        rebalance_every=1))
    # Bad arguments (every rank passes the same): ValueError naming them.
    bad = dict(
        window_steps=dict(window_steps=0),
        num_experts=dict(num_experts=world_size * slots_per_rank + 1),
        balance_mode=dict(balance_mode=3),
        initial_tables=dict(initial_tables=torch.zeros(NUM_EXPERTS, 3, dtype=torch.int64)),
        max_moves=dict(max_moves=-1),
        move_cost=dict(move_cost=-0.5),
    )
    for name, change in bad.items():
        args = dict(num_layers=1, num_experts=NUM_EXPERTS, slots_per_rank=slots_per_rank,
                    window_steps=1, num_windows=1, rebalance_every=1)
        args.update(change)
        results["bad " + name] = (name, raises(lambda: distributed.EplbRuntime(
            args.pop("num_layers"), args.pop("num_experts"), args.pop("slots_per_rank"),
            **args)))
    results["bad layer"] = ("layer", raises(lambda: runtime.table(1)))
    # step() with nothing due communicates with no one (on CUDA: no host
    # sync either; bench/gpu_check.sh checks that).
    idle = distributed.EplbRuntime(1, NUM_EXPERTS, slots_per_rank, window_steps=2,
                                   num_windows=2, rebalance_every=10**6)
    calls = []

    def counted(name, function):
        def call(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)
        return call
    originals = {name: getattr(dist, name) for name in
                 ("all_gather", "all_reduce", "broadcast", "batch_isend_irecv", "barrier")}
    for name, function in originals.items():
        setattr(dist, name, counted(name, function))
    try:
        for _ in range(9):
            idle.step()
    finally:
        for name, function in originals.items():
            setattr(dist, name, function)
    results["idle collectives"] = calls
    results["idle windows"] = len(idle.windows())
    results["bad tensors"] = ("tensors[0]", raises(lambda: runtime.register_expert_tensors(
        0, [torch.zeros(slots_per_rank + 1, 2)])))
    return results


def raises(call):
    try:
        call()
    except Exception as error:  # inspected by the test
        return type(error).__name__, str(error)
    return None


def online_run_and_faults(rank, world_size, seed, slots_per_rank, balance_mode, ranks_per_node,
                          layers_per_step, faults):
    """One spawn for both (spawning costs seconds): the online run, then,
    on a fresh runtime in the same group, the fault cases."""
    run = online_run(rank, world_size, seed, slots_per_rank, balance_mode, ranks_per_node,
                     layers_per_step)
    return run, runtime_faults(rank, world_size, seed + 6) if faults else None


@pytest.mark.parametrize("world_size, slots_per_rank, balance_mode, ranks_per_node, "
                         "layers_per_step", [
                             (4, 3, 0, 2, 2),   # two nodes, rank mode, both layers in one step
                             (3, 3, 1, 0, 1),   # token mode, 9 slots for 6 experts; faults
                         ])
def test_online_run_rebalances_and_equals_dense_model(world_size, slots_per_rank, balance_mode,
                                                      ranks_per_node, layers_per_step):
    outcomes = expect_all_ok(run_ranks(
        online_run_and_faults, world_size,
        args=(5, slots_per_rank, balance_mode, ranks_per_node, layers_per_step,
              world_size == 3),
        timeout_s=150.0))
    check_online_run([run for run, _ in outcomes])
    if world_size == 3:
        check_runtime_faults([faults for _, faults in outcomes])


def check_runtime_faults(outcomes):
    """A failed migration raised on every rank and left the layer as it was;
    the runtime served and rebalanced afterwards; its windows are right;
    differing initial tables and bad arguments raised ValueError."""
    for rank, results in enumerate(outcomes):
        assert all(results["equal"]), (rank, results["equal"])
        assert results["failed_at"] is not None, "rank %d: no migration failed" % rank
        kind, message = results["error"]
        if rank == 1:
            assert "injected failure" in message
        else:
            assert kind == "RuntimeError" and "rank(s) [1] failed" in message, message
        assert results["table_kept"] and results["weights_kept"], rank
        assert not results["migrating_after"]
        assert results["rebalances"] >= 2
        assert results["windows"] == [True, True, 2], results["windows"]
        assert results["idle collectives"] == [] and results["idle windows"] == 2, results
        kind, message = results["differ"]
        assert kind == "ValueError" and "disagree on initial_tables" in message, message
        for key, value in results.items():
            if key.startswith("bad "):
                name, error = value
                assert error is not None and error[0] == "ValueError", (key, error)
                assert name in error[1], (key, error)

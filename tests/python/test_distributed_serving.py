"""EplbRuntime the way serving engines call it, on gloo ranks: inside
torch.inference_mode(), in bfloat16, with ranks that disagree, without
registered weights, capped at zero moves, with its own route() instead of
dispatch(), and restarted mid-run from state_dict().

Each test is one spawn (spawning costs seconds) with many checks; every
group has a short timeout, and every check that must raise on every rank
also checks that it raised within seconds (not at the group's timeout).
"""
import re
import time

import pytest
import torch
import torch.distributed as dist

from dist_harness import expect_all_ok, run_ranks

distributed = pytest.importorskip("moe_eplb.distributed")
from moe_eplb.distributed import demo  # noqa: E402  (the traffic and the model)

NUM_EXPERTS, TOP_K, HIDDEN, INTERMEDIATE, SLOTS_PER_RANK = 6, 2, 8, 4, 3


def raises_within(call, limit_s=5.0):
    """(exception type name, message, seconds), or None when call() returned."""
    started = time.monotonic()
    try:
        call()
    except Exception as error:  # inspected by the test
        return type(error).__name__, str(error), time.monotonic() - started
    return None


def expect_everywhere(outcomes, key, pattern_by_rank, limit_s=5.0):
    """Every rank raised ValueError for `key`, matching its pattern, in time."""
    for rank, results in enumerate(outcomes):
        error = results[key]
        assert error is not None, "rank %d: no error for %s" % (rank, key)
        kind, message, seconds = error
        assert kind == "ValueError", (rank, key, error)
        assert re.search(pattern_by_rank(rank), message), (rank, key, message)
        assert seconds < limit_s, (rank, key, seconds)


def drifting_run(rank, world_size, runtime, layers, dense, steps, seed, *, first_step=0,
                 dtype=torch.float64, inference=False, step_inside=True):
    """Runs `steps` forwards of drifting traffic through the residual model
    of `layers` (on `runtime`), each layer's output compared with the dense
    float64 reference of the same weights and routing (demo.routed_reference,
    within demo.TOLERANCE for the dtype); returns per step whether all
    matched, the tables in force and the model's output."""
    generator = torch.Generator().manual_seed(seed * 31 + rank)
    for step in range(first_step):  # the same draws as a run that started at 0
        demo.drifting_batch(dense[0][0], step, rank, world_size, 24, generator, period=6.0)
    log = []
    for step in range(first_step, first_step + steps):
        hidden = demo.drifting_batch(dense[0][0], step, rank, world_size, 24, generator,
                                     period=6.0).to(dtype)
        equal = True
        with torch.inference_mode(inference):
            for layer, weights in zip(layers, dense):
                out = layer(hidden)
                equal &= demo.outputs_match(out, demo.routed_reference(layer, weights, hidden),
                                            str(dtype).replace("torch.", ""))
                hidden = hidden + out
            if step_inside:
                runtime.step()
        if not step_inside:
            runtime.step()
        log.append(dict(equal=equal, output=hidden.double(),
                        tables=[runtime.table(layer).tolist()
                                for layer in range(runtime.num_layers)]))
    return log


def make_model(runtime, dense, dtype=torch.float64, **options):
    return [distributed.ExpertParallelMoE.from_dense(*(w.to(dtype) for w in weights), TOP_K,
                                                     SLOTS_PER_RANK, runtime=runtime, layer=idx,
                                                     **options)
            for idx, weights in enumerate(dense)]


# ------------------------------------------------------------ agreement


def disagreements(rank, world_size):
    """Configuration values, initial tables and states that differ on one
    rank: every rank raises ValueError in one exchange, naming the value and
    the ranks, or the rank whose own argument was bad."""
    base = dict(num_layers=1, num_experts=NUM_EXPERTS, slots_per_rank=SLOTS_PER_RANK,
                window_steps=2, num_windows=2, rebalance_every=4)
    good = distributed.EplbRuntime(**base)
    table = good.table(0)
    swapped = table.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    invalid = table.clone()
    invalid[0, 0] = 0
    results = {}
    for key, change in [
        ("rebalance_every", dict(rebalance_every=8)),
        ("window_steps", dict(window_steps=3)),
        ("move_cost", dict(move_cost=0.5)),
        ("max_moves", dict(max_moves=2)),
        ("initial tables differ", dict(initial_tables=swapped)),
        ("invalid initial_tables", dict(initial_tables=invalid)),
        ("bad num_windows", dict(num_windows=0)),
    ]:
        arguments = dict(base, **change) if rank == 1 else base
        results[key] = raises_within(lambda: distributed.EplbRuntime(**arguments))
    # load_state_dict: one rank loads another step's state.
    state = good.state_dict()
    if rank == 1:
        state = dict(state, steps=state["steps"] + 1)
    results["state steps differ"] = raises_within(lambda: good.load_state_dict(state))
    broken = dict(good.state_dict(), tables=torch.zeros(1)) if rank == 2 else good.state_dict()
    results["bad state"] = raises_within(lambda: good.load_state_dict(broken))
    # Still in step: a runtime made now works, also from int64 tables whose values fit.
    distributed.EplbRuntime(**base)
    results["int64 tables"] = torch.equal(
        distributed.EplbRuntime(**dict(base, initial_tables=table.long())).table(0), table)
    return results


def test_runtime_agreement_raises_on_every_rank_within_seconds():
    outcomes = expect_all_ok(run_ranks(disagreements, 3, timeout_s=120.0, group_timeout_s=30.0))
    for key, shown in (("rebalance_every", r"\(by rank: \[4, 8, 4\]\)"),
                       ("window_steps", r"\(by rank: \[2, 3, 2\]\)"),
                       ("move_cost", r"\(ranks \[1\] differ from rank 0\)"),
                       ("max_moves", r"\(by rank: \[-1, 2, -1\]\)")):
        expect_everywhere(outcomes, key, lambda rank: r"^EplbRuntime\(\): the ranks disagree on "
                          + key + " " + shown + "; every rank must pass the same")
    expect_everywhere(outcomes, "initial tables differ",
                      lambda rank: r"disagree on initial_tables \(their content\) \(ranks \[1\]")
    expect_everywhere(outcomes, "invalid initial_tables", lambda rank: (
        r"^EplbRuntime\(\): initial_tables\[0\] is not a valid table" if rank == 1 else
        r"^EplbRuntime\(\): rank 1 rejected its argument initial_tables"))
    expect_everywhere(outcomes, "bad num_windows", lambda rank: (
        r"num_windows must be an integer >= 1, got 0" if rank == 1 else
        r"rank 1 rejected its argument num_windows"))
    expect_everywhere(outcomes, "state steps differ",
                      lambda rank: r"load_state_dict\(\): the ranks disagree on steps \(by rank: "
                                   r"\[0, 1, 0\]\)")
    assert all(results["int64 tables"] for results in outcomes)
    expect_everywhere(outcomes, "bad state", lambda rank: (
        r"state: tables must be a tensor of shape" if rank == 2 else
        r"rank 2 rejected its argument state"))


# ------------------------------------------------------------ weights


def unregistered_layers(rank, world_size, seed):
    """A rebalance that would change a layer whose tensors were never
    registered is refused on every rank, and no table changes; so is one
    where ranks registered different tensors. Then registering fixes it."""
    dense = demo.dense_layers(2, NUM_EXPERTS, HIDDEN, INTERMEDIATE, seed)
    runtime = distributed.EplbRuntime(2, NUM_EXPERTS, SLOTS_PER_RANK, window_steps=2,
                                      num_windows=1, rebalance_every=4)
    model = make_model(runtime, dense[:1])  # layer 1 has no weights
    tables = [runtime.table(layer) for layer in range(2)]
    results = dict(errors=[])
    generator = torch.Generator().manual_seed(seed + rank)
    for step in range(8):
        hidden = demo.drifting_batch(dense[0][0], step, rank, world_size, 32, generator,
                                     period=4.0)
        demo.run_model(model, hidden)
        _, ids = model[0].route(hidden)
        runtime.route(1, ids.flip(1))  # layer 1's load, without weights
        error = raises_within(runtime.step)
        if error is not None:
            results["errors"].append((step,) + error)
    results["tables_kept"] = all(torch.equal(runtime.table(layer), tables[layer])
                                 for layer in range(2))
    # Registered on rank 0 only: refused everywhere, naming the layer.
    weights = [torch.zeros(SLOTS_PER_RANK, 2)]
    if rank == 0:
        runtime.register_expert_tensors(1, weights)
    for _ in range(4):
        error = raises_within(runtime.step)
        if error is not None:
            results["differing"] = error
    results["rebalances"] = len(runtime.rebalances)
    return results


def test_unregistered_layer_refuses_the_rebalance_on_every_rank():
    outcomes = expect_all_ok(run_ranks(unregistered_layers, 2, args=(3,), timeout_s=120.0))
    for rank, results in enumerate(outcomes):
        assert results["errors"], "rank %d: no rebalance was refused" % rank
        for step, kind, message, seconds in results["errors"]:
            assert kind == "ValueError" and seconds < 5.0, (rank, message)
            assert re.search(r"would change layer\(s\) \[(0, )?1\], whose expert tensors were "
                             r"never registered", message), message
        assert results["tables_kept"], rank
        kind, message, _ = results["differing"]
        assert kind == "ValueError" and re.search(
            r"layer 1's registered expert tensors differ between ranks \(registered on ranks "
            r"\[0\]", message), (rank, message)
        assert results["rebalances"] == 0
    assert [e[0] for e in outcomes[0]["errors"]] == [e[0] for e in outcomes[1]["errors"]]


# ------------------------------------------------------------ serving modes


def serving_run(rank, world_size, seed, dtype_name, inference, made_inside, capacity,
                balance_mode):
    """Two layers on a runtime, drifting traffic, 16 steps: inside
    torch.inference_mode() or not, layers (and so their slot tensors) made
    inside it or not, step() inside or outside it, float64 or bfloat16,
    uneven or capacity dispatch, a replica rule. Every forward matches the
    dense model."""
    dtype = getattr(torch, dtype_name)
    dense = demo.dense_layers(2, NUM_EXPERTS, HIDDEN, INTERMEDIATE, seed)
    with torch.inference_mode(made_inside):
        runtime = distributed.EplbRuntime(2, NUM_EXPERTS, SLOTS_PER_RANK, window_steps=2,
                                          num_windows=2, rebalance_every=4,
                                          balance_mode=balance_mode)
        model = make_model(runtime, dense, dtype,
                           max_tokens_per_rank=24 if capacity else None)
    log = drifting_run(rank, world_size, runtime, model, dense, 16, seed, dtype=dtype,
                       inference=inference, step_inside=rank == 0)
    moved = sum(sum(r.experts_moved) for r in runtime.rebalances)
    installed = [layer for r in runtime.rebalances for layer in r.installed_layers]
    return dict(equal=[entry["equal"] for entry in log], moved=moved, installed=installed,
                inference_tensor=model[0].w_gate.is_inference())


@pytest.mark.parametrize("dtype_name, inference, made_inside, capacity, balance_mode", [
    ("float64", True, False, False, 0),    # vLLM / SGLang: forward under inference_mode
    ("float64", True, True, True, 1),      # weights made inside it, capacity mode
    ("bfloat16", True, True, False, 2),    # what MoE models run in; vLLM's replica rule
    ("bfloat16", False, False, True, 0),
])
def test_runtime_serves_in_inference_mode_and_bfloat16(dtype_name, inference, made_inside,
                                                       capacity, balance_mode):
    outcomes = expect_all_ok(run_ranks(serving_run, 2, args=(4, dtype_name, inference,
                                                             made_inside, capacity,
                                                             balance_mode),
                                       timeout_s=150.0))
    for rank, results in enumerate(outcomes):
        assert all(results["equal"]), (rank, results["equal"])
        assert results["moved"] > 0 and results["installed"], results  # weights did move
        assert results["inference_tensor"] == made_inside
    assert outcomes[0]["installed"] == outcomes[1]["installed"]


# ------------------------------------------------------------ routing only changes when counted


def zero_moves(rank, world_size, seed):
    """max_moves=0: no rebalance may change any layer's routing (a reorder
    within a row is a routing change), and a rebalance reports no change."""
    dense = demo.dense_layers(2, NUM_EXPERTS, HIDDEN, INTERMEDIATE, seed)
    runtime = distributed.EplbRuntime(2, NUM_EXPERTS, SLOTS_PER_RANK, window_steps=2,
                                      num_windows=2, rebalance_every=4, max_moves=0)
    model = make_model(runtime, dense)
    tables = [runtime.table(layer).tolist() for layer in range(2)]
    log = drifting_run(rank, world_size, runtime, model, dense, 16, seed)
    return dict(tables=[entry["tables"] for entry in log], initial=tables,
                rebalances=[vars(r) for r in runtime.rebalances])


def test_max_moves_zero_keeps_every_route():
    outcomes = expect_all_ok(run_ranks(zero_moves, 3, args=(5,), timeout_s=120.0))
    for results in outcomes:
        assert len(results["rebalances"]) >= 3
        for tables in results["tables"]:
            assert tables == results["initial"]
        for record in results["rebalances"]:
            assert record["layers"] == [] and record["installed_layers"] == [], record
            assert record["max_over_mean_after"] == record["max_over_mean_before"], record
            assert record["experts_moved"] == [0, 0], record


# ------------------------------------------------------------ route() for an engine's dispatcher


def own_dispatcher(rank, world_size, seed):
    """route() gives the physical ids dispatch() routes by and records the
    same load: two runtimes fed the same choices, one through dispatch(),
    one through route(), hold the same windows and plan the same tables."""
    dense = demo.dense_layers(1, NUM_EXPERTS, HIDDEN, INTERMEDIATE, seed)
    options = dict(window_steps=2, num_windows=2, rebalance_every=4)
    through_dispatch = distributed.EplbRuntime(1, NUM_EXPERTS, SLOTS_PER_RANK, **options)
    through_route = distributed.EplbRuntime(1, NUM_EXPERTS, SLOTS_PER_RANK, **options)
    model = make_model(through_dispatch, dense)
    slot_tensors = [torch.zeros(SLOTS_PER_RANK, 1)]
    through_route.register_expert_tensors(0, slot_tensors)
    generator = torch.Generator().manual_seed(seed + rank)
    same_ids = []
    for step in range(10):
        hidden = demo.drifting_batch(dense[0][0], step, rank, world_size, 20, generator,
                                     period=4.0)
        _, ids = model[0].route(hidden)
        _, _, handle = through_dispatch.dispatch(0, hidden, ids)
        with torch.inference_mode():
            physical = through_route.route(0, ids)
        same_ids.append(torch.equal(physical, handle.physical_ids))
        through_dispatch.combine(0, torch.zeros(handle.num_received, HIDDEN), handle,
                                 torch.ones(ids.shape, dtype=torch.float32))
        through_dispatch.step()
        through_route.step()
    return dict(same_ids=same_ids,
                windows=[torch.equal(a, b) for a, b in zip(through_dispatch.windows(),
                                                           through_route.windows())],
                num_windows=(len(through_dispatch.windows()), len(through_route.windows())),
                tables=torch.equal(through_dispatch.table(0), through_route.table(0)),
                rebalances=len(through_route.rebalances))


def test_route_records_what_dispatch_records():
    outcomes = expect_all_ok(run_ranks(own_dispatcher, 2, args=(6,), timeout_s=120.0))
    for results in outcomes:
        assert all(results["same_ids"]) and results["num_windows"] == (2, 2), results
        assert all(results["windows"]) and results["tables"], results
        assert results["rebalances"] >= 2


# ------------------------------------------------------------ restart


def restart(rank, world_size, seed, stop_at):
    """An uninterrupted 20-step run, and one stopped after `stop_at` steps
    (mid-migration), saved, rebuilt from scratch and continued: the tables,
    outputs, windows and rebalances after the restart are the same."""
    dense = demo.dense_layers(2, NUM_EXPERTS, HIDDEN, INTERMEDIATE, seed)
    options = dict(window_steps=2, num_windows=2, rebalance_every=4, layers_per_step=1)

    def fresh():
        runtime = distributed.EplbRuntime(2, NUM_EXPERTS, SLOTS_PER_RANK, **options)
        return runtime, make_model(runtime, dense)

    runtime, model = fresh()
    whole = drifting_run(rank, world_size, runtime, model, dense, 20, seed)
    whole_rebalances = [vars(r) for r in runtime.rebalances]
    whole_windows = runtime.windows()

    runtime, model = fresh()
    first = drifting_run(rank, world_size, runtime, model, dense, stop_at, seed)
    migrating = runtime.migrating
    state = runtime.state_dict()
    del runtime, model
    runtime = distributed.EplbRuntime(2, NUM_EXPERTS, SLOTS_PER_RANK, **options)
    runtime.load_state_dict(state)
    model = make_model(runtime, dense)  # the weights, placed by the restored tables
    second = drifting_run(rank, world_size, runtime, model, dense, 20 - stop_at, seed,
                          first_step=stop_at)
    resumed = first + second
    return dict(
        migrating=migrating,
        tables=[a["tables"] == b["tables"] for a, b in zip(whole, resumed)],
        outputs=[torch.equal(a["output"], b["output"]) for a, b in zip(whole, resumed)],
        equal=[entry["equal"] for entry in resumed],
        rebalances=whole_rebalances == [vars(r) for r in runtime.rebalances],
        windows=len(whole_windows) == len(runtime.windows()) and all(
            torch.equal(a, b) for a, b in zip(whole_windows, runtime.windows())),
        num_rebalances=len(whole_rebalances))


def test_restart_continues_exactly_as_an_uninterrupted_run():
    # Rebalances plan at steps 4, 8, 12, 16 and switch one layer per step
    # after: stopping after step 9 leaves the rebalance of step 8 half done.
    outcomes = expect_all_ok(run_ranks(restart, 2, args=(7, 9), timeout_s=150.0))
    for rank, results in enumerate(outcomes):
        assert results["num_rebalances"] >= 3, results
        assert results["migrating"], "rank %d: the restart is not mid-migration" % rank
        assert all(results["tables"]), (rank, results["tables"])
        assert all(results["outputs"]), (rank, results["outputs"])
        assert all(results["equal"]), (rank, results["equal"])
        assert results["rebalances"] and results["windows"], (rank, results)


def test_state_dict_survives_torch_save(tmp_path):
    # The state is plain values and CPU tensors: torch.save / torch.load keep it.
    outcomes = expect_all_ok(run_ranks(save_and_load, 2, args=(str(tmp_path),),
                                       timeout_s=120.0))
    assert all(outcomes), outcomes


def save_and_load(rank, world_size, folder):
    runtime = distributed.EplbRuntime(1, NUM_EXPERTS, SLOTS_PER_RANK, window_steps=2,
                                      num_windows=2, rebalance_every=4)
    runtime.register_expert_tensors(0, [torch.zeros(SLOTS_PER_RANK, 2)])
    for _ in range(5):
        runtime.route(0, torch.randint(0, NUM_EXPERTS, (8, TOP_K)))
        runtime.step()
    path = "%s/rank%d.pt" % (folder, rank)
    torch.save(runtime.state_dict(), path)
    again = distributed.EplbRuntime(1, NUM_EXPERTS, SLOTS_PER_RANK, window_steps=2,
                                    num_windows=2, rebalance_every=4)
    again.load_state_dict(torch.load(path))
    return again.steps == 5 and all(torch.equal(a, b) for a, b in zip(runtime.windows(),
                                                                        again.windows()))


def test_defaults_follow_serving_practice():
    # vLLM: a window of 1000 steps, a rebalance every 3000; here that window
    # in four parts, so that the planner can tell what persists.
    import inspect
    defaults = {name: parameter.default for name, parameter in
                inspect.signature(distributed.EplbRuntime).parameters.items()}
    assert (defaults["window_steps"], defaults["num_windows"], defaults["rebalance_every"]) == (
        250, 4, 3000)
    assert dist.is_available()

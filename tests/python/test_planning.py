"""moe_eplb.plan / analyze / validate_table / migration_plan /
align_to_previous: the Python adapters over the C++ planner (shapes, dtypes,
NumPy and tensors, layouts, windows, errors), plans executed by a slot
simulator, and, when MOE_EPLB_TOOL names the built `moe-eplb` tool, the same
table as `moe-eplb plan` writes."""
import dataclasses
import os
import subprocess

import numpy as np
import pytest
import torch

import moe_eplb
from moe_eplb import MigrationAction

OPS = torch.ops.moe_eplb


def random_load(rng, *shape):
    """Skewed counts: a few hot experts, as MoE traffic is."""
    return rng.gamma(0.6, 100.0, size=shape).round()


def slot_experts(table, num_slots):
    """Reference: the logical expert at each slot, -1 where no row names it."""
    experts = [-1] * num_slots
    for e, row in enumerate(table.tolist()):
        for slot in row[1:1 + row[0]]:
            experts[slot] = e
    return experts


def slots_changed(old, new, num_slots):
    """Reference: slots whose (expert, position in its row) differs; the
    position is the routing (which source group or tokens a replica serves)."""
    def replicas(table):
        of_slot = [(-1, -1)] * num_slots
        for e, row in enumerate(table.tolist()):
            for position, slot in enumerate(row[1:1 + row[0]]):
                of_slot[slot] = (e, position)
        return of_slot
    return sum(a != b for a, b in zip(replicas(old), replicas(new)))


def live_rows(table):
    """Each row's count and replica slots in order, without the padding."""
    return [row[:1 + row[0]] for row in table.tolist()]


def check_valid_plan(table, world_size, slots_per_rank, num_experts, distinct_ranks=True):
    assert table.dtype == torch.int32 and table.dim() == 2 and table.shape[0] == num_experts
    experts = slot_experts(table, world_size * slots_per_rank)
    assert -1 not in experts, "every slot is used"
    if not distinct_ranks:  # DeepSeek's packing may put two replicas on one rank
        return
    for e, row in enumerate(table.tolist()):
        ranks = [slot // slots_per_rank for slot in row[1:1 + row[0]]]
        assert len(set(ranks)) == len(ranks), "expert %d has two replicas on one rank" % e


# ---- plan ---------------------------------------------------------------------


@pytest.mark.parametrize("world_size, slots_per_rank, num_experts", [(4, 3, 10), (3, 5, 13)])
def test_plan_shapes_and_input_kinds(rng, world_size, slots_per_rank, num_experts):
    per_rank = random_load(rng, world_size, num_experts)
    result = moe_eplb.plan(per_rank, world_size, slots_per_rank, layout="WE")
    assert isinstance(result, moe_eplb.PlanResult)
    table = result.table
    check_valid_plan(table, world_size, slots_per_rank, num_experts)

    def plan_table(load, **kwargs):
        return moe_eplb.plan(load, world_size, slots_per_rank, **kwargs).table

    # The same counts as a tensor, as int64 counts, as a one-window list.
    assert torch.equal(plan_table(torch.from_numpy(per_rank), layout="WE"), table)
    assert torch.equal(plan_table(per_rank.astype(np.int64), layout="WE"), table)
    assert torch.equal(plan_table([per_rank], layout="WE"), table)
    # A non-contiguous view reads the same values.
    transposed = np.ascontiguousarray(per_rank.T).T
    assert torch.equal(plan_table(transposed, layout="WE"), table)

    # (E,) global counts -> (E, F); (L, W|1, E) -> (L, E, F), layer by layer.
    global_table = plan_table(per_rank.sum(0))
    check_valid_plan(global_table, world_size, slots_per_rank, num_experts)
    assert torch.equal(plan_table(per_rank.sum(0), layout="E"), global_table)
    layers = np.stack([per_rank, random_load(rng, world_size, num_experts)])
    layered = plan_table(layers, num_columns=world_size + 1)
    assert layered.shape == (2, num_experts, world_size + 1)
    assert torch.equal(layered, plan_table(layers, layout="LWE", num_columns=world_size + 1))
    assert torch.equal(layered[0], plan_table(per_rank, layout="WE", num_columns=world_size + 1))
    global_layers = plan_table(layers.sum(1, keepdims=True))
    assert global_layers.dim() == 3
    # (L, E) per-layer global counts say so: the same plan as (L, 1, E).
    assert torch.equal(plan_table(layers.sum(1), layout="LE"), global_layers)


# A 2-D load's rows are source ranks or layers; only the caller knows which.
# Reading (L, E) per-layer counts with L == W as per-rank ones used to give one
# table for the wrong question, without a word.
def test_plan_asks_the_layout_of_a_2d_load(rng):
    per_layer = random_load(rng, 4, 10)  # 4 layers, at EP 4: the shape of a (W, E) load
    with pytest.raises(ValueError, match=r"^plan\(\): load of shape \(4, 10\) is 2-D: are its "
                       r"rows source ranks \(W, E\) or layers \(L, E\)\? Pass layout='WE' or "
                       r"layout='LE'$"):
        moe_eplb.plan(per_layer, 4, 3)
    with pytest.raises(ValueError, match=r"load\[0\] of shape \(4, 10\) is 2-D"):
        moe_eplb.plan([per_layer, per_layer], 4, 3)
    by_layer = moe_eplb.plan(per_layer, 4, 3, layout="LE").table
    assert by_layer.shape[:2] == (4, 10)
    for layer in range(4):
        assert torch.equal(by_layer[layer], moe_eplb.plan(per_layer[layer], 4, 3).table)
    # Straight to the op, the C++ message says the same.
    with pytest.raises(ValueError, match=r"is 2-D: rows of source ranks \(W, E\) or of layers "
                       r"\(L, E\)\? Give its layout: WE or LE"):
        OPS.plan([torch.from_numpy(per_layer)], 4, 3)


def test_threads_give_the_table_of_one_thread(rng):
    # Layers are planned side by side; the table and the estimates must not
    # depend on how many threads there are.
    windows = [torch.from_numpy(rng.gamma(0.5, 100.0, size=(5, 4, 24))) for _ in range(3)]
    one = moe_eplb.plan(windows, 4, 8, layout="LWE", threads=1)
    for threads in (0, 2, 7):
        many = moe_eplb.plan(windows, 4, 8, layout="LWE", threads=threads)
        assert torch.equal(many.table, one.table)
        assert many.predicted_max_over_mean == one.predicted_max_over_mean


def test_plan_windows_and_report(rng):
    world_size, slots_per_rank, num_experts = 4, 3, 10
    windows = [random_load(rng, world_size, num_experts) for _ in range(3)]
    result = moe_eplb.plan(windows, world_size, slots_per_rank, layout="WE")
    check_valid_plan(result.table, world_size, slots_per_rank, num_experts)
    # One result type whatever is asked: the table and the report's fields,
    # named as C++ names them.
    assert [field.name for field in dataclasses.fields(moe_eplb.PlanResult)] == [
        "table", "persistence", "predicted_max_over_mean", "predicted_low", "predicted_high",
        "slots_changed"]
    for field in ("persistence", "predicted_max_over_mean", "predicted_low", "predicted_high",
                  "slots_changed"):
        assert len(getattr(result, field)) == 1, field
    assert result.slots_changed == [0]  # no previous table
    assert 0.0 <= result.persistence[0] <= 1.0
    assert result.predicted_low[0] <= result.predicted_max_over_mean[0] <= result.predicted_high[0]
    assert torch.equal(
        moe_eplb.plan(tuple(windows), world_size, slots_per_rank, layout="WE").table, result.table)
    with pytest.raises(TypeError, match="return_report"):
        moe_eplb.plan(windows, world_size, slots_per_rank, layout="WE", return_report=True)


def test_plan_against_previous(rng):
    world_size, slots_per_rank, num_experts = 4, 3, 10
    windows = [random_load(rng, world_size, num_experts) for _ in range(3)]
    # Against a previous table, slots_changed counts slots whose expert or
    # replica position differs.
    previous = moe_eplb.plan(windows[0], world_size, slots_per_rank, layout="WE").table
    report = moe_eplb.plan(windows, world_size, slots_per_rank, layout="WE", previous=previous)
    replanned = report.table
    check_valid_plan(replanned, world_size, slots_per_rank, num_experts)
    assert report.slots_changed == [slots_changed(previous, replanned, 12)]

    # max_moves=0 returns the previous rows exactly, their order included (in
    # rank mode the order is the routing), wherever a reorder would pay:
    # previous tables planned on loads whose hot ranks then swap.
    for trial in range(8):
        old_load = random_load(rng, world_size, num_experts)
        old = moe_eplb.plan(old_load, world_size, slots_per_rank, layout="WE",
                            num_columns=world_size + 1).table
        new_windows = [old_load[::-1].copy(), windows[trial % 3]]
        capped_report = moe_eplb.plan(new_windows, world_size, slots_per_rank, layout="WE",
                                      previous=old, max_moves=0, num_columns=world_size + 1)
        assert live_rows(capped_report.table) == live_rows(old), trial
        assert capped_report.slots_changed == [0]

    # Per layer: an (L, E, F) previous for (L, W, E) windows, one report entry per layer.
    layered_windows = [np.stack([window, window[::-1]]) for window in windows]
    layered_previous = moe_eplb.plan(layered_windows[0], world_size, slots_per_rank).table
    report = moe_eplb.plan(layered_windows, world_size, slots_per_rank,
                           previous=layered_previous, max_moves=2)
    layered = report.table
    assert layered.shape[:2] == (2, num_experts) and len(report.slots_changed) == 2
    for layer in range(2):
        changed = slots_changed(layered_previous[layer], layered[layer], 12)
        assert report.slots_changed[layer] == changed <= 2
    with pytest.raises(ValueError, match=r"plan\(\): previous table has 2 layers"):
        moe_eplb.plan(windows, world_size, slots_per_rank, layout="WE", previous=layered_previous)


@pytest.mark.parametrize("algorithm", ["moe-eplb", "deepseek", "flashlb"])
def test_plan_options_reach_the_planner(rng, algorithm):
    """Every option of plan() reaches the C++ planner: the table is the op's
    with the same options spelled out, and the options a planner uses change
    its table on some of a few loads (so an adapter that dropped one fails);
    the baselines plan the same table for every balance_mode (they do not
    know the rule), and analyze() reads the mode it is given."""
    world_size, slots_per_rank, num_experts = 8, 4, 16
    num_columns = world_size + 1

    def plan_both(load, **options):
        table = moe_eplb.plan(load, world_size, slots_per_rank, layout="WE", algorithm=algorithm,
                              num_columns=num_columns, **options).table
        op_table, _ = OPS.plan([torch.from_numpy(load)], world_size, slots_per_rank,
                               layout="WE", algorithm=algorithm, num_columns=num_columns,
                               balance_mode=options.get("balance_mode", 0),
                               ranks_per_node=options.get("ranks_per_node", 0),
                               num_groups=options.get("num_groups", 1))
        assert torch.equal(table, op_table[0]), options
        check_valid_plan(table, world_size, slots_per_rank, num_experts,
                         distinct_ranks=algorithm == "moe-eplb")
        return table

    loads = [random_load(rng, world_size, num_experts) for _ in range(6)]
    changed = {"balance_mode": False, "ranks_per_node": False, "analyze": False}
    for load in loads:
        rank = plan_both(load, balance_mode=0)
        token = plan_both(load, balance_mode=1)
        if algorithm == "moe-eplb":
            changed["balance_mode"] |= not torch.equal(rank, token)
            assert moe_eplb.analyze(rank, load, world_size, slots_per_rank, layout="WE",
                                    balance_mode=0).dead_replicas == 0
        else:
            assert torch.equal(rank, token)  # the baselines ignore the rule
        # Nodes of 2 ranks: DeepSeek's hierarchical policy (4 expert groups
        # over 4 nodes), moe-eplb's locality; FlashLB plans the same.
        nodes = plan_both(load, balance_mode=0, ranks_per_node=2, num_groups=4)
        changed["ranks_per_node"] |= not torch.equal(rank, nodes)
        reports = [moe_eplb.analyze(token, load, world_size, slots_per_rank, layout="WE",
                                    balance_mode=mode) for mode in (0, 1)]
        changed["analyze"] |= reports[0].max_over_mean != reports[1].max_over_mean
    assert changed["balance_mode"] == (algorithm == "moe-eplb")
    assert changed["ranks_per_node"] == (algorithm != "flashlb")
    assert changed["analyze"]


def test_plan_matches_the_cli(rng, tmp_path):
    tool = os.environ.get("MOE_EPLB_TOOL")
    if not tool:
        pytest.skip("set MOE_EPLB_TOOL to the built moe-eplb tool to compare with it")
    load = random_load(rng, 4, 10)
    np.save(tmp_path / "load.npy", load)
    subprocess.run([tool, "plan", "--layout", "WE", "--load", str(tmp_path / "load.npy"),
                    "--world-size", "4", "--slots-per-rank", "3",
                    "--out", str(tmp_path / "table.npy")], check=True, capture_output=True)
    expected = np.load(tmp_path / "table.npy")
    assert np.array_equal(moe_eplb.plan(load, 4, 3, layout="WE").table.numpy(), expected)


# (load, kwargs, message pattern): each pattern is the whole message.
PLAN_TYPE_ERRORS = [
    (np.ones((4, 6)), dict(layout="WE", world_size=2.0),
     r"plan\(\): world_size must be an int, got float"),
    (np.ones((4, 6)), dict(layout="WE", world_size=True),
     r"plan\(\): world_size must be an int, got bool"),
    (np.ones(6, dtype=bool), dict(),
     r"plan\(\): load must hold real counts \(integer or floating point\), got torch.bool"),
    ([[1, 2, 3]], dict(), r"plan\(\): load\[0\] must be a CPU tensor or a NumPy array, got list"),
    ("load.npy", dict(), r"plan\(\): load must be a CPU tensor or a NumPy array, got str"),
    (np.ones((4, 6)), dict(layout="WE", move_cost="high"),
     r"plan\(\): move_cost must be a number, got str"),
    (np.ones((4, 6)), dict(layout=2), r"plan\(\): layout must be a str \(one of E, WE, LE, LWE\) "
     r"or None, got int"),
    (np.ones((4, 6)), dict(layout="WE", previous=np.ones((6, 3), dtype=np.float32)),
     r"plan\(\): previous must be int32 \(or int64 whose values fit\), got torch.float32"),
    (np.ones((4, 6)), dict(layout="WE", rule=2),
     r"plan\(\): rule must be a str, one of \(.*\), got int"),
]

PLAN_VALUE_ERRORS = [
    (np.ones((3, 6)), dict(layout="WE"),
     r"plan\(\): load of shape \(3, 6\) has layout WE, but W = 3 differs from world_size 4 "
     r"\(per-layer global counts have layout LE\)"),
    (np.ones((4, 6)), dict(), r"plan\(\): load of shape \(4, 6\) is 2-D: are its rows source "
     r"ranks \(W, E\) or layers \(L, E\)\? Pass layout='WE' or layout='LE'"),
    (np.ones((4, 6)), dict(layout="EW"), r"plan\(\): layout must be one of E, WE, LE, LWE, got 'EW'"),
    (np.ones(6), dict(layout="WE"), r"plan\(\): load of shape \(6,\) is 1-D but layout WE is 2-D"),
    (np.ones((2, 2, 4, 6)), dict(), r"plan\(\): load must have 1 or 2 or 3 dimensions, got shape "
     r"\(2, 2, 4, 6\)"),
    ([np.ones((4, 6)), np.ones((4, 7))], dict(layout="WE"),
     r"plan\(\): load\[1\] has shape \(4, 7\) but load\[0\] has \(4, 6\); every window must "
     r"have the same shape"),
    ([], dict(), r"plan\(\): load is an empty list; expected at least one window"),
    (torch.ones(6, device="meta"), dict(),
     r"plan\(\): load must be on the CPU \(planning runs on the host\), got meta"),
    (np.ones((4, 6)), dict(layout="WE", rule="sglang"),
     r"plan\(\): rule must be one of \"ascend-rank\", .*\"trtllm\", got \"sglang\""),
    (np.ones((4, 6)), dict(layout="WE", rule="vllm", balance_mode=0),
     r"plan\(\): rule \"vllm\" and balance_mode 0 disagree; give one of them"),
    (np.ones((4, 6)), dict(layout="WE", balance_mode=3),
     r"plan\(\): balance_mode must be 0 \(by rank\).*"),
    (np.ones((4, 6)), dict(layout="WE", algorithm="eplb"),
     r"plan\(\): algorithm must be one of \('moe-eplb', 'deepseek', 'flashlb'\), got 'eplb'"),
    (np.ones((4, 6)), dict(layout="WE", max_moves=-1, previous=np.array([[1, 0]] * 6)),
     r"plan\(\): max_moves must be at least 0, got -1"),
    # The Python argument, not the CLI's --previous.
    (np.ones((4, 6)), dict(layout="WE", max_moves=2),
     r"plan\(\): max_moves and move_cost need previous=, the table in force"),
    (np.ones((4, 6)), dict(layout="WE", slots_per_rank=1),
     r"plan\(\): world_size 4 x slots_per_rank 1 = 4 physical slots cannot hold 6 experts "
     r"\(every expert needs a slot\); use at least 2 slots per rank"),
    (np.ones((4, 6)), dict(layout="WE", ranks_per_node=3),
     r"plan\(\): ranks_per_node must be 0 \(one node\) or divide world_size 4, got 3"),
    (np.ones((4, 6)), dict(layout="WE", previous=np.ones(6, dtype=np.int32)),
     r"plan\(\): previous must be \(E, F\) or \(L, E, F\), got shape \(6,\)"),
    (np.ones((4, 6)), dict(layout="WE", previous=np.full((5, 2), 1, dtype=np.int32)),
     r"plan\(\): previous table has 1 layers of 5 experts, but the load has 1 layers of 6 "
     r"experts"),
    (-np.ones((4, 6)), dict(layout="WE"),
     r"plan\(\): load has a negative value -1 at \(rank 0, expert 0\)"),
    (np.ones((4, 6)), dict(layout="WE", threads=-1), r"plan\(\): threads must be at least 0, got -1"),
]


@pytest.mark.parametrize("load, kwargs, pattern", PLAN_TYPE_ERRORS)
def test_plan_type_errors(load, kwargs, pattern):
    arguments = dict(world_size=4, slots_per_rank=2)
    arguments.update(kwargs)
    with pytest.raises(TypeError, match="^" + pattern + "$"):
        moe_eplb.plan(load, **arguments)


@pytest.mark.parametrize("load, kwargs, pattern", PLAN_VALUE_ERRORS)
def test_plan_value_errors(load, kwargs, pattern):
    arguments = dict(world_size=4, slots_per_rank=2)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match="^" + pattern + "$"):
        moe_eplb.plan(load, **arguments)


def test_ops_refuse_non_cpu_tensors():
    # Straight to the op: a tensor on another device gets the op's own error.
    with pytest.raises(ValueError, match=r"plan\(\): load window 0 must be a CPU tensor"):
        OPS.plan([torch.ones(4, 6, dtype=torch.float64, device="meta")], 4, 2)
    table = torch.tensor([[1, 0], [1, 1]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"migration_plan\(\): new_table must be a CPU tensor"):
        OPS.migration_plan(table, table.to("meta"), 2, 1)
    with pytest.raises(ValueError, match=r"analyze\(\): load must be float64, got Float"):
        OPS.analyze(table, torch.ones(2), 2, 1)


# ---- analyze ------------------------------------------------------------------


def test_analyze_hand_case():
    # Two ranks, one slot each; expert 0 has 3 tokens from each rank, expert 1 has 1.
    table = torch.tensor([[1, 0], [1, 1]], dtype=torch.int32)
    report = moe_eplb.analyze(table, np.array([[3.0, 1.0], [3.0, 1.0]]), 2, 1, layout="WE",
                              ranks_per_node=1)
    assert isinstance(report, moe_eplb.BalanceReport)
    assert report.rank_load.tolist() == [6.0, 2.0]
    assert report.slot_load.tolist() == [6.0, 2.0]
    assert report.total_load == 8.0 and report.mean_rank_load == 4.0
    assert report.max_rank_load == 6.0 and report.max_over_mean == 1.5
    assert report.imbalance == 0.5
    assert report.num_replicas == 2 and isinstance(report.num_replicas, int)
    assert report.dead_replicas == report.idle_replicas == report.unused_slots == 0
    assert report.local_rank_share == 0.5 and report.local_node_share == 0.5
    assert report.rule == "ascend-rank" and report.world_size == 2
    # Global counts spread evenly over the ranks give the same here.
    assert moe_eplb.analyze(table, np.array([6, 2]), 2, 1).rank_load.tolist() == [6.0, 2.0]
    assert moe_eplb.analyze(table, np.array([6, 2]), 2, 1, layout="E").local_node_share == -1.0


def test_analyze_fields_and_consistency(rng):
    load = random_load(rng, 4, 10)
    table = moe_eplb.plan(load, 4, 3, layout="WE").table
    # The field names come from C++ (torch.ops.moe_eplb.names): a field C++
    # adds or renames fails here rather than landing in the wrong place.
    assert [f.name for f in dataclasses.fields(moe_eplb.BalanceReport)] == [
        "rule", "world_size", "slots_per_rank", "slot_load", "rank_load"] + list(
            OPS.names("analyze"))
    for rule in moe_eplb.planning.RULES:
        report = moe_eplb.analyze(table.numpy(), torch.from_numpy(load), 4, 3, layout="WE",
                                  rule=rule, ranks_per_node=2)
        assert report.rule == rule
        assert report.slot_load.shape == (12,) and report.slot_load.dtype == torch.float64
        assert torch.allclose(report.rank_load, report.slot_load.view(4, 3).sum(1))
        assert report.total_load == pytest.approx(load.sum())
        assert report.max_over_mean == pytest.approx(
            float(report.rank_load.max()) / float(report.rank_load.mean()))
        assert 0.0 <= report.local_rank_share <= report.local_node_share <= 1.0


TABLE_2 = torch.tensor([[1, 0], [1, 1]], dtype=torch.int32)


# Each bad input with its whole message. NaN, infinite and negative counts
# used to be scored as perfect balance (max_over_mean 1.0); plan() refuses them.
@pytest.mark.parametrize("table, load, kwargs, error, pattern", [
    (TABLE_2, np.array([np.nan, 1.0]), {}, ValueError,
     r"analyze\(\): load has a non-finite value nan at \(expert 0\)"),
    (TABLE_2, np.array([[1.0, np.inf], [1.0, 1.0]]), dict(layout="WE"), ValueError,
     r"analyze\(\): load has a non-finite value inf at \(rank 0, expert 1\)"),
    (TABLE_2, np.array([[1.0, 1.0], [-4.0, 1.0]]), dict(layout="WE"), ValueError,
     r"analyze\(\): load has a negative value -4 at \(rank 1, expert 0\)"),
    (TABLE_2, np.ones((2, 2)), {}, ValueError,
     r"analyze\(\): load of shape \(2, 2\) is 2-D: pass layout='WE' if its rows are the source "
     r"ranks \(analyze\(\) scores one layer\)"),
    (TABLE_2, np.ones((2, 2)), dict(layout="LE"), ValueError,
     r"analyze\(\): layout must be one of E, WE, got 'LE'"),
    (TABLE_2, np.ones((2, 2, 2)), {}, ValueError,
     r"analyze\(\): load must have 1 or 2 dimensions, got shape \(2, 2, 2\)"),
    (TABLE_2, np.ones(3), {}, ValueError, r"analyze\(\): load has 3 experts but table has 2 rows"),
    (TABLE_2, np.ones((3, 2)), dict(layout="WE"), ValueError,
     r"analyze\(\): load of shape \(3, 2\) has layout WE, but W = 3 differs from world_size 2 "
     r"\(per-layer global counts have layout LE\)"),
    (TABLE_2.float(), np.ones(2), {}, TypeError,
     r"analyze\(\): table must be int32 \(or int64 whose values fit\), got torch.float32"),
    (torch.tensor([[1, 0], [1, 5]], dtype=torch.int32), np.ones(2), {}, ValueError,
     r"analyze\(\): table is not a valid table for 2 ranks x 1 slots \(1 problem, the first "
     r"below; validate_table\(\) lists all\)\n  row 1, column 1: slot 5 is outside 0..1 "
     r"\(num_physical_experts 2\)"),
    ([[1, 0], [1, 1]], np.ones(2), {}, TypeError,
     r"analyze\(\): table must be a CPU tensor or a NumPy array, got list"),
])
def test_analyze_errors(table, load, kwargs, error, pattern):
    with pytest.raises(error, match="^" + pattern + "$"):
        moe_eplb.analyze(table, load, 2, 1, **kwargs)


# ---- validate_table -----------------------------------------------------------


def test_validate_table_lists_every_problem():
    # Row 2 has count 0; slot 0 is claimed by rows 0 and 5.
    table = np.load(os.path.join(os.path.dirname(__file__), "..", "data", "table_invalid.npy"))
    report = moe_eplb.validate_table(table, 4)
    assert isinstance(report, moe_eplb.TableReport)
    assert not report.ok and report.total_errors == 2
    assert "row 2: replica count 0 is outside 1..3 (F - 1)" in report.errors
    assert "physical slot 0 is claimed by row 0 (column 1) and row 5 (column 1)" in report.errors
    assert str(report).startswith("error: row 2: replica count 0 is outside 1..3 (F - 1)\n")
    # The shipped example is valid, with one rank-mode warning.
    example = np.load(os.path.join(os.path.dirname(__file__), "..", "..", "examples",
                                   "eplb_table.npy"))
    report = moe_eplb.validate_table(torch.from_numpy(example), 4, 20)
    assert report.ok and report.errors == [] and report.total_warnings == 1
    assert report.warnings[0].startswith("row 0, column 3: replica 3 (slot 10) never receives")
    assert (report.num_physical_experts, report.num_physical_experts_inferred) == (20, False)
    quiet = moe_eplb.validate_table(example, 4, warnings=False)
    assert quiet.ok and quiet.warnings == [] and quiet.num_physical_experts_inferred
    first = moe_eplb.validate_table(table, 4, max_issues=1)
    assert len(first.errors) + len(first.warnings) == 1 and first.total_errors == 2
    with pytest.raises(ValueError, match=r"^validate_table\(\): world_size must be -1 \(unknown\) "
                       r"or in 1..2147483647, got 0$"):
        moe_eplb.validate_table(example, 0)
    with pytest.raises(TypeError, match=r"^validate_table\(\): eplb_table must be a CPU tensor or "
                       r"a NumPy array, got list$"):
        moe_eplb.validate_table([[1, 0]], 1)
    ascend = moe_eplb.validate_table(example, 1, profile="ascend")
    assert not ascend.ok and "world_size 1 is outside 2..768 under the ascend profile" in str(ascend)


# ---- migration_plan -----------------------------------------------------------


def simulate(plan, old_table, world_size, slots_per_rank):
    """Executes `plan` on slots whose content is the old expert id."""
    num_slots = world_size * slots_per_rank
    old = slot_experts(old_table, num_slots)
    new = list(old)
    actions = plan.action.tolist()
    for p in range(num_slots):
        rank = p // slots_per_rank
        source = plan.source_rank[p].item() * slots_per_rank + plan.source_slot[p].item()
        if actions[p] == MigrationAction.COPY_LOCAL:
            assert plan.source_rank[p] == rank
            new[p] = old[source]
        elif actions[p] == MigrationAction.RECEIVE:
            assert plan.source_rank[p] != rank
            new[p] = old[source]
    for p in range(num_slots):
        if actions[p] == MigrationAction.COPY_RECEIVED:
            source = (p // slots_per_rank) * slots_per_rank + plan.source_slot[p].item()
            assert actions[source] == MigrationAction.RECEIVE
            new[p] = new[source]
    return new


def test_migration_plan_hand_case():
    # Old slots: e0 e1 | e0 e2; new: e1 e0 | e2 e1 (F differs).
    old = torch.tensor([[2, 0, 2], [1, 1, -1], [1, 3, -1]], dtype=torch.int32)
    new = np.array([[1, 1, -1, -1], [2, 0, 3, -1], [1, 2, -1, -1]], dtype=np.int32)
    plan = moe_eplb.migration_plan(old, new, 2, 2, ranks_per_node=1, expert_bytes=1000)
    assert isinstance(plan, moe_eplb.MigrationPlan)
    assert plan.action.tolist() == [MigrationAction.COPY_LOCAL, MigrationAction.COPY_LOCAL,
                                    MigrationAction.COPY_LOCAL, MigrationAction.RECEIVE]
    assert plan.action.dtype == plan.source_rank.dtype == plan.source_slot.dtype == torch.int64
    assert plan.source_rank.tolist() == [0, 0, 1, 0]
    assert plan.source_slot.tolist() == [1, 0, 1, 1]
    assert (plan.kept, plan.local_copies, plan.received, plan.cross_node) == (0, 3, 1, 1)
    assert plan.received_per_rank == [0, 1] and plan.sent_per_rank == [1, 0]
    assert plan.bytes_received == 1000
    assert simulate(plan, old, 2, 2) == slot_experts(torch.from_numpy(new), 4)
    assert int(MigrationAction.COPY_RECEIVED) == 3


@pytest.mark.parametrize("world_size, slots_per_rank, num_experts, ranks_per_node",
                         [(2, 3, 5, 0), (4, 3, 10, 2), (6, 4, 16, 3)])
def test_migration_plan_between_plans(rng, world_size, slots_per_rank, num_experts, ranks_per_node):
    num_slots = world_size * slots_per_rank
    for _ in range(3):
        old = moe_eplb.plan(random_load(rng, world_size, num_experts), world_size, slots_per_rank,
                            layout="WE").table
        new = moe_eplb.plan(random_load(rng, world_size, num_experts), world_size, slots_per_rank,
                            layout="WE").table
        plan = moe_eplb.migration_plan(old, new, world_size, slots_per_rank,
                                       ranks_per_node=ranks_per_node, expert_bytes=3)
        assert simulate(plan, old, world_size, slots_per_rank) == slot_experts(new, num_slots)
        before, after = slot_experts(old, num_slots), slot_experts(new, num_slots)
        new_to_rank = [
            len(set(after[r * slots_per_rank:(r + 1) * slots_per_rank])
                - set(before[r * slots_per_rank:(r + 1) * slots_per_rank]))
            for r in range(world_size)]
        assert plan.received_per_rank == new_to_rank
        assert plan.received == sum(new_to_rank) == sum(plan.sent_per_rank)
        assert plan.bytes_received == 3 * plan.received
        assert plan.kept + plan.local_copies + plan.received == num_slots


@pytest.mark.parametrize("old, new, kwargs, pattern", [
    (torch.tensor([[1, 0], [1, 1]], dtype=torch.int32),
     torch.tensor([[1, 0], [1, 1], [1, 2]], dtype=torch.int32), {},
     r"migration_plan\(\): old_table has 2 experts but new_table has 3"),
    (torch.tensor([[1, 0], [1, 9]], dtype=torch.int32),
     torch.tensor([[1, 0], [1, 1]], dtype=torch.int32), {},
     r"migration_plan\(\): old_table is not a valid table for 2 ranks x 2 slots"),
    (torch.tensor([[1, 0], [1, 1]], dtype=torch.int32),
     torch.tensor([[1, 0], [1, 1]], dtype=torch.int32), dict(expert_bytes=-1),
     r"expert_bytes must be at least 0, got -1"),
    (torch.tensor([[1, 0], [1, 1]], dtype=torch.int32),
     torch.tensor([[1, 0], [1, 1]], dtype=torch.int32), dict(ranks_per_node=3),
     r"migration_plan\(\): ranks_per_node must be 0"),
    (torch.tensor([[1, 0], [1, 1]], dtype=torch.int64) + 2**32,
     torch.tensor([[1, 0], [1, 1]], dtype=torch.int32), {},
     r"migration_plan\(\): old_table is int64 with value 4294967297, outside int32"),
    (torch.tensor([[[1, 0], [1, 1]]], dtype=torch.int32),
     torch.tensor([[1, 0], [1, 1]], dtype=torch.int32), {},
     r"old_table must be \(E, F\), got shape \(1, 2, 2\)"),
])
def test_migration_plan_errors(old, new, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        moe_eplb.migration_plan(old, new, 2, 2, **kwargs)
    table = torch.tensor([[1, 0], [1, 1]], dtype=torch.int32)
    with pytest.raises(TypeError, match=r"^migration_plan\(\): new_table must be int32 \(or "
                       r"int64 whose values fit\), got torch.float32$"):
        moe_eplb.migration_plan(table, table.float(), 2, 2)


def test_int64_tables_are_accepted():
    old = torch.tensor([[1, 0], [1, 1]])
    plan = moe_eplb.migration_plan(old, old.flip(0), 2, 1)
    assert plan.received == 2 and plan.sent_per_rank == [1, 1]


# ---- align_to_previous --------------------------------------------------------


def test_align_to_previous_keeps_rank_sets_and_saves_moves(rng):
    world_size, slots_per_rank, num_experts = 4, 4, 12
    num_slots = world_size * slots_per_rank
    old = moe_eplb.plan(random_load(rng, world_size, num_experts), world_size, slots_per_rank,
                        layout="WE").table
    load = random_load(rng, world_size, num_experts)
    new = moe_eplb.plan(load, world_size, slots_per_rank, layout="WE").table
    aligned = moe_eplb.align_to_previous(old.numpy(), new, world_size, slots_per_rank)
    assert aligned.dtype == torch.int32 and aligned.shape == new.shape
    before, after = slot_experts(new, num_slots), slot_experts(aligned, num_slots)
    for r in range(world_size):
        span = slice(r * slots_per_rank, (r + 1) * slots_per_rank)
        assert sorted(before[span]) == sorted(after[span])
    assert torch.equal(aligned[:, 0], new[:, 0])
    assert torch.equal(
        moe_eplb.analyze(aligned, load, world_size, slots_per_rank, layout="WE").rank_load,
        moe_eplb.analyze(new, load, world_size, slots_per_rank, layout="WE").rank_load)
    old_experts = slot_experts(old, num_slots)

    def changed(table):
        return sum(a != b for a, b in zip(old_experts, slot_experts(table, num_slots)))

    assert changed(aligned) <= changed(new)
    # (old, new) order, as migration_plan(): swapped, the answer is a different table.
    swapped = moe_eplb.align_to_previous(new, old, world_size, slots_per_rank)
    assert not torch.equal(swapped, aligned)
    assert sorted(slot_experts(swapped, num_slots)) == sorted(slot_experts(old, num_slots))
    # Aligning to itself changes nothing.
    assert torch.equal(moe_eplb.align_to_previous(old, old, world_size, slots_per_rank), old)


def test_align_to_previous_errors():
    table = torch.tensor([[1, 0], [1, 1]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"^align_to_previous\(\): old_table has 2 experts \(rows\) "
                       r"but new_table has 1; both tables must map the same logical experts$"):
        moe_eplb.align_to_previous(table, table[:1], 2, 1)
    with pytest.raises(TypeError, match=r"^align_to_previous\(\): slots_per_rank must be an int, "
                       r"got str$"):
        moe_eplb.align_to_previous(table, table, 2, "1")
    with pytest.raises(ValueError, match=r"align_to_previous\(\): world_size must be in 1"):
        moe_eplb.align_to_previous(table, table, 0, 1)


def test_every_rule_reaches_the_planner_and_the_analyzer(rng):
    # The rule names come from C++; every one plans and routes, and the
    # operator's modes are the same rules by number.
    assert moe_eplb.RULES == ("ascend-rank", "ascend-token", "vllm", "sglang-static",
                              "sglang-dynamic", "trtllm")
    assert moe_eplb.planning.BALANCE_MODE_RULES == ("ascend-rank", "ascend-token", "vllm")
    load = np.exp(rng.normal(0.0, 1.0, size=(8, 16))) * 100

    def plan(**kwargs):
        return moe_eplb.plan(load, 8, 3, layout="WE", **kwargs).table

    for rule in moe_eplb.RULES:
        table = plan(rule=rule, ranks_per_node=4)
        report = moe_eplb.analyze(table, load, 8, 3, layout="WE", rule=rule, ranks_per_node=4)
        assert report.rule == rule and report.dead_replicas == 0
        assert 1.0 <= report.max_over_mean < 1.5
    for mode, rule in enumerate(moe_eplb.planning.BALANCE_MODE_RULES):
        assert torch.equal(plan(balance_mode=mode), plan(rule=rule))
        assert moe_eplb.analyze(plan(), load, 8, 3, layout="WE", balance_mode=mode).rule == rule
    # The even splits plan alike (token mode).
    token = plan(rule="ascend-token")
    for rule in ("vllm", "sglang-dynamic", "trtllm"):
        assert torch.equal(plan(rule=rule), token)

"""moe_eplb.engines: each engine's contract as its own tests and docs state it,
the converters' round trips, vLLM's replica rule bit for bit against a plain
restatement of its formula, and the install() hooks.

The engines are not installed here (no PyPI); install() is exercised against
stand-in modules with the engines' module paths and the attributes install()
touches, written from the engines' sources (cited in each module's docstring).
"""
import json
import os
import struct
import sys

import numpy as np
import pytest
import torch

import moe_eplb
from moe_eplb.engines import deepseek, sglang, trtllm, vllm, vllm_ascend
from reference import vllm_replica_index

# DeepSeek EPLB's README example, which vLLM's test_eplb_algo.py reuses.
EXAMPLE = torch.tensor([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                        [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])


@pytest.fixture
def rng():
    return np.random.default_rng(20261207)


def logical_maps(phy2log, num_experts):
    """vLLM's compute_logical_maps restated: (log2phy ascending, -1 padded; count)."""
    num_layers = phy2log.shape[0]
    slots = [[[p for p, e in enumerate(row) if e == expert] for expert in range(num_experts)]
             for row in phy2log.tolist()]
    width = max(len(s) for layer in slots for s in layer)
    log2phy = torch.full((num_layers, num_experts, width), -1, dtype=torch.int64)
    count = torch.zeros(num_layers, num_experts, dtype=torch.int64)
    for layer in range(num_layers):
        for expert in range(num_experts):
            count[layer, expert] = len(slots[layer][expert])
            log2phy[layer, expert, :len(slots[layer][expert])] = torch.tensor(
                slots[layer][expert], dtype=torch.int64)
    return log2phy, count


def check_placement(phy2log, num_experts, num_replicas, num_ranks):
    """The policy contract of vLLM's tests: shape, range, every expert placed,
    counts summing to the slots, no two replicas of an expert on one rank."""
    assert phy2log.dtype == torch.int64 and phy2log.device.type == "cpu"
    assert phy2log.shape[1] == num_replicas
    assert bool((phy2log >= 0).all()) and bool((phy2log < num_experts).all())
    _, count = logical_maps(phy2log, num_experts)
    assert bool((count >= 1).all())
    assert count.sum(dim=1).tolist() == [num_replicas] * phy2log.shape[0]
    per_rank = phy2log.reshape(phy2log.shape[0], num_ranks, -1)
    for layer in per_rank:
        for rank in layer:
            assert rank.unique().numel() == rank.numel()


# ---- vLLM ---------------------------------------------------------------------

def test_vllm_policy_contract():
    phy2log = vllm.MoeEplbPolicy.rebalance_experts(EXAMPLE, 16, 4, 2, 8)
    check_placement(phy2log, 12, 16, 8)
    # The heaviest experts get the spare slots.
    _, count = logical_maps(phy2log, 12)
    assert count[0, 10] == 2 and count[1, 5] == 2
    # num_groups that do not divide over the nodes plan as well (vLLM falls back to global).
    check_placement(vllm.MoeEplbPolicy.rebalance_experts(torch.tensor([[10, 20, 30, 40]]), 8, 3,
                                                        2, 4), 4, 8, 4)
    check_placement(vllm.MoeEplbPolicy.rebalance_experts(torch.tensor([[10, 20, 30, 40]]), 4, 1,
                                                        1, 1), 4, 4, 1)
    with pytest.raises(AssertionError):
        vllm.MoeEplbPolicy.rebalance_experts(torch.tensor([[10, 20, 30, 40]]), 7, 2, 2, 4)
    # Equal loads and no spare slot: one replica each.
    phy2log = vllm.MoeEplbPolicy.rebalance_experts(torch.full((1, 8), 50), 8, 2, 2, 4)
    assert logical_maps(phy2log, 8)[1].tolist() == [[1] * 8]
    # Several layers, float weights, extreme imbalance.
    weight = torch.tensor([[10.0, 20, 30, 40, 50, 60], [60, 50, 40, 30, 20, 10], [25.0] * 6])
    check_placement(vllm.MoeEplbPolicy.rebalance_experts(weight, 8, 2, 2, 4), 6, 8, 4)
    phy2log = vllm.MoeEplbPolicy.rebalance_experts(torch.tensor([[1000, 1, 1, 1, 1, 1, 1, 1]]),
                                                   12, 2, 2, 4)
    count = logical_maps(phy2log, 8)[1]
    assert count[0, 0] > count[0, 1]


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_vllm_policy_takes_any_device(device):
    weight = torch.tensor([[10, 20, 30, 40, 50, 60]])
    phy2log = vllm.MoeEplbPolicy.rebalance_experts(weight.to(device), 6, 2, 1, 3,
                                                   torch.arange(6).to(device))
    assert phy2log.device.type == "cpu" and phy2log.shape == (1, 6)


def test_vllm_policy_replans_against_the_placement_in_force(rng):
    weight = torch.from_numpy(np.exp(rng.normal(0.0, 1.0, size=(4, 64))) * 1000)
    old = vllm.MoeEplbPolicy.rebalance_experts(weight, 96, 8, 2, 16)
    drifted = weight * torch.from_numpy(np.exp(rng.normal(0.0, 0.2, size=(4, 64))))
    fresh = vllm.MoeEplbPolicy.rebalance_experts(drifted, 96, 8, 2, 16)
    new = vllm.MoeEplbPolicy.rebalance_experts(drifted, 96, 8, 2, 16, old)
    check_placement(new, 64, 96, 16)
    assert int((new != old).sum()) < int((fresh != old).sum()) / 2
    # An expert that stays on a rank keeps its slot (preserve_intragpu_slots's promise).
    for layer in range(4):
        for rank in range(16):
            before = old[layer, rank * 6:(rank + 1) * 6].tolist()
            after = new[layer, rank * 6:(rank + 1) * 6].tolist()
            for slot, expert in enumerate(after):
                if expert in before:
                    assert before[slot] == expert
    # A placement with unmapped slots (elastic scale-up) plans from scratch.
    holes = old.clone()
    holes[:, 0] = -1
    assert torch.equal(vllm.MoeEplbPolicy.rebalance_experts(drifted, 96, 8, 2, 16, holes), fresh)


def reference_map_and_record(topk_ids, load, log2phy, count, record_enabled, num_unpadded):
    """vLLM's _eplb_map_and_record_i32_kernel, element by element."""
    flat = topk_ids.reshape(-1).tolist()
    top_k = topk_ids.shape[-1]
    out, load = [], load.clone()
    for index, expert in enumerate(flat):
        replicas = max(int(count[expert]), 1)
        slot = int(log2phy[expert, vllm_replica_index(index // top_k, replicas)])
        out.append(slot)
        unpadded = num_unpadded is None or index < int(num_unpadded) * top_k
        if bool(record_enabled) and unpadded and 0 <= slot < load.shape[0]:
            load[slot] += 1
    return torch.tensor(out, dtype=topk_ids.dtype).reshape(topk_ids.shape), load


def random_vllm_maps(rng, num_experts, num_physical, width):
    phy2log = np.concatenate([np.arange(num_experts),
                              rng.integers(0, num_experts, num_physical - num_experts)])
    rng.shuffle(phy2log)
    log2phy, count = logical_maps(torch.from_numpy(phy2log)[None], num_experts)
    padded = torch.full((num_experts, width), -1, dtype=torch.int64)
    padded[:, :log2phy.shape[2]] = log2phy[0]
    return padded, count[0]


CUDA = ["cuda"] if torch.cuda.is_available() and moe_eplb.with_cuda else []


@pytest.mark.parametrize("device", ["cpu"] + CUDA)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_vllm_map_to_physical_and_record_is_vllms_rule_bit_for_bit(rng, dtype, device):
    for trial in range(40):
        num_experts = int(rng.integers(1, 40))
        num_physical = num_experts + int(rng.integers(0, 30))
        top_k = int(rng.integers(1, min(num_experts, 9) + 1))
        shape = [int(rng.integers(0, 70))] * int(rng.integers(1, 3)) + [top_k]
        log2phy, count = random_vllm_maps(rng, num_experts, num_physical,
                                          int(rng.choice([num_physical - num_experts + 1, 1024])))
        topk_ids = torch.from_numpy(rng.integers(0, num_experts, size=shape)).to(dtype)
        load = torch.from_numpy(rng.integers(0, 5, num_physical)).to(torch.int32)
        record = torch.tensor(bool(trial % 3))
        unpadded = None if trial % 2 else torch.tensor(int(rng.integers(0, max(shape[0], 1) + 1)))
        expected_out, expected_load = reference_map_and_record(topk_ids, load, log2phy, count,
                                                               record, unpadded)
        got_load = load.to(device)
        got = vllm.map_to_physical_and_record(
            topk_ids.to(device), got_load, log2phy.to(device), count.to(device),
            record.to(device), None if unpadded is None else unpadded.to(device))
        context = "trial %d shape %s E %d P %d" % (trial, shape, num_experts, num_physical)
        assert got.dtype == dtype and torch.equal(got.cpu(), expected_out), context
        assert torch.equal(got_load.cpu(), expected_load), context


def test_vllm_map_to_physical_and_record_large_token_indices():
    # Token indices where the hash's low 32 bits wrap, through the operator.
    log2phy, count = torch.tensor([[5, 9, 2, -1]]), torch.tensor([3])
    ids = torch.zeros(70000, 1, dtype=torch.int64)
    load = torch.zeros(10, dtype=torch.int32)
    got = vllm.map_to_physical_and_record(ids, load, log2phy, count, torch.tensor(True))
    expected = [int(log2phy[0, vllm_replica_index(t, 3)]) for t in range(70000)]
    assert got.reshape(-1).tolist() == expected
    assert int(load.sum()) == 70000


def test_vllm_converters_round_trip(rng):
    table = moe_eplb.plan(np.exp(rng.normal(size=(3, 1, 24))) * 100, 8, 4).table
    phy2log, log2phy, count = vllm.to_vllm(table, 32)
    assert phy2log.shape == (3, 32) and phy2log.dtype == torch.int64
    expected_log2phy, expected_count = logical_maps(phy2log, 24)
    assert torch.equal(log2phy, expected_log2phy) and torch.equal(count, expected_count)
    # vLLM keeps slots ascending: the round trip keeps the placement in that order.
    ascending = vllm.from_vllm(phy2log, num_logical_experts=24)
    assert torch.equal(vllm.from_vllm(logical_to_physical_map=log2phy,
                                      logical_replica_count=count), ascending)
    for layer in range(3):
        for expert in range(24):
            c = int(table[layer, expert, 0])
            assert sorted(table[layer, expert, 1:c + 1].tolist()) == \
                ascending[layer, expert, 1:c + 1].tolist()
    padded = vllm.to_vllm(table, 32, max_replicas=1024)[1]
    assert padded.shape == (3, 24, 1024) and bool((padded[:, :, log2phy.shape[2]:] == -1).all())
    with pytest.raises(ValueError, match=r"from_vllm\(\): give physical_to_logical_map"):
        vllm.from_vllm(phy2log)


def write_stand_in(root, files):
    for path, text in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as stream:
            stream.write(text)


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """Stand-in engine packages on sys.path (removed afterwards)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("vllm", "sglang"):
            del sys.modules[name]


def test_vllm_install(stand_ins):
    with pytest.raises(ImportError):
        vllm.install()
    # vllm/distributed/eplb/policy/__init__.py keeps EPLB_POLICIES = {"default": ...}.
    write_stand_in(stand_ins, {
        "vllm/__init__.py": "", "vllm/distributed/__init__.py": "",
        "vllm/distributed/eplb/__init__.py": "",
        "vllm/distributed/eplb/policy/__init__.py":
            "class DefaultEplbPolicy:\n    pass\nEPLB_POLICIES = {'default': DefaultEplbPolicy}\n"})
    from vllm.distributed.eplb import policy
    replaced = vllm.install(move_cost=0.01)
    assert replaced is policy.DefaultEplbPolicy
    assert policy.EPLB_POLICIES["default"] is vllm.MoeEplbPolicy
    assert vllm.MoeEplbPolicy.options == dict(move_cost=0.01)
    vllm.install()
    assert vllm.MoeEplbPolicy.options == vllm.DEFAULT_OPTIONS


# ---- SGLang -------------------------------------------------------------------

def test_sglang_rebalance_experts_formats():
    tokens = EXAMPLE.unsqueeze(0).repeat(3, 1, 1)  # (N, L, E)
    phy2log, log2phy, count = sglang.rebalance_experts(tokens, 16, 2, 4, 2)
    check_placement(phy2log, 12, 16, 8)
    assert log2phy.dtype == count.dtype == torch.int64
    assert count.sum(dim=1).tolist() == [16, 16] and bool((count >= 1).all())
    for layer in range(2):
        for expert in range(12):
            c = int(count[layer, expert])
            row = log2phy[layer, expert]
            assert bool((row[c:] == -1).all())
            assert sorted(row[:c].tolist()) == [p for p in range(16)
                                                if int(phy2log[layer, p]) == expert]
    with pytest.raises(AssertionError):
        sglang.rebalance_experts(tokens, 15, 2, 4, 2)
    with pytest.raises(ValueError, match=r"dispatch must be one of"):
        sglang.rebalance_experts(tokens, 16, 2, 4, 2, dispatch="random")
    # Equal loads, no spare slot: one replica each.
    assert sglang.rebalance_experts(torch.ones(1, 1, 8), 8, 2, 2, 2)[2].tolist() == [[1] * 8]


def test_sglang_static_plan_beats_deepseek_under_static_dispatch(rng):
    weight = torch.from_numpy(np.exp(rng.normal(0.0, 1.0, size=(4, 64))) * 1000)
    _, log2phy, count = sglang.rebalance_experts(weight, 128, 8, 8, 2, dispatch="static")
    ours = vllm.from_vllm(logical_to_physical_map=log2phy, logical_replica_count=count)
    # SGLang's auto: DeepSeek's hierarchical EPLB, in DeepSeek's replica order.
    theirs = moe_eplb.plan(weight.unsqueeze(1), 16, 8, algorithm="deepseek", num_groups=8,
                           ranks_per_node=8).table
    for layer in range(4):
        score = [moe_eplb.analyze(table[layer], weight[layer], 16, 8, rule="sglang-static",
                                  ranks_per_node=8).max_over_mean for table in (ours, theirs)]
        assert score[0] < score[1]


def sglang_static_dispatch(log2phy_row, world_size, slots_per_rank, ranks_per_node):
    """SGLang's compute_logical_to_rank_dispatch_physical_map for one expert,
    restated, with its seeded fair choice replaced by giving the i-th rank
    left over replica i % count (the same count per replica)."""
    candidates = [p for p in log2phy_row if p != -1]
    chosen, left_over = [], 0
    for rank in range(world_size):
        if len(candidates) == 1:
            chosen.append(candidates[0])
            continue
        same_gpu = [p for p in candidates if p // slots_per_rank == rank]
        same_node = [p for p in candidates
                     if p // (slots_per_rank * ranks_per_node) == rank // ranks_per_node]
        if same_gpu:
            chosen.append(same_gpu[0])
        elif same_node:
            chosen.append(same_node[0])
        else:
            chosen.append(candidates[left_over % len(candidates)])
            left_over += 1
    return chosen


def test_sglang_static_rule_matches_a_restatement_of_sglang(rng):
    # The analyzer's sglang-static routing of per-source-rank counts equals
    # the restated dispatch map applied to them.
    for trial in range(20):
        world_size, slots_per_rank = int(rng.choice([4, 8, 16])), int(rng.integers(2, 5))
        ranks_per_node = int(rng.choice([r for r in (1, 2, 4, world_size) if world_size % r == 0]))
        num_experts = world_size * slots_per_rank - int(rng.integers(0, world_size))
        table = moe_eplb.plan(rng.random((world_size, num_experts)) * 100, world_size,
                              slots_per_rank, layout="WE", rule="ascend-token").table
        load = rng.integers(0, 50, size=(world_size, num_experts)).astype(np.float64)
        got = moe_eplb.analyze(table, load, world_size, slots_per_rank, layout="WE",
                               rule="sglang-static", ranks_per_node=ranks_per_node).slot_load
        expected = torch.zeros(world_size * slots_per_rank, dtype=torch.float64)
        for expert in range(num_experts):
            c = int(table[expert, 0])
            chosen = sglang_static_dispatch(table[expert, 1:c + 1].tolist(), world_size,
                                            slots_per_rank, ranks_per_node)
            for rank, slot in enumerate(chosen):
                expected[slot] += load[rank, expert]
        assert torch.equal(got, expected), "trial %d" % trial


def test_sglang_stat_files_and_init_expert_location(tmp_path):
    counts = torch.arange(2 * 3 * 4, dtype=torch.int32).reshape(2, 3, 4)
    torch.save(dict(rank=0, logical_count=counts, average_utilization_rate_over_window=None),
               tmp_path / "stat.pt")
    assert torch.equal(sglang.load_stat(str(tmp_path / "stat.pt")), counts.double())
    (tmp_path / "stat.json").write_text(json.dumps({"logical_count": counts[0].tolist()}))
    assert torch.equal(sglang.load_stat(str(tmp_path / "stat.json")), counts[:1].double())
    (tmp_path / "bad.json").write_text(json.dumps({"physical_to_logical_map": []}))
    with pytest.raises(ValueError, match=r'load_stat\(\): .*bad.json has no "logical_count"'):
        sglang.load_stat(str(tmp_path / "bad.json"))
    phy2log = sglang.rebalance_experts(counts, 8, 2, 1, 1)[0]
    sglang.write_init_expert_location(str(tmp_path / "init.json"), phy2log)
    assert json.loads((tmp_path / "init.json").read_text()) == {
        "physical_to_logical_map": phy2log.tolist()}


def test_sglang_install(stand_ins):
    with pytest.raises(ImportError):
        sglang.install()
    write_stand_in(stand_ins, {
        "sglang/__init__.py": "", "sglang/srt/__init__.py": "",
        "sglang/srt/eplb/__init__.py": "",
        "sglang/srt/eplb/eplb_algorithms/__init__.py":
            "def rebalance_experts(*args, **kwargs):\n    raise AssertionError('replaced')\n",
        "sglang/srt/eplb/expert_location.py":
            "METADATA = None\ndef get_global_expert_location_metadata():\n    return METADATA\n",
        "sglang/srt/server_args.py":
            "class Args:\n    ep_dispatch_algorithm = 'dynamic'\n"
            "def get_global_server_args():\n    return Args()\n"})
    from sglang.srt.eplb import eplb_algorithms, expert_location
    original = eplb_algorithms.rebalance_experts
    assert sglang.install() is original
    tokens = EXAMPLE.unsqueeze(0)
    # No metadata yet: from scratch, with the server's dispatch rule (dynamic).
    first = eplb_algorithms.rebalance_experts(tokens_per_expert=tokens, num_physical_experts=16,
                                              num_local_physical_experts=2, num_groups=4,
                                              num_nodes=2, algorithm=None)
    assert all(torch.equal(a, b) for a, b in
               zip(first, sglang.rebalance_experts(tokens, 16, 2, 4, 2, dispatch="dynamic")))

    class Metadata:
        physical_to_logical_map = first[0]
    expert_location.METADATA = Metadata()
    again = eplb_algorithms.rebalance_experts(tokens * 2, 16, 2, 4, 2, None)
    assert torch.equal(again[0], first[0])  # the placement in force stays when it still fits
    sglang.install(dispatch="static", move_cost=0.01)
    assert eplb_algorithms.rebalance_experts(tokens, 16, 2, 4, 2)[0].shape == (2, 16)


# ---- DeepSeek -----------------------------------------------------------------

def test_deepseek_drop_in_formats():
    phy2log, log2phy, count = deepseek.rebalance_experts(EXAMPLE, 16, 4, 2, 8)
    check_placement(phy2log, 12, 16, 8)
    assert log2phy.shape == (2, 12, int(count.max()))
    for layer in range(2):
        for expert in range(12):
            c = int(count[layer, expert])
            assert bool((log2phy[layer, expert, c:] == -1).all())
            for slot in log2phy[layer, expert, :c].tolist():
                assert int(phy2log[layer, slot]) == expert
    with pytest.raises(AssertionError):
        deepseek.rebalance_experts(EXAMPLE, 15, 4, 2, 8)
    with pytest.raises(AssertionError):  # hierarchical: 12 experts in 5 groups
        deepseek.rebalance_experts(EXAMPLE, 16, 5, 5, 8)
    deepseek.rebalance_experts(EXAMPLE, 16, 5, 2, 8)  # global fallback: fine
    with pytest.raises(ValueError, match=r"weight must hold finite counts"):
        deepseek.rebalance_experts(-EXAMPLE, 16, 4, 2, 8)


# ---- TensorRT-LLM -------------------------------------------------------------

def test_trtllm_statistics_config_and_yaml(tmp_path, rng):
    yaml = pytest.importorskip("yaml")
    # EXPERT_STATISTIC_PATH: meta_info.json and rank<r>.safetensors with "<iter>_<layer>" counts.
    expected = torch.from_numpy(rng.integers(0, 60, size=(3, 2, 4, 16))).double()
    trtllm.write_expert_statistic(str(tmp_path), trtllm.ExpertStatistic(
        expected, [3, 4], 100, {"num_experts": 16, "num_experts_per_token": 2}))
    # The files are TensorRT-LLM's: a little-endian header length, JSON, then int32 data.
    data = (tmp_path / "rank1.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    begin, end = header["101_4"]["data_offsets"]
    assert header["101_4"]["dtype"] == "I32" and header["101_4"]["shape"] == [16]
    assert np.frombuffer(data[8 + size + begin:8 + size + end], dtype="<i4").tolist() == \
        expected[1, 1, 1].long().tolist()
    (tmp_path / "rank0_raw.safetensors").write_bytes(data)  # raw ids: not counts, skipped
    statistic = trtllm.read_expert_statistic(str(tmp_path))
    assert torch.equal(statistic.counts, expected)
    assert statistic.layers == [3, 4] and statistic.iter_start == 100
    config = trtllm.plan_config(statistic, ep_size=4, num_slots=24)
    assert config["num_slots"] == 24 and config["layer_updates_per_iter"] == 0
    assert sorted(config["initial_global_assignments"]) == [3, 4]
    for row in config["initial_global_assignments"].values():
        check_placement(torch.tensor([row]), 16, 24, 4)
    trtllm.write_config_yaml(str(tmp_path / "lb.yaml"), config)
    assert yaml.safe_load((tmp_path / "lb.yaml").read_text()) == config
    # The config's assignments are the table's placement.
    table = vllm.from_vllm(torch.tensor(config["initial_global_assignments"][3])[None],
                           num_logical_experts=16)[0]
    assert trtllm.config_from_table(table, 24, layers=[3])["initial_global_assignments"][3] == \
        config["initial_global_assignments"][3]
    os.remove(tmp_path / "rank2.safetensors")
    with pytest.raises(ValueError, match=r"needs rank0.safetensors .. rank<R-1>.safetensors"):
        trtllm.read_expert_statistic(str(tmp_path))


# ---- vllm-ascend --------------------------------------------------------------

def test_vllm_ascend_policy_passes_its_placement_check(rng):
    policy = vllm_ascend.MoeEplbPolicy()
    table = moe_eplb.plan(rng.random((3, 1, 32)) * 100, 8, 5).table  # 3 layers, 8 devices x 5 slots
    current = vllm.to_vllm(table, 40)[0].reshape(3, 8, 5)
    for trial in range(6):
        workload = torch.from_numpy(rng.integers(0, 1000, size=tuple(current.shape)))
        changed, priority, new = policy.rebalance_experts(current, workload)
        vllm_ascend.check_placement(current, new)
        assert sorted(priority) == list(range(current.shape[0]))
        assert changed == int(bool((new != current).any()))
        assert new.shape == current.shape
        current = new
    bad = current.clone()
    lost, flat = int(bad[0, 0, 1]), bad[0].reshape(-1).tolist()
    bad[0, 0, 1] = bad[0, 0, 0]
    # Put the lost expert in place of a replica of an expert held twice elsewhere.
    for slot in range(5, 40):
        device, expert = divmod(slot, 5)[0], flat[slot]
        if flat.count(expert) > 1 and lost not in flat[device * 5:device * 5 + 5]:
            bad[0].view(-1)[slot] = lost
            break
    with pytest.raises(ValueError, match=r"device 0 holds an expert twice"):
        vllm_ascend.check_placement(current, bad)
    moved = current.clone()
    moved[0, 0, [0, 1]] = moved[0, 0, [1, 0]]
    with pytest.raises(ValueError, match=r"moves an expert that stays on it"):
        vllm_ascend.check_placement(current, moved)


def test_vllm_ascend_expert_map_round_trip(tmp_path):
    table = torch.tensor([[[7, 2, 0, 3, 5], [6, 1, 4, 7, 2]]])  # vllm-ascend's test map
    vllm_ascend.write_expert_map(str(tmp_path / "map.json"), table)
    assert torch.equal(vllm_ascend.read_expert_map(str(tmp_path / "map.json")), table)
    data = json.loads((tmp_path / "map.json").read_text())
    assert data["moe_layer_count"] == 1
    assert data["layer_list"][0]["device_list"][1] == {"device_id": 1,
                                                       "device_expert": [6, 1, 4, 7, 2]}
    data["moe_layer_count"] = 2
    (tmp_path / "map.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"says moe_layer_count 2 but lists 1 layers"):
        vllm_ascend.read_expert_map(str(tmp_path / "map.json"))


def test_engines_import_without_engines():
    for module in (deepseek, sglang, trtllm, vllm, vllm_ascend):
        assert module.__all__
    assert vllm.MoeEplbPolicy.__mro__[-1] is object

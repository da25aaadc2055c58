"""torch.ops.moe_eplb on the CPU and Meta backends, against the scalar
reference in reference.py. GPU tests live in test_cuda.py."""
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import moe_eplb
from reference import (
    BAD,
    DISTRIBUTIONS,
    LAYOUTS,
    MODES,
    POISON,
    as_tensor,
    assert_same,
    make_ids,
    make_table,
    reference_load,
    reference_pruning_mask,
    reference_update_expert,
)

OPS = torch.ops.moe_eplb
ID_DTYPES = [torch.int32, torch.int64]


# ---- what only the adapter can get wrong ------------------------------------
# The semantics (SPEC.md's notes, shapes, ranks, modes, pruning, load
# recording, bad values) are swept in C++ (tests/cpp); here each case goes
# through tensors once: strides and dtypes into views, outputs, error mapping.


def test_spec_worked_example_through_the_op():
    # world_size=8, rank 5, row [3, 40, 7, 19]: ceil(8/3)=3, 5//3=1 -> j=2 -> 7;
    # by token: b=4 -> j=2 -> 7, b=5 -> j=3 -> 19.
    table = torch.tensor([[3, 40, 7, 19]], dtype=torch.int32)
    ids = torch.zeros(6, 1, dtype=torch.int64)
    assert moe_eplb.update_expert(ids, table, 5, 8).flatten().tolist() == [7] * 6
    out = moe_eplb.update_expert(ids, table, 5, 8, balance_mode=1)
    assert out.flatten().tolist() == [40, 7, 19, 40, 7, 19]


@pytest.mark.parametrize("dtype", ID_DTYPES)
@pytest.mark.parametrize("balance_mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_dtype_and_mode_matches_reference(rng, dtype, balance_mode, layout):
    # Tensor strides become view strides: ids in every layout, the table in
    # row- and column-major order, stateless and prepared.
    world_size, slots_per_rank, num_experts = 16, 4, 40
    for table_order in ("row", "column"):
        table = make_table(rng, num_experts, world_size, slots_per_rank, 5, "random")
        if table_order == "column":
            table = table.t().contiguous().t()
        ids = make_ids(rng, 37, 6, num_experts, dtype, layout)
        rank = int(rng.integers(world_size))
        context = "%s table, rank %d" % (table_order, rank)
        expected = as_tensor(
            reference_update_expert(ids, table, rank, world_size, balance_mode), dtype)
        assert_same(moe_eplb.update_expert(ids, table, rank, world_size,
                                           balance_mode=balance_mode), expected, context)
        prepared = moe_eplb.PreparedTable(table, rank, world_size, balance_mode=balance_mode,
                                          num_physical_experts=world_size * slots_per_rank)
        assert_same(prepared.map(ids), expected, "prepared " + context)


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_active_mask", [False, True])
def test_pruning_inputs_and_load_counts_through_every_op(rng, scale_dtype, with_active_mask):
    # Strided scales of each dtype, a (K,) or (1, K) threshold, the optional
    # mask and load_counts reach the core the same way through all four ops.
    num_tokens, top_k, world_size, num_physical = 65, 8, 8, 64
    table = make_table(rng, 40, world_size, num_physical // world_size, 5, "random")
    ids = make_ids(rng, num_tokens, top_k, 40, torch.int64, "sliced")
    buffer = torch.zeros(num_tokens, 2 * top_k, dtype=scale_dtype)
    buffer[:, ::2] = torch.from_numpy(rng.random((num_tokens, top_k))).to(scale_dtype)
    scales = buffer[:, ::2]
    threshold = torch.from_numpy(rng.random(top_k) * 0.3).float()
    active = torch.arange(num_tokens) < 40 if with_active_mask else None
    rank = int(rng.integers(world_size))
    rows = reference_update_expert(ids, table, rank, world_size)
    mask = reference_pruning_mask(scales, threshold, active)
    load = torch.full((num_physical,), 1000, dtype=torch.int64)  # added to, never cleared
    out, got_mask = moe_eplb.update_expert_pruned(
        ids, table, rank, world_size, expert_scales=scales, pruning_threshold=threshold,
        active_mask=active, num_physical_experts=num_physical, load_counts=load)
    assert_same(out, as_tensor(rows, torch.int64), "ids")
    assert_same(got_mask, mask, "mask")
    assert torch.equal(load, reference_load(rows, mask, num_physical) + 1000)
    out2, mask2 = OPS.update_expert_pruned(ids, table, scales, threshold.unsqueeze(0), active,
                                           rank, world_size)
    assert torch.equal(out2, out) and torch.equal(mask2, mask)
    prepared = moe_eplb.PreparedTable(table, rank, world_size, num_physical_experts=num_physical)
    load.zero_()
    out3, mask3 = prepared.map_pruned(ids, scales, threshold, active, load_counts=load)
    assert torch.equal(out3, out) and torch.equal(mask3, mask)
    assert torch.equal(load, reference_load(rows, mask, num_physical))


# A NaN never prunes: a NaN scale (its token's sum is NaN) keeps every
# choice of that token, and a NaN threshold keeps that choice of every token;
# other tokens are pruned as usual. (It used to prune the whole token, or,
# with a NaN threshold, everything.)
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pruning_keeps_choices_on_nan(scale_dtype):
    table = torch.tensor([[1, 0, -1], [1, 1, -1], [1, 2, -1], [1, 3, -1]], dtype=torch.int32)
    ids = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 0]])
    scales = torch.tensor([[0.7, 0.2, 0.1], [0.6, float("nan"), 0.1], [0.8, 0.1, 0.1]],
                          dtype=scale_dtype)
    threshold = torch.tensor([0.0, 0.25, float("nan")])
    _, mask = moe_eplb.update_expert_pruned(ids, table, 0, 2, expert_scales=scales,
                                            pruning_threshold=threshold)
    assert mask.tolist() == [[True, False, True],   # 0.2 < 0.25: pruned; k = 2: NaN threshold
                             [True, True, True],    # a NaN scale: nothing pruned
                             [True, False, True]]
    assert torch.equal(mask, reference_pruning_mask(scales, threshold))
    prepared = moe_eplb.PreparedTable(table, 0, 2)
    assert torch.equal(prepared.map_pruned(ids, scales, threshold)[1], mask)
    everything_nan = torch.full((3,), float("nan"))
    _, kept = moe_eplb.update_expert_pruned(ids, table, 0, 2, expert_scales=scales,
                                            pruning_threshold=everything_nan)
    assert bool(kept.all())


# An active_mask that breaks "all True before all False": under the native
# profile each token's entry decides alone; the Ascend profiles, whose
# precondition it is, refuse it on the CPU, naming both entries.
def test_active_mask_out_of_order(rng):
    table = make_table(rng, 16, 4, 8, 5, "random")
    ids = make_ids(rng, 6, 4, 16, torch.int64, "contiguous")
    scales = torch.from_numpy(rng.random((6, 4))).float()
    threshold = torch.full((4,), 0.1)
    active = torch.tensor([True, False, True, True, False, True])
    _, mask = moe_eplb.update_expert_pruned(ids, table, 1, 4, expert_scales=scales,
                                            pruning_threshold=threshold, active_mask=active)
    assert torch.equal(mask, reference_pruning_mask(scales, threshold, active))
    assert not bool(mask[1].any()) and not bool(mask[4].any())
    assert torch.equal(moe_eplb.PreparedTable(table, 1, 4).map_pruned(
        ids, scales, threshold, active)[1], mask)
    message = (r"^update_expert_pruned\(\): active_mask\[2\] is true after active_mask\[1\] is "
               r"false; the ascend profile requires every true entry before every false one "
               r"\(Ascend's precondition; the native profile lets each token's entry decide "
               r"alone\)$")
    with pytest.raises(ValueError, match=message):
        moe_eplb.update_expert_pruned(ids, table, 1, 4, expert_scales=scales,
                                      pruning_threshold=threshold, active_mask=active,
                                      profile="ascend")
    with pytest.raises(ValueError, match=message):
        moe_eplb.npu_moe_update_expert(ids, table, expert_scales=scales,
                                       pruning_threshold=threshold, active_mask=active,
                                       local_rank_id=1, world_size=4)
    with pytest.raises(ValueError, match=r"^update_expert_prepared\(\): active_mask\[2\] is true"):
        moe_eplb.PreparedTable(table, 1, 4, profile="ascend").map_pruned(
            ids, scales, threshold, active)
    in_order = torch.tensor([True, True, True, False, False, False])
    _, mask = moe_eplb.update_expert_pruned(ids, table, 1, 4, expert_scales=scales,
                                            pruning_threshold=threshold, active_mask=in_order,
                                            profile="ascend")
    assert torch.equal(mask, reference_pruning_mask(scales, threshold, in_order))


def test_output_is_fresh_and_contiguous_input_untouched(rng):
    # The output never aliases the (non-contiguous) input; the input is unchanged.
    table = make_table(rng, 16, 4, 8, 5, "random")
    ids = make_ids(rng, 33, 4, 16, torch.int64, "transposed")
    before = ids.clone()
    out = moe_eplb.update_expert(ids, table, 1, 4)
    assert out.is_contiguous() and out.data_ptr() != ids.data_ptr()
    assert torch.equal(ids, before)


def test_empty_batch_native_profile():
    # BS = 0 is allowed by the native profile and returns an empty (0, K) tensor.
    table = torch.tensor([[1, 0]], dtype=torch.int32)
    out = moe_eplb.update_expert(torch.empty(0, 8, dtype=torch.int32), table, 0, 2)
    assert out.shape == (0, 8) and out.dtype == torch.int32


def test_counted_op_mask_is_all_true_without_pruning():
    table = torch.tensor([[1, 0], [1, 1]], dtype=torch.int32)
    ids, mask = OPS.update_expert_counted(torch.tensor([[0, 1]]), table, 0, 2)
    assert ids.tolist() == [[0, 1]] and mask.tolist() == [[True, True]]


# ---- the prepared path -------------------------------------------------------


def test_prepared_routes_layout():
    # Rank mode: (E, 1) with this rank's physical id; token mode: (E, F) rows
    # [count, ids..., -1 padding] so any table of the same shape fits in place.
    table = torch.tensor([[2, 4, 5, 0], [1, 6, -1, -1], [3, 1, 2, 3]], dtype=torch.int32)
    prepared = moe_eplb.PreparedTable(table, 1, 2, num_physical_experts=8)
    assert prepared.routes.tolist() == [[5], [6], [2]]
    prepared = moe_eplb.PreparedTable(table, balance_mode=1, num_physical_experts=8)
    assert prepared.routes.tolist() == [[2, 4, 5, -1], [1, 6, -1, -1], [3, 1, 2, 3]]


def test_prepared_infers_num_physical_experts():
    # Smallest multiple of world_size above the largest id: max id 6, W=4 -> 8.
    table = torch.tensor([[1, 6], [1, 0]], dtype=torch.int32)
    assert moe_eplb.PreparedTable(table, 0, 4).num_physical_experts == 8


@pytest.mark.parametrize("balance_mode", MODES)
def test_prepared_update_in_place(rng, balance_mode):
    # update() rewrites the routes the C++ table owns (what CUDA graphs rely
    # on): the same tensor, the same storage, and the next map() uses the new
    # table.
    old = make_table(rng, 32, 8, 6, 4, "random")
    new = make_table(rng, 32, 8, 6, 4, "max")
    ids = make_ids(rng, 50, 6, 32, torch.int64, "contiguous")
    prepared = moe_eplb.PreparedTable(old, 3, 8, balance_mode=balance_mode,
                                      num_physical_experts=48)
    routes = prepared.routes
    storage = routes.data_ptr()
    prepared.update(new)
    assert prepared.routes is routes and routes.data_ptr() == storage
    expected = as_tensor(reference_update_expert(ids, new, 3, 8, balance_mode), torch.int64)
    assert_same(prepared.map(ids), expected, "after update")


def test_prepared_update_rejects_invalid_table_and_keeps_old(rng):
    table = make_table(rng, 4, 2, 4, 3, "random")
    prepared = moe_eplb.PreparedTable(table, 0, 2, num_physical_experts=8)
    routes = prepared.routes.clone()
    bad = table.clone()
    bad[1, 0] = 0
    with pytest.raises(ValueError, match=r"^PreparedTable\.update\(\): eplb_table is invalid .*\n"
                                         r"(.*\n)*error: row 1: replica count 0 is outside 1\.\.2"):
        prepared.update(bad)
    with pytest.raises(ValueError, match=r"^PreparedTable\.update\(\): eplb_table has shape "
                                         r"\(4, 4\), expected \(4, 3\)"):
        prepared.update(torch.zeros(4, 4, dtype=torch.int32))
    assert torch.equal(prepared.routes, routes)


# ---- error inputs: each bad input with the message it must produce --------

TABLE = torch.tensor([[1, 0, -1, -1], [2, 1, 2, -1], [3, 3, 4, 5], [1, 6, -1, -1]],
                     dtype=torch.int32)
IDS = torch.tensor([[0, 1], [2, 3]], dtype=torch.int64)


def _bad_count_table():
    table = TABLE.clone()
    table[2, 0] = 0
    return table


def _bad_slot_table():
    table = TABLE.clone()
    table[1, 2] = 40
    return table


def _call(ids=IDS, table=TABLE, rank=1, world=2, **kwargs):
    return lambda: OPS.update_expert(ids, table, rank, world, **kwargs)


def _counted(ids=IDS, table=TABLE, rank=1, world=2, **kwargs):
    return lambda: OPS.update_expert_counted(ids, table, rank, world, **kwargs)


SCALES = torch.full((2, 2), 0.5)
THRESHOLD = torch.zeros(2)

ERROR_INPUTS = [
    # (name, call, exception, message pattern)
    ("ids float", _call(ids=IDS.float()), ValueError,
     r"^update_expert\(\): expert_ids must be int32 or int64, got float32$"),
    ("ids 1-D", _call(ids=IDS.flatten()), ValueError,
     r"^update_expert\(\): expert_ids must be 2-D \(BS, K\), got a 1-D tensor$"),
    ("table int64", _call(table=TABLE.long()), ValueError,
     r"^update_expert\(\): eplb_table must be int32, got int64$"),
    ("table 3-D", _call(table=TABLE.unsqueeze(0)), ValueError,
     r"eplb_table must be 2-D \(E, F\), got a 3-D tensor"),
    ("devices differ", _call(table=TABLE.to("meta")), ValueError,
     r"eplb_table is on meta but expert_ids is on cpu; all tensors must be on one device"),
    ("rank too large", _call(rank=2), ValueError,
     r"local_rank_id must be in 0\.\.1 \(world_size 2\), got 2$"),
    ("rank negative", _call(rank=-1), ValueError, r"local_rank_id must be in 0\.\.1"),
    ("world size 0", _call(rank=0, world=0), ValueError,
     r"world_size must be in 1\.\.2147483647 under the native profile, got 0"),
    ("balance mode 3", _call(balance_mode=3), ValueError,
     r"balance_mode must be 0 \(by rank\), 1 \(by token\) or 2 \(vLLM's token hash\), got 3"),
    ("ascend profile hash mode", _call(balance_mode=2, profile="ascend"), ValueError,
     r"balance_mode 2 \(vLLM's token hash\) is not supported under the ascend profile, "
     r"expected 0\.\.1"),
    ("unknown profile", _call(profile="npu"), ValueError,
     r"^update_expert\(\): profile: unknown limit profile 'npu', expected one of: native, "
     r"ascend, ascend_seed$"),
    ("seed profile token mode", _call(balance_mode=1, profile="ascend_seed"), ValueError,
     r"balance_mode 1 \(by token\) is not supported under the ascend_seed profile"),
    ("seed profile BS 513", _call(ids=torch.zeros(513, 2, dtype=torch.int64),
                                  profile="ascend_seed"), ValueError,
     r"expert_ids has 513 tokens \(BS\), expected 1\.\.512 under the ascend_seed profile"),
    ("ascend profile BS 0", _call(ids=torch.zeros(0, 2, dtype=torch.int64), world=4,
                                  profile="ascend"),
     ValueError, r"expert_ids has 0 tokens \(BS\), expected 1\.\.512 under the ascend profile"),
    ("ascend profile K 17", _call(ids=torch.zeros(2, 17, dtype=torch.int64), world=4,
                                  profile="ascend"),
     ValueError, r"top_k \(K\) = 17, expected 1\.\.16 under the ascend profile"),
    ("ascend K > E", _call(ids=torch.zeros(2, 5, dtype=torch.int64), world=4,
                           profile="ascend"),
     ValueError, r"top_k \(K\) = 5 exceeds the number of experts E = 4 under the ascend profile"),
    ("seed world size 385", _call(world=385, profile="ascend_seed"), ValueError,
     r"world_size must be in 2\.\.384 under the ascend_seed profile, got 385"),
    ("ascend F > W + 1", _call(profile="ascend"), ValueError,
     r"eplb_table has 4 columns \(F\), expected 2\.\.3 \(world_size \+ 1\) under the ascend "
     r"profile"),
    ("slots not multiple of W", _call(world=4, num_physical_experts=10), ValueError,
     r"num_physical_experts 10 is not a multiple of world_size 4"),
    ("expert id too large", _call(ids=torch.tensor([[0, 1], [4, 0]])), IndexError,
     r"^update_expert\(\): expert_ids\[1, 0\] = 4 is out of range, expected 0\.\.3 "
     r"\(eplb_table has 4 rows\)$"),
    ("expert id negative", _call(ids=torch.tensor([[0, -1]], dtype=torch.int32)), IndexError,
     r"expert_ids\[0, 1\] = -1 is out of range"),
    ("replica count 0", _call(table=_bad_count_table()), IndexError,
     r"expert_ids\[1, 0\] = 2 selects eplb_table row 2 whose replica count 0 is outside "
     r"1\.\.3 \(F - 1\)"),
    ("slot too large", _call(table=_bad_slot_table(), num_physical_experts=8),
     IndexError, r"expert_ids\[0, 1\] = 1 selects eplb_table\[1, 2\] = 40, outside the "
                 r"slot range 0\.\.7 \(num_physical_experts 8\)"),
    ("load counts without slot count", _counted(load_counts=torch.zeros(8, dtype=torch.long)),
     ValueError, r"load recording needs num_physical_experts"),
    ("load counts wrong size", _counted(load_counts=torch.zeros(7, dtype=torch.long),
                                        num_physical_experts=8), ValueError,
     r"^update_expert\(\): load_counts has 7 elements, expected num_physical_experts = 8$"),
    ("load counts strided", _counted(load_counts=torch.zeros(16, dtype=torch.long)[::2],
                                     num_physical_experts=8), ValueError,
     r"load_counts must be contiguous, got stride 2"),
    ("load counts int32", _counted(load_counts=torch.zeros(8, dtype=torch.int32),
                                   num_physical_experts=8), ValueError,
     r"load_counts must be int64, got int32"),
    ("error counter two elements", _counted(error_counter=torch.zeros(2, dtype=torch.int32)),
     ValueError, r"error_counter must have one element, got 2"),
    ("error counter int64", _counted(error_counter=torch.zeros(1, dtype=torch.int64)),
     ValueError, r"error_counter must be int32, got int64"),
    ("scales without threshold", _counted(expert_scales=SCALES), ValueError,
     r"expert_scales and pruning_threshold come together, got only expert_scales"),
    ("active mask alone", _counted(active_mask=torch.ones(2, dtype=torch.bool)), ValueError,
     r"active_mask needs expert_scales and pruning_threshold"),
    ("scales float64", _counted(expert_scales=SCALES.double(), pruning_threshold=THRESHOLD),
     ValueError, r"expert_scales must be float32, float16 or bfloat16, got float64"),
    ("scales shape", _counted(expert_scales=torch.ones(2, 3), pruning_threshold=THRESHOLD),
     ValueError, r"expert_scales must have the shape of expert_ids \(2, 2\), got \(2, 3\)"),
    ("threshold size", _counted(expert_scales=SCALES, pruning_threshold=torch.zeros(3)),
     ValueError, r"pruning_threshold must have K = 2 elements, got 3"),
    ("threshold 2 rows", _counted(expert_scales=SCALES, pruning_threshold=torch.zeros(2, 2)),
     ValueError, r"pruning_threshold must be \(K,\) or \(1, K\), got shape \[2, 2\]"),
    ("active mask uint8", _counted(expert_scales=SCALES, pruning_threshold=THRESHOLD,
                                   active_mask=torch.ones(2, dtype=torch.uint8)), ValueError,
     r"active_mask must be bool, got uint8"),
    ("active mask size", _counted(expert_scales=SCALES, pruning_threshold=THRESHOLD,
                                  active_mask=torch.ones(3, dtype=torch.bool)), ValueError,
     r"active_mask must have BS = 2 elements, got 3"),
    ("pruning under seed profile", _counted(expert_scales=SCALES, pruning_threshold=THRESHOLD,
                                            profile="ascend_seed"), ValueError,
     r"expert pruning \(expert_scales, pruning_threshold, active_mask\) is not supported under "
     r"the ascend_seed profile"),
    ("prepare duplicate ids", lambda: OPS.prepare_table(
        torch.tensor([[2, 1, 1], [1, 0, -1]], dtype=torch.int32), 0, 2), ValueError,
     r"prepare_table\(\): eplb_table is invalid \(1 error\):\n(.*\n)*"
     r"error: row 0: slot 1 appears in columns 1 and 2"),
    ("prepare slot claimed twice", lambda: OPS.prepare_table(
        torch.tensor([[1, 3], [1, 3]], dtype=torch.int32), 0, 2), ValueError,
     r"physical slot 3 is claimed by row 0 \(column 1\) and row 1 \(column 1\)"),
    ("prepare meta table", lambda: OPS.prepare_table(TABLE.to("meta"), 0, 2), ValueError,
     r"prepare_table\(\): eplb_table must hold values"),
    ("prepared id too large", lambda: moe_eplb.PreparedTable(TABLE, 1, 2).map(
        torch.tensor([[0, 9]])), IndexError,
     r"^update_expert_prepared\(\): expert_ids\[0, 1\] = 9 is out of range, expected 0\.\.3 "
     r"\(the prepared table has 4 experts\)$"),
    ("prepared mode mismatch", lambda: OPS.update_expert_prepared(
        IDS, moe_eplb.PreparedTable(TABLE, 1, 2).routes, balance_mode=1,
        num_physical_experts=8), ValueError,
     r"update_expert_prepared\(\): prepared routes have row width 1, expected at least 2 "
     r"\(count and one replica\) in token mode"),
    ("prepared routes int64", lambda: OPS.update_expert_prepared(
        IDS, torch.zeros(4, 1, dtype=torch.int64), balance_mode=0, num_physical_experts=8),
     ValueError, r"routes must be int32, got int64"),
    # Python type mistakes name the argument, as TypeError (not a dispatcher dump).
    ("ids as a list", lambda: moe_eplb.update_expert([[0, 1]], TABLE, 1, 2), TypeError,
     r"^update_expert\(\): expert_ids must be a torch.Tensor, got list$"),
    ("ids as NumPy", lambda: moe_eplb.update_expert(IDS.numpy(), TABLE, 1, 2), TypeError,
     r"^update_expert\(\): expert_ids must be a torch.Tensor, got ndarray$"),
    ("table as a list", lambda: moe_eplb.update_expert(IDS, TABLE.tolist(), 1, 2), TypeError,
     r"^update_expert\(\): eplb_table must be a torch.Tensor, got list$"),
    ("rank as a float", lambda: moe_eplb.update_expert(IDS, TABLE, 1.0, 2), TypeError,
     r"^update_expert\(\): local_rank_id must be an int, got float$"),
    ("rank as a bool", lambda: moe_eplb.update_expert(IDS, TABLE, True, 2), TypeError,
     r"^update_expert\(\): local_rank_id must be an int, got bool$"),
    ("profile as an int", lambda: moe_eplb.update_expert(IDS, TABLE, 1, 2, profile=0), TypeError,
     r"^update_expert\(\): profile must be a str, got int$"),
    ("pruned names itself", lambda: moe_eplb.update_expert_pruned(
        IDS, TABLE, 2, 2, expert_scales=SCALES, pruning_threshold=THRESHOLD), ValueError,
     r"^update_expert_pruned\(\): local_rank_id must be in 0\.\.1 \(world_size 2\), got 2$"),
    ("pruned type", lambda: moe_eplb.update_expert_pruned(
        IDS, TABLE, 0, 2.5, expert_scales=SCALES, pruning_threshold=THRESHOLD), TypeError,
     r"^update_expert_pruned\(\): world_size must be an int, got float$"),
    ("prepared from NumPy", lambda: moe_eplb.PreparedTable(TABLE.numpy(), 1, 2), TypeError,
     r"^PreparedTable\(\): eplb_table must be a torch.Tensor, got ndarray$"),
    ("prepared rank mode needs a rank", lambda: moe_eplb.PreparedTable(TABLE), TypeError,
     r"^PreparedTable\(\): rank mode \(balance_mode=0\) needs local_rank_id and world_size$"),
    ("prepared rank float", lambda: moe_eplb.PreparedTable(TABLE, 0.0, 2), TypeError,
     r"^PreparedTable\(\): local_rank_id must be an int, got float$"),
    ("prepared names itself", lambda: moe_eplb.PreparedTable(TABLE, 2, 2), ValueError,
     r"^PreparedTable\(\): local_rank_id must be in 0\.\.1 \(world_size 2\), got 2$"),
    ("prepared map list", lambda: moe_eplb.PreparedTable(TABLE, 1, 2).map([[0, 1]]), TypeError,
     r"^PreparedTable\.map\(\): expert_ids must be a torch.Tensor, got list$"),
    ("prepared update list", lambda: moe_eplb.PreparedTable(TABLE, 1, 2).update(TABLE.tolist()),
     TypeError, r"^PreparedTable\.update\(\): eplb_table must be a torch.Tensor, got list$"),
    ("prepared update shape", lambda: moe_eplb.PreparedTable(TABLE, 1, 2).update(TABLE[:, :2]),
     ValueError, r"^PreparedTable\.update\(\): eplb_table has shape \(4, 2\), expected \(4, 4\)"),
    ("compat seed profile limit", lambda: moe_eplb.npu_moe_eplb_update_expert(
        IDS, TABLE, 0, 1), ValueError,
     r"world_size must be in 2\.\.384 under the ascend_seed profile, got 1"),
    ("compat pruning half given", lambda: moe_eplb.npu_moe_update_expert(
        IDS, TABLE, expert_scales=SCALES, local_rank_id=0, world_size=2), ValueError,
     r"expert_scales and pruning_threshold come together, got only expert_scales"),
]


@pytest.mark.parametrize("name,call,error,pattern", ERROR_INPUTS,
                         ids=[case[0] for case in ERROR_INPUTS])
def test_error_inputs(name, call, error, pattern):
    with pytest.raises(error) as info:
        call()
    assert re.search(pattern, str(info.value)), "message was: %s" % info.value


def test_prepared_identity_is_read_only_and_defaults_are_valid():
    prepared = moe_eplb.PreparedTable(TABLE, 1, 2)
    for name, value in (("local_rank_id", 0), ("world_size", 4), ("balance_mode", 1),
                        ("num_physical_experts", 16), ("profile", "ascend"),
                        ("routes", TABLE), ("device", torch.device("cpu"))):
        with pytest.raises(AttributeError):
            setattr(prepared, name, value)  # would change nothing the routes were built for
    assert (prepared.local_rank_id, prepared.world_size, prepared.balance_mode) == (1, 2, 0)
    # Token mode needs no rank: the defaults are a valid call.
    token = moe_eplb.PreparedTable(TABLE, balance_mode=1)
    assert token.local_rank_id is None and token.world_size is None
    assert torch.equal(token.map(IDS), moe_eplb.update_expert(IDS, TABLE, 0, 1, balance_mode=1))
    assert "local_rank_id=None" in repr(token)


@pytest.mark.skipif(moe_eplb.with_cuda, reason="checks a build without CUDA")
def test_error_counter_without_cuda_says_so():
    for call, name in ((moe_eplb.read_error_counter, "read_error_counter"),
                       (moe_eplb.error_counter, "error_counter")):
        with pytest.raises(RuntimeError, match=r"^%s\(\): moe_eplb was built without CUDA$" % name):
            call()
    with pytest.raises(RuntimeError, match=r"library_error_counter\(\): moe_eplb was built without "
                       r"CUDA"):
        OPS.library_error_counter(0)
    assert moe_eplb.programmatic_dependent_launch() is False


# ---- Meta: shape and dtype inference ---------------------------------------


@pytest.mark.parametrize("dtype", ID_DTYPES)
def test_meta_shape_and_dtype(dtype):
    ids = torch.empty(300, 7, dtype=dtype, device="meta")
    table = torch.empty(64, 5, dtype=torch.int32, device="meta")
    out = OPS.update_expert(ids, table, 3, 8)
    assert (out.device.type, out.shape, out.dtype) == ("meta", (300, 7), dtype)
    assert out.is_contiguous()
    scales = torch.empty(300, 7, dtype=torch.bfloat16, device="meta")
    threshold = torch.empty(1, 7, dtype=torch.float32, device="meta")
    out, mask = OPS.update_expert_pruned(ids, table, scales, threshold, None, 3, 8)
    assert (out.shape, out.dtype, mask.shape, mask.dtype) == ((300, 7), dtype, (300, 7),
                                                              torch.bool)
    load = torch.empty(64, dtype=torch.int64, device="meta")
    out, mask = OPS.update_expert_counted(ids, table, 3, 8, load_counts=load,
                                          num_physical_experts=64)
    assert (out.shape, mask.dtype) == ((300, 7), torch.bool)
    routes = torch.empty(64, 1, dtype=torch.int32, device="meta")
    out = OPS.update_expert_prepared(ids, routes, balance_mode=0, num_physical_experts=64)
    assert (out.shape, out.dtype) == ((300, 7), dtype)
    out, mask = OPS.update_expert_prepared_counted(ids, routes.expand(64, 5).contiguous(),
                                                   balance_mode=1, num_physical_experts=64)
    assert (out.shape, mask.shape) == ((300, 7), (300, 7))


@pytest.mark.parametrize("case", [
    (dict(ids=(513, 4), profile="ascend"), r"513 tokens \(BS\), expected 1\.\.512"),
    (dict(ids=(4, 4), dtype=torch.float32), r"expert_ids must be int32 or int64, got float32"),
    (dict(ids=(4, 4), rank=9), r"local_rank_id must be in 0\.\.7 \(world_size 8\), got 9"),
    (dict(ids=(4, 4), table=(64, 5, torch.int64)), r"eplb_table must be int32, got int64"),
])
def test_meta_rejects_what_cpu_rejects(case):
    spec, pattern = case
    ids = torch.empty(*spec["ids"], dtype=spec.get("dtype", torch.int32), device="meta")
    rows, cols, table_dtype = spec.get("table", (64, 5, torch.int32))
    table = torch.empty(rows, cols, dtype=table_dtype, device="meta")
    with pytest.raises(ValueError, match=pattern):
        OPS.update_expert(ids, table, spec.get("rank", 3), 8, profile=spec.get("profile",
                                                                                  "native"))
    # The CPU kernel says the same.
    with pytest.raises(ValueError, match=pattern):
        OPS.update_expert(torch.zeros_like(ids, device="cpu"),
                          torch.ones_like(table, device="cpu"), spec.get("rank", 3), 8,
                          profile=spec.get("profile", "native"))


# ---- torch.library.opcheck, TorchScript, torch.compile ---------------------


def _opcheck_samples(rng):
    table = make_table(rng, 24, 4, 8, 4, "random")
    ids = make_ids(rng, 40, 4, 24, torch.int64, "sliced")
    scales = torch.rand(40, 4)
    threshold = torch.full((4,), 0.1)
    prepared = moe_eplb.PreparedTable(table, 2, 4, num_physical_experts=32)
    load = torch.zeros(32, dtype=torch.int64)
    return [
        (OPS.update_expert.default, (ids, table, 2, 4), {"balance_mode": 1}),
        (OPS.update_expert_pruned.default, (ids, table, scales, threshold, None, 2, 4), {}),
        (OPS.update_expert_counted.default, (ids, table, 2, 4),
         {"load_counts": load, "num_physical_experts": 32}),
        (OPS.update_expert_prepared.default, (ids.int(), prepared.routes),
         {"balance_mode": 0, "num_physical_experts": 32}),
        (OPS.update_expert_prepared_counted.default, (ids, prepared.routes),
         {"balance_mode": 0, "num_physical_experts": 32, "expert_scales": scales,
          "pruning_threshold": threshold, "load_counts": load}),
    ]


@pytest.mark.skipif(not hasattr(torch.library, "opcheck"),
                    reason="torch.library.opcheck needs torch >= 2.4 (this is %s)"
                    % torch.__version__)
def test_opcheck_cpu(rng):
    for op, args, kwargs in _opcheck_samples(rng):
        torch.library.opcheck(op, args, kwargs)


def test_torchscript_graph_mode(rng):
    # The seed's "graph mode" on torch 1.13: the op is scriptable.
    def forward(expert_ids: torch.Tensor, eplb_table: torch.Tensor, rank: int, world: int):
        return torch.ops.moe_eplb.update_expert(expert_ids, eplb_table, rank, world,
                                                balance_mode=0)

    scripted = torch.jit.script(forward)
    table = make_table(rng, 16, 4, 4, 3, "random")
    ids = make_ids(rng, 9, 3, 16, torch.int32, "contiguous")
    assert torch.equal(scripted(ids, table, 1, 4), moe_eplb.update_expert(ids, table, 1, 4))


@pytest.mark.skipif(not hasattr(torch, "compile"),
                    reason="torch.compile needs torch >= 2.0 (this is %s)" % torch.__version__)
@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_cpu(rng, dynamic):
    table = make_table(rng, 16, 4, 4, 3, "random")
    prepared = moe_eplb.PreparedTable(table, 1, 4, num_physical_experts=16)

    def step(ids, scales, threshold):
        a = moe_eplb.npu_moe_eplb_update_expert(expert_ids=ids, eplb_table=table,
                                                local_rank_id=1, world_size=4, balance_mode=0)
        b = prepared.map(ids)
        c, mask = moe_eplb.update_expert_pruned(ids, table, 1, 4, expert_scales=scales,
                                                pruning_threshold=threshold, balance_mode=1)
        return a, b, c, mask

    compiled = torch.compile(step, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for num_tokens in (5, 9, 33):
        ids = make_ids(rng, num_tokens, 3, 16, torch.int64, "contiguous")
        args = (ids, torch.rand(num_tokens, 3), torch.full((3,), 0.2))
        for got, expected in zip(compiled(*args), step(*args)):
            assert torch.equal(got, expected)


# ---- the torch_npu shim runs the seed's own calls unchanged ----------------


def test_seed_single_op_example_calls_unchanged():
    # From the seed's "single-operator mode" example, lines kept verbatim
    # except the device (.npu() removed) and the import of the shim.
    import moe_eplb.compat as torch_npu

    world_size = 16
    moeExpertNum = 14
    bs = 8
    k = 8
    tp_world_size = 1
    ep_world_size = int(world_size / tp_world_size)

    def gen_unique_topk_array(low, high, bs, k):
        array = []
        for i in range(bs):
            top_idx = list(np.arange(low, high, dtype=np.int32))
            random.shuffle(top_idx)
            array.append(top_idx[0:k])
        return np.array(array)

    random.seed(0)
    for rank in range(16):
        expert_ids = gen_unique_topk_array(0, moeExpertNum, bs, k).astype(np.int32)
        expert_ids = torch.from_numpy(expert_ids)
        eplb_table = np.array([[1, 0], [1, 1], [1, 2], [1, 3], [1, 4], [1, 5],
                               [1, 6], [1, 7], [1, 8], [1, 9], [1, 10], [1, 11], [1, 12],
                               [1, 13]]).astype(np.int32)
        eplb_table = torch.from_numpy(eplb_table)
        balanced_expert_ids = torch_npu.npu_moe_eplb_update_expert(
            expert_ids=expert_ids,
            eplb_table=eplb_table,
            local_rank_id=rank // tp_world_size,
            world_size=ep_world_size,
            balance_mode=0)
        # One replica per expert at slot e: the mapping is the identity.
        assert torch.equal(balanced_expert_ids, expert_ids)


def test_seed_graph_mode_model_calls_unchanged(rng):
    # The seed's graph-mode model forward, reduced to the update-expert call.
    import moe_eplb.compat as torch_npu

    class MOE_DISTRIBUTE_GRAPH_Model(torch.nn.Module):
        def forward(self, expert_ids, ep_world_size, ep_rank_id, eplb_table, balance_mode):
            balanced_expert_ids = torch_npu.npu_moe_eplb_update_expert(
                expert_ids=expert_ids, eplb_table=eplb_table, local_rank_id=ep_rank_id,
                world_size=ep_world_size, balance_mode=balance_mode)
            return balanced_expert_ids

    model = MOE_DISTRIBUTE_GRAPH_Model()
    if hasattr(torch, "compile"):
        model = torch.compile(model, backend="aot_eager", dynamic=False)
    table = make_table(rng, 14, 16, 2, 3, "random")
    ids = make_ids(rng, 8, 8, 14, torch.int32, "contiguous")
    out = model.forward(ids, 16, 5, table, 0)
    assert torch.equal(out, as_tensor(reference_update_expert(ids, table, 5, 16), torch.int32))


def test_op_plugin_style_pruning_call(rng):
    # torch_npu.npu_moe_update_expert as Ascend's op-plugin test calls it:
    # bs=128, k=8, 256 logical experts, F=5, world_size=8, pruning, rank mode.
    bs, k, world_size = 128, 8, 8
    table = make_table(rng, 256, world_size, 40, 5, "random")
    expert_ids = make_ids(rng, bs, k, 256, torch.int64, "contiguous")
    expert_scales = torch.rand(bs, k).sort(dim=1, descending=True).values
    pruning_threshold = torch.rand(1, k) * 0.2
    active_mask = torch.arange(bs) < 100
    for rank in range(world_size):
        ids, mask = moe_eplb.npu_moe_update_expert(
            expert_ids, table, expert_scales=expert_scales, pruning_threshold=pruning_threshold,
            active_mask=active_mask, local_rank_id=rank, world_size=world_size, balance_mode=0)
        expected = as_tensor(reference_update_expert(expert_ids, table, rank, world_size),
                             torch.int64)
        assert torch.equal(ids, expected)
        assert torch.equal(mask, reference_pruning_mask(expert_scales, pruning_threshold,
                                                        active_mask))
    # Token mode may leave the rank arguments at their -1 defaults.
    ids, mask = moe_eplb.npu_moe_update_expert(expert_ids, table, balance_mode=1)
    assert torch.equal(ids, as_tensor(reference_update_expert(expert_ids, table, -1, -1, 1),
                                      torch.int64))
    assert bool(mask.all())


def test_reference_marks_bad_elements():
    # Guards the reference itself: a bad id is BAD, not silently mapped.
    rows = reference_update_expert(torch.tensor([[0, 5]]), TABLE, 0, 2)
    assert rows == [[0, BAD]]


# Runs in a process whose every fresh CPU allocation glibc fills with the
# byte 0x5A (MALLOC_PERTURB_=0xA5; the mmap threshold raised so that large
# blocks come from the heap too): every output the ops allocate starts as
# POISON, so an element they leave unwritten shows. It first checks that
# fresh tensors do start so, and fails rather than pass without poison.
POISONED_RUN = r"""
import sys
import numpy as np
import torch
import moe_eplb
from reference import POISON, make_ids, make_table

POISON64 = int.from_bytes(b"\x5a" * 8, "little", signed=True)
for dtype, value in ((torch.int32, POISON), (torch.int64, POISON64)):
    fresh = torch.empty(100000, dtype=dtype)
    assert bool((fresh == value).all()), "fresh %s memory is not poisoned" % dtype
assert bool((torch.empty(1000, dtype=torch.bool).view(torch.uint8) == 0x5A).all())

rng = np.random.default_rng(int(sys.argv[1]))
table = make_table(rng, 32, 4, 8, 4, "random")
prepared = moe_eplb.PreparedTable(table, 1, 4)
token = moe_eplb.PreparedTable(table, balance_mode=1)
threshold = torch.full((16,), 0.05)
for dtype in (torch.int32, torch.int64):
    poison = POISON if dtype == torch.int32 else POISON64
    for num_tokens, top_k in [(1, 1), (97, 3), (511, 16), (40000, 8)]:
        ids = make_ids(rng, num_tokens, top_k, 32, dtype, "contiguous")
        scales = torch.rand(num_tokens, top_k)
        outputs = [moe_eplb.update_expert(ids, table, 1, 4), prepared.map(ids), token.map(ids),
                   moe_eplb.update_expert(ids, table, 0, 1, balance_mode=1)]
        pruned = moe_eplb.update_expert_pruned(ids, table, 1, 4, expert_scales=scales,
                                               pruning_threshold=threshold[:top_k])
        outputs.append(pruned[0])
        for out in outputs:
            assert not bool((out == poison).any()), (dtype, num_tokens, top_k)
            assert bool((out >= 0).all()) and bool((out < 32).all())
        mask_bytes = pruned[1].view(torch.uint8)
        assert bool((mask_bytes <= 1).all()), "the pruning mask has unwritten bytes"
print("poisoned outputs fully written")
"""


def test_poisoned_outputs_are_fully_written(rng):
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, MALLOC_PERTURB_="165", MALLOC_MMAP_THRESHOLD_=str(1 << 30),
               PYTHONPATH=os.pathsep.join([here] + sys.path))
    env.pop("MOE_EPLB_MODULES_LOG", None)
    result = subprocess.run([sys.executable, "-c", POISONED_RUN, str(int(rng.integers(1 << 30)))],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "poisoned outputs fully written" in result.stdout


def test_int64_tables_whose_values_fit(rng):
    # The one table rule (moe_eplb.int32_table): vLLM's and SGLang's maps are
    # int64, so every entry point takes an int64 table whose values fit int32.
    table = make_table(rng, 9, 4, 5, 4, "random")
    ids = make_ids(rng, 33, 3, 9, torch.int64, "contiguous")
    for balance_mode in MODES:
        expected = moe_eplb.update_expert(ids, table, 1, 4, balance_mode=balance_mode)
        wide = table.to(torch.int64)
        assert torch.equal(moe_eplb.update_expert(ids, wide, 1, 4, balance_mode=balance_mode),
                           expected)
        prepared = moe_eplb.PreparedTable(wide, 1, 4, balance_mode=balance_mode)
        assert torch.equal(prepared.map(ids), expected)
        prepared.update(wide)
        assert torch.equal(prepared.map(ids), expected)
    bad = table.to(torch.int64)
    bad[2, 1] = 2**31
    with pytest.raises(ValueError, match=r"^update_expert\(\): eplb_table is int64 with value "
                                         r"2147483648, outside int32"):
        moe_eplb.update_expert(ids, bad, 1, 4)
    with pytest.raises(ValueError, match=r"^PreparedTable\(\): eplb_table is int64 with value"):
        moe_eplb.PreparedTable(bad, 1, 4)
    bad[2, 1] = -2**31 - 1
    with pytest.raises(ValueError, match=r"PreparedTable.update\(\): eplb_table is int64 with "
                                         r"value -2147483649"):
        moe_eplb.PreparedTable(table, 1, 4).update(bad)

"""CUDA backend of torch.ops.moe_eplb, for what the adapter decides: tensor
strides and alignment into views (bit-exact against the CPU backend), which
error counter counts, checked mode, the current stream, the prepared table's
swap under CUDA graphs, torch.compile, opcheck and programmatic dependent
launch. The kernels' own sweeps (shapes, modes, pruning dtypes, load
histograms, grid-stride batches) are C++ tests (tests/cpp/cuda_*).

Skipped, with the reason shown by `pytest -rs`, when there is no GPU or the
extension was built without CUDA. MOE_EPLB_TEST_DEVICE=cpu runs the
device-agnostic tests of this file on the CPU instead (a dry run of the test
code itself on machines without a GPU).
"""
import os

import numpy as np
import pytest
import torch

import moe_eplb
from reference import (
    BAD,
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


DEVICE = os.environ.get("MOE_EPLB_TEST_DEVICE", "cuda")


def _skip_reason():
    if DEVICE == "cpu":
        return None
    if not moe_eplb.with_cuda:
        return "moe_eplb was built without CUDA (CPU-only torch or no nvcc at install time)"
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch %s" % torch.__version__
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
cuda_only = pytest.mark.skipif(DEVICE != "cuda", reason="CUDA-only behaviour (dry run on %s)"
                               % DEVICE)

CUDA = DEVICE


def on_cuda(tensor):
    """Same values and the same strides on the GPU (a layout test must not be
    made contiguous by the copy)."""
    if tensor is None:
        return None
    if 0 in tensor.stride():  # broadcast rows: copy one row, expand it again
        return tensor[:1].contiguous().to(CUDA).expand(tensor.shape)
    base = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, device=CUDA)
    base.copy_(tensor)
    return base


def misaligned_copy(tensor):
    """A contiguous CUDA copy whose data starts 4 bytes past a 16-byte
    boundary: the kernel must take its scalar path."""
    flat = torch.empty(tensor.numel() + 4, dtype=tensor.dtype, device=CUDA)
    view = flat[1:1 + tensor.numel()].view(tensor.shape)
    view.copy_(tensor)
    assert view.data_ptr() % 16 != 0
    return view


# ---- bit-exact against the CPU ---------------------------------------------

@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("balance_mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS + ["misaligned"])
def test_matches_cpu_bit_exact(rng, dtype, balance_mode, layout):
    # Strides and alignment survive the adapter: vectorised, strided and
    # misaligned views, stateless and prepared.
    world_size, slots = 8, 16
    table = make_table(rng, 64, world_size, slots, 4, "random")
    for num_tokens, top_k in [(17, 3), (512, 16)]:
        ids = make_ids(rng, num_tokens, top_k, 64, dtype,
                       "contiguous" if layout == "misaligned" else layout)
        rank = int(rng.integers(world_size))
        expected = OPS.update_expert(ids, table, rank, world_size, balance_mode=balance_mode)
        gpu_ids = misaligned_copy(ids) if layout == "misaligned" else on_cuda(ids)
        context = "BS=%d K=%d rank=%d" % (num_tokens, top_k, rank)
        out = OPS.update_expert(gpu_ids, table.to(CUDA), rank, world_size,
                                balance_mode=balance_mode)
        assert_same(out, expected, "stateless " + context)
        prepared = moe_eplb.PreparedTable(table.to(CUDA), rank, world_size,
                                          balance_mode=balance_mode,
                                          num_physical_experts=world_size * slots)
        assert_same(prepared.map(gpu_ids), expected, "prepared " + context)


def test_pruning_inputs_and_load_counts_bit_exact(rng):
    # Strided bfloat16 scales, the mask and red-zoned load counters through the
    # stateless and prepared ops.
    num_tokens, top_k, world_size, num_physical = 512, 16, 8, 512
    table = make_table(rng, 300, world_size, num_physical // world_size, 5, "random")
    ids = make_ids(rng, num_tokens, top_k, 300, torch.int64, "sliced")
    scales = torch.from_numpy(rng.random((num_tokens, top_k))).to(torch.bfloat16)
    scales = scales.sort(dim=1, descending=True).values.t().contiguous().t()  # strided
    threshold = torch.from_numpy(rng.random(top_k) * 0.3).float()
    active = torch.arange(num_tokens) < 400
    cpu_load = torch.zeros(num_physical, dtype=torch.int64)
    expected_ids, expected_mask = moe_eplb.update_expert_pruned(
        ids, table, 3, world_size, expert_scales=scales, pruning_threshold=threshold,
        active_mask=active, num_physical_experts=num_physical, load_counts=cpu_load)
    load_buffer = torch.full((num_physical + 64,), -7, dtype=torch.int64, device=CUDA)
    load = load_buffer[32:32 + num_physical]
    load.zero_()
    gpu = [on_cuda(t) for t in (ids, scales, threshold, active)]
    out, mask = moe_eplb.update_expert_pruned(
        gpu[0], table.to(CUDA), 3, world_size, expert_scales=gpu[1], pruning_threshold=gpu[2],
        active_mask=gpu[3], num_physical_experts=num_physical, load_counts=load)
    assert_same(out, expected_ids, "ids")
    assert_same(mask, expected_mask, "mask")
    assert_same(load, cpu_load, "load")
    assert bool((load_buffer[:32] == -7).all()) and bool((load_buffer[-32:] == -7).all())
    prepared = moe_eplb.PreparedTable(table, 3, world_size, num_physical_experts=num_physical,
                                      device=CUDA)
    load.zero_()
    out, mask = prepared.map_pruned(gpu[0], gpu[1], gpu[2], gpu[3], load_counts=load)
    assert_same(out, expected_ids, "prepared ids")
    assert_same(mask, expected_mask, "prepared mask")
    assert_same(load, cpu_load, "prepared load")


# ---- bad elements: -1, counted, never out of bounds -------------------------


def _bad_inputs(rng, dtype):
    table = make_table(rng, 40, 4, 16, 4, "random")
    table[3, 0] = 0                 # count below 1
    table[4, 0] = 9                 # count above F - 1
    table[5, 0], table[5, 1] = 1, 64  # slot == num_physical_experts
    table[6, 0], table[6, 1] = 1, -3  # negative slot
    ids = make_ids(rng, 300, 6, 40, dtype, "contiguous")
    flat = ids.view(-1)
    positions = rng.choice(flat.numel(), size=200, replace=False)
    bad_values = [-1, 40, 41, 3, 4, 5, 6, -(2**31)] + ([2**40, -(2**40)] if dtype == torch.int64
                                                      else [2**31 - 1])
    for i, position in enumerate(positions):
        flat[int(position)] = bad_values[i % len(bad_values)]
    return table, ids


@cuda_only
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("balance_mode", MODES)
def test_bad_elements_are_minus_one_and_counted(rng, dtype, balance_mode):
    table, ids = _bad_inputs(rng, dtype)
    rows = reference_update_expert(ids, table, 1, 4, balance_mode, num_physical_experts=64)
    expected = as_tensor(rows, dtype)
    num_bad = sum(v is BAD for row in rows for v in row)
    assert num_bad > 0
    counter_buffer = torch.full((3,), 77, dtype=torch.int32, device=CUDA)
    counter = counter_buffer[1:2]
    counter.zero_()
    load = torch.zeros(64, dtype=torch.int64, device=CUDA)
    out = moe_eplb.update_expert(ids.to(CUDA), table.to(CUDA), 1, 4, balance_mode=balance_mode,
                                 num_physical_experts=64, load_counts=load, error_counter=counter)
    assert_same(out, expected, "stateless")
    assert counter.item() == num_bad
    assert counter_buffer[0].item() == 77 and counter_buffer[2].item() == 77
    assert_same(load, reference_load(rows, None, 64), "load skips bad elements")

    # Without error_counter the library's own counter counts.
    moe_eplb.read_error_counter(reset=True)
    moe_eplb.update_expert(ids.to(CUDA), table.to(CUDA), 1, 4, balance_mode=balance_mode,
                           num_physical_experts=64)
    assert moe_eplb.read_error_counter(reset=True) == num_bad

    # Checked mode synchronises and raises the CPU's precise message.
    with pytest.raises(IndexError, match=r"update_expert\(\): expert_ids\[\d+, \d+\] = "):
        moe_eplb.update_expert(ids.to(CUDA), table.to(CUDA), 1, 4, balance_mode=balance_mode,
                               num_physical_experts=64, checked=True)


@cuda_only
def test_corrupted_prepared_routes_are_contained(rng):
    # Routes are device memory a caller can overwrite: bad entries still give
    # -1 plus a count, never an out-of-bounds read or load-counter write.
    for balance_mode in MODES:
        table = make_table(rng, 32, 4, 8, 4, "random")
        prepared = moe_eplb.PreparedTable(table, 2, 4, balance_mode=balance_mode,
                                          num_physical_experts=32, device=CUDA)
        routes = prepared.routes.view(-1)
        garbage = torch.tensor([-5, 32, 10**6, -(2**31)], dtype=torch.int32, device=CUDA)
        where = torch.arange(0, routes.numel(), 3, device=CUDA)
        routes[where] = garbage.repeat(where.numel() // 4 + 1)[:where.numel()]
        ids = make_ids(rng, 1000, 8, 32, torch.int32, "contiguous").to(CUDA)
        counter = torch.zeros(1, dtype=torch.int32, device=CUDA)
        load = torch.zeros(32, dtype=torch.int64, device=CUDA)
        out = prepared.map(ids, load_counts=load, error_counter=counter)
        valid = out >= 0
        assert bool(((out == -1) | (valid & (out < 32))).all())
        assert counter.item() == int((~valid).sum())
        assert int(load.sum()) == int(valid.sum())
        with pytest.raises(IndexError, match=r"update_expert_prepared\(\)"):
            prepared.map(ids, checked=True)


def test_poisoned_outputs_are_fully_written(rng):
    # Poison a block of the output's size and free it: the caching allocator
    # hands the same block to the next allocation of that size on this stream
    # (asserted: the test fails rather than pass without poison).
    table = make_table(rng, 64, 8, 16, 4, "random").to(CUDA)
    prepared = moe_eplb.PreparedTable(table, 3, 8, num_physical_experts=128)
    for dtype in (torch.int32, torch.int64):
        for num_tokens, top_k in [(1, 1), (17, 3), (512, 16), (65537, 8)]:
            ids = make_ids(rng, num_tokens, top_k, 64, dtype, "contiguous").to(CUDA)
            expected = OPS.update_expert(ids.cpu(), table.cpu(), 3, 8)
            for run in (lambda: OPS.update_expert(ids, table, 3, 8), lambda: prepared.map(ids),
                        lambda: OPS.update_expert(ids, table, 3, 8, balance_mode=1)):
                poison = torch.full((num_tokens, top_k), POISON, dtype=dtype, device=CUDA)
                block = poison.data_ptr()
                del poison
                out = run()
                # The test needs the output in the poisoned block: checked, not hoped.
                assert out.data_ptr() == block, "the caching allocator gave another block"
                assert not bool((out == POISON).any())
                assert bool((out >= 0).all())
            assert_same(prepared.map(ids), expected, "poisoned")


# ---- streams, CUDA graphs, torch.compile ------------------------------------


@cuda_only
def test_runs_on_the_current_stream(rng):
    # The op must queue on the current stream behind the (slow) copy of its
    # input; run anywhere else, it would read the stale zeros.
    table = make_table(rng, 64, 8, 16, 4, "random")
    ids = make_ids(rng, 4096, 8, 64, torch.int32, "contiguous")
    expected = OPS.update_expert(ids, table.clone(), 5, 8)
    table_gpu = table.to(CUDA)
    ids_gpu = torch.zeros_like(ids, device=CUDA)
    fresh = ids.pin_memory()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50000000)
        ids_gpu.copy_(fresh, non_blocking=True)
        out = OPS.update_expert(ids_gpu, table_gpu, 5, 8)
    side.synchronize()
    assert_same(out, expected, "side stream")


def _warm_up_then_capture(run):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = run()
    return graph, outputs


@cuda_only
@pytest.mark.parametrize("balance_mode", MODES)
def test_cuda_graph_replay_sees_table_swap(rng, balance_mode):
    world_size, slots = 8, 16
    old = make_table(rng, 96, world_size, slots, 5, "random")
    new = make_table(rng, 96, world_size, slots, 5, "max")
    ids = make_ids(rng, 512, 16, 96, torch.int64, "contiguous")
    static_ids = ids.to(CUDA)
    static_table = old.to(CUDA)
    prepared = moe_eplb.PreparedTable(old, 6, world_size, balance_mode=balance_mode,
                                      num_physical_experts=world_size * slots, device=CUDA)
    load = torch.zeros(world_size * slots, dtype=torch.int64, device=CUDA)

    def run():
        return (
            OPS.update_expert(static_ids, static_table, 6, world_size, balance_mode=balance_mode),
            prepared.map(static_ids),
            moe_eplb.update_expert(static_ids, static_table, 6, world_size,
                                   balance_mode=balance_mode,
                                   num_physical_experts=world_size * slots, load_counts=load),
        )

    graph, outputs = _warm_up_then_capture(run)
    for table in (old, new, old):
        static_table.copy_(table)   # stateless: swap the table tensor's contents
        prepared.update(table)      # prepared: in-place, stream-ordered
        load.zero_()
        graph.replay()
        torch.cuda.synchronize()
        rows = reference_update_expert(ids, table, 6, world_size, balance_mode)
        expected = as_tensor(rows, torch.int64)
        for out, name in zip(outputs, ("stateless", "prepared", "counted")):
            assert_same(out, expected, "graph replay " + name)
        assert_same(load, reference_load(rows, None, world_size * slots), "graph load")
    # New inputs are picked up too (the graph reads static_ids by address).
    other = make_ids(rng, 512, 16, 96, torch.int64, "contiguous")
    static_ids.copy_(other)
    graph.replay()
    torch.cuda.synchronize()
    assert_same(outputs[1], as_tensor(reference_update_expert(other, old, 6, world_size,
                                                              balance_mode), torch.int64),
                "graph replay with new ids")


@cuda_only
def test_cuda_graph_counts_errors_on_every_replay(rng):
    table = make_table(rng, 16, 4, 4, 3, "random").to(CUDA)
    ids = torch.tensor([[0, 99], [1, 2]], device=CUDA)
    moe_eplb.read_error_counter(reset=True)
    graph, (out,) = _warm_up_then_capture(lambda: (OPS.update_expert(ids, table, 0, 4),))
    moe_eplb.read_error_counter(reset=True)
    for _ in range(3):
        graph.replay()
    assert moe_eplb.read_error_counter(reset=True) == 3
    assert out[0, 1].item() == -1


def _compile_step(table, prepared, load):
    def step(ids, scales, threshold):
        a = moe_eplb.npu_moe_eplb_update_expert(expert_ids=ids, eplb_table=table,
                                                local_rank_id=3, world_size=8, balance_mode=0)
        b = prepared.map(ids)
        c, mask = moe_eplb.update_expert_pruned(ids, table, 3, 8, expert_scales=scales,
                                                pruning_threshold=threshold, balance_mode=1)
        d = moe_eplb.update_expert(ids, table, 3, 8, num_physical_experts=128, load_counts=load)
        return a, b, c, mask, d

    return step


@cuda_only
@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile needs torch >= 2.0")
@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(rng, dynamic):
    table = make_table(rng, 64, 8, 16, 4, "random").to(CUDA)
    prepared = moe_eplb.PreparedTable(table, 3, 8, num_physical_experts=128)
    eager_load = torch.zeros(128, dtype=torch.int64, device=CUDA)
    compiled_load = torch.zeros(128, dtype=torch.int64, device=CUDA)
    eager = _compile_step(table, prepared, eager_load)
    compiled = torch.compile(_compile_step(table, prepared, compiled_load), fullgraph=True,
                             dynamic=dynamic)
    for num_tokens in (8, 64, 512):
        ids = make_ids(rng, num_tokens, 8, 64, torch.int32, "contiguous").to(CUDA)
        args = (ids, torch.rand(num_tokens, 8, device=CUDA), torch.full((8,), 0.1, device=CUDA))
        for got, expected in zip(compiled(*args), eager(*args)):
            assert_same(got, expected.cpu(), "compiled")
        assert_same(compiled_load, eager_load.cpu(), "compiled load recording")


@cuda_only
@pytest.mark.skipif(not hasattr(torch.library, "opcheck"),
                    reason="torch.library.opcheck needs torch >= 2.4")
def test_opcheck_cuda(rng):
    table = make_table(rng, 24, 4, 8, 4, "random").to(CUDA)
    ids = make_ids(rng, 40, 4, 24, torch.int64, "sliced").to(CUDA)
    scales = torch.rand(40, 4, device=CUDA)
    threshold = torch.full((4,), 0.1, device=CUDA)
    prepared = moe_eplb.PreparedTable(table, 2, 4, num_physical_experts=32)
    load = torch.zeros(32, dtype=torch.int64, device=CUDA)
    errors = torch.zeros(1, dtype=torch.int32, device=CUDA)
    samples = [
        (OPS.update_expert.default, (ids, table, 2, 4), {"balance_mode": 1}),
        (OPS.update_expert_pruned.default, (ids, table, scales, threshold, None, 2, 4), {}),
        (OPS.update_expert_counted.default, (ids, table, 2, 4),
         {"load_counts": load, "error_counter": errors, "num_physical_experts": 32}),
        (OPS.update_expert_prepared.default, (ids.int(), prepared.routes),
         {"balance_mode": 0, "num_physical_experts": 32}),
        (OPS.update_expert_prepared_counted.default, (ids, prepared.routes),
         {"balance_mode": 0, "num_physical_experts": 32, "expert_scales": scales,
          "pruning_threshold": threshold, "load_counts": load}),
    ]
    for op, args, kwargs in samples:
        torch.library.opcheck(op, args, kwargs)


@cuda_only
def test_error_counter_is_stable_device_memory():
    first = moe_eplb.error_counter()
    second = moe_eplb.error_counter(CUDA)
    assert first.data_ptr() == second.data_ptr() and first.device.type == "cuda"
    assert first.dtype == torch.int32 and first.numel() == 1


def test_reference_sanity_on_gpu_shapes(rng):
    # Guards the comparison itself: a deliberately wrong rank must mismatch.
    table = make_table(rng, 64, 8, 16, 4, "max")
    ids = make_ids(rng, 512, 16, 64, torch.int32, "contiguous")
    right = OPS.update_expert(ids.to(CUDA), table.to(CUDA), 0, 8)
    wrong = as_tensor(reference_update_expert(ids, table, 7, 8), torch.int32)
    assert not torch.equal(right.cpu(), wrong)


def test_pruning_reference_matches_gpu_float16_rounding(rng):
    # float16 scales are widened exactly; the sum is float32 in k order.
    scales = torch.tensor([[0.3333, 0.3333, 0.3333]], dtype=torch.float16)
    threshold = torch.tensor([0.3333, 0.3333, 0.3333])
    table = torch.tensor([[1, 0], [1, 1], [1, 2]], dtype=torch.int32)
    ids = torch.tensor([[0, 1, 2]])
    _, mask = moe_eplb.update_expert_pruned(ids.to(CUDA), table.to(CUDA), 0, 2,
                                            expert_scales=scales.to(CUDA),
                                            pruning_threshold=threshold.to(CUDA))
    assert_same(mask, reference_pruning_mask(scales, threshold), "float16 rounding")
    np.testing.assert_equal(mask.cpu().numpy(), reference_pruning_mask(scales, threshold).numpy())


@cuda_only
def test_prepared_update_refuses_a_capturing_stream(rng):
    # The C++ table owns the swap, and its stream-capture check.
    table = make_table(rng, 16, 4, 4, 3, "random")
    prepared = moe_eplb.PreparedTable(table, 1, 4, device=CUDA)
    ids = make_ids(rng, 8, 2, 16, torch.int32, "contiguous").to(CUDA)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        prepared.map(ids)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match=r"the stream is capturing a CUDA graph"):
        with torch.cuda.graph(graph):
            prepared.update(table)
    torch.cuda.synchronize()


@cuda_only
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("per_call", [False, True])
def test_programmatic_dependent_launch_chain(rng, dtype, graph, per_call):
    # Each call maps the previous call's output. With programmatic dependent
    # launch, each kernel lets the next one start early, so the next one must
    # wait for it before reading: a missing wait reads the poison or a half
    # written batch. A one-replica table is a permutation of the slots, so
    # every output is again a valid expert id.
    num_experts, world_size, calls = 64, 4, 24
    permutation = torch.from_numpy(rng.permutation(num_experts)).to(torch.int32)
    table = torch.full((num_experts, 3), -1, dtype=torch.int32)
    table[:, 0] = 1
    table[:, 1] = permutation
    ids = make_ids(rng, 4096, 8, num_experts, dtype, "contiguous")
    expected = ids.clone()
    for _ in range(calls):
        expected = permutation.to(dtype)[expected.long()]
    table_gpu, prepared = table.to(CUDA), moe_eplb.PreparedTable(table, 1, world_size, device=CUDA)
    static_ids = ids.to(CUDA)
    # Either the process default is on, or each call asks for it.
    was = moe_eplb.programmatic_dependent_launch()
    enable_pdl = True if per_call else None
    try:
        moe_eplb.programmatic_dependent_launch(not per_call)

        def run():
            out = static_ids
            for call in range(calls):
                out = (moe_eplb.update_expert(out, table_gpu, 1, world_size,
                                              enable_pdl=enable_pdl) if call % 2 == 0
                       else prepared.map(out, enable_pdl=enable_pdl))
            return (out,)

        if graph:
            captured, (out,) = _warm_up_then_capture(run)
            out.fill_(POISON)
            captured.replay()
        else:
            (out,) = run()
        torch.cuda.synchronize()
    finally:
        moe_eplb.programmatic_dependent_launch(was)
    assert_same(out.cpu(), expected, "programmatic dependent launch chain")

"""Scalar reference of SPEC.md and named input distributions for the tests.

Written for clarity, element by element, independent of the library: it
shares no code with moe_eplb, so a bug in the library cannot hide here.
"""
import math

import numpy as np
import pytest
import torch

BAD = None  # reference marker for an element the operator must reject
POISON = 0x5A5A5A5A  # fills output buffers before a run, so unwritten elements show


MODES = (0, 1, 2)  # every balance_mode: by rank, by token, vLLM's token hash


def vllm_replica_index(token, count):
    """vLLM's replica choice (eplb_map_to_physical_and_record): the 0-based
    index into the expert's replicas, ((token * 2654435769) & 0xFFFFFFFF) % count."""
    return ((token * 2654435769) & 0xFFFFFFFF) % count


def replica_column(count, token, local_rank_id, world_size, balance_mode):
    """1-based column of the replica a choice uses (SPEC.md, "Formula")."""
    if count == 1:
        return 1
    if balance_mode == 0:
        ranks_per_replica = -(-world_size // count)  # ceil(world_size / count)
        return 1 + local_rank_id // ranks_per_replica
    if balance_mode == 2:
        return 1 + vllm_replica_index(token, count)
    return 1 + token % count


def reference_update_expert(
    expert_ids, eplb_table, local_rank_id, world_size, balance_mode=0, num_physical_experts=None
):
    """Returns a list of rows; an element the operator must reject is BAD.
    Selected ids must be below num_physical_experts, or below 2^31 - 1 (the
    native profile's cap) when it is None."""
    table = eplb_table.tolist()
    num_experts = len(table)
    num_columns = len(table[0]) if table else 0
    out = []
    for token, row in enumerate(expert_ids.tolist()):
        out_row = []
        for expert in row:
            if not 0 <= expert < num_experts:
                out_row.append(BAD)
                continue
            count = table[expert][0]
            if not 1 <= count <= num_columns - 1:
                out_row.append(BAD)
                continue
            slot = table[expert][
                replica_column(count, token, local_rank_id, world_size, balance_mode)
            ]
            limit = 2**31 - 1 if num_physical_experts is None else num_physical_experts
            out_row.append(slot if 0 <= slot < limit else BAD)
        out.append(out_row)
    return out


def as_tensor(rows, dtype, bad_value=-1):
    """Reference rows as a tensor, BAD elements replaced by bad_value."""
    return torch.tensor(
        [[bad_value if v is BAD else v for v in row] for row in rows], dtype=dtype
    ).reshape(len(rows), -1)


def reference_pruning_mask(expert_scales, pruning_threshold, active_mask=None):
    """(BS, K) bool: float32 sum in k order, float32 compare (SPEC.md); a
    choice is kept unless it is smaller, so a NaN scale or threshold keeps it."""
    scales = expert_scales.float().numpy()
    threshold = pruning_threshold.reshape(-1).numpy().astype(np.float32)
    mask = np.zeros(scales.shape, dtype=bool)
    for token in range(scales.shape[0]):
        if active_mask is not None and not bool(active_mask[token]):
            continue
        total = np.float32(0.0)
        for k in range(scales.shape[1]):
            total = np.float32(total + np.float32(scales[token, k]))
        for k in range(scales.shape[1]):
            mask[token, k] = not (np.float32(scales[token, k]) < np.float32(threshold[k] * total))
    return torch.from_numpy(mask)


def reference_load(rows, mask, num_physical_experts):
    """Histogram of kept, valid physical ids."""
    counts = [0] * num_physical_experts
    for token, row in enumerate(rows):
        for k, slot in enumerate(row):
            if slot is not BAD and (mask is None or bool(mask[token, k])):
                counts[slot] += 1
    return torch.tensor(counts, dtype=torch.int64)


# ---- named table distributions ---------------------------------------------


def make_table(rng, num_experts, world_size, slots_per_rank, num_columns, distribution):
    """A valid (E, F) int32 EPLB table; unused columns hold -1.

    distributions:
      "single"     every expert has one replica (the seed's own example)
      "random"     1..F-1 replicas, random distinct slots
      "max"        as many replicas as columns allow, slots permitting
      "uneven"     counts that do not divide world_size (3, 5, 7 ...), so rank
                   groups are unequal (SPEC.md: world_size=16, c=3)
    """
    num_slots = world_size * slots_per_rank
    assert num_slots >= num_experts, "every expert needs a slot"
    slots = rng.permutation(num_slots).tolist()
    spare = num_slots - num_experts
    table = np.full((num_experts, num_columns), -1, dtype=np.int32)
    for expert in range(num_experts):
        max_count = min(num_columns - 1, 1 + spare)
        if distribution == "single":
            count = 1
        elif distribution == "max":
            count = max_count
        elif distribution == "uneven":
            odd = [c for c in (3, 5, 7, 9) if c <= max_count and world_size % c != 0]
            count = odd[int(rng.integers(len(odd)))] if odd else 1
        else:
            count = int(rng.integers(1, max_count + 1))
        spare -= count - 1
        table[expert, 0] = count
        for column in range(1, count + 1):
            table[expert, column] = slots.pop()
    return torch.from_numpy(table)


def make_ids(rng, num_tokens, top_k, num_experts, dtype, layout):
    """(BS, K) ids in [0, E) in a given memory layout.

    layouts:
      "contiguous"  row-major
      "transposed"  a (K, BS) tensor viewed as (BS, K): k_stride = BS
      "sliced"      every other column of a (BS, 2K) tensor
      "offset"      rows 1.. of a (BS+1, K) tensor: misaligned for 16-byte loads
      "broadcast"   one row expanded to BS rows: token_stride = 0
    """
    def draw(*shape):
        return torch.from_numpy(rng.integers(0, num_experts, size=shape)).to(dtype)

    if layout == "contiguous":
        return draw(num_tokens, top_k)
    if layout == "transposed":
        return draw(top_k, num_tokens).t()
    if layout == "sliced":
        return draw(num_tokens, 2 * top_k)[:, ::2]
    if layout == "offset":
        return draw(num_tokens + 1, top_k)[1:]
    if layout == "broadcast":
        return draw(1, top_k).expand(num_tokens, top_k)
    raise ValueError(layout)


LAYOUTS = ["contiguous", "transposed", "sliced", "offset", "broadcast"]
DISTRIBUTIONS = ["single", "random", "max", "uneven"]


def ceil_div(a, b):
    return math.ceil(a / b)


def assert_same(actual, expected, context):
    """Same dtype, shape and values (actual may be on any device); on a
    mismatch, fails naming the first differing positions and values."""
    actual = actual.cpu()
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, context
    if not torch.equal(actual, expected):
        where = (actual != expected).nonzero()[:5].tolist()
        pytest.fail("%s: mismatches at %s: got %s, expected %s" % (
            context, where, [actual[tuple(i)].item() for i in where],
            [expected[tuple(i)].item() for i in where]))

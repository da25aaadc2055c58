"""moe-eplb for TensorRT-LLM's MoE load balancer (NVIDIA/TensorRT-LLM).

TensorRT-LLM has no Python planner hook online; offline it takes a
MoeLoadBalancerConfig (tensorrt_llm/llmapi/llm_args.py): num_slots,
initial_global_assignments {layer: [expert of each global slot]} and
layer_updates_per_iter, as a YAML file given to moe_config.load_balancer
(examples/wide_ep/ep_load_balancer/README.md at 2a595f8). Its kernels pick a
replica round-robin within blocks of 1024 choices
(cpp/tensorrt_llm/kernels/moeLoadBalance/moeLoadBalanceKernels.cu at
004d78b, moeComputeRouteKernel): an even split, rule "trtllm".

    import moe_eplb.engines.trtllm as eplb_trtllm
    stats = eplb_trtllm.read_expert_statistic("./expert_statistic")   # EXPERT_STATISTIC_PATH
    config = eplb_trtllm.plan_config(stats, ep_size=36, num_slots=288)
    eplb_trtllm.write_config_yaml("moe_load_balancer.yaml", config)

The statistic dumps (EXPERT_STATISTIC_PATH) are meta_info.json plus one
rank<r>.safetensors per rank, whose tensor "<iter>_<layer>" counts the expert
ids that rank routed in that iteration (examples/wide_ep/ep_load_balancer/
utils.py at 7ce477f). read_expert_statistic() keeps them per rank.
"""
import glob
import json
import os
import re
import struct

import torch

from . import _common

__all__ = ["ExpertStatistic", "config_from_table", "plan_config", "read_expert_statistic",
           "write_config_yaml", "write_expert_statistic"]

# safetensors' dtype names.
_SAFETENSORS_DTYPES = {"I8": torch.int8, "U8": torch.uint8, "I16": torch.int16,
                       "I32": torch.int32, "I64": torch.int64, "F16": torch.float16,
                       "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                       "BOOL": torch.bool}


class ExpertStatistic:
    """TensorRT-LLM's expert statistics: counts (iterations, layers, ranks,
    experts) float64, the layer ids (model layer indices), the first iteration,
    and meta_info.json as a dict (num_experts, num_experts_per_token, ...)."""

    def __init__(self, counts, layers, iter_start, meta_info):
        self.counts = counts
        self.layers = list(layers)
        self.iter_start = iter_start
        self.meta_info = meta_info

    def __repr__(self):
        return ("ExpertStatistic(counts=%s, layers=%s, iterations %d..%d)"
                % (tuple(self.counts.shape), self.layers, self.iter_start,
                   self.iter_start + self.counts.shape[0] - 1))


def _read_safetensors(path):
    """Every tensor of a .safetensors file (little-endian header length, a JSON
    header naming each tensor's dtype, shape and byte range, then the bytes)."""
    with open(path, "rb") as stream:
        data = stream.read()
    if len(data) < 8:
        raise ValueError("read_expert_statistic(): %s is not a safetensors file (%d bytes)"
                         % (path, len(data)))
    (header_size,) = struct.unpack("<Q", data[:8])
    if 8 + header_size > len(data):
        raise ValueError("read_expert_statistic(): %s has a header of %d bytes but %d in all"
                         % (path, header_size, len(data)))
    header = json.loads(data[8:8 + header_size])
    body = memoryview(data)[8 + header_size:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        begin, end = info.get("data_offsets", (0, -1))
        if dtype is None or not 0 <= begin <= end <= len(body):
            raise ValueError("read_expert_statistic(): %s: tensor %r has dtype %r and bytes "
                             "%r..%r of %d" % (path, name, info.get("dtype"), begin, end,
                                               len(body)))
        flat = torch.frombuffer(bytearray(body[begin:end]), dtype=dtype) if end > begin \
            else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(info["shape"])
    return tensors


def _write_safetensors(path, tensors):
    """A .safetensors file of int32 tensors (the layout _read_safetensors reads)."""
    header, body = {}, b""
    for name, tensor in tensors.items():
        data = tensor.to(torch.int32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "I32", "shape": list(tensor.shape),
                        "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    text = json.dumps(header).encode()
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", len(text)) + text + body)


def write_expert_statistic(path, statistic):
    """Writes an ExpertStatistic as TensorRT-LLM dumps it (meta_info.json and
    rank<r>.safetensors of int32 counts): read_expert_statistic()'s inverse,
    for tests and offline tools."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "meta_info.json"), "w", encoding="utf-8") as stream:
        json.dump(statistic.meta_info, stream)
    counts = statistic.counts
    for rank in range(counts.shape[2]):
        _write_safetensors(os.path.join(path, "rank%d.safetensors" % rank), {
            "%d_%d" % (statistic.iter_start + i, layer): counts[i, j, rank]
            for i in range(counts.shape[0]) for j, layer in enumerate(statistic.layers)})


def read_expert_statistic(path):
    """Reads TensorRT-LLM's EXPERT_STATISTIC_PATH folder into an ExpertStatistic
    whose counts are per source rank: (iterations, layers, ranks, experts).
    Raises ValueError naming the file for a missing or malformed part."""
    operation = "read_expert_statistic()"
    meta_path = os.path.join(path, "meta_info.json")
    if not os.path.exists(meta_path):
        raise ValueError("%s: %s has no meta_info.json" % (operation, path))
    with open(meta_path, encoding="utf-8") as stream:
        meta_info = json.load(stream)
    rank_files = {}
    for file in glob.glob(os.path.join(path, "rank*.safetensors")):
        match = re.fullmatch(r"rank(\d+)\.safetensors", os.path.basename(file))
        if match:  # rank<r>_raw.safetensors hold raw ids, not counts
            rank_files[int(match.group(1))] = file
    if not rank_files or sorted(rank_files) != list(range(len(rank_files))):
        raise ValueError("%s: %s needs rank0.safetensors .. rank<R-1>.safetensors, found ranks %s"
                         % (operation, path, sorted(rank_files)))
    per_rank = [_read_safetensors(rank_files[rank]) for rank in range(len(rank_files))]
    keys = set(per_rank[0])
    for rank, tensors in enumerate(per_rank):
        if set(tensors) != keys:
            raise ValueError("%s: rank%d.safetensors has other iterations or layers than "
                             "rank0.safetensors" % (operation, rank))
    pairs = sorted(tuple(int(part) for part in key.split("_")) for key in keys)
    iterations = sorted({iteration for iteration, _ in pairs})
    layers = sorted({layer for _, layer in pairs})
    if len(pairs) != len(iterations) * len(layers) or \
            iterations != list(range(iterations[0], iterations[-1] + 1)):
        raise ValueError("%s: %s does not hold every (iteration, layer) of iterations %d..%d"
                         % (operation, path, iterations[0], iterations[-1]))
    num_experts = int(meta_info.get("num_experts", per_rank[0]["%d_%d" % pairs[0]].numel()))
    counts = torch.zeros(len(iterations), len(layers), len(per_rank), num_experts,
                         dtype=torch.float64)
    for rank, tensors in enumerate(per_rank):
        for i, iteration in enumerate(iterations):
            for j, layer in enumerate(layers):
                counts[i, j, rank] = tensors["%d_%d" % (iteration, layer)].reshape(-1).double()
    return ExpertStatistic(counts, layers, iterations[0], meta_info)


def config_from_table(table, num_slots, *, layers=None, layer_updates_per_iter=0):
    """MoeLoadBalancerConfig's fields as a dict from a table (L, E, F):
    {"num_slots": P, "initial_global_assignments": {layer: [expert of each
    slot]}, "layer_updates_per_iter": n}. `layers` are the model's layer
    indices of the table's L layers (default 0..L-1). TensorRT-LLM keeps no
    replica order (its kernel round-robins over the slots it finds), so
    each expert's slots are listed in ascending order."""
    phy2log = _common.phy2log_from_table(table, num_slots, sort_replicas=True)
    if phy2log.dim() == 1:
        phy2log = phy2log.unsqueeze(0)
    layers = list(range(phy2log.shape[0])) if layers is None else [int(x) for x in layers]
    if len(layers) != phy2log.shape[0]:
        raise ValueError("config_from_table(): %d layer ids for %d layers"
                         % (len(layers), phy2log.shape[0]))
    return {"num_slots": int(num_slots),
            "initial_global_assignments": {layer: row for layer, row in
                                           zip(layers, phy2log.tolist())},
            "layer_updates_per_iter": int(layer_updates_per_iter)}


def plan_config(statistic, ep_size, num_slots, *, ranks_per_node=0, iterations=None,
                layer_updates_per_iter=0, **options):
    """Plans a MoeLoadBalancerConfig dict for TensorRT-LLM's rule from an
    ExpertStatistic (or (iterations, layers, ranks, experts) counts, with
    layer ids 0..L-1): the counts of `iterations` (an index or slice; all by
    default) summed into one window, per source rank when the dumps' ranks
    equal ep_size, else their global sums. `options`: moe_eplb.plan() keywords."""
    if isinstance(statistic, ExpertStatistic):
        counts, layers = statistic.counts, statistic.layers
    else:
        counts = _common.host_load("plan_config()", "statistic", statistic, (4,))
        layers = list(range(counts.shape[1]))
    if iterations is not None:
        counts = counts[iterations]
    load = counts.sum(dim=0)  # (layers, ranks, experts)
    if load.shape[1] != ep_size:
        load = load.sum(dim=1)
    if num_slots % ep_size != 0:
        raise ValueError("plan_config(): num_slots %d must be a multiple of ep_size %d"
                         % (num_slots, ep_size))
    table = _common.plan_layers(load, ep_size, num_slots // ep_size, rule="trtllm",
                                ranks_per_node=ranks_per_node, **options)
    return config_from_table(table, num_slots, layers=layers,
                             layer_updates_per_iter=layer_updates_per_iter)


def write_config_yaml(path, config):
    """Writes a MoeLoadBalancerConfig dict as the YAML file moe_config.load_balancer
    names: the three keys, each layer's list on one line."""
    lines = ["num_slots: %d" % config["num_slots"]]
    assignments = config.get("initial_global_assignments")
    if assignments:
        lines.append("initial_global_assignments:")
        for layer, row in assignments.items():
            lines.append("  %d: [%s]" % (int(layer), ", ".join(str(int(x)) for x in row)))
    lines.append("layer_updates_per_iter: %d" % config.get("layer_updates_per_iter", 0))
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines) + "\n")

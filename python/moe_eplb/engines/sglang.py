"""moe-eplb in SGLang (python/sglang/srt/eplb/; facts from sgl-project/sglang
as mirrored by codeflash-ai/sglang at bce40fa).

The one line, before the server starts:

    import moe_eplb.engines.sglang as eplb_sglang
    eplb_sglang.install()    # sglang.srt.eplb.eplb_algorithms.rebalance_experts is moe-eplb's

SGLang's planner, eplb_algorithms.rebalance_experts(tokens_per_expert,
num_physical_experts, num_local_physical_experts, num_groups, num_nodes,
algorithm), is DeepSeek's EPLB ("auto": hierarchical when num_groups %
num_nodes == 0, else global) and is not given the placement in force; it
lives in SGLang's global ExpertLocationMetadata, which the installed
function reads, so that moe-eplb replans against it.

What changes: SGLang routes by its dispatch rule (--ep-dispatch-algorithm):
  static   each rank sends all its tokens of an expert to one replica: the one
           on the rank, else the first on its node, else a fair, seeded choice
           (expert_location.compute_logical_to_rank_dispatch_physical_map);
  dynamic  a random replica per token (expert_location_dispatch.py).
DeepSeek's planner assumes an even split; under static dispatch its
hierarchical placement (every replica of an expert on one node) splits that
node's traffic to the node's first replica. moe-eplb plans for the rule in
force: the nearest-replica rule under static dispatch (rule
"sglang-static"), the even split under dynamic.

Also here: load_stat() reads SGLang's stat dump (.pt, or the JSON form
{"logical_count": ...}); write_init_expert_location() writes the
--init-expert-location JSON ({"physical_to_logical_map": ...}).
"""
import json

import torch

from . import _common

__all__ = ["DEFAULT_OPTIONS", "DISPATCH_RULES", "install", "load_stat", "rebalance_experts",
           "write_init_expert_location"]

# The moe-eplb rule of each SGLang --ep-dispatch-algorithm ("fake" draws at
# random as "dynamic" does).
DISPATCH_RULES = {"static": "sglang-static", "dynamic": "sglang-dynamic",
                  "fake": "sglang-dynamic"}

# Chosen by measurement (bench/engines/engine_windows.py, bench/RESULTS.md
# section 8), under both dispatch rules, as vLLM's.
DEFAULT_OPTIONS = dict(move_cost=0.001)

_installed = dict(options=dict(DEFAULT_OPTIONS), dispatch=None)


def rebalance_experts(tokens_per_expert, num_physical_experts, num_local_physical_experts,
                      num_groups, num_nodes, algorithm=None, *, dispatch="static",
                      previous=None, **options):
    """SGLang's eplb_algorithms.rebalance_experts, planned by moe-eplb.

    Args:
        tokens_per_expert: (N, layers, num_logical_experts) counts (SGLang's
            logical_count, summed over its N buffered passes) or (layers,
            num_logical_experts); any real dtype, any device.
        num_physical_experts: P, a multiple of num_local_physical_experts.
        num_local_physical_experts: slots per rank.
        num_groups: expert groups (SGLang's auto picks DeepSeek's
            hierarchical policy by them; moe-eplb plans every expert freely).
        num_nodes: nodes: ep_size // num_nodes ranks each (when that
            divides), as SGLang's static dispatch counts them.
        algorithm: SGLang's EplbAlgorithm; accepted and not used (the plan is
            moe-eplb's, whatever was asked).
        dispatch: keyword only: SGLang's --ep-dispatch-algorithm, "static"
            (the default when EPLB is on), "dynamic" or "fake".
        previous: keyword only: the placement in force, (layers, P)
            physical_to_logical_map; None plans from scratch.
        options: moe_eplb.plan() keywords (move_cost, max_moves, ...);
            DEFAULT_OPTIONS when none are given.

    Returns:
        (physical_to_logical_map (layers, P) int64, logical_to_physical_map
        (layers, num_logical_experts, X) int64 in replica order padded with
        -1 (the order static dispatch reads), expert_count (layers,
        num_logical_experts) int64), on the CPU.

    Raises:
        AssertionError when P % num_local_physical_experts != 0; ValueError
        for an unknown dispatch or what moe-eplb's planner refuses.
    """
    operation = "rebalance_experts()"
    counts = _common.host_load(operation, "tokens_per_expert", tokens_per_expert, (2, 3))
    if counts.dim() == 3:
        counts = counts.sum(dim=0)
    num_layers, num_experts = counts.shape
    assert num_physical_experts % num_local_physical_experts == 0
    if dispatch not in DISPATCH_RULES:
        raise ValueError("%s: dispatch must be one of %s, got %r"
                         % (operation, sorted(DISPATCH_RULES), dispatch))
    num_ranks = num_physical_experts // num_local_physical_experts
    options = options or dict(DEFAULT_OPTIONS)
    table = _common.plan_layers(
        counts, num_ranks, num_local_physical_experts, rule=DISPATCH_RULES[dispatch],
        ranks_per_node=_common.ranks_per_node(num_ranks, num_nodes),
        previous=_common.previous_table(operation, previous, num_layers, num_physical_experts,
                                        num_experts),
        **options)
    phy2log = _common.phy2log_from_table(table, num_physical_experts, sort_replicas=True)
    log2phy, logcnt = _common.log2phy_from_table(table)
    return phy2log, log2phy, logcnt


def _installed_rebalance_experts(tokens_per_expert, num_physical_experts,
                                 num_local_physical_experts, num_groups, num_nodes,
                                 algorithm=None):
    """What install() puts in SGLang: rebalance_experts() with the dispatch
    rule and the placement in force read from SGLang."""
    dispatch = _installed["dispatch"]
    if dispatch is None:
        from sglang.srt.server_args import get_global_server_args
        dispatch = get_global_server_args().ep_dispatch_algorithm or "static"
    from sglang.srt.eplb.expert_location import get_global_expert_location_metadata
    metadata = get_global_expert_location_metadata()
    previous = None if metadata is None else metadata.physical_to_logical_map
    return rebalance_experts(tokens_per_expert, num_physical_experts, num_local_physical_experts,
                             num_groups, num_nodes, algorithm, dispatch=dispatch,
                             previous=previous, **_installed["options"])


def install(dispatch=None, **options):
    """Makes SGLang plan with moe-eplb: patches
    sglang.srt.eplb.eplb_algorithms.rebalance_experts, which SGLang's
    ExpertLocationMetadata.init_by_eplb (EPLB rebalances and
    --init-expert-location {"logical_count": ...}) calls. The patched
    function reads the dispatch rule from SGLang's server args unless
    `dispatch` is given, and the placement in force from SGLang's global
    ExpertLocationMetadata. `options`: moe_eplb.plan() keywords
    (DEFAULT_OPTIONS when none are given). Returns the function it replaced
    (put it back to undo). Raises ImportError when SGLang cannot be imported."""
    from sglang.srt.eplb import eplb_algorithms

    if dispatch is not None and dispatch not in DISPATCH_RULES:
        raise ValueError("install(): dispatch must be one of %s, got %r"
                         % (sorted(DISPATCH_RULES), dispatch))
    _installed["dispatch"] = dispatch
    _installed["options"] = dict(options) if options else dict(DEFAULT_OPTIONS)
    replaced = eplb_algorithms.rebalance_experts
    eplb_algorithms.rebalance_experts = _installed_rebalance_experts
    return replaced


def load_stat(path):
    """SGLang's expert-distribution stat dump as (N, layers, experts) float64:
    the .pt file of ExpertDistributionRecorder (stat mode; a dict whose
    "logical_count" is the all-reduced (N, layers, experts) counts of N
    buffered passes), or a JSON file {"logical_count": [...]} (also
    --init-expert-location's form; (layers, experts) becomes N = 1)."""
    operation = "load_stat()"
    if str(path).endswith(".pt"):
        data = torch.load(path, map_location="cpu")
    else:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    if not isinstance(data, dict) or "logical_count" not in data:
        raise ValueError("%s: %s has no \"logical_count\" (keys: %s)"
                         % (operation, path, sorted(data) if isinstance(data, dict) else
                            type(data).__name__))
    counts = _common.host_load(operation, "logical_count", data["logical_count"], (2, 3))
    return counts if counts.dim() == 3 else counts.unsqueeze(0)


def write_init_expert_location(path, physical_to_logical_map):
    """Writes SGLang's --init-expert-location JSON, {"physical_to_logical_map":
    [[...], ...]} (layers x P), from a (layers, P) map (e.g. the first output
    of rebalance_experts(), or moe_eplb.engines.vllm.to_vllm(table, P)[0]).
    The map keeps no replica order: SGLang derives each expert's replicas in
    ascending slot order from it (init_by_mapping), which static dispatch
    then reads."""
    phy2log = _common.host_int64("write_init_expert_location()", "physical_to_logical_map",
                                 physical_to_logical_map)
    if phy2log.dim() != 2:
        raise ValueError("write_init_expert_location(): physical_to_logical_map must be "
                         "(layers, P), got shape %s" % (tuple(phy2log.shape),))
    with open(path, "w", encoding="utf-8") as stream:
        json.dump({"physical_to_logical_map": phy2log.tolist()}, stream)

#include "moe_eplb/plan/rule.hpp"

#include <algorithm>

#include "moe_eplb/detail/route.hpp"
#include "moe_eplb/error.hpp"

namespace moe_eplb {
namespace {

std::string rule_names() {
  std::string names;
  for (const RuleInfo& info : replica_rules()) {
    names += (names.empty() ? "\"" : ", \"") + std::string(info.name) + "\"";
  }
  return names;
}

// SGLang's static dispatch (compute_logical_to_rank_dispatch_physical_map):
// the replica on the source rank, else the first on its node, else a fair
// share of the ranks left over. O(W + count): each rank's first replica
// first, then each node's, the first of its ranks' firsts.
void nearest_replicas(const std::int32_t* slots, std::int64_t count, const Topology& topology,
                      std::int32_t* replica_of_source) {
  const std::int64_t world_size = topology.world_size;
  const std::int64_t ranks_per_node =
      topology.ranks_per_node > 0 ? topology.ranks_per_node : world_size;
  std::fill(replica_of_source, replica_of_source + world_size, count == 1 ? 0 : -1);
  if (count == 1) return;
  for (std::int64_t j = count - 1; j >= 0; --j) {
    replica_of_source[slots[j] / topology.slots_per_rank] = static_cast<std::int32_t>(j);
  }
  std::int64_t left_over = 0;
  for (std::int64_t node_begin = 0; node_begin < world_size; node_begin += ranks_per_node) {
    const std::int64_t node_end = std::min(node_begin + ranks_per_node, world_size);
    std::int32_t head = -1;
    for (std::int64_t rank = node_begin; rank < node_end; ++rank) {
      const std::int32_t own = replica_of_source[rank];
      if (own >= 0 && (head < 0 || own < head)) head = own;
    }
    for (std::int64_t rank = node_begin; rank < node_end; ++rank) {
      if (replica_of_source[rank] >= 0) continue;
      replica_of_source[rank] = head >= 0 ? head : static_cast<std::int32_t>(left_over++ % count);
    }
  }
}

}  // namespace

const std::vector<RuleInfo>& replica_rules() {
  static const std::vector<RuleInfo> kRules = {
      {ReplicaRule::kAscendRank, "ascend-rank", RuleSplit::kSourceGroups, 0,
       "the Ascend operator's rank mode (balance_mode 0): rank groups of ceil(W / c)"},
      {ReplicaRule::kAscendToken, "ascend-token", RuleSplit::kEven, 1,
       "the Ascend operator's token mode (balance_mode 1): replica 1 + token % c"},
      {ReplicaRule::kVllm, "vllm", RuleSplit::kEven, 2,
       "vLLM (balance_mode 2): replica hash(token) % c, the same on every rank"},
      {ReplicaRule::kSglangStatic, "sglang-static", RuleSplit::kNearest, -1,
       "SGLang's static dispatch: the replica on the rank, else on its node, else a fair share"},
      {ReplicaRule::kSglangDynamic, "sglang-dynamic", RuleSplit::kEven, -1,
       "SGLang's dynamic dispatch: a random replica per token"},
      {ReplicaRule::kTrtllm, "trtllm", RuleSplit::kEven, -1,
       "TensorRT-LLM: round-robin over the replicas within blocks of 1024 choices"},
  };
  return kRules;
}

const RuleInfo& rule_info(ReplicaRule rule) {
  const auto index = static_cast<std::size_t>(rule);
  const std::vector<RuleInfo>& rules = replica_rules();
  MOE_EPLB_CHECK(index < rules.size(), "rule_info(): unknown replica rule ", index);
  return rules[index];
}

ReplicaRule parse_replica_rule(const std::string& name, const char* operation) {
  for (const RuleInfo& info : replica_rules()) {
    if (name == info.name) return info.rule;
  }
  MOE_EPLB_FAIL(ErrorCode::kInvalidArgument, operation, ": rule must be one of ", rule_names(),
                ", got \"", name, "\"");
}

ReplicaRule rule_of_balance_mode(BalanceMode balance_mode, const char* operation) {
  for (const RuleInfo& info : replica_rules()) {
    if (info.balance_mode == static_cast<std::int64_t>(balance_mode)) return info.rule;
  }
  MOE_EPLB_FAIL(ErrorCode::kInvalidArgument, operation,
                ": balance_mode must be 0 (by rank), 1 (by token) or 2 (vLLM's token hash), got ",
                static_cast<std::int64_t>(balance_mode));
}

void source_replicas(ReplicaRule rule, const std::int32_t* replica_slots, std::int64_t count,
                     const Topology& topology, std::int32_t* replica_of_source) {
  const RuleInfo& info = rule_info(rule);
  switch (info.split) {
    case RuleSplit::kSourceGroups:
      for (std::int64_t source = 0; source < topology.world_size; ++source) {
        replica_of_source[source] = static_cast<std::int32_t>(
            detail::replica_column(
                static_cast<std::uint32_t>(count), 0, static_cast<std::uint32_t>(source),
                static_cast<std::uint32_t>(topology.world_size), BalanceMode::kByRank) -
            1);
      }
      return;
    case RuleSplit::kNearest:
      nearest_replicas(replica_slots, count, topology, replica_of_source);
      return;
    case RuleSplit::kEven:
      break;
  }
  MOE_EPLB_FAIL(ErrorCode::kInvalidArgument, "source_replicas(): rule \"", info.name,
                "\" splits every rank's tokens evenly; it has no replica per source rank");
}

double expected_sources_served(ReplicaRule rule, std::int64_t count, std::int64_t replica,
                               const Topology& topology) {
  const std::int64_t world_size = topology.world_size;
  switch (rule_info(rule).split) {
    case RuleSplit::kSourceGroups: {
      const detail::SourceRanks sources = detail::rank_mode_sources(count, replica, world_size);
      return static_cast<double>(sources.end - sources.begin);
    }
    case RuleSplit::kEven:
      return static_cast<double>(world_size) / static_cast<double>(count);
    case RuleSplit::kNearest:
      break;
  }
  const std::int64_t num_nodes =
      topology.ranks_per_node > 0 ? world_size / topology.ranks_per_node : 1;
  if (count <= num_nodes) return static_cast<double>(world_size) / static_cast<double>(count);
  // Every node holds a replica: its head takes the node's ranks without one.
  const std::int64_t node = replica % num_nodes;
  const std::int64_t on_node = count / num_nodes + (node < count % num_nodes ? 1 : 0);
  const std::int64_t ranks_per_node = world_size / num_nodes;
  return replica < num_nodes ? static_cast<double>(ranks_per_node - on_node + 1) : 1.0;
}

}  // namespace moe_eplb

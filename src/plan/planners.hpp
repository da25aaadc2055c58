// Internal: the per-layer planners behind plan(). plan() checks the request
// once; these trust it.
#pragma once

#include <cstdint>
#include <vector>

#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/plan/rule.hpp"

namespace moe_eplb::plan_detail {

// One layer of a checked plan() request.
struct LayerRequest {
  const double* counts = nullptr;  // (num_source_ranks, num_experts) row-major
  std::int64_t num_source_ranks = 1;
  std::int64_t num_experts = 0;
  std::int64_t world_size = 0;
  std::int64_t slots_per_rank = 0;
  std::int64_t ranks_per_node = 0;  // 0 = one node
  std::int64_t max_count = 0;       // replica count cap: min(W, F - 1)
  ReplicaRule rule = ReplicaRule::kAscendRank;
  std::int64_t num_groups = 1;
  // Every window of this layer, oldest first, each (num_source_ranks,
  // num_experts); `counts` is their mean.
  std::vector<const double*> windows;
  // The table in force for this layer (num_experts rows), or data == nullptr.
  TableView previous;
  std::int64_t layer_idx = 0;   // for messages
  std::int64_t max_moves = -1;  // -1 = no cap
  double move_cost = 0.0;

  Topology topology() const { return {world_size, slots_per_rank, ranks_per_node}; }
};

// Whether a replica's place in its row changes what it receives under the
// request's rule (every rule but the even splits).
inline bool order_matters(const LayerRequest& request) {
  return rule_info(request.rule).split != RuleSplit::kEven;
}

// A layer's placement as rows of (count, slots of replicas 1..count), one
// after another: what plan() keeps of each layer (one buffer, where
// ReplicaSlots holds a vector per expert).
struct LayerRows {
  std::int64_t num_experts = 0;
  std::int64_t max_count = 1;  // the most replicas of any expert (at least 1)
  std::vector<std::int32_t> rows;
};
// Throws when an expert has no replica.
LayerRows pack_rows(const ReplicaSlots& slots);
ReplicaSlots unpack_rows(const LayerRows& rows);
// The (L, E, F) table of the layers; num_columns 0 means the largest count +
// 1 (at least 2). Throws when a count exceeds F - 1 (make_layered_table()).
LayeredTable table_of_layers(const std::vector<LayerRows>& layers, std::int64_t num_columns);

LayerRows plan_rule_aware(const LayerRequest& request, LayerPlanReport* report);
ReplicaSlots plan_deepseek(const LayerRequest& request);
ReplicaSlots plan_flashlb(const LayerRequest& request);

}  // namespace moe_eplb::plan_detail

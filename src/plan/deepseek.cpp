// DeepSeek's published EPLB algorithm (deepseek-ai/EPLB, rebalance_experts),
// written from its published description: the baseline the rule-aware
// planner is compared with. It sees global counts only and
// assumes every replica gets load / count.
#include <algorithm>
#include <numeric>

#include "planners.hpp"

namespace moe_eplb::plan_detail {
namespace {

// Greedy water-filling: starting from one replica each, every further slot
// goes to the expert with the largest load / count (first one on ties).
// Returns, per physical replica, its expert; replica_idx gets its replica
// number within the expert (0 = the original).
std::vector<std::int64_t> replicate(const std::vector<double>& weight, std::int64_t num_slots,
                                    std::vector<std::int64_t>& replica_idx,
                                    std::vector<std::int64_t>& counts) {
  const auto num_experts = static_cast<std::int64_t>(weight.size());
  std::vector<std::int64_t> owner(static_cast<std::size_t>(num_experts));
  std::iota(owner.begin(), owner.end(), 0);
  replica_idx.assign(static_cast<std::size_t>(num_experts), 0);
  counts.assign(static_cast<std::size_t>(num_experts), 1);
  for (std::int64_t slot = num_experts; slot < num_slots; ++slot) {
    std::size_t best = 0;
    for (std::size_t e = 1; e < weight.size(); ++e) {
      if (weight[e] / static_cast<double>(counts[e]) >
          weight[best] / static_cast<double>(counts[best])) {
        best = e;
      }
    }
    owner.push_back(static_cast<std::int64_t>(best));
    replica_idx.push_back(counts[best]++);
  }
  return owner;
}

// Balanced packing into equal-size packs: heaviest item first, into the
// lightest pack that still has room. Returns each item's position
// pack * items_per_pack + rank_in_pack.
std::vector<std::int64_t> balanced_packing(const std::vector<double>& weight,
                                           std::int64_t num_packs) {
  const auto num_items = static_cast<std::int64_t>(weight.size());
  const std::int64_t per_pack = num_items / num_packs;
  std::vector<std::int64_t> order(static_cast<std::size_t>(num_items));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int64_t a, std::int64_t b) { return weight[a] > weight[b]; });
  std::vector<double> pack_weight(static_cast<std::size_t>(num_packs), 0.0);
  std::vector<std::int64_t> pack_size(static_cast<std::size_t>(num_packs), 0);
  std::vector<std::int64_t> position(static_cast<std::size_t>(num_items));
  for (std::int64_t item : order) {
    std::int64_t best = -1;
    for (std::int64_t pack = 0; pack < num_packs; ++pack) {
      if (pack_size[pack] == per_pack) continue;
      if (best < 0 || pack_weight[pack] < pack_weight[best]) best = pack;
    }
    position[item] = best * per_pack + pack_size[best]++;
    pack_weight[best] += weight[item];
  }
  return position;
}

}  // namespace

ReplicaSlots plan_deepseek(const LayerRequest& request) {
  const std::int64_t num_experts = request.num_experts;
  const std::int64_t num_slots = request.world_size * request.slots_per_rank;
  const std::int64_t num_nodes =
      request.ranks_per_node > 0 ? request.world_size / request.ranks_per_node : 1;
  // Hierarchical when expert groups divide evenly over several nodes, else
  // the global policy (one group, one node).
  const bool hierarchical = num_nodes > 1 && request.num_groups % num_nodes == 0;
  const std::int64_t num_groups = hierarchical ? request.num_groups : 1;
  const std::int64_t nodes = hierarchical ? num_nodes : 1;
  const std::int64_t group_size = num_experts / num_groups;
  const std::int64_t experts_per_node = num_experts / nodes;
  const std::int64_t slots_per_node = num_slots / nodes;
  const std::int64_t ranks_per_node = request.world_size / nodes;
  const double* weight = request.counts;

  // Step 1: whole expert groups onto nodes. node_experts[n] lists the
  // logical experts of node n in the order the node numbers them.
  std::vector<double> group_weight(static_cast<std::size_t>(num_groups), 0.0);
  for (std::int64_t e = 0; e < num_experts; ++e) group_weight[e / group_size] += weight[e];
  const std::vector<std::int64_t> group_position = balanced_packing(group_weight, nodes);
  std::vector<std::int64_t> node_expert(static_cast<std::size_t>(num_experts));
  for (std::int64_t group = 0; group < num_groups; ++group) {
    for (std::int64_t i = 0; i < group_size; ++i) {
      node_expert[group_position[group] * group_size + i] = group * group_size + i;
    }
  }

  ReplicaSlots slots(static_cast<std::size_t>(num_experts));
  for (std::int64_t node = 0; node < nodes; ++node) {
    // Step 2: replicate inside the node over its slots.
    const std::int64_t* experts = node_expert.data() + node * experts_per_node;
    std::vector<double> node_weight(static_cast<std::size_t>(experts_per_node));
    for (std::int64_t i = 0; i < experts_per_node; ++i) node_weight[i] = weight[experts[i]];
    std::vector<std::int64_t> replica_idx, counts;
    const std::vector<std::int64_t> owner =
        replicate(node_weight, slots_per_node, replica_idx, counts);
    for (std::int64_t i = 0; i < experts_per_node; ++i) {
      slots[experts[i]].assign(static_cast<std::size_t>(counts[i]), -1);
    }
    // Step 3: pack the node's replicas onto its ranks by load / count.
    std::vector<double> replica_weight(owner.size());
    for (std::size_t p = 0; p < owner.size(); ++p) {
      replica_weight[p] = node_weight[owner[p]] / static_cast<double>(counts[owner[p]]);
    }
    const std::vector<std::int64_t> position = balanced_packing(replica_weight, ranks_per_node);
    for (std::size_t p = 0; p < owner.size(); ++p) {
      slots[experts[owner[p]]][replica_idx[p]] =
          static_cast<std::int32_t>(node * slots_per_node + position[p]);
    }
  }
  return slots;
}

}  // namespace moe_eplb::plan_detail

// The EPLB planner: from expert load statistics to the Ascend eplb_table.
//
// Slot p lives on rank p / slots_per_rank. A plan uses every
// one of the world_size * slots_per_rank slots exactly once, never puts two
// replicas of one logical expert on the same rank, and always passes
// validate_table(). Two algorithms:
//
//   kRuleAware  (default) plans for the operator's real replica rule. In rank
//               mode replica j of an expert with c replicas receives exactly
//               the tokens of source-rank group j (groups of ceil(W / c)
//               ranks), so it balances those real shares, only uses counts
//               that leave no replica dead, and places replica j near group j
//               where that costs no balance. In token mode each replica gets
//               about load / c.
//   kDeepSeek   DeepSeek's published EPLB algorithm (greedy replication on
//               load / count, balanced packing; hierarchical when expert
//               groups divide evenly over nodes), on global counts. The
//               baseline: it assumes an even split over replicas.
#pragma once

#include <cstdint>
#include <vector>

#include "moe_eplb/plan/load.hpp"
#include "moe_eplb/types.hpp"

namespace moe_eplb {

// (num_layers, num_experts, num_columns) int32 EPLB tables, row-major. Row e
// of a layer is [c, p_1 .. p_c, -1 ...].
struct LayeredTable {
  std::int64_t num_layers = 0;
  std::int64_t num_experts = 0;
  std::int64_t num_columns = 0;
  std::vector<std::int32_t> values;

  TableView layer(std::int64_t layer_idx) const {
    return TableView{values.data() + layer_idx * num_experts * num_columns, num_experts,
                     num_columns, num_columns, 1};
  }
};

// kFlashLB: Huawei's FlashLB as its public description states it (vllm-ascend
// PR #3042): replicas by the largest mean + 0.674 std per replica over the
// windows, covariance-aware placement on the device with the lowest
// mean + z std, Hungarian slot matching against the previous table. A
// baseline; it does not know the operator's rank rule.
enum class PlanAlgorithm : std::uint8_t { kRuleAware, kDeepSeek, kFlashLB };

struct PlanOptions {
  std::int64_t world_size = 0;      // W >= 1
  std::int64_t slots_per_rank = 0;  // S, 1..E (one replica of an expert per rank)
  // Ranks per node for locality (and DeepSeek's hierarchical policy); 0 = one
  // node. Must divide world_size when given.
  std::int64_t ranks_per_node = 0;
  // F of the output table; 0 = the smallest that fits (largest count + 1).
  // Replica counts are capped at F - 1.
  std::int64_t num_columns = 0;
  BalanceMode balance_mode = BalanceMode::kByRank;  // the rule kRuleAware plans for
  PlanAlgorithm algorithm = PlanAlgorithm::kRuleAware;
  // kDeepSeek only: expert groups (DeepSeek-V3 routes within 8); the
  // hierarchical policy runs when groups divide evenly over > 1 nodes.
  std::int64_t num_groups = 1;

  // Migration-aware replanning. `previous` is the table in force, (L, E, F')
  // with the plan's L and E (any F'), valid for world_size * slots_per_rank
  // slots; null plans from scratch. Not owned; must outlive the call.
  const LayeredTable* previous = nullptr;
  // Per layer, at most this many slots whose logical expert differs from
  // `previous` (a "move"); -1 = no cap. Needs `previous`.
  std::int64_t max_moves = -1;
  // >= 0: the predicted max/mean a move must buy to be made (0 = balance
  // first, moves only where they tie). Needs `previous`.
  double move_cost = 0.0;
};

// What plan() estimated, per layer (filled when a report is asked for).
struct LayerPlanReport {
  // Estimated share of each source rank's deviation from the global share
  // that persists from window to window, in [0, 1] (1 with global counts).
  double persistence = 1.0;
  // Predicted max/mean per-rank load on the next window, and an interval
  // (about one standard deviation either side) from the windows' noise.
  double predicted_max_over_mean = 1.0;
  double predicted_low = 1.0;
  double predicted_high = 1.0;
  std::int64_t slots_changed = 0;  // against `previous`; 0 without it
};
struct PlanReport {
  std::vector<LayerPlanReport> layers;
};
// Plans every layer of `load` independently. Throws moe_eplb::Error
// (kInvalidArgument) starting with "plan():" for impossible requests: fewer
// slots than experts, slots_per_rank above E, num_columns that cannot hold
// the slots, ranks_per_node not dividing world_size, a load whose per-rank
// rows differ from world_size. Deterministic (no randomness, no threads,
// same output on every platform); allocates per layer O(E * W) scratch;
// thread-safe (no shared state). Takes a few ms per layer of 256 experts on
// EP 64 (the bench plans 61 such layers in well under a second).
LayeredTable plan(const ExpertLoad& load, const PlanOptions& options);

// Plans on several windows of statistics, oldest first, all of one shape
// (the same layers, source ranks and experts; a mismatch throws naming the
// window). `report`, when not null, receives the per-layer estimates.
LayeredTable plan(const std::vector<ExpertLoad>& windows, const PlanOptions& options,
                  PlanReport* report = nullptr);

// Physical slots that hold each replica, by expert: replicas[e][j] is the slot
// of replica j + 1. The intermediate form every planner produces.
using ReplicaSlots = std::vector<std::vector<std::int32_t>>;

// Writes placements (one per layer) as an (L, E, F) table; num_columns 0
// means the largest count + 1 (at least 2). Throws when a count exceeds F - 1.
LayeredTable make_layered_table(const std::vector<ReplicaSlots>& layers, std::int64_t num_columns);

// The standard placement without redundancy: one replica per expert, experts
// spread contiguously, rank r holding experts [r*E/W, (r+1)*E/W), on
// ceil(E / W) slots per rank (trailing slots of a rank stay unused when E is
// not a multiple of W). An (1, E, 2) table.
LayeredTable no_redundancy_table(std::int64_t num_experts, std::int64_t world_size);

// The valid rank-mode replica counts for world_size: those where every
// replica serves at least one rank, i.e. ceil(W / g) for g = 1..W, ascending.
std::vector<std::int64_t> live_replica_counts(std::int64_t world_size);

}  // namespace moe_eplb

// The EPLB planner: from expert load statistics to the Ascend eplb_table.
//
// Slot p lives on rank p / slots_per_rank. Every plan uses each of the
// world_size * slots_per_rank slots exactly once. Only kRuleAware also
// guarantees that no rank holds two replicas of one logical expert, that no
// expert has more replicas than ranks (or than num_columns - 1) and that
// the table passes validate_table(). The baselines follow their published
// algorithms: kDeepSeek may put two replicas of a hot expert on one rank and
// give an expert more replicas than ranks; kFlashLB keeps one replica of an
// expert per rank and uses every slot, but may leave replicas that rank mode
// never selects (it does not know the rank rule). Three algorithms:
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
//   kFlashLB    see below.
//
// How several windows are used (kRuleAware)
// -----------------------------------------
// plan() takes T >= 1 windows of counts, oldest first; it plans for the next
// window. Counts are routed (token, top-k) choices, so a count's sampling
// noise is Poisson (variance = count). Per layer:
//
//  1. Persistence. Each window's deviation from the global share is
//     D_t[w,e] = x_t[w,e] - g_t[e] * s_t[w] (g_t: expert totals, s_t: each
//     source rank's share of all tokens). With T >= 2 the persistence rho is
//     the lag-1 correlation of consecutive windows' deviations, weighted by
//     1 / expected count (Pearson residuals), clipped to [0, 1]. With one
//     window it cannot be measured: rho = 0.5 * (the share of the deviation
//     above sampling noise), a conservative default. Global counts: rho = 1.
//  2. Shrinkage. The windows' mean deviation keeps the weight
//     lambda = rho / (rho + (1 - rho) / T) (the best linear predictor when
//     the non-persistent part is independent between windows; lambda = rho
//     for T = 1): expected[w,e] = level[e] * (s[w] + lambda * (mean_x[w,e] /
//     mean_g[e] - s[w])), s the mean rank shares.
//  3. Level and drift. level[e] is a local-level Kalman filter over the
//     expert's totals (scaled to the mean window size); the drift variance
//     of a step is estimated from E[(g_t - g_{t-2})^2] - E[(g_t - g_{t-1})^2]
//     pooled over experts (three or more windows; none assumed below),
//     less half the standard error of that pooled estimate (its spread over
//     the experts), so that noise alone reads as drift less often. No drift gives
//     the plain mean.
//  4. Noise. Each (rank, expert) count of the next window has variance
//     expected + kappa * expected^2: Poisson plus the deviation that does not
//     persist (kappa from (1 - rho) times the windows' deviation beyond
//     sampling noise); each expert's total also carries the level's error and
//     one drift step, shared by its ranks in proportion.
//
// Under the even-split rules (ascend-token, vllm, sglang-dynamic, trtllm) a
// replica gets 1 / c of its expert's total, so the per-rank split forecasts
// nothing. Unless a drift is established, or the deviations persist 0.9 or
// more, the windows' mean is then planned on as one window (their transient
// deviations would overstate the noise of an expert's total: a rank routes a
// fixed number of tokens, so they cancel across its experts). A drift is
// established when the pooled estimate of stage 3 is at least 2 standard
// errors of what stage 4's noise alone gives it (each expert's term
// lag2 - lag1 is a quadratic form x'Ax of its totals, of variance
// 2 tr(A^2) sigma_e^4 without drift, sigma_e^2 the total's variance); noise
// alone passes stage 3's threshold in about a third of stationary layers,
// this test in about 2%. The report still gives the measured persistence.
//
// The rank-mode (and token-mode) objective
// ----------------------------------------
// A replica's load on the next window has the mean and variance of its
// source group's counts (token mode: 1/c of the expert's); a rank's are the
// sums over its replicas. Counts, groups and placement minimise the largest
// mean + 1.0 * std over ranks (not the largest mean): a replica fed by a
// small group of ranks carries that group's noise. Small layers that need a
// count search compare candidates by the expected busiest rank itself.
// The report's predicted_max_over_mean is E[max_r L_r] / mean for
// independent normal rank loads L_r, with its 16% / 84% quantiles.
//
// Migration-aware replanning (options.previous)
// ---------------------------------------------
// A slot is changed when its logical expert, or its replica's position in the
// expert's row, differs from the previous table (diff_tables()'s
// slots_rerouted; the position is the routing: which source group, or which
// tokens, the replica serves).
// The planner keeps each replica on a
// rank that already holds the expert wherever balance allows, and within a
// rank a staying expert keeps its slot (align_to_previous). It compares a
// local search from the previous placement (forced repairs first, then the
// moves that buy the most balance per changed slot: reorders of an
// expert's replicas, swaps, and count changes that turn a cool expert's
// replica into a hot one's; layers of at most 16 slots then try every such
// step by the expected busiest rank) with the fresh plan relabelled to the
// old ranks of largest overlap, and keeps the lower predicted max/mean +
// move_cost * slots changed. max_moves caps slots changed per layer exactly
// (0 returns the previous rows as they are, order included); a previous
// table whose forced repairs (replicas rank mode never selects, two replicas
// of an expert on a rank, unused slots) exceed the cap is refused.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe_eplb/plan/load.hpp"
#include "moe_eplb/plan/rule.hpp"
#include "moe_eplb/plan/topology.hpp"
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
// PR #3042), on global counts: replicas by the largest mean + z std per
// replica over the windows, covariance-aware placement on the device with the
// lowest mean + z std, z = 0.674 in both (std is 0 with one window). With a
// previous table it keeps that table unless it is more than 5% worse than a
// fresh plan by its own measure; otherwise Hungarian matching of the new
// devices to the old ranks, and staying experts keep their slots. No move cap.
enum class PlanAlgorithm : std::uint8_t { kRuleAware, kDeepSeek, kFlashLB };

// The registry's names, in enum order, as the CLI and Python use them:
// "moe-eplb", "deepseek", "flashlb".
const std::vector<std::string>& plan_algorithm_names();
const char* plan_algorithm_name(PlanAlgorithm algorithm);
// The algorithm of a name; throws moe_eplb::Error (kInvalidArgument) starting
// with `operation` and listing the names otherwise.
PlanAlgorithm parse_plan_algorithm(const std::string& name, const char* operation = "plan()");

struct PlanOptions {
  std::int64_t world_size = 0;      // W >= 1
  std::int64_t slots_per_rank = 0;  // S, 1..E (one replica of an expert per rank)
  // Ranks per node for locality (and DeepSeek's hierarchical policy); 0 = one
  // node. Must divide world_size when given.
  std::int64_t ranks_per_node = 0;
  // F of the output table; 0 = the smallest that fits (largest count + 1).
  // Replica counts are capped at F - 1.
  std::int64_t num_columns = 0;
  // The replica rule kRuleAware plans for (plan/rule.hpp): rank groups for
  // ascend-rank, the even split for ascend-token, vllm, sglang-dynamic and
  // trtllm, the nearest replica for sglang-static.
  ReplicaRule rule = ReplicaRule::kAscendRank;
  PlanAlgorithm algorithm = PlanAlgorithm::kRuleAware;
  // kDeepSeek only: expert groups (DeepSeek-V3 routes within 8); the
  // hierarchical policy runs when groups divide evenly over > 1 nodes.
  std::int64_t num_groups = 1;

  // Migration-aware replanning (kRuleAware only; see above). `previous` is
  // the table in force, (L, E, F') with the plan's L and E (any F'), valid
  // for world_size * slots_per_rank slots; null plans from scratch. Not
  // owned; must outlive the call.
  const LayeredTable* previous = nullptr;
  // Per layer, at most this many slots whose logical expert or replica
  // position differs from `previous` (a "move"); -1 = no cap. Needs `previous`.
  std::int64_t max_moves = -1;
  // >= 0: the predicted max/mean a move must buy to be made (0 = balance
  // first, moves only where they tie). Needs `previous`.
  double move_cost = 0.0;

  // Threads that plan layers side by side (layers are planned independently,
  // so every thread count gives the same table): 0 = one per hardware
  // thread, at most one per layer; 1 = on the calling thread alone.
  std::int64_t threads = 0;

  Topology topology() const { return {world_size, slots_per_rank, ranks_per_node}; }
};

// The table width F that holds every plan kRuleAware can make for
// num_experts experts on world_size * slots_per_rank slots: 1 + the most
// replicas one expert can get, min(world_size, world_size * slots_per_rank -
// num_experts + 1) (one replica per rank, every other expert keeps one).
// Planning every window with this num_columns keeps one table shape, so a
// prepared table can be updated in place. Throws moe_eplb::Error
// (kInvalidArgument) starting with `operation` for sizes plan() refuses.
std::int64_t widest_plan_columns(std::int64_t num_experts, std::int64_t world_size,
                                 std::int64_t slots_per_rank,
                                 const char* operation = "widest_plan_columns()");

// What plan() estimated, per layer (filled when a report is asked for;
// the estimates by kRuleAware only, slots_changed by every algorithm).
struct LayerPlanReport {
  // Estimated share of each source rank's deviation from the global share
  // that persists from window to window, in [0, 1] (1 with global counts).
  double persistence = 1.0;
  // Predicted max/mean per-rank load on the next window (its expectation),
  // and the 16% and 84% quantiles (about one standard deviation either side).
  double predicted_max_over_mean = 1.0;
  double predicted_low = 1.0;
  double predicted_high = 1.0;
  // Slots whose (expert, position) differs from `previous`
  // (diff_tables().slots_rerouted); 0 without it.
  std::int64_t slots_changed = 0;
};
struct PlanReport {
  std::vector<LayerPlanReport> layers;
};
// Plans every layer of `load` independently (one window). Throws
// moe_eplb::Error (kInvalidArgument) starting with "plan():" for impossible
// requests: fewer slots than experts, slots_per_rank above E, num_columns
// that cannot hold the slots, ranks_per_node not dividing world_size, a load
// whose per-rank rows differ from world_size, threads below 0.
// Deterministic (no randomness, the same output for every `threads` and on
// every platform); allocates per layer O(E * W) scratch; thread-safe (no
// shared state). Takes about 1 ms of CPU per layer of 256 experts on EP 64
// with 4 windows (bench/RESULTS.md section 9), spread over `threads`.
LayeredTable plan(const ExpertLoad& load, const PlanOptions& options);

// Plans on several windows of statistics, oldest first, all of one shape
// (the same layers, source ranks and experts; a mismatch throws naming the
// window). `report`, when not null, receives the per-layer estimates.
// Also throws for: a previous table of another L or E, or not valid for
// world_size * slots_per_rank slots; max_moves below -1; move_cost negative
// or not finite; max_moves / move_cost without `previous` or with another
// algorithm; forced repairs of `previous` above max_moves.
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

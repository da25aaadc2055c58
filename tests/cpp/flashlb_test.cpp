// The FlashLB baseline (PlanAlgorithm::kFlashLB): its Hungarian matching
// against brute force, hand-worked replica counts and placements, validity on
// random inputs, and replanning against a previous table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/plan/scenario.hpp"
#include "moe_eplb/table.hpp"
#include "plan/flashlb.hpp"

namespace moe_eplb {
namespace {

// One layer of global counts per window.
std::vector<ExpertLoad> global_windows(const std::vector<std::vector<double>>& windows) {
  std::vector<ExpertLoad> loads;
  for (const std::vector<double>& counts : windows) {
    ExpertLoad load;
    load.num_layers = 1;
    load.num_source_ranks = 1;
    load.num_experts = static_cast<std::int64_t>(counts.size());
    load.counts = counts;
    loads.push_back(load);
  }
  return loads;
}

PlanOptions flashlb_options(std::int64_t world_size, std::int64_t slots_per_rank) {
  PlanOptions options;
  options.world_size = world_size;
  options.slots_per_rank = slots_per_rank;
  options.algorithm = PlanAlgorithm::kFlashLB;
  return options;
}

std::vector<std::int64_t> replica_counts(const LayeredTable& table) {
  std::vector<std::int64_t> counts;
  for (std::int64_t e = 0; e < table.num_experts; ++e) counts.push_back(table.layer(0).at(e, 0));
  return counts;
}

// The sorted expert set of every rank.
std::vector<std::vector<std::int32_t>> rank_sets(const LayeredTable& table,
                                                 const Topology& topology) {
  const std::vector<std::int32_t> owner = slot_experts(table.layer(0), topology);
  std::vector<std::vector<std::int32_t>> sets;
  for (std::int64_t r = 0; r < topology.world_size; ++r) {
    std::vector<std::int32_t> set(owner.begin() + r * topology.slots_per_rank,
                                  owner.begin() + (r + 1) * topology.slots_per_rank);
    std::sort(set.begin(), set.end());
    sets.push_back(set);
  }
  return sets;
}

// Every slot used, no expert twice on a rank, no error (dead replicas in rank
// mode are allowed: FlashLB does not know the rank rule).
void expect_valid(const LayeredTable& table, std::int64_t world_size, std::int64_t slots_per_rank) {
  for (std::int64_t layer = 0; layer < table.num_layers; ++layer) {
    ValidateTableOptions options;
    options.check_rank_mode_reachability = false;
    const TableReport report =
        validate_table(table.layer(layer), world_size, world_size * slots_per_rank, options);
    EXPECT_TRUE(report.ok() && report.total_warnings == 0) << report.to_string();
  }
}

double brute_force_min_cost(const std::vector<double>& cost, std::int64_t n) {
  std::vector<std::int64_t> permutation(static_cast<std::size_t>(n));
  std::iota(permutation.begin(), permutation.end(), 0);
  double best = 1e300;
  do {
    double total = 0.0;
    for (std::int64_t i = 0; i < n; ++i) total += cost[i * n + permutation[i]];
    best = std::min(best, total);
  } while (std::next_permutation(permutation.begin(), permutation.end()));
  return best;
}

TEST(FlashLB, HungarianMatchesBruteForce) {
  std::mt19937_64 rng(42);
  for (int trial = 0; trial < 300; ++trial) {
    const std::int64_t n = 1 + static_cast<std::int64_t>(rng() % 7);
    std::vector<double> cost(static_cast<std::size_t>(n * n));
    // Small integers make ties; negatives are allowed (overlaps are negated).
    for (double& value : cost) {
      value = trial % 2 == 0 ? static_cast<double>(static_cast<int>(rng() % 5) - 2)
                             : static_cast<double>(rng() % 1000) / 7.0;
    }
    const std::vector<std::int64_t> assignment = plan_detail::min_cost_assignment(cost, n);
    ASSERT_EQ(static_cast<std::int64_t>(assignment.size()), n);
    std::vector<std::int64_t> sorted = assignment;
    std::sort(sorted.begin(), sorted.end());
    for (std::int64_t i = 0; i < n; ++i)
      ASSERT_EQ(sorted[i], i) << "not a permutation, trial " << trial;
    double total = 0.0;
    for (std::int64_t i = 0; i < n; ++i) total += cost[i * n + assignment[i]];
    EXPECT_NEAR(total, brute_force_min_cost(cost, n), 1e-9) << "trial " << trial << " n " << n;
  }
  EXPECT_TRUE(plan_detail::min_cost_assignment({}, 0).empty());
  EXPECT_THROW(plan_detail::min_cost_assignment({1.0, 2.0}, 2), Error);
}

// Extra replicas go to the largest load per replica, at most one per rank:
// expert 0 (600) stops at 2 replicas on 2 ranks, the last slot goes to the
// first of the ties at 100.
TEST(FlashLB, ReplicaCountsHandWorked) {
  const LayeredTable table = plan(global_windows({{600, 100, 100, 100}}), flashlb_options(2, 3));
  EXPECT_EQ(replica_counts(table), (std::vector<std::int64_t>{2, 2, 1, 1}));
  expect_valid(table, 2, 3);
}

// Equal means, but expert 1 swings (50, 150): mean + 0.674 std is 147.7
// against 100, so it gets the one extra replica.
TEST(FlashLB, VolatileExpertGetsTheReplica) {
  const LayeredTable table =
      plan(global_windows({{100, 50, 10}, {100, 150, 10}}), flashlb_options(2, 2));
  EXPECT_EQ(replica_counts(table), (std::vector<std::int64_t>{1, 2, 1}));
  // With one window the two are equal and the first one wins.
  const LayeredTable one = plan(global_windows({{100, 100, 10}}), flashlb_options(2, 2));
  EXPECT_EQ(replica_counts(one), (std::vector<std::int64_t>{2, 1, 1}));
}

// Experts 0 and 2 peak in window 0, 1 and 3 in window 1. All means are
// equal, so a mean-only greedy pairs 0 with 2; the covariance-aware
// placement pairs each with one of the others and every window is flat.
TEST(FlashLB, CovarianceAwarePlacementSeparatesExpertsThatPeakTogether) {
  const std::vector<ExpertLoad> windows = global_windows({{100, 0, 100, 0}, {0, 100, 0, 100}});
  const LayeredTable table = plan(windows, flashlb_options(2, 2));
  AnalyzeOptions analyze;
  analyze.world_size = 2;
  analyze.slots_per_rank = 2;
  analyze.rule = ReplicaRule::kAscendToken;
  for (const ExpertLoad& window : windows) {
    const BalanceReport report = analyze_load(table.layer(0), window.layer(0), 1, analyze);
    EXPECT_DOUBLE_EQ(report.max_over_mean, 1.0);
  }
}

TEST(FlashLB, ValidOnRandomInputs) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const std::int64_t num_experts = 1 + static_cast<std::int64_t>(rng() % 40);
    const std::int64_t world_size = 1 + static_cast<std::int64_t>(rng() % 9);
    const std::int64_t min_slots = (num_experts + world_size - 1) / world_size;
    const std::int64_t slots_per_rank =
        min_slots +
        static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(num_experts - min_slots + 1));
    const std::int64_t num_windows = 1 + static_cast<std::int64_t>(rng() % 4);
    const bool per_rank = rng() % 2 == 0;
    std::vector<ExpertLoad> windows;
    for (std::int64_t t = 0; t < num_windows; ++t) {
      ExpertLoad load;
      load.num_layers = 2;
      load.num_source_ranks = per_rank ? world_size : 1;
      load.num_experts = num_experts;
      for (std::int64_t i = 0; i < 2 * load.num_source_ranks * num_experts; ++i) {
        // A quarter zeros: ties and idle experts.
        load.counts.push_back(rng() % 4 == 0 ? 0.0 : static_cast<double>(rng() % 1000));
      }
      windows.push_back(load);
    }
    SCOPED_TRACE("trial " + std::to_string(trial) + ": E " + std::to_string(num_experts) + ", W " +
                 std::to_string(world_size) + ", S " + std::to_string(slots_per_rank));
    const PlanOptions options = flashlb_options(world_size, slots_per_rank);
    const LayeredTable table = plan(windows, options);
    expect_valid(table, world_size, slots_per_rank);
    // Global counts in, the same plan: FlashLB sums the source ranks.
    std::vector<ExpertLoad> globals;
    for (const ExpertLoad& window : windows) globals.push_back(global_load(window));
    EXPECT_EQ(plan(globals, options).values, table.values);
    // Replanning against itself keeps it; against another table stays valid.
    PlanOptions again = options;
    again.previous = &table;
    EXPECT_EQ(plan(windows, again).values, table.values);
    const LayeredTable other = plan(std::vector<ExpertLoad>{windows.back()}, options);
    again.previous = &other;
    expect_valid(plan(windows, again), world_size, slots_per_rank);
  }
}

TEST(FlashLB, ValidOnTheWindowSuite) {
  for (ScenarioSpec spec : window_suite()) {
    SCOPED_TRACE(spec.name);
    spec.tokens_per_rank = 128;
    const std::vector<ExpertLoad> windows = generate_windows(spec, 0, 3);
    const LayeredTable table =
        plan(windows, scenario_plan_options(spec, BalanceMode::kByRank, PlanAlgorithm::kFlashLB));
    expect_valid(table, spec.world_size, spec.slots_per_rank);
  }
}

// Previous = the fresh plan with its ranks rotated and experts 7 and 3
// swapped between two ranks, which puts 900 of load on one rank (the fresh
// plan's peak is 806): balance degraded, so FlashLB replans, and matching
// ranks and slots leaves only the two swapped slots to change.
TEST(FlashLB, ReplansWhenDegradedAndMovesOnlyWhatItMust) {
  const std::vector<ExpertLoad> windows = global_windows({{800, 400, 200, 100, 50, 25, 12, 6}});
  const PlanOptions options = flashlb_options(4, 2);
  const Topology topology{4, 2, 0};
  const LayeredTable fresh = plan(windows, options);
  // Hottest first onto the lightest rank: {0, 7}, {1, 6}, {2, 5}, {3, 4}.
  EXPECT_EQ(rank_sets(fresh, topology),
            (std::vector<std::vector<std::int32_t>>{{0, 7}, {1, 6}, {2, 5}, {3, 4}}));
  // Rotated: rank r + 1 holds what fresh rank r holds; slots within a rank
  // reversed.
  std::vector<std::int32_t> owner(8);
  const std::vector<std::int32_t> fresh_owner = slot_experts(fresh.layer(0), topology);
  for (std::int64_t p = 0; p < 8; ++p) {
    const std::int64_t rank = (p / 2 + 1) % 4;
    owner[static_cast<std::size_t>(rank * 2 + (1 - p % 2))] = fresh_owner[p];
  }
  std::swap(*std::find(owner.begin(), owner.end(), 7), *std::find(owner.begin(), owner.end(), 3));
  ReplicaSlots rows(8);
  for (std::int32_t p = 0; p < 8; ++p) rows[owner[p]].push_back(p);
  const LayeredTable previous = make_layered_table({rows}, 0);

  PlanOptions replan = options;
  replan.previous = &previous;
  const LayeredTable replanned = plan(windows, replan);
  expect_valid(replanned, 4, 2);
  std::vector<std::vector<std::int32_t>> want = rank_sets(fresh, topology);
  std::vector<std::vector<std::int32_t>> got = rank_sets(replanned, topology);
  std::sort(want.begin(), want.end());
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, want) << "the same placement up to rank order";
  EXPECT_EQ(diff_tables(previous.layer(0), replanned.layer(0), topology).slots_changed, 2);
  EXPECT_GT(diff_tables(previous.layer(0), fresh.layer(0), topology).slots_changed, 2);
}

// A previous table with two replicas of one expert on a rank is not one
// FlashLB keeps, even when it balances well.
TEST(FlashLB, ReplansAPreviousThatSharesARank) {
  const std::vector<ExpertLoad> windows = global_windows({{10, 10, 10, 10}});
  // Expert 0 on slots 0 and 1 (both rank 0), expert 3 on slots 4 and 5 (rank 2).
  ReplicaSlots rows = {{0, 1}, {2}, {3}, {4, 5}};
  const LayeredTable previous = make_layered_table({rows}, 0);
  PlanOptions options = flashlb_options(3, 2);
  options.previous = &previous;
  const LayeredTable table = plan(windows, options);
  expect_valid(table, 3, 2);
  EXPECT_NE(table.values, previous.values);
}

TEST(FlashLB, TooFewColumnsIsAClearError) {
  PlanOptions options = flashlb_options(4, 2);
  options.num_columns = 2;  // one replica per expert: 4 of the 8 slots
  try {
    plan(global_windows({{1, 2, 3, 4}}), options);
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what())
                  .find("plan(): FlashLB can give each of the 4 experts at "
                        "most 1 replicas"),
              std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace moe_eplb

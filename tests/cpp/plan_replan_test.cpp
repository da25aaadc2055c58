// Migration-aware replanning: the cap is exact on slots whose (expert,
// position in its row) changed, slots_changed is that count, a cap of 0
// returns the previous rows unchanged (order included: it is the routing),
// staying experts keep their slots, invalid previous tables are repaired or
// refused, outputs are valid, and drifting traffic is rebalanced with few
// moves.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/table.hpp"
#include "plan_test_util.hpp"

namespace moe_eplb {
namespace {

// (W, E) counts: popularity 1 / (rank + 1) under a shuffled order, times
// per-rank log-normal preferences; `shift` rotates the popularity order, and
// `drift_steps` steps of a log-normal random walk (sigma 0.2) move each
// expert's popularity.
ExpertLoad skewed_window(std::int64_t world_size, std::int64_t num_experts, std::uint64_t seed,
                         std::int64_t shift = 0, std::int64_t drift_steps = 0) {
  std::mt19937_64 rng(seed), drift_rng(99);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> drift(static_cast<std::size_t>(num_experts), 0.0);
  for (std::int64_t step = 0; step < drift_steps; ++step) {
    for (double& value : drift) value += 0.2 * normal(drift_rng);
  }
  ExpertLoad load{1, world_size, num_experts, {}};
  for (std::int64_t w = 0; w < world_size; ++w) {
    for (std::int64_t e = 0; e < num_experts; ++e) {
      const std::int64_t popularity_rank = (e * 7 + shift) % num_experts;
      load.counts.push_back(std::round(2e4 / static_cast<double>(popularity_rank + 1) *
                                       std::exp(drift[e] + 0.3 * normal(rng))));
    }
  }
  return load;
}

using test::options_for;

// Valid, every slot once, no dead replica or two replicas on a rank.
void expect_valid(const LayeredTable& table, const ExpertLoad& load, const PlanOptions& options) {
  for (std::int64_t layer = 0; layer < table.num_layers; ++layer) {
    ValidateTableOptions validate;
    validate.check_rank_mode_reachability = options.rule == ReplicaRule::kAscendRank;
    const TableReport report =
        validate_table(table.layer(layer), options.world_size,
                       options.world_size * options.slots_per_rank, validate);
    EXPECT_TRUE(report.ok() && report.total_warnings == 0) << report.to_string();
    AnalyzeOptions analyze;
    analyze.world_size = options.world_size;
    analyze.slots_per_rank = options.slots_per_rank;
    analyze.rule = options.rule;
    const BalanceReport balance =
        analyze_load(table.layer(layer), load.layer(layer), load.num_source_ranks, analyze);
    EXPECT_EQ(balance.dead_replicas, 0);
    EXPECT_EQ(balance.replicas_sharing_rank, 0);
    EXPECT_EQ(balance.unused_slots, 0);
  }
}

// Live entries of row e of a layer: [count, slots in order].
std::vector<std::int32_t> live_row(const LayeredTable& table, std::int64_t layer, std::int64_t e) {
  const TableView view = table.layer(layer);
  std::vector<std::int32_t> row;
  for (std::int64_t j = 0; j <= view.at(e, 0); ++j) row.push_back(view.at(e, j));
  return row;
}

// Slots whose (expert, position in the expert's row) differs between two
// layers, by brute force over the rows.
std::int64_t changed_slots(const LayeredTable& from, const LayeredTable& to, std::int64_t layer,
                           std::int64_t num_slots) {
  const auto replicas = [&](const LayeredTable& table) {
    std::vector<std::pair<std::int64_t, std::int64_t>> of_slot(static_cast<std::size_t>(num_slots),
                                                               {-1, -1});
    for (std::int64_t e = 0; e < table.num_experts; ++e) {
      const std::vector<std::int32_t> row = live_row(table, layer, e);
      for (std::size_t j = 1; j < row.size(); ++j) {
        of_slot[static_cast<std::size_t>(row[j])] = {e, static_cast<std::int64_t>(j)};
      }
    }
    return of_slot;
  };
  const auto before = replicas(from), after = replicas(to);
  std::int64_t changed = 0;
  for (std::size_t p = 0; p < before.size(); ++p) changed += before[p] != after[p];
  return changed;
}

double balance_of(const LayeredTable& table, const ExpertLoad& load, const PlanOptions& options) {
  AnalyzeOptions analyze;
  analyze.world_size = options.world_size;
  analyze.slots_per_rank = options.slots_per_rank;
  analyze.rule = options.rule;
  return analyze_load(table.layer(0), load.layer(0), load.num_source_ranks, analyze).max_over_mean;
}

struct Shape {
  std::int64_t world_size, slots_per_rank, num_experts;
};
const Shape kShapes[] = {{4, 3, 10}, {8, 5, 32}, {6, 4, 20}, {16, 9, 128}, {3, 2, 5}};

// The cap holds exactly on slots whose (expert, position) changed,
// slots_changed is that count (diff_tables()'s slots_rerouted), and every output is
// valid, in both modes, on old tables planned for other traffic.
TEST(PlanReplan, CapIsRespectedAndReported) {
  for (const Shape& shape : kShapes) {
    for (BalanceMode mode : {BalanceMode::kByRank, BalanceMode::kByToken}) {
      const PlanOptions fresh = options_for(shape.world_size, shape.slots_per_rank, mode);
      const LayeredTable old_table =
          plan(skewed_window(shape.world_size, shape.num_experts, 1), fresh);
      const ExpertLoad moved = skewed_window(shape.world_size, shape.num_experts, 2, 3);
      for (std::int64_t cap : {0, 1, 2, 5, -1}) {
        SCOPED_TRACE("W " + std::to_string(shape.world_size) + " E " +
                     std::to_string(shape.num_experts) + " mode " +
                     std::to_string(static_cast<int>(mode)) + " cap " + std::to_string(cap));
        PlanOptions options = fresh;
        options.previous = &old_table;
        options.max_moves = cap;
        PlanReport report;
        const LayeredTable table = plan({moved}, options, &report);
        expect_valid(table, moved, options);
        const std::int64_t changed =
            changed_slots(old_table, table, 0, shape.world_size * shape.slots_per_rank);
        EXPECT_EQ(report.layers[0].slots_changed, changed);
        EXPECT_EQ(
            diff_tables(old_table.layer(0), table.layer(0), options.topology()).slots_rerouted,
            changed);
        if (cap >= 0) {
          EXPECT_LE(changed, cap);
        }
        // Moves only where they buy balance: never worse than keeping the
        // old table (prediction on persistent statistics).
        if (cap != 0) {
          EXPECT_LE(report.layers[0].predicted_max_over_mean, [&] {
            PlanOptions keep = options;
            keep.max_moves = 0;
            PlanReport kept;
            plan({moved}, keep, &kept);
            return kept.layers[0].predicted_max_over_mean;
          }() + 1e-9);
        }
      }
    }
  }
}

// A cap of 0 returns the previous rows exactly: every slot keeps its expert
// and every replica its position (a reorder would change rank-mode routing,
// the order of a row being which source group each replica serves). Old
// tables planned on other traffic and windows, so that a reorder would pay.
TEST(PlanReplan, ZeroCapKeepsEveryRow) {
  for (const Shape& shape : kShapes) {
    for (BalanceMode mode : {BalanceMode::kByRank, BalanceMode::kByToken}) {
      for (std::uint64_t seed : {3, 21}) {
        SCOPED_TRACE("W " + std::to_string(shape.world_size) + " mode " +
                     std::to_string(static_cast<int>(mode)) + " seed " + std::to_string(seed));
        const PlanOptions fresh = options_for(shape.world_size, shape.slots_per_rank, mode);
        const LayeredTable old_table =
            plan(skewed_window(shape.world_size, shape.num_experts, seed), fresh);
        PlanOptions options = fresh;
        options.previous = &old_table;
        options.max_moves = 0;
        PlanReport report;
        const LayeredTable table =
            plan({skewed_window(shape.world_size, shape.num_experts, seed + 1, 5),
                  skewed_window(shape.world_size, shape.num_experts, seed + 2, 1)},
                 options, &report);
        for (std::int64_t e = 0; e < shape.num_experts; ++e) {
          EXPECT_EQ(live_row(table, 0, e), live_row(old_table, 0, e)) << "expert " << e;
        }
        EXPECT_EQ(report.layers[0].slots_changed, 0);
      }
    }
  }
}

// An expert that stays on a rank keeps its slot there (no copy needed).
TEST(PlanReplan, StayingExpertsKeepTheirSlots) {
  for (const Shape& shape : kShapes) {
    for (std::int64_t cap : {3, -1}) {
      const PlanOptions fresh = options_for(shape.world_size, shape.slots_per_rank);
      const LayeredTable old_table =
          plan(skewed_window(shape.world_size, shape.num_experts, 5), fresh);
      PlanOptions options = fresh;
      options.previous = &old_table;
      options.max_moves = cap;
      const LayeredTable table =
          plan(skewed_window(shape.world_size, shape.num_experts, 6, 2), options);
      const Topology topology = options.topology();
      const auto before = slot_experts(old_table.layer(0), topology);
      const auto after = slot_experts(table.layer(0), topology);
      const std::int64_t slots = shape.slots_per_rank;
      for (std::size_t p = 0; p < after.size(); ++p) {
        const std::int64_t first = static_cast<std::int64_t>(p) / slots * slots;
        bool held_before = false;
        for (std::int64_t q = first; q < first + slots; ++q) held_before |= before[q] == after[p];
        if (held_before) {
          EXPECT_EQ(before[p], after[p]) << "slot " << p << " cap " << cap;
        }
      }
    }
  }
}

// A high move cost buys no moves; with none the plan balances like a fresh
// one (within 1%).
TEST(PlanReplan, MoveCostTradesBalanceForMoves) {
  const PlanOptions fresh = options_for(16, 9);
  const LayeredTable old_table = plan(skewed_window(16, 128, 7), fresh);
  const ExpertLoad moved = skewed_window(16, 128, 8, 11);
  PlanOptions options = fresh;
  options.previous = &old_table;
  options.move_cost = 10.0;
  PlanReport report;
  plan({moved}, options, &report);
  EXPECT_EQ(report.layers[0].slots_changed, 0);
  options.move_cost = 0.0;
  const LayeredTable free_table = plan({moved}, options, &report);
  EXPECT_LE(balance_of(free_table, moved, options),
            1.01 * balance_of(plan({moved}, fresh), moved, fresh));
}

// Drifting popularity: 10% of the slots per rebalance recover most of the
// balance a fresh plan reaches.
TEST(PlanReplan, DriftIsRebalancedWithFewMoves) {
  const PlanOptions fresh = options_for(16, 9);
  LayeredTable current = plan(skewed_window(16, 128, 9), fresh);
  double capped_sum = 0.0, fresh_sum = 0.0, kept_sum = 0.0;
  for (std::int64_t step = 1; step <= 4; ++step) {
    const ExpertLoad window = skewed_window(16, 128, 9, 0, step);
    PlanOptions options = fresh;
    options.previous = &current;
    options.max_moves = 14;  // 10% of 144
    const LayeredTable next = plan({window}, options);
    EXPECT_LE(diff_tables(current.layer(0), next.layer(0), options.topology()).slots_changed, 14);
    capped_sum += balance_of(next, window, fresh);
    fresh_sum += balance_of(plan({window}, fresh), window, fresh);
    kept_sum += balance_of(current, window, fresh);
    current = next;
  }
  EXPECT_LT(capped_sum, kept_sum);
  EXPECT_LE(capped_sum, 1.03 * fresh_sum);
}

// Previous tables that rank mode cannot keep are repaired: a count that
// leaves a replica dead, two replicas of an expert on one rank.
TEST(PlanReplan, InvalidForRankModePreviousIsRepaired) {
  // W = 4, S = 3, E = 5: expert 0 has 3 replicas (3 is not live for W = 4:
  // ceil(4 / ceil(4 / 3)) = 2), expert 1 two replicas on rank 0.
  LayeredTable old_table{
      1, 5, 4, {3, 0, 3, 6, 2, 1, 2, -1, 1, 4, -1, -1, 1, 5, -1, -1, 1, 7, -1, -1}};
  // Slots 8..11 are unused: also free to fill.
  const ExpertLoad load = skewed_window(4, 5, 10);
  PlanOptions options = options_for(4, 3);
  options.previous = &old_table;
  PlanReport report;
  const LayeredTable table = plan({load}, options, &report);
  expect_valid(table, load, options);
  EXPECT_GE(report.layers[0].slots_changed, 4);  // the four unused slots at least
  options.max_moves = 1;
  try {
    plan({load}, options);
    ADD_FAILURE() << "a cap below the forced repairs must be refused";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("changed slots before any rebalancing"),
              std::string::npos)
        << error.what();
  }
}

TEST(PlanReplan, Deterministic) {
  const PlanOptions fresh = options_for(8, 5);
  const LayeredTable old_table = plan(skewed_window(8, 32, 11), fresh);
  PlanOptions options = fresh;
  options.previous = &old_table;
  options.max_moves = 4;
  const ExpertLoad load = skewed_window(8, 32, 12, 3);
  EXPECT_EQ(plan({load}, options).values, plan({load}, options).values);
}

void expect_plan_error(const ExpertLoad& load, const PlanOptions& options,
                       const std::string& pattern) {
  try {
    plan({load}, options);
    ADD_FAILURE() << "expected an error containing: " << pattern;
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(pattern), std::string::npos) << error.what();
  }
}

TEST(PlanReplan, BadOptionsAreClearErrors) {
  const ExpertLoad load = skewed_window(2, 4, 13);
  const LayeredTable old_table = plan(load, options_for(2, 3));
  PlanOptions options = options_for(2, 3);
  options.previous = &old_table;
  options.max_moves = -2;
  expect_plan_error(load, options, "plan(): max_moves must be -1 (no cap) or at least 0, got -2");
  options.max_moves = -1;
  options.move_cost = -0.5;
  expect_plan_error(load, options, "plan(): move_cost must be a finite number >= 0, got -0.5");
  options.move_cost = 0.0;
  const LayeredTable other_experts = plan(skewed_window(2, 5, 14), options_for(2, 3));
  options.previous = &other_experts;
  expect_plan_error(load, options, "plan(): previous table has 1 layers of 5 experts");
  const LayeredTable out_of_range{1, 4, 2, {1, 0, 1, 1, 1, 2, 1, 9}};
  options.previous = &out_of_range;
  expect_plan_error(load, options,
                    "plan(): previous table, layer 0 is not a valid table for 2 ranks");
  options.previous = &old_table;
  options.max_moves = 2;
  options.algorithm = PlanAlgorithm::kDeepSeek;
  expect_plan_error(load, options, "only honoured by the moe-eplb (rule-aware) algorithm");
}

}  // namespace
}  // namespace moe_eplb

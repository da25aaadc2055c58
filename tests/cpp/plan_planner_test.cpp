// The planner: invariants on many random and adversarial inputs, errors for
// impossible requests, the DeepSeek baseline on a worked example, and the
// rule-aware planner beating it under rank mode.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/table.hpp"
#include "plan_test_util.hpp"

namespace moe_eplb {
namespace {

// Per-rank load (W, E) with a skewed, rank-dependent popularity.
ExpertLoad skewed_load(std::int64_t num_layers, std::int64_t world_size, std::int64_t num_experts,
                       std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  ExpertLoad load;
  load.num_layers = num_layers;
  load.num_source_ranks = world_size;
  load.num_experts = num_experts;
  for (std::int64_t i = 0; i < num_layers * world_size * num_experts; ++i) {
    const std::int64_t expert = i % num_experts;
    const double popularity =
        1000.0 / static_cast<double>(1 + (expert * 7919 + seed) % num_experts);
    const double noise = static_cast<double>(rng() % 1000) / 1000.0;
    load.counts.push_back(std::floor(popularity * (0.5 + noise)));
  }
  return load;
}

ExpertLoad filled_load(std::int64_t world_size, std::int64_t num_experts, double value) {
  ExpertLoad load;
  load.num_layers = 1;
  load.num_source_ranks = world_size;
  load.num_experts = num_experts;
  load.counts.assign(static_cast<std::size_t>(world_size * num_experts), value);
  return load;
}

using test::options_for;

// Every invariant a plan promises, for every layer.
void expect_valid_plan(const LayeredTable& table, const ExpertLoad& load,
                       const PlanOptions& options) {
  const std::int64_t world_size = options.world_size;
  const std::int64_t slots_per_rank = options.slots_per_rank;
  const std::int64_t num_physical = world_size * slots_per_rank;
  ASSERT_EQ(table.num_layers, load.num_layers);
  ASSERT_EQ(table.num_experts, load.num_experts);
  if (options.num_columns != 0) {
    ASSERT_EQ(table.num_columns, options.num_columns);
  }
  for (std::int64_t layer = 0; layer < table.num_layers; ++layer) {
    SCOPED_TRACE("layer " + std::to_string(layer));
    const TableView view = table.layer(layer);
    const TableReport report = validate_table(view, world_size, num_physical);
    ASSERT_TRUE(report.ok()) << report.to_string();
    std::vector<int> claims(static_cast<std::size_t>(num_physical), 0);
    std::int64_t dead = 0;
    for (std::int64_t e = 0; e < view.num_experts; ++e) {
      const std::int64_t count = view.at(e, 0);
      ASSERT_GE(count, 1);
      ASSERT_LE(count, world_size);
      std::set<std::int64_t> ranks;
      for (std::int64_t column = 1; column <= count; ++column) {
        const std::int32_t slot = view.at(e, column);
        ++claims[slot];
        ranks.insert(slot / slots_per_rank);
        if (ranks_served_by_replica(count, column, world_size) == 0) ++dead;
      }
      EXPECT_EQ(static_cast<std::int64_t>(ranks.size()), count)
          << "expert " << e << " has two replicas on one rank";
      for (std::int64_t column = count + 1; column < view.num_columns; ++column) {
        EXPECT_EQ(view.at(e, column), -1) << "padding of row " << e;
      }
    }
    for (std::int64_t slot = 0; slot < num_physical; ++slot) {
      EXPECT_EQ(claims[slot], 1) << "slot " << slot << " must be used exactly once";
    }
    // Leftover slots only become dead replicas when every expert already
    // has two or more replicas (more than 2E slots): 1 -> 2 is always live.
    if (options.rule == ReplicaRule::kAscendRank && num_physical <= 2 * load.num_experts) {
      EXPECT_EQ(dead, 0) << "no replica may be dead in rank mode";
    }
  }
}

double rank_mode_balance(const LayeredTable& table, const ExpertLoad& load,
                         const PlanOptions& options, BalanceMode mode = BalanceMode::kByRank) {
  AnalyzeOptions analyze;
  analyze.world_size = options.world_size;
  analyze.slots_per_rank = options.slots_per_rank;
  analyze.rule = rule_of_balance_mode(mode);
  return analyze_load(table.layer(0), load.layer(0), load.num_source_ranks, analyze).max_over_mean;
}

struct Shape {
  std::int64_t world_size, slots_per_rank, num_experts;
};

// Sweep: powers of two and not, E divisible by W and not, little and much
// redundancy, both modes, per-rank and global statistics.
TEST(PlanPlanner, InvariantsOnRandomLoads) {
  const Shape shapes[] = {{2, 3, 4},  {4, 3, 8},   {5, 3, 12},   {6, 2, 8},    {7, 4, 20},
                          {8, 9, 64}, {12, 5, 50}, {16, 9, 128}, {32, 9, 256}, {48, 9, 384},
                          {3, 5, 10}, {4, 8, 8},   {5, 5, 5},    {1, 4, 4},    {64, 5, 256}};
  for (const Shape& shape : shapes) {
    for (BalanceMode mode : {BalanceMode::kByRank, BalanceMode::kByToken}) {
      for (bool per_rank : {true, false}) {
        const std::uint64_t seed =
            static_cast<std::uint64_t>(shape.world_size * 1000 + shape.num_experts) +
            (per_rank ? 7 : 0);
        SCOPED_TRACE(testing::Message()
                     << "W=" << shape.world_size << " S=" << shape.slots_per_rank
                     << " E=" << shape.num_experts << " mode=" << static_cast<int>(mode)
                     << " per_rank=" << per_rank << " seed=" << seed);
        ExpertLoad load = skewed_load(1, shape.world_size, shape.num_experts, seed);
        if (!per_rank) load = global_load(load);
        PlanOptions options = options_for(shape.world_size, shape.slots_per_rank, mode);
        expect_valid_plan(plan(load, options), load, options);
        options.algorithm = PlanAlgorithm::kDeepSeek;
        const LayeredTable baseline = plan(load, options);
        EXPECT_TRUE(validate_table(baseline.layer(0), -1).ok());
      }
    }
  }
}

// Random small shapes and sparse, heavy-tailed loads (zeros, huge values,
// fractions), with random column caps and node sizes.
TEST(PlanPlanner, InvariantsOnRandomShapes) {
  for (std::uint64_t seed = 0; seed < 80; ++seed) {
    std::mt19937_64 rng(seed);
    const auto pick = [&rng](std::int64_t low, std::int64_t high) {
      return low + static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(high - low + 1));
    };
    const std::int64_t world_size = pick(1, 12);
    const std::int64_t num_experts = pick(1, 40);
    const std::int64_t min_slots = (num_experts + world_size - 1) / world_size;
    const std::int64_t slots_per_rank = std::min(num_experts, min_slots + pick(0, 3));
    PlanOptions options = options_for(world_size, slots_per_rank,
                                      seed % 2 ? BalanceMode::kByToken : BalanceMode::kByRank);
    if (world_size % 2 == 0 && seed % 3 == 0) options.ranks_per_node = 2;
    const std::int64_t needed = (world_size * slots_per_rank + num_experts - 1) / num_experts;
    if (seed % 5 == 0) options.num_columns = std::min(world_size, needed + pick(0, 2)) + 1;
    ExpertLoad load = filled_load(world_size, num_experts, 0.0);
    for (double& value : load.counts) {
      const std::uint64_t roll = rng() % 10;
      value = roll < 4 ? 0.0 : roll < 9 ? static_cast<double>(rng() % 100) / 7.0 : 1e9;
    }
    if (seed % 4 == 1) load = global_load(load);
    SCOPED_TRACE(testing::Message()
                 << "seed=" << seed << " W=" << world_size << " S=" << slots_per_rank
                 << " E=" << num_experts << " F=" << options.num_columns);
    expect_valid_plan(plan(load, options), load, options);
  }
}

// widest_plan_columns() holds every plan: a plan that fits on its own is
// never wider, and planning with it gives the same table padded to it.
TEST(PlanPlanner, WidestPlanColumnsHoldsEveryPlan) {
  for (std::uint64_t seed = 0; seed < 60; ++seed) {
    std::mt19937_64 rng(seed);
    const std::int64_t world_size = 1 + static_cast<std::int64_t>(rng() % 9);
    const std::int64_t num_experts = 1 + static_cast<std::int64_t>(rng() % 30);
    const std::int64_t min_slots = (num_experts + world_size - 1) / world_size;
    const std::int64_t slots_per_rank =
        std::min(num_experts, min_slots + static_cast<std::int64_t>(rng() % 4));
    PlanOptions options = options_for(world_size, slots_per_rank,
                                      seed % 2 ? BalanceMode::kByToken : BalanceMode::kByRank);
    // One very hot expert: it takes as many replicas as the rules allow.
    ExpertLoad load = filled_load(world_size, num_experts, 1.0);
    load.counts[static_cast<std::size_t>(seed % num_experts)] = 1e9;
    SCOPED_TRACE(testing::Message() << "seed=" << seed << " W=" << world_size
                                    << " S=" << slots_per_rank << " E=" << num_experts);
    const std::int64_t widest = widest_plan_columns(num_experts, world_size, slots_per_rank);
    EXPECT_EQ(widest, 1 + std::min(world_size, world_size * slots_per_rank - num_experts + 1));
    const LayeredTable fitted = plan(load, options);
    EXPECT_LE(fitted.num_columns, widest);
    options.num_columns = widest;
    const LayeredTable padded = plan(load, options);
    ASSERT_EQ(padded.num_columns, widest);
    for (std::int64_t e = 0; e < num_experts; ++e) {
      for (std::int64_t j = 0; j < widest; ++j) {
        const std::int32_t expected = j < fitted.num_columns ? fitted.layer(0).at(e, j) : -1;
        EXPECT_EQ(padded.layer(0).at(e, j), expected) << "row " << e << " column " << j;
      }
    }
  }
  EXPECT_THROW(widest_plan_columns(9, 2, 4), Error);  // more experts than slots
  EXPECT_THROW(widest_plan_columns(3, 2, 4), Error);  // more slots per rank than experts
  EXPECT_THROW(widest_plan_columns(4, 0, 4), Error);
}

// No traffic at all: still a complete, valid plan with the spare slots spread.
TEST(PlanPlanner, AllZeroLoad) {
  const ExpertLoad load = filled_load(8, 32, 0.0);
  const PlanOptions options = options_for(8, 5);
  const LayeredTable table = plan(load, options);
  expect_valid_plan(table, load, options);
  for (std::int64_t e = 0; e < 32; ++e) EXPECT_LE(table.layer(0).at(e, 0), 2);
}

// One expert with all the traffic gets as many replicas as there are ranks,
// each serving one rank's tokens, and the balance is perfect.
TEST(PlanPlanner, OneExpertTakesAllTraffic) {
  ExpertLoad load = filled_load(8, 16, 0.0);
  for (std::int64_t rank = 0; rank < 8; ++rank) load.counts[rank * 16 + 5] = 1000.0;
  const PlanOptions options = options_for(8, 3);
  const LayeredTable table = plan(load, options);
  expect_valid_plan(table, load, options);
  EXPECT_EQ(table.layer(0).at(5, 0), 8);
  EXPECT_DOUBLE_EQ(rank_mode_balance(table, load, options), 1.0);
}

// Every rank holds every expert (S = E): all counts equal world_size.
TEST(PlanPlanner, MoreSlotsThanNeeded) {
  const ExpertLoad load = skewed_load(1, 4, 8, 3);
  const PlanOptions options = options_for(4, 8);
  const LayeredTable table = plan(load, options);
  expect_valid_plan(table, load, options);
  for (std::int64_t e = 0; e < 8; ++e) EXPECT_EQ(table.layer(0).at(e, 0), 4);
}

// W = 5 has live counts {1, 2, 3, 5}: 4 would leave replica 4 dead.
TEST(PlanPlanner, RankModeUsesOnlyLiveCounts) {
  EXPECT_EQ(live_replica_counts(5), (std::vector<std::int64_t>{1, 2, 3, 5}));
  EXPECT_EQ(live_replica_counts(32),
            (std::vector<std::int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 11, 16, 32}));
  EXPECT_EQ(live_replica_counts(1), (std::vector<std::int64_t>{1}));
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    const ExpertLoad load = skewed_load(1, 5, 6, seed);
    const PlanOptions options = options_for(5, 2);
    const LayeredTable table = plan(load, options);
    expect_valid_plan(table, load, options);
    for (std::int64_t e = 0; e < 6; ++e) EXPECT_NE(table.layer(0).at(e, 0), 4) << "seed " << seed;
  }
}

// When no split into live counts fills every slot exactly, the leftovers
// become dead replicas that leave the live groups unchanged.
TEST(PlanPlanner, UnavoidableLeftoversAreHarmless) {
  // W=5 (live counts 1, 2, 3, 5), 3 experts, 10 slots: 3+3+3 leaves one slot
  // that no live count can take; either another split or a harmless dead
  // replica, but every selectable replica gets traffic.
  const ExpertLoad load = filled_load(5, 3, 10.0);
  const PlanOptions options = options_for(5, 2);
  const LayeredTable table = plan(load, options);
  expect_valid_plan(table, load, options);
  AnalyzeOptions analyze;
  analyze.world_size = 5;
  analyze.slots_per_rank = 2;
  const BalanceReport report = analyze_load(table.layer(0), load.layer(0), 5, analyze);
  EXPECT_EQ(report.idle_replicas, 0);
}

TEST(PlanPlanner, ColumnsCapReplicaCounts) {
  const ExpertLoad load = skewed_load(1, 16, 32, 5);
  PlanOptions options = options_for(16, 4);
  options.num_columns = 4;  // at most 3 replicas
  const LayeredTable table = plan(load, options);
  expect_valid_plan(table, load, options);
  for (std::int64_t e = 0; e < 32; ++e) EXPECT_LE(table.layer(0).at(e, 0), 3);
}

TEST(PlanPlanner, PerLayerLoadsGiveOneTablePerLayer) {
  const ExpertLoad load = skewed_load(3, 8, 16, 9);
  const PlanOptions options = options_for(8, 3);
  const LayeredTable table = plan(load, options);
  expect_valid_plan(table, load, options);
  EXPECT_EQ(table.num_layers, 3);
}

TEST(PlanPlanner, Deterministic) {
  const ExpertLoad load = skewed_load(2, 16, 64, 11);
  PlanOptions options = options_for(16, 5);
  options.ranks_per_node = 4;
  EXPECT_EQ(plan(load, options).values, plan(load, options).values);
}

// Layers planned side by side give the table and report of one thread, for
// every algorithm, rule, statistics and thread count (more threads than layers
// included), with several windows and with a previous table.
TEST(PlanPlanner, ThreadsGiveTheTableOfOneThread) {
  for (const PlanAlgorithm algorithm :
       {PlanAlgorithm::kRuleAware, PlanAlgorithm::kDeepSeek, PlanAlgorithm::kFlashLB}) {
    for (const BalanceMode mode : {BalanceMode::kByRank, BalanceMode::kByToken}) {
      for (const bool global : {false, true}) {
        SCOPED_TRACE(testing::Message() << plan_algorithm_name(algorithm) << " mode "
                                        << static_cast<int>(mode) << " global " << global);
        std::vector<ExpertLoad> windows;
        for (std::uint64_t seed = 0; seed < 3; ++seed) {
          const ExpertLoad load = skewed_load(7, 16, 48, 100 + seed);
          windows.push_back(global ? global_load(load) : load);
        }
        PlanOptions options = options_for(16, 4, mode);
        options.ranks_per_node = 4;
        options.algorithm = algorithm;
        options.threads = 1;
        PlanReport serial_report;
        const LayeredTable serial = plan(windows, options, &serial_report);
        LayeredTable previous;
        if (algorithm == PlanAlgorithm::kRuleAware) {
          previous = plan(std::vector<ExpertLoad>{windows.front()}, options);
        }
        for (const std::int64_t threads : {0, 2, 3, 64}) {
          SCOPED_TRACE(testing::Message() << "threads " << threads);
          options.threads = threads;
          options.previous = nullptr;
          PlanReport report;
          EXPECT_EQ(plan(windows, options, &report).values, serial.values);
          ASSERT_EQ(report.layers.size(), serial_report.layers.size());
          for (std::size_t layer = 0; layer < report.layers.size(); ++layer) {
            EXPECT_EQ(report.layers[layer].persistence, serial_report.layers[layer].persistence);
            EXPECT_EQ(report.layers[layer].predicted_max_over_mean,
                      serial_report.layers[layer].predicted_max_over_mean);
          }
          if (algorithm == PlanAlgorithm::kRuleAware) {
            options.previous = &previous;
            options.max_moves = 6;
            PlanOptions one = options;
            one.threads = 1;
            EXPECT_EQ(plan(windows, options).values, plan(windows, one).values);
            options.max_moves = -1;
          }
        }
      }
    }
  }
}

// An error in any layer is the one a single thread meets first: the lowest
// layer's, here the first of seven that all fail.
TEST(PlanPlanner, ThreadsReportTheFirstLayersError) {
  const ExpertLoad load = skewed_load(7, 4, 8, 3);
  PlanOptions options = options_for(4, 3);
  options.algorithm = PlanAlgorithm::kDeepSeek;
  options.num_columns = 2;
  for (const std::int64_t threads : {1, 4}) {
    options.threads = threads;
    try {
      plan(load, options);
      ADD_FAILURE() << "no error with threads " << threads;
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find("gives an expert of layer 0 "), std::string::npos)
          << error.what();
    }
  }
}

// Under rank mode, on the statistics it planned on, the rule-aware plan is
// never worse than DeepSeek's (which assumes an even split), and never has
// dead replicas or replicas sharing a rank.
TEST(PlanPlanner, BeatsDeepSeekUnderRankMode) {
  const Shape shapes[] = {{8, 3, 16}, {16, 9, 128}, {32, 9, 256}, {6, 2, 8}, {12, 5, 40}};
  for (const Shape& shape : shapes) {
    for (std::uint64_t seed = 0; seed < 3; ++seed) {
      SCOPED_TRACE(testing::Message()
                   << "W=" << shape.world_size << " E=" << shape.num_experts << " seed=" << seed);
      const ExpertLoad load = skewed_load(1, shape.world_size, shape.num_experts, seed);
      PlanOptions options = options_for(shape.world_size, shape.slots_per_rank);
      const double ours = rank_mode_balance(plan(load, options), load, options);
      options.algorithm = PlanAlgorithm::kDeepSeek;
      const double deepseek = rank_mode_balance(plan(load, options), load, options);
      EXPECT_LE(ours, deepseek + 1e-12);
    }
  }
}

// Token mode splits evenly, so the plan balances load / count there.
TEST(PlanPlanner, TokenModePlanBalancesEvenSplit) {
  const ExpertLoad load = skewed_load(1, 16, 64, 21);
  const PlanOptions options = options_for(16, 6, BalanceMode::kByToken);
  const LayeredTable table = plan(load, options);
  expect_valid_plan(table, load, options);
  EXPECT_LT(rank_mode_balance(table, load, options, BalanceMode::kByToken), 1.02);
}

// With nodes given, replicas move next to the ranks that send them traffic
// when that costs no balance: more tokens stay on their node than without.
TEST(PlanPlanner, LocalityIsATieBreakerThatCostsNoBalance) {
  const ExpertLoad load = skewed_load(1, 32, 256, 4);
  PlanOptions options = options_for(32, 9);
  AnalyzeOptions analyze;
  analyze.world_size = 32;
  analyze.slots_per_rank = 9;
  analyze.ranks_per_node = 8;
  const BalanceReport flat = analyze_load(plan(load, options).layer(0), load.layer(0), 32, analyze);
  options.ranks_per_node = 8;
  const BalanceReport local =
      analyze_load(plan(load, options).layer(0), load.layer(0), 32, analyze);
  EXPECT_GT(local.local_node_share, flat.local_node_share);
  EXPECT_LE(local.max_over_mean, flat.max_over_mean + 1e-9);
}

// DeepSeek's algorithm by hand: weights [10, 1, 1, 1], 2 GPUs x 3 slots.
// Replication gives expert 0 three replicas (10 > 10/2 > 1); packing by
// load / count puts two of them on GPU 0, the weakness the rule-aware
// planner avoids.
TEST(PlanPlanner, DeepSeekBaselineWorkedExample) {
  ExpertLoad load;
  load.num_layers = 1;
  load.num_source_ranks = 1;
  load.num_experts = 4;
  load.counts = {10, 1, 1, 1};
  PlanOptions options = options_for(2, 3);
  options.algorithm = PlanAlgorithm::kDeepSeek;
  const LayeredTable table = plan(load, options);
  // Packing order: the three 3.33 replicas (GPU 0, 1, 0), then the 1s (GPU 1, 1, 0).
  const std::vector<std::int32_t> expected = {3, 0, 3,  1,   //
                                              1, 4, -1, -1,  //
                                              1, 5, -1, -1,  //
                                              1, 2, -1, -1};
  EXPECT_EQ(table.values, expected);
}

// Hierarchical policy: with 2 groups on 2 nodes, every expert's replicas
// stay inside its group's node.
TEST(PlanPlanner, DeepSeekHierarchicalKeepsGroupsOnNodes) {
  const ExpertLoad load = global_load(skewed_load(1, 8, 16, 2));
  PlanOptions options = options_for(8, 3);
  options.algorithm = PlanAlgorithm::kDeepSeek;
  options.ranks_per_node = 4;
  options.num_groups = 2;
  const LayeredTable table = plan(load, options);
  const TableView view = table.layer(0);
  for (std::int64_t e = 0; e < 16; ++e) {
    std::set<std::int64_t> nodes;
    for (std::int64_t column = 1; column <= view.at(e, 0); ++column) {
      nodes.insert(view.at(e, column) / 3 / 4);
    }
    EXPECT_EQ(nodes.size(), 1u) << "expert " << e;
  }
}

TEST(PlanPlanner, NoRedundancyTableSpreadsExperts) {
  const LayeredTable table = no_redundancy_table(10, 4);  // 3 slots per rank
  const TableView view = table.layer(0);
  const std::vector<std::int32_t> ranks_expected = {0, 0, 1, 1, 1, 2, 2, 3, 3, 3};
  for (std::int64_t e = 0; e < 10; ++e) {
    EXPECT_EQ(view.at(e, 0), 1);
    EXPECT_EQ(view.at(e, 1) / 3, ranks_expected[e]) << "expert " << e;
  }
  EXPECT_TRUE(validate_table(view, 4, 12).ok());
}

// Impossible requests: each with the message it must produce.
TEST(PlanPlanner, ImpossibleRequestsAreClearErrors) {
  const ExpertLoad load = skewed_load(1, 4, 8, 1);
  struct Case {
    const char* what;
    PlanOptions options;
    const char* message;
  };
  PlanOptions base = options_for(4, 3);
  std::vector<Case> cases;
  cases.push_back({"fewer slots than experts", options_for(4, 1),
                   "plan(): world_size 4 x slots_per_rank 1 = 4 physical slots cannot hold 8 "
                   "experts"});
  cases.push_back({"slots per rank above E", options_for(4, 9),
                   "plan(): slots_per_rank 9 is more than the 8 experts"});
  cases.push_back({"zero slots", options_for(4, 0),
                   "plan(): slots_per_rank must be in 1..536870911 for world_size 4"});
  PlanOptions node = base;
  node.ranks_per_node = 3;
  cases.push_back({"ranks per node", node,
                   "plan(): ranks_per_node must be 0 (one node) or divide world_size 4, got 3"});
  PlanOptions columns = base;
  columns.num_columns = 2;
  cases.push_back({"columns", columns, "plan(): num_columns 2 allows at most 1 replicas"});
  PlanOptions threads = base;
  threads.threads = -1;
  cases.push_back({"threads", threads,
                   "plan(): threads must be 0 (one per hardware thread) or at least 1, got -1"});
  PlanOptions world = options_for(8, 3);
  cases.push_back({"world size vs load", world,
                   "plan(): load has 4 source ranks per layer, expected world_size 8"});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    try {
      plan(load, c.options);
      ADD_FAILURE() << "no error";
    } catch (const Error& error) {
      EXPECT_EQ(error.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(error.what()).find(c.message), std::string::npos) << error.what();
    }
  }
}

}  // namespace
}  // namespace moe_eplb

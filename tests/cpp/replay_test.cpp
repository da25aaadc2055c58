// replay() (plan/replay.hpp) and analyze_layers(): what `moe-eplb replay` and
// the benchmarks print is computed here, checked against a restatement.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "moe_eplb/plan/replay.hpp"
#include "moe_eplb/plan/scenario.hpp"

namespace moe_eplb {
namespace {

// Rebalancing every other window on the last 2: every policy's series has one
// entry per scored window, moves only after a rebalance (not the first), the
// never policy plans once, and each balance is analyze_layers() of the table
// then in force on the next window (checked for the last window).
TEST(Replay, SeriesFollowTheSchedule) {
  ScenarioSpec spec = find_scenario("mixed-mixtral-ep6");
  spec.tokens_per_rank = 256;
  const std::vector<ExpertLoad> windows = generate_windows(spec, 0, 6);
  ReplayOptions options;
  options.topology = {spec.world_size, spec.slots_per_rank, spec.ranks_per_node};
  options.every = 2;
  options.history = 2;
  options.max_moves = 2;
  std::vector<std::int64_t> progress;
  options.progress = [&](std::int64_t scored, std::int64_t total) {
    EXPECT_EQ(total, 5);
    progress.push_back(scored);
  };
  const ReplayResult result = replay(windows, options, default_replay_policies(2));
  EXPECT_EQ(result.scored_windows, (std::vector<std::int64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(result.rebalanced, (std::vector<bool>{false, false, true, false, true}));
  EXPECT_EQ(progress, result.scored_windows);
  ASSERT_EQ(result.policies.size(), 5u);
  AnalyzeOptions analyze;
  analyze.world_size = spec.world_size;
  analyze.slots_per_rank = spec.slots_per_rank;
  analyze.ranks_per_node = spec.ranks_per_node;
  for (const PolicyReplay& replayed : result.policies) {
    SCOPED_TRACE(replayed.policy.name);
    ASSERT_EQ(replayed.balance.size(), 5u);
    ASSERT_EQ(replayed.slots_changed.size(), 5u);
    for (std::size_t i = 0; i < 5; ++i) {
      const bool moved = result.rebalanced[i] && replayed.policy.rebalances;
      EXPECT_EQ(std::isfinite(replayed.slots_changed[i]), moved) << i;
      EXPECT_GE(replayed.balance[i], 1.0);
    }
    EXPECT_EQ(replayed.plan_seconds.size(), replayed.policy.rebalances ? 2u : 0u);
    EXPECT_DOUBLE_EQ(replayed.balance[4], analyze_layers(replayed.table, windows[5], analyze).mean);
  }
  const PolicyReplay& capped = result.policies[4];
  EXPECT_EQ(capped.policy.name, "moe-eplb-capped");
  EXPECT_LE(max_of(capped.slots_changed), 2.0);
  EXPECT_TRUE(std::isnan(mean_of({std::nan(""), std::nan("")})));
  EXPECT_DOUBLE_EQ(mean_of({1.0, std::nan(""), 3.0}), 2.0);
  EXPECT_DOUBLE_EQ(max_of({1.0, std::nan(""), 3.0}), 3.0);
}

TEST(Replay, BadInputsAreClearErrors) {
  ScenarioSpec spec = find_scenario("mixed-mixtral-ep6");
  spec.tokens_per_rank = 64;
  const std::vector<ExpertLoad> windows = generate_windows(spec, 0, 2);
  ReplayOptions options;
  options.topology = {spec.world_size, spec.slots_per_rank, 0};
  const auto message = [&](std::vector<ExpertLoad> loads, ReplayOptions o) {
    try {
      replay(loads, o, default_replay_policies(1));
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message({windows[0]}, options),
            "replay(): needs at least 2 windows (plan on one, score on the next), got 1");
  ReplayOptions every = options;
  every.every = 0;
  EXPECT_EQ(message(windows, every), "replay(): every must be 1 or more, got 0");
  ReplayOptions topology = options;
  topology.topology.ranks_per_node = 4;
  EXPECT_EQ(message(windows, topology),
            "replay(): ranks_per_node must be 0 (one node) or divide world_size 6, got 4");
  std::vector<ExpertLoad> mixed = windows;
  mixed[1] = global_load(mixed[1]);
  EXPECT_NE(message(mixed, options).find("replay(): load window 1 is (1 layers, 1 source ranks"),
            std::string::npos);
}

// One table layer serves every load layer; one per layer pairs them.
TEST(Replay, AnalyzeLayersMeanAndWorst) {
  const std::vector<std::int32_t> values = {1, 0, 1, 1, 1, 1, 1, 0};  // (2, 2, 2): layer 1 swapped
  const LayeredTable tables{2, 2, 2, values};
  ExpertLoad load;
  load.num_layers = 2;
  load.num_source_ranks = 1;
  load.num_experts = 2;
  load.counts = {3, 1, 1, 1};  // layer 0: 3:1 -> max/mean 1.5; layer 1: even
  AnalyzeOptions options;
  options.world_size = 2;
  options.slots_per_rank = 1;
  const LayersBalance both = analyze_layers(tables, load, options);
  EXPECT_EQ(both.max_over_mean, (std::vector<double>{1.5, 1.0}));
  EXPECT_DOUBLE_EQ(both.mean, 1.25);
  EXPECT_DOUBLE_EQ(both.worst, 1.5);
  const LayeredTable first{1, 2, 2, {1, 0, 1, 1}};
  EXPECT_EQ(analyze_layers(first, load, options).max_over_mean, (std::vector<double>{1.5, 1.0}));
  const LayeredTable three{3, 2, 2, {1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1}};
  EXPECT_THROW(analyze_layers(three, load, options), Error);
}

}  // namespace
}  // namespace moe_eplb

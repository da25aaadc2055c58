// The scenario generator: deterministic, windows that differ, top-K distinct
// experts per token, padding marked inactive, a suite that covers the shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/scenario.hpp"

namespace moe_eplb {
namespace {

TEST(Scenario, DeterministicAndWindowsDiffer) {
  ScenarioSpec spec = demo_scenario();
  spec.tokens_per_rank = 64;
  const RoutingTrace first = generate_trace(spec, 0);
  EXPECT_EQ(generate_trace(spec, 0).expert_ids, first.expert_ids);
  EXPECT_NE(generate_trace(spec, 1).expert_ids, first.expert_ids);
  spec.seed += 1;
  EXPECT_NE(generate_trace(spec, 0).expert_ids, first.expert_ids);
}

TEST(Scenario, TokensChooseDistinctExpertsAndPaddingIsMasked) {
  for (ScenarioSpec spec : scenario_suite()) {
    SCOPED_TRACE(spec.name);
    spec.tokens_per_rank = 50;
    spec.token_variation = 0.5;
    const RoutingTrace trace = generate_trace(spec, 0);
    ASSERT_EQ(trace.active_mask.size(), static_cast<std::size_t>(spec.world_size * 50));
    for (std::int64_t rank = 0; rank < spec.world_size; ++rank) {
      const std::uint8_t* mask = trace.rank_mask(rank);
      EXPECT_TRUE(std::is_sorted(mask, mask + 50, [](auto a, auto b) { return a > b; }))
          << "active tokens must come first";
      EXPECT_EQ(mask[0], 1);
      for (std::int64_t b = 0; b < 50; ++b) {
        const std::int32_t* row = trace.expert_ids.data() + (rank * 50 + b) * spec.top_k;
        std::set<std::int32_t> chosen(row, row + spec.top_k);
        EXPECT_EQ(static_cast<std::int64_t>(chosen.size()), spec.top_k);
        EXPECT_GE(*chosen.begin(), 0);
        EXPECT_LT(*chosen.rbegin(), spec.num_experts);
      }
    }
  }
}

// A hot expert and K close to E still give distinct picks (the fallback path).
TEST(Scenario, HotExpertWithTopKNearE) {
  ScenarioSpec spec = find_scenario("mixtral-ep8-hot");
  spec.top_k = 7;
  spec.hot_expert = 0.9;
  spec.tokens_per_rank = 20;
  const RoutingTrace trace = generate_trace(spec, 0);
  for (std::int64_t t = 0; t < spec.world_size * 20; ++t) {
    std::set<std::int32_t> chosen(trace.expert_ids.begin() + t * 7,
                                  trace.expert_ids.begin() + (t + 1) * 7);
    EXPECT_EQ(chosen.size(), 7u);
  }
}

TEST(Scenario, SuiteCoversTheModelShapes) {
  std::set<std::string> names;
  std::set<std::int64_t> experts;
  bool odd_world = false, hot = false, lognormal = false;
  for (const ScenarioSpec& spec : scenario_suite()) {
    EXPECT_TRUE(names.insert(spec.name).second) << spec.name;
    experts.insert(spec.num_experts);
    odd_world |= (spec.world_size & (spec.world_size - 1)) != 0;
    hot |= spec.hot_expert > 0;
    lognormal |= spec.popularity == Popularity::kLogNormal;
    EXPECT_EQ(find_scenario(spec.name).seed, spec.seed);
  }
  EXPECT_EQ(experts, (std::set<std::int64_t>{8, 128, 256, 384}));
  EXPECT_TRUE(odd_world && hot && lognormal);
  EXPECT_EQ(demo_scenario().num_experts, 256);
  EXPECT_EQ(demo_scenario().world_size, 32);
  EXPECT_EQ(demo_scenario().slots_per_rank, 9);
}

TEST(Scenario, BadSpecsAreClearErrors) {
  ScenarioSpec spec = demo_scenario();
  spec.top_k = 300;
  try {
    generate_trace(spec, 0);
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("generate_trace(): top_k must be in 1..256"),
              std::string::npos)
        << error.what();
  }
  try {
    find_scenario("nope");
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("unknown scenario 'nope', expected one of "),
              std::string::npos);
  }
}

}  // namespace
}  // namespace moe_eplb

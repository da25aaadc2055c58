// The scenario generator: deterministic, windows that differ, top-K distinct
// experts per token, padding marked inactive, a suite that covers the shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/scenario.hpp"
#include "moe_eplb/table.hpp"

namespace moe_eplb {
namespace {

std::uint64_t fnv1a(const std::vector<std::int32_t>& values) {
  std::uint64_t hash = 1469598103934665603ull;
  for (std::int32_t value : values) {
    hash ^= static_cast<std::uint32_t>(value);
    hash *= 1099511628211ull;
  }
  return hash;
}

double correlation(const std::vector<double>& a, const std::vector<double>& b) {
  const double n = static_cast<double>(a.size());
  const double mean_a = std::accumulate(a.begin(), a.end(), 0.0) / n;
  const double mean_b = std::accumulate(b.begin(), b.end(), 0.0) / n;
  double ab = 0.0, aa = 0.0, bb = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ab += (a[i] - mean_a) * (b[i] - mean_b);
    aa += (a[i] - mean_a) * (a[i] - mean_a);
    bb += (b[i] - mean_b) * (b[i] - mean_b);
  }
  return ab / std::sqrt(aa * bb);
}

double standard_deviation(const std::vector<double>& values) {
  const double n = static_cast<double>(values.size());
  const double mean = std::accumulate(values.begin(), values.end(), 0.0) / n;
  double sum = 0.0;
  for (double value : values) sum += (value - mean) * (value - mean);
  return std::sqrt(sum / n);
}

// Each rank's log-preference for each expert relative to the mean over the
// ranks: rank_variation * (z - mean_r z), the popularity cancels.
std::vector<double> rank_deviations(const ScenarioSpec& spec, std::int64_t window) {
  const std::vector<double> weights = window_rank_weights(spec, window);
  std::vector<double> deviations(weights.size());
  for (std::int64_t e = 0; e < spec.num_experts; ++e) {
    double mean = 0.0;
    for (std::int64_t r = 0; r < spec.world_size; ++r) {
      mean += std::log(weights[r * spec.num_experts + e]) / static_cast<double>(spec.world_size);
    }
    for (std::int64_t r = 0; r < spec.world_size; ++r) {
      deviations[r * spec.num_experts + e] = std::log(weights[r * spec.num_experts + e]) - mean;
    }
  }
  return deviations;
}

TEST(Scenario, DeterministicAndWindowsDiffer) {
  ScenarioSpec spec = demo_scenario();
  spec.tokens_per_rank = 64;
  const RoutingTrace first = generate_trace(spec, 0);
  EXPECT_EQ(generate_trace(spec, 0).expert_ids, first.expert_ids);
  EXPECT_NE(generate_trace(spec, 1).expert_ids, first.expert_ids);
  spec.seed += 1;
  EXPECT_NE(generate_trace(spec, 0).expert_ids, first.expert_ids);
}

// Draw 0 is the scenario itself; other draws are other traffic of the same
// shape, each with its own seed; a negative draw is refused.
TEST(Scenario, DrawsAreIndependentWindowsOfTheSameShape) {
  const ScenarioSpec spec = find_scenario("drifting-mixtral-ep6");
  const ScenarioSpec same = scenario_draw(spec, 0);
  EXPECT_EQ(same.seed, spec.seed);
  EXPECT_EQ(generate_windows(same, 0, 2)[1].counts, generate_windows(spec, 0, 2)[1].counts);
  std::vector<std::uint64_t> seeds{spec.seed};
  for (std::int64_t draw = 1; draw < 6; ++draw) {
    const ScenarioSpec other = scenario_draw(spec, draw);
    EXPECT_EQ(other.name, spec.name);
    EXPECT_EQ(other.num_experts, spec.num_experts);
    EXPECT_EQ(other.drift, spec.drift);
    EXPECT_EQ(std::count(seeds.begin(), seeds.end(), other.seed), 0) << "draw " << draw;
    seeds.push_back(other.seed);
    EXPECT_NE(generate_windows(other, 0, 2)[1].counts, generate_windows(spec, 0, 2)[1].counts);
  }
  try {
    scenario_draw(spec, -1);
    ADD_FAILURE() << "no error for draw -1";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("scenario_draw(): draw must be >= 0, got -1"),
              std::string::npos)
        << error.what();
  }
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

// Guards the single-window suite's outputs across generator changes: the
// benchmarks and README numbers were measured on exactly these draws.
TEST(Scenario, ExistingScenariosKeepTheirDraws) {
  ScenarioSpec spec = demo_scenario();
  spec.tokens_per_rank = 64;
  EXPECT_EQ(fnv1a(generate_trace(spec, 0).expert_ids), 0xef710035f47df29bull);
  EXPECT_EQ(fnv1a(generate_trace(spec, 1).expert_ids), 0x74b02da0cfc4f618ull);
  // The explicit defaults are the old behaviour.
  spec.rank_persistence = 1.0;
  spec.drift = 0.0;
  EXPECT_EQ(fnv1a(generate_trace(spec, 1).expert_ids), 0x74b02da0cfc4f618ull);
}

// rank_persistence is the correlation of the per-rank preferences between
// two windows, at the same spread of preferences.
TEST(Scenario, PersistenceIsTheCorrelationOfPreferencesAcrossWindows) {
  ScenarioSpec spec = demo_scenario();  // 32 ranks x 256 experts, rank_variation 0.5
  spec.rank_persistence = 1.0;
  EXPECT_EQ(window_rank_weights(spec, 0), window_rank_weights(spec, 3));
  const double fixed_spread = standard_deviation(rank_deviations(spec, 0));
  for (double persistence : {0.0, 0.3, 0.5, 0.8}) {
    SCOPED_TRACE(persistence);
    spec.rank_persistence = persistence;
    const std::vector<double> first = rank_deviations(spec, 1);
    const std::vector<double> later = rank_deviations(spec, 2);
    // 8192 pairs: the sample correlation is within about 0.02 of the truth.
    EXPECT_NEAR(correlation(first, later), persistence, 0.04);
    EXPECT_NEAR(standard_deviation(first), fixed_spread, 0.03 * fixed_spread);
    EXPECT_NE(first, later);
  }
}

// Drift: each expert's log-popularity takes a random walk with per-window
// standard deviation `drift`; steps are independent; window 0 is unchanged.
TEST(Scenario, DriftIsARandomWalkOfLogPopularity) {
  ScenarioSpec spec = find_scenario("kimi-k2-ep64-zipf");  // 384 experts
  spec.rank_variation = 0.0;                               // rows = popularity
  const std::vector<double> still = window_rank_weights(spec, 0);
  spec.drift = 0.2;
  EXPECT_EQ(window_rank_weights(spec, 0), still);
  std::vector<std::vector<double>> log_weights;
  for (std::int64_t window = 0; window <= 3; ++window) {
    const std::vector<double> weights = window_rank_weights(spec, window);
    std::vector<double> logs;
    for (std::int64_t e = 0; e < spec.num_experts; ++e) {
      EXPECT_EQ(weights[e], weights[(spec.world_size - 1) * spec.num_experts + e]);
      logs.push_back(std::log(weights[e]));
    }
    log_weights.push_back(logs);
  }
  std::vector<std::vector<double>> steps;
  for (std::size_t t = 1; t < log_weights.size(); ++t) {
    std::vector<double> step;
    for (std::size_t e = 0; e < log_weights[t].size(); ++e) {
      step.push_back(log_weights[t][e] - log_weights[t - 1][e]);
    }
    // 384 normals: the sample deviation is within about 0.015 of 0.2.
    EXPECT_NEAR(standard_deviation(step), 0.2, 0.04) << "step " << t;
    steps.push_back(step);
  }
  EXPECT_NEAR(correlation(steps[0], steps[1]), 0.0, 0.2);
  EXPECT_NEAR(correlation(steps[1], steps[2]), 0.0, 0.2);
}

// Sampling noise: counts are multinomial draws from window_rank_weights()
// (top_k = 1 makes each token one draw), tokens_per_rank per window.
TEST(Scenario, WindowsCountDrawsFromTheStatedDistribution) {
  ScenarioSpec spec = find_scenario("transient-qwen3-ep16");
  spec.top_k = 1;
  spec.tokens_per_rank = 20000;
  const std::vector<ExpertLoad> windows = generate_windows(spec, 2, 2);
  ASSERT_EQ(windows.size(), 2u);
  for (std::size_t i = 0; i < windows.size(); ++i) {
    const ExpertLoad& load = windows[i];
    ASSERT_EQ(load.num_layers, 1);
    ASSERT_EQ(load.num_source_ranks, spec.world_size);
    ASSERT_EQ(load.num_experts, spec.num_experts);
    const std::vector<double> weights = window_rank_weights(spec, 2 + static_cast<std::int64_t>(i));
    for (std::int64_t r = 0; r < spec.world_size; ++r) {
      const double* row = weights.data() + r * spec.num_experts;
      const double total = std::accumulate(row, row + spec.num_experts, 0.0);
      double counted = 0.0;
      for (std::int64_t e = 0; e < spec.num_experts; ++e) {
        const double expected = 20000.0 * row[e] / total;
        const double count = load.counts[r * spec.num_experts + e];
        counted += count;
        EXPECT_LE(std::abs(count - expected), 5.0 * std::sqrt(expected) + 1.0)
            << "window " << 2 + i << " rank " << r << " expert " << e;
      }
      EXPECT_EQ(counted, 20000.0);
    }
  }
  // The same counts as recording generate_trace() by hand.
  LoadRecorder recorder(1, spec.world_size, spec.num_experts);
  recorder.record(0, generate_trace(spec, 3));
  EXPECT_EQ(recorder.load().counts, windows[1].counts);
  EXPECT_TRUE(generate_windows(spec, 0, 0).empty());
}

// Each expert's log-weight averaged over the ranks (popularity, drift and
// the mean of the ranks' preferences).
std::vector<double> common_log_weights(const ScenarioSpec& spec, std::int64_t window) {
  const std::vector<double> weights = window_rank_weights(spec, window);
  std::vector<double> common(static_cast<std::size_t>(spec.num_experts), 0.0);
  for (std::int64_t r = 0; r < spec.world_size; ++r) {
    for (std::int64_t e = 0; e < spec.num_experts; ++e) {
      common[e] +=
          std::log(weights[r * spec.num_experts + e]) / static_cast<double>(spec.world_size);
    }
  }
  return common;
}

// Each scenario of the multi-window suite generates what its family says,
// measured on its windows' distributions (window_rank_weights(), before
// sampling noise) rather than read back from its spec: the per-rank
// deviations have the stated spread and window-to-window correlation
// (transient 0, persistent 1, mixed in between), popularity moves by the
// stated drift per window (and not at all outside the drifting family), the
// large-noise families have sigma 1 routed top-1, the sparse one 512 tokens
// per rank, and every shape can be planned (valid plans in both modes).
TEST(Scenario, WindowSuiteFamiliesGenerateWhatTheySay) {
  std::map<std::string, int> families;
  std::set<std::string> names;
  for (const ScenarioSpec& spec : window_suite()) {
    SCOPED_TRACE(spec.name);
    ++families[spec.family];
    EXPECT_TRUE(names.insert(spec.name).second);
    EXPECT_EQ(find_scenario(spec.name).seed, spec.seed);
    const auto samples = static_cast<double>(spec.world_size * spec.num_experts);
    const double tolerance = 4.0 / std::sqrt(samples);  // four standard errors of a correlation
    // The spread of the per-rank preferences: sigma * sqrt(1 - 1/W) around
    // each expert's mean.
    const std::vector<double> first = rank_deviations(spec, 1), second = rank_deviations(spec, 2);
    const double spread = standard_deviation(first);
    const double expected_spread =
        spec.rank_variation * std::sqrt(1.0 - 1.0 / static_cast<double>(spec.world_size));
    EXPECT_NEAR(spread, expected_spread, 0.2 * expected_spread + 4.0 * tolerance);
    // Window-to-window correlation of the preferences, by family.
    const double persistence = correlation(first, second);
    if (spec.family == "transient" || spec.family == "noisy-transient" ||
        spec.family == "noisy-sparse") {
      EXPECT_NEAR(persistence, 0.0, tolerance);
    } else if (spec.family == "persistent" || spec.family == "noisy-persistent") {
      EXPECT_NEAR(persistence, 1.0, 1e-9);
    } else {
      EXPECT_GT(persistence, 0.2 - tolerance);
      EXPECT_LT(persistence, 0.8 + tolerance);
    }
    // Popularity drift: the common log-weight moves between windows by the
    // preferences' mean (sigma / sqrt(W) per window drawn) plus the drift.
    const std::vector<double> before = common_log_weights(spec, 1);
    const std::vector<double> after = common_log_weights(spec, 2);
    std::vector<double> step(before.size());
    for (std::size_t e = 0; e < step.size(); ++e) step[e] = after[e] - before[e];
    const double redrawn = spec.rank_variation * std::sqrt(2.0 * (1.0 - spec.rank_persistence) /
                                                           static_cast<double>(spec.world_size));
    const double expected_step = std::sqrt(spec.drift * spec.drift + redrawn * redrawn);
    EXPECT_NEAR(standard_deviation(step), expected_step,
                0.35 * expected_step + 1e-9 + 0.1 * spec.drift);
    EXPECT_EQ(spec.drift > 0.0, spec.family == "drifting");
    if (spec.family.rfind("noisy-", 0) == 0) {
      EXPECT_EQ(spec.rank_variation, 1.0);
      EXPECT_EQ(spec.top_k, 1);
    }
    EXPECT_EQ(spec.tokens_per_rank, spec.family == "noisy-sparse" ? 512 : 4096);
    // Plannable: valid tables in both modes from two small windows.
    ScenarioSpec small = spec;
    small.tokens_per_rank = 64;
    const std::vector<ExpertLoad> windows = generate_windows(small, 0, 2);
    for (BalanceMode mode : {BalanceMode::kByRank, BalanceMode::kByToken}) {
      const LayeredTable table = plan(windows, scenario_plan_options(small, mode));
      EXPECT_TRUE(
          validate_table(table.layer(0), spec.world_size, spec.world_size * spec.slots_per_rank)
              .ok());
    }
  }
  EXPECT_EQ(families, (std::map<std::string, int>{{"drifting", 5},
                                                  {"mixed", 5},
                                                  {"persistent", 5},
                                                  {"transient", 5},
                                                  {"noisy-transient", 2},
                                                  {"noisy-mixed", 2},
                                                  {"noisy-persistent", 2},
                                                  {"noisy-sparse", 2}}));
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
  const auto expect_error = [](const ScenarioSpec& bad, const std::string& message) {
    try {
      window_rank_weights(bad, 0);
      ADD_FAILURE() << "no error for " << message;
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(message), std::string::npos) << error.what();
    }
  };
  ScenarioSpec bad = demo_scenario();
  bad.rank_persistence = 1.5;
  expect_error(bad, "generate_trace(): rank_persistence must be in [0, 1], got 1.5");
  bad.rank_persistence = -0.1;
  expect_error(bad, "rank_persistence must be in [0, 1], got -0.1");
  bad = demo_scenario();
  bad.drift = -1.0;
  expect_error(bad, "generate_trace(): drift must be a finite number >= 0, got -1");
  bad.drift = std::nan("");
  expect_error(bad, "drift must be a finite number >= 0, got nan");
  try {
    generate_windows(demo_scenario(), 0, -2);
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(
        std::string(error.what()).find("generate_windows(): num_windows must be >= 0, got -2"),
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

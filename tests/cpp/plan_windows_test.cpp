// Planning on several windows: the persistence estimate on windows of known
// persistence, the forecast's shrinkage and drift tracking, the predicted
// max/mean against a Monte Carlo reference, errors, and valid plans.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/plan/scenario.hpp"
#include "moe_eplb/table.hpp"
#include "plan/forecast.hpp"
#include "plan/rule_model.hpp"
#include "plan_test_util.hpp"

namespace moe_eplb {
namespace {

// Windows of (W, E) counts: a Zipf-like popularity times per-rank log-normal
// preferences, a share `persistence` of which (in log variance) is fixed
// and the rest redrawn each window; counts scale * weight, no sampling
// noise unless `poisson`.
std::vector<ExpertLoad> preference_windows(std::int64_t world_size, std::int64_t num_experts,
                                           std::int64_t num_windows, double persistence,
                                           std::uint64_t seed, double scale = 1e6,
                                           bool poisson = false) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> fixed(static_cast<std::size_t>(world_size * num_experts));
  for (double& value : fixed) value = normal(rng);
  std::vector<ExpertLoad> windows;
  for (std::int64_t t = 0; t < num_windows; ++t) {
    ExpertLoad load;
    load.num_layers = 1;
    load.num_source_ranks = world_size;
    load.num_experts = num_experts;
    for (std::int64_t w = 0; w < world_size; ++w) {
      for (std::int64_t e = 0; e < num_experts; ++e) {
        const double preference = std::sqrt(persistence) * fixed[w * num_experts + e] +
                                  std::sqrt(1.0 - persistence) * normal(rng);
        const double mean = scale / static_cast<double>(e + 1) * std::exp(0.5 * preference);
        double count = std::round(mean);
        if (poisson) count = static_cast<double>(std::poisson_distribution<long>(mean)(rng));
        load.counts.push_back(count);
      }
    }
    windows.push_back(std::move(load));
  }
  return windows;
}

using test::options_for;

plan_detail::LayerRequest request_for(const std::vector<ExpertLoad>& windows,
                                      std::vector<double>& mean) {
  const ExpertLoad& first = windows.front();
  mean.assign(first.counts.size(), 0.0);
  for (const ExpertLoad& window : windows) {
    for (std::size_t i = 0; i < mean.size(); ++i) {
      mean[i] += window.counts[i] / static_cast<double>(windows.size());
    }
  }
  plan_detail::LayerRequest request;
  request.num_source_ranks = first.num_source_ranks;
  request.num_experts = first.num_experts;
  request.world_size = first.num_source_ranks;
  request.counts = mean.data();
  for (const ExpertLoad& window : windows) request.windows.push_back(window.layer(0));
  return request;
}

double persistence_of(const std::vector<ExpertLoad>& windows) {
  PlanReport report;
  plan(windows, options_for(windows.front().num_source_ranks, 3), &report);
  return report.layers.at(0).persistence;
}

// Preferences that never change persist fully; ones redrawn every window do
// not persist at all.
TEST(PlanWindows, PersistenceOfKnownWindows) {
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    EXPECT_GT(persistence_of(preference_windows(8, 16, 4, 1.0, seed)), 0.999);
    EXPECT_LT(persistence_of(preference_windows(8, 16, 4, 0.0, seed)), 0.15);
    // Half persists: the estimate lands near 0.5 (many (rank, expert) pairs).
    const double half = persistence_of(preference_windows(32, 64, 4, 0.5, seed));
    EXPECT_GT(half, 0.35);
    EXPECT_LT(half, 0.65);
  }
}

// Two windows with opposite deviations: the correlation is -1, clipped to 0.
TEST(PlanWindows, AntiCorrelatedWindowsClipToZero) {
  ExpertLoad a{1, 2, 2, {90, 10, 10, 90}};
  ExpertLoad b{1, 2, 2, {10, 90, 90, 10}};
  PlanReport report;
  plan({a, b, a, b}, options_for(2, 2), &report);
  EXPECT_EQ(report.layers[0].persistence, 0.0);
}

// One window: sampling noise alone persists nothing; strong deviations get
// the documented default share.
TEST(PlanWindows, OneWindowUsesTheConservativeDefault) {
  const auto strong = preference_windows(8, 16, 1, 1.0, 4);
  EXPECT_NEAR(persistence_of(strong), plan_detail::kSingleWindowPersistence, 0.01);
  ExpertLoad flat{1, 8, 16, {}};
  std::mt19937_64 rng(5);
  for (int i = 0; i < 8 * 16; ++i) {
    flat.counts.push_back(static_cast<double>(std::poisson_distribution<long>(400.0)(rng)));
  }
  EXPECT_LT(persistence_of({flat}), 0.1);
}

// Global counts have no per-rank deviations: persistence 1 by contract.
TEST(PlanWindows, GlobalCountsReportFullPersistence) {
  ExpertLoad g0{1, 1, 4, {9, 1, 1, 1}};
  ExpertLoad g1{1, 1, 4, {8, 2, 1, 1}};
  PlanReport report;
  plan({g0, g1}, options_for(2, 3), &report);
  EXPECT_EQ(report.layers[0].persistence, 1.0);
}

// Each source rank's share of all tokens, averaged over the windows.
std::vector<double> mean_rank_shares(const std::vector<ExpertLoad>& windows) {
  const std::int64_t num_ranks = windows[0].num_source_ranks, num_experts = windows[0].num_experts;
  std::vector<double> shares(static_cast<std::size_t>(num_ranks), 0.0);
  for (const ExpertLoad& window : windows) {
    double total = 0.0;
    for (double count : window.counts) total += count;
    for (std::int64_t w = 0; w < num_ranks; ++w) {
      for (std::int64_t e = 0; e < num_experts; ++e) {
        shares[w] +=
            window.counts[w * num_experts + e] / total / static_cast<double>(windows.size());
      }
    }
  }
  return shares;
}

// The forecast keeps the persisting deviation and drops the rest: with no
// persistence, every rank's expected count is the global share (its share
// of all tokens); with full persistence, the windows' own per-rank counts.
TEST(PlanWindows, ForecastShrinksTowardTheGlobalShare) {
  std::vector<double> mean;
  const auto transient = preference_windows(4, 6, 6, 0.0, 7);
  const auto request = request_for(transient, mean);
  const plan_detail::LayerForecast forecast = plan_detail::forecast_layer(request);
  ASSERT_LT(forecast.shrink, 0.2);
  const std::vector<double> shares = mean_rank_shares(transient);
  for (std::int64_t e = 0; e < 6; ++e) {
    double smallest = 1e300, largest = 0.0;
    for (std::int64_t w = 0; w < 4; ++w) {
      smallest = std::min(smallest, forecast.mean[w * 6 + e] / shares[w]);
      largest = std::max(largest, forecast.mean[w * 6 + e] / shares[w]);
    }
    EXPECT_LT(largest / smallest, 1.1) << "expert " << e << " keeps transient deviations";
  }
  const auto persistent = preference_windows(4, 6, 3, 1.0, 7);
  const auto request2 = request_for(persistent, mean);
  const plan_detail::LayerForecast forecast2 = plan_detail::forecast_layer(request2);
  EXPECT_GT(forecast2.shrink, 0.999);
  for (std::size_t i = 0; i < mean.size(); ++i) {
    EXPECT_NEAR(forecast2.mean[i], mean[i], 1e-6 * mean[i] + 1e-9) << "count " << i;
  }
}

// Popularity that moves steadily: the forecast follows the newest windows
// rather than the mean of all of them.
TEST(PlanWindows, ForecastFollowsDrift) {
  std::vector<ExpertLoad> windows;
  for (int t = 0; t < 6; ++t) {
    // Expert 0 grows 30% a window, expert 1 shrinks as much; 1e6 tokens.
    const double up = 1e5 * std::pow(1.3, t), down = 1e5 * std::pow(1.3, -t);
    windows.push_back(ExpertLoad{1, 1, 3, {up, down, 1e6 - up - down}});
  }
  std::vector<double> mean;
  const plan_detail::LayerForecast forecast =
      plan_detail::forecast_layer(request_for(windows, mean));
  EXPECT_GT(forecast.mean[0], 0.5 * (mean[0] + windows.back().counts[0]));
  EXPECT_LT(forecast.mean[1], 0.5 * (mean[1] + windows.back().counts[1]));
  // The same under an even split (token mode): the drift is established.
  plan_detail::LayerRequest token = request_for(windows, mean);
  token.rule = ReplicaRule::kAscendToken;
  const plan_detail::LayerForecast token_forecast = plan_detail::forecast_layer(token);
  EXPECT_GT(token_forecast.mean[0], 0.5 * (mean[0] + windows.back().counts[0]));
  EXPECT_LT(token_forecast.mean[1], 0.5 * (mean[1] + windows.back().counts[1]));
  // Unchanging windows: the plain mean.
  std::vector<ExpertLoad> still(4, ExpertLoad{1, 1, 3, {100, 200, 300}});
  const plan_detail::LayerForecast steady = plan_detail::forecast_layer(request_for(still, mean));
  for (int e = 0; e < 3; ++e) EXPECT_NEAR(steady.mean[e], 100.0 * (e + 1), 1e-9);
}

// Totals that only jitter (8 experts, 4 windows, 15% noise, no drift): the
// pooled drift estimate is then noise. Taken at face value it reads drift
// in 115 of these 200 draws (one expert carries most of it), trading the
// plain mean for the noisier latest windows; counted only beyond half its
// standard error, in 95.
TEST(PlanWindows, JitterWithoutDriftKeepsThePlainMean) {
  std::mt19937_64 rng(23);
  std::normal_distribution<double> normal(0.0, 1.0);
  int drifting = 0;
  constexpr int kDraws = 200;
  for (int draw = 0; draw < kDraws; ++draw) {
    std::vector<ExpertLoad> windows;
    for (int t = 0; t < 4; ++t) {
      ExpertLoad load{1, 1, 8, {}};
      for (int e = 0; e < 8; ++e) load.counts.push_back(1e5 / (e + 1) * (1.0 + 0.15 * normal(rng)));
      windows.push_back(std::move(load));
    }
    std::vector<double> mean;
    const plan_detail::LayerForecast forecast =
        plan_detail::forecast_layer(request_for(windows, mean));
    // The plain mean of the windows, each scaled to the mean window size.
    double mean_total = 0.0;
    for (double count : mean) mean_total += count;
    bool plain_mean = true;
    for (int e = 0; e < 8; ++e) {
      double level = 0.0;
      for (const ExpertLoad& window : windows) {
        double total = 0.0;
        for (double count : window.counts) total += count;
        level += window.counts[e] * mean_total / total / 4.0;
      }
      plain_mean = plain_mean && std::abs(forecast.mean[e] - level) <= 1e-9 * level;
    }
    if (!plain_mean) ++drifting;
  }
  EXPECT_LE(drifting, 105) << drifting << " of " << kDraws << " draws read noise as drift";
}

// Token mode (an even split: a replica gets 1 / c of its expert's total):
// windows whose totals only carry noise are planned on as their mean. 200
// draws of 4 windows of 8 source ranks x 32 experts with per-rank preferences
// redrawn every window and Poisson counts, no drift: a drift counted beyond
// half the spread of its estimate over the experts read noise as drift in 91
// of them (and the forecast then followed the newest windows); established
// only at 2 standard errors of what the noise model gives it, in 4.
TEST(PlanWindows, TokenModeNoiseAloneKeepsTheMean) {
  int followed = 0;
  constexpr int kDraws = 200;
  for (int draw = 0; draw < kDraws; ++draw) {
    const auto windows = preference_windows(8, 32, 4, 0.0, 1000 + draw, 2000.0, true);
    std::vector<double> mean;
    plan_detail::LayerRequest request = request_for(windows, mean);
    request.rule = ReplicaRule::kAscendToken;
    const std::vector<double> forecast = plan_detail::forecast_layer(request).mean;
    request.windows = {mean.data()};
    if (forecast != plan_detail::forecast_layer(request).mean) ++followed;
  }
  EXPECT_LE(followed, 10) << followed << " of " << kDraws << " draws read noise as drift";
}

// The suite's mixed-qwen3-ep12 (12 source ranks, transient per-rank
// preferences, no drift): on each of these draws the token-mode plan on the
// 4 windows is the plan on their mean. Draws 4 and 6 read noise as drift
// before, and their plans followed the newest windows.
TEST(PlanWindows, TokenModeWindowsWithoutDriftPlanAsTheirMean) {
  const ScenarioSpec scenario = find_scenario("mixed-qwen3-ep12");
  for (std::int64_t draw = 0; draw < 8; ++draw) {
    SCOPED_TRACE("draw " + std::to_string(draw));
    const ScenarioSpec spec = scenario_draw(scenario, draw);
    const std::vector<ExpertLoad> windows = generate_windows(spec, 0, 4);
    ExpertLoad mean = windows.front();
    for (std::size_t i = 0; i < mean.counts.size(); ++i) {
      double sum = 0.0;
      for (const ExpertLoad& window : windows) sum += window.counts[i];
      mean.counts[i] = sum / 4.0;
    }
    const PlanOptions options = scenario_plan_options(spec, BalanceMode::kByToken);
    EXPECT_EQ(plan(windows, options).values, plan({mean}, options).values);
  }
}

// forecast_balance() against a Monte Carlo reference of the busiest of
// independent normal ranks.
TEST(PlanWindows, PredictedMaxMatchesMonteCarlo) {
  std::mt19937_64 rng(11);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int trial = 0; trial < 4; ++trial) {
    std::vector<plan_detail::Load> ranks;
    const int num_ranks = 2 + trial * 10;
    for (int r = 0; r < num_ranks; ++r) {
      ranks.push_back({1000.0 + 50.0 * normal(rng), std::pow(10.0 + 30.0 * (r % 3), 2.0)});
    }
    const plan_detail::BalanceForecast predicted = plan_detail::forecast_balance(ranks);
    double total = 0.0;
    for (const auto& rank : ranks) total += rank.mean;
    const double mean = total / num_ranks;
    std::vector<double> maxima;
    for (int draw = 0; draw < 20000; ++draw) {
      double busiest = 0.0;
      for (const auto& rank : ranks) {
        busiest = std::max(busiest, rank.mean + std::sqrt(rank.variance) * normal(rng));
      }
      maxima.push_back(busiest / mean);
    }
    double expected = 0.0;
    for (double value : maxima) expected += value / static_cast<double>(maxima.size());
    std::sort(maxima.begin(), maxima.end());
    SCOPED_TRACE("ranks " + std::to_string(num_ranks));
    EXPECT_NEAR(predicted.expected, expected, 0.002);
    EXPECT_NEAR(predicted.low, maxima[maxima.size() * 16 / 100], 0.003);
    EXPECT_NEAR(predicted.high, maxima[maxima.size() * 84 / 100], 0.003);
  }
  // No noise: the busiest expected rank exactly.
  const auto exact = plan_detail::forecast_balance({{300.0, 0.0}, {100.0, 0.0}});
  EXPECT_DOUBLE_EQ(exact.expected, 1.5);
  EXPECT_DOUBLE_EQ(exact.low, 1.5);
  EXPECT_DOUBLE_EQ(exact.high, 1.5);
}

// With persistent preferences and little noise the prediction is the plan's
// max/mean on the same statistics, inside its interval.
TEST(PlanWindows, PredictionMatchesTheStatisticsWhenTheyPersist) {
  const auto windows = preference_windows(8, 32, 3, 1.0, 13, 1e5);
  for (BalanceMode mode : {BalanceMode::kByRank, BalanceMode::kByToken}) {
    PlanReport report;
    const PlanOptions options = options_for(8, 6, mode);
    const LayeredTable table = plan(windows, options, &report);
    AnalyzeOptions analyze;
    analyze.world_size = 8;
    analyze.slots_per_rank = 6;
    analyze.rule = rule_of_balance_mode(mode);
    const double actual =
        analyze_load(table.layer(0), windows[0].layer(0), 8, analyze).max_over_mean;
    const LayerPlanReport& layer = report.layers[0];
    EXPECT_NEAR(layer.predicted_max_over_mean, actual, 0.01);
    EXPECT_LE(layer.predicted_low, layer.predicted_max_over_mean);
    EXPECT_GE(layer.predicted_high, layer.predicted_max_over_mean);
    EXPECT_GE(layer.predicted_low, 1.0);
  }
}

// Planned on transient windows, the plan beats one that trusts the newest
// window's per-rank counts, scored on fresh windows (rank mode).
TEST(PlanWindows, TransientPreferencesAreNotOverfitted) {
  double shrunk = 0.0, overfitted = 0.0;
  for (std::uint64_t seed = 20; seed < 26; ++seed) {
    const auto windows = preference_windows(16, 64, 6, 0.0, seed, 2000.0, true);
    const std::vector<ExpertLoad> history(windows.begin(), windows.begin() + 4);
    const PlanOptions options = options_for(16, 5);
    const LayeredTable ours = plan(history, options);
    // Trusting the per-rank counts: the same window four times persists fully.
    const LayeredTable trusting = plan({history[3], history[3], history[3], history[3]}, options);
    AnalyzeOptions analyze;
    analyze.world_size = 16;
    analyze.slots_per_rank = 5;
    for (int t = 4; t < 6; ++t) {
      shrunk += analyze_load(ours.layer(0), windows[t].layer(0), 16, analyze).max_over_mean;
      overfitted += analyze_load(trusting.layer(0), windows[t].layer(0), 16, analyze).max_over_mean;
    }
  }
  EXPECT_LT(shrunk, overfitted);
}

TEST(PlanWindows, Deterministic) {
  const auto windows = preference_windows(8, 24, 4, 0.5, 30, 500.0, true);
  for (BalanceMode mode : {BalanceMode::kByRank, BalanceMode::kByToken}) {
    PlanReport first_report, second_report;
    const LayeredTable first = plan(windows, options_for(8, 4, mode), &first_report);
    const LayeredTable second = plan(windows, options_for(8, 4, mode), &second_report);
    EXPECT_EQ(first.values, second.values);
    EXPECT_EQ(first_report.layers[0].persistence, second_report.layers[0].persistence);
    EXPECT_EQ(first_report.layers[0].predicted_high, second_report.layers[0].predicted_high);
  }
}

// Valid plans on random window sets: every slot once, no two replicas of an
// expert on a rank, no dead replica in rank mode.
TEST(PlanWindows, PlansOnWindowsAreValid) {
  std::mt19937_64 rng(40);
  for (int trial = 0; trial < 30; ++trial) {
    const std::int64_t world_size = 1 + static_cast<std::int64_t>(rng() % 12);
    const std::int64_t num_experts = world_size + static_cast<std::int64_t>(rng() % 40);
    const std::int64_t slots_per_rank =
        (num_experts + world_size - 1) / world_size + static_cast<std::int64_t>(rng() % 3);
    if (slots_per_rank > num_experts || world_size * slots_per_rank > 2 * num_experts) continue;
    const auto windows =
        preference_windows(world_size, num_experts, 1 + rng() % 4,
                           static_cast<double>(rng() % 3) / 2.0, rng(), 300.0, true);
    for (BalanceMode mode : {BalanceMode::kByRank, BalanceMode::kByToken}) {
      SCOPED_TRACE("trial " + std::to_string(trial) + " W " + std::to_string(world_size) + " E " +
                   std::to_string(num_experts) + " S " + std::to_string(slots_per_rank));
      const PlanOptions options = options_for(world_size, slots_per_rank, mode);
      const LayeredTable table = plan(windows, options);
      ValidateTableOptions validate;
      validate.check_rank_mode_reachability = mode == BalanceMode::kByRank;
      const TableReport report =
          validate_table(table.layer(0), world_size, world_size * slots_per_rank, validate);
      EXPECT_TRUE(report.ok() && report.total_warnings == 0) << report.to_string();
      AnalyzeOptions analyze;
      analyze.world_size = world_size;
      analyze.slots_per_rank = slots_per_rank;
      analyze.rule = rule_of_balance_mode(mode);
      const BalanceReport balance =
          analyze_load(table.layer(0), windows[0].layer(0), world_size, analyze);
      EXPECT_EQ(balance.dead_replicas, 0);
      EXPECT_EQ(balance.replicas_sharing_rank, 0);
      EXPECT_EQ(balance.unused_slots, 0);
    }
  }
}

void expect_plan_error(const std::vector<ExpertLoad>& windows, const PlanOptions& options,
                       const std::string& pattern) {
  try {
    plan(windows, options);
    ADD_FAILURE() << "expected an error containing: " << pattern;
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(pattern), std::string::npos) << error.what();
  }
}

TEST(PlanWindows, BadWindowsAreClearErrors) {
  ExpertLoad per_rank{1, 2, 4, {5, 1, 1, 1, 1, 1, 1, 1}};
  ExpertLoad global{1, 1, 4, {5, 1, 1, 1}};
  ExpertLoad other_experts{1, 2, 3, {5, 1, 1, 1, 1, 1}};
  expect_plan_error({}, options_for(2, 3), "plan(): no load windows given");
  expect_plan_error({per_rank, global}, options_for(2, 3),
                    "plan(): load window 1 is (1 layers, 1 source ranks, 4 experts), but window "
                    "0 is (1, 2, 4); every window must have the same shape");
  expect_plan_error({per_rank, per_rank, other_experts}, options_for(2, 3), "load window 2 is");
  PlanOptions capped = options_for(2, 3);
  capped.max_moves = 2;
  expect_plan_error({per_rank}, capped, "max_moves and move_cost need the previous table");
  PlanOptions costly = options_for(2, 3);
  costly.move_cost = 0.5;
  expect_plan_error({per_rank}, costly, "max_moves and move_cost need the previous table");
}

}  // namespace
}  // namespace moe_eplb

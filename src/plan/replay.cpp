#include "moe_eplb/plan/replay.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/migration.hpp"

namespace moe_eplb {
namespace {

constexpr const char* kReplay = "replay()";
constexpr double kNone = std::numeric_limits<double>::quiet_NaN();

void check_replay(const std::vector<ExpertLoad>& windows, const ReplayOptions& options) {
  MOE_EPLB_CHECK(windows.size() >= 2, kReplay,
                 ": needs at least 2 windows (plan on one, score on the next), got ",
                 windows.size());
  check_same_shape(windows, kReplay);
  options.topology.check(kReplay);
  MOE_EPLB_CHECK(options.every >= 1, kReplay, ": every must be 1 or more, got ", options.every);
  MOE_EPLB_CHECK(options.history >= 1, kReplay, ": history must be 1 or more, got ",
                 options.history);
}

// Slots changed and experts received from `from` to `to`, over the layers.
std::pair<double, double> moves(const LayeredTable& from, const LayeredTable& to,
                                const Topology& topology) {
  std::int64_t changed = 0, received = 0;
  for (std::int64_t layer = 0; layer < to.num_layers; ++layer) {
    const TableDiff diff = diff_tables(from.layer(layer), to.layer(layer), topology);
    changed += diff.slots_changed;
    received += diff.experts_received;
  }
  return {static_cast<double>(changed), static_cast<double>(received)};
}

}  // namespace

std::vector<ReplayPolicy> default_replay_policies(std::int64_t max_moves) {
  std::vector<ReplayPolicy> policies(5);
  policies[0] = {"never",
                 "never rebalance: moe-eplb planned once on window 0, kept",
                 PlanAlgorithm::kRuleAware,
                 false,
                 false,
                 false};
  policies[1] = {"deepseek", "DeepSeek EPLB from scratch", PlanAlgorithm::kDeepSeek, true, false,
                 false};
  policies[2] = {"flashlb",
                 "FlashLB (replans degraded layers, matches slots)",
                 PlanAlgorithm::kFlashLB,
                 true,
                 true,
                 false};
  policies[3] = {"moe-eplb", "moe-eplb from scratch", PlanAlgorithm::kRuleAware, true, false,
                 false};
  policies[4] = {
      "moe-eplb-capped",
      "moe-eplb migration-aware, capped at " + std::to_string(max_moves) + " moves per layer",
      PlanAlgorithm::kRuleAware,
      true,
      true,
      true};
  return policies;
}

ReplayResult replay(const std::vector<ExpertLoad>& windows, const ReplayOptions& options,
                    const std::vector<ReplayPolicy>& policies) {
  check_replay(windows, options);
  const auto num_windows = static_cast<std::int64_t>(windows.size());
  PlanOptions base;
  base.world_size = options.topology.world_size;
  base.slots_per_rank = options.topology.slots_per_rank;
  base.ranks_per_node = options.topology.ranks_per_node;
  base.rule = options.rule;
  AnalyzeOptions analyze;
  analyze.world_size = options.topology.world_size;
  analyze.slots_per_rank = options.topology.slots_per_rank;
  analyze.ranks_per_node = options.topology.ranks_per_node;
  analyze.rule = options.rule;

  ReplayResult result;
  for (const ReplayPolicy& policy : policies)
    result.policies.push_back({policy, {}, {}, {}, {}, {}});
  for (std::int64_t t = 0; t + 1 < num_windows; ++t) {
    const bool rebalance = t % options.every == 0;
    if (rebalance) {
      const std::int64_t oldest = std::max<std::int64_t>(0, t - options.history + 1);
      const std::vector<ExpertLoad> history(windows.begin() + oldest, windows.begin() + t + 1);
      for (PolicyReplay& replayed : result.policies) {
        const ReplayPolicy& policy = replayed.policy;
        if (t > 0 && !policy.rebalances) continue;
        PlanOptions plan_options = base;
        plan_options.algorithm = policy.algorithm;
        if (t > 0 && policy.migration_aware) {
          plan_options.previous = &replayed.table;
          if (policy.capped && policy.algorithm == PlanAlgorithm::kRuleAware) {
            plan_options.max_moves = options.max_moves;
          }
        }
        const auto start = std::chrono::steady_clock::now();
        LayeredTable table = plan(history, plan_options);
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (t > 0) {
          const auto [changed, received] = moves(replayed.table, table, options.topology);
          replayed.slots_changed.push_back(changed);
          replayed.received.push_back(received);
          replayed.plan_seconds.push_back(seconds);
        }
        replayed.table = std::move(table);
      }
    }
    const ExpertLoad& next = windows[static_cast<std::size_t>(t + 1)];
    for (PolicyReplay& replayed : result.policies) {
      if (t == 0 || !rebalance || !replayed.policy.rebalances) {
        replayed.slots_changed.push_back(kNone);
        replayed.received.push_back(kNone);
      }
      replayed.balance.push_back(analyze_layers(replayed.table, next, analyze, kReplay).mean);
    }
    result.scored_windows.push_back(t + 1);
    result.rebalanced.push_back(rebalance && t > 0);
    if (options.progress) options.progress(t + 1, num_windows - 1);
  }
  return result;
}

double mean_of(const std::vector<double>& values) {
  double sum = 0.0;
  std::int64_t count = 0;
  for (const double value : values) {
    if (!std::isfinite(value)) continue;
    sum += value;
    ++count;
  }
  return count > 0 ? sum / static_cast<double>(count) : kNone;
}

double max_of(const std::vector<double>& values) {
  double result = kNone;
  for (const double value : values) {
    if (std::isfinite(value) && !(value <= result)) result = value;
  }
  return result;
}

}  // namespace moe_eplb

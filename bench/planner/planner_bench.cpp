// Planner scenario suite: plan on one window of statistics, score on the next
// windows' traffic routed through the real operator (update_expert, one call
// per source rank), moe-eplb vs DeepSeek's EPLB, both balance modes. Then the
// time to plan all 61 layers of a 256-expert model for EP 64.
//
//   moe_eplb_bench_planner [--quick]     (--quick: one scoring window, one timing run)
//
// Prints a Markdown table; bench/results/planner.md keeps a copy.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/plan/scenario.hpp"
#include "moe_eplb/table.hpp"

namespace {

using namespace moe_eplb;

// One placement scored under one mode.
struct Column {
  const char* label;
  const LayeredTable* table;
  BalanceMode mode;
  std::int64_t slots_per_rank;
};

struct ScenarioResult {
  std::vector<double> balance;  // per column: mean max/mean over the scoring windows
  BalanceReport deepseek_rank;  // structure of DeepSeek's table under rank mode
  BalanceReport ours_rank;
};

// A plan must be valid and warning-free (token-mode plans may use counts
// that rank mode would leave partly dead).
void check_valid(const LayeredTable& table, const ScenarioSpec& spec, BalanceMode mode) {
  ValidateTableOptions options;
  options.check_rank_mode_reachability = mode == BalanceMode::kByRank;
  const TableReport report = validate_table(table.layer(0), spec.world_size,
                                            spec.world_size * spec.slots_per_rank, options);
  if (!report.ok() || report.total_warnings != 0) {
    std::fprintf(stderr, "BAD plan for %s:\n%s", spec.name.c_str(), report.to_string().c_str());
    std::exit(1);
  }
}

ScenarioResult run_scenario(const ScenarioSpec& spec, int num_windows) {
  LoadRecorder recorder(1, spec.world_size, spec.num_experts);
  recorder.record(0, generate_trace(spec, 0));
  const ExpertLoad& load = recorder.load();
  const LayeredTable ours_rank = plan(load, scenario_plan_options(spec));
  const LayeredTable ours_token = plan(load, scenario_plan_options(spec, BalanceMode::kByToken));
  const LayeredTable deepseek =
      plan(load, scenario_plan_options(spec, BalanceMode::kByRank, PlanAlgorithm::kDeepSeek));
  check_valid(ours_rank, spec, BalanceMode::kByRank);
  check_valid(ours_token, spec, BalanceMode::kByToken);
  const LayeredTable none = no_redundancy_table(spec.num_experts, spec.world_size);

  const std::int64_t slots = spec.slots_per_rank;
  const Column columns[] = {
      {"none", &none, BalanceMode::kByRank,
       (spec.num_experts + spec.world_size - 1) / spec.world_size},
      {"deepseek rank", &deepseek, BalanceMode::kByRank, slots},
      {"ours rank", &ours_rank, BalanceMode::kByRank, slots},
      {"deepseek token", &deepseek, BalanceMode::kByToken, slots},
      {"ours token", &ours_token, BalanceMode::kByToken, slots},
  };
  ScenarioResult result;
  result.balance.assign(std::size(columns), 0.0);
  for (int window = 1; window <= num_windows; ++window) {
    const RoutingTrace trace = generate_trace(spec, window);
    for (std::size_t c = 0; c < std::size(columns); ++c) {
      AnalyzeOptions options = scenario_analyze_options(spec, columns[c].mode);
      options.slots_per_rank = columns[c].slots_per_rank;
      const BalanceReport report = analyze_trace(columns[c].table->layer(0), trace, options);
      result.balance[c] += report.max_over_mean / num_windows;
      if (c == 1) result.deepseek_rank = report;
      if (c == 2) result.ours_rank = report;
    }
  }
  return result;
}

double geomean(const std::vector<double>& values) {
  double log_sum = 0.0;
  for (double value : values) log_sum += std::log(value);
  return std::exp(log_sum / static_cast<double>(values.size()));
}

// 61 layers of a 256-expert model on EP 64 (5 slots per rank, 8 per node):
// per-rank statistics from short traces, then the median of several plans.
void time_full_model(int repetitions) {
  ScenarioSpec spec = find_scenario("deepseek-v3-ep64-zipf");
  spec.tokens_per_rank = 256;
  const std::int64_t num_layers = 61;
  LoadRecorder recorder(num_layers, spec.world_size, spec.num_experts);
  for (std::int64_t layer = 0; layer < num_layers; ++layer) {
    spec.seed = 1000 + static_cast<std::uint64_t>(layer);
    recorder.record(layer, generate_trace(spec, 0));
  }
  std::printf("| planner | 61 layers x 256 experts, EP 64 x 5 slots |\n|---|---:|\n");
  for (PlanAlgorithm algorithm : {PlanAlgorithm::kRuleAware, PlanAlgorithm::kDeepSeek}) {
    const PlanOptions options = scenario_plan_options(spec, BalanceMode::kByRank, algorithm);
    plan(recorder.load(), options);  // warm-up
    std::vector<double> seconds;
    for (int rep = 0; rep < repetitions; ++rep) {
      const auto start = std::chrono::steady_clock::now();
      const LayeredTable table = plan(recorder.load(), options);
      seconds.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      if (table.num_layers != num_layers) std::exit(1);
    }
    std::sort(seconds.begin(), seconds.end());
    std::printf("| %s | %.3f s (median of %d) |\n",
                algorithm == PlanAlgorithm::kRuleAware ? "moe-eplb" : "DeepSeek EPLB",
                seconds[seconds.size() / 2], repetitions);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const int num_windows = quick ? 1 : 3;
  std::printf(
      "max/mean per-rank load, planned on window 0, scored on window%s routed through "
      "update_expert() (mean of %d); 1.000 = perfect\n\n",
      quick ? " 1" : "s 1-3", num_windows);
  std::printf(
      "| scenario | E | K | EP x slots | no EPLB | DeepSeek, rank | moe-eplb, rank | "
      "DeepSeek, token | moe-eplb, token | dead / shared-rank replicas (DeepSeek; "
      "moe-eplb) |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::vector<std::vector<double>> columns(5);
  for (const ScenarioSpec& spec : scenario_suite()) {
    const ScenarioResult result = run_scenario(spec, num_windows);
    for (std::size_t c = 0; c < columns.size(); ++c) columns[c].push_back(result.balance[c]);
    std::printf(
        "| %s | %lld | %lld | %lld x %lld | %.3f | %.3f | **%.3f** | %.3f | **%.3f** | "
        "%lld / %lld; %lld / %lld |\n",
        spec.name.c_str(), static_cast<long long>(spec.num_experts),
        static_cast<long long>(spec.top_k), static_cast<long long>(spec.world_size),
        static_cast<long long>(spec.slots_per_rank), result.balance[0], result.balance[1],
        result.balance[2], result.balance[3], result.balance[4],
        static_cast<long long>(result.deepseek_rank.dead_replicas),
        static_cast<long long>(result.deepseek_rank.replicas_sharing_rank),
        static_cast<long long>(result.ours_rank.dead_replicas),
        static_cast<long long>(result.ours_rank.replicas_sharing_rank));
    std::fflush(stdout);
  }
  std::printf("| **geometric mean** | | | | %.3f | %.3f | **%.3f** | %.3f | **%.3f** | |\n\n",
              geomean(columns[0]), geomean(columns[1]), geomean(columns[2]), geomean(columns[3]),
              geomean(columns[4]));
  time_full_model(quick ? 1 : 5);
  return 0;
}

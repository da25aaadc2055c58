// moe-eplb demo: the whole job on a built-in scenario. Draw four windows of
// routing traffic, record per-rank loads of the first three with the
// operator's load counters, plan on them (DeepSeek's EPLB and moe-eplb, which
// estimates from several windows what persists), route every rank's tokens
// of the fourth window through update_expert(), and show the balance.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "balance_report.hpp"
#include "commands.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/plan/scenario.hpp"
#include "moe_eplb/plan/svg.hpp"
#include "options.hpp"
#include "plan_io.hpp"

namespace moe_eplb::cli {
namespace {

struct DemoOptions {
  std::string scenario = demo_scenario().name;
  std::string svg_path = "moe-eplb-demo.svg";
  std::string save_dir;
  std::int64_t tokens_per_rank = 0;
  std::uint64_t seed = 0;
  bool list = false;
};

// "[2/4] what ... done in 0.12 s" on stderr, so stdout stays the report.
class Progress {
 public:
  explicit Progress(int num_steps) : num_steps_(num_steps) {}
  void start(const std::string& what) {
    std::fflush(stdout);
    std::fprintf(stderr, "[%d/%d] %s ...", ++step_, num_steps_, what.c_str());
    std::fflush(stderr);
    started_ = std::chrono::steady_clock::now();
  }
  double done() {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    std::fprintf(stderr, " %.2f s\n", seconds);
    return seconds;
  }

 private:
  int num_steps_;
  int step_ = 0;
  std::chrono::steady_clock::time_point started_;
};

void list_scenarios() {
  for (const ScenarioSpec& spec : scenario_suite()) {
    std::printf("  %-28s %s: %lld experts, top-%lld, EP %lld x %lld slots\n", spec.name.c_str(),
                spec.description.c_str(), static_cast<long long>(spec.num_experts),
                static_cast<long long>(spec.top_k), static_cast<long long>(spec.world_size),
                static_cast<long long>(spec.slots_per_rank));
  }
}

// "Zipf 0.9 expert popularity, per-rank preferences (sigma 0.5), 4096 tokens per rank".
std::string describe_traffic(const ScenarioSpec& spec) {
  char text[256];
  std::snprintf(text, sizeof(text), "%s %.1f expert popularity",
                spec.popularity == Popularity::kZipf ? "Zipf" : "log-normal", spec.skew);
  std::string description = text;
  if (spec.hot_expert > 0) {
    std::snprintf(text, sizeof(text), ", one hot expert (first pick of %.0f%% of tokens)",
                  100 * spec.hot_expert);
    description += text;
  }
  if (spec.rank_variation > 0) {
    std::snprintf(text, sizeof(text), ", per-rank preferences (sigma %.1f)", spec.rank_variation);
    description += text;
  }
  description += ", " + std::to_string(spec.tokens_per_rank) + " tokens per rank";
  if (spec.token_variation > 0) {
    std::snprintf(text, sizeof(text), " (up to %.0f%% fewer on some)", 100 * spec.token_variation);
    description += text;
  }
  return description;
}

void save_inputs(const std::string& dir, const ScenarioSpec& spec, const ExpertLoad& load,
                 const RoutingTrace& next_window, const LayeredTable& ours,
                 const LayeredTable& deepseek) {
  const std::vector<std::int64_t> counts(load.counts.begin(), load.counts.end());
  const std::vector<std::int64_t> ids(next_window.expert_ids.begin(), next_window.expert_ids.end());
  OutputFiles outputs = {
      {dir + "/load.npy", int64_file({spec.world_size, spec.num_experts}, counts)},
      {dir + "/expert_ids.npy",
       int64_file({spec.world_size, spec.tokens_per_rank, spec.top_k}, ids)},
      {dir + "/table.npy", table_file(dir + "/table.npy", ours, true)},
      {dir + "/table_deepseek.npy", table_file(dir + "/table_deepseek.npy", deepseek, true)},
  };
  if (!next_window.active_mask.empty()) {
    const std::vector<std::int64_t> mask(next_window.active_mask.begin(),
                                         next_window.active_mask.end());
    outputs.emplace_back(dir + "/active_mask.npy",
                         int64_file({spec.world_size, spec.tokens_per_rank}, mask));
  }
  write_outputs(outputs);  // all of them or none
  const std::string mask_flag =
      next_window.active_mask.empty() ? "" : " --active-mask " + dir + "/active_mask.npy";
  std::printf(
      "\nsaved load.npy (the newest planning window's statistics), expert_ids.npy (the scored "
      "window's trace), table.npy "
      "(moe-eplb) and table_deepseek.npy in %s/; for example:\n"
      "  moe-eplb simulate --table %s/table.npy --expert-ids %s/expert_ids.npy%s "
      "--world-size %lld --slots-per-rank %lld --ranks-per-node %lld\n",
      dir.c_str(), dir.c_str(), dir.c_str(), mask_flag.c_str(),
      static_cast<long long>(spec.world_size), static_cast<long long>(spec.slots_per_rank),
      static_cast<long long>(spec.ranks_per_node));
}

// --save-dir must be an existing, writable folder: checked before the work.
void check_save_dir(const std::string& dir) {
  struct stat info {};
  MOE_EPLB_CHECK_CODE(::stat(dir.c_str(), &info) == 0, ErrorCode::kIo, "--save-dir ", dir, ": ",
                      std::strerror(errno), " (give an existing folder)");
  MOE_EPLB_CHECK_CODE(S_ISDIR(info.st_mode), ErrorCode::kIo, "--save-dir ", dir,
                      ": not a folder (give an existing folder)");
  MOE_EPLB_CHECK_CODE(::access(dir.c_str(), W_OK) == 0, ErrorCode::kIo, "--save-dir ", dir,
                      ": cannot write there: ", std::strerror(errno));
}

void run_demo(const DemoOptions& options) {
  if (options.list) {
    list_scenarios();
    return;
  }
  if (!options.save_dir.empty()) check_save_dir(options.save_dir);
  ScenarioSpec spec = find_scenario(options.scenario);
  if (options.tokens_per_rank > 0) spec.tokens_per_rank = options.tokens_per_rank;
  if (options.seed != 0) spec.seed = options.seed;
  const std::int64_t num_physical = spec.world_size * spec.slots_per_rank;
  Progress progress(4);

  constexpr std::int64_t kPlanWindows = 3;
  progress.start("drawing " + std::to_string(kPlanWindows + 1) +
                 " windows of routing: " + std::to_string(spec.world_size) + " ranks x " +
                 std::to_string(spec.tokens_per_rank) + " tokens x top-" +
                 std::to_string(spec.top_k));
  std::vector<RoutingTrace> plan_traces;
  for (std::int64_t window = 0; window < kPlanWindows; ++window) {
    plan_traces.push_back(generate_trace(spec, window));
  }
  const RoutingTrace score_window = generate_trace(spec, kPlanWindows);
  progress.done();

  progress.start("recording per-rank expert loads of windows 1-" + std::to_string(kPlanWindows) +
                 " (operator load counters)");
  std::vector<ExpertLoad> windows;
  for (const RoutingTrace& trace : plan_traces) {
    LoadRecorder recorder(1, spec.world_size, spec.num_experts);
    recorder.record(0, trace);
    windows.push_back(recorder.load());
  }
  progress.done();

  progress.start("planning: DeepSeek EPLB, moe-eplb for rank mode and for token mode");
  double ours_seconds = 0.0, token_seconds = 0.0, deepseek_seconds = 0.0;
  const auto timed_plan = [&](BalanceMode mode, PlanAlgorithm algorithm, double& seconds) {
    const auto start = std::chrono::steady_clock::now();
    LayeredTable table = plan(windows, scenario_plan_options(spec, mode, algorithm));
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return table;
  };
  const LayeredTable ours =
      timed_plan(BalanceMode::kByRank, PlanAlgorithm::kRuleAware, ours_seconds);
  const LayeredTable ours_token =
      timed_plan(BalanceMode::kByToken, PlanAlgorithm::kRuleAware, token_seconds);
  const LayeredTable deepseek =
      timed_plan(BalanceMode::kByRank, PlanAlgorithm::kDeepSeek, deepseek_seconds);
  progress.done();

  progress.start("routing every rank's window-" + std::to_string(kPlanWindows + 1) +
                 " tokens through update_expert(), 5 placements");
  const AnalyzeOptions analyze = scenario_analyze_options(spec, BalanceMode::kByRank);
  const AnalyzeOptions token = scenario_analyze_options(spec, BalanceMode::kByToken);
  AnalyzeOptions none_options = analyze;
  none_options.slots_per_rank = (spec.num_experts + spec.world_size - 1) / spec.world_size;
  const LayeredTable none = no_redundancy_table(spec.num_experts, spec.world_size);
  const std::vector<BalanceRow> rows = {
      {"no redundancy (" + std::to_string(none_options.slots_per_rank) + " experts per rank)", "-",
       analyze_trace(none.layer(0), score_window, none_options)},
      {"DeepSeek EPLB", "rank", analyze_trace(deepseek.layer(0), score_window, analyze)},
      {"DeepSeek EPLB", "token", analyze_trace(deepseek.layer(0), score_window, token)},
      {"moe-eplb", "rank", analyze_trace(ours.layer(0), score_window, analyze)},
      {"moe-eplb (planned for token)", "token",
       analyze_trace(ours_token.layer(0), score_window, token)},
  };
  progress.done();

  std::printf("\nmoe-eplb demo, scenario %s: %s\n", spec.name.c_str(), spec.description.c_str());
  std::printf("  %lld experts, top-%lld, EP %lld", static_cast<long long>(spec.num_experts),
              static_cast<long long>(spec.top_k), static_cast<long long>(spec.world_size));
  if (spec.ranks_per_node > 0) {
    std::printf(" (%lld nodes x %lld)",
                static_cast<long long>(spec.world_size / spec.ranks_per_node),
                static_cast<long long>(spec.ranks_per_node));
  }
  std::printf(", %lld slots per rank = %lld physical (%lld redundant)\n",
              static_cast<long long>(spec.slots_per_rank), static_cast<long long>(num_physical),
              static_cast<long long>(num_physical - spec.num_experts));
  std::printf("  traffic: %s\n", describe_traffic(spec).c_str());
  std::printf(
      "  planned on windows 1-%lld's statistics, scored on window %lld (same distribution, new "
      "seeds)\n\n",
      static_cast<long long>(kPlanWindows), static_cast<long long>(kPlanWindows + 1));
  print_comparison(rows);
  std::printf(
      "\n  max/mean: busiest rank's tokens over the mean (1.00 = perfect; the step waits "
      "for the busiest rank)\n"
      "  dead: replicas the mode never selects; share rank: extra replicas on a rank "
      "that already has that expert\n"
      "  on source rank / node: tokens that need not leave their rank / node\n");
  std::printf("\n  planning time: moe-eplb %.1f ms (rank) / %.1f ms (token), DeepSeek %.1f ms\n",
              ours_seconds * 1e3, token_seconds * 1e3, deepseek_seconds * 1e3);

  if (!options.svg_path.empty()) {
    const std::string title = "Per-rank load on unseen traffic: " + spec.description;
    write_text(options.svg_path,
               balance_svg(title, {{"before: no redundancy", rows[0].report.rank_load},
                                   {"DeepSeek EPLB, rank mode", rows[1].report.rank_load},
                                   {"moe-eplb, rank mode", rows[3].report.rank_load},
                                   {"moe-eplb, token mode", rows[4].report.rank_load}}));
    std::printf("  wrote %s (per-rank load bars, before vs after)\n", options.svg_path.c_str());
  }
  if (!options.save_dir.empty()) {
    save_inputs(options.save_dir, spec, windows.back(), score_window, ours, deepseek);
  }
}

}  // namespace

void add_demo_command(CLI::App& app) {
  auto options = std::make_shared<DemoOptions>();
  CLI::App* command = app.add_subcommand(
      "demo",
      "Record loads, plan, route every rank's tokens through the operator: before vs after");
  command->add_option("--scenario", options->scenario, "built-in scenario (see --list)")
      ->capture_default_str();
  command->add_flag("--list", options->list, "list the built-in scenarios");
  command->add_option("--svg", options->svg_path, "per-rank load plot ('' = none)")
      ->capture_default_str();
  command->add_option("--save-dir", options->save_dir,
                      "also write the statistics, trace and tables here (existing folder)");
  command
      ->add_option("--tokens-per-rank", options->tokens_per_rank,
                   "tokens per rank per window (0 = the scenario's)")
      ->check(in_range(0, kMaxScenarioTokens))
      ->capture_default_str();
  command->add_option("--seed", options->seed, "scenario seed (0 = the scenario's)")
      ->capture_default_str();
  command->callback([options] { run_demo(*options); });
}

}  // namespace moe_eplb::cli

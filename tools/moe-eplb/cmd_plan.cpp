// moe-eplb plan: load statistics in, Ascend eplb_table out.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "options.hpp"
#include "plan_io.hpp"

namespace moe_eplb::cli {
namespace {

struct PlanCommandOptions {
  std::vector<std::string> load_paths;  // windows, oldest first
  std::string previous_path;
  std::string out_path;
  PlanOptions plan;
  RuleOptions rule;
  std::string algorithm = "moe-eplb";
  std::string layout;  // --layout
};

std::string describe_balance(const LayersBalance& balance) {
  char text[64];
  if (balance.max_over_mean.size() == 1) {
    std::snprintf(text, sizeof(text), "%.3f", balance.mean);
  } else {
    std::snprintf(text, sizeof(text), "%.3f (worst layer %.3f)", balance.mean, balance.worst);
  }
  return text;
}

// "a (b .. c)" for one layer's value and interval, or the mean over layers.
std::string describe_prediction(const PlanReport& report) {
  double expected = 0.0, low = 0.0, high = 0.0, worst = 0.0;
  for (const LayerPlanReport& layer : report.layers) {
    expected += layer.predicted_max_over_mean;
    low += layer.predicted_low;
    high += layer.predicted_high;
    worst = std::max(worst, layer.predicted_max_over_mean);
  }
  const auto num_layers = static_cast<double>(report.layers.size());
  char text[128];
  std::snprintf(text, sizeof(text), "%.3f (about 68%% between %.3f and %.3f)",
                expected / num_layers, low / num_layers, high / num_layers);
  std::string result = text;
  if (report.layers.size() > 1) {
    std::snprintf(text, sizeof(text), ", mean over layers; worst layer %.3f", worst);
    result += text;
  }
  return result;
}

void run_plan(PlanCommandOptions options) {
  MOE_EPLB_CHECK(!options.previous_path.empty() || options.plan.max_moves == -1,
                 "plan(): --max-moves needs --previous (the table in force)");
  MOE_EPLB_CHECK(!options.previous_path.empty() || options.plan.move_cost == 0.0,
                 "plan(): --move-cost needs --previous (the table in force)");
  options.plan.rule = chosen_rule(options.rule);
  options.plan.algorithm = parse_plan_algorithm(options.algorithm);
  std::vector<ExpertLoad> windows;
  bool per_layer_file = false;
  for (std::size_t i = 0; i < options.load_paths.size(); ++i) {
    LoadedLoad loaded = load_expert_load("--load", options.load_paths[i], options.plan.world_size,
                                         options.layout, "plan()");
    if (i == 0) {
      per_layer_file = loaded.per_layer_file;
    } else {
      const ExpertLoad& first = windows.front();
      MOE_EPLB_CHECK(loaded.per_layer_file == per_layer_file &&
                         loaded.load.num_layers == first.num_layers &&
                         loaded.load.num_source_ranks == first.num_source_ranks &&
                         loaded.load.num_experts == first.num_experts,
                     "plan(): --load ", options.load_paths[i], " is (", loaded.load.num_layers,
                     " layers, ", loaded.load.num_source_ranks, " source ranks, ",
                     loaded.load.num_experts, " experts), but --load ", options.load_paths[0],
                     " is (", first.num_layers, ", ", first.num_source_ranks, ", ",
                     first.num_experts, "); every window must have the same shape");
    }
    windows.push_back(std::move(loaded.load));
  }
  LoadedTables previous;
  if (!options.previous_path.empty()) {
    previous = load_layered_table("--previous", options.previous_path);
    options.plan.previous = &previous.table;
  }
  const ExpertLoad& load = windows.back();

  const auto start = std::chrono::steady_clock::now();
  PlanReport report;
  const LayeredTable table = plan(windows, options.plan, &report);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  save_layered_table(options.out_path, table, !per_layer_file);

  const std::int64_t num_physical = options.plan.world_size * options.plan.slots_per_rank;
  const std::string phrase = rule_phrase(options.plan.rule);
  const char* mode = phrase.c_str();
  std::printf(
      "planned %lld layer%s on %zu window%s in %.1f ms (%s, %s): %lld experts on %lld ranks "
      "x %lld slots = %lld physical (%lld redundant), %s statistics\n",
      static_cast<long long>(load.num_layers), load.num_layers == 1 ? "" : "s", windows.size(),
      windows.size() == 1 ? "" : "s", seconds * 1e3, options.algorithm.c_str(), mode,
      static_cast<long long>(load.num_experts), static_cast<long long>(options.plan.world_size),
      static_cast<long long>(options.plan.slots_per_rank), static_cast<long long>(num_physical),
      static_cast<long long>(num_physical - load.num_experts),
      load.per_rank() ? "per-source-rank" : "global (even split over ranks assumed)");
  std::string shape = std::to_string(table.num_experts) + ", " + std::to_string(table.num_columns);
  if (per_layer_file) shape = std::to_string(table.num_layers) + ", " + shape;
  std::printf("wrote %s: int32 (%s), up to %lld replicas per expert\n", options.out_path.c_str(),
              shape.c_str(), static_cast<long long>(table.num_columns - 1));
  if (options.plan.algorithm == PlanAlgorithm::kRuleAware) {
    if (load.per_rank()) {
      double persistence = 0.0;
      for (const LayerPlanReport& layer : report.layers) persistence += layer.persistence;
      std::printf("persistence of per-rank deviations from the global share: %.2f%s (%s)\n",
                  persistence / static_cast<double>(report.layers.size()),
                  report.layers.size() > 1 ? " (mean over layers)" : "",
                  windows.size() == 1
                      ? "one window: a conservative default, give several --load windows"
                      : "lag-1 correlation between consecutive windows");
    }
    std::printf("predicted max/mean per-rank load on the next window, %s: %s\n", mode,
                describe_prediction(report).c_str());
  }
  if (options.plan.previous != nullptr) {
    std::int64_t changed = 0, worst = 0;
    for (const LayerPlanReport& layer : report.layers) {
      changed += layer.slots_changed;
      worst = std::max(worst, layer.slots_changed);
    }
    std::printf(
        "slots changed against %s: %lld of %lld (%.1f%%)%s\n", options.previous_path.c_str(),
        static_cast<long long>(changed), static_cast<long long>(num_physical * table.num_layers),
        100.0 * static_cast<double>(changed) / static_cast<double>(num_physical * table.num_layers),
        table.num_layers > 1 ? (", at most " + std::to_string(worst) + " in a layer").c_str() : "");
  }

  // Replica counts, as "count x experts".
  std::map<std::int64_t, std::int64_t> histogram;
  for (std::int64_t layer = 0; layer < table.num_layers; ++layer) {
    const TableView view = table.layer(layer);
    for (std::int64_t e = 0; e < view.num_experts; ++e) ++histogram[view.at(e, 0)];
  }
  std::string counts;
  for (const auto& [count, experts] : histogram) {
    counts +=
        (counts.empty() ? "" : ", ") + std::to_string(experts) + " with " + std::to_string(count);
  }
  std::printf("replicas per expert%s: %s\n", table.num_layers > 1 ? " (all layers)" : "",
              counts.c_str());

  // How the plan and the alternatives balance these same statistics.
  AnalyzeOptions analyze;
  analyze.world_size = options.plan.world_size;
  analyze.slots_per_rank = options.plan.slots_per_rank;
  analyze.ranks_per_node = options.plan.ranks_per_node;
  analyze.rule = options.plan.rule;
  PlanOptions other = options.plan;
  // A baseline's plan is compared with moe-eplb's, moe-eplb's with DeepSeek's.
  other.algorithm = options.plan.algorithm == PlanAlgorithm::kRuleAware ? PlanAlgorithm::kDeepSeek
                                                                        : PlanAlgorithm::kRuleAware;
  other.num_columns = 0;
  other.previous = nullptr;
  other.max_moves = -1;
  other.move_cost = 0.0;
  const LayeredTable alternative = plan(windows, other);
  std::printf("max/mean per-rank load on the newest window, %s: this plan %s, %s %s\n", mode,
              describe_balance(analyze_layers(table, load, analyze, "plan()")).c_str(),
              other.algorithm == PlanAlgorithm::kDeepSeek ? "DeepSeek EPLB" : "moe-eplb",
              describe_balance(analyze_layers(alternative, load, analyze, "plan()")).c_str());
  std::printf(
      "(statistics it was planned on; `moe-eplb simulate` scores a table on other traffic)\n");
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto options = std::make_shared<PlanCommandOptions>();
  CLI::App* command = app.add_subcommand(
      "plan", "Plan replica counts and placement from load statistics; write the eplb_table");
  command
      ->add_option("--load", options->load_paths,
                   ".npy load statistics: (W, E) tokens per source rank and expert, (E,) global, "
                   "(L, E) or (L, W|1, E) per layer (see --layout); repeat for several windows, "
                   "oldest first, all of one shape")
      ->required();
  add_layout_option(*command, options->layout);
  command->add_option("--world-size", options->plan.world_size, "EP group size W")
      ->check(in_range(1, INT32_MAX))
      ->required();
  command
      ->add_option("--slots-per-rank", options->plan.slots_per_rank,
                   "physical expert slots per rank S (W * S >= E)")
      ->check(in_range(1, INT32_MAX))
      ->required();
  command
      ->add_option("--ranks-per-node", options->plan.ranks_per_node,
                   "ranks per node, for locality (0 = one node)")
      ->check(in_range(0, INT32_MAX))
      ->capture_default_str();
  command
      ->add_option("--columns", options->plan.num_columns,
                   "F, columns of the table (0 = largest replica count + 1)")
      ->check(in_range_or(0, "fit", 2, INT32_MAX))
      ->capture_default_str();
  add_rule_options(command, &options->rule);
  command
      ->add_option("--algorithm", options->algorithm,
                   joined_names(plan_algorithm_names()) +
                       ": moe-eplb is rule-aware, the others the published baselines")
      ->check(CLI::IsMember(plan_algorithm_names()))
      ->capture_default_str();
  command
      ->add_option("--num-groups", options->plan.num_groups,
                   "expert groups, for deepseek's hierarchical policy")
      ->check(in_range(1, kMaxLoadExperts))
      ->capture_default_str();
  command->add_option(
      "--previous", options->previous_path,
      "the eplb_table in force (.npy, (E, F) or (L, E, F)): replan migration-aware, "
      "keeping replicas where they are wherever balance allows");
  command
      ->add_option("--max-moves", options->plan.max_moves,
                   "with --previous: at most this many changed slots per layer (-1 = no cap)")
      ->check(in_range_or(-1, "no cap", 0))
      ->capture_default_str();
  command
      ->add_option("--move-cost", options->plan.move_cost,
                   "with --previous: the predicted max/mean a changed slot must buy (>= 0)")
      ->check(non_negative_number())
      ->capture_default_str();
  command
      ->add_option("--threads", options->plan.threads,
                   "plan layers side by side on this many threads (0 = one per hardware thread); "
                   "every value gives the same table")
      ->check(in_range(0))
      ->capture_default_str();
  command->add_option("--out", options->out_path, "write the eplb_table here (.npy, int32)")
      ->required();
  command->callback([options] { run_plan(*options); });
}

}  // namespace moe_eplb::cli

// moe-eplb replay: a sequence of load windows in (files, traces or a built-in
// scenario); how rebalancing policies fare over time out. The replay itself
// is moe_eplb::replay() (plan/replay.hpp); this file reads the windows and
// prints the result three ways: a table, --json and --svg.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/load.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/plan/replay.hpp"
#include "moe_eplb/plan/scenario.hpp"
#include "moe_eplb/plan/svg.hpp"
#include "options.hpp"
#include "plan_io.hpp"

namespace moe_eplb::cli {
namespace {

constexpr const char* kReplay = "replay()";
// --max-moves not given: 10% of the slots.
constexpr std::int64_t kDefaultMaxMoves = std::numeric_limits<std::int64_t>::min();
// --windows: a replay of more than this many generated windows is a mistake.
constexpr std::int64_t kMaxReplayWindows = 100000;

struct ReplayCommandOptions {
  std::vector<std::string> load_paths;
  std::vector<std::string> trace_paths;
  std::int64_t num_experts = 0;  // with --trace
  std::string scenario;
  std::int64_t num_windows = 0;      // with --scenario
  std::int64_t tokens_per_rank = 0;  // with --scenario; 0 = the scenario's
  std::int64_t draw = 0;             // with --scenario: scenario_draw()
  std::int64_t world_size = 0;
  std::int64_t slots_per_rank = 0;
  std::int64_t ranks_per_node = 0;
  RuleOptions rule;
  std::int64_t every = 1;
  std::int64_t history = 4;
  std::int64_t max_moves = kDefaultMaxMoves;
  double expert_bytes = 0.0;
  bool json = false;
  std::string svg_path;
  bool list = false;
  std::string layout;  // --layout
};

// The scenarios --scenario takes: the multi-window suite first.
void list_scenarios() {
  std::printf("multi-window suite (per-rank persistence p, popularity drift d per window):\n");
  for (const ScenarioSpec& spec : window_suite()) {
    std::printf("  %-28s %s, p %.1f, d %.2f\n", spec.name.c_str(), spec.description.c_str(),
                spec.rank_persistence, spec.drift);
  }
  std::printf("single-window suite (fixed per-rank preferences, no drift):\n");
  for (const ScenarioSpec& spec : scenario_suite()) {
    std::printf("  %-28s %s\n", spec.name.c_str(), spec.description.c_str());
  }
}

// The windows to replay, oldest first, all of one shape.
struct Windows {
  std::vector<ExpertLoad> loads;
  std::string source;  // for the header: where they came from
  std::string label;   // a short form, for the plot's title
};

std::string shape_of(const ExpertLoad& load) {
  return "(" + std::to_string(load.num_layers) + " layers, " +
         std::to_string(load.num_source_ranks) + " source ranks, " +
         std::to_string(load.num_experts) + " experts)";
}

Windows read_windows(ReplayCommandOptions& options) {
  const int sources = (options.load_paths.empty() ? 0 : 1) + (options.trace_paths.empty() ? 0 : 1) +
                      (options.scenario.empty() ? 0 : 1);
  MOE_EPLB_CHECK(sources == 1, kReplay,
                 ": give the windows one way: --load files, --trace files or --scenario NAME "
                 "(with --windows N)");
  MOE_EPLB_CHECK(options.scenario.empty() == (options.num_windows == 0), kReplay,
                 ": --windows N goes with --scenario (and --scenario needs it)");
  MOE_EPLB_CHECK(options.trace_paths.empty() == (options.num_experts == 0), kReplay,
                 ": --num-experts E goes with --trace (and --trace needs it)");
  MOE_EPLB_CHECK(!options.scenario.empty() || options.draw == 0, kReplay,
                 ": --draw goes with --scenario");
  Windows windows;
  if (!options.scenario.empty()) {
    ScenarioSpec spec = scenario_draw(find_scenario(options.scenario), options.draw);
    MOE_EPLB_CHECK(options.world_size == 0 || options.world_size == spec.world_size, kReplay,
                   ": --world-size ", options.world_size, " differs from scenario ", spec.name,
                   "'s ", spec.world_size, "; leave it out");
    options.world_size = spec.world_size;
    if (options.slots_per_rank == 0) options.slots_per_rank = spec.slots_per_rank;
    if (options.ranks_per_node == 0) options.ranks_per_node = spec.ranks_per_node;
    if (options.tokens_per_rank > 0) spec.tokens_per_rank = options.tokens_per_rank;
    windows.loads = generate_windows(spec, 0, options.num_windows);
    windows.source = "scenario " + spec.name + " (" + spec.description + "), " +
                     std::to_string(spec.tokens_per_rank) + " tokens per rank per window" +
                     (options.draw > 0 ? ", draw " + std::to_string(options.draw) : "");
    windows.label = spec.name;
    return windows;
  }
  MOE_EPLB_CHECK(options.world_size >= 1, kReplay,
                 ": --world-size is required with --load or --trace and must be positive, got ",
                 options.world_size);
  MOE_EPLB_CHECK(options.slots_per_rank >= 1, kReplay,
                 ": --slots-per-rank is required with --load or --trace and must be positive, got ",
                 options.slots_per_rank);
  const bool traces = !options.trace_paths.empty();
  const std::vector<std::string>& paths = traces ? options.trace_paths : options.load_paths;
  const char* flag = traces ? "--trace" : "--load";
  MOE_EPLB_CHECK(paths.size() >= 2, kReplay, ": give at least 2 ", flag,
                 " windows (plan on one, score on the next), got ", paths.size());
  for (std::size_t i = 0; i < paths.size(); ++i) {
    if (traces) {
      const RoutingTrace trace = load_trace(flag, paths[i], "");
      check_trace_experts(flag, paths[i], trace, options.num_experts, "--num-experts");
      MOE_EPLB_CHECK(trace.world_size == options.world_size, kReplay, ": ", flag, " ", paths[i],
                     " has ", trace.world_size, " source ranks (first dimension), expected ",
                     "--world-size ", options.world_size);
      LoadRecorder recorder(1, trace.world_size, options.num_experts);
      recorder.record(0, trace);  // counted as `moe-eplb record` counts
      windows.loads.push_back(recorder.load());
    } else {
      windows.loads.push_back(
          load_expert_load(flag, paths[i], options.world_size, options.layout, kReplay).load);
    }
    const ExpertLoad& first = windows.loads.front();
    const ExpertLoad& load = windows.loads.back();
    MOE_EPLB_CHECK(load.num_layers == first.num_layers &&
                       load.num_source_ranks == first.num_source_ranks &&
                       load.num_experts == first.num_experts,
                   kReplay, ": ", flag, " window ", i, " (", paths[i], ") is ", shape_of(load),
                   ", but window 0 (", paths[0], ") is ", shape_of(first),
                   "; every window must have the same shape");
  }
  windows.source = std::to_string(paths.size()) + (traces ? " routing traces" : " load files");
  windows.label = windows.source;
  return windows;
}

nlohmann::json number_or_null(double value) {
  return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr);
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int unit = 0;
  while (bytes >= 1000.0 && unit < 4) {
    bytes /= 1000.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof(text), unit == 0 ? "%.0f %s" : "%.2f %s", bytes, units[unit]);
  return text;
}

// Experts received over the whole replay.
double total_received(const PolicyReplay& replayed) {
  double received = 0.0;
  for (const double value : replayed.received) received += std::isfinite(value) ? value : 0.0;
  return received;
}

// What the three printers share: the replay, where its windows came from and
// the command's options.
struct ReplayReport {
  const ReplayResult& result;
  const Windows& windows;
  const ReplayCommandOptions& options;
  std::int64_t max_moves;
  ReplicaRule rule;
  std::string mode() const { return rule_phrase(rule); }
  std::int64_t num_windows() const { return static_cast<std::int64_t>(windows.loads.size()); }
  const ExpertLoad& first() const { return windows.loads.front(); }
  double layer_slots() const {
    return static_cast<double>(first().num_layers * options.world_size * options.slots_per_rank);
  }
};

// --svg: balance over time and moves per rebalance.
void write_replay_svg(const ReplayReport& report) {
  const ReplayCommandOptions& options = report.options;
  TimePanel balance{"max/mean per-rank load on the next window (" + report.mode() + ")", {}};
  TimePanel moves{"slots changed per rebalance (of " +
                      std::to_string(static_cast<std::int64_t>(report.layer_slots())) + ")",
                  {}};
  for (const PolicyReplay& replayed : report.result.policies) {
    balance.series.push_back({replayed.policy.name, replayed.balance});
    moves.series.push_back({replayed.policy.name, replayed.slots_changed});
  }
  const std::vector<double> scored(report.result.scored_windows.begin(),
                                   report.result.scored_windows.end());
  write_text(options.svg_path,
             time_series_svg("Replay of " + std::to_string(report.num_windows()) +
                                 " windows: " + report.windows.label,
                             "scored window (rebalance every " + std::to_string(options.every) +
                                 " window(s) on the last " + std::to_string(options.history) + ")",
                             scored, {balance, moves}));
}

// --json: every window and the summary.
void print_replay_json(const ReplayReport& report) {
  const ReplayCommandOptions& options = report.options;
  const ExpertLoad& first = report.first();
  nlohmann::json json;
  json["source"] = report.windows.source;
  json["windows"] = report.num_windows();
  json["layers"] = first.num_layers;
  json["num_experts"] = first.num_experts;
  json["per_rank_statistics"] = first.per_rank();
  json["world_size"] = options.world_size;
  json["slots_per_rank"] = options.slots_per_rank;
  json["balance_mode"] = rule_info(report.rule).balance_mode;
  json["rule"] = rule_info(report.rule).name;
  json["every"] = options.every;
  json["history"] = options.history;
  json["max_moves"] = report.max_moves;
  json["expert_bytes"] = options.expert_bytes;
  for (const PolicyReplay& replayed : report.result.policies) {
    nlohmann::json entry;
    entry["name"] = replayed.policy.name;
    entry["description"] = replayed.policy.description;
    entry["mean_max_over_mean"] = mean_of(replayed.balance);
    entry["worst_max_over_mean"] = max_of(replayed.balance);
    entry["rebalances"] = replayed.plan_seconds.size();
    entry["mean_slots_changed"] = number_or_null(mean_of(replayed.slots_changed));
    entry["max_slots_changed"] = number_or_null(max_of(replayed.slots_changed));
    entry["mean_slots_changed_share"] =
        number_or_null(mean_of(replayed.slots_changed) / report.layer_slots());
    entry["experts_received"] = total_received(replayed);
    entry["bytes_moved"] = total_received(replayed) * options.expert_bytes;
    entry["mean_plan_ms"] = number_or_null(mean_of(replayed.plan_seconds) * 1e3);
    json["policies"].push_back(entry);
  }
  for (std::size_t i = 0; i < report.result.scored_windows.size(); ++i) {
    nlohmann::json step;
    step["window"] = static_cast<double>(report.result.scored_windows[i]);
    step["rebalanced_before"] = static_cast<bool>(report.result.rebalanced[i]);
    for (const PolicyReplay& replayed : report.result.policies) {
      nlohmann::json cell;
      cell["max_over_mean"] = replayed.balance[i];
      cell["slots_changed"] = number_or_null(replayed.slots_changed[i]);
      cell["experts_received"] = number_or_null(replayed.received[i]);
      cell["bytes_moved"] = number_or_null(replayed.received[i] * options.expert_bytes);
      step["policies"][replayed.policy.name] = cell;
    }
    json["steps"].push_back(step);
  }
  std::printf("%s\n", json.dump(2).c_str());
}

// The default output: the legend, every window, the summary.
void print_replay_table(const ReplayReport& report) {
  const ReplayCommandOptions& options = report.options;
  const ExpertLoad& first = report.first();
  const std::vector<PolicyReplay>& policies = report.result.policies;
  std::printf(
      "replay of %lld windows: %s; %lld layer%s x %lld experts, %s statistics\n"
      "%lld ranks x %lld slots, %s; rebalance after every %lld window%s on the last %lld; "
      "each scored on the next window\n\n",
      static_cast<long long>(report.num_windows()), report.windows.source.c_str(),
      static_cast<long long>(first.num_layers), first.num_layers == 1 ? "" : "s",
      static_cast<long long>(first.num_experts), first.per_rank() ? "per-source-rank" : "global",
      static_cast<long long>(options.world_size), static_cast<long long>(options.slots_per_rank),
      report.mode().c_str(), static_cast<long long>(options.every), options.every == 1 ? "" : "s",
      static_cast<long long>(options.history));
  for (const PolicyReplay& replayed : policies) {
    std::printf("  %-16s %s\n", replayed.policy.name.c_str(), replayed.policy.description.c_str());
  }
  std::printf("\nmax/mean on the window, slots changed at the rebalance before it\n\n  window");
  for (const PolicyReplay& replayed : policies) {
    std::printf("  %16s", replayed.policy.name.c_str());
  }
  std::printf("\n");
  for (std::size_t i = 0; i < report.result.scored_windows.size(); ++i) {
    std::printf("  %6lld", static_cast<long long>(report.result.scored_windows[i]));
    for (const PolicyReplay& replayed : policies) {
      char moved[24] = "";
      if (std::isfinite(replayed.slots_changed[i])) {
        std::snprintf(moved, sizeof(moved), "%.0f", replayed.slots_changed[i]);
      }
      std::printf("  %6.3f %9s", replayed.balance[i], moved);
    }
    std::printf("\n");
  }
  std::printf("\n  %-16s  %12s  %6s  %10s  %-28s  %12s  %8s\n", "policy", "avg max/mean", "worst",
              "rebalances", "slots changed per rebalance", "bytes moved", "plan ms");
  for (const PolicyReplay& replayed : policies) {
    const double changed = mean_of(replayed.slots_changed);
    char moves[64] = "-";
    if (std::isfinite(changed)) {
      std::snprintf(moves, sizeof(moves), "%.1f (%.1f%%), max %.0f", changed,
                    100.0 * changed / report.layer_slots(), max_of(replayed.slots_changed));
    }
    const double received = total_received(replayed);
    const std::string bytes = options.expert_bytes > 0
                                  ? human_bytes(received * options.expert_bytes)
                                  : std::to_string(static_cast<long long>(received)) + " experts";
    const double plan_ms = mean_of(replayed.plan_seconds) * 1e3;
    char plan_text[24] = "-";
    if (std::isfinite(plan_ms)) std::snprintf(plan_text, sizeof(plan_text), "%.1f", plan_ms);
    std::printf("  %-16s  %12.4f  %6.3f  %10zu  %-28s  %12s  %8s\n", replayed.policy.name.c_str(),
                mean_of(replayed.balance), max_of(replayed.balance), replayed.plan_seconds.size(),
                moves, bytes.c_str(), plan_text);
  }
  std::printf(
      "\n(bytes moved: experts each rank receives over the network x --expert-bytes; further "
      "slots of an expert a rank already has are local copies)\n");
  if (!options.svg_path.empty()) std::printf("wrote %s\n", options.svg_path.c_str());
}

void run_replay(ReplayCommandOptions options) {
  if (options.list) {
    list_scenarios();
    return;
  }
  const Windows windows = read_windows(options);
  const std::int64_t num_slots = options.world_size * options.slots_per_rank;
  const std::int64_t max_moves =
      options.max_moves == kDefaultMaxMoves ? num_slots / 10 : options.max_moves;

  ReplayOptions replay_options;
  replay_options.topology = {options.world_size, options.slots_per_rank, options.ranks_per_node};
  replay_options.rule = chosen_rule(options.rule);
  replay_options.every = options.every;
  replay_options.history = options.history;
  replay_options.max_moves = max_moves;
  const auto start = std::chrono::steady_clock::now();
  double last_progress = 0.0;
  replay_options.progress = [&](std::int64_t scored, std::int64_t total) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (elapsed - last_progress >= 1.0 && scored < total) {
      std::fprintf(stderr, "replay: scored window %lld of %lld (%.0f s)\n",
                   static_cast<long long>(scored), static_cast<long long>(total), elapsed);
      last_progress = elapsed;
    }
  };
  const ReplayResult result =
      replay(windows.loads, replay_options, default_replay_policies(max_moves));

  const ReplayReport report{result, windows, options, max_moves, replay_options.rule};
  if (!options.svg_path.empty()) write_replay_svg(report);
  if (options.json) {
    print_replay_json(report);
  } else {
    print_replay_table(report);
  }
}

}  // namespace

void add_replay_command(CLI::App& app) {
  auto options = std::make_shared<ReplayCommandOptions>();
  CLI::App* command = app.add_subcommand(
      "replay",
      "Replay a sequence of load windows: how never rebalancing, DeepSeek, FlashLB and moe-eplb "
      "(from scratch and migration-aware) balance the next window, and how many slots move");
  command->add_option("--load", options->load_paths,
                      "a window's load statistics .npy, (W, E), (E,), (L, E) or (L, W|1, E) (see "
                      "--layout); repeat, oldest first");
  add_layout_option(*command, options->layout);
  command->add_option("--trace", options->trace_paths,
                      "a window's routing trace .npy, (W, BS, K) expert ids per source rank, "
                      "counted as `moe-eplb record` does; repeat, oldest first");
  command->add_option("--num-experts", options->num_experts, "E, with --trace")
      ->check(in_range(1, kMaxLoadExperts));
  command->add_option("--scenario", options->scenario,
                      "generate the windows from a built-in scenario (see --list)");
  command->add_option("--windows", options->num_windows, "windows to generate, with --scenario")
      ->check(in_range(2, kMaxReplayWindows));
  command->add_flag("--list", options->list, "list the scenarios --scenario takes");
  command
      ->add_option("--draw", options->draw,
                   "independent draw K of the scenario (seed + K * 1000003; 0 = its own windows)")
      ->check(in_range(0, INT32_MAX))
      ->capture_default_str();
  command
      ->add_option("--tokens-per-rank", options->tokens_per_rank,
                   "tokens per rank per generated window (0 = the scenario's)")
      ->check(in_range(0, kMaxScenarioTokens))
      ->capture_default_str();
  command
      ->add_option("--world-size", options->world_size,
                   "EP group size W (with --scenario: the scenario's)")
      ->check(in_range(1, INT32_MAX));
  command
      ->add_option("--slots-per-rank", options->slots_per_rank,
                   "physical slots per rank S (with --scenario: default the scenario's)")
      ->check(in_range(1, INT32_MAX));
  command
      ->add_option("--ranks-per-node", options->ranks_per_node,
                   "ranks per node (0 = one node; with --scenario: default the scenario's)")
      ->check(in_range(0, INT32_MAX))
      ->capture_default_str();
  add_rule_options(command, &options->rule);
  command->add_option("--every", options->every, "rebalance after every N windows")
      ->check(in_range(1))
      ->capture_default_str();
  command->add_option("--history", options->history, "plan on the last H windows")
      ->check(in_range(1))
      ->capture_default_str();
  command
      ->add_option("--max-moves", options->max_moves,
                   "moves per layer per rebalance for moe-eplb-capped (-1 = no cap; default "
                   "10% of the slots)")
      ->check(in_range_or(-1, "no cap", 0));
  command
      ->add_option("--expert-bytes", options->expert_bytes,
                   "bytes of one expert's weights, to report bytes moved")
      ->check(non_negative_number())
      ->capture_default_str();
  command->add_flag("--json", options->json, "print every window and the summary as JSON");
  command->add_option("--svg", options->svg_path,
                      "write a plot of balance over time and moves per rebalance here");
  command->callback([options] { run_replay(*options); });
}

}  // namespace moe_eplb::cli

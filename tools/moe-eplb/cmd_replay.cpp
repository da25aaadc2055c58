// moe-eplb replay: a sequence of load windows in; how rebalancing policies fare
// over time out. After window t (t = 0, N, 2N, ... for --every N) each policy
// rebalances, planning on the last --history windows, and the table in force
// is always scored on the *next* window: no policy sees the traffic it is
// scored on. Window 0's plan is every policy's first table (no moves counted).
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

struct ReplayOptions {
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

Windows read_windows(ReplayOptions& options) {
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

// One rebalancing policy and what happened to it.
struct Policy {
  std::string name;         // short, for columns and JSON keys
  std::string description;  // one line for the legend
  PlanAlgorithm algorithm = PlanAlgorithm::kRuleAware;
  bool rebalances = true;        // false: keeps window 0's plan
  bool migration_aware = false;  // plans against the table in force
  LayeredTable table;            // in force
  // Per scored window (windows 1 .. N-1):
  std::vector<double> balance;        // max/mean, mean over layers
  std::vector<double> slots_changed;  // at the rebalance before it; NaN = none
  std::vector<double> received;       // experts received over the network, same
  std::vector<double> plan_seconds;   // per rebalance after window 0
};

std::vector<Policy> make_policies() {
  std::vector<Policy> policies(5);
  policies[0].name = "never";
  policies[0].description = "never rebalance: moe-eplb planned once on window 0, kept";
  policies[0].rebalances = false;
  policies[1].name = "deepseek";
  policies[1].description = "DeepSeek EPLB from scratch";
  policies[1].algorithm = PlanAlgorithm::kDeepSeek;
  policies[2].name = "flashlb";
  policies[2].description = "FlashLB (replans degraded layers, matches slots)";
  policies[2].algorithm = PlanAlgorithm::kFlashLB;
  policies[2].migration_aware = true;
  policies[3].name = "moe-eplb";
  policies[3].description = "moe-eplb from scratch";
  policies[4].name = "moe-eplb-capped";
  policies[4].description = "moe-eplb migration-aware, capped";
  policies[4].migration_aware = true;
  return policies;
}

double mean_of(const std::vector<double>& values) {
  double sum = 0.0;
  std::int64_t n = 0;
  for (double value : values) {
    if (!std::isfinite(value)) continue;
    sum += value;
    ++n;
  }
  return n > 0 ? sum / static_cast<double>(n) : std::nan("");
}

double max_of(const std::vector<double>& values) {
  double result = std::nan("");
  for (double value : values) {
    if (std::isfinite(value) && !(value <= result)) result = value;
  }
  return result;
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

void run_replay(ReplayOptions options) {
  if (options.list) {
    list_scenarios();
    return;
  }
  const Windows windows = read_windows(options);
  const std::vector<ExpertLoad>& loads = windows.loads;
  const auto num_windows = static_cast<std::int64_t>(loads.size());
  const ExpertLoad& first = loads.front();
  const std::int64_t num_slots = options.world_size * options.slots_per_rank;
  const std::int64_t max_moves =
      options.max_moves == kDefaultMaxMoves ? num_slots / 10 : options.max_moves;

  PlanOptions base;
  base.world_size = options.world_size;
  base.slots_per_rank = options.slots_per_rank;
  base.ranks_per_node = options.ranks_per_node;
  base.rule = chosen_rule(options.rule);
  AnalyzeOptions analyze;
  analyze.world_size = options.world_size;
  analyze.slots_per_rank = options.slots_per_rank;
  analyze.ranks_per_node = options.ranks_per_node;
  analyze.rule = base.rule;
  const Topology topology{options.world_size, options.slots_per_rank, options.ranks_per_node};

  std::vector<Policy> policies = make_policies();
  policies[4].description += " at " + std::to_string(max_moves) + " moves per layer";
  std::vector<double> scored_windows;
  std::vector<bool> rebalanced;
  const auto start = std::chrono::steady_clock::now();
  double last_progress = 0.0;
  for (std::int64_t t = 0; t + 1 < num_windows; ++t) {
    const bool rebalance = t % options.every == 0;
    if (rebalance) {
      const std::int64_t oldest = std::max<std::int64_t>(0, t - options.history + 1);
      const std::vector<ExpertLoad> history(loads.begin() + oldest, loads.begin() + t + 1);
      for (Policy& policy : policies) {
        if (t > 0 && !policy.rebalances) continue;
        PlanOptions plan_options = base;
        plan_options.algorithm = policy.algorithm;
        if (t > 0 && policy.migration_aware) {
          plan_options.previous = &policy.table;
          if (policy.algorithm == PlanAlgorithm::kRuleAware) plan_options.max_moves = max_moves;
        }
        const auto plan_start = std::chrono::steady_clock::now();
        LayeredTable table = plan(history, plan_options);
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - plan_start).count();
        if (t > 0) {
          std::int64_t changed = 0, received = 0;
          for (std::int64_t layer = 0; layer < table.num_layers; ++layer) {
            const TableDiff diff =
                diff_tables(policy.table.layer(layer), table.layer(layer), topology);
            changed += diff.slots_changed;
            received += diff.experts_received;
          }
          policy.slots_changed.push_back(static_cast<double>(changed));
          policy.received.push_back(static_cast<double>(received));
          policy.plan_seconds.push_back(seconds);
        }
        policy.table = std::move(table);
      }
    }
    for (Policy& policy : policies) {
      if (t == 0 || !rebalance || !policy.rebalances) {
        policy.slots_changed.push_back(std::nan(""));
        policy.received.push_back(std::nan(""));
      }
      const ExpertLoad& next = loads[static_cast<std::size_t>(t + 1)];
      double sum = 0.0;
      for (std::int64_t layer = 0; layer < next.num_layers; ++layer) {
        sum += analyze_load(policy.table.layer(layer), next.layer(layer), next.num_source_ranks,
                            analyze)
                   .max_over_mean;
      }
      policy.balance.push_back(sum / static_cast<double>(next.num_layers));
    }
    scored_windows.push_back(static_cast<double>(t + 1));
    rebalanced.push_back(rebalance && t > 0);
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (elapsed - last_progress >= 1.0 && t + 2 < num_windows) {
      std::fprintf(stderr, "replay: scored window %lld of %lld (%.0f s)\n",
                   static_cast<long long>(t + 1), static_cast<long long>(num_windows - 1), elapsed);
      last_progress = elapsed;
    }
  }

  const std::string phrase = rule_phrase(base.rule);
  const char* mode = phrase.c_str();
  const double layer_slots = static_cast<double>(first.num_layers * num_slots);
  if (!options.svg_path.empty()) {
    TimePanel balance{"max/mean per-rank load on the next window (" + phrase + ")", {}};
    TimePanel moves{
        "slots changed per rebalance (of " + std::to_string(first.num_layers * num_slots) + ")",
        {}};
    for (const Policy& policy : policies) {
      balance.series.push_back({policy.name, policy.balance});
      moves.series.push_back({policy.name, policy.slots_changed});
    }
    write_text(
        options.svg_path,
        time_series_svg("Replay of " + std::to_string(num_windows) + " windows: " + windows.label,
                        "scored window (rebalance every " + std::to_string(options.every) +
                            " window(s) on the last " + std::to_string(options.history) + ")",
                        scored_windows, {balance, moves}));
  }

  if (options.json) {
    nlohmann::json json;
    json["source"] = windows.source;
    json["windows"] = num_windows;
    json["layers"] = first.num_layers;
    json["num_experts"] = first.num_experts;
    json["per_rank_statistics"] = first.per_rank();
    json["world_size"] = options.world_size;
    json["slots_per_rank"] = options.slots_per_rank;
    json["balance_mode"] = rule_info(base.rule).balance_mode;
    json["rule"] = rule_info(base.rule).name;
    json["every"] = options.every;
    json["history"] = options.history;
    json["max_moves"] = max_moves;
    json["expert_bytes"] = options.expert_bytes;
    for (const Policy& policy : policies) {
      nlohmann::json entry;
      entry["name"] = policy.name;
      entry["description"] = policy.description;
      entry["mean_max_over_mean"] = mean_of(policy.balance);
      entry["worst_max_over_mean"] = max_of(policy.balance);
      entry["rebalances"] = policy.plan_seconds.size();
      entry["mean_slots_changed"] = number_or_null(mean_of(policy.slots_changed));
      entry["max_slots_changed"] = number_or_null(max_of(policy.slots_changed));
      entry["mean_slots_changed_share"] =
          number_or_null(mean_of(policy.slots_changed) / layer_slots);
      double received = 0.0;
      for (double value : policy.received) received += std::isfinite(value) ? value : 0.0;
      entry["experts_received"] = received;
      entry["bytes_moved"] = received * options.expert_bytes;
      entry["mean_plan_ms"] = number_or_null(mean_of(policy.plan_seconds) * 1e3);
      json["policies"].push_back(entry);
    }
    for (std::size_t i = 0; i < scored_windows.size(); ++i) {
      nlohmann::json step;
      step["window"] = scored_windows[i];
      step["rebalanced_before"] = static_cast<bool>(rebalanced[i]);
      for (const Policy& policy : policies) {
        nlohmann::json cell;
        cell["max_over_mean"] = policy.balance[i];
        cell["slots_changed"] = number_or_null(policy.slots_changed[i]);
        cell["experts_received"] = number_or_null(policy.received[i]);
        cell["bytes_moved"] = number_or_null(policy.received[i] * options.expert_bytes);
        step["policies"][policy.name] = cell;
      }
      json["steps"].push_back(step);
    }
    std::printf("%s\n", json.dump(2).c_str());
    return;
  }

  std::printf(
      "replay of %lld windows: %s; %lld layer%s x %lld experts, %s statistics\n"
      "%lld ranks x %lld slots, %s; rebalance after every %lld window%s on the last %lld; "
      "each scored on the next window\n\n",
      static_cast<long long>(num_windows), windows.source.c_str(),
      static_cast<long long>(first.num_layers), first.num_layers == 1 ? "" : "s",
      static_cast<long long>(first.num_experts), first.per_rank() ? "per-source-rank" : "global",
      static_cast<long long>(options.world_size), static_cast<long long>(options.slots_per_rank),
      mode, static_cast<long long>(options.every), options.every == 1 ? "" : "s",
      static_cast<long long>(options.history));
  for (const Policy& policy : policies) {
    std::printf("  %-16s %s\n", policy.name.c_str(), policy.description.c_str());
  }
  std::printf("\nmax/mean on the window, slots changed at the rebalance before it\n\n  window");
  for (const Policy& policy : policies) std::printf("  %16s", policy.name.c_str());
  std::printf("\n");
  for (std::size_t i = 0; i < scored_windows.size(); ++i) {
    std::printf("  %6.0f", scored_windows[i]);
    for (const Policy& policy : policies) {
      char moved[24] = "";
      if (std::isfinite(policy.slots_changed[i])) {
        std::snprintf(moved, sizeof(moved), "%.0f", policy.slots_changed[i]);
      }
      std::printf("  %6.3f %9s", policy.balance[i], moved);
    }
    std::printf("\n");
  }
  std::printf("\n  %-16s  %12s  %6s  %10s  %-28s  %12s  %8s\n", "policy", "avg max/mean", "worst",
              "rebalances", "slots changed per rebalance", "bytes moved", "plan ms");
  for (const Policy& policy : policies) {
    const double changed = mean_of(policy.slots_changed);
    char moves[64] = "-";
    if (std::isfinite(changed)) {
      std::snprintf(moves, sizeof(moves), "%.1f (%.1f%%), max %.0f", changed,
                    100.0 * changed / layer_slots, max_of(policy.slots_changed));
    }
    double received = 0.0;
    for (double value : policy.received) received += std::isfinite(value) ? value : 0.0;
    const std::string bytes = options.expert_bytes > 0
                                  ? human_bytes(received * options.expert_bytes)
                                  : std::to_string(static_cast<long long>(received)) + " experts";
    const double plan_ms = mean_of(policy.plan_seconds) * 1e3;
    char plan_text[24] = "-";
    if (std::isfinite(plan_ms)) std::snprintf(plan_text, sizeof(plan_text), "%.1f", plan_ms);
    std::printf("  %-16s  %12.4f  %6.3f  %10zu  %-28s  %12s  %8s\n", policy.name.c_str(),
                mean_of(policy.balance), max_of(policy.balance), policy.plan_seconds.size(), moves,
                bytes.c_str(), plan_text);
  }
  std::printf(
      "\n(bytes moved: experts each rank receives over the network x --expert-bytes; further "
      "slots of an expert a rank already has are local copies)\n");
  if (!options.svg_path.empty()) std::printf("wrote %s\n", options.svg_path.c_str());
}

}  // namespace

void add_replay_command(CLI::App& app) {
  auto options = std::make_shared<ReplayOptions>();
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

// moe-eplb simulate: route traffic through a table with the real operator and
// report how evenly the ranks are loaded, before (no redundancy) and after.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include "balance_report.hpp"
#include "commands.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/plan/svg.hpp"
#include "options.hpp"
#include "plan_io.hpp"

namespace moe_eplb::cli {
namespace {

constexpr const char* kSimulate = "simulate()";

struct SimulateOptions {
  std::string table_path;
  std::string load_path;
  std::string expert_ids_path;
  std::string active_mask_path;
  std::int64_t world_size = 0;
  std::int64_t slots_per_rank = 0;
  std::int64_t ranks_per_node = 0;
  RuleOptions rule;
  std::int64_t layer = -1;
  bool json = false;
  std::string svg_path;
  std::string layout;  // --layout
};

// Routes one layer's traffic (statistics or a trace) through `table`.
class Traffic {
 public:
  explicit Traffic(const SimulateOptions& options) {
    if (!options.load_path.empty()) {
      load_ = load_expert_load("--load", options.load_path, options.world_size, options.layout,
                               kSimulate)
                  .load;
    } else {
      trace_ = load_trace("--expert-ids", options.expert_ids_path, options.active_mask_path);
      MOE_EPLB_CHECK(trace_.world_size == options.world_size, kSimulate, ": --expert-ids has ",
                     trace_.world_size, " source ranks (first dimension), expected world_size ",
                     options.world_size);
    }
  }
  std::int64_t num_layers() const { return load_.num_layers > 0 ? load_.num_layers : 1; }
  std::int64_t num_experts() const {
    return load_.num_layers > 0 ? load_.num_experts : -1;  // a trace does not say
  }
  BalanceReport route(const TableView& table, std::int64_t layer,
                      const AnalyzeOptions& options) const {
    if (load_.num_layers > 0) {
      return analyze_load(table, load_.layer(layer), load_.num_source_ranks, options);
    }
    return analyze_trace(table, trace_, options);
  }
  std::string describe() const {
    if (load_.num_layers > 0) {
      return load_.per_rank() ? "per-source-rank load statistics"
                              : "global load statistics (spread evenly over source ranks)";
    }
    return std::to_string(trace_.world_size) + " ranks x " +
           std::to_string(trace_.tokens_per_rank) + " tokens x top-" +
           std::to_string(trace_.top_k) + " routed through update_expert()";
  }

 private:
  ExpertLoad load_;
  RoutingTrace trace_;
};

void run_simulate(const SimulateOptions& options) {
  MOE_EPLB_CHECK(options.load_path.empty() != options.expert_ids_path.empty(), kSimulate,
                 ": give exactly one of --load (statistics) and --expert-ids (traces)");
  MOE_EPLB_CHECK(options.active_mask_path.empty() || !options.expert_ids_path.empty(), kSimulate,
                 ": --active-mask goes with --expert-ids");
  const LayeredTable table = load_layered_table("--table", options.table_path).table;
  const Traffic traffic(options);
  MOE_EPLB_CHECK(traffic.num_experts() < 0 || traffic.num_experts() == table.num_experts, kSimulate,
                 ": --load has ", traffic.num_experts(), " experts, --table has ",
                 table.num_experts, " rows");
  const std::int64_t num_layers = std::max(table.num_layers, traffic.num_layers());
  MOE_EPLB_CHECK(table.num_layers == traffic.num_layers() ||
                     (table.num_layers == 1 && traffic.num_layers() > 1) ||
                     (table.num_layers > 1 && options.layer >= 0),
                 kSimulate, ": --table has ", table.num_layers, " layers, the traffic ",
                 traffic.num_layers(), "; pass --layer to pick one table layer for a trace");
  MOE_EPLB_CHECK(options.layer >= -1 && options.layer < num_layers, kSimulate,
                 ": --layer must be in 0..", num_layers - 1, " (or -1 = all), got ", options.layer);

  AnalyzeOptions analyze;
  analyze.world_size = options.world_size;
  analyze.slots_per_rank = options.slots_per_rank;
  analyze.ranks_per_node = options.ranks_per_node;
  analyze.rule = chosen_rule(options.rule);
  AnalyzeOptions before_options = analyze;
  before_options.slots_per_rank = (table.num_experts + options.world_size - 1) / options.world_size;
  const LayeredTable before_table = no_redundancy_table(table.num_experts, options.world_size);

  const std::int64_t first = options.layer >= 0 ? options.layer : 0;
  const std::int64_t last = options.layer >= 0 ? options.layer + 1 : num_layers;
  std::vector<BalanceReport> after, before;
  for (std::int64_t layer = first; layer < last; ++layer) {
    const std::int64_t table_layer = table.num_layers == 1 ? 0 : layer;
    const std::int64_t traffic_layer = traffic.num_layers() == 1 ? 0 : layer;
    after.push_back(traffic.route(table.layer(table_layer), traffic_layer, analyze));
    before.push_back(traffic.route(before_table.layer(0), traffic_layer, before_options));
  }
  // The plot and the detail show the chosen layer, else the worst one.
  std::size_t shown = 0;
  for (std::size_t i = 1; i < after.size(); ++i) {
    if (after[i].max_over_mean > after[shown].max_over_mean) shown = i;
  }
  const std::int64_t shown_layer = first + static_cast<std::int64_t>(shown);
  const TableView shown_table = table.layer(table.num_layers == 1 ? 0 : shown_layer);
  const std::string mode = rule_phrase(analyze.rule);

  if (!options.svg_path.empty()) {
    const std::string title =
        "Per-rank load, " + mode + (num_layers > 1 ? ", layer " + std::to_string(shown_layer) : "");
    write_text(options.svg_path,
               balance_svg(title, {{"before: no redundancy", before[shown].rank_load},
                                   {"after: " + options.table_path, after[shown].rank_load}}));
  }
  if (options.json) {
    nlohmann::json json;
    json["table"] = options.table_path;
    json["traffic"] = traffic.describe();
    json["balance_mode"] = rule_info(analyze.rule).balance_mode;
    json["rule"] = rule_info(analyze.rule).name;
    for (std::size_t i = 0; i < after.size(); ++i) {
      nlohmann::json layer = balance_json(after[i]);
      layer["layer"] = first + static_cast<std::int64_t>(i);
      layer["before"] = balance_json(before[i]);
      json["layers"].push_back(layer);
    }
    std::printf("%s\n", json.dump(2).c_str());
    return;
  }

  std::printf(
      "%s: %lld experts, %lld ranks x %lld slots, %s; traffic: %s\n", options.table_path.c_str(),
      static_cast<long long>(table.num_experts), static_cast<long long>(options.world_size),
      static_cast<long long>(options.slots_per_rank), mode.c_str(), traffic.describe().c_str());
  if (after.size() > 1) {
    std::printf("\n  layer  before  after  dead  share rank  claimed twice\n");
    for (std::size_t i = 0; i < after.size(); ++i) {
      std::printf("  %5lld  %6.3f  %5.3f  %4lld  %10lld  %13lld\n",
                  static_cast<long long>(first + static_cast<std::int64_t>(i)),
                  before[i].max_over_mean, after[i].max_over_mean,
                  static_cast<long long>(after[i].dead_replicas),
                  static_cast<long long>(after[i].replicas_sharing_rank),
                  static_cast<long long>(after[i].slots_claimed_twice));
    }
    std::printf("\nlayer %lld (the worst):\n", static_cast<long long>(shown_layer));
  }
  std::printf("\n");
  print_comparison({{"before: no redundancy", "-", before[shown]},
                    {"after", rule_label(analyze.rule), after[shown]}});
  const BalanceReport& r = after[shown];
  std::printf(
      "\n  %lld tokens; per rank: mean %s, max %s; %lld replicas, %lld idle, %lld slots "
      "claimed twice, %lld unused\n\n",
      static_cast<long long>(r.total_load), compact_count(r.mean_rank_load).c_str(),
      compact_count(r.max_rank_load).c_str(), static_cast<long long>(r.num_replicas),
      static_cast<long long>(r.idle_replicas), static_cast<long long>(r.slots_claimed_twice),
      static_cast<long long>(r.unused_slots));
  print_rank_detail(r, shown_table);
  if (!options.svg_path.empty()) std::printf("\nwrote %s\n", options.svg_path.c_str());
}

}  // namespace

void add_simulate_command(CLI::App& app) {
  auto options = std::make_shared<SimulateOptions>();
  CLI::App* command = app.add_subcommand(
      "simulate", "Route traffic through a table with the operator and report the balance");
  command->add_option("--table", options->table_path, "(E, F) or (L, E, F) int32 eplb_table .npy")
      ->required();
  command->add_option("--world-size", options->world_size, "EP group size W")
      ->check(in_range(1, INT32_MAX))
      ->required();
  command->add_option("--slots-per-rank", options->slots_per_rank, "physical slots per rank S")
      ->check(in_range(1, INT32_MAX))
      ->required();
  command->add_option("--load", options->load_path,
                      "load statistics .npy: (W, E), (E,), (L, E) or (L, W|1, E) (see --layout)");
  add_layout_option(*command, options->layout);
  command->add_option("--expert-ids", options->expert_ids_path,
                      "routing traces .npy: (W, BS, K) logical expert ids per source rank");
  command->add_option("--active-mask", options->active_mask_path,
                      "(W, BS) bool .npy: tokens to count (with --expert-ids)");
  add_rule_options(command, &options->rule);
  command
      ->add_option("--ranks-per-node", options->ranks_per_node,
                   "ranks per node, to report node locality (0 = unknown)")
      ->check(in_range(0, INT32_MAX))
      ->capture_default_str();
  command->add_option("--layer", options->layer, "only this layer (-1 = all)")
      ->check(in_range_or(-1, "all", 0))
      ->capture_default_str();
  command->add_flag("--json", options->json, "print the full report as JSON");
  command->add_option("--svg", options->svg_path, "write a per-rank load plot here");
  command->callback([options] { run_simulate(*options); });
}

}  // namespace moe_eplb::cli

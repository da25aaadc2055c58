// moe-eplb diff: what changes from one table to the next, and what moving
// the expert weights costs (migration_plan(): receives, local copies, bytes).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "balance_report.hpp"
#include "commands.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "moe_eplb/table.hpp"
#include "options.hpp"
#include "plan_io.hpp"

namespace moe_eplb::cli {
namespace {

constexpr const char* kDiff = "diff()";

struct DiffOptions {
  std::string from_path;
  std::string to_path;
  Topology topology;
  std::int64_t expert_bytes = 0;
  bool json = false;
};

// One layer's changes, or the sum over layers (per-rank counts summed).
struct LayerDiff {
  std::int64_t slots_changed = 0;
  std::vector<std::int64_t> received_per_rank;
  std::vector<std::int64_t> sent_per_rank;
  std::int64_t received = 0;
  std::int64_t local_copies = 0;
  std::int64_t kept = 0;
  std::int64_t cross_node = 0;

  void add(const LayerDiff& other) {
    slots_changed += other.slots_changed;
    received += other.received;
    local_copies += other.local_copies;
    kept += other.kept;
    cross_node += other.cross_node;
    received_per_rank.resize(other.received_per_rank.size(), 0);
    sent_per_rank.resize(other.sent_per_rank.size(), 0);
    for (std::size_t r = 0; r < other.received_per_rank.size(); ++r) {
      received_per_rank[r] += other.received_per_rank[r];
      sent_per_rank[r] += other.sent_per_rank[r];
    }
  }
  std::int64_t max_received() const {
    return *std::max_element(received_per_rank.begin(), received_per_rank.end());
  }
  double mean_received() const {
    return static_cast<double>(received) / static_cast<double>(received_per_rank.size());
  }
};

LayerDiff diff_layer(const TableView& from, const TableView& to, const Topology& topology) {
  const TableDiff diff = diff_tables(from, to, topology);
  const MigrationPlan plan = migration_plan(from, to, topology);
  LayerDiff result;
  result.slots_changed = diff.slots_changed;
  result.received_per_rank = plan.received_per_rank;
  result.sent_per_rank = plan.sent_per_rank;
  result.received = plan.received;
  result.local_copies = plan.local_copies;
  result.kept = plan.kept;
  result.cross_node = plan.cross_node;
  return result;
}

std::string percent(std::int64_t part, std::int64_t whole) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f%%",
                whole == 0 ? 0.0 : 100.0 * static_cast<double>(part) / static_cast<double>(whole));
  return text;
}

nlohmann::json diff_json(const LayerDiff& diff, std::int64_t num_slots, std::int64_t expert_bytes) {
  nlohmann::json json;
  json["slots"] = num_slots;
  json["slots_changed"] = diff.slots_changed;
  json["changed_share"] = static_cast<double>(diff.slots_changed) / static_cast<double>(num_slots);
  json["received"] = diff.received;
  json["received_per_rank"] = diff.received_per_rank;
  json["max_received_per_rank"] = diff.max_received();
  json["mean_received_per_rank"] = diff.mean_received();
  json["sent_per_rank"] = diff.sent_per_rank;
  json["local_copies"] = diff.local_copies;
  json["kept"] = diff.kept;
  json["cross_node_receives"] = diff.cross_node;
  json["bytes_received"] = diff.received * expert_bytes;
  json["max_bytes_received_per_rank"] = diff.max_received() * expert_bytes;
  return json;
}

// "12 of 48 slots changed (25.0%); received per rank max 3, mean 1.50; 6
// receives (2 cross-node), 4 local copies, 38 kept[; 6.0M bytes, max 3.0M per rank]".
void print_diff(const char* label, const LayerDiff& diff, std::int64_t num_slots,
                std::int64_t expert_bytes) {
  std::printf(
      "%s: %lld of %lld slots changed (%s); experts received per rank max %lld, mean %.2f; "
      "%lld receives (%lld cross-node), %lld local copies, %lld kept",
      label, static_cast<long long>(diff.slots_changed), static_cast<long long>(num_slots),
      percent(diff.slots_changed, num_slots).c_str(), static_cast<long long>(diff.max_received()),
      diff.mean_received(), static_cast<long long>(diff.received),
      static_cast<long long>(diff.cross_node), static_cast<long long>(diff.local_copies),
      static_cast<long long>(diff.kept));
  if (expert_bytes > 0) {
    std::printf("; %lld bytes received (%sB), max %sB on one rank",
                static_cast<long long>(diff.received * expert_bytes),
                compact_count(static_cast<double>(diff.received * expert_bytes)).c_str(),
                compact_count(static_cast<double>(diff.max_received() * expert_bytes)).c_str());
  }
  std::printf("\n");
}

void run_diff(const DiffOptions& options) {
  const Topology& topology = options.topology;
  MOE_EPLB_CHECK(topology.slots_per_rank <= INT32_MAX / topology.world_size, kDiff,
                 ": --slots-per-rank must be in 1..", INT32_MAX / topology.world_size,
                 " for --world-size ", topology.world_size, " (every slot id fits int32), got ",
                 topology.slots_per_rank);
  MOE_EPLB_CHECK(
      topology.ranks_per_node >= 0 &&
          (topology.ranks_per_node == 0 || topology.world_size % topology.ranks_per_node == 0),
      kDiff, ": --ranks-per-node must be 0 (one node) or divide --world-size ", topology.world_size,
      ", got ", topology.ranks_per_node);
  const LoadedTables from = load_layered_table("--from", options.from_path);
  const LoadedTables to = load_layered_table("--to", options.to_path);
  MOE_EPLB_CHECK(from.table.num_layers == to.table.num_layers &&
                     from.table.num_experts == to.table.num_experts,
                 kDiff, ": --from has ", from.table.num_layers, " layer(s) of ",
                 from.table.num_experts, " experts but --to has ", to.table.num_layers,
                 " layer(s) of ", to.table.num_experts,
                 " experts; the tables must have the same layers and experts (F may differ)");

  const std::int64_t num_layers = from.table.num_layers;
  const std::int64_t num_slots = topology.world_size * topology.slots_per_rank;
  std::vector<LayerDiff> layers;
  LayerDiff total;
  for (std::int64_t layer = 0; layer < num_layers; ++layer) {
    const std::string where = ", layer " + std::to_string(layer);
    check_table_for(topology, from.table.layer(layer), kDiff,
                    "--from " + options.from_path + where);
    check_table_for(topology, to.table.layer(layer), kDiff, "--to " + options.to_path + where);
    layers.push_back(diff_layer(from.table.layer(layer), to.table.layer(layer), topology));
    total.add(layers.back());
  }

  if (options.json) {
    nlohmann::json json;
    json["from"] = options.from_path;
    json["to"] = options.to_path;
    json["world_size"] = topology.world_size;
    json["slots_per_rank"] = topology.slots_per_rank;
    json["ranks_per_node"] = topology.ranks_per_node;
    json["expert_bytes"] = options.expert_bytes;
    for (std::int64_t layer = 0; layer < num_layers; ++layer) {
      nlohmann::json entry =
          diff_json(layers[static_cast<std::size_t>(layer)], num_slots, options.expert_bytes);
      entry["layer"] = layer;
      json["layers"].push_back(entry);
    }
    json["total"] = diff_json(total, num_slots * num_layers, options.expert_bytes);
    std::printf("%s\n", json.dump(2).c_str());
    return;
  }
  std::printf(
      "%s -> %s: %lld layer%s of %lld experts on %lld ranks x %lld slots%s\n",
      options.from_path.c_str(), options.to_path.c_str(), static_cast<long long>(num_layers),
      num_layers == 1 ? "" : "s", static_cast<long long>(from.table.num_experts),
      static_cast<long long>(topology.world_size), static_cast<long long>(topology.slots_per_rank),
      topology.ranks_per_node == 0
          ? ""
          : (", " + std::to_string(topology.ranks_per_node) + " ranks per node").c_str());
  for (std::int64_t layer = 0; layer < num_layers; ++layer) {
    print_diff(("layer " + std::to_string(layer)).c_str(), layers[static_cast<std::size_t>(layer)],
               num_slots, options.expert_bytes);
  }
  if (num_layers > 1) print_diff("total", total, num_slots * num_layers, options.expert_bytes);
}

}  // namespace

void add_diff_command(CLI::App& app) {
  auto options = std::make_shared<DiffOptions>();
  CLI::App* command = app.add_subcommand(
      "diff",
      "Compare two eplb_tables: slots changed, experts each rank receives, and the migration "
      "plan's receives, local copies and bytes");
  command->add_option("--from", options->from_path, ".npy table in force: (E, F) or (L, E, F)")
      ->required();
  command->add_option("--to", options->to_path, ".npy new table, same E (and L); F may differ")
      ->required();
  command->add_option("--world-size", options->topology.world_size, "EP group size W")
      ->check(in_range(1, INT32_MAX))
      ->required();
  command
      ->add_option("--slots-per-rank", options->topology.slots_per_rank,
                   "physical expert slots per rank S")
      ->check(in_range(1, INT32_MAX))
      ->required();
  command
      ->add_option("--ranks-per-node", options->topology.ranks_per_node,
                   "ranks per node, for cross-node receives (0 = one node)")
      ->check(in_range(0, INT32_MAX))
      ->capture_default_str();
  command
      ->add_option("--expert-bytes", options->expert_bytes,
                   "bytes of one expert's weights, for the bytes moved (0 = not reported)")
      ->check(in_range(0))
      ->capture_default_str();
  command->add_flag("--json", options->json, "print the report as JSON");
  command->callback([options] { run_diff(*options); });
}

}  // namespace moe_eplb::cli

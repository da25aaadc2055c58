#include "balance_report.hpp"

#include <algorithm>
#include <cstdio>

namespace moe_eplb::cli {
namespace {

std::string format(const char* pattern, double value) {
  char text[48];
  std::snprintf(text, sizeof(text), pattern, value);
  return text;
}

std::string percent(double fraction) {
  if (fraction < 0) return "n/a";
  return format(fraction < 0.1 ? "%.1f%%" : "%.0f%%", 100.0 * fraction);
}

}  // namespace

std::string compact_count(double value) {
  if (value >= 1e6) return format(value >= 1e7 ? "%.0fM" : "%.1fM", value / 1e6);
  if (value >= 1e3) return format(value >= 1e4 ? "%.0fk" : "%.1fk", value / 1e3);
  return format("%.0f", value);
}

void print_comparison(const std::vector<BalanceRow>& rows) {
  std::size_t width = 9;
  for (const BalanceRow& row : rows) width = std::max(width, row.placement.size());
  const int w = static_cast<int>(width);
  std::printf("  %-*s  %-5s  %8s  %9s  %5s  %10s  %9s  %9s\n", w, "placement", "mode", "max/mean",
              "max-mean", "dead", "share rank", "on source", "on node");
  std::printf("  %-*s  %-5s  %8s  %9s  %5s  %10s  %9s  %9s\n", w, "", "", "", "(% mean)", "repl.",
              "replicas", "rank", "");
  for (const BalanceRow& row : rows) {
    const BalanceReport& r = row.report;
    std::printf("  %-*s  %-5s  %8.3f  %9s  %5lld  %10lld  %9s  %9s\n", w, row.placement.c_str(),
                row.mode.c_str(), r.max_over_mean, percent(r.imbalance).c_str(),
                static_cast<long long>(r.dead_replicas),
                static_cast<long long>(r.replicas_sharing_rank),
                percent(r.local_rank_share).c_str(), percent(r.local_node_share).c_str());
  }
}

void print_rank_detail(const BalanceReport& report, const TableView& table) {
  // Which expert (and replica) each slot holds.
  std::vector<std::string> holder(report.slot_load.size(), "-");
  for (std::int64_t e = 0; e < table.num_experts; ++e) {
    const std::int64_t count = table.at(e, 0);
    for (std::int64_t column = 1; column <= count; ++column) {
      std::string& name = holder[static_cast<std::size_t>(table.at(e, column))];
      const std::string label =
          "e" + std::to_string(e) + (count > 1 ? "/" + std::to_string(column) : std::string());
      name = name == "-" ? label : name + "+" + label;
    }
  }
  const double scale = report.max_rank_load > 0 ? 24.0 / report.max_rank_load : 0.0;
  std::printf("  rank    tokens  x mean  %-24s  slots (expert/replica tokens)\n", "");
  for (std::int64_t rank = 0; rank < report.world_size; ++rank) {
    const double load = report.rank_load[rank];
    std::string bar(static_cast<std::size_t>(load * scale + 0.5), '#');
    std::string slots;
    for (std::int64_t slot = 0; slot < report.slots_per_rank; ++slot) {
      const std::int64_t p = rank * report.slots_per_rank + slot;
      slots += (slot ? "  " : "") + holder[p] + " " + compact_count(report.slot_load[p]);
    }
    std::printf("  %4lld  %8s  %6.3f  %-24s  %s\n", static_cast<long long>(rank),
                compact_count(load).c_str(),
                report.mean_rank_load > 0 ? load / report.mean_rank_load : 0.0, bar.c_str(),
                slots.c_str());
  }
}

nlohmann::json balance_json(const BalanceReport& r) {
  nlohmann::json json;
  json["balance_mode"] = rule_info(r.rule).balance_mode;
  json["rule"] = rule_info(r.rule).name;
  json["world_size"] = r.world_size;
  json["slots_per_rank"] = r.slots_per_rank;
  json["total_tokens"] = r.total_load;
  json["mean_rank_load"] = r.mean_rank_load;
  json["max_rank_load"] = r.max_rank_load;
  json["max_over_mean"] = r.max_over_mean;
  json["imbalance"] = r.imbalance;
  json["num_replicas"] = r.num_replicas;
  json["dead_replicas"] = r.dead_replicas;
  json["idle_replicas"] = r.idle_replicas;
  json["replicas_sharing_rank"] = r.replicas_sharing_rank;
  json["slots_claimed_twice"] = r.slots_claimed_twice;
  json["unused_slots"] = r.unused_slots;
  json["local_rank_share"] = r.local_rank_share;
  json["local_node_share"] =
      r.local_node_share < 0 ? nlohmann::json(nullptr) : nlohmann::json(r.local_node_share);
  json["rank_load"] = r.rank_load;
  json["slot_load"] = r.slot_load;
  return json;
}

}  // namespace moe_eplb::cli

// Printing analyzer results: the before/after comparison table (simulate and
// demo), the per-rank detail, and the --json form.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/types.hpp"

namespace moe_eplb::cli {

// 950, 12.3k, 4.5M.
std::string compact_count(double value);

// One row of the comparison table.
struct BalanceRow {
  std::string placement;  // e.g. "moe-eplb", "DeepSeek EPLB", "no redundancy"
  std::string mode;       // rule_label() or "-" (one replica each: the rule does not matter)
  BalanceReport report;
};

// placement | mode | max/mean | (max-mean)/mean | dead | share a rank | on source rank | on node.
void print_comparison(const std::vector<BalanceRow>& rows);

// Tokens per rank with a bar, x mean, and the slots on the rank.
void print_rank_detail(const BalanceReport& report, const TableView& eplb_table);

nlohmann::json balance_json(const BalanceReport& report);

}  // namespace moe_eplb::cli

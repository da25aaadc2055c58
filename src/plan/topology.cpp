#include "moe_eplb/plan/topology.hpp"

#include "moe_eplb/error.hpp"
#include "moe_eplb/table.hpp"

namespace moe_eplb {

void Topology::check(const char* operation) const {
  MOE_EPLB_CHECK(world_size >= 1 && world_size <= INT32_MAX, operation,
                 ": world_size must be in 1..", INT32_MAX, ", got ", world_size);
  MOE_EPLB_CHECK(slots_per_rank >= 1 && slots_per_rank <= INT32_MAX / world_size, operation,
                 ": slots_per_rank must be in 1..", INT32_MAX / world_size, " for world_size ",
                 world_size, " (every slot id fits int32), got ", slots_per_rank);
  MOE_EPLB_CHECK(ranks_per_node >= 0 && (ranks_per_node == 0 || world_size % ranks_per_node == 0),
                 operation, ": ranks_per_node must be 0 (one node) or divide world_size ",
                 world_size, ", got ", ranks_per_node);
}

void check_table_for(const Topology& topology, const TableView& table, const char* operation,
                     const std::string& argument, TableUse use) {
  MOE_EPLB_CHECK(table.data != nullptr && table.num_experts >= 1 && table.num_columns >= 2,
                 operation, ": ", argument, " must be a non-empty (E, F) table with F >= 2, got (",
                 table.num_experts, ", ", table.num_columns, ")");
  ValidateTableOptions options;
  options.check_rank_mode_reachability = false;
  options.warn_unused_slots = false;
  const TableReport report =
      validate_table(table, topology.world_size, topology.num_slots(), options);
  std::string problems;
  std::int64_t num_problems = 0;
  for (const TableIssue& issue : report.issues) {
    const bool routable = issue.kind == TableIssue::Kind::kSlotClaimedTwice ||
                          issue.kind == TableIssue::Kind::kDuplicateInRow;
    if (issue.severity != TableIssue::Severity::kError || (use == TableUse::kRouting && routable)) {
      continue;
    }
    if (num_problems++ < 3) problems += "\n  " + issue.message;
  }
  if (use == TableUse::kPlacement) num_problems = report.total_errors;
  MOE_EPLB_CHECK_CODE(num_problems == 0, ErrorCode::kInvalidTable, operation, ": ", argument,
                      " is not a valid table for ", topology.world_size, " ranks x ",
                      topology.slots_per_rank, " slots (", num_problems, " problem",
                      num_problems == 1 ? "" : "s",
                      ", the first below; validate_table() lists "
                      "all)",
                      problems);
}

}  // namespace moe_eplb

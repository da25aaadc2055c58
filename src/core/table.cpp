#include "moe_eplb/table.hpp"

#include <algorithm>
#include <sstream>
#include <tuple>

#include "moe_eplb/detail/route.hpp"
#include "moe_eplb/error.hpp"

namespace moe_eplb {
namespace {

using Kind = TableIssue::Kind;
using Severity = TableIssue::Severity;

class ReportBuilder {
 public:
  ReportBuilder(TableReport& report, std::int64_t max_issues)
      : report_(report), max_issues_(max_issues) {}

  template <typename... Parts>
  void error(Kind kind, std::int64_t row, std::int64_t column, Parts&&... parts) {
    ++report_.total_errors;
    add(Severity::kError, kind, row, column, detail::concat(std::forward<Parts>(parts)...));
  }

  template <typename... Parts>
  void warning(Kind kind, std::int64_t row, std::int64_t column, Parts&&... parts) {
    ++report_.total_warnings;
    add(Severity::kWarning, kind, row, column, detail::concat(std::forward<Parts>(parts)...));
  }

 private:
  void add(Severity severity, Kind kind, std::int64_t row, std::int64_t column,
           std::string message) {
    if (static_cast<std::int64_t>(report_.issues.size()) >= max_issues_) return;
    report_.issues.push_back(TableIssue{severity, kind, row, column, std::move(message)});
  }

  TableReport& report_;
  std::int64_t max_issues_;
};

struct Placement {
  std::int32_t slot;
  std::int64_t row;
  std::int64_t column;
};

bool count_in_range(std::int64_t count, std::int64_t num_columns) {
  return count >= 1 && count <= num_columns - 1;
}

// Smallest multiple of world_size above every slot that a row with a
// valid count names (at least world_size).
std::int64_t infer_num_physical(const TableView& table, std::int64_t world_size) {
  std::int64_t max_id = -1;
  for (std::int64_t row = 0; row < table.num_experts; ++row) {
    const std::int64_t count = table.at(row, 0);
    if (!count_in_range(count, table.num_columns)) continue;
    for (std::int64_t column = 1; column <= count; ++column) {
      max_id = std::max<std::int64_t>(max_id, table.at(row, column));
    }
  }
  const std::int64_t needed = std::max<std::int64_t>(max_id + 1, 1);
  return (needed + world_size - 1) / world_size * world_size;
}

}  // namespace

std::string TableReport::to_string() const {
  std::ostringstream out;
  for (const TableIssue& issue : issues) {
    out << (issue.severity == TableIssue::Severity::kError ? "error: " : "warning: ")
        << issue.message << '\n';
  }
  const std::int64_t listed = static_cast<std::int64_t>(issues.size());
  if (listed < total_errors + total_warnings) {
    out << "... and " << total_errors + total_warnings - listed << " more (" << total_errors
        << " errors and " << total_warnings << " warnings in all)\n";
  }
  return out.str();
}

std::int64_t ranks_served_by_replica(std::int64_t count, std::int64_t replica,
                                     std::int64_t world_size) {
  if (count < 1 || replica < 1 || replica > count || world_size < 1) return 0;
  const detail::SourceRanks sources = detail::rank_mode_sources(count, replica - 1, world_size);
  return sources.end - sources.begin;
}

std::int64_t rank_mode_replica(std::int64_t count, std::int64_t local_rank_id,
                               std::int64_t world_size) {
  return detail::replica_column(static_cast<std::uint32_t>(count), 0,
                                static_cast<std::uint32_t>(local_rank_id),
                                static_cast<std::uint32_t>(world_size), BalanceMode::kByRank);
}

TableReport validate_table(const TableView& table, std::int64_t world_size,
                           std::int64_t num_physical_experts, const ValidateTableOptions& options) {
  constexpr const char* kOperation = "validate_table()";
  MOE_EPLB_CHECK(table.num_experts >= 0 && table.num_columns >= 0, kOperation,
                 ": eplb_table shape (", table.num_experts, ", ", table.num_columns,
                 ") has a negative size");
  MOE_EPLB_CHECK(table.data != nullptr || table.num_experts == 0 || table.num_columns == 0,
                 kOperation, ": eplb_table has no data pointer");
  MOE_EPLB_CHECK(world_size == -1 || (world_size >= 1 && world_size <= INT32_MAX), kOperation,
                 ": world_size must be -1 (unknown) or in 1..", INT32_MAX, ", got ", world_size);
  // Unknown world size (token mode): skip every per-rank check.
  const bool ranks_known = world_size != -1;
  if (!ranks_known) world_size = 1;
  MOE_EPLB_CHECK(num_physical_experts == -1 || num_physical_experts >= 1, kOperation,
                 ": num_physical_experts must be -1 (infer) or positive, got ",
                 num_physical_experts);

  const Limits& limits = limits_of(options.profile);
  TableReport report;
  ReportBuilder add(report, options.max_issues);
  const std::int64_t num_experts = table.num_experts;
  const std::int64_t num_columns = table.num_columns;

  // Shape and scalar limits.
  if (num_experts < limits.min_experts || num_experts > limits.max_experts) {
    add.error(Kind::kBadShape, -1, -1, "eplb_table has ", num_experts, " rows (E), expected ",
              limits.min_experts, "..", limits.max_experts, " under the ", limits.name, " profile");
  }
  if (ranks_known && (world_size < limits.min_world_size || world_size > limits.max_world_size)) {
    add.error(Kind::kBadShape, -1, -1, "world_size ", world_size, " is outside ",
              limits.min_world_size, "..", limits.max_world_size, " under the ", limits.name,
              " profile");
  }
  if (ranks_known && limits.columns_at_most_world_size_plus_one && num_columns > world_size + 1) {
    add.error(Kind::kBadShape, -1, -1, "eplb_table has ", num_columns,
              " columns (F), expected at most world_size + 1 = ", world_size + 1, " under the ",
              limits.name, " profile");
  }
  if (num_columns < 2 || num_columns > INT32_MAX) {
    add.error(Kind::kBadShape, -1, -1, "eplb_table has ", num_columns,
              " columns (F), expected at least 2 (the count column and one replica)");
    report.num_physical_experts = num_physical_experts == -1 ? world_size : num_physical_experts;
    report.num_physical_experts_inferred = num_physical_experts == -1;
    return report;
  }

  // Slot count.
  report.num_physical_experts_inferred = num_physical_experts == -1;
  const std::int64_t num_physical = report.num_physical_experts_inferred
                                        ? infer_num_physical(table, world_size)
                                        : num_physical_experts;
  report.num_physical_experts = num_physical;
  if (num_physical % world_size != 0) {
    add.error(Kind::kSlotsNotMultiple, -1, -1, "num_physical_experts ", num_physical,
              " is not a multiple of world_size ", world_size,
              " (every rank must hold the same number of slots)");
  }
  if (num_physical > limits.max_physical_experts) {
    add.error(Kind::kTooManySlots, -1, -1, "num_physical_experts ", num_physical,
              report.num_physical_experts_inferred
                  ? " (inferred from the largest slot in the table)"
                  : "",
              " exceeds ", limits.max_physical_experts, " under the ", limits.name, " profile");
  }
  const std::int64_t slots_per_rank =
      ranks_known && num_physical % world_size == 0 ? num_physical / world_size : 0;

  // Rows.
  std::vector<Placement> placements;
  std::vector<std::int64_t> row_ranks;
  for (std::int64_t row = 0; row < num_experts; ++row) {
    const std::int64_t count = table.at(row, 0);
    if (!count_in_range(count, num_columns)) {
      add.error(Kind::kBadCount, row, 0, "row ", row, ": replica count ", count, " is outside 1..",
                num_columns - 1, " (F - 1)");
      continue;
    }
    if (ranks_known && limits.columns_at_most_world_size_plus_one && count > world_size) {
      add.error(Kind::kBadCount, row, 0, "row ", row, ": replica count ", count,
                " exceeds world_size ", world_size, " under the ", limits.name, " profile");
    }
    const std::size_t row_begin = placements.size();
    const std::int64_t group = detail::ranks_per_replica(count, world_size);
    for (std::int64_t column = 1; column <= count; ++column) {
      const std::int64_t slot = table.at(row, column);
      if (slot < 0 || slot >= num_physical) {
        add.error(Kind::kBadSlot, row, column, "row ", row, ", column ", column, ": slot ", slot,
                  " is outside 0..", num_physical - 1, " (num_physical_experts ", num_physical,
                  report.num_physical_experts_inferred ? ", inferred" : "", ")");
        continue;
      }
      placements.push_back(Placement{static_cast<std::int32_t>(slot), row, column});
      if (ranks_known && options.check_rank_mode_reachability &&
          ranks_served_by_replica(count, column, world_size) == 0) {
        add.warning(Kind::kDeadReplica, row, column, "row ", row, ", column ", column, ": replica ",
                    column, " (slot ", slot, ") never receives tokens in rank mode: world_size ",
                    world_size, " with ", count, " replicas makes groups of ", group,
                    " ranks, which reach only replicas 1..", (world_size + group - 1) / group);
      }
    }
    if (slots_per_rank > 0) {
      row_ranks.clear();
      for (std::size_t i = row_begin; i < placements.size(); ++i) {
        row_ranks.push_back(placements[i].slot / slots_per_rank);
      }
      std::sort(row_ranks.begin(), row_ranks.end());
      for (std::size_t i = 1; i < row_ranks.size(); ++i) {
        if (row_ranks[i] == row_ranks[i - 1] && (i < 2 || row_ranks[i - 2] != row_ranks[i])) {
          add.warning(Kind::kReplicasShareRank, row, -1, "row ", row,
                      ": several replicas sit on rank ", row_ranks[i], " (", slots_per_rank,
                      " slots per rank), so they add no balance across ranks");
        }
      }
    }
  }

  // Slots named twice, within a row or across rows.
  std::stable_sort(placements.begin(), placements.end(),
                   [](const Placement& a, const Placement& b) { return a.slot < b.slot; });
  std::int64_t distinct = 0;
  for (std::size_t i = 0; i < placements.size(); ++i) {
    if (i == 0 || placements[i].slot != placements[i - 1].slot) {
      ++distinct;
      continue;
    }
    std::size_t first = i - 1;
    while (first > 0 && placements[first - 1].slot == placements[i].slot) --first;
    const Placement& owner = placements[first];
    const Placement& again = placements[i];
    if (owner.row == again.row) {
      add.error(Kind::kDuplicateInRow, again.row, again.column, "row ", again.row, ": slot ",
                again.slot, " appears in columns ", owner.column, " and ", again.column);
    } else {
      add.error(Kind::kSlotClaimedTwice, again.row, again.column, "physical slot ", again.slot,
                " is claimed by row ", owner.row, " (column ", owner.column, ") and row ",
                again.row, " (column ", again.column, ")");
    }
  }

  if (options.warn_unused_slots) {
    // Used ids are sorted: list the gaps until the issue cap, count them all.
    const std::int64_t total_unused = num_physical - distinct;
    std::int64_t listed = 0;
    auto list_gap = [&](std::int64_t from, std::int64_t to) {  // slots [from, to)
      for (std::int64_t slot = from; slot < to && listed < options.max_issues; ++slot, ++listed) {
        add.warning(Kind::kUnusedSlot, -1, -1, "physical slot ", slot,
                    slots_per_rank > 0 ? detail::concat(" (rank ", slot / slots_per_rank, ")")
                                       : std::string(),
                    " is not used by any logical expert");
      }
    };
    std::int64_t next = 0;  // every slot below `next` is used or already listed
    for (const Placement& placement : placements) {
      if (placement.slot > next) list_gap(next, placement.slot);
      next = std::max<std::int64_t>(next, std::int64_t{placement.slot} + 1);
    }
    list_gap(next, num_physical);
    report.total_warnings += total_unused - listed;  // add.warning() counted the listed ones
  }

  std::stable_sort(report.issues.begin(), report.issues.end(),
                   [](const TableIssue& a, const TableIssue& b) {
                     return std::tie(a.row, a.column) < std::tie(b.row, b.column);
                   });
  return report;
}

void throw_if_invalid(const TableReport& report, const char* operation) {
  if (report.ok()) return;
  std::string text = report.to_string();
  if (!text.empty() && text.back() == '\n') text.pop_back();
  MOE_EPLB_FAIL(ErrorCode::kInvalidTable, operation, ": eplb_table is invalid (",
                report.total_errors, report.total_errors == 1 ? " error" : " errors", "):\n", text);
}

}  // namespace moe_eplb

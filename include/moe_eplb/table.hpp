// Validation of a whole EPLB table, done once when a table is installed (not
// on every call), and the rank-mode facts a planner or analyzer needs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe_eplb/limits.hpp"
#include "moe_eplb/types.hpp"

namespace moe_eplb {

// One finding. Errors make the table unusable; warnings flag placements the
// operator accepts but that waste capacity (dead replicas, replicas of one
// expert sharing a rank, slots no expert uses).
struct TableIssue {
  enum class Severity : std::uint8_t { kError, kWarning };
  enum class Kind : std::uint8_t {
    kBadShape,           // table or parameters themselves out of range
    kBadCount,           // eplb_table[row, 0] outside [1, F-1] (or > world_size)
    kBadSlot,            // eplb_table[row, col] outside [0, num_physical_experts)
    kDuplicateInRow,     // the same slot twice in one row
    kSlotClaimedTwice,   // one physical slot in two rows
    kSlotsNotMultiple,   // num_physical_experts % world_size != 0
    kTooManySlots,       // num_physical_experts above the profile's limit
    kDeadReplica,        // rank mode never selects this replica (warning)
    kReplicasShareRank,  // two replicas of one expert on one rank (warning)
    kUnusedSlot,         // a physical slot no row names (warning)
  };
  Severity severity;
  Kind kind;
  std::int64_t row;     // -1 when not about a row
  std::int64_t column;  // -1 when not about a column
  std::string message;  // complete sentence, e.g. "row 17: replica count 0, expected 1..4"
};

struct TableReport {
  std::vector<TableIssue> issues;  // errors and warnings, in row order (maybe truncated)
  std::int64_t total_errors = 0;   // exact, even when `issues` was truncated
  std::int64_t total_warnings = 0;
  // The slot count the checks used: the one given, or inferred as the
  // smallest multiple of world_size above the largest slot in the table.
  std::int64_t num_physical_experts = 0;
  bool num_physical_experts_inferred = false;

  bool ok() const { return total_errors == 0; }  // no errors (warnings allowed)
  // All issues, one per line: "error: row 3: ...", then "... and N more".
  std::string to_string() const;
};

struct ValidateTableOptions {
  LimitProfile profile = LimitProfile::kNative;
  // Warn about replicas that rank mode (balance_mode 0) can never select.
  bool check_rank_mode_reachability = true;
  // Warn about physical slots that no row names.
  bool warn_unused_slots = true;
  // Stop collecting after this many issues (the count is still exact).
  std::int64_t max_issues = 1000;
};

// Checks every row of the table: counts in [1, F-1] (and <= world_size),
// slots in [0, num_physical_experts) and distinct within a row, no
// physical slot claimed by two logical experts, num_physical_experts a
// multiple of world_size and within the profile's limit. Reports every
// problem with its row and column, not just the first. Pass
// num_physical_experts = -1 to infer it, and world_size = -1 when it is
// unknown (token mode): then every per-rank check is skipped. Never throws for table contents;
// throws moe_eplb::Error (kInvalidArgument) only for a null/negative-size
// view or a world_size that is neither -1 nor in 1..INT32_MAX. Reads every element once; allocates
// O(E*F + slots).
TableReport validate_table(const TableView& eplb_table, std::int64_t world_size,
                           std::int64_t num_physical_experts = -1,
                           const ValidateTableOptions& options = {});

// Throws moe_eplb::Error (kInvalidTable) carrying report.to_string() when the
// report has errors. `operation` starts the message, e.g. "prepare_table()".
void throw_if_invalid(const TableReport& report, const char* operation);

// Rank mode facts (SPEC.md, mode 0). Ranks are cut into consecutive groups of
// ceil(world_size / count); replica j (1-based) serves group j - 1.
// Number of ranks whose tokens replica `replica` (1-based) receives; 0 means dead.
std::int64_t ranks_served_by_replica(std::int64_t count, std::int64_t replica,
                                     std::int64_t world_size);
// 1-based replica column rank mode selects on `local_rank_id` for `count` replicas.
std::int64_t rank_mode_replica(std::int64_t count, std::int64_t local_rank_id,
                               std::int64_t world_size);

}  // namespace moe_eplb

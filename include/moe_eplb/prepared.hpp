// The hot-path form: validate a table once for (local_rank_id, world_size,
// balance_mode), precompute what each logical expert maps to, then map many
// batches with one gather per element and no table checks.
//
// Routes layout (also what the CUDA kernels and the torch op consume), E rows
// of row_width int32 entries:
//   rank mode  (row_width == 1): routes[e] = the slot this rank uses for e.
//   token mode (row_width == F): routes[e * F + 0] = count c,
//              routes[e * F + 1 .. c] = the replicas' slots in table order,
//              the rest -1. Rows are as wide as the table's, so every table
//              of one shape fits the same buffer and can be swapped in place.
#pragma once

#include <cstdint>
#include <vector>

#include "moe_eplb/table.hpp"
#include "moe_eplb/update_expert.hpp"

namespace moe_eplb {

// A non-owning view of prepared routes (host or device memory).
struct PreparedView {
  const std::int32_t* routes = nullptr;
  std::int64_t num_experts = 0;
  std::int64_t row_width = 1;
  BalanceMode balance_mode = BalanceMode::kByRank;
  // Every route is in [0, num_physical_experts); kernels re-check this before
  // indexing load counters, so a corrupted routes buffer cannot write out of bounds.
  std::int64_t num_physical_experts = 0;
  // Limits that update_expert_prepared() applies to each batch (BS, K, pruning).
  LimitProfile profile = LimitProfile::kNative;
};

// 1 in rank mode, num_columns (F) in token mode.
std::int64_t prepared_row_width(std::int64_t num_columns, BalanceMode balance_mode);

// Builds the routes for one rank straight into `routes` (num_experts *
// prepared_row_width() entries). A row the operator could not route becomes
// its negative RouteStatus in rank mode and a copy of its count in token mode
// (the router re-checks it), so this never reads out of bounds; a table that
// passed validate_table() has no such rows.
void build_routes(const TableView& eplb_table, const UpdateExpertParams& params,
                  std::int32_t* routes);

// Owns prepared routes on the host, and the validation of every table it
// installs; cuda::DevicePreparedTable keeps one of these as its host side.
class PreparedTable {
 public:
  // Validates the whole table with validate_table() (throws moe_eplb::Error
  // kInvalidTable listing every problem) and the scalars with the profile's
  // limits, then builds the routes. num_physical_experts = -1 infers it; later
  // updates keep the resolved value. Errors start with `operation`.
  PreparedTable(const TableView& eplb_table, const UpdateExpertParams& params,
                const char* operation = "PreparedTable()");

  // Validates a new table of the same shape (E, F) and rebuilds the routes in
  // place: routes().data() does not change. Throws (kInvalidArgument for
  // another shape, kInvalidTable for an invalid table) and keeps the current
  // routes. Not thread-safe against concurrent readers of the routes.
  void update(const TableView& eplb_table, const char* operation = "PreparedTable.update()");

  PreparedView view() const;
  const std::vector<std::int32_t>& routes() const { return routes_; }
  std::int64_t num_experts() const { return num_experts_; }
  std::int64_t num_columns() const { return num_columns_; }
  std::int64_t row_width() const { return row_width_; }
  const UpdateExpertParams& params() const { return params_; }  // num_physical_experts resolved
  const TableReport& report() const { return report_; }  // of the latest table; warnings survive

 private:
  TableReport validate(const TableView& eplb_table, const char* operation) const;

  UpdateExpertParams params_;
  TableReport report_;
  std::int64_t num_experts_ = 0;
  std::int64_t num_columns_ = 0;
  std::int64_t row_width_ = 1;
  std::vector<std::int32_t> routes_;
};

// check_update_expert() for the prepared form: the view itself (routes
// pointer, sizes, mode) plus the batch and outputs, with operation name
// "update_expert_prepared()".
void check_update_expert_prepared(const PreparedView& prepared, const ExpertIdsView& expert_ids,
                                  const PruningInputs* pruning, const UpdateExpertOutputs& outputs,
                                  bool has_memory = true);

// Maps a batch with prepared routes on the CPU: same outputs and same
// per-element errors as update_expert() (an expert id outside [0, E) throws
// kIndexOutOfRange naming (b, k)). Pruning and load recording as there.
void update_expert_prepared(const PreparedView& prepared, const ExpertIdsView& expert_ids,
                            const PruningInputs* pruning, const UpdateExpertOutputs& outputs);

}  // namespace moe_eplb

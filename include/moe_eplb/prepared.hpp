// The hot-path form: validate a table once for (local_rank_id, world_size,
// balance_mode), precompute what each logical expert maps to, then map many
// batches with one gather per element and no table checks.
//
// Routes layout (also what the CUDA kernels and the torch op consume):
//   rank mode  (row_width == 1): routes[e] = the physical id this rank uses for e.
//   token mode (row_width == 1 + max count): routes[e * row_width + 0] = count c,
//              routes[e * row_width + 1 .. c] = the replica ids in table order.
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

// A view over routes laid out as above, for (already resolved) params.
PreparedView make_prepared_view(const std::int32_t* routes, std::int64_t num_experts,
                                std::int64_t row_width, const UpdateExpertParams& params);

// Owns prepared routes on the host. Immutable after construction, so it can
// be shared by threads.
class PreparedTable {
 public:
  // Validates the whole table with validate_table() (throws moe_eplb::Error
  // kInvalidTable listing every problem) and the scalars with the profile's
  // limits, then builds the routes. num_physical_experts = -1 infers it.
  PreparedTable(const TableView& eplb_table, const UpdateExpertParams& params);

  PreparedView view() const;
  const std::vector<std::int32_t>& routes() const { return routes_; }
  std::int64_t num_experts() const { return num_experts_; }
  std::int64_t row_width() const { return row_width_; }
  BalanceMode balance_mode() const { return params_.balance_mode; }
  const UpdateExpertParams& params() const { return params_; }  // num_physical_experts resolved
  const TableReport& report() const { return report_; }         // warnings survive here

 private:
  UpdateExpertParams params_;
  TableReport report_;
  std::int64_t num_experts_ = 0;
  std::int64_t row_width_ = 1;
  std::vector<std::int32_t> routes_;
};

// Builds the routes for one rank straight into `routes` (size num_experts *
// row_width, row_width from prepared_row_width()). The table must already be
// valid (validate_table). Used by PreparedTable and by device-side owners.
std::int64_t prepared_row_width(const TableView& eplb_table, BalanceMode balance_mode);
void build_routes(const TableView& eplb_table, const UpdateExpertParams& params,
                  std::int32_t* routes);
// Same, with an explicit row width >= prepared_row_width() (token mode; rows
// padded with -1; rank mode requires 1). Device owners use row_width = F so
// that every table of one shape fits the same buffer and can be swapped in place.
void build_routes(const TableView& eplb_table, const UpdateExpertParams& params,
                  std::int32_t* routes, std::int64_t row_width);

// Maps a batch with prepared routes on the CPU: same outputs and same
// per-element errors as update_expert() (an expert id outside [0, E) throws
// kIndexOutOfRange naming (b, k)). Pruning and load recording as there.
void update_expert_prepared(const PreparedView& prepared, const ExpertIdsView& expert_ids,
                            const PruningInputs* pruning, const UpdateExpertOutputs& outputs);

}  // namespace moe_eplb

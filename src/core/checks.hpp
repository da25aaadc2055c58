// Front-end checks shared by the stateless and prepared entry points of every
// backend (internal header).
#pragma once

#include <cstdint>

#include "moe_eplb/detail/route.hpp"
#include "moe_eplb/limits.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/types.hpp"
#include "moe_eplb/update_expert.hpp"

namespace moe_eplb::detail {

// BS, K, data pointers, pruning shapes and outputs against `limits`.
void check_batch(const char* operation, const ExpertIdsView& expert_ids,
                 const PruningInputs* pruning, const UpdateExpertOutputs* outputs,
                 const Limits& limits);

// local_rank_id, world_size, balance_mode, num_physical_experts, and the
// table shape (E, F) when `eplb_table` is given.
void check_scalars(const char* operation, const UpdateExpertParams& params,
                   const TableView* eplb_table, const Limits& limits);

// Everything check_update_expert() checks, plus the output pointers when
// `outputs` is given. `operation` starts every message.
void check_update_expert_call(const char* operation, const UpdateExpertInputs& inputs,
                              const UpdateExpertParams& params, const UpdateExpertOutputs* outputs,
                              bool has_load_counts);

// The exclusive upper end for selected instance ids.
std::int64_t instance_id_end(const UpdateExpertParams& params);

// The prepared view itself (routes pointer, sizes, mode) plus the batch.
void check_prepared_call(const char* operation, const PreparedView& prepared,
                         const ExpertIdsView& expert_ids, const PruningInputs* pruning,
                         const UpdateExpertOutputs* outputs);

// Routers for both backends, built from checked arguments.
TableRouter table_router(const TableView& eplb_table, const UpdateExpertParams& params);
PreparedRouter prepared_router(const PreparedView& prepared);

}  // namespace moe_eplb::detail

// Front-end checks shared by the stateless and prepared entry points of every
// backend, and the routers they hand to the kernels (internal header).
#pragma once

#include <cstdint>

#include "moe_eplb/detail/route.hpp"
#include "moe_eplb/limits.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/types.hpp"
#include "moe_eplb/update_expert.hpp"

namespace moe_eplb::detail {

// "by rank", "by token", "vLLM's token hash".
const char* balance_mode_name(BalanceMode balance_mode);

// Throws unless balance_mode is 0, 1 or 2, with a message starting with `operation`.
void check_balance_mode(const char* operation, BalanceMode balance_mode);

// local_rank_id, world_size, balance_mode, num_physical_experts, and the
// table shape (E, F) when `eplb_table` is given.
void check_scalars(const char* operation, const UpdateExpertParams& params,
                   const TableView* eplb_table, const Limits& limits);

// The name errors of the stateless mapping start with: "update_expert()", or
// "update_expert_pruned()" when pruning inputs are given.
inline const char* mapping_operation(const UpdateExpertInputs& inputs) {
  return inputs.pruning != nullptr ? "update_expert_pruned()" : "update_expert()";
}

// The num_physical_experts that bounds selected slots: the caller's, or the
// profile's limit when the caller did not give it (-1).
std::int64_t resolved_num_physical_experts(const UpdateExpertParams& params);

// Routers for both backends, built from checked arguments.
TableRouter table_router(const TableView& eplb_table, const UpdateExpertParams& params);
PreparedRouter prepared_router(const PreparedView& prepared);

}  // namespace moe_eplb::detail

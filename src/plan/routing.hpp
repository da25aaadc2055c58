// Internal: one routed batch through the core operator, counted per physical
// slot. The recorder (identity table) and the trace analyzer (the real
// table) both use it, so loads are always counted the operator's way.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe_eplb/update_expert.hpp"

namespace moe_eplb::plan_detail {

class BatchRouter {
 public:
  // Maps `expert_ids` with update_expert(table, params) and adds every kept
  // choice to load_counts[slot] (params.num_physical_experts entries).
  // `pruning` and `active_mask` (BS bytes) are optional, at most one of them;
  // with only a mask every choice of an active token is kept. Errors as
  // update_expert(), with `context` (e.g. "analyze_trace(): source rank 3: ")
  // put in front of the message.
  void route(const TableView& table, const UpdateExpertParams& params,
             const ExpertIdsView& expert_ids, const PruningInputs* pruning,
             const std::uint8_t* active_mask, std::int64_t* load_counts,
             const std::string& context);

 private:
  std::vector<std::int64_t> balanced_;  // int64 covers both id dtypes
  std::vector<std::uint8_t> mask_;
};

}  // namespace moe_eplb::plan_detail

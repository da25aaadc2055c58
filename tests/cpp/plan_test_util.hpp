// Shared by the planner tests: the PlanOptions of a shape.
#pragma once

#include <cstdint>

#include "moe_eplb/plan/planner.hpp"

namespace moe_eplb::test {

inline PlanOptions options_for(std::int64_t world_size, std::int64_t slots_per_rank,
                               BalanceMode mode = BalanceMode::kByRank) {
  PlanOptions options;
  options.world_size = world_size;
  options.slots_per_rank = slots_per_rank;
  options.rule = rule_of_balance_mode(mode);
  return options;
}

}  // namespace moe_eplb::test

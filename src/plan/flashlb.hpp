// Internal: the pieces of the FlashLB baseline (flashlb.cpp) that tests
// check on their own.
#pragma once

#include <cstdint>
#include <vector>

namespace moe_eplb::plan_detail {

// Minimum-cost perfect matching of an n x n cost matrix (row-major): returns
// the column assigned to each row. Hungarian algorithm with potentials,
// O(n^3); deterministic. n == 0 gives an empty result.
std::vector<std::int64_t> min_cost_assignment(const std::vector<double>& cost, std::int64_t n);

// FlashLB's constants as its description gives them: replicas go to the
// largest (mean + kReplicaQuantile * std) per replica (0.674: the 75th
// percentile of a normal), and placement minimises a device's
// mean + kPlacementQuantile * std. A previous table is kept unless its
// predicted peak / average load exceeds a fresh plan's by more than
// kReplanTolerance (relative).
constexpr double kReplicaQuantile = 0.674;
constexpr double kPlacementQuantile = 0.674;
constexpr double kReplanTolerance = 0.05;

}  // namespace moe_eplb::plan_detail

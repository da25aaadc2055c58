// Rank-map gather over a contiguous run of ids (internal): the inner loop of
// the rank-mode CPU path. On x86-64 CPUs with AVX2 (checked once at run time,
// so the library still runs on any x86-64) it gathers 8 (int32) or 4 (int64)
// elements at a time; elsewhere, and for tails, a branch-free scalar loop.
#pragma once

#include <cstdint>

namespace moe_eplb::cpu {

// out[i] = routes[in[i]] for i < n. Returns false if any in[i] is outside
// [0, num_experts) or any route is outside [0, num_physical_experts) (negative
// RouteStatus codes included); then out holds unspecified values (the caller
// rescans to name the first bad one). num_experts and num_physical_experts are in
// 1..INT32_MAX.
bool gather_contiguous(const std::int32_t* in, std::int64_t n, const std::int32_t* routes,
                       std::int64_t num_experts, std::int64_t num_physical_experts, std::int32_t* out);
bool gather_contiguous(const std::int64_t* in, std::int64_t n, const std::int32_t* routes,
                       std::int64_t num_experts, std::int64_t num_physical_experts, std::int64_t* out);

}  // namespace moe_eplb::cpu

// Vectorised rank-map gather for contiguous id runs (internal). The scalar
// loop in update_expert_cpu.cpp is the portable path; on x86-64 CPUs with
// AVX2 (checked at run time, so the library still runs on any x86-64) these
// kernels do the same gather 8 (int32) or 4 (int64) elements at a time.
#pragma once

#include <cstdint>

namespace moe_eplb::cpu {

// True when the AVX2 kernels below may be called.
bool has_avx2();

// out[i] = routes[in[i]] for i < n. Returns false if any in[i] is outside
// [0, num_experts) or any route is outside [0, instance_id_end); then out
// holds unspecified values (the caller rescans to name the first bad one).
// num_experts and instance_id_end are in 1..INT32_MAX.
bool gather_avx2(const std::int32_t* in, std::int64_t n, const std::int32_t* routes,
                 std::int64_t num_experts, std::int64_t instance_id_end, std::int32_t* out);
bool gather_avx2(const std::int64_t* in, std::int64_t n, const std::int32_t* routes,
                 std::int64_t num_experts, std::int64_t instance_id_end, std::int64_t* out);

}  // namespace moe_eplb::cpu

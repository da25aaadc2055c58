// AVX2 kernels: rank-mode gathers, 8 (int32) or 4 (int64) ids at a time.
#include "gather_kernels.hpp"

#if defined(MOE_EPLB_X86_KERNELS)

#include <immintrin.h>

#include "gather_scalar.hpp"

#define MOE_EPLB_AVX2 __attribute__((target("avx2")))

namespace moe_eplb::cpu::avx2 {

MOE_EPLB_AVX2 bool gather_rank(const std::int32_t* in, std::int64_t n, const std::int32_t* routes,
                               std::int64_t num_experts, std::int64_t num_physical_experts,
                               std::int32_t* out) {
  // Unsigned min clamps both negative and too-large ids to E - 1; any lane
  // the clamp changed was out of range. Same trick for the routes.
  const __m256i last_expert = _mm256_set1_epi32(static_cast<int>(num_experts - 1));
  const __m256i last_slot = _mm256_set1_epi32(static_cast<int>(num_physical_experts - 1));
  __m256i bad = _mm256_setzero_si256();
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i expert = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i));
    const __m256i clamped = _mm256_min_epu32(expert, last_expert);
    const __m256i slot = _mm256_i32gather_epi32(routes, clamped, 4);
    bad = _mm256_or_si256(bad, _mm256_xor_si256(expert, clamped));
    bad = _mm256_or_si256(bad, _mm256_xor_si256(slot, _mm256_min_epu32(slot, last_slot)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), slot);
  }
  const bool ok = _mm256_testz_si256(bad, bad) != 0;
  return scalar::gather_rank(in + i, n - i, routes, num_experts, num_physical_experts, out + i) &&
         ok;
}

MOE_EPLB_AVX2 bool gather_rank(const std::int64_t* in, std::int64_t n, const std::int32_t* routes,
                               std::int64_t num_experts, std::int64_t num_physical_experts,
                               std::int64_t* out) {
  const __m256i last_expert = _mm256_set1_epi64x(num_experts - 1);
  const __m128i last_slot = _mm_set1_epi32(static_cast<int>(num_physical_experts - 1));
  __m256i bad64 = _mm256_setzero_si256();
  __m128i bad32 = _mm_setzero_si128();
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256i expert = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i));
    const __m256i out_of_range =
        _mm256_or_si256(_mm256_cmpgt_epi64(expert, last_expert),
                        _mm256_cmpgt_epi64(_mm256_setzero_si256(), expert));
    const __m256i index = _mm256_andnot_si256(out_of_range, expert);
    const __m128i slot = _mm256_i64gather_epi32(routes, index, 4);
    bad64 = _mm256_or_si256(bad64, out_of_range);
    bad32 = _mm_or_si128(bad32, _mm_xor_si128(slot, _mm_min_epu32(slot, last_slot)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_cvtepi32_epi64(slot));
  }
  const bool ok = _mm256_testz_si256(bad64, bad64) != 0 && _mm_testz_si128(bad32, bad32) != 0;
  return scalar::gather_rank(in + i, n - i, routes, num_experts, num_physical_experts, out + i) &&
         ok;
}

}  // namespace moe_eplb::cpu::avx2

#endif  // MOE_EPLB_X86_KERNELS

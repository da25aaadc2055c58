#include "gather_simd.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MOE_EPLB_HAVE_AVX2_KERNELS 1
#endif

namespace moe_eplb::cpu {
namespace {

// Unsigned compares catch negative values too; a bad id reads routes[0]
// instead, and only the flag records it.
template <typename T>
bool gather_scalar(const T* in, std::int64_t n, const std::int32_t* routes,
                   std::int64_t num_experts, std::int64_t num_physical_experts, T* out) {
  const auto num_rows = static_cast<std::uint64_t>(num_experts);
  const auto id_end = static_cast<std::uint64_t>(num_physical_experts);
  std::uint64_t bad = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto expert = static_cast<std::uint64_t>(in[i]);
    const bool in_range = expert < num_rows;
    const std::int64_t slot = routes[in_range ? expert : 0];
    bad |= static_cast<std::uint64_t>(!in_range) |
           static_cast<std::uint64_t>(static_cast<std::uint64_t>(slot) >= id_end);
    out[i] = static_cast<T>(slot);
  }
  return bad == 0;
}

#if defined(MOE_EPLB_HAVE_AVX2_KERNELS)

__attribute__((target("avx2"))) bool gather_avx2(const std::int32_t* in, std::int64_t n,
                                                 const std::int32_t* routes,
                                                 std::int64_t num_experts,
                                                 std::int64_t num_physical_experts, std::int32_t* out) {
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
    bad =
        _mm256_or_si256(bad, _mm256_xor_si256(slot, _mm256_min_epu32(slot, last_slot)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), slot);
  }
  const bool ok = _mm256_testz_si256(bad, bad) != 0;
  return gather_scalar(in + i, n - i, routes, num_experts, num_physical_experts, out + i) && ok;
}

__attribute__((target("avx2"))) bool gather_avx2(const std::int64_t* in, std::int64_t n,
                                                 const std::int32_t* routes,
                                                 std::int64_t num_experts,
                                                 std::int64_t num_physical_experts, std::int64_t* out) {
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
  return gather_scalar(in + i, n - i, routes, num_experts, num_physical_experts, out + i) && ok;
}

#endif

template <typename T>
bool gather(const T* in, std::int64_t n, const std::int32_t* routes, std::int64_t num_experts,
            std::int64_t num_physical_experts, T* out) {
#if defined(MOE_EPLB_HAVE_AVX2_KERNELS)
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) return gather_avx2(in, n, routes, num_experts, num_physical_experts, out);
#endif
  return gather_scalar(in, n, routes, num_experts, num_physical_experts, out);
}

}  // namespace

bool gather_contiguous(const std::int32_t* in, std::int64_t n, const std::int32_t* routes,
                       std::int64_t num_experts, std::int64_t num_physical_experts, std::int32_t* out) {
  return gather(in, n, routes, num_experts, num_physical_experts, out);
}

bool gather_contiguous(const std::int64_t* in, std::int64_t n, const std::int32_t* routes,
                       std::int64_t num_experts, std::int64_t num_physical_experts, std::int64_t* out) {
  return gather(in, n, routes, num_experts, num_physical_experts, out);
}

}  // namespace moe_eplb::cpu

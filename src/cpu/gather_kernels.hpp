// Per-instruction-set kernels behind RankMapper and TokenMapper (internal).
// Each x86 file compiles its functions for its own target with
// __attribute__((target(...))), so the library needs no special compiler
// flags and runs on any x86-64; callers check active_isa() first.
#pragma once

#include <cstdint>

#include "gather_simd.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOE_EPLB_X86_KERNELS 1
#endif

namespace moe_eplb::cpu {

// Vector pairs (64 words each, one vpermt2w) that hold `words` table words,
// rounded up to a power of two for the kernels' selection tree.
inline int table_pairs(std::int64_t words) {
  int pairs = 1;
  while (pairs * 64 < words) pairs *= 2;
  return pairs;
}

#if defined(MOE_EPLB_X86_KERNELS)
namespace avx2 {

// out[i] = routes[in[i]] with 8 (int32) or 4 (int64) gathers at a time.
bool gather_rank(const std::int32_t* in, std::int64_t n, const std::int32_t* routes,
                 std::int64_t num_experts, std::int64_t num_physical_experts, std::int32_t* out);
bool gather_rank(const std::int64_t* in, std::int64_t n, const std::int32_t* routes,
                 std::int64_t num_experts, std::int64_t num_physical_experts, std::int64_t* out);

}  // namespace avx2

namespace avx512 {

// Fills `words` from rank-mode routes (num_experts <= kMaxTableExperts).
// Returns false if a valid slot does not fit below kBadWord.
bool build_rank_words(const std::int32_t* routes, std::int64_t num_experts,
                      std::int64_t num_physical_experts, RankWords* words);

bool map_rank(const RankWords& words, const IdRows<std::int32_t>& ids);
bool map_rank(const RankWords& words, const IdRows<std::int64_t>& ids);

// Token mode for tokens below kMaxVectorToken and top_k below kMaxVectorTopK
// (the caller hands larger ones to the scalar loop). Row r's first element is
// choice 0 of token first_token + r * (row_length / top_k); a run of several
// tokens is one row.
inline constexpr std::int64_t kMaxVectorToken = std::int64_t{1} << 23;
inline constexpr std::int64_t kMaxVectorTopK = std::int64_t{1} << 24;
bool map_token(const TokenWords& words, const IdRows<std::int32_t>& ids, std::int64_t top_k,
               std::int64_t first_token);
bool map_token(const TokenWords& words, const IdRows<std::int64_t>& ids, std::int64_t top_k,
               std::int64_t first_token);

}  // namespace avx512
#endif

}  // namespace moe_eplb::cpu

// Portable kernels (internal): the fallback of every level and the tails of
// the AVX2 loops.
#pragma once

#include <cstdint>

#include "gather_simd.hpp"
#include "moe_eplb/detail/route.hpp"

namespace moe_eplb::cpu::scalar {

// Rank mode, branch-free: unsigned compares catch negative values too; a
// bad id reads routes[0] instead, and only the flag records it.
template <typename T>
bool gather_rank(const T* in, std::int64_t n, const std::int32_t* routes, std::int64_t num_experts,
                 std::int64_t num_physical_experts, T* out) {
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

// Token mode through the table router (the rows as a by-token table).
template <typename T>
bool route_tokens(const TokenRows& rows, const T* in, std::int64_t n, std::int64_t top_k,
                  std::int64_t first_token, T* out) {
  const detail::TableRouter router{rows.data,
                                   rows.num_experts,
                                   rows.num_columns,
                                   rows.row_stride,
                                   rows.column_stride,
                                   rows.num_physical_experts,
                                   0,
                                   1,
                                   BalanceMode::kByToken};
  bool ok = true;
  std::int64_t token = first_token;
  std::int64_t k = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t slot = detail::route_one(router, in[i], token);
    ok &= slot >= 0;
    out[i] = static_cast<T>(slot);
    if (++k == top_k) {
      k = 0;
      ++token;
    }
  }
  return ok;
}

}  // namespace moe_eplb::cpu::scalar

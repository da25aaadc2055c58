// The formula of SPEC.md, written once for host and device. The CPU kernel
// (src/cpu) and the CUDA kernels (src/cuda) both call these functions, so
// the two backends cannot drift apart. Nothing here allocates or throws:
// a failed lookup returns a negative RouteStatus that each backend reports
// its own way (the CPU throws, the GPU writes -1 and counts the error).
#pragma once

#include <cstdint>
#include <cstring>

#include "moe_eplb/types.hpp"

// Forced inline on both sides: these run once per element inside the
// kernels' loops, where a call would cost more than the lookup.
#if defined(__CUDACC__)
#define MOE_EPLB_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define MOE_EPLB_HOST_DEVICE inline __attribute__((always_inline))
#else
#define MOE_EPLB_HOST_DEVICE inline
#endif

namespace moe_eplb::detail {

// Negative results of a route lookup.
enum RouteStatus : std::int64_t {
  kRouteBadExpertId = -1,  // expert_ids element outside [0, E)
  kRouteBadCount = -2,     // eplb_table[e, 0] outside [1, F-1]
  kRouteBadSlot = -3,      // selected eplb_table[e, j] outside [0, num_physical_experts)
};

// Two schedules of the same routes, equal for every input (route_test.cpp).
// kSelect = true (the device's): no early return; every read's index is
// clamped into the table (row 0 and column 1 always exist, as E >= 1 and
// F >= 2) and validity is applied afterwards with selects, so that a thread
// mapping several ids issues their loads together instead of behind one
// branch each. kSelect = false (the host's): early returns, which a CPU
// predicts well and speculates past.
#if defined(__CUDA_ARCH__)
inline constexpr bool kSelectRoutes = true;
#else
inline constexpr bool kSelectRoutes = false;
#endif

// ---- the replica rule ------------------------------------------------------
// The one owner of "which replica": the kernels (through the routers below),
// table validation (table.cpp) and the planner's model of the rule
// (src/plan/rule_model.hpp) all read these functions. A new operator rule is
// one BalanceMode case in replica_column() plus one case in the planner's
// share model.

// Whether a mode picks the replica per token (its token index matters).
MOE_EPLB_HOST_DEVICE constexpr bool uses_token_index(BalanceMode balance_mode) {
  return balance_mode != BalanceMode::kByRank;
}

// Rank mode cuts the world_size ranks into consecutive groups of this many
// ranks; group g sends its tokens to replica g + 1. count >= 1.
template <typename Int>
MOE_EPLB_HOST_DEVICE constexpr Int ranks_per_replica(Int count, Int world_size) {
  return (world_size + count - 1) / count;
}

// Source ranks [begin, end) whose tokens replica `replica` (0-based) of a
// `count`-replica expert receives in rank mode; begin == end for a dead
// replica (one no group reaches).
struct SourceRanks {
  std::int64_t begin;
  std::int64_t end;
};
MOE_EPLB_HOST_DEVICE constexpr SourceRanks rank_mode_sources(std::int64_t count,
                                                             std::int64_t replica,
                                                             std::int64_t world_size) {
  const std::int64_t group = ranks_per_replica(count, world_size);
  const std::int64_t begin = replica * group < world_size ? replica * group : world_size;
  const std::int64_t end = (replica + 1) * group < world_size ? (replica + 1) * group : world_size;
  return {begin, end};
}

// Whether rank mode reaches every one of `count` replicas (no dead replica):
// the groups of ranks_per_replica() ranks number exactly `count`.
MOE_EPLB_HOST_DEVICE constexpr bool rank_mode_count_is_live(std::int64_t count,
                                                            std::int64_t world_size) {
  const std::int64_t group = ranks_per_replica(count, world_size);
  return (world_size + group - 1) / group == count;
}

// vLLM's multiplier (floor(2^32 / golden ratio), Knuth's multiplicative
// hash) and the hash of a token index: the low 32 bits of token_idx *
// kTokenHashMultiplier, which is what vLLM's int64 product masked with
// 0xFFFFFFFF leaves for every token index (also past 2^63 / multiplier,
// where the int64 product wraps).
inline constexpr std::uint64_t kTokenHashMultiplier = 2654435769u;
MOE_EPLB_HOST_DEVICE constexpr std::uint32_t token_hash(std::int64_t token_idx) {
  return static_cast<std::uint32_t>(static_cast<std::uint64_t>(token_idx) * kTokenHashMultiplier);
}

// 1-based table column of the replica that (token_idx, local_rank_id) uses
// among `count` >= 1 replicas under `balance_mode`. world_size,
// local_rank_id and count fit in 31 bits (the front end checks), so 32-bit
// division suffices and cannot overflow; j never exceeds count (count == 1
// gives column 1 in every mode, which the host's schedule returns without
// dividing: most experts have one replica).
template <bool kSelect = kSelectRoutes>
MOE_EPLB_HOST_DEVICE std::int64_t replica_column(std::uint32_t count, std::int64_t token_idx,
                                                 std::uint32_t local_rank_id,
                                                 std::uint32_t world_size,
                                                 BalanceMode balance_mode) {
  if (!kSelect && count == 1) return 1;
  if (balance_mode == BalanceMode::kByRank) {
    return 1 + local_rank_id / ranks_per_replica(count, world_size);
  }
  if (balance_mode == BalanceMode::kByHash) return 1 + token_hash(token_idx) % count;
  const std::uint64_t token = static_cast<std::uint64_t>(token_idx);
  if (token <= 0xffffffffu) return 1 + static_cast<std::uint32_t>(token) % count;
  return 1 + static_cast<std::int64_t>(token % count);
}

// `slot` if it lies below num_physical_experts, else kRouteBadSlot.
MOE_EPLB_HOST_DEVICE std::int64_t checked_slot(std::int64_t slot,
                                               std::int64_t num_physical_experts) {
  return static_cast<std::uint64_t>(slot) < static_cast<std::uint64_t>(num_physical_experts)
             ? slot
             : kRouteBadSlot;
}

// Whether 0 <= index < size (size >= 0), in one comparison.
MOE_EPLB_HOST_DEVICE bool in_range(std::int64_t index, std::int64_t size) {
  return static_cast<std::uint64_t>(index) < static_cast<std::uint64_t>(size);
}

// The first read of a route: the expert's row and its first entry, the
// replica count (or, in rank-mode prepared routes, the answer itself). Every
// router splits a route into first_read() and route(read, token), so that a
// caller mapping several ids can issue all first reads before any dependent
// one: the compiler keeps that order, but does not make it up by itself.
struct FirstRead {
  const std::int32_t* row;
  std::int32_t head;  // row[0]
  bool expert_ok;     // expert in [0, E); if not, row is row 0
};

// first_read() of a router whose row e starts at rows + e * row_stride.
template <bool kSelect>
MOE_EPLB_HOST_DEVICE FirstRead read_row_head(const std::int32_t* rows, std::int64_t num_experts,
                                             std::int64_t row_stride, std::int64_t expert) {
  const bool expert_ok = in_range(expert, num_experts);
  if (!kSelect && !expert_ok) return FirstRead{rows, 0, false};
  const std::int32_t* row = rows + (expert_ok ? expert : 0) * row_stride;
  return FirstRead{row, row[0], expert_ok};
}

// The rest of a route through a row [count, replica 1, ..., replica F-1]:
// the count's range, the replica's column and the selected id's range.
template <bool kSelect>
MOE_EPLB_HOST_DEVICE std::int64_t route_in_row(const FirstRead& read, std::int64_t token_idx,
                                               std::int64_t num_columns, std::int64_t column_stride,
                                               std::uint32_t local_rank_id,
                                               std::uint32_t world_size, BalanceMode balance_mode,
                                               std::int64_t num_physical_experts) {
  if (!kSelect && !read.expert_ok) return kRouteBadExpertId;
  const std::int32_t count = read.head;
  const bool count_ok = count >= 1 && count <= num_columns - 1;
  if (!kSelect && !count_ok) return kRouteBadCount;
  const std::int64_t column =
      replica_column<kSelect>(count_ok ? static_cast<std::uint32_t>(count) : 1u, token_idx,
                              local_rank_id, world_size, balance_mode);
  const std::int64_t slot = checked_slot(read.row[column * column_stride], num_physical_experts);
  return !read.expert_ok ? kRouteBadExpertId : !count_ok ? kRouteBadCount : slot;
}

// Routing straight from the (untrusted) EPLB table: every read is bounds-checked.
struct TableRouter {
  const std::int32_t* data;
  std::int64_t num_experts;
  std::int64_t num_columns;
  std::int64_t row_stride;
  std::int64_t column_stride;
  // Selected slots must lie below this: the caller's num_physical_experts,
  // or the profile's limit when the caller did not give it.
  std::int64_t num_physical_experts;
  std::uint32_t local_rank_id;
  std::uint32_t world_size;
  BalanceMode balance_mode;

  template <bool kSelect = kSelectRoutes>
  MOE_EPLB_HOST_DEVICE FirstRead first_read(std::int64_t expert) const {
    return read_row_head<kSelect>(data, num_experts, row_stride, expert);
  }

  template <bool kSelect = kSelectRoutes>
  MOE_EPLB_HOST_DEVICE std::int64_t route(const FirstRead& read, std::int64_t token_idx) const {
    return route_in_row<kSelect>(read, token_idx, num_columns, column_stride, local_rank_id,
                                 world_size, balance_mode, num_physical_experts);
  }
};

// Routing from prepared routes (see prepared.hpp for the layout). The routes
// came from a validated table, but a device buffer can be overwritten by the
// caller, so the cheap range checks stay: no input can cause an out-of-bounds
// read or a load-counter write outside its buffer.
struct PreparedRouter {
  const std::int32_t* routes;
  std::int64_t num_experts;
  std::int64_t row_width;
  std::int64_t num_physical_experts;
  BalanceMode balance_mode;

  template <bool kSelect = kSelectRoutes>
  MOE_EPLB_HOST_DEVICE FirstRead first_read(std::int64_t expert) const {
    return read_row_head<kSelect>(routes, num_experts, row_width, expert);
  }

  template <bool kSelect = kSelectRoutes>
  MOE_EPLB_HOST_DEVICE std::int64_t route(const FirstRead& read, std::int64_t token_idx) const {
    if (uses_token_index(balance_mode)) {  // rows are table rows: [count, replicas...]
      return route_in_row<kSelect>(read, token_idx, row_width, 1, 0, 1, balance_mode,
                                   num_physical_experts);
    }
    // Rank mode: one entry per expert. A negative entry is the status found
    // at prepare time; anything below the known statuses (an overwritten
    // buffer) reads as a bad slot.
    const std::int64_t entry = read.head;
    const std::int64_t status = entry < kRouteBadSlot ? kRouteBadSlot : entry;
    const std::int64_t slot = entry < 0 ? status : checked_slot(entry, num_physical_experts);
    return read.expert_ok ? slot : kRouteBadExpertId;
  }
};

// A whole route through any router: its first read, then the rest (for
// callers that map one id at a time).
template <bool kSelect = kSelectRoutes, typename Router>
MOE_EPLB_HOST_DEVICE std::int64_t route_one(const Router& router, std::int64_t expert,
                                            std::int64_t token_idx) {
  return router.template route<kSelect>(router.template first_read<kSelect>(expert), token_idx);
}

// ---- expert pruning ---------------------------------------------------------

MOE_EPLB_HOST_DEVICE float float_from_bits(std::uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// IEEE binary16 -> binary32, exact (subnormals, infinities and NaN included).
MOE_EPLB_HOST_DEVICE float half_bits_to_float(std::uint16_t half) {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  std::uint32_t exponent = (half >> 10) & 0x1fu;
  std::uint32_t mantissa = half & 0x3ffu;
  if (exponent == 0x1fu) return float_from_bits(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return float_from_bits(sign);
  exponent = 113u;  // normalise a subnormal: value = mantissa * 2^-24
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --exponent;
  }
  return float_from_bits(sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13));
}

MOE_EPLB_HOST_DEVICE float bfloat16_bits_to_float(std::uint16_t bf16) {
  return float_from_bits(static_cast<std::uint32_t>(bf16) << 16);
}

// float32 value of expert_scales at element offset `offset`.
MOE_EPLB_HOST_DEVICE float load_scale(const void* data, Dtype dtype, std::int64_t offset) {
  switch (dtype) {
    case Dtype::kFloat32:
      return static_cast<const float*>(data)[offset];
    case Dtype::kFloat16:
      return half_bits_to_float(static_cast<const std::uint16_t*>(data)[offset]);
    case Dtype::kBFloat16:
    default:
      return bfloat16_bits_to_float(static_cast<const std::uint16_t*>(data)[offset]);
  }
}

// Sum over k of float32(expert_scales[token, k]), accumulated in float32 in
// k order (both backends use this exact order, so results are bit-identical).
MOE_EPLB_HOST_DEVICE float token_scale_sum(const ScalesView& scales, std::int64_t token_idx) {
  float sum = 0.0f;
  const std::int64_t base = token_idx * scales.token_stride;
  for (std::int64_t k = 0; k < scales.top_k; ++k) {
    sum += load_scale(scales.data, scales.dtype, base + k * scales.k_stride);
  }
  return sum;
}

// Whether choice k of a token survives pruning, given its token's scale sum:
// scale >= threshold * sum, written so that a NaN anywhere (a NaN scale makes
// the sum NaN; a NaN threshold) keeps the choice. Pruning only ever drops a
// choice the comparison says is small; it never drops one on a NaN.
MOE_EPLB_HOST_DEVICE bool keep_choice(const ScalesView& scales, const float* threshold,
                                      std::int64_t threshold_stride, std::int64_t token_idx,
                                      std::int64_t k, float scale_sum) {
  const float scale =
      load_scale(scales.data, scales.dtype, token_idx * scales.token_stride + k * scales.k_stride);
  return !(scale < threshold[k * threshold_stride] * scale_sum);
}

}  // namespace moe_eplb::detail

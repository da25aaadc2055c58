#include "gather_simd.hpp"

#include <algorithm>

#include "gather_kernels.hpp"
#include "gather_scalar.hpp"

namespace moe_eplb::cpu {
namespace {

// Batches below this size keep the per-call table's cost out of the call:
// the rank table is one vector pass over the routes.
bool rank_table_pays(std::int64_t num_experts, std::int64_t num_elements) {
  return num_experts <= kMaxTableExperts && num_elements >= 64 && num_elements >= num_experts / 4;
}

// The word a slot becomes in TokenWords: itself if valid, kBadWord if not;
// false if valid but too large for a word.
bool slot_word(std::int32_t slot, std::int64_t num_physical_experts, std::uint16_t* word) {
  if (!detail::in_range(slot, num_physical_experts)) {
    *word = kBadWord;
    return true;
  }
  if (slot > kMaxWordSlot) return false;
  *word = static_cast<std::uint16_t>(slot);
  return true;
}

// Fills `words` from token-mode rows (num_experts <= kMaxTableExperts). Returns
// false if the rows do not fit: a count above kMaxTableCount, more than
// kMaxTableReplicas - 1 slots of multi-replica experts, or a valid slot
// above kMaxWordSlot.
bool build_token_words(const TokenRows& rows, TokenWords* words) {
  constexpr std::uint16_t kBadRow = kInfoMulti;  // count 1 at replicas[0] = kBadWord
  words->replicas[0] = kBadWord;
  int next = 1;
  for (std::int64_t e = 0; e < rows.num_experts; ++e) {
    const std::int32_t* row = rows.data + e * rows.row_stride;
    const std::int32_t count = row[0];
    std::uint16_t& info = words->info[e];
    if (count < 1 || count > rows.num_columns - 1) {
      info = kBadRow;
    } else if (count == 1) {
      if (!slot_word(row[rows.column_stride], rows.num_physical_experts, &info)) return false;
      if (info == kBadWord) info = kBadRow;
    } else {
      if (count > kMaxTableCount || next + count > kMaxTableReplicas) return false;
      info = static_cast<std::uint16_t>(kInfoMulti | next << 5 | (count - 1));
      for (std::int32_t j = 1; j <= count; ++j) {
        if (!slot_word(row[j * rows.column_stride], rows.num_physical_experts,
                       &words->replicas[next++])) {
          return false;
        }
      }
    }
  }
  words->num_experts = static_cast<std::int32_t>(rows.num_experts);
  words->num_info_pairs = table_pairs(rows.num_experts);
  words->num_replica_pairs = table_pairs(next);
  std::fill(words->info + rows.num_experts, words->info + words->num_info_pairs * 64, kBadRow);
  std::fill(words->replicas + next, words->replicas + words->num_replica_pairs * 64, kBadWord);
  return true;
}

// Rows shorter than a vector step (a sliced batch with small top_k) would
// leave most lanes of the AVX-512 steps idle, so those paths copy such rows
// into contiguous chunks and map each chunk as one row.
template <typename T>
bool worth_packing(const IdRows<T>& ids) {
  return ids.num_rows > 1 && ids.row_length > 0 && ids.row_length < 32;
}

// Calls map_run(run, first_row) on chunks of the rows packed into one row each.
template <typename T, typename MapRun>
bool map_packed(const IdRows<T>& ids, MapRun&& map_run) {
  constexpr std::int64_t kChunk = 1024;
  T packed[kChunk];
  const std::int64_t rows_per_chunk = kChunk / ids.row_length;
  bool ok = true;
  for (std::int64_t first = 0; first < ids.num_rows; first += rows_per_chunk) {
    const std::int64_t rows = std::min(rows_per_chunk, ids.num_rows - first);
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* row = ids.in + (first + r) * ids.row_stride;
      std::copy(row, row + ids.row_length, packed + r * ids.row_length);
    }
    const std::int64_t length = rows * ids.row_length;
    ok &= map_run(IdRows<T>{packed, 1, length, length, ids.out + first * ids.row_length}, first);
  }
  return ok;
}

}  // namespace

RankMapper::RankMapper(const std::int32_t* routes, std::int64_t num_experts,
                       std::int64_t num_physical_experts, std::int64_t num_elements)
    : routes_(routes),
      num_experts_(num_experts),
      num_physical_experts_(num_physical_experts),
      isa_(active_isa()) {
#if defined(MOE_EPLB_X86_KERNELS)
  if (isa_ == Isa::kAvx512 &&
      !(rank_table_pays(num_experts, num_elements) &&
        avx512::build_rank_words(routes, num_experts, num_physical_experts, &words_))) {
    isa_ = Isa::kAvx2;
  }
#else
  static_cast<void>(num_elements);
#endif
}

template <typename T>
bool RankMapper::map_any(const IdRows<T>& ids) const {
#if defined(MOE_EPLB_X86_KERNELS)
  if (isa_ == Isa::kAvx512) {
    if (!worth_packing(ids)) return avx512::map_rank(words_, ids);
    return map_packed(
        ids, [&](const IdRows<T>& run, std::int64_t) { return avx512::map_rank(words_, run); });
  }
#endif
  bool ok = true;
  for (std::int64_t row = 0; row < ids.num_rows; ++row) {
    const T* in = ids.in + row * ids.row_stride;
    T* out = ids.out + row * ids.row_length;
#if defined(MOE_EPLB_X86_KERNELS)
    if (isa_ == Isa::kAvx2) {
      ok &=
          avx2::gather_rank(in, ids.row_length, routes_, num_experts_, num_physical_experts_, out);
      continue;
    }
#endif
    ok &=
        scalar::gather_rank(in, ids.row_length, routes_, num_experts_, num_physical_experts_, out);
  }
  return ok;
}

bool RankMapper::map(const IdRows<std::int32_t>& ids) const { return map_any(ids); }

bool RankMapper::map(const IdRows<std::int64_t>& ids) const { return map_any(ids); }

TokenMapper::TokenMapper(const TokenRows& rows, std::int64_t num_elements)
    : rows_(rows), isa_(Isa::kScalar) {
#if defined(MOE_EPLB_X86_KERNELS)
  if (may_vectorize(rows.num_experts, num_elements) && build_token_words(rows, &words_)) {
    isa_ = Isa::kAvx512;
  }
#else
  static_cast<void>(num_elements);
#endif
}

template <typename T>
bool TokenMapper::map_any(IdRows<T> ids, std::int64_t top_k, std::int64_t first_token) const {
  bool ok = true;
#if defined(MOE_EPLB_X86_KERNELS)
  // The vector loop takes the tokens below kMaxVectorToken, the scalar loop the rest.
  if (isa_ == Isa::kAvx512 && top_k < avx512::kMaxVectorTopK &&
      first_token < avx512::kMaxVectorToken) {
    const std::int64_t vector_tokens = avx512::kMaxVectorToken - first_token;
    if (ids.num_rows == 1) {  // one row of whole tokens: split it after a token
      const std::int64_t head =
          ids.row_length / top_k >= vector_tokens ? vector_tokens * top_k : ids.row_length;
      ok = avx512::map_token(words_, IdRows<T>{ids.in, 1, head, ids.row_stride, ids.out}, top_k,
                             first_token);
      if (head == ids.row_length) return ok;
      ids = IdRows<T>{ids.in + head, 1, ids.row_length - head, ids.row_stride, ids.out + head};
    } else {  // one token per row
      const std::int64_t head = std::min(ids.num_rows, vector_tokens);
      const IdRows<T> head_rows{ids.in, head, ids.row_length, ids.row_stride, ids.out};
      ok = worth_packing(head_rows)
               ? map_packed(head_rows,
                            [&](const IdRows<T>& run, std::int64_t first_row) {
                              return avx512::map_token(words_, run, top_k, first_token + first_row);
                            })
               : avx512::map_token(words_, head_rows, top_k, first_token);
      if (head == ids.num_rows) return ok;
      ids = IdRows<T>{ids.in + head * ids.row_stride, ids.num_rows - head, ids.row_length,
                      ids.row_stride, ids.out + head * ids.row_length};
    }
    first_token += vector_tokens;
  }
#endif
  for (std::int64_t row = 0; row < ids.num_rows; ++row) {
    ok &= scalar::route_tokens(rows_, ids.in + row * ids.row_stride, ids.row_length, top_k,
                               first_token + row * (ids.row_length / top_k),
                               ids.out + row * ids.row_length);
  }
  return ok;
}

bool TokenMapper::map(const IdRows<std::int32_t>& ids, std::int64_t top_k,
                      std::int64_t first_token) const {
  return map_any(ids, top_k, first_token);
}

bool TokenMapper::map(const IdRows<std::int64_t>& ids, std::int64_t top_k,
                      std::int64_t first_token) const {
  return map_any(ids, top_k, first_token);
}

}  // namespace moe_eplb::cpu

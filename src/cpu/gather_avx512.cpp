// AVX-512 kernels: lookups in per-call tables held in vector registers.
//
// A gather still issues one load per element and is no faster than scalar
// loads on current x86 cores, so these kernels keep the table as 16-bit
// words in zmm register pairs instead and look 32 ids up at once with
// vpermt2w, one permute per 64 table rows, selecting among pairs by the
// index's upper bits (bench/RESULTS.md section 2 has the measurements).
//
// Token mode splits each expert into its single slot (one replica: the info
// word itself) or a run of slots in a compact replica table, so one token
// needs two word lookups and token % count, computed exactly in float:
// with t < 2^23 and 1 <= c <= 32 (both exact in float), q = trunc(fl(t * fl(1/c)))
// is floor(t/c) or floor(t/c) - 1 (the two roundings err by less than
// t/c * 2^-23 < 1/c), so r = t - q*c is the remainder or the remainder plus c
// and min_u32(r, r - c) is exact.
#include "gather_kernels.hpp"

#if defined(MOE_EPLB_X86_KERNELS)

// GCC 12.1-12.2 report the intrinsics' own _mm512_undefined_*() as
// uninitialized once inlined (GCC bug 105593, fixed in 12.3).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#define MOE_EPLB_AVX512 __attribute__((target("avx2,avx512f,avx512bw,avx512vl")))
#define MOE_EPLB_AVX512_INLINE MOE_EPLB_AVX512 inline __attribute__((always_inline))

namespace moe_eplb::cpu::avx512 {
namespace {

template <int kPairs>
MOE_EPLB_AVX512_INLINE void load_table(const std::uint16_t* words, __m512i* table) {
  for (int v = 0; v < 2 * kPairs; ++v) table[v] = _mm512_load_si512(words + 32 * v);
}

// 32 word lanes: table[index] for indices below kPairs * 64.
template <int kPairs>
MOE_EPLB_AVX512_INLINE __m512i lookup_words(const __m512i* table, __m512i index) {
  __m512i part[kPairs];
  for (int p = 0; p < kPairs; ++p) {
    part[p] = _mm512_permutex2var_epi16(table[2 * p], index, table[2 * p + 1]);
  }
  for (int width = kPairs, bit = 64; width > 1; width /= 2, bit *= 2) {
    const __mmask32 upper =
        _mm512_test_epi16_mask(index, _mm512_set1_epi16(static_cast<short>(bit)));
    for (int p = 0; p < width / 2; ++p) {
      part[p] = _mm512_mask_blend_epi16(upper, part[2 * p], part[2 * p + 1]);
    }
  }
  return part[0];
}

// 16 dword lanes: table[index] zero-extended, for indices below kPairs * 64
// (the odd word of each lane, the index's upper half, is zeroed).
template <int kPairs>
MOE_EPLB_AVX512_INLINE __m512i lookup_dwords(const __m512i* table, __m512i index) {
  constexpr __mmask32 kLowWords = 0x55555555u;
  __m512i part[kPairs];
  for (int p = 0; p < kPairs; ++p) {
    part[p] = _mm512_maskz_permutex2var_epi16(kLowWords, table[2 * p], index, table[2 * p + 1]);
  }
  for (int width = kPairs, bit = 64; width > 1; width /= 2, bit *= 2) {
    const __mmask16 upper = _mm512_test_epi32_mask(index, _mm512_set1_epi32(bit));
    for (int p = 0; p < width / 2; ++p) {
      part[p] = _mm512_mask_blend_epi32(upper, part[2 * p], part[2 * p + 1]);
    }
  }
  return part[0];
}

MOE_EPLB_AVX512_INLINE __m512i even_words() {
  return _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28,
                          26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
}

MOE_EPLB_AVX512_INLINE __m512i even_dwords() {
  return _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
}

// ---- loading and storing 32 lanes -------------------------------------------------------

// Loads 32 ids (or the `lanes` of them; others read as expert 0) and clamps
// them to experts in [0, E), as two vectors of 16 dwords.
template <bool kFull>
MOE_EPLB_AVX512_INLINE void load_experts(const std::int32_t* in, __mmask32 lanes, __m512i last,
                                         __m512i* expert, __m512i& id_changed) {
  for (int h = 0; h < 2; ++h) {
    const auto part = static_cast<__mmask16>(lanes >> (16 * h));
    const __m512i id = kFull       ? _mm512_loadu_si512(in + 16 * h)
                       : part != 0 ? _mm512_maskz_loadu_epi32(part, in + 16 * h)
                                   : _mm512_setzero_si512();
    expert[h] = _mm512_min_epu32(id, last);
    id_changed = _mm512_ternarylogic_epi32(id_changed, id, expert[h], 0xf6);
  }
}

template <bool kFull>
MOE_EPLB_AVX512_INLINE void load_experts(const std::int64_t* in, __mmask32 lanes, __m512i last,
                                         __m512i* expert, __m512i& id_changed) {
  const __m512i last64 = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(last));
  __m512i narrow[4];
  for (int q = 0; q < 4; ++q) {
    const auto part = static_cast<__mmask8>(lanes >> (8 * q));
    const __m512i id = kFull       ? _mm512_loadu_si512(in + 8 * q)
                       : part != 0 ? _mm512_maskz_loadu_epi64(part, in + 8 * q)
                                   : _mm512_setzero_si512();
    narrow[q] = _mm512_min_epu64(id, last64);
    id_changed = _mm512_ternarylogic_epi64(id_changed, id, narrow[q], 0xf6);
  }
  expert[0] = _mm512_permutex2var_epi32(narrow[0], even_dwords(), narrow[1]);
  expert[1] = _mm512_permutex2var_epi32(narrow[2], even_dwords(), narrow[3]);
}

template <bool kFull>
MOE_EPLB_AVX512_INLINE void store_slots(std::int32_t* out, __mmask32 lanes, const __m512i* slot) {
  for (int h = 0; h < 2; ++h) {
    const auto part = static_cast<__mmask16>(lanes >> (16 * h));
    if (kFull) {
      _mm512_storeu_si512(out + 16 * h, slot[h]);
    } else if (part != 0) {
      _mm512_mask_storeu_epi32(out + 16 * h, part, slot[h]);
    }
  }
}

template <bool kFull>
MOE_EPLB_AVX512_INLINE void store_slots(std::int64_t* out, __mmask32 lanes, const __m512i* slot) {
  const __m256i quarter[4] = {
      _mm512_castsi512_si256(slot[0]), _mm512_extracti64x4_epi64(slot[0], 1),
      _mm512_castsi512_si256(slot[1]), _mm512_extracti64x4_epi64(slot[1], 1)};
  for (int q = 0; q < 4; ++q) {
    const auto part = static_cast<__mmask8>(lanes >> (8 * q));
    if (kFull) {
      _mm512_storeu_si512(out + 8 * q, _mm512_cvtepu32_epi64(quarter[q]));
    } else if (part != 0) {
      _mm512_mask_storeu_epi64(out + 8 * q, part, _mm512_cvtepu32_epi64(quarter[q]));
    }
  }
}

// ---- rank mode: 32 ids per step ---------------------------------------------------------

// Accumulated checks of one rank-mode run: ids changed by the clamp, and the
// largest word looked up (kBadWord marks a bad route).
struct RankChecks {
  __m512i id_changed;
  __m512i word_max;
};

template <int kPairs>
MOE_EPLB_AVX512_INLINE __m512i rank_words_of(const __m512i* table, __m512i c0, __m512i c1) {
  return lookup_words<kPairs>(table, _mm512_permutex2var_epi16(c0, even_words(), c1));
}

// Stores 32 word lanes widened to the ids' width (straight from words: one
// widening per vector, where store_slots would take two).
template <bool kFull>
MOE_EPLB_AVX512_INLINE void store_words(std::int32_t* out, __mmask32 lanes, __m512i word) {
  const __m512i slot[2] = {_mm512_cvtepu16_epi32(_mm512_castsi512_si256(word)),
                           _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(word, 1))};
  store_slots<kFull>(out, lanes, slot);
}

template <bool kFull>
MOE_EPLB_AVX512_INLINE void store_words(std::int64_t* out, __mmask32 lanes, __m512i word) {
  const __m128i quarter[4] = {
      _mm512_extracti32x4_epi32(word, 0), _mm512_extracti32x4_epi32(word, 1),
      _mm512_extracti32x4_epi32(word, 2), _mm512_extracti32x4_epi32(word, 3)};
  for (int q = 0; q < 4; ++q) {
    const auto part = static_cast<__mmask8>(lanes >> (8 * q));
    const __m512i slots = _mm512_cvtepu16_epi64(quarter[q]);
    if (kFull) {
      _mm512_storeu_si512(out + 8 * q, slots);
    } else if (part != 0) {
      _mm512_mask_storeu_epi64(out + 8 * q, part, slots);
    }
  }
}

// One step of 32 ids (kFull) or of the `lanes` among them; a vector with no
// lane is neither loaded nor stored, and lanes outside add nothing to checks.
template <int kPairs, bool kFull, typename T>
MOE_EPLB_AVX512_INLINE void rank_step(const __m512i* table, __m512i last, const T* in, T* out,
                                      __mmask32 lanes, RankChecks& checks) {
  __m512i expert[2];
  load_experts<kFull>(in, lanes, last, expert, checks.id_changed);
  __m512i word = rank_words_of<kPairs>(table, expert[0], expert[1]);
  if (!kFull) word = _mm512_maskz_mov_epi16(lanes, word);
  checks.word_max = _mm512_max_epu16(checks.word_max, word);
  store_words<kFull>(out, lanes, word);
}

template <int kPairs, typename T>
MOE_EPLB_AVX512 bool map_rank_impl(const RankWords& w, const IdRows<T>& ids) {
  __m512i table[2 * kPairs];
  load_table<kPairs>(w.words, table);
  // Clamping bound: E - 1 in every 32-bit lane (load_experts widens it for int64 ids).
  const __m512i last = _mm512_set1_epi32(w.num_experts - 1);
  RankChecks checks{_mm512_setzero_si512(), _mm512_setzero_si512()};
  for (std::int64_t row = 0; row < ids.num_rows; ++row) {
    const T* in = ids.in + row * ids.row_stride;
    T* out = ids.out + row * ids.row_length;
    const std::int64_t n = ids.row_length;
    std::int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      rank_step<kPairs, true>(table, last, in + i, out + i, ~__mmask32{0}, checks);
    }
    if (i < n) {
      rank_step<kPairs, false>(table, last, in + i, out + i,
                               static_cast<__mmask32>((1u << (n - i)) - 1u), checks);
    }
  }
  return _mm512_test_epi32_mask(checks.id_changed, checks.id_changed) == 0 &&
         _mm512_cmpeq_epi16_mask(checks.word_max, _mm512_set1_epi16(-1)) == 0;
}

template <typename T>
MOE_EPLB_AVX512 bool map_rank_dispatch(const RankWords& w, const IdRows<T>& ids) {
  switch (w.num_pairs) {
    case 1:
      return map_rank_impl<1>(w, ids);
    case 2:
      return map_rank_impl<2>(w, ids);
    case 4:
      return map_rank_impl<4>(w, ids);
    case 8:
      return map_rank_impl<8>(w, ids);
    default:
      return map_rank_impl<16>(w, ids);
  }
}

// ---- token mode: 32 ids per step ---------------------------------------------------------

// Where the next 16 lanes are: each lane's choice index k and token.
struct TokenLanes {
  __m512i k;
  __m512i token;
  __m512i k_advance;      // 16 % top_k
  __m512i token_advance;  // 16 / top_k
  __m512i top_k;
};

MOE_EPLB_AVX512_INLINE void advance(TokenLanes& lanes) {
  const __m512i one = _mm512_set1_epi32(1);
  lanes.k = _mm512_add_epi32(lanes.k, lanes.k_advance);
  lanes.token = _mm512_add_epi32(lanes.token, lanes.token_advance);
  const __mmask16 carry = _mm512_cmpge_epi32_mask(lanes.k, lanes.top_k);
  lanes.k = _mm512_mask_sub_epi32(lanes.k, carry, lanes.k, lanes.top_k);
  lanes.token = _mm512_mask_add_epi32(lanes.token, carry, lanes.token, one);
}

struct TokenTables {
  const __m512i* info;
  const __m512i* replicas;
  __m512 reciprocal_low;   // 1/c for c = 1..16
  __m512 reciprocal_high;  // 1/c for c = 17..32
};

// Accumulated checks of one token-mode run: ids changed by the clamp, and
// the largest slot word (kBadWord marks a bad route). Lanes outside the run
// add zeros.
struct TokenChecks {
  __m512i id_changed;
  __m512i slot_max;
};

// Slots of 16 lanes from their info words (fields of TokenWords); kBadWord
// for a bad route.
template <int kReplicaPairs>
MOE_EPLB_AVX512_INLINE __m512i token_slots(const TokenTables& t, __m512i info, __m512i token) {
  const __mmask16 multi = _mm512_test_epi32_mask(info, _mm512_set1_epi32(kInfoMulti));
  // The count's field, c - 1, is the reciprocal table's index (low 5 bits).
  const __m512i count =
      _mm512_add_epi32(_mm512_and_si512(info, _mm512_set1_epi32(0x1f)), _mm512_set1_epi32(1));
  const __m512 reciprocal = _mm512_permutex2var_ps(t.reciprocal_low, info, t.reciprocal_high);
  const __m512i quotient =
      _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(token), reciprocal));
  const __m512i rest = _mm512_sub_epi32(token, _mm512_mullo_epi32(quotient, count));
  const __m512i replica = _mm512_min_epu32(rest, _mm512_sub_epi32(rest, count));
  // The start's field holds bits 5..12; lookup_dwords reads index bits 0..7 only.
  const __m512i at = _mm512_add_epi32(_mm512_srli_epi32(info, 5), replica);
  return _mm512_mask_blend_epi32(multi, info, lookup_dwords<kReplicaPairs>(t.replicas, at));
}

// One step of 32 lanes (kFull) or of the `lanes` among them. The info words
// are looked up 32 at a time, the rest 16 at a time; `where` moves 32 lanes on.
template <int kInfoPairs, int kReplicaPairs, bool kFull, typename T>
MOE_EPLB_AVX512_INLINE void token_step(const TokenTables& t, TokenLanes& where, __m512i last,
                                       const T* in, T* out, __mmask32 lanes, TokenChecks& checks) {
  __m512i expert[2];
  load_experts<kFull>(in, lanes, last, expert, checks.id_changed);
  const __m512i info = lookup_words<kInfoPairs>(
      t.info, _mm512_permutex2var_epi16(expert[0], even_words(), expert[1]));
  __m512i slot[2];
  slot[0] = token_slots<kReplicaPairs>(t, _mm512_cvtepu16_epi32(_mm512_castsi512_si256(info)),
                                       where.token);
  advance(where);
  slot[1] = token_slots<kReplicaPairs>(t, _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(info, 1)),
                                       where.token);
  advance(where);
  if (!kFull) {
    slot[0] = _mm512_maskz_mov_epi32(static_cast<__mmask16>(lanes), slot[0]);
    slot[1] = _mm512_maskz_mov_epi32(static_cast<__mmask16>(lanes >> 16), slot[1]);
  }
  checks.slot_max = _mm512_max_epu32(checks.slot_max, _mm512_max_epu32(slot[0], slot[1]));
  store_slots<kFull>(out, lanes, slot);
}

// 1/c for c = 1..32, as the float multiply rounds it.
alignas(64) constexpr float kReciprocals[32] = {
    1.0f / 1,  1.0f / 2,  1.0f / 3,  1.0f / 4,  1.0f / 5,  1.0f / 6,  1.0f / 7,  1.0f / 8,
    1.0f / 9,  1.0f / 10, 1.0f / 11, 1.0f / 12, 1.0f / 13, 1.0f / 14, 1.0f / 15, 1.0f / 16,
    1.0f / 17, 1.0f / 18, 1.0f / 19, 1.0f / 20, 1.0f / 21, 1.0f / 22, 1.0f / 23, 1.0f / 24,
    1.0f / 25, 1.0f / 26, 1.0f / 27, 1.0f / 28, 1.0f / 29, 1.0f / 30, 1.0f / 31, 1.0f / 32};

template <int kInfoPairs, int kReplicaPairs, typename T>
MOE_EPLB_AVX512 bool map_token_impl(const TokenWords& w, const IdRows<T>& ids, std::int64_t top_k,
                                    std::int64_t first_token) {
  __m512i info[2 * kInfoPairs];
  __m512i replicas[2 * kReplicaPairs];
  load_table<kInfoPairs>(w.info, info);
  load_table<kReplicaPairs>(w.replicas, replicas);
  const TokenTables tables{info, replicas, _mm512_load_ps(kReciprocals),
                           _mm512_load_ps(kReciprocals + 16)};
  // The first 16 lanes' choice k and token offset, counted up without
  // dividing; after them, (k, offset) is (16 % top_k, 16 / top_k), the step
  // between consecutive groups of 16.
  alignas(64) std::int32_t lane_k[16];
  alignas(64) std::int32_t lane_offset[16];
  std::int32_t k = 0;
  std::int32_t offset = 0;
  for (int lane = 0; lane < 16; ++lane) {
    lane_k[lane] = k;
    lane_offset[lane] = offset;
    if (++k == top_k) {
      k = 0;
      ++offset;
    }
  }
  const __m512i start_k = _mm512_load_si512(lane_k);
  const __m512i start_offset = _mm512_load_si512(lane_offset);
  const __m512i k_advance = _mm512_set1_epi32(k);
  const __m512i token_advance = _mm512_set1_epi32(offset);
  const __m512i top_k_lanes = _mm512_set1_epi32(static_cast<std::int32_t>(top_k));
  const __m512i last = _mm512_set1_epi32(w.num_experts - 1);
  const std::int64_t tokens_per_row = ids.row_length / top_k;
  TokenChecks checks{_mm512_setzero_si512(), _mm512_setzero_si512()};
  for (std::int64_t row = 0; row < ids.num_rows; ++row) {
    const T* in = ids.in + row * ids.row_stride;
    T* out = ids.out + row * ids.row_length;
    const std::int64_t n = ids.row_length;
    const auto row_token = static_cast<std::int32_t>(first_token + row * tokens_per_row);
    TokenLanes where{start_k, _mm512_add_epi32(start_offset, _mm512_set1_epi32(row_token)),
                     k_advance, token_advance, top_k_lanes};
    std::int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      token_step<kInfoPairs, kReplicaPairs, true>(tables, where, last, in + i, out + i,
                                                  ~__mmask32{0}, checks);
    }
    if (i < n) {
      token_step<kInfoPairs, kReplicaPairs, false>(tables, where, last, in + i, out + i,
                                                   static_cast<__mmask32>((1u << (n - i)) - 1u),
                                                   checks);
    }
  }
  return _mm512_test_epi32_mask(checks.id_changed, checks.id_changed) == 0 &&
         _mm512_cmpeq_epi32_mask(checks.slot_max, _mm512_set1_epi32(kBadWord)) == 0;
}

template <int kInfoPairs, typename T>
MOE_EPLB_AVX512 bool map_token_replicas(const TokenWords& w, const IdRows<T>& ids,
                                        std::int64_t top_k, std::int64_t first_token) {
  switch (w.num_replica_pairs) {
    case 1:
      return map_token_impl<kInfoPairs, 1>(w, ids, top_k, first_token);
    case 2:
      return map_token_impl<kInfoPairs, 2>(w, ids, top_k, first_token);
    default:
      return map_token_impl<kInfoPairs, 4>(w, ids, top_k, first_token);
  }
}

template <typename T>
MOE_EPLB_AVX512 bool map_token_dispatch(const TokenWords& w, const IdRows<T>& ids,
                                        std::int64_t top_k, std::int64_t first_token) {
  switch (w.num_info_pairs) {
    case 1:
      return map_token_replicas<1>(w, ids, top_k, first_token);
    case 2:
      return map_token_replicas<2>(w, ids, top_k, first_token);
    case 4:
      return map_token_replicas<4>(w, ids, top_k, first_token);
    case 8:
      return map_token_replicas<8>(w, ids, top_k, first_token);
    default:
      return map_token_replicas<16>(w, ids, top_k, first_token);
  }
}

}  // namespace

MOE_EPLB_AVX512 bool build_rank_words(const std::int32_t* routes, std::int64_t num_experts,
                                      std::int64_t num_physical_experts, RankWords* words) {
  const __m512i slot_end = _mm512_set1_epi32(static_cast<std::int32_t>(num_physical_experts));
  const __m512i bad = _mm512_set1_epi32(kBadWord);
  __mmask16 too_large = 0;
  const int num_pairs = table_pairs(num_experts);
  // 32 words per store, the size the kernels load, so the loads take the
  // stores' data straight from the store buffer.
  for (std::int64_t e = 0; e < num_pairs * 64; e += 32) {
    __m512i half[2];
    for (int h = 0; h < 2; ++h) {
      const std::int64_t left = num_experts - e - 16 * h;
      const auto lanes = left >= 16 ? static_cast<__mmask16>(0xffff)
                         : left > 0 ? static_cast<__mmask16>((1u << left) - 1u)
                                    : static_cast<__mmask16>(0);
      const __m512i route = lanes != 0 ? _mm512_maskz_loadu_epi32(lanes, routes + e + 16 * h)
                                       : _mm512_setzero_si512();
      const __mmask16 valid = _mm512_mask_cmplt_epu32_mask(lanes, route, slot_end);
      too_large |= _mm512_mask_cmpge_epu32_mask(valid, route, bad);
      half[h] = _mm512_mask_mov_epi32(bad, valid, route);
    }
    _mm512_store_si512(words->words + e, _mm512_permutex2var_epi16(half[0], even_words(), half[1]));
  }
  words->num_experts = static_cast<std::int32_t>(num_experts);
  words->num_pairs = num_pairs;
  return too_large == 0;
}

bool map_rank(const RankWords& words, const IdRows<std::int32_t>& ids) {
  return map_rank_dispatch(words, ids);
}

bool map_rank(const RankWords& words, const IdRows<std::int64_t>& ids) {
  return map_rank_dispatch(words, ids);
}

bool map_token(const TokenWords& words, const IdRows<std::int32_t>& ids, std::int64_t top_k,
               std::int64_t first_token) {
  return map_token_dispatch(words, ids, top_k, first_token);
}

bool map_token(const TokenWords& words, const IdRows<std::int64_t>& ids, std::int64_t top_k,
               std::int64_t first_token) {
  return map_token_dispatch(words, ids, top_k, first_token);
}

}  // namespace moe_eplb::cpu::avx512

#endif  // MOE_EPLB_X86_KERNELS

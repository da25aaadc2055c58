// Fast paths of the CPU kernels (internal): the loops that map a contiguous
// run of expert ids, chosen at run time by instruction-set level
// (active_isa()) and table shape. Every path equals the routers of
// detail/route.hpp for every input; the scalar paths are the routers' loops.
//
// A mapper is built once per call, from the routes or table rows the call
// reads; building may copy them into small per-call tables (AVX-512 keeps
// those in vector registers and looks ids up with permutes instead of
// loads). The AVX-512 paths need a table of at most kMaxTableExperts rows
// whose valid slots fit in 15 or 16 bits; others fall back to the AVX2 or
// scalar loops.
//
// Errors: map() returns false if any element is bad (expert id outside
// [0, E), replica count outside [1, F-1], selected slot outside
// [0, num_physical_experts)); out then holds unspecified values and the
// caller rescans with a router to name the first bad element. No input
// makes a mapper read outside the ids, the routes or the table rows.
#pragma once

#include <cstdint>

#include "isa.hpp"

namespace moe_eplb::cpu {

// Table rows the AVX-512 paths copy into registers, at most.
inline constexpr std::int64_t kMaxTableExperts = 1024;
// Replica slots of multi-replica experts the AVX-512 token path holds, at most.
inline constexpr int kMaxTableReplicas = 256;
// Replica count the AVX-512 token path takes, at most (its reciprocal table).
inline constexpr std::int32_t kMaxTableCount = 32;

// Rank mode, as the AVX-512 path holds it: words[e] is routes[e] when that
// is a valid slot, else kBadWord. Padded to num_pairs * 64 words.
struct RankWords {
  alignas(64) std::uint16_t words[kMaxTableExperts];
  std::int32_t num_experts;
  int num_pairs;  // 64-word table pairs (one vpermt2w each): 1, 2, 4, 8 or 16
};

// Token mode, as the AVX-512 path holds it. info[e]:
//   bit 15 clear: the expert has one replica; the word is its slot;
//   bit 15 set (kInfoMulti): bits 0..4 = count c - 1 (c in 2..32, or 1 for a
//                 bad row), bits 5..12 = where its c slots start in replicas[].
// replicas[0] is kBadWord: bad rows point there with count 1. A bad slot is
// kBadWord in replicas[]. Valid slots are at most kMaxWordSlot.
struct TokenWords {
  alignas(64) std::uint16_t info[kMaxTableExperts];
  alignas(64) std::uint16_t replicas[kMaxTableReplicas];
  std::int32_t num_experts;
  int num_info_pairs;     // 1, 2, 4, 8 or 16
  int num_replica_pairs;  // 1, 2 or 4
};

inline constexpr std::uint16_t kBadWord = 0xffff;
inline constexpr std::uint16_t kInfoMulti = 0x8000;
inline constexpr std::int32_t kMaxWordSlot = 0x7fff;

// Rows of ids and where their outputs go: row r is the row_length ids at
// in + r * row_stride (contiguous within the row), its outputs the
// row_length elements at out + r * row_length.
template <typename T>
struct IdRows {
  const T* in;
  std::int64_t num_rows;
  std::int64_t row_length;
  std::int64_t row_stride;
  T* out;
};

// Rank mode: out = routes[in], where routes[e] (e < num_experts) is a slot
// or a negative RouteStatus, and every slot must lie in
// [0, num_physical_experts). num_experts and num_physical_experts are in
// 1..INT32_MAX. `num_elements` (the batch size) picks the path: a per-call
// table pays off only for batches not much smaller than the routes.
class RankMapper {
 public:
  RankMapper(const std::int32_t* routes, std::int64_t num_experts,
             std::int64_t num_physical_experts, std::int64_t num_elements);

  bool map(const IdRows<std::int32_t>& ids) const;
  bool map(const IdRows<std::int64_t>& ids) const;

  Isa isa() const { return isa_; }  // the path map() takes (kAvx512: the register table)

 private:
  template <typename T>
  bool map_any(const IdRows<T>& ids) const;

  const std::int32_t* routes_;
  std::int64_t num_experts_;
  std::int64_t num_physical_experts_;
  Isa isa_;
  RankWords words_;  // filled only when isa_ == kAvx512
};

// E rows of a token-mode table, read through strides (in elements): row e
// is data[e * row_stride + j * column_stride] for j < num_columns (F), laid
// out [count, slot 1, ..., slot count, ignored...]. Both the raw EPLB table
// and prepared token-mode routes have this form.
struct TokenRows {
  const std::int32_t* data;
  std::int64_t num_experts;
  std::int64_t num_columns;
  std::int64_t row_stride;
  std::int64_t column_stride;
  std::int64_t num_physical_experts;  // selected slots must lie below this
};

// Token mode: each id maps to row[1 + token % count] of its expert's row.
class TokenMapper {
 public:
  TokenMapper(const TokenRows& rows, std::int64_t num_elements);

  // False when a mapper for this table size and batch would take the scalar
  // path anyway, so callers can skip building one. The table is a scalar
  // pass over the rows, which a batch smaller than the table does not repay.
  static bool may_vectorize(std::int64_t num_experts, std::int64_t num_elements) {
    return num_experts <= kMaxTableExperts && num_elements >= 64 && num_elements >= num_experts &&
           active_isa() == Isa::kAvx512;
  }

  // Element j of id row r belongs to token first_token + (r * row_length + j)
  // / top_k (first_token >= 0): either one row starting at a token (a
  // contiguous batch), or rows of exactly top_k ids, one token each.
  bool map(const IdRows<std::int32_t>& ids, std::int64_t top_k, std::int64_t first_token) const;
  bool map(const IdRows<std::int64_t>& ids, std::int64_t top_k, std::int64_t first_token) const;

  Isa isa() const { return isa_; }  // the path map() takes (kAvx512: the register tables)

 private:
  template <typename T>
  bool map_any(IdRows<T> ids, std::int64_t top_k, std::int64_t first_token) const;

  TokenRows rows_;
  Isa isa_;
  TokenWords words_;  // filled only when isa_ == kAvx512
};

}  // namespace moe_eplb::cpu

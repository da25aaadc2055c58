// Scalar reference of SPEC.md, written for clarity and independent of the
// library (no shared code with detail/route.hpp), plus seeded generators of
// valid tables and ids used by the tests and the CPU benchmark.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "moe_eplb/types.hpp"

namespace moe_eplb::test {

// Dense row-major matrix of int64 values, the form tests reason in.
struct Matrix {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::vector<std::int64_t> values;

  std::int64_t& at(std::int64_t r, std::int64_t c) { return values[r * cols + c]; }
  std::int64_t at(std::int64_t r, std::int64_t c) const { return values[r * cols + c]; }
};

inline Matrix make_matrix(std::int64_t rows, std::int64_t cols, std::int64_t fill = 0) {
  return Matrix{rows, cols, std::vector<std::int64_t>(static_cast<std::size_t>(rows * cols), fill)};
}

// Every balance_mode of the operator: 0 by rank, 1 by token, 2 vLLM's token hash.
inline constexpr int kAllModes[] = {0, 1, 2};

// SPEC.md "Formula", literally: returns the selected table column j (1-based).
inline std::int64_t reference_column(std::int64_t count, std::int64_t token,
                                     std::int64_t local_rank_id, std::int64_t world_size,
                                     int balance_mode) {
  if (count == 1) return 1;
  if (balance_mode == 0) {
    const auto ranks_per_replica = static_cast<std::int64_t>(
        std::ceil(static_cast<double>(world_size) / static_cast<double>(count)));
    return 1 + local_rank_id / ranks_per_replica;
  }
  if (balance_mode == 2) {
    // vLLM's eplb_map_to_physical_and_record: ((token_idx * 2654435769) & 0xFFFFFFFF) % count,
    // the int64 product's low 32 bits (unsigned arithmetic keeps them when it wraps).
    const std::uint64_t hashed =
        (static_cast<std::uint64_t>(token) * 2654435769ull) & 0xFFFFFFFFull;
    return 1 + static_cast<std::int64_t>(hashed % static_cast<std::uint64_t>(count));
  }
  return 1 + token % count;
}

inline Matrix reference_update_expert(const Matrix& expert_ids, const Matrix& table,
                                      std::int64_t local_rank_id, std::int64_t world_size,
                                      int balance_mode) {
  Matrix out = make_matrix(expert_ids.rows, expert_ids.cols);
  for (std::int64_t b = 0; b < expert_ids.rows; ++b) {
    for (std::int64_t k = 0; k < expert_ids.cols; ++k) {
      const std::int64_t e = expert_ids.at(b, k);
      const std::int64_t c = table.at(e, 0);
      out.at(b, k) = table.at(e, reference_column(c, b, local_rank_id, world_size, balance_mode));
    }
  }
  return out;
}

// SPEC.md "Expert pruning": scales already converted to float.
inline std::vector<std::uint8_t> reference_pruning_mask(const std::vector<float>& scales,
                                                        std::int64_t num_tokens, std::int64_t top_k,
                                                        const std::vector<float>& threshold,
                                                        const std::vector<std::uint8_t>* active) {
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(num_tokens * top_k), 0);
  for (std::int64_t b = 0; b < num_tokens; ++b) {
    if (active != nullptr && !(*active)[static_cast<std::size_t>(b)]) continue;
    float sum = 0.0f;
    for (std::int64_t k = 0; k < top_k; ++k) sum += scales[static_cast<std::size_t>(b * top_k + k)];
    for (std::int64_t k = 0; k < top_k; ++k) {
      // Kept unless smaller: a NaN scale (NaN sum) or threshold keeps it.
      mask[static_cast<std::size_t>(b * top_k + k)] =
          !(scales[static_cast<std::size_t>(b * top_k + k)] <
            threshold[static_cast<std::size_t>(k)] * sum);
    }
  }
  return mask;
}

// Value of an IEEE half by its definition (not by bit manipulation).
inline float reference_half_value(std::uint16_t bits) {
  const int sign = (bits >> 15) ? -1 : 1;
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  if (exponent == 0x1f) return mantissa ? NAN : static_cast<float>(sign) * INFINITY;
  if (exponent == 0) return static_cast<float>(sign * std::ldexp(mantissa / 1024.0, -14));
  return static_cast<float>(sign * std::ldexp(1.0 + mantissa / 1024.0, exponent - 15));
}

inline float reference_bfloat16_value(std::uint16_t bits) {
  const int sign = (bits >> 15) ? -1 : 1;
  const int exponent = (bits >> 7) & 0xff;
  const int mantissa = bits & 0x7f;
  if (exponent == 0xff) return mantissa ? NAN : static_cast<float>(sign) * INFINITY;
  if (exponent == 0) return static_cast<float>(sign * std::ldexp(mantissa / 128.0, -126));
  return static_cast<float>(sign * std::ldexp(1.0 + mantissa / 128.0, exponent - 127));
}

// ---- generators ---------------------------------------------------------------

struct TableSpec {
  std::int64_t num_experts = 16;
  std::int64_t num_columns = 5;
  std::int64_t world_size = 8;
  std::int64_t slots_per_rank = 4;  // num_physical = world_size * slots_per_rank
  std::int64_t max_count = 4;       // <= num_columns - 1
};

// A valid table: distinct slots across the whole table, counts in
// [1, max_count], unused columns filled with junk that must be ignored.
inline Matrix random_table(const TableSpec& spec, std::mt19937_64& rng) {
  const std::int64_t num_physical = spec.world_size * spec.slots_per_rank;
  if (spec.num_experts > num_physical || spec.max_count >= spec.num_columns) {
    throw std::invalid_argument("random_table(): needs num_experts <= slots and max_count < F");
  }
  std::vector<std::int64_t> slots(static_cast<std::size_t>(num_physical));
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  Matrix table = make_matrix(spec.num_experts, spec.num_columns);
  std::size_t next = 0;
  std::uniform_int_distribution<std::int64_t> count_dist(1, spec.max_count);
  std::uniform_int_distribution<std::int64_t> junk(-1000000, 1000000);
  for (std::int64_t e = 0; e < spec.num_experts; ++e) {
    // Keep at least one slot for each remaining expert.
    const std::int64_t remaining_experts = spec.num_experts - e - 1;
    const std::int64_t available =
        num_physical - static_cast<std::int64_t>(next) - remaining_experts;
    const std::int64_t count = std::max<std::int64_t>(1, std::min(count_dist(rng), available));
    table.at(e, 0) = count;
    for (std::int64_t j = 1; j < spec.num_columns; ++j) {
      table.at(e, j) = j <= count ? slots[next++] : junk(rng);
    }
  }
  return table;
}

inline Matrix random_ids(std::int64_t num_tokens, std::int64_t top_k, std::int64_t num_experts,
                         std::mt19937_64& rng) {
  Matrix ids = make_matrix(num_tokens, top_k);
  std::uniform_int_distribution<std::int64_t> dist(0, num_experts - 1);
  for (auto& value : ids.values) value = dist(rng);
  return ids;
}

// Random pruning inputs: scales of `dtype` (float32 values, or the bits of
// float16 / bfloat16 values, subnormals included), the float value of each,
// thresholds, and an active mask with its true entries first.
struct PruningData {
  std::vector<std::uint16_t> bits16;
  std::vector<float> f32;
  std::vector<float> values;  // float value of each scale, by definition
  std::vector<float> threshold;
  std::vector<std::uint8_t> active;
};

inline PruningData random_pruning(std::int64_t num_tokens, std::int64_t top_k, Dtype dtype,
                                  std::mt19937_64& rng) {
  PruningData d;
  const std::size_t n = static_cast<std::size_t>(num_tokens * top_k);
  std::uniform_real_distribution<float> value(0.0f, 0.3f);
  std::uniform_int_distribution<int> mantissa16(0, 1023), exponent16(9, 14);
  std::uniform_int_distribution<int> mantissa_bf(0, 127), exponent_bf(118, 126);
  for (std::size_t i = 0; i < n; ++i) {
    if (dtype == Dtype::kFloat32) {
      d.f32.push_back(value(rng));
      d.values.push_back(d.f32.back());
    } else if (dtype == Dtype::kFloat16) {
      // Include subnormals now and then.
      const int e = i % 17 == 0 ? 0 : exponent16(rng);
      d.bits16.push_back(static_cast<std::uint16_t>((e << 10) | mantissa16(rng)));
      d.values.push_back(reference_half_value(d.bits16.back()));
    } else {
      d.bits16.push_back(static_cast<std::uint16_t>((exponent_bf(rng) << 7) | mantissa_bf(rng)));
      d.values.push_back(reference_bfloat16_value(d.bits16.back()));
    }
  }
  std::uniform_real_distribution<float> thr(0.0f, 0.25f);
  for (std::int64_t k = 0; k < top_k; ++k) d.threshold.push_back(thr(rng));
  const std::int64_t num_active =
      num_tokens == 0 ? 0 : static_cast<std::int64_t>(rng() % (num_tokens + 1));
  for (std::int64_t b = 0; b < num_tokens; ++b) d.active.push_back(b < num_active ? 1 : 0);
  return d;
}

}  // namespace moe_eplb::test

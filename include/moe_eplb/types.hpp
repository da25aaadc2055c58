// Plain, torch-free views over caller-owned memory. A view never owns or
// copies: it is a pointer plus sizes and element strides, so transposed,
// sliced and column-major inputs are read in place.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moe_eplb {

// Element types, named as NumPy and PyTorch name them. Views carry the type
// their caller has; the core's checks say which types each argument accepts
// (expert_ids: int32 / int64; expert_scales: float32 / float16 / bfloat16).
// kUnsupported stands for any type a front end cannot name here.
enum class Dtype : std::uint8_t {
  kBool,
  kInt8,
  kUInt8,
  kInt16,
  kInt32,
  kInt64,
  kUInt32,
  kUInt64,
  kFloat16,
  kBFloat16,
  kFloat32,
  kFloat64,
  kUnsupported,
};

// How a logical expert with several replicas picks one (SPEC.md, "Formula").
// The rule itself is replica_column() in detail/route.hpp.
enum class BalanceMode : std::int64_t {
  kByRank = 0,   // replica 1 + local_rank_id / ceil(world_size / count): same for the whole rank
  kByToken = 1,  // replica 1 + token_idx % count: spreads one rank's tokens over replicas
  // replica 1 + ((token_idx * 2654435769) mod 2^32) % count: vLLM's rule
  // (eplb_map_to_physical_and_record), a moe-eplb extension of the operator.
  kByHash = 2,
};

std::string to_string(Dtype dtype);     // "int32", "bfloat16", ...; "unsupported dtype"
std::size_t element_size(Dtype dtype);  // bytes; 0 for kUnsupported

// (num_tokens, top_k) logical expert ids (int32 or int64). Strides are in
// elements and may be anything (0 for broadcast rows, large for slices).
struct ExpertIdsView {
  const void* data = nullptr;
  Dtype dtype = Dtype::kInt32;
  std::int64_t num_tokens = 0;  // BS
  std::int64_t top_k = 0;       // K
  std::int64_t token_stride = 0;
  std::int64_t k_stride = 1;
};

// (num_experts, num_columns) int32 EPLB table: row e = [count, p_1..p_count, unused...].
struct TableView {
  const std::int32_t* data = nullptr;
  std::int64_t num_experts = 0;  // E
  std::int64_t num_columns = 0;  // F
  std::int64_t row_stride = 0;
  std::int64_t column_stride = 1;

  std::int32_t at(std::int64_t row, std::int64_t column) const {
    return data[row * row_stride + column * column_stride];
  }
};

// (num_tokens, top_k) router weights (float32, float16 or bfloat16; raw bits).
struct ScalesView {
  const void* data = nullptr;
  Dtype dtype = Dtype::kFloat32;
  std::int64_t num_tokens = 0;
  std::int64_t top_k = 0;
  std::int64_t token_stride = 0;
  std::int64_t k_stride = 1;
};

// A 1-D strided vector: pruning_threshold (float32, size K) or active_mask
// (bytes read as bool: nonzero is true, size BS).
template <typename T>
struct VectorView {
  const T* data = nullptr;
  std::int64_t size = 0;
  std::int64_t stride = 1;

  T operator[](std::int64_t index) const { return data[index * stride]; }
};

// Optional expert pruning inputs (SPEC.md, "Expert pruning"). expert_scales
// and pruning_threshold come together; active_mask is optional on top.
struct PruningInputs {
  ScalesView expert_scales;
  VectorView<float> pruning_threshold;
  bool has_active_mask = false;
  VectorView<std::uint8_t> active_mask;
};

}  // namespace moe_eplb

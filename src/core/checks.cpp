#include "checks.hpp"

#include <algorithm>
#include <limits>

#include "moe_eplb/error.hpp"

namespace moe_eplb::detail {
namespace {

// "1..512", "0..", "2..384".
std::string range(std::int64_t low, std::int64_t high) {
  return high == Limits::kNoLimit ? concat(low, "..") : concat(low, "..", high);
}

// The bytes [first, last) that a (rows, cols) strided view of
// `element_bytes`-byte elements can touch. False when the offsets do not fit
// in int64 (no buffer could hold such a view; nothing is claimed then).
bool byte_extent(const void* data, std::int64_t rows, std::int64_t cols, std::int64_t row_stride,
                 std::int64_t col_stride, std::int64_t element_bytes, std::uintptr_t& first,
                 std::uintptr_t& last) {
  std::int64_t row_span = 0;
  std::int64_t col_span = 0;
  if (__builtin_mul_overflow(rows - 1, row_stride, &row_span) ||
      __builtin_mul_overflow(cols - 1, col_stride, &col_span)) {
    return false;
  }
  std::int64_t low = 0;  // element offsets, relative to data
  std::int64_t high = 0;
  if (__builtin_add_overflow(std::min<std::int64_t>(row_span, 0),
                             std::min<std::int64_t>(col_span, 0), &low) ||
      __builtin_add_overflow(std::max<std::int64_t>(row_span, 0),
                             std::max<std::int64_t>(col_span, 0), &high) ||
      __builtin_add_overflow(high, 1, &high) ||  // one past the last element
      __builtin_mul_overflow(low, element_bytes, &low) ||
      __builtin_mul_overflow(high, element_bytes, &high)) {
    return false;
  }
  const auto base = reinterpret_cast<std::uintptr_t>(data);
  first = base + static_cast<std::uintptr_t>(low);  // wraps like pointer arithmetic would
  last = base + static_cast<std::uintptr_t>(high);
  return true;
}

// Outputs are written while expert_ids is still being read (and the CPU
// rescans expert_ids to name a bad element), so they may not share memory.
// `output` is a contiguous (BS, K) array of `output_element_bytes` elements.
void check_not_overlapping_ids(const char* operation, const ExpertIdsView& expert_ids,
                               const void* output, std::int64_t output_element_bytes,
                               const char* output_name) {
  std::uintptr_t ids_first = 0;
  std::uintptr_t ids_last = 0;
  std::uintptr_t out_first = 0;
  std::uintptr_t out_last = 0;
  const std::int64_t num_tokens = expert_ids.num_tokens;
  const std::int64_t top_k = expert_ids.top_k;
  if (!byte_extent(expert_ids.data, num_tokens, top_k, expert_ids.token_stride, expert_ids.k_stride,
                   static_cast<std::int64_t>(element_size(expert_ids.dtype)), ids_first,
                   ids_last) ||
      !byte_extent(output, num_tokens, top_k, top_k, 1, output_element_bytes, out_first,
                   out_last)) {
    return;
  }
  MOE_EPLB_CHECK(out_last <= ids_first || ids_last <= out_first, operation, ": ", output_name,
                 " shares memory with expert_ids; outputs must not overlap the inputs (in-place "
                 "mapping is not supported)");
}

template <typename T>
void check_output_size(const char* operation, const char* name, const OutputSpan<T>& output,
                       std::int64_t expected, const char* what) {
  MOE_EPLB_CHECK(output.size == expected, operation, ": ", name, " has ", output.size,
                 " elements, expected ", what, expected);
}

// Batch (BS, K, dtypes, pointers), pruning inputs and outputs, against `limits`.
// `num_physical_experts` is the size load_counts must have (-1: unknown).
void check_batch(const char* operation, const ExpertIdsView& expert_ids,
                 const PruningInputs* pruning, const UpdateExpertOutputs& outputs,
                 std::int64_t num_physical_experts, const Limits& limits, bool has_memory) {
  const std::int64_t num_tokens = expert_ids.num_tokens;
  const std::int64_t top_k = expert_ids.top_k;
  MOE_EPLB_CHECK(num_tokens >= limits.min_tokens && num_tokens <= limits.max_tokens, operation,
                 ": expert_ids has ", num_tokens, " tokens (BS), expected ",
                 range(limits.min_tokens, limits.max_tokens), " under the ", limits.name,
                 " profile");
  MOE_EPLB_CHECK(top_k >= limits.min_top_k && top_k <= limits.max_top_k, operation,
                 ": expert_ids has top_k (K) = ", top_k, ", expected ",
                 range(limits.min_top_k, limits.max_top_k), " under the ", limits.name, " profile");
  MOE_EPLB_CHECK(expert_ids.dtype == Dtype::kInt32 || expert_ids.dtype == Dtype::kInt64, operation,
                 ": expert_ids must be int32 or int64, got ", to_string(expert_ids.dtype));
  MOE_EPLB_CHECK(top_k == 0 || num_tokens <= std::numeric_limits<std::int64_t>::max() / top_k,
                 operation, ": expert_ids shape (", num_tokens, ", ", top_k,
                 ") has more elements than fit in int64");
  const std::int64_t num_elements = num_tokens * top_k;
  const bool empty = num_elements == 0;
  MOE_EPLB_CHECK(empty || expert_ids.data != nullptr, operation,
                 ": expert_ids has no data pointer for shape (", num_tokens, ", ", top_k, ")");
  check_output_size(operation, "balanced_expert_ids", outputs.balanced_expert_ids, num_elements,
                    "BS * K = ");
  MOE_EPLB_CHECK(empty || outputs.balanced_expert_ids.data != nullptr, operation,
                 ": balanced_expert_ids output pointer is null for shape (", num_tokens, ", ",
                 top_k, ")");
  if (has_memory && !empty) {
    check_not_overlapping_ids(operation, expert_ids, outputs.balanced_expert_ids.data,
                              static_cast<std::int64_t>(element_size(expert_ids.dtype)),
                              "balanced_expert_ids");
  }
  if (outputs.load_counts.data != nullptr) {
    MOE_EPLB_CHECK(num_physical_experts != -1, operation,
                   ": load recording needs num_physical_experts (the size of load_counts)");
    check_output_size(operation, "load_counts", outputs.load_counts, num_physical_experts,
                      "num_physical_experts = ");
  }

  if (pruning == nullptr) {
    MOE_EPLB_CHECK(outputs.balanced_active_mask.data == nullptr, operation,
                   ": balanced_active_mask was requested but expert_scales and pruning_threshold "
                   "were not given");
    return;
  }
  MOE_EPLB_CHECK(limits.allows_pruning, operation,
                 ": expert pruning (expert_scales, pruning_threshold, active_mask) is not "
                 "supported under the ",
                 limits.name, " profile");
  const ScalesView& scales = pruning->expert_scales;
  MOE_EPLB_CHECK(scales.dtype == Dtype::kFloat32 || scales.dtype == Dtype::kFloat16 ||
                     scales.dtype == Dtype::kBFloat16,
                 operation, ": expert_scales must be float32, float16 or bfloat16, got ",
                 to_string(scales.dtype));
  MOE_EPLB_CHECK(scales.num_tokens == num_tokens && scales.top_k == top_k, operation,
                 ": expert_scales must have the shape of expert_ids (", num_tokens, ", ", top_k,
                 "), got (", scales.num_tokens, ", ", scales.top_k, ")");
  MOE_EPLB_CHECK(empty || scales.data != nullptr, operation, ": expert_scales has no data pointer");
  MOE_EPLB_CHECK(pruning->pruning_threshold.size == top_k, operation,
                 ": pruning_threshold must have K = ", top_k, " elements, got ",
                 pruning->pruning_threshold.size);
  MOE_EPLB_CHECK(top_k == 0 || pruning->pruning_threshold.data != nullptr, operation,
                 ": pruning_threshold has no data pointer");
  if (pruning->has_active_mask) {
    MOE_EPLB_CHECK(pruning->active_mask.size == num_tokens, operation,
                   ": active_mask must have BS = ", num_tokens, " elements, got ",
                   pruning->active_mask.size);
    MOE_EPLB_CHECK(num_tokens == 0 || pruning->active_mask.data != nullptr, operation,
                   ": active_mask has no data pointer");
  }
  MOE_EPLB_CHECK(empty || outputs.balanced_active_mask.data != nullptr, operation,
                 ": balanced_active_mask output pointer is null but pruning inputs were given");
  check_output_size(operation, "balanced_active_mask", outputs.balanced_active_mask, num_elements,
                    "BS * K = ");
  if (has_memory && !empty) {
    check_not_overlapping_ids(operation, expert_ids, outputs.balanced_active_mask.data, 1,
                              "balanced_active_mask");
  }
}

}  // namespace

const char* balance_mode_name(BalanceMode balance_mode) {
  switch (balance_mode) {
    case BalanceMode::kByRank:
      return "by rank";
    case BalanceMode::kByToken:
      return "by token";
    case BalanceMode::kByHash:
      return "vLLM's token hash";
  }
  return "unknown";
}

void check_balance_mode(const char* operation, BalanceMode balance_mode) {
  const auto mode = static_cast<std::int64_t>(balance_mode);
  MOE_EPLB_CHECK(mode >= 0 && mode <= static_cast<std::int64_t>(BalanceMode::kByHash), operation,
                 ": balance_mode must be 0 (by rank), 1 (by token) or 2 (vLLM's token hash), got ",
                 mode);
}

void check_scalars(const char* operation, const UpdateExpertParams& params,
                   const TableView* eplb_table, const Limits& limits) {
  check_balance_mode(operation, params.balance_mode);
  const auto mode = static_cast<std::int64_t>(params.balance_mode);
  MOE_EPLB_CHECK(mode <= limits.max_balance_mode, operation, ": balance_mode ", mode, " (",
                 balance_mode_name(params.balance_mode), ") is not supported under the ",
                 limits.name, " profile, expected ",
                 limits.max_balance_mode == 0 ? "0" : range(0, limits.max_balance_mode));
  const bool by_rank = params.balance_mode == BalanceMode::kByRank;
  if (by_rank) {
    MOE_EPLB_CHECK(
        params.world_size >= limits.min_world_size && params.world_size <= limits.max_world_size,
        operation, ": world_size must be in ", range(limits.min_world_size, limits.max_world_size),
        " under the ", limits.name, " profile, got ", params.world_size);
    MOE_EPLB_CHECK(params.local_rank_id >= 0 && params.local_rank_id < params.world_size, operation,
                   ": local_rank_id must be in 0..", params.world_size - 1, " (world_size ",
                   params.world_size, "), got ", params.local_rank_id);
  }
  if (params.num_physical_experts != -1) {
    MOE_EPLB_CHECK(params.num_physical_experts >= 1 &&
                       params.num_physical_experts <= limits.max_physical_experts,
                   operation, ": num_physical_experts must be -1 (unknown) or in 1..",
                   limits.max_physical_experts, " under the ", limits.name, " profile, got ",
                   params.num_physical_experts);
    MOE_EPLB_CHECK(!by_rank || params.num_physical_experts % params.world_size == 0, operation,
                   ": num_physical_experts ", params.num_physical_experts,
                   " is not a multiple of world_size ", params.world_size,
                   " (every rank holds the same number of slots)");
  }
  if (eplb_table == nullptr) return;

  const std::int64_t num_experts = eplb_table->num_experts;
  const std::int64_t num_columns = eplb_table->num_columns;
  MOE_EPLB_CHECK(num_experts >= limits.min_experts && num_experts <= limits.max_experts, operation,
                 ": eplb_table has ", num_experts, " rows (E), expected ",
                 range(limits.min_experts, limits.max_experts), " under the ", limits.name,
                 " profile");
  MOE_EPLB_CHECK(num_columns >= limits.min_columns && num_columns <= INT32_MAX, operation,
                 ": eplb_table has ", num_columns, " columns (F), expected ", limits.min_columns,
                 "..", INT32_MAX, " (the count column plus at least one replica)");
  if (limits.columns_at_most_world_size_plus_one && by_rank) {
    MOE_EPLB_CHECK(num_columns <= params.world_size + 1, operation, ": eplb_table has ",
                   num_columns, " columns (F), expected 2..", params.world_size + 1,
                   " (world_size + 1) under the ", limits.name, " profile");
  }
  MOE_EPLB_CHECK(eplb_table->data != nullptr, operation, ": eplb_table has no data pointer");
}

TableRouter table_router(const TableView& eplb_table, const UpdateExpertParams& params) {
  // Modes that pick by token ignore the rank (which may then be unset).
  const bool by_rank = !uses_token_index(params.balance_mode);
  return TableRouter{eplb_table.data,
                     eplb_table.num_experts,
                     eplb_table.num_columns,
                     eplb_table.row_stride,
                     eplb_table.column_stride,
                     resolved_num_physical_experts(params),
                     by_rank ? static_cast<std::uint32_t>(params.local_rank_id) : 0u,
                     by_rank ? static_cast<std::uint32_t>(params.world_size) : 1u,
                     params.balance_mode};
}

PreparedRouter prepared_router(const PreparedView& prepared) {
  return PreparedRouter{prepared.routes, prepared.num_experts, prepared.row_width,
                        prepared.num_physical_experts, prepared.balance_mode};
}

std::int64_t resolved_num_physical_experts(const UpdateExpertParams& params) {
  return params.num_physical_experts != -1 ? params.num_physical_experts
                                           : limits_of(params.profile).max_physical_experts;
}

}  // namespace moe_eplb::detail

namespace moe_eplb {

void check_update_expert(const UpdateExpertInputs& inputs, const UpdateExpertParams& params,
                         const UpdateExpertOutputs& outputs, bool has_memory) {
  const char* const kOperation = detail::mapping_operation(inputs);
  const Limits& limits = limits_of(params.profile);
  detail::check_scalars(kOperation, params, &inputs.eplb_table, limits);
  detail::check_batch(kOperation, inputs.expert_ids, inputs.pruning, outputs,
                      params.num_physical_experts, limits, has_memory);
  if (limits.top_k_at_most_num_experts) {
    MOE_EPLB_CHECK(inputs.expert_ids.top_k <= inputs.eplb_table.num_experts, kOperation,
                   ": top_k (K) = ", inputs.expert_ids.top_k,
                   " exceeds the number of experts E = ", inputs.eplb_table.num_experts,
                   " under the ", limits.name, " profile");
  }
}

void check_update_expert_prepared(const PreparedView& prepared, const ExpertIdsView& expert_ids,
                                  const PruningInputs* pruning, const UpdateExpertOutputs& outputs,
                                  bool has_memory) {
  constexpr const char* kOperation = "update_expert_prepared()";
  detail::check_balance_mode(kOperation, prepared.balance_mode);
  MOE_EPLB_CHECK(prepared.num_experts >= 1 && prepared.num_experts <= INT32_MAX, kOperation,
                 ": prepared routes have ", prepared.num_experts, " experts, expected 1..",
                 INT32_MAX);
  const bool by_token = detail::uses_token_index(prepared.balance_mode);
  MOE_EPLB_CHECK(by_token ? prepared.row_width >= 2 : prepared.row_width == 1, kOperation,
                 ": prepared routes have row width ", prepared.row_width, ", expected ",
                 by_token ? "at least 2 (count and one replica) in token mode" : "1 in rank mode");
  const Limits& limits = limits_of(prepared.profile);
  MOE_EPLB_CHECK(prepared.num_physical_experts >= 1 &&
                     prepared.num_physical_experts <= limits.max_physical_experts,
                 kOperation, ": prepared num_physical_experts must be in 1..",
                 limits.max_physical_experts, ", got ", prepared.num_physical_experts);
  MOE_EPLB_CHECK(prepared.routes != nullptr, kOperation, ": prepared routes pointer is null");
  detail::check_batch(kOperation, expert_ids, pruning, outputs, prepared.num_physical_experts,
                      limits, has_memory);
}

}  // namespace moe_eplb

// Adapter between at::Tensor and the moe-eplb core (one declaration per
// kernel of torch.ops.moe_eplb; register.cpp binds them to the schemas).
//
// The adapter checks what a core view cannot express (tensor rank, dtype,
// device), builds views over tensor memory, allocates outputs, picks the
// backend from the tensors' device (CPU kernel, CUDA launcher on the current
// stream under a device guard, or the core's checks alone for Meta), and maps
// moe_eplb::Error onto c10 errors: kIndexOutOfRange -> IndexError, kCuda ->
// RuntimeError, everything else -> ValueError, with the core's message. No
// math here: every value comes from the core.
//
// Outputs are new contiguous tensors on the input's device. On CUDA nothing
// synchronises or allocates beyond the outputs (capturable in CUDA graphs); a
// bad element becomes -1 and is counted in error_count, or in the library's
// per-device counter (error_counter()) when error_count is not given. On the
// CPU a bad element raises IndexError naming (b, k) and error_count is unused.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <tuple>

namespace moe_eplb::torch_adapter {

using OptionalTensor = c10::optional<at::Tensor>;

// update_expert(expert_ids, eplb_table, local_rank_id, world_size, *,
//               balance_mode, num_physical_experts, profile) -> balanced_expert_ids
at::Tensor update_expert(const at::Tensor& expert_ids, const at::Tensor& eplb_table,
                         std::int64_t local_rank_id, std::int64_t world_size,
                         std::int64_t balance_mode, std::int64_t num_physical_experts,
                         c10::string_view profile);

// Same plus pruning -> (balanced_expert_ids, balanced_active_mask).
std::tuple<at::Tensor, at::Tensor> update_expert_pruned(
    const at::Tensor& expert_ids, const at::Tensor& eplb_table, const at::Tensor& expert_scales,
    const at::Tensor& pruning_threshold, const OptionalTensor& active_mask,
    std::int64_t local_rank_id, std::int64_t world_size, std::int64_t balance_mode,
    std::int64_t num_physical_experts, c10::string_view profile);

// The general form: optional pruning, load recording into load_counts (int64,
// (num_physical_experts,), added to) and error counting into error_count (int32,
// one element, added to; CUDA only). The mask is all true without pruning.
std::tuple<at::Tensor, at::Tensor> update_expert_counted(
    const at::Tensor& expert_ids, const at::Tensor& eplb_table, std::int64_t local_rank_id,
    std::int64_t world_size, std::int64_t balance_mode, const OptionalTensor& expert_scales,
    const OptionalTensor& pruning_threshold, const OptionalTensor& active_mask,
    const OptionalTensor& load_counts, const OptionalTensor& error_count,
    std::int64_t num_physical_experts, c10::string_view profile);

// Validates the whole table on the host (copying it there if needed) and
// returns (routes, num_physical_experts): int32 routes on the table's device,
// (E, 1) in rank mode, (E, F) in token mode (rows padded with -1, so any table
// of the same shape can later be copied into the same tensor), and the slot
// count (inferred when -1 was passed). Not traceable (reads values).
std::tuple<at::Tensor, std::int64_t> prepare_table(
    const at::Tensor& eplb_table, std::int64_t local_rank_id, std::int64_t world_size,
    std::int64_t balance_mode, std::int64_t num_physical_experts, c10::string_view profile);

// One gather through routes from prepare_table().
at::Tensor update_expert_prepared(const at::Tensor& expert_ids, const at::Tensor& routes,
                                  std::int64_t balance_mode, std::int64_t num_physical_experts,
                                  c10::string_view profile);

// The general prepared form (pruning, load recording, error counting).
std::tuple<at::Tensor, at::Tensor> update_expert_prepared_counted(
    const at::Tensor& expert_ids, const at::Tensor& routes, std::int64_t balance_mode,
    std::int64_t num_physical_experts, const OptionalTensor& expert_scales,
    const OptionalTensor& pruning_threshold, const OptionalTensor& active_mask,
    const OptionalTensor& load_counts, const OptionalTensor& error_count, c10::string_view profile);

// A one-element int32 CUDA tensor aliasing the library's error counter on
// device `device_index` (moe_eplb::cuda::library_error_count()). Throws
// RuntimeError when the extension was built without CUDA.
at::Tensor library_error_counter(std::int64_t device_index);

// Whether this build has the CUDA kernels.
bool built_with_cuda();

// Programmatic dependent launch of the CUDA kernels (moe_eplb::cuda); always
// false, and the setter a no-op, in a build without CUDA.
bool programmatic_dependent_launch();
void set_programmatic_dependent_launch(bool enabled);

}  // namespace moe_eplb::torch_adapter

#include "mapping_call.hpp"

#include <ATen/ATen.h>
#include <torch/version.h>

#include <string>

namespace moe_eplb::torch_adapter {
namespace {

Dtype dtype_of(at::ScalarType type) {
  switch (type) {
    case at::kBool:
      return Dtype::kBool;
    case at::kChar:
      return Dtype::kInt8;
    case at::kByte:
      return Dtype::kUInt8;
    case at::kShort:
      return Dtype::kInt16;
    case at::kInt:
      return Dtype::kInt32;
    case at::kLong:
      return Dtype::kInt64;
    case at::kHalf:
      return Dtype::kFloat16;
    case at::kBFloat16:
      return Dtype::kBFloat16;
    case at::kFloat:
      return Dtype::kFloat32;
    case at::kDouble:
      return Dtype::kFloat64;
    default:
      return Dtype::kUnsupported;
  }
}

bool present(const OptionalTensor& tensor) { return tensor.has_value() && tensor->defined(); }

void check_rank(const char* operation, const char* name, const at::Tensor& tensor,
                std::int64_t rank, const char* shape) {
  MOE_EPLB_CHECK(tensor.dim() == rank, operation, ": ", name, " must be ", rank, "-D ", shape,
                 ", got a ", tensor.dim(), "-D tensor");
}

// For arguments whose core view is typed (the core cannot see their dtype).
void check_dtype(const char* operation, const char* name, const at::Tensor& tensor,
                 at::ScalarType expected) {
  MOE_EPLB_CHECK(tensor.scalar_type() == expected, operation, ": ", name, " must be ",
                 to_string(dtype_of(expected)), ", got ",
                 to_string(dtype_of(tensor.scalar_type())));
}

void check_device(const char* operation, const char* name, const at::Tensor& tensor,
                  const at::Tensor& expert_ids) {
  MOE_EPLB_CHECK(tensor.device() == expert_ids.device(), operation, ": ", name, " is on ",
                 tensor.device(), " but expert_ids is on ", expert_ids.device(),
                 "; all tensors must be on one device");
}

// Meta tensors have no memory: their views carry this placeholder, which
// marks the argument present and is never dereferenced (the core's meta
// checks skip the aliasing tests).
void* data_of(const at::Tensor& tensor) {
  static std::int64_t meta_placeholder = 0;
  return tensor.is_meta() ? &meta_placeholder : tensor.data_ptr();
}

// Whether sizes are symbolic (torch.compile with dynamic shapes).
bool has_symbolic_shape(const at::Tensor& tensor) {
#if TORCH_VERSION_MAJOR >= 2
  return tensor.unsafeGetTensorImpl()->has_symbolic_sizes_strides();
#else
  (void)tensor;
  return false;
#endif
}

bool any_symbolic_shape(const MappingArgs& args) {
  const auto symbolic = [](const OptionalTensor& tensor) {
    return present(tensor) && has_symbolic_shape(*tensor);
  };
  return has_symbolic_shape(*args.expert_ids) ||
         (args.eplb_table != nullptr && has_symbolic_shape(*args.eplb_table)) ||
         (args.routes != nullptr && has_symbolic_shape(*args.routes)) ||
         symbolic(args.expert_scales) || symbolic(args.pruning_threshold) ||
         symbolic(args.active_mask) || symbolic(args.load_counts) || symbolic(args.error_counter);
}

ExpertIdsView ids_view(const char* operation, const at::Tensor& ids) {
  check_rank(operation, "expert_ids", ids, 2, "(BS, K)");
  return ExpertIdsView{data_of(ids),  dtype_of(ids.scalar_type()),
                       ids.size(0),   ids.size(1),
                       ids.stride(0), ids.stride(1)};
}

PreparedView prepared_view(const char* operation, const at::Tensor& routes,
                           const UpdateExpertParams& params) {
  check_rank(operation, "routes", routes, 2, "(E, row_width) from prepare_table()");
  check_dtype(operation, "routes", routes, at::kInt);
  MOE_EPLB_CHECK(routes.is_contiguous(), operation,
                 ": routes must be contiguous (as prepare_table() returns them)");
  PreparedView view;
  view.routes = static_cast<const std::int32_t*>(data_of(routes));
  view.num_experts = routes.size(0);
  view.row_width = routes.size(1);
  view.balance_mode = params.balance_mode;
  view.num_physical_experts = params.num_physical_experts;
  view.profile = params.profile;
  return view;
}

// Fills `pruning` from the optional tensors; returns whether pruning is on.
bool pruning_view(const char* operation, const MappingArgs& args, PruningInputs& pruning) {
  const at::Tensor& ids = *args.expert_ids;
  const bool has_scales = present(args.expert_scales);
  const bool has_threshold = present(args.pruning_threshold);
  const bool has_mask = present(args.active_mask);
  MOE_EPLB_CHECK(has_scales == has_threshold, operation,
                 ": expert_scales and pruning_threshold come together, got only ",
                 has_scales ? "expert_scales" : "pruning_threshold");
  MOE_EPLB_CHECK(has_scales || !has_mask, operation,
                 ": active_mask needs expert_scales and pruning_threshold");
  if (!has_scales) return false;

  const at::Tensor& scales = *args.expert_scales;
  check_rank(operation, "expert_scales", scales, 2, "(BS, K)");
  check_device(operation, "expert_scales", scales, ids);
  pruning.expert_scales = ScalesView{data_of(scales),  dtype_of(scales.scalar_type()),
                                     scales.size(0),   scales.size(1),
                                     scales.stride(0), scales.stride(1)};
  const at::Tensor& threshold = *args.pruning_threshold;
  MOE_EPLB_CHECK(threshold.dim() == 1 || (threshold.dim() == 2 && threshold.size(0) == 1),
                 operation, ": pruning_threshold must be (K,) or (1, K), got shape ",
                 threshold.sizes());
  check_dtype(operation, "pruning_threshold", threshold, at::kFloat);
  check_device(operation, "pruning_threshold", threshold, ids);
  pruning.pruning_threshold = {static_cast<const float*>(data_of(threshold)), threshold.size(-1),
                               threshold.stride(-1)};
  pruning.has_active_mask = has_mask;
  if (has_mask) {
    const at::Tensor& mask = *args.active_mask;
    check_rank(operation, "active_mask", mask, 1, "(BS,)");
    check_dtype(operation, "active_mask", mask, at::kBool);
    check_device(operation, "active_mask", mask, ids);
    pruning.active_mask = {static_cast<const std::uint8_t*>(data_of(mask)), mask.size(0),
                           mask.stride(0)};
  }
  return true;
}

// A one-element int32 counter; null when not given.
std::int32_t* error_counter_pointer(const char* operation, const OptionalTensor& counter,
                                    const at::Tensor& ids) {
  if (!present(counter)) return nullptr;
  check_dtype(operation, "error_counter", *counter, at::kInt);
  check_device(operation, "error_counter", *counter, ids);
  MOE_EPLB_CHECK(counter->numel() == 1, operation, ": error_counter must have one element, got ",
                 counter->numel());
  return static_cast<std::int32_t*>(data_of(*counter));
}

// A contiguous 1-D int64 load_counts tensor as an output span (the core
// checks its size).
OutputSpan<std::int64_t> load_counts_span(const char* operation, const OptionalTensor& load_counts,
                                          const at::Tensor& ids) {
  if (!present(load_counts)) return {};
  check_rank(operation, "load_counts", *load_counts, 1, "(num_physical_experts,)");
  check_dtype(operation, "load_counts", *load_counts, at::kLong);
  check_device(operation, "load_counts", *load_counts, ids);
  MOE_EPLB_CHECK(load_counts->stride(0) == 1 || load_counts->size(0) <= 1, operation,
                 ": load_counts must be contiguous, got stride ", load_counts->stride(0));
  return {static_cast<std::int64_t*>(data_of(*load_counts)), load_counts->size(0)};
}

}  // namespace

[[noreturn]] void rethrow(const Error& error) {
  switch (error.code()) {
    case ErrorCode::kIndexOutOfRange:
      C10_THROW_ERROR(IndexError, error.what());
    case ErrorCode::kCuda:
    case ErrorCode::kIo:
      C10_THROW_ERROR(Error, error.what());
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kInvalidTable:
      break;
  }
  C10_THROW_ERROR(ValueError, error.what());
}

TableView table_view(const char* operation, const at::Tensor& eplb_table) {
  check_rank(operation, "eplb_table", eplb_table, 2, "(E, F)");
  check_dtype(operation, "eplb_table", eplb_table, at::kInt);
  return TableView{static_cast<const std::int32_t*>(data_of(eplb_table)), eplb_table.size(0),
                   eplb_table.size(1), eplb_table.stride(0), eplb_table.stride(1)};
}

UpdateExpertParams make_params(const char* operation, std::int64_t local_rank_id,
                               std::int64_t world_size, std::int64_t balance_mode,
                               std::int64_t num_physical_experts, c10::string_view profile) {
  UpdateExpertParams params;
  params.local_rank_id = local_rank_id;
  params.world_size = world_size;
  params.balance_mode = static_cast<BalanceMode>(balance_mode);
  params.num_physical_experts = num_physical_experts;
  try {
    params.profile = parse_limit_profile(std::string(profile));
  } catch (const Error& error) {
    MOE_EPLB_FAIL(error.code(), operation, ": profile: ", error.what());
  }
  return params;
}

MappingCall::MappingCall(const MappingArgs& args)
    : operation(args.operation),
      prepared(args.routes != nullptr),
      error_counter(nullptr),
      enable_pdl(args.enable_pdl),
      expert_ids_(args.expert_ids),
      always_mask_(args.always_mask) {
  const at::Tensor& ids = *args.expert_ids;
  params = make_params(operation, args.local_rank_id, args.world_size, args.balance_mode,
                       args.num_physical_experts, args.profile);
  symbolic = any_symbolic_shape(args);
  const bool prune = present(args.expert_scales);
  if (symbolic) {
#if TORCH_VERSION_MAJOR >= 2
    balanced_expert_ids_ = at::empty_symint(ids.sym_sizes(), ids.options());
    if (prune || always_mask_) {
      balanced_active_mask_ = at::empty_symint(ids.sym_sizes(), ids.options().dtype(at::kBool));
    }
#endif
    return;
  }

  inputs.expert_ids = ids_view(operation, ids);
  if (prepared) {
    routes = prepared_view(operation, *args.routes, params);
    check_device(operation, "routes", *args.routes, ids);
  } else {
    inputs.eplb_table = table_view(operation, *args.eplb_table);
    check_device(operation, "eplb_table", *args.eplb_table, ids);
  }
  inputs.pruning = pruning_view(operation, args, pruning_) ? &pruning_ : nullptr;
  error_counter = error_counter_pointer(operation, args.error_counter, ids);
  outputs.load_counts = load_counts_span(operation, args.load_counts, ids);

  const std::int64_t num_elements = ids.size(0) * ids.size(1);
  balanced_expert_ids_ = at::empty({ids.size(0), ids.size(1)}, ids.options());
  outputs.balanced_expert_ids = {data_of(balanced_expert_ids_), num_elements};
  if (prune || always_mask_) {
    balanced_active_mask_ = at::empty({ids.size(0), ids.size(1)}, ids.options().dtype(at::kBool));
  }
  if (prune) {
    outputs.balanced_active_mask = {static_cast<std::uint8_t*>(data_of(balanced_active_mask_)),
                                    num_elements};
  }
}

std::tuple<at::Tensor, at::Tensor> MappingCall::results() {
  if (!symbolic && always_mask_ && inputs.pruning == nullptr) balanced_active_mask_.fill_(true);
  return {balanced_expert_ids_, balanced_active_mask_};
}

}  // namespace moe_eplb::torch_adapter

#include "update_expert_adapter.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <string>

#include "core/checks.hpp"  // the core's front-end checks, shared with Meta
#include "moe_eplb/error.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/update_expert.hpp"

#ifndef MOE_EPLB_WITH_CUDA
#define MOE_EPLB_WITH_CUDA 0
#endif
#if MOE_EPLB_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "moe_eplb/cuda.hpp"
#endif

namespace moe_eplb::torch_adapter {
namespace {

constexpr const char* kUpdateExpert = "update_expert()";
constexpr const char* kUpdateExpertPrepared = "update_expert_prepared()";
constexpr const char* kPrepareTable = "prepare_table()";

// ---- errors -------------------------------------------------------------------

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

// Runs `body`, turning moe_eplb::Error into the matching c10 error.
template <typename Body>
auto translate_errors(Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Error& error) {
    rethrow(error);
  }
}

// ---- tensor -> view -------------------------------------------------------------

std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kInt:
      return "int32";
    case at::kLong:
      return "int64";
    case at::kFloat:
      return "float32";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kDouble:
      return "float64";
    case at::kBool:
      return "bool";
    case at::kByte:
      return "uint8";
    case at::kChar:
      return "int8";
    case at::kShort:
      return "int16";
    default:
      return c10::toString(type);
  }
}

void check_rank(const char* operation, const char* name, const at::Tensor& tensor,
                std::int64_t rank, const char* shape) {
  TORCH_CHECK_VALUE(tensor.dim() == rank, operation, ": ", name, " must be ", rank, "-D ", shape,
                    ", got a ", tensor.dim(), "-D tensor");
}

void check_dtype(const char* operation, const char* name, const at::Tensor& tensor,
                 at::ScalarType expected) {
  TORCH_CHECK_VALUE(tensor.scalar_type() == expected, operation, ": ", name, " must be ",
                    dtype_name(expected), ", got ", dtype_name(tensor.scalar_type()));
}

void check_device(const char* operation, const char* name, const at::Tensor& tensor,
                  const at::Tensor& expert_ids) {
  TORCH_CHECK_VALUE(tensor.device() == expert_ids.device(), operation, ": ", name, " is on ",
                    tensor.device(), " but expert_ids is on ", expert_ids.device(),
                    "; all tensors must be on one device");
}

// Meta tensors have no memory. The core's checks only test data pointers for
// null, so meta views carry this placeholder; meta calls never dereference it.
const void* data_of(const at::Tensor& tensor) {
  static const std::int64_t kMetaPlaceholder = 0;
  return tensor.is_meta() ? &kMetaPlaceholder : tensor.data_ptr();
}

// Whether sizes are symbolic (torch.compile with dynamic shapes): only the
// shape-free checks can run then; the real kernel checks the rest at run time.
bool has_symbolic_shape(const at::Tensor& tensor) {
#if TORCH_VERSION_MAJOR >= 2
  return tensor.unsafeGetTensorImpl()->has_symbolic_sizes_strides();
#else
  (void)tensor;
  return false;
#endif
}

ExpertIdsView expert_ids_view(const char* operation, const at::Tensor& ids) {
  check_rank(operation, "expert_ids", ids, 2, "(BS, K)");
  TORCH_CHECK_VALUE(ids.scalar_type() == at::kInt || ids.scalar_type() == at::kLong, operation,
                    ": expert_ids must be int32 or int64, got ", dtype_name(ids.scalar_type()));
  ExpertIdsView view;
  view.dtype = ids.scalar_type() == at::kInt ? Dtype::kInt32 : Dtype::kInt64;
  if (has_symbolic_shape(ids)) return view;
  view.data = data_of(ids);
  view.num_tokens = ids.size(0);
  view.top_k = ids.size(1);
  view.token_stride = ids.stride(0);
  view.k_stride = ids.stride(1);
  return view;
}

TableView table_view(const char* operation, const at::Tensor& table) {
  check_rank(operation, "eplb_table", table, 2, "(E, F)");
  check_dtype(operation, "eplb_table", table, at::kInt);
  TableView view;
  if (has_symbolic_shape(table)) return view;
  view.data = static_cast<const std::int32_t*>(data_of(table));
  view.num_experts = table.size(0);
  view.num_columns = table.size(1);
  view.row_stride = table.stride(0);
  view.column_stride = table.stride(1);
  return view;
}

PreparedView prepared_view(const char* operation, const at::Tensor& routes,
                           std::int64_t balance_mode, std::int64_t num_physical_experts,
                           LimitProfile profile) {
  check_rank(operation, "routes", routes, 2, "(E, row_width) from prepare_table()");
  check_dtype(operation, "routes", routes, at::kInt);
  PreparedView view;
  view.balance_mode = static_cast<BalanceMode>(balance_mode);
  view.num_physical_experts = num_physical_experts;
  view.profile = profile;
  if (has_symbolic_shape(routes)) return view;
  TORCH_CHECK_VALUE(routes.is_contiguous(), operation,
                    ": routes must be contiguous (as prepare_table() returns them)");
  view.routes = static_cast<const std::int32_t*>(data_of(routes));
  view.num_experts = routes.size(0);
  view.row_width = routes.size(1);
  return view;
}

Dtype scale_dtype(const char* operation, const at::Tensor& scales) {
  switch (scales.scalar_type()) {
    case at::kFloat:
      return Dtype::kFloat32;
    case at::kHalf:
      return Dtype::kFloat16;
    case at::kBFloat16:
      return Dtype::kBFloat16;
    default:
      TORCH_CHECK_VALUE(false, operation,
                        ": expert_scales must be float32, float16 or bfloat16, got ",
                        dtype_name(scales.scalar_type()));
  }
}

// Fills `pruning` from the optional tensors; returns whether pruning is on.
bool pruning_inputs(const char* operation, const at::Tensor& ids, const OptionalTensor& scales,
                    const OptionalTensor& threshold, const OptionalTensor& active_mask,
                    PruningInputs& pruning) {
  const bool has_scales = scales.has_value() && scales->defined();
  const bool has_threshold = threshold.has_value() && threshold->defined();
  const bool has_mask = active_mask.has_value() && active_mask->defined();
  TORCH_CHECK_VALUE(has_scales == has_threshold, operation,
                    ": expert_scales and pruning_threshold come together, got only ",
                    has_scales ? "expert_scales" : "pruning_threshold");
  TORCH_CHECK_VALUE(has_scales || !has_mask, operation,
                    ": active_mask needs expert_scales and pruning_threshold");
  if (!has_scales) return false;

  check_rank(operation, "expert_scales", *scales, 2, "(BS, K)");
  check_device(operation, "expert_scales", *scales, ids);
  ScalesView& view = pruning.expert_scales;
  view.dtype = scale_dtype(operation, *scales);
  TORCH_CHECK_VALUE(threshold->dim() == 1 || threshold->dim() == 2, operation,
                    ": pruning_threshold must be (K,) or (1, K), got a ", threshold->dim(),
                    "-D tensor");
  if (threshold->dim() == 2 && !has_symbolic_shape(*threshold)) {
    TORCH_CHECK_VALUE(threshold->size(0) == 1, operation,
                      ": pruning_threshold must be (K,) or (1, K), got shape ", threshold->sizes());
  }
  check_dtype(operation, "pruning_threshold", *threshold, at::kFloat);
  check_device(operation, "pruning_threshold", *threshold, ids);
  if (has_mask) {
    check_rank(operation, "active_mask", *active_mask, 1, "(BS,)");
    check_dtype(operation, "active_mask", *active_mask, at::kBool);
    check_device(operation, "active_mask", *active_mask, ids);
  }
  if (has_symbolic_shape(*scales) || has_symbolic_shape(*threshold) ||
      (has_mask && has_symbolic_shape(*active_mask))) {
    return true;
  }
  view.data = data_of(*scales);
  view.num_tokens = scales->size(0);
  view.top_k = scales->size(1);
  view.token_stride = scales->stride(0);
  view.k_stride = scales->stride(1);
  pruning.pruning_threshold.data = static_cast<const float*>(data_of(*threshold));
  pruning.pruning_threshold.size = threshold->size(-1);
  pruning.pruning_threshold.stride = threshold->stride(-1);
  pruning.has_active_mask = has_mask;
  if (has_mask) {
    pruning.active_mask.data = static_cast<const std::uint8_t*>(data_of(*active_mask));
    pruning.active_mask.size = active_mask->size(0);
    pruning.active_mask.stride = active_mask->stride(0);
  }
  return true;
}

// ---- one call -------------------------------------------------------------------

// Everything one op call passes to the core. Exactly one of eplb_table and
// routes is set.
struct Call {
  explicit Call(const char* name) : operation(name) {}

  const char* operation;
  const at::Tensor* expert_ids = nullptr;
  const at::Tensor* eplb_table = nullptr;  // stateless ops
  const at::Tensor* routes = nullptr;      // prepared ops
  OptionalTensor expert_scales;
  OptionalTensor pruning_threshold;
  OptionalTensor active_mask;
  OptionalTensor load_counts;
  OptionalTensor error_count;
  UpdateExpertParams params;
  bool mask_without_pruning = false;  // the counted ops always return a mask
};

struct Result {
  at::Tensor balanced_expert_ids;
  at::Tensor balanced_active_mask;  // undefined unless pruning or mask_without_pruning
};

UpdateExpertParams make_params(const char* operation, std::int64_t local_rank_id,
                               std::int64_t world_size, std::int64_t balance_mode,
                               std::int64_t num_physical_experts, c10::string_view profile) {
  UpdateExpertParams params;
  params.local_rank_id = local_rank_id;
  params.world_size = world_size;
  params.balance_mode = static_cast<BalanceMode>(balance_mode);  // checked by the core
  params.num_physical_experts = num_physical_experts;
  try {
    params.profile = parse_limit_profile(std::string(profile));
  } catch (const Error& error) {
    C10_THROW_ERROR(ValueError, detail::concat(operation, ": profile: ", error.what()));
  }
  return params;
}

std::int32_t* error_count_pointer(const char* operation, const OptionalTensor& error_count,
                                  const at::Tensor& ids) {
  if (!error_count.has_value() || !error_count->defined()) return nullptr;
  check_dtype(operation, "error_count", *error_count, at::kInt);
  check_device(operation, "error_count", *error_count, ids);
  if (!has_symbolic_shape(*error_count)) {
    TORCH_CHECK_VALUE(error_count->numel() == 1, operation,
                      ": error_count must have one element, got ", error_count->numel());
  }
  return error_count->is_meta() ? nullptr : error_count->data_ptr<std::int32_t>();
}

std::int64_t* load_counts_pointer(const char* operation, const OptionalTensor& load_counts,
                                  const at::Tensor& ids, std::int64_t num_physical_experts) {
  if (!load_counts.has_value() || !load_counts->defined()) return nullptr;
  check_rank(operation, "load_counts", *load_counts, 1, "(num_physical_experts,)");
  check_dtype(operation, "load_counts", *load_counts, at::kLong);
  check_device(operation, "load_counts", *load_counts, ids);
  TORCH_CHECK_VALUE(num_physical_experts != -1, operation,
                    ": load recording needs num_physical_experts (the size of load_counts)");
  if (!has_symbolic_shape(*load_counts)) {
    TORCH_CHECK_VALUE(load_counts->size(0) == num_physical_experts && load_counts->stride(0) == 1,
                      operation, ": load_counts must be a contiguous (", num_physical_experts,
                      ",) tensor (num_physical_experts), got shape ", load_counts->sizes(),
                      " and stride ", load_counts->strides());
  }
  return static_cast<std::int64_t*>(const_cast<void*>(data_of(*load_counts)));
}

bool any_symbolic_shape(const Call& call) {
  const auto symbolic = [](const OptionalTensor& tensor) {
    return tensor.has_value() && tensor->defined() && has_symbolic_shape(*tensor);
  };
  return has_symbolic_shape(*call.expert_ids) ||
         (call.eplb_table != nullptr && has_symbolic_shape(*call.eplb_table)) ||
         (call.routes != nullptr && has_symbolic_shape(*call.routes)) ||
         symbolic(call.expert_scales) || symbolic(call.pruning_threshold) ||
         symbolic(call.active_mask) || symbolic(call.load_counts);
}

Result run(const Call& call) {
  const char* operation = call.operation;
  const at::Tensor& ids = *call.expert_ids;
  const ExpertIdsView ids_view = expert_ids_view(operation, ids);
  TableView table;
  PreparedView prepared;
  if (call.eplb_table != nullptr) {
    table = table_view(operation, *call.eplb_table);
    check_device(operation, "eplb_table", *call.eplb_table, ids);
  } else {
    prepared =
        prepared_view(operation, *call.routes, static_cast<std::int64_t>(call.params.balance_mode),
                      call.params.num_physical_experts, call.params.profile);
    check_device(operation, "routes", *call.routes, ids);
  }
  PruningInputs pruning;
  const bool prune = pruning_inputs(operation, ids, call.expert_scales, call.pruning_threshold,
                                    call.active_mask, pruning);
  const std::int64_t num_physical_experts =
      call.eplb_table != nullptr ? call.params.num_physical_experts : prepared.num_physical_experts;
  // Used on CUDA only: the CPU raises on a bad element instead of counting it.
  [[maybe_unused]] std::int32_t* error_count =
      error_count_pointer(operation, call.error_count, ids);
  std::int64_t* load_counts =
      load_counts_pointer(operation, call.load_counts, ids, num_physical_experts);
  const bool want_mask = prune || call.mask_without_pruning;

  Result result;
  if (any_symbolic_shape(call)) {
#if TORCH_VERSION_MAJOR >= 2
    result.balanced_expert_ids = at::empty_symint(ids.sym_sizes(), ids.options());
    if (want_mask) {
      result.balanced_active_mask =
          at::empty_symint(ids.sym_sizes(), ids.options().dtype(at::kBool));
    }
#endif
    return result;
  }

  const std::int64_t num_tokens = ids_view.num_tokens;
  const std::int64_t top_k = ids_view.top_k;
  result.balanced_expert_ids = at::empty({num_tokens, top_k}, ids.options());
  if (want_mask) {
    result.balanced_active_mask = at::empty({num_tokens, top_k}, ids.options().dtype(at::kBool));
  }
  UpdateExpertOutputs outputs;
  outputs.balanced_expert_ids = const_cast<void*>(data_of(result.balanced_expert_ids));
  outputs.balanced_active_mask =
      prune ? static_cast<std::uint8_t*>(const_cast<void*>(data_of(result.balanced_active_mask)))
            : nullptr;
  outputs.load_counts = load_counts;
  const PruningInputs* pruning_ptr = prune ? &pruning : nullptr;
  const UpdateExpertInputs inputs{ids_view, table, pruning_ptr};

  translate_errors([&] {
    if (ids.is_meta()) {
      // Shapes only: the same front-end checks every backend runs, without
      // the output pointers (all meta tensors share one placeholder address,
      // and the outputs were allocated right here).
      if (call.eplb_table != nullptr) {
        detail::check_update_expert_call(operation, inputs, call.params, nullptr,
                                         load_counts != nullptr);
      } else {
        detail::check_prepared_call(operation, prepared, ids_view, pruning_ptr, nullptr);
      }
      return;
    }
    if (ids.is_cuda()) {
#if MOE_EPLB_WITH_CUDA
      const c10::cuda::CUDAGuard guard(ids.device());
      const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
      std::int32_t* counter = error_count != nullptr ? error_count : cuda::library_error_count();
      if (call.eplb_table != nullptr) {
        cuda::launch_update_expert(inputs, call.params, outputs, counter, stream);
      } else {
        cuda::launch_update_expert_prepared(prepared, ids_view, pruning_ptr, outputs, counter,
                                            stream);
      }
      return;
#endif
    }
    TORCH_CHECK_VALUE(ids.is_cpu(), operation, ": expert_ids is on ", ids.device(),
                      "; this build supports CPU", built_with_cuda() ? " and CUDA" : "",
                      " tensors");
    if (call.eplb_table != nullptr) {
      update_expert(inputs, call.params, outputs);
    } else {
      update_expert_prepared(prepared, ids_view, pruning_ptr, outputs);
    }
  });
  if (want_mask && !prune) result.balanced_active_mask.fill_(true);
  return result;
}

}  // namespace

at::Tensor update_expert(const at::Tensor& expert_ids, const at::Tensor& eplb_table,
                         std::int64_t local_rank_id, std::int64_t world_size,
                         std::int64_t balance_mode, std::int64_t num_physical_experts,
                         c10::string_view profile) {
  Call call(kUpdateExpert);
  call.expert_ids = &expert_ids;
  call.eplb_table = &eplb_table;
  call.params = make_params(call.operation, local_rank_id, world_size, balance_mode,
                            num_physical_experts, profile);
  return run(call).balanced_expert_ids;
}

std::tuple<at::Tensor, at::Tensor> update_expert_pruned(
    const at::Tensor& expert_ids, const at::Tensor& eplb_table, const at::Tensor& expert_scales,
    const at::Tensor& pruning_threshold, const OptionalTensor& active_mask,
    std::int64_t local_rank_id, std::int64_t world_size, std::int64_t balance_mode,
    std::int64_t num_physical_experts, c10::string_view profile) {
  // The counted op without counters (pruning inputs are required here).
  return update_expert_counted(expert_ids, eplb_table, local_rank_id, world_size, balance_mode,
                               expert_scales, pruning_threshold, active_mask, c10::nullopt,
                               c10::nullopt, num_physical_experts, profile);
}

std::tuple<at::Tensor, at::Tensor> update_expert_counted(
    const at::Tensor& expert_ids, const at::Tensor& eplb_table, std::int64_t local_rank_id,
    std::int64_t world_size, std::int64_t balance_mode, const OptionalTensor& expert_scales,
    const OptionalTensor& pruning_threshold, const OptionalTensor& active_mask,
    const OptionalTensor& load_counts, const OptionalTensor& error_count,
    std::int64_t num_physical_experts, c10::string_view profile) {
  Call call(kUpdateExpert);
  call.expert_ids = &expert_ids;
  call.eplb_table = &eplb_table;
  call.expert_scales = expert_scales;
  call.pruning_threshold = pruning_threshold;
  call.active_mask = active_mask;
  call.load_counts = load_counts;
  call.error_count = error_count;
  call.mask_without_pruning = true;
  call.params = make_params(call.operation, local_rank_id, world_size, balance_mode,
                            num_physical_experts, profile);
  Result result = run(call);
  return {result.balanced_expert_ids, result.balanced_active_mask};
}

std::tuple<at::Tensor, std::int64_t> prepare_table(
    const at::Tensor& eplb_table, std::int64_t local_rank_id, std::int64_t world_size,
    std::int64_t balance_mode, std::int64_t num_physical_experts, c10::string_view profile) {
  check_rank(kPrepareTable, "eplb_table", eplb_table, 2, "(E, F)");
  check_dtype(kPrepareTable, "eplb_table", eplb_table, at::kInt);
  TORCH_CHECK_VALUE(!eplb_table.is_meta() && !has_symbolic_shape(eplb_table), kPrepareTable,
                    ": eplb_table must hold values (preparing validates every entry), got a "
                    "meta tensor");
  const at::Tensor host = eplb_table.cpu();  // validation reads every entry on the host
  return translate_errors([&] {
    const UpdateExpertParams params = make_params(kPrepareTable, local_rank_id, world_size,
                                                  balance_mode, num_physical_experts, profile);
    TableView view;
    view.data = host.data_ptr<std::int32_t>();
    view.num_experts = host.size(0);
    view.num_columns = host.size(1);
    view.row_stride = host.stride(0);
    view.column_stride = host.stride(1);
    const PreparedTable prepared(view, params);  // validate_table() + scalar checks
    const std::int64_t row_width =
        params.balance_mode == BalanceMode::kByToken ? view.num_columns : 1;
    at::Tensor routes = at::empty({view.num_experts, row_width}, host.options());
    build_routes(view, prepared.params(), routes.data_ptr<std::int32_t>(), row_width);
    if (!eplb_table.is_cpu()) routes = routes.to(eplb_table.device());
    return std::make_tuple(routes, prepared.params().num_physical_experts);
  });
}

at::Tensor update_expert_prepared(const at::Tensor& expert_ids, const at::Tensor& routes,
                                  std::int64_t balance_mode, std::int64_t num_physical_experts,
                                  c10::string_view profile) {
  Call call(kUpdateExpertPrepared);
  call.expert_ids = &expert_ids;
  call.routes = &routes;
  call.params = make_params(call.operation, 0, 1, balance_mode, num_physical_experts, profile);
  return run(call).balanced_expert_ids;
}

std::tuple<at::Tensor, at::Tensor> update_expert_prepared_counted(
    const at::Tensor& expert_ids, const at::Tensor& routes, std::int64_t balance_mode,
    std::int64_t num_physical_experts, const OptionalTensor& expert_scales,
    const OptionalTensor& pruning_threshold, const OptionalTensor& active_mask,
    const OptionalTensor& load_counts, const OptionalTensor& error_count,
    c10::string_view profile) {
  Call call(kUpdateExpertPrepared);
  call.expert_ids = &expert_ids;
  call.routes = &routes;
  call.expert_scales = expert_scales;
  call.pruning_threshold = pruning_threshold;
  call.active_mask = active_mask;
  call.load_counts = load_counts;
  call.error_count = error_count;
  call.mask_without_pruning = true;
  call.params = make_params(call.operation, 0, 1, balance_mode, num_physical_experts, profile);
  Result result = run(call);
  return {result.balanced_expert_ids, result.balanced_active_mask};
}

at::Tensor library_error_counter(std::int64_t device_index) {
#if MOE_EPLB_WITH_CUDA
  TORCH_CHECK_VALUE(device_index >= 0 && device_index < cuda::device_count(),
                    "error_counter(): device index must be in 0..", cuda::device_count() - 1,
                    ", got ", device_index);
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_index));
  std::int32_t* counter = translate_errors([] { return cuda::library_error_count(); });
  return at::from_blob(counter, {1},
                       at::TensorOptions().dtype(at::kInt).device(
                           at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index))));
#else
  (void)device_index;
  TORCH_CHECK(false, "error_counter(): moe_eplb was built without CUDA");
#endif
}

bool built_with_cuda() { return MOE_EPLB_WITH_CUDA != 0; }

bool programmatic_dependent_launch() {
#if MOE_EPLB_WITH_CUDA
  return cuda::programmatic_dependent_launch();
#else
  return false;
#endif
}

void set_programmatic_dependent_launch([[maybe_unused]] bool enabled) {
#if MOE_EPLB_WITH_CUDA
  cuda::set_programmatic_dependent_launch(enabled);
#endif
}

}  // namespace moe_eplb::torch_adapter

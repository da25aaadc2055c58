// Launchers of the update-expert CUDA kernels: the public entry points check
// the call (core front end), plan it (launch_plan.cpp) and launch the planned
// kernel (update_expert_kernels.cuh) on the caller's stream.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../core/checks.hpp"
#include "device_runtime.hpp"
#include "launch_plan.hpp"
#include "moe_eplb/cuda.hpp"
#include "update_expert_kernels.cuh"

namespace moe_eplb::cuda {
namespace {

using internal::BatchArgs;
using internal::PruneArgs;
using internal::RouteArgs;
using internal::Source;
using internal::UpdateExpertFlatKernel;
using internal::UpdateExpertPrunedKernel;
using internal::UpdateExpertSinglePassKernel;

// ---- launchers ------------------------------------------------------------------

bool aligned16(const void* pointer) { return reinterpret_cast<std::uintptr_t>(pointer) % 16 == 0; }

// Launches kernel<<<plan.blocks, plan.threads, plan.shared_bytes, stream>>>(args...),
// through cudaLaunchKernelEx with the programmatic-dependent-launch attribute
// when the plan says so. The caller's cudaGetLastError() picks up any error.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), const internal::LaunchPlan& plan, cudaStream_t stream,
                   const Args&... args) {
  const dim3 grid(static_cast<unsigned int>(plan.blocks));
  if (!plan.programmatic) {
    kernel<<<grid, plan.threads, plan.shared_bytes, stream>>>(args...);
    return;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(static_cast<unsigned int>(plan.threads));
  config.dynamicSmemBytes = plan.shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  (void)cudaLaunchKernelEx(&config, kernel, args...);
}

// Calls f(std::true_type{}) or f(std::false_type{}): a run-time flag as a
// template argument.
template <typename F>
void with_flag(bool value, F&& f) {
  if (value) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// Calls f(std::integral_constant<Source, source>{}).
template <typename F>
void with_source(Source source, F&& f) {
  switch (source) {
    case Source::kTable:
      return f(std::integral_constant<Source, Source::kTable>{});
    case Source::kPrepared:
      return f(std::integral_constant<Source, Source::kPrepared>{});
    case Source::kTableMap:
      return f(std::integral_constant<Source, Source::kTableMap>{});
    case Source::kPreparedMap:
      return f(std::integral_constant<Source, Source::kPreparedMap>{});
  }
}

// 4 sources x vector x record: 16 kernels per id type.
template <typename IdT>
void launch_update_expert_flat(const internal::LaunchPlan& plan, const BatchArgs<IdT>& args,
                               const RouteArgs& routes, cudaStream_t stream) {
  with_source(plan.source, [&](auto source) {
    with_flag(plan.vector, [&](auto vector) {
      with_flag(plan.record, [&](auto record) {
        launch_kernel(UpdateExpertFlatKernel<IdT, decltype(source)::value, decltype(vector)::value,
                                             decltype(record)::value>,
                      plan, stream, args, routes);
      });
    });
  });
}

// The table's or the prepared routes' shared map: 2 kernels per id type.
template <typename IdT>
void launch_update_expert_single_pass(const internal::LaunchPlan& plan, const BatchArgs<IdT>& args,
                                      const RouteArgs& routes, cudaStream_t stream) {
  const auto num_elements = static_cast<std::uint32_t>(args.num_tokens * args.top_k);
  if (plan.source == Source::kTableMap) {
    launch_kernel(UpdateExpertSinglePassKernel<IdT, detail::TableRouter>, plan, stream, args.ids,
                  args.out, num_elements, routes.table, args.error_counter);
  } else {
    launch_kernel(UpdateExpertSinglePassKernel<IdT, detail::PreparedRouter>, plan, stream, args.ids,
                  args.out, num_elements, routes.prepared, args.error_counter);
  }
}

// Table or prepared (never a shared map) x record x per choice: 8 kernels per id type.
template <typename IdT>
void launch_update_expert_pruned(const internal::LaunchPlan& plan, const BatchArgs<IdT>& args,
                                 const RouteArgs& routes, const PruneArgs& prune,
                                 cudaStream_t stream) {
  with_flag(plan.source == Source::kPrepared, [&](auto prepared) {
    constexpr Source kSource = decltype(prepared)::value ? Source::kPrepared : Source::kTable;
    with_flag(plan.record, [&](auto record) {
      with_flag(plan.per_choice, [&](auto per_choice) {
        launch_kernel(UpdateExpertPrunedKernel<IdT, kSource, decltype(record)::value,
                                               decltype(per_choice)::value>,
                      plan, stream, args, routes, prune);
      });
    });
  });
}

// Plans and launches one checked, non-empty call. `prepared` says which
// router of `routes` is set; `num_physical_experts` is that router's bound.
template <typename IdT>
void launch(const char* operation, const ExpertIdsView& ids, const PruningInputs* pruning,
            const UpdateExpertOutputs& outputs, const RouteArgs& routes, bool prepared,
            std::int32_t* error_counter, const LaunchOptions& options, cudaStream_t stream) {
  BatchArgs<IdT> args{};
  args.ids = static_cast<const IdT*>(ids.data);
  args.num_tokens = ids.num_tokens;
  args.top_k = ids.top_k;
  args.token_stride = ids.token_stride;
  args.k_stride = ids.k_stride;
  args.out = static_cast<IdT*>(outputs.balanced_expert_ids.data);
  args.mask = outputs.balanced_active_mask.data;
  args.load_counts = outputs.load_counts.data;
  args.num_physical_experts =
      prepared ? routes.prepared.num_physical_experts : routes.table.num_physical_experts;
  args.error_counter = error_counter;

  const internal::DeviceInfo device = internal::current_device_info(operation);
  internal::LaunchRequest request;
  request.num_tokens = ids.num_tokens;
  request.top_k = ids.top_k;
  request.id_bytes = static_cast<std::int64_t>(sizeof(IdT));
  request.contiguous = (ids.num_tokens <= 1 || ids.token_stride == ids.top_k) &&
                       (ids.top_k <= 1 || ids.k_stride == 1);
  request.aligned16 = aligned16(ids.data) && aligned16(outputs.balanced_expert_ids.data);
  request.prepared = prepared;
  request.by_token =
      detail::uses_token_index(prepared ? routes.prepared.balance_mode : routes.table.balance_mode);
  request.pruning = pruning != nullptr;
  request.record = outputs.load_counts.data != nullptr;
  request.num_experts = prepared ? routes.prepared.num_experts : routes.table.num_experts;
  request.num_physical_experts = args.num_physical_experts;
  request.multiprocessors = device.multiprocessors;
  request.programmatic = device.programmatic_launch && options.programmatic_dependent_launch;
  const internal::LaunchPlan plan = internal::plan_launch(request);
  args.shared_histogram = plan.shared_histogram;

  switch (plan.kernel) {
    case internal::Kernel::kFlat:
      launch_update_expert_flat(plan, args, routes, stream);
      break;
    case internal::Kernel::kSinglePass:
      launch_update_expert_single_pass(plan, args, routes, stream);
      break;
    case internal::Kernel::kPruned: {
      PruneArgs prune{};
      prune.scales = pruning->expert_scales;
      prune.threshold = pruning->pruning_threshold.data;
      prune.threshold_stride = pruning->pruning_threshold.stride;
      prune.active_mask = pruning->has_active_mask ? pruning->active_mask.data : nullptr;
      prune.active_stride = pruning->active_mask.stride;
      launch_update_expert_pruned(plan, args, routes, prune, stream);
      break;
    }
  }
  MOE_EPLB_CUDA_CHECK(operation, cudaGetLastError());
}

void launch_for_dtype(const char* operation, const ExpertIdsView& ids, const PruningInputs* pruning,
                      const UpdateExpertOutputs& outputs, const RouteArgs& routes, bool prepared,
                      std::int32_t* error_counter, const LaunchOptions& options,
                      cudaStream_t stream) {
  if (ids.dtype == Dtype::kInt32) {
    launch<std::int32_t>(operation, ids, pruning, outputs, routes, prepared, error_counter, options,
                         stream);
  } else {
    launch<std::int64_t>(operation, ids, pruning, outputs, routes, prepared, error_counter, options,
                         stream);
  }
}

}  // namespace

void launch_update_expert(const UpdateExpertInputs& inputs, const UpdateExpertParams& params,
                          const UpdateExpertOutputs& outputs, std::int32_t* error_counter,
                          cudaStream_t stream, const LaunchOptions& options) {
  check_update_expert(inputs, params, outputs);
  const ExpertIdsView& ids = inputs.expert_ids;
  if (ids.num_tokens == 0 || ids.top_k == 0) return;
  RouteArgs routes{};
  routes.table = detail::table_router(inputs.eplb_table, params);
  launch_for_dtype(detail::mapping_operation(inputs), ids, inputs.pruning, outputs, routes, false,
                   error_counter, options, stream);
}

void launch_update_expert_prepared(const PreparedView& prepared, const ExpertIdsView& expert_ids,
                                   const PruningInputs* pruning, const UpdateExpertOutputs& outputs,
                                   std::int32_t* error_counter, cudaStream_t stream,
                                   const LaunchOptions& options) {
  check_update_expert_prepared(prepared, expert_ids, pruning, outputs);
  if (expert_ids.num_tokens == 0 || expert_ids.top_k == 0) return;
  RouteArgs routes{};
  routes.prepared = detail::prepared_router(prepared);
  launch_for_dtype("update_expert_prepared()", expert_ids, pruning, outputs, routes, true,
                   error_counter, options, stream);
}

}  // namespace moe_eplb::cuda

// The mapping ops of torch.ops.moe_eplb as kernel functions, one signature
// per schema (library.cpp), generic over the backend that runs the call:
//
//   struct Backend {
//     static void map(MappingCall& call);           // stateless: inputs, params
//     static void map_prepared(MappingCall& call);  // prepared: routes
//   };
//
// Each backend file (ops_cpu.cpp, ops_cuda.cpp, ops_meta.cpp) defines its
// Backend and registers these under its own dispatch key with
// register_mapping_kernels<Backend>().
#pragma once

#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "mapping_call.hpp"

namespace moe_eplb::torch_adapter {

// The scalars every mapping op takes.
inline MappingArgs mapping_args(const char* operation, const at::Tensor& expert_ids,
                                std::int64_t balance_mode, std::int64_t num_physical_experts,
                                c10::string_view profile, c10::optional<bool> enable_pdl) {
  MappingArgs args;
  args.operation = operation;
  args.expert_ids = &expert_ids;
  args.balance_mode = balance_mode;
  args.num_physical_experts = num_physical_experts;
  args.profile = profile;
  args.enable_pdl = enable_pdl;
  return args;
}

// A stateless op's arguments (the table and this rank).
inline MappingArgs stateless_args(const at::Tensor& expert_ids, const at::Tensor& eplb_table,
                                  std::int64_t local_rank_id, std::int64_t world_size,
                                  std::int64_t balance_mode, std::int64_t num_physical_experts,
                                  c10::string_view profile, c10::optional<bool> enable_pdl) {
  MappingArgs args = mapping_args("update_expert()", expert_ids, balance_mode, num_physical_experts,
                                  profile, enable_pdl);
  args.eplb_table = &eplb_table;
  args.local_rank_id = local_rank_id;
  args.world_size = world_size;
  return args;
}

// The counted ops' optional tensors; their mask is always returned.
inline MappingArgs& with_counting(MappingArgs& args, const OptionalTensor& expert_scales,
                                  const OptionalTensor& pruning_threshold,
                                  const OptionalTensor& active_mask,
                                  const OptionalTensor& load_counts,
                                  const OptionalTensor& error_counter) {
  args.expert_scales = expert_scales;
  args.pruning_threshold = pruning_threshold;
  args.active_mask = active_mask;
  args.load_counts = load_counts;
  args.error_counter = error_counter;
  args.always_mask = true;
  return args;
}

template <typename Backend>
at::Tensor update_expert(const at::Tensor& expert_ids, const at::Tensor& eplb_table,
                         std::int64_t local_rank_id, std::int64_t world_size,
                         std::int64_t balance_mode, std::int64_t num_physical_experts,
                         c10::string_view profile, c10::optional<bool> enable_pdl) {
  return std::get<0>(run_mapping<Backend>(
      stateless_args(expert_ids, eplb_table, local_rank_id, world_size, balance_mode,
                     num_physical_experts, profile, enable_pdl)));
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor> update_expert_counted(
    const at::Tensor& expert_ids, const at::Tensor& eplb_table, std::int64_t local_rank_id,
    std::int64_t world_size, std::int64_t balance_mode, const OptionalTensor& expert_scales,
    const OptionalTensor& pruning_threshold, const OptionalTensor& active_mask,
    const OptionalTensor& load_counts, const OptionalTensor& error_counter,
    std::int64_t num_physical_experts, c10::string_view profile, c10::optional<bool> enable_pdl) {
  MappingArgs args = stateless_args(expert_ids, eplb_table, local_rank_id, world_size, balance_mode,
                                    num_physical_experts, profile, enable_pdl);
  // Counting serves update_expert() and, with pruning inputs, update_expert_pruned().
  if (expert_scales.has_value()) args.operation = "update_expert_pruned()";
  return run_mapping<Backend>(with_counting(args, expert_scales, pruning_threshold, active_mask,
                                            load_counts, error_counter));
}

// The counted op without counters; pruning inputs are required here.
template <typename Backend>
std::tuple<at::Tensor, at::Tensor> update_expert_pruned(
    const at::Tensor& expert_ids, const at::Tensor& eplb_table, const at::Tensor& expert_scales,
    const at::Tensor& pruning_threshold, const OptionalTensor& active_mask,
    std::int64_t local_rank_id, std::int64_t world_size, std::int64_t balance_mode,
    std::int64_t num_physical_experts, c10::string_view profile, c10::optional<bool> enable_pdl) {
  return update_expert_counted<Backend>(expert_ids, eplb_table, local_rank_id, world_size,
                                        balance_mode, expert_scales, pruning_threshold, active_mask,
                                        c10::nullopt, c10::nullopt, num_physical_experts, profile,
                                        enable_pdl);
}

template <typename Backend>
at::Tensor update_expert_prepared(const at::Tensor& expert_ids, const at::Tensor& routes,
                                  std::int64_t balance_mode, std::int64_t num_physical_experts,
                                  c10::string_view profile, c10::optional<bool> enable_pdl) {
  MappingArgs args = mapping_args("update_expert_prepared()", expert_ids, balance_mode,
                                  num_physical_experts, profile, enable_pdl);
  args.routes = &routes;
  return std::get<0>(run_mapping<Backend>(args));
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor> update_expert_prepared_counted(
    const at::Tensor& expert_ids, const at::Tensor& routes, std::int64_t balance_mode,
    std::int64_t num_physical_experts, const OptionalTensor& expert_scales,
    const OptionalTensor& pruning_threshold, const OptionalTensor& active_mask,
    const OptionalTensor& load_counts, const OptionalTensor& error_counter,
    c10::string_view profile, c10::optional<bool> enable_pdl) {
  MappingArgs args = mapping_args("update_expert_prepared()", expert_ids, balance_mode,
                                  num_physical_experts, profile, enable_pdl);
  args.routes = &routes;
  return run_mapping<Backend>(with_counting(args, expert_scales, pruning_threshold, active_mask,
                                            load_counts, error_counter));
}

template <typename Backend>
void register_mapping_kernels(torch::Library& m) {
  m.impl("update_expert", TORCH_FN(update_expert<Backend>));
  m.impl("update_expert_pruned", TORCH_FN(update_expert_pruned<Backend>));
  m.impl("update_expert_counted", TORCH_FN(update_expert_counted<Backend>));
  m.impl("update_expert_prepared", TORCH_FN(update_expert_prepared<Backend>));
  m.impl("update_expert_prepared_counted", TORCH_FN(update_expert_prepared_counted<Backend>));
}

}  // namespace moe_eplb::torch_adapter

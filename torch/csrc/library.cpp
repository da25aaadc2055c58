// torch.ops.moe_eplb: every schema, declared here and nowhere else. The
// kernels register under their own dispatch keys in ops_cpu.cpp, ops_cuda.cpp
// (CUDA builds only) and ops_meta.cpp for the mapping ops, and in
// table_ops.cpp and plan_ops.cpp for the host work on tables (one
// CompositeExplicitAutograd kernel each, whatever the device). The few ops
// without a tensor argument have nothing to dispatch on and are defined here
// with their one kernel (host_ops.hpp). Every op returns integer ids, masks,
// tables or statistics: none is differentiable, so the Autograd key falls
// through for all of them.
#include <torch/library.h>

#include <cstring>
#include <string>

#include "host_ops.hpp"

namespace {

// The ops that take tensors, by schema.
constexpr const char* kTensorOps[] = {
    // The mapping (mapping_call.hpp, ops.hpp).
    "update_expert(Tensor expert_ids, Tensor eplb_table, int local_rank_id, int world_size, *, "
    "int balance_mode=0, int num_physical_experts=-1, str profile=\"native\", "
    "bool? enable_pdl=None) -> Tensor",
    "update_expert_pruned(Tensor expert_ids, Tensor eplb_table, Tensor expert_scales, "
    "Tensor pruning_threshold, Tensor? active_mask, int local_rank_id, int world_size, *, "
    "int balance_mode=0, int num_physical_experts=-1, str profile=\"native\", "
    "bool? enable_pdl=None) -> (Tensor, Tensor)",
    "update_expert_counted(Tensor expert_ids, Tensor eplb_table, int local_rank_id, "
    "int world_size, *, int balance_mode=0, Tensor? expert_scales=None, "
    "Tensor? pruning_threshold=None, Tensor? active_mask=None, "
    "Tensor(a!)? load_counts=None, Tensor(b!)? error_counter=None, "
    "int num_physical_experts=-1, str profile=\"native\", bool? enable_pdl=None) "
    "-> (Tensor, Tensor)",
    "update_expert_prepared(Tensor expert_ids, Tensor routes, *, int balance_mode, "
    "int num_physical_experts, str profile=\"native\", bool? enable_pdl=None) -> Tensor",
    "update_expert_prepared_counted(Tensor expert_ids, Tensor routes, *, int balance_mode, "
    "int num_physical_experts, Tensor? expert_scales=None, Tensor? pruning_threshold=None, "
    "Tensor? active_mask=None, Tensor(a!)? load_counts=None, Tensor(b!)? error_counter=None, "
    "str profile=\"native\", bool? enable_pdl=None) -> (Tensor, Tensor)",
    // Tables (table_ops.cpp).
    "prepare_table(Tensor eplb_table, int local_rank_id, int world_size, *, "
    "int balance_mode=0, int num_physical_experts=-1, str profile=\"native\") "
    "-> (Tensor, int)",
    "validate_table(Tensor eplb_table, int world_size, int num_physical_experts=-1, *, "
    "str profile=\"native\", bool warnings=True, int max_issues=1000) "
    "-> (str[] errors, str[] warnings, int total_errors, int total_warnings, "
    "int num_physical_experts, bool num_physical_experts_inferred)",
    // Planning (plan_ops.cpp).
    "plan(Tensor[] windows, int world_size, int slots_per_rank, *, str layout=\"\", "
    "int? balance_mode=None, str? rule=None, int ranks_per_node=0, int num_columns=0, "
    "str algorithm=\"moe-eplb\", int num_groups=1, Tensor? previous=None, int max_moves=-1, "
    "float move_cost=0.0, int threads=0) -> (Tensor, Tensor)",
    "analyze(Tensor table, Tensor load, int world_size, int slots_per_rank, *, str layout=\"\", "
    "int? balance_mode=None, str? rule=None, int ranks_per_node=0) -> (Tensor, Tensor, Tensor)",
    "migration_plan(Tensor old_table, Tensor new_table, int world_size, int slots_per_rank, *, "
    "int ranks_per_node=0) -> (Tensor, Tensor, Tensor, Tensor)",
    "align_to_previous(Tensor old_table, Tensor new_table, int world_size, int slots_per_rank) "
    "-> Tensor",
    "slot_experts(Tensor table, int world_size, int slots_per_rank) -> Tensor",
    "table_diff(Tensor old_table, Tensor new_table, int world_size, int slots_per_rank) "
    "-> (int, int, Tensor)",
    // Layout converters (plan_ops.cpp).
    "table_to_phy2log(Tensor table, int num_physical_experts, *, bool sort_replicas=False) "
    "-> Tensor",
    "table_to_log2phy(Tensor table, *, int max_replicas=0) -> (Tensor, Tensor)",
    "table_from_phy2log(Tensor phy2log, int num_experts, *, int num_columns=0) -> Tensor",
    "table_from_log2phy(Tensor log2phy, Tensor? logcnt=None, *, int num_columns=0) -> Tensor",
};

// "update_expert" from "update_expert(Tensor expert_ids, ...".
std::string op_name(const char* schema) { return std::string(schema, std::strchr(schema, '(')); }

}  // namespace

TORCH_LIBRARY(moe_eplb, m) {
  namespace adapter = moe_eplb::torch_adapter;
  for (const char* schema : kTensorOps) m.def(schema);
  m.def("widest_plan_columns(int num_experts, int world_size, int slots_per_rank) -> int",
        TORCH_FN(adapter::widest_plan_columns));
  m.def("names(str what) -> str[]", TORCH_FN(adapter::names));
  m.def("library_error_counter(int device_index) -> Tensor",
        TORCH_FN(adapter::library_error_counter));
  m.def("default_programmatic_dependent_launch() -> bool",
        TORCH_FN(adapter::default_programmatic_dependent_launch));
  m.def("set_default_programmatic_dependent_launch(bool enabled) -> ()",
        TORCH_FN(adapter::set_default_programmatic_dependent_launch));
}

// A fallthrough Autograd kernel costs nothing (the dispatcher masks the key
// out instead of running a boxed fallback on every call). It also covers
// AutogradMeta, which torch 1.13 needs for meta tensors.
TORCH_LIBRARY_IMPL(moe_eplb, Autograd, m) {
  for (const char* schema : kTensorOps) {
    m.impl(op_name(schema).c_str(), torch::CppFunction::makeFallthrough());
  }
}

// torch.ops.moe_eplb: every schema, declared once. The kernels register under
// their own dispatch keys in ops_cpu.cpp, ops_cuda.cpp (CUDA builds only) and
// ops_meta.cpp; what every key shares is here: prepare_table (host work,
// whatever the device) and the Autograd fallthrough.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <string>
#include <tuple>

#include "mapping_call.hpp"

namespace moe_eplb::torch_adapter {
namespace {

constexpr const char* kPrepareTable = "prepare_table()";

// Validates the whole table on the host (copying it there if needed) and
// returns (routes, num_physical_experts): int32 routes on the table's device
// in prepared.hpp's layout, and the slot count (inferred when -1 was given).
std::tuple<at::Tensor, std::int64_t> prepare_table(
    const at::Tensor& eplb_table, std::int64_t local_rank_id, std::int64_t world_size,
    std::int64_t balance_mode, std::int64_t num_physical_experts, c10::string_view profile) {
  TORCH_CHECK_VALUE(!eplb_table.is_meta(), kPrepareTable,
                    ": eplb_table must hold values (preparing validates every entry), got a "
                    "meta tensor");
  const at::Tensor host = eplb_table.cpu();
  return translate_errors([&] {
    const PreparedTable prepared(table_view(kPrepareTable, host),
                                 make_params(kPrepareTable, local_rank_id, world_size, balance_mode,
                                             num_physical_experts, profile));
    at::Tensor routes = at::empty({prepared.num_experts(), prepared.row_width()}, host.options());
    std::memcpy(routes.data_ptr<std::int32_t>(), prepared.routes().data(),
                prepared.routes().size() * sizeof(std::int32_t));
    return std::make_tuple(routes.to(eplb_table.device()), prepared.params().num_physical_experts);
  });
}

}  // namespace
}  // namespace moe_eplb::torch_adapter

TORCH_LIBRARY(moe_eplb, m) {
  m.def(
      "update_expert(Tensor expert_ids, Tensor eplb_table, int local_rank_id, int world_size, *, "
      "int balance_mode=0, int num_physical_experts=-1, str profile=\"native\", "
      "bool? enable_pdl=None) -> Tensor");
  m.def(
      "update_expert_pruned(Tensor expert_ids, Tensor eplb_table, Tensor expert_scales, "
      "Tensor pruning_threshold, Tensor? active_mask, int local_rank_id, int world_size, *, "
      "int balance_mode=0, int num_physical_experts=-1, str profile=\"native\", "
      "bool? enable_pdl=None) -> (Tensor, Tensor)");
  m.def(
      "update_expert_counted(Tensor expert_ids, Tensor eplb_table, int local_rank_id, "
      "int world_size, *, int balance_mode=0, Tensor? expert_scales=None, "
      "Tensor? pruning_threshold=None, Tensor? active_mask=None, "
      "Tensor(a!)? load_counts=None, Tensor(b!)? error_counter=None, "
      "int num_physical_experts=-1, str profile=\"native\", bool? enable_pdl=None) "
      "-> (Tensor, Tensor)");
  m.def(
      "prepare_table(Tensor eplb_table, int local_rank_id, int world_size, *, "
      "int balance_mode=0, int num_physical_experts=-1, str profile=\"native\") "
      "-> (Tensor, int)");
  m.def(
      "update_expert_prepared(Tensor expert_ids, Tensor routes, *, int balance_mode, "
      "int num_physical_experts, str profile=\"native\", bool? enable_pdl=None) -> Tensor");
  m.def(
      "update_expert_prepared_counted(Tensor expert_ids, Tensor routes, *, int balance_mode, "
      "int num_physical_experts, Tensor? expert_scales=None, Tensor? pruning_threshold=None, "
      "Tensor? active_mask=None, Tensor(a!)? load_counts=None, Tensor(b!)? error_counter=None, "
      "str profile=\"native\", bool? enable_pdl=None) -> (Tensor, Tensor)");
}

// prepare_table reads the table on the host whatever its device.
TORCH_LIBRARY_IMPL(moe_eplb, CompositeExplicitAutograd, m) {
  m.impl("prepare_table", TORCH_FN(moe_eplb::torch_adapter::prepare_table));
}

// The outputs are integer ids and a bool mask: never differentiable. A
// fallthrough Autograd kernel says exactly that, and costs nothing (the
// dispatcher masks the key out instead of running a boxed fallback on every
// call). It also covers AutogradMeta, which torch 1.13 needs for meta tensors.
TORCH_LIBRARY_IMPL(moe_eplb, Autograd, m) {
  for (const char* name :
       {"update_expert", "update_expert_pruned", "update_expert_counted", "prepare_table",
        "update_expert_prepared", "update_expert_prepared_counted"}) {
    m.impl(name, torch::CppFunction::makeFallthrough());
  }
}

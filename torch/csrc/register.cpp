// Registration of torch.ops.moe_eplb: every schema declared once, one
// TORCH_LIBRARY_IMPL per dispatch key, and the small pybind11 module that
// Python imports (moe_eplb._C) to load all of this. The kernels themselves
// are the adapter functions in update_expert_adapter.hpp; each serves CPU,
// CUDA and Meta and picks the backend from the tensors' device.
#include <torch/extension.h>

#include "update_expert_adapter.hpp"

namespace adapter = moe_eplb::torch_adapter;

TORCH_LIBRARY(moe_eplb, m) {
  m.def(
      "update_expert(Tensor expert_ids, Tensor eplb_table, int local_rank_id, int world_size, *, "
      "int balance_mode=0, int num_physical_experts=-1, str profile=\"native\") -> Tensor");
  m.def(
      "update_expert_pruned(Tensor expert_ids, Tensor eplb_table, Tensor expert_scales, "
      "Tensor pruning_threshold, Tensor? active_mask, int local_rank_id, int world_size, *, "
      "int balance_mode=0, int num_physical_experts=-1, str profile=\"native\") "
      "-> (Tensor, Tensor)");
  m.def(
      "update_expert_counted(Tensor expert_ids, Tensor eplb_table, int local_rank_id, "
      "int world_size, *, int balance_mode=0, Tensor? expert_scales=None, "
      "Tensor? pruning_threshold=None, Tensor? active_mask=None, "
      "Tensor(a!)? load_counts=None, Tensor(b!)? error_count=None, "
      "int num_physical_experts=-1, str profile=\"native\") -> (Tensor, Tensor)");
  m.def(
      "prepare_table(Tensor eplb_table, int local_rank_id, int world_size, *, "
      "int balance_mode=0, int num_physical_experts=-1, str profile=\"native\") "
      "-> (Tensor, int)");
  m.def(
      "update_expert_prepared(Tensor expert_ids, Tensor routes, *, int balance_mode, "
      "int num_physical_experts, str profile=\"native\") -> Tensor");
  m.def(
      "update_expert_prepared_counted(Tensor expert_ids, Tensor routes, *, int balance_mode, "
      "int num_physical_experts, Tensor? expert_scales=None, Tensor? pruning_threshold=None, "
      "Tensor? active_mask=None, Tensor(a!)? load_counts=None, Tensor(b!)? error_count=None, "
      "str profile=\"native\") -> (Tensor, Tensor)");
}

namespace {

// The mapping kernels: one adapter function each, for every backend key.
void register_mapping_kernels(torch::Library& m) {
  m.impl("update_expert", TORCH_FN(adapter::update_expert));
  m.impl("update_expert_pruned", TORCH_FN(adapter::update_expert_pruned));
  m.impl("update_expert_counted", TORCH_FN(adapter::update_expert_counted));
  m.impl("update_expert_prepared", TORCH_FN(adapter::update_expert_prepared));
  m.impl("update_expert_prepared_counted", TORCH_FN(adapter::update_expert_prepared_counted));
}

}  // namespace

TORCH_LIBRARY_IMPL(moe_eplb, CPU, m) { register_mapping_kernels(m); }

#if MOE_EPLB_WITH_CUDA
TORCH_LIBRARY_IMPL(moe_eplb, CUDA, m) { register_mapping_kernels(m); }
#endif

// Shape and dtype inference (torch.compile, FakeTensor): the core's checks
// without touching data.
TORCH_LIBRARY_IMPL(moe_eplb, Meta, m) { register_mapping_kernels(m); }

// prepare_table reads the table on the host whatever its device.
TORCH_LIBRARY_IMPL(moe_eplb, CompositeExplicitAutograd, m) {
  m.impl("prepare_table", TORCH_FN(adapter::prepare_table));
}

// The outputs are integer ids and a bool mask: never differentiable, like
// torch.argmax's. A fallthrough Autograd kernel says exactly that, and costs
// nothing: the dispatcher masks the key out instead of running a boxed
// fallback on every call (about a microsecond of host time per call). It also
// covers AutogradMeta, which torch 1.13 needs for meta tensors.
TORCH_LIBRARY_IMPL(moe_eplb, Autograd, m) {
  for (const char* name :
       {"update_expert", "update_expert_pruned", "update_expert_counted", "prepare_table",
        "update_expert_prepared", "update_expert_prepared_counted"}) {
    m.impl(name, torch::CppFunction::makeFallthrough());
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "moe_eplb compiled core; importing it registers torch.ops.moe_eplb";
  module.def("error_counter", &adapter::library_error_counter, pybind11::arg("device_index"),
             "One-element int32 CUDA tensor aliasing the library's error counter on a device.");
  module.def("programmatic_dependent_launch", &adapter::programmatic_dependent_launch,
             "Whether CUDA kernels launch with programmatic dependent launch (sm_90+).");
  module.def("set_programmatic_dependent_launch", &adapter::set_programmatic_dependent_launch,
             pybind11::arg("enabled"),
             "Turns programmatic dependent launch of the CUDA kernels on or off (process-wide).");
  module.attr("with_cuda") = adapter::built_with_cuda();
}

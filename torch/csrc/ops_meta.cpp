// The Meta kernels of torch.ops.moe_eplb (shape and dtype inference for
// torch.compile and FakeTensor): the core's front-end checks without memory.
#include <torch/library.h>

#include "mapping_call.hpp"
#include "ops.hpp"

namespace moe_eplb::torch_adapter {
namespace {

struct MetaBackend {
  static void map(MappingCall& call) {
    check_update_expert(call.inputs, call.params, call.outputs, /*has_memory=*/false);
  }
  static void map_prepared(MappingCall& call) {
    check_update_expert_prepared(call.routes, call.inputs.expert_ids, call.inputs.pruning,
                                 call.outputs, /*has_memory=*/false);
  }
};

}  // namespace
}  // namespace moe_eplb::torch_adapter

TORCH_LIBRARY_IMPL(moe_eplb, Meta, m) {
  moe_eplb::torch_adapter::register_mapping_kernels<moe_eplb::torch_adapter::MetaBackend>(m);
}

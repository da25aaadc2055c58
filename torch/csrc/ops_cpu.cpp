// The CPU kernels of torch.ops.moe_eplb, and torch.classes.moe_eplb.
// HostPreparedTable (routes on the host).
#include <torch/library.h>

#include <memory>

#include "mapping_call.hpp"
#include "ops.hpp"
#include "prepared_holder.hpp"

namespace moe_eplb::torch_adapter {
namespace {

// A bad element raises IndexError naming (b, k); error_counter is unused.
struct CpuBackend {
  static void map(MappingCall& call) { update_expert(call.inputs, call.params, call.outputs); }
  static void map_prepared(MappingCall& call) {
    update_expert_prepared(call.routes, call.inputs.expert_ids, call.inputs.pruning, call.outputs);
  }
};

// A PreparedTable; update() rebuilds its routes in place, so it must not run
// while another thread maps with them.
struct HostTables {
  using Table = PreparedTable;
  static std::shared_ptr<Table> create(const TableView& eplb_table,
                                       const UpdateExpertParams& params, std::int64_t) {
    return std::make_shared<Table>(eplb_table, params);
  }
  static void update(Table& table, const TableView& eplb_table) { table.update(eplb_table); }
  static PreparedView view(const Table& table) { return table.view(); }
  static const PreparedTable& host(const Table& table) { return table; }
  static at::Device device(const Table&) { return at::Device(at::kCPU); }
};

}  // namespace
}  // namespace moe_eplb::torch_adapter

TORCH_LIBRARY_IMPL(moe_eplb, CPU, m) {
  moe_eplb::torch_adapter::register_mapping_kernels<moe_eplb::torch_adapter::CpuBackend>(m);
}

TORCH_LIBRARY_FRAGMENT(moe_eplb, m) {
  moe_eplb::torch_adapter::PreparedTableHolder<moe_eplb::torch_adapter::HostTables>::define(
      m, "HostPreparedTable");
}

// torch.classes.moe_eplb.{Host,Cuda}PreparedTable: the object Python's
// PreparedTable holds. It owns a core prepared table, which owns validation,
// the routes and the in-place swap; the routes tensor it hands out aliases the
// table's routes (host or device), so the mapping ops, CUDA graphs and
// torch.compile see a plain tensor whose contents update() replaces.
//
// Generic over a Backend policy:
//   using Table = ...;  // PreparedTable or cuda::DevicePreparedTable
//   static std::shared_ptr<Table> create(const TableView&, const UpdateExpertParams&,
//                                        std::int64_t device_index);
//   static void update(Table&, const TableView&);
//   static PreparedView view(const Table&);          // routes in the table's memory
//   static const PreparedTable& host(const Table&);  // params and report
//   static at::Device device(const Table&);
#pragma once

#include <ATen/ATen.h>
#include <torch/custom_class.h>

#include <memory>
#include <string>

#include "mapping_call.hpp"

namespace moe_eplb::torch_adapter {

template <typename Backend>
class PreparedTableHolder : public torch::CustomClassHolder {
 public:
  using Table = typename Backend::Table;

  // Validates eplb_table (any device; read on the host) like prepare_table().
  // Errors name Python's moe_eplb.PreparedTable, which holds this object.
  PreparedTableHolder(const at::Tensor& eplb_table, std::int64_t local_rank_id,
                      std::int64_t world_size, std::int64_t balance_mode,
                      std::int64_t num_physical_experts, const std::string& profile,
                      std::int64_t device_index) {
    constexpr const char* kOperation = "PreparedTable()";
    const at::Tensor host = eplb_table.cpu();
    table_ = translate_errors([&] {
      return Backend::create(table_view(kOperation, host),
                             make_params(kOperation, local_rank_id, world_size, balance_mode,
                                         num_physical_experts, profile),
                             device_index);
    });
  }

  // int32 (E, row_width) aliasing the routes; the tensor keeps them alive.
  at::Tensor routes() const {
    const PreparedView view = Backend::view(*table_);
    std::shared_ptr<Table> keep = table_;
    return at::from_blob(
        const_cast<std::int32_t*>(view.routes), {view.num_experts, view.row_width},
        [keep](void*) {}, at::TensorOptions().dtype(at::kInt).device(Backend::device(*table_)));
  }

  // Validates and installs a table of the same shape; keeps the old one on error.
  void update(const at::Tensor& eplb_table) {
    const at::Tensor host = eplb_table.cpu();
    translate_errors([&] { Backend::update(*table_, table_view("PreparedTable.update()", host)); });
  }

  std::int64_t num_physical_experts() const {
    return Backend::host(*table_).params().num_physical_experts;
  }

  // The latest table's warnings (validate_table()), one per line.
  std::string report() const { return Backend::host(*table_).report().to_string(); }

  // Registers the class as torch.classes.moe_eplb.<name>.
  static void define(torch::Library& m, const char* name) {
    m.class_<PreparedTableHolder>(name)
        .def(torch::init<at::Tensor, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                         std::string, std::int64_t>())
        .def("routes", &PreparedTableHolder::routes)
        .def("update", &PreparedTableHolder::update)
        .def("num_physical_experts", &PreparedTableHolder::num_physical_experts)
        .def("report", &PreparedTableHolder::report);
  }

 private:
  std::shared_ptr<Table> table_;
};

}  // namespace moe_eplb::torch_adapter

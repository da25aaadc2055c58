// The CUDA kernels of torch.ops.moe_eplb (compiled only with CUDA), torch.
// classes.moe_eplb.CudaPreparedTable, and the CUDA runtime's process state:
// the library's error counter and the default launch options.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <memory>

#include "host_ops.hpp"
#include "mapping_call.hpp"
#include "moe_eplb/cuda.hpp"
#include "ops.hpp"
#include "prepared_holder.hpp"

namespace moe_eplb::torch_adapter {
namespace {

// One launch on the current stream of expert_ids' device. A bad element
// becomes -1 and is counted in error_counter, or in the library's counter.
struct CudaBackend {
  static void map(MappingCall& call) {
    const Launch launch(call);
    cuda::launch_update_expert(call.inputs, call.params, call.outputs, launch.counter,
                               launch.stream, launch.options);
  }
  static void map_prepared(MappingCall& call) {
    const Launch launch(call);
    cuda::launch_update_expert_prepared(call.routes, call.inputs.expert_ids, call.inputs.pruning,
                                        call.outputs, launch.counter, launch.stream,
                                        launch.options);
  }

 private:
  // The device, stream, error counter and launch options of one call.
  struct Launch {
    explicit Launch(const MappingCall& call)
        : guard(call.expert_ids_tensor().device()),
          stream(c10::cuda::getCurrentCUDAStream().stream()),
          counter(call.error_counter != nullptr ? call.error_counter
                                                : cuda::library_error_counter()),
          options(cuda::default_launch_options()) {
      if (call.enable_pdl.has_value()) options.programmatic_dependent_launch = *call.enable_pdl;
    }
    c10::cuda::CUDAGuard guard;
    cudaStream_t stream;
    std::int32_t* counter;
    cuda::LaunchOptions options;
  };
};

// A DevicePreparedTable on one device; construction and update() copy on
// that device's current stream.
struct CudaTables {
  using Table = cuda::DevicePreparedTable;
  static std::shared_ptr<Table> create(const TableView& eplb_table,
                                       const UpdateExpertParams& params,
                                       std::int64_t device_index) {
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_index));
    return std::make_shared<Table>(eplb_table, params, c10::cuda::getCurrentCUDAStream().stream());
  }
  static void update(Table& table, const TableView& eplb_table) {
    const c10::cuda::CUDAGuard guard(device(table));
    table.update(eplb_table, c10::cuda::getCurrentCUDAStream().stream());
  }
  static PreparedView view(const Table& table) { return table.view(); }
  static const PreparedTable& host(const Table& table) { return table.host(); }
  static at::Device device(const Table& table) {
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(table.device()));
  }
};

}  // namespace

// A one-element int32 CUDA tensor aliasing the library's error counter on a device.
at::Tensor library_error_counter(std::int64_t device_index) {
  return translate_errors([&] {
    MOE_EPLB_CHECK(device_index >= 0 && device_index < cuda::device_count(),
                   "library_error_counter(): device index must be in 0..", cuda::device_count() - 1,
                   ", got ", device_index);
    const auto index = static_cast<c10::DeviceIndex>(device_index);
    const c10::cuda::CUDAGuard guard(index);
    return at::from_blob(cuda::library_error_counter(), {1},
                         at::TensorOptions().dtype(at::kInt).device(at::Device(at::kCUDA, index)));
  });
}

bool default_programmatic_dependent_launch() {
  return cuda::default_launch_options().programmatic_dependent_launch;
}

void set_default_programmatic_dependent_launch(bool enabled) {
  cuda::LaunchOptions options = cuda::default_launch_options();
  options.programmatic_dependent_launch = enabled;
  cuda::set_default_launch_options(options);
}

}  // namespace moe_eplb::torch_adapter

TORCH_LIBRARY_IMPL(moe_eplb, CUDA, m) {
  moe_eplb::torch_adapter::register_mapping_kernels<moe_eplb::torch_adapter::CudaBackend>(m);
}

TORCH_LIBRARY_FRAGMENT(moe_eplb, m) {
  namespace adapter = moe_eplb::torch_adapter;
  adapter::PreparedTableHolder<adapter::CudaTables>::define(m, "CudaPreparedTable");
}

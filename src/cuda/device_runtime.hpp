// Per-process CUDA state the launchers share (internal header): the checked
// runtime call, and the current device's properties, cached per device.
#pragma once

#include <cuda_runtime_api.h>

#include "moe_eplb/error.hpp"

// Throws moe_eplb::Error (kCuda) naming the operation, the call and the error.
#define MOE_EPLB_CUDA_CHECK(operation, call)                                                     \
  do {                                                                                           \
    const cudaError_t moe_eplb_status = (call);                                                  \
    MOE_EPLB_CHECK_CODE(moe_eplb_status == cudaSuccess, ::moe_eplb::ErrorCode::kCuda, operation, \
                        ": ", #call, " failed: ", cudaGetErrorName(moe_eplb_status), " (",       \
                        cudaGetErrorString(moe_eplb_status), ")");                               \
  } while (0)

namespace moe_eplb::cuda::internal {

struct DeviceInfo {
  int multiprocessors;
  bool programmatic_launch;  // compute capability 9.0 or newer
};

// The current device's properties. Queried once per device (attribute queries
// would otherwise be the only per-call driver work besides the launch).
DeviceInfo current_device_info(const char* operation);

}  // namespace moe_eplb::cuda::internal

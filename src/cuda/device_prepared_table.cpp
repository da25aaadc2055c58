// DevicePreparedTable: a PreparedTable on the host, mirrored into one device
// buffer by stream-ordered copies (host code; no kernels here).
#include <cstring>

#include "device_runtime.hpp"
#include "moe_eplb/cuda.hpp"

namespace moe_eplb::cuda {
namespace {

std::size_t route_bytes(const PreparedTable& host) {
  return host.routes().size() * sizeof(std::int32_t);
}

void check_not_capturing(const char* operation, cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  MOE_EPLB_CUDA_CHECK(operation, cudaStreamIsCapturing(stream, &capture));
  MOE_EPLB_CHECK(capture == cudaStreamCaptureStatusNone, operation,
                 ": the stream is capturing a CUDA graph; install tables between replays, "
                 "outside capture");
}

}  // namespace

DevicePreparedTable::DevicePreparedTable(const TableView& eplb_table,
                                         const UpdateExpertParams& params, cudaStream_t stream)
    : host_(eplb_table, params) {
  constexpr const char* kOperation = "DevicePreparedTable()";
  check_not_capturing(kOperation, stream);
  MOE_EPLB_CUDA_CHECK(kOperation, cudaGetDevice(&device_));
  const std::size_t bytes = route_bytes(host_);
  try {
    MOE_EPLB_CUDA_CHECK(kOperation, cudaMalloc(reinterpret_cast<void**>(&device_routes_), bytes));
    MOE_EPLB_CUDA_CHECK(kOperation,
                        cudaMallocHost(reinterpret_cast<void**>(&staging_routes_), bytes));
    MOE_EPLB_CUDA_CHECK(kOperation,
                        cudaEventCreateWithFlags(&staging_free_, cudaEventDisableTiming));
    copy_to_device(stream);
  } catch (...) {
    release();
    throw;
  }
}

DevicePreparedTable::~DevicePreparedTable() { release(); }

void DevicePreparedTable::release() noexcept {
  // The last copy may still be reading the staging buffer.
  if (staging_free_ != nullptr) {
    (void)cudaEventSynchronize(staging_free_);
    (void)cudaEventDestroy(staging_free_);
  }
  if (staging_routes_ != nullptr) (void)cudaFreeHost(staging_routes_);
  if (device_routes_ != nullptr) (void)cudaFree(device_routes_);
  staging_free_ = nullptr;
  staging_routes_ = nullptr;
  device_routes_ = nullptr;
}

void DevicePreparedTable::update(const TableView& eplb_table, cudaStream_t stream) {
  constexpr const char* kOperation = "DevicePreparedTable::update()";
  // Everything that can refuse the update runs before the host routes change;
  // the wait frees the staging buffer of the previous copy.
  check_not_capturing(kOperation, stream);
  MOE_EPLB_CUDA_CHECK(kOperation, cudaEventSynchronize(staging_free_));
  host_.update(eplb_table);  // validates; throws and keeps the old routes
  copy_to_device(stream);
}

// Stages the host routes and copies them on `stream` (the staging buffer is free).
void DevicePreparedTable::copy_to_device(cudaStream_t stream) {
  constexpr const char* kOperation = "DevicePreparedTable::update()";
  const std::size_t bytes = route_bytes(host_);
  std::memcpy(staging_routes_, host_.routes().data(), bytes);
  MOE_EPLB_CUDA_CHECK(kOperation, cudaMemcpyAsync(device_routes_, staging_routes_, bytes,
                                                  cudaMemcpyHostToDevice, stream));
  MOE_EPLB_CUDA_CHECK(kOperation, cudaEventRecord(staging_free_, stream));
}

PreparedView DevicePreparedTable::view() const {
  PreparedView view = host_.view();
  view.routes = device_routes_;
  return view;
}

}  // namespace moe_eplb::cuda

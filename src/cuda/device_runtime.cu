// Process-wide CUDA state: the device-properties cache, the library's error
// counter, and the default launch options.
#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "device_runtime.hpp"
#include "moe_eplb/cuda.hpp"

namespace moe_eplb::cuda {
namespace {

constexpr int kMaxCachedDevices = 64;

__device__ std::int32_t g_library_error_counter;  // zero at module load

// Default programmatic dependent launch: -1 = not read yet (the MOE_EPLB_PDL
// environment variable decides), else 0 or 1.
std::atomic<int> g_default_programmatic_launch{-1};

int current_device(const char* operation) {
  int device = 0;
  MOE_EPLB_CUDA_CHECK(operation, cudaGetDevice(&device));
  return device;
}

}  // namespace

namespace internal {

DeviceInfo current_device_info(const char* operation) {
  static std::atomic<int> cache[kMaxCachedDevices];  // multiprocessors | major << 16
  const int device = current_device(operation);
  int packed = device < kMaxCachedDevices ? cache[device].load(std::memory_order_relaxed) : 0;
  if (packed == 0) {
    int count = 0;
    int major = 0;
    MOE_EPLB_CUDA_CHECK(operation,
                        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    MOE_EPLB_CUDA_CHECK(operation,
                        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    packed = std::clamp(count, 1, 0xffff) | (std::clamp(major, 0, 0x7fff) << 16);
    if (device < kMaxCachedDevices) cache[device].store(packed, std::memory_order_relaxed);
  }
  return DeviceInfo{packed & 0xffff, (packed >> 16) >= 9};
}

}  // namespace internal

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the (non-sticky) "no device" error
    return 0;
  }
  return count;
}

LaunchOptions default_launch_options() noexcept {
  int enabled = g_default_programmatic_launch.load(std::memory_order_relaxed);
  if (enabled < 0) {
    const char* value = std::getenv("MOE_EPLB_PDL");
    enabled = value != nullptr && value[0] == '1' && value[1] == '\0' ? 1 : 0;
    int expected = -1;  // a concurrent set_default_launch_options() wins
    if (!g_default_programmatic_launch.compare_exchange_strong(expected, enabled)) {
      enabled = expected;
    }
  }
  LaunchOptions options;
  options.programmatic_dependent_launch = enabled == 1;
  return options;
}

void set_default_launch_options(const LaunchOptions& options) noexcept {
  g_default_programmatic_launch.store(options.programmatic_dependent_launch ? 1 : 0,
                                      std::memory_order_relaxed);
}

std::int32_t* library_error_counter() {
  constexpr const char* kOperation = "library_error_counter()";
  static std::atomic<std::int32_t*> cache[kMaxCachedDevices];
  const int device = current_device(kOperation);
  if (device < kMaxCachedDevices) {
    std::int32_t* cached = cache[device].load(std::memory_order_acquire);
    if (cached != nullptr) return cached;
  }
  void* address = nullptr;
  MOE_EPLB_CUDA_CHECK(kOperation, cudaGetSymbolAddress(&address, g_library_error_counter));
  auto* counter = static_cast<std::int32_t*>(address);
  if (device < kMaxCachedDevices) cache[device].store(counter, std::memory_order_release);
  return counter;
}

}  // namespace moe_eplb::cuda

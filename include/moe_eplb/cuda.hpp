// CUDA launchers for the update-expert operator. Only available when the
// library is built with CUDA (MOE_EPLB_WITH_CUDA). Every pointer inside the
// views and outputs is a device pointer; the structs themselves live on the host.
//
// Contract shared by all launchers:
// - Shapes, dtypes and limits are checked on the host (the same front-end
//   checks as the CPU kernel) and throw moe_eplb::Error before anything is
//   launched. No tensor element is read on the host.
// - Element values are never trusted: an expert id outside [0, E), a replica
//   count outside [1, F-1] or a selected slot outside [0, num_physical_experts)
//   (or the profile's limit when that is -1) writes -1 for that element, keeps
//   it out of load_counts, and adds 1 to *error_counter (a device int32 the
//   caller owns; may be null to not count). No input can cause an
//   out-of-bounds read or write.
// - Pruning: balanced_active_mask as on the CPU (bit-identical: same float32
//   sum order). A pruned choice or an inactive token is not load-counted.
// - One kernel launch on `stream`, no host synchronisation, no allocation:
//   safe to capture in a CUDA graph. Thread-safe. A launch failure throws
//   moe_eplb::Error (kCuda) naming the CUDA error.
// - Deterministic outputs; load_counts uses atomics (order-independent sums).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "moe_eplb/prepared.hpp"
#include "moe_eplb/table.hpp"
#include "moe_eplb/update_expert.hpp"

namespace moe_eplb::cuda {

// Number of CUDA devices the runtime sees; 0 when there is no GPU or driver
// (never throws).
int device_count() noexcept;

// The library's own error counter on the current device: a __device__ int32
// that starts at 0 when the module loads and keeps one address for the life of
// the process, so CUDA graphs may capture it. Adapters pass it as
// error_counter when their caller gives none. Reset it with a 4-byte
// cudaMemsetAsync. Throws moe_eplb::Error (kCuda) if the runtime cannot
// resolve it.
std::int32_t* library_error_counter();

// Per-call launch options.
struct LaunchOptions {
  // Programmatic dependent launch (compute capability 9.0 and newer; ignored
  // below): the GPU may start the kernel while the previous kernel on the
  // stream is still finishing. The kernel waits for that kernel's completion
  // before it touches global memory, so results and ordering are those of a
  // plain launch; what overlaps is the launch latency. Captured into CUDA
  // graphs as programmatic edges.
  bool programmatic_dependent_launch = false;
};

// The process default that launchers use when a call gives no options: all
// off, unless the environment variable MOE_EPLB_PDL=1 turns programmatic
// dependent launch on, or set_default_launch_options() changed it. Thread-safe.
LaunchOptions default_launch_options() noexcept;
void set_default_launch_options(const LaunchOptions& options) noexcept;

// Stateless: validates like update_expert() (operation name "update_expert()"),
// then maps in one launch. load_counts needs params.num_physical_experts.
void launch_update_expert(const UpdateExpertInputs& inputs, const UpdateExpertParams& params,
                          const UpdateExpertOutputs& outputs, std::int32_t* error_counter,
                          cudaStream_t stream,
                          const LaunchOptions& options = default_launch_options());

// Prepared: one gather through device routes (layout in prepared.hpp).
// Validates like update_expert_prepared() (operation name
// "update_expert_prepared()").
void launch_update_expert_prepared(const PreparedView& prepared, const ExpertIdsView& expert_ids,
                                   const PruningInputs* pruning, const UpdateExpertOutputs& outputs,
                                   std::int32_t* error_counter, cudaStream_t stream,
                                   const LaunchOptions& options = default_launch_options());

// Prepared routes kept on one device, swappable under CUDA graphs.
//
// The routes live in one device buffer allocated at construction and never
// reallocated (prepared.hpp: every table of one shape has the same layout).
// update() validates and builds the new routes on the host (a PreparedTable
// is the host side), stages them in pinned memory and copies them into the
// same device buffer with cudaMemcpyAsync on the caller's stream. Because the
// copy is stream-ordered and the device address never changes, a CUDA graph
// captured earlier reads the new table on its next replay without recapture,
// and work queued on `stream` before update() still sees the old one.
// In-place rather than double-buffered: a double buffer needs a pointer swap,
// which a captured graph cannot see (its kernel arguments are frozen). Work on
// other streams must be ordered against `stream` by the caller.
//
// Not thread-safe; not capturable (construct and update outside capture).
class DevicePreparedTable {
 public:
  // eplb_table is a host view, validated like PreparedTable's. Allocates on
  // the current device. num_physical_experts = -1 infers it from this table;
  // later updates keep the resolved value.
  DevicePreparedTable(const TableView& eplb_table, const UpdateExpertParams& params,
                      cudaStream_t stream);
  ~DevicePreparedTable();
  DevicePreparedTable(const DevicePreparedTable&) = delete;
  DevicePreparedTable& operator=(const DevicePreparedTable&) = delete;

  // Validates and installs a new host table of the same shape (E, F), with
  // device() current (the copy is enqueued on `stream`). Blocks
  // only until the previous update's copy has left the staging buffer. Throws
  // (and keeps the old routes) if the table is invalid, has another shape, or
  // `stream` is capturing a graph.
  void update(const TableView& eplb_table, cudaStream_t stream);

  PreparedView view() const;  // device pointer inside; stable for the object's life
  const PreparedTable& host() const { return host_; }  // params, report, host routes
  int device() const { return device_; }               // where the routes live

 private:
  void copy_to_device(cudaStream_t stream);
  void release() noexcept;

  PreparedTable host_;
  int device_ = 0;
  std::int32_t* device_routes_ = nullptr;
  std::int32_t* staging_routes_ = nullptr;  // pinned host
  cudaEvent_t staging_free_ = nullptr;      // staging reusable once this fires
};

}  // namespace moe_eplb::cuda

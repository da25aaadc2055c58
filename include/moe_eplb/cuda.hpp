// CUDA launchers for the update-expert operator. Only available when the
// library is built with CUDA (MOE_EPLB_WITH_CUDA). Every pointer inside the
// views and outputs is a device pointer; the structs themselves live on the host.
//
// Contract shared by all launchers:
// - Shapes, dtypes and limits are checked on the host (the same front-end
//   checks as the CPU kernel) and throw moe_eplb::Error before anything is
//   launched. No tensor element is read on the host.
// - Element values are never trusted: an expert id outside [0, E), a replica
//   count outside [1, F-1] or a selected id outside [0, num_physical_experts)
//   (or the profile's limit when that is -1) writes -1 for that element, keeps
//   it out of load_counts, and adds 1 to *error_count (a device int32 the
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
// the process, so CUDA graphs may capture it. Adapters pass it as error_count
// when their caller gives none. Reset it with a 4-byte cudaMemsetAsync.
// Throws moe_eplb::Error (kCuda) if the runtime cannot resolve it.
std::int32_t* library_error_count();

// Programmatic dependent launch (compute capability 9.0 and newer; ignored
// below): kernels are launched so that the GPU may start each one while the
// previous kernel on the stream is still finishing. Every kernel waits for
// that kernel's completion before it touches global memory, so results and
// ordering are those of a plain launch; what overlaps is the launch latency.
// Captured into CUDA graphs as programmatic edges. Process-wide; off unless
// the environment variable MOE_EPLB_PDL=1 is set or this setter turns it on.
bool programmatic_dependent_launch() noexcept;
void set_programmatic_dependent_launch(bool enabled) noexcept;

// Stateless: validates like update_expert() (operation name "update_expert()"),
// then maps in one launch. load_counts needs params.num_physical_experts.
void launch_update_expert(const UpdateExpertInputs& inputs, const UpdateExpertParams& params,
                          const UpdateExpertOutputs& outputs, std::int32_t* error_count,
                          cudaStream_t stream);

// Prepared: one gather through device routes (layout in prepared.hpp; rows may
// be wider than needed, see DevicePreparedTable). Validates like
// update_expert_prepared() (operation name "update_expert_prepared()").
void launch_update_expert_prepared(const PreparedView& prepared, const ExpertIdsView& expert_ids,
                                   const PruningInputs* pruning, const UpdateExpertOutputs& outputs,
                                   std::int32_t* error_count, cudaStream_t stream);

// Prepared routes kept on one device, swappable under CUDA graphs.
//
// The routes live in one device buffer allocated at construction and never
// reallocated (token mode rows are F wide, so any table of the same shape
// fits). update() validates the new table on the host, builds its routes into
// a pinned staging buffer and copies them into the same device buffer with
// cudaMemcpyAsync on the caller's stream. Because the copy is stream-ordered
// and the device address never changes, a CUDA graph captured earlier reads the
// new table on its next replay without recapture, and work queued on `stream`
// before update() still sees the old one. In-place rather than double-buffered:
// a double buffer needs a pointer swap, which a captured graph cannot see
// (its kernel arguments are frozen), while the in-place copy needs nothing.
// Work on other streams must be ordered against `stream` by the caller.
//
// Not thread-safe; not capturable (construct and update outside capture).
class DevicePreparedTable {
 public:
  // eplb_table is a host view, validated with validate_table() under
  // params.profile (throws moe_eplb::Error kInvalidTable listing every
  // problem). Allocates on the current device. num_physical_experts = -1
  // infers it from this table; later updates keep the resolved value.
  DevicePreparedTable(const TableView& eplb_table, const UpdateExpertParams& params,
                      cudaStream_t stream);
  ~DevicePreparedTable();
  DevicePreparedTable(const DevicePreparedTable&) = delete;
  DevicePreparedTable& operator=(const DevicePreparedTable&) = delete;

  // Validates and installs a new host table of the same shape (E, F). Blocks
  // only until the previous update's copy has left the staging buffer. Throws
  // (and keeps the old routes) if the table is invalid, has another shape, or
  // `stream` is capturing a graph.
  void update(const TableView& eplb_table, cudaStream_t stream);

  PreparedView view() const;  // device pointer inside; stable for the object's life
  const TableReport& report() const { return report_; }         // of the latest installed table
  const UpdateExpertParams& params() const { return params_; }  // num_physical_experts resolved

 private:
  void stage_and_copy(const TableView& eplb_table, cudaStream_t stream);
  void release() noexcept;

  UpdateExpertParams params_;
  TableReport report_;
  std::int64_t num_experts_ = 0;
  std::int64_t num_columns_ = 0;
  std::int64_t row_width_ = 1;
  std::int32_t* device_routes_ = nullptr;
  std::int32_t* staging_routes_ = nullptr;  // pinned host
  cudaEvent_t staging_free_ = nullptr;      // staging reusable once this fires
};

}  // namespace moe_eplb::cuda

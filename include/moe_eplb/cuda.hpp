// CUDA launchers for the update-expert operator. Only available when the
// library is built with CUDA (MOE_EPLB_WITH_CUDA). Every pointer inside the
// views and outputs is a device pointer; the structs themselves live on the host.
//
// Contract shared by all launchers:
// - Shapes, dtypes and limits are checked on the host (check_update_expert) and
//   throw moe_eplb::Error before anything is launched.
// - Element values are never trusted: an expert id outside [0, E), a replica
//   count outside [1, F-1] or a selected id outside [0, num_physical_experts)
//   writes -1 for that element, keeps it out of load_counts, and adds 1 to
//   *error_count (a device int32 the caller owns; may be null to not count).
//   No input can cause an out-of-bounds read or write.
// - One kernel launch on `stream`, no host synchronisation, no allocation:
//   safe to capture in a CUDA graph.
// - Deterministic outputs; load_counts uses atomics (order-independent sums).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "moe_eplb/prepared.hpp"
#include "moe_eplb/update_expert.hpp"

namespace moe_eplb::cuda {

// Number of CUDA devices the runtime sees; 0 when there is no GPU or driver
// (never throws).
int device_count() noexcept;

void launch_update_expert(const UpdateExpertInputs& inputs, const UpdateExpertParams& params,
                          const UpdateExpertOutputs& outputs, std::int32_t* error_count,
                          cudaStream_t stream);

void launch_update_expert_prepared(const PreparedView& prepared, const ExpertIdsView& expert_ids,
                                   const PruningInputs* pruning, const UpdateExpertOutputs& outputs,
                                   std::int32_t* error_count, cudaStream_t stream);

// Prepared routes kept on one device, swappable under CUDA graphs.
//
// The routes live in one device buffer allocated at construction and never
// reallocated. update() validates the new table on the host, builds its routes
// into a pinned staging buffer and copies them into the same device buffer
// with cudaMemcpyAsync on the caller's stream. Because the copy is
// stream-ordered and the device address never changes, a CUDA graph captured
// earlier reads the new table on its next replay without recapture, and work
// queued before update() still sees the old one. (In-place rather than
// double-buffered: a double buffer would need a pointer swap the captured
// graph cannot see.) The new table must have the same shape (E, F).
class DevicePreparedTable {
 public:
  // eplb_table is a host view. Uses the current device.
  DevicePreparedTable(const TableView& eplb_table, const UpdateExpertParams& params,
                      cudaStream_t stream);
  ~DevicePreparedTable();
  DevicePreparedTable(const DevicePreparedTable&) = delete;
  DevicePreparedTable& operator=(const DevicePreparedTable&) = delete;

  void update(const TableView& eplb_table, cudaStream_t stream);
  PreparedView view() const;  // device pointer inside
  const TableReport& report() const { return report_; }

 private:
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

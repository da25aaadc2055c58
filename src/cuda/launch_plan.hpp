// How one call of the CUDA operator is launched: which kernel, which route
// source, grid and shared memory. A pure function of the call's shape and the
// device, so a host test (launch_plan_test.cpp) can check every decision
// without a GPU (internal header).
#pragma once

#include <cstddef>
#include <cstdint>

namespace moe_eplb::cuda::internal {

constexpr int kThreads = 256;                        // flat and single-pass kernels
constexpr int kPrunedThreads = 128;                  // pruning kernel
constexpr std::int64_t kMaxPerChoiceTopK = 32;       // pruning: a thread per choice up to this K
constexpr int kBlocksPerSm = 8;                      // 2048 resident threads per SM at kThreads
constexpr std::int64_t kMaxSharedMapExperts = 4096;  // 16 KiB rank map
constexpr std::int64_t kMaxSharedHistogram = 8192;   // 32 KiB; both fit the 48 KiB default

// Where a kernel finds the replica: straight from the (untrusted) table or
// from prepared routes, or (rank mode) from a rank map in shared memory that
// each block first builds from the table or copies from the prepared routes.
enum class Source : std::uint8_t { kTable, kPrepared, kTableMap, kPreparedMap };

enum class Kernel : std::uint8_t {
  kFlat,        // UpdateExpertFlatKernel: any plain batch, grid-stride loop
  kSinglePass,  // UpdateExpertSinglePassKernel: rank mode, shared map, one wave
  kPruned,      // UpdateExpertPrunedKernel: batches with pruning inputs
};

// What planning needs to know about one call (all checked by the front end).
struct LaunchRequest {
  std::int64_t num_tokens = 0;  // BS >= 1
  std::int64_t top_k = 0;       // K >= 1
  std::int64_t id_bytes = 4;    // 4 (int32) or 8 (int64)
  bool contiguous = true;       // ids rows are contiguous (token_stride == K, k_stride == 1)
  bool aligned16 = true;        // ids and output start on 16-byte boundaries
  bool prepared = false;        // routes come from a PreparedView, not the table
  bool by_token = false;        // a per-token balance_mode (1 or 2)
  bool pruning = false;
  bool record = false;                    // load_counts given
  std::int64_t num_experts = 0;           // E
  std::int64_t num_physical_experts = 0;  // size of load_counts when recording
  int multiprocessors = 1;
  bool programmatic = false;  // launch with programmatic dependent launch
};

struct LaunchPlan {
  Kernel kernel = Kernel::kFlat;
  Source source = Source::kTable;
  bool vector = false;            // flat: 16-byte vectors of ids
  bool per_choice = false;        // pruned: a thread per choice, not per token
  bool record = false;            // load recording
  bool shared_histogram = false;  // record per block in shared memory first
  std::int64_t blocks = 1;
  int threads = kThreads;
  std::size_t shared_bytes = 0;  // dynamic: rank map, then histogram
  bool programmatic = false;
};

LaunchPlan plan_launch(const LaunchRequest& request);

}  // namespace moe_eplb::cuda::internal

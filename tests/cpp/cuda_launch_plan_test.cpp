// The CUDA launch plan as a pure function: which kernel, route source, grid
// and shared memory each call shape gets. Runs without a GPU.
#include <gtest/gtest.h>

#include <cstdint>

#include "cuda/launch_plan.hpp"

namespace moe_eplb::cuda::internal {
namespace {

constexpr int kH100Multiprocessors = 132;

// A decode-size rank-mode call: 512 tokens x top-16 int32, 256 experts.
LaunchRequest decode_request() {
  LaunchRequest request;
  request.num_tokens = 512;
  request.top_k = 16;
  request.id_bytes = 4;
  request.num_experts = 256;
  request.num_physical_experts = 288;
  request.multiprocessors = kH100Multiprocessors;
  return request;
}

// The decode case takes the single-pass kernel: a thread per 16-byte vector
// (2048 vectors, 8 blocks) and the 1 KiB rank map in shared memory.
TEST(CudaLaunchPlan, DecodeBatchTakesSinglePassWithSharedMap) {
  LaunchPlan plan = plan_launch(decode_request());
  EXPECT_EQ(plan.kernel, Kernel::kSinglePass);
  EXPECT_EQ(plan.source, Source::kTableMap);
  EXPECT_TRUE(plan.vector);
  EXPECT_EQ(plan.blocks, 8);
  EXPECT_EQ(plan.threads, kThreads);
  EXPECT_EQ(plan.shared_bytes, 256u * 4u);

  LaunchRequest prepared = decode_request();
  prepared.prepared = true;
  prepared.id_bytes = 8;  // int64: 2 ids per vector, 4096 vectors
  plan = plan_launch(prepared);
  EXPECT_EQ(plan.kernel, Kernel::kSinglePass);
  EXPECT_EQ(plan.source, Source::kPreparedMap);
  EXPECT_EQ(plan.blocks, 16);
}

// A leftover id (BS*K not a multiple of the vector width) gets one more thread.
TEST(CudaLaunchPlan, SinglePassCoversLeftoverIds) {
  LaunchRequest request = decode_request();
  request.num_tokens = 256;
  request.top_k = 9;  // 2304 ids = 576 vectors of 4; 256 * 9 % 4 == 0
  EXPECT_EQ(plan_launch(request).blocks, 3);
  request.top_k = 7;  // 1792 ids = 448 vectors, no leftover
  EXPECT_EQ(plan_launch(request).blocks, 2);
  request.num_tokens = 1;
  request.top_k = 1025;  // 256 vectors + 1 leftover id -> 257 threads
  EXPECT_EQ(plan_launch(request).blocks, 2);
}

// Load recording needs the flat kernel; its histogram goes to shared memory
// after the rank map while the slots fit.
TEST(CudaLaunchPlan, RecordingUsesFlatKernelAndSharedHistogram) {
  LaunchRequest request = decode_request();
  request.record = true;
  LaunchPlan plan = plan_launch(request);
  EXPECT_EQ(plan.kernel, Kernel::kFlat);
  EXPECT_EQ(plan.source, Source::kTableMap);
  EXPECT_TRUE(plan.record);
  EXPECT_TRUE(plan.shared_histogram);
  EXPECT_EQ(plan.shared_bytes, 256u * 4u + 288u * 4u);

  request.num_physical_experts = kMaxSharedHistogram + 1;  // global atomics instead
  plan = plan_launch(request);
  EXPECT_FALSE(plan.shared_histogram);
  EXPECT_EQ(plan.shared_bytes, 256u * 4u);
}

// Token mode never uses the rank map.
TEST(CudaLaunchPlan, TokenModeReadsRoutesDirectly) {
  LaunchRequest request = decode_request();
  request.by_token = true;
  const LaunchPlan plan = plan_launch(request);
  EXPECT_EQ(plan.kernel, Kernel::kFlat);
  EXPECT_EQ(plan.source, Source::kTable);
  EXPECT_TRUE(plan.vector);
  EXPECT_EQ(plan.shared_bytes, 0u);
}

// Strided or misaligned ids take the element loop (no vectors, no single pass).
TEST(CudaLaunchPlan, NonContiguousOrMisalignedIdsUseElementLoop) {
  LaunchRequest strided = decode_request();
  strided.contiguous = false;
  LaunchRequest misaligned = decode_request();
  misaligned.aligned16 = false;
  for (const LaunchRequest& request : {strided, misaligned}) {
    const LaunchPlan plan = plan_launch(request);
    EXPECT_EQ(plan.kernel, Kernel::kFlat);
    EXPECT_FALSE(plan.vector);
    EXPECT_EQ(plan.blocks, 8192 / kThreads);  // an element per thread
  }
}

// A batch larger than one wave: grid-stride flat kernel at 8 blocks per SM.
TEST(CudaLaunchPlan, LargeBatchIsCappedAtBlocksPerSm) {
  LaunchRequest request = decode_request();
  request.num_tokens = 1048576;
  request.top_k = 8;
  const LaunchPlan plan = plan_launch(request);
  EXPECT_EQ(plan.kernel, Kernel::kFlat);
  EXPECT_EQ(plan.blocks, kH100Multiprocessors * kBlocksPerSm);
  EXPECT_EQ(plan.source, Source::kTableMap);  // one map entry per mapped element at most
}

// The rank map is skipped when it costs more than the block maps: a big table
// for a small batch, or more experts than shared memory holds.
TEST(CudaLaunchPlan, RankMapOnlyWhenItPaysOff) {
  LaunchRequest request = decode_request();
  request.num_tokens = 8;
  request.top_k = 8;
  request.num_experts = kThreads + 1;  // 257 entries for 64 ids, one block
  EXPECT_EQ(plan_launch(request).source, Source::kTable);
  request.num_experts = kThreads;  // one entry per thread: building it is one latency
  EXPECT_EQ(plan_launch(request).source, Source::kTableMap);

  request = decode_request();
  request.num_tokens = 1048576;
  request.num_experts = kMaxSharedMapExperts + 1;
  EXPECT_EQ(plan_launch(request).source, Source::kTable);
}

// Pruning: a thread per choice up to kMaxPerChoiceTopK, else a thread per token.
TEST(CudaLaunchPlan, PruningThreadsPerChoiceOrPerToken) {
  LaunchRequest request = decode_request();
  request.pruning = true;
  LaunchPlan plan = plan_launch(request);
  EXPECT_EQ(plan.kernel, Kernel::kPruned);
  EXPECT_EQ(plan.threads, kPrunedThreads);
  EXPECT_TRUE(plan.per_choice);
  EXPECT_EQ(plan.blocks, 8192 / kPrunedThreads);
  EXPECT_EQ(plan.source, Source::kTable);  // never a shared map

  request.top_k = kMaxPerChoiceTopK + 1;
  plan = plan_launch(request);
  EXPECT_FALSE(plan.per_choice);
  EXPECT_EQ(plan.blocks, 512 / kPrunedThreads);
}

// Programmatic dependent launch is whatever the request says (the launcher
// has already combined the option with the device's support).
TEST(CudaLaunchPlan, ProgrammaticLaunchFollowsRequest) {
  LaunchRequest request = decode_request();
  EXPECT_FALSE(plan_launch(request).programmatic);
  request.programmatic = true;
  EXPECT_TRUE(plan_launch(request).programmatic);
}

}  // namespace
}  // namespace moe_eplb::cuda::internal

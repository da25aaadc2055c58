#include "launch_plan.hpp"

#include <algorithm>

namespace moe_eplb::cuda::internal {
namespace {

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

}  // namespace

LaunchPlan plan_launch(const LaunchRequest& request) {
  LaunchPlan plan;
  plan.source = request.prepared ? Source::kPrepared : Source::kTable;
  plan.record = request.record;
  plan.programmatic = request.programmatic;
  const std::int64_t num_elements = request.num_tokens * request.top_k;
  // Per-block uint32 bins cannot overflow below 2^32 elements.
  plan.shared_histogram = request.record && request.num_physical_experts <= kMaxSharedHistogram &&
                          num_elements <= static_cast<std::int64_t>(UINT32_MAX);
  const std::int64_t max_blocks = std::int64_t{request.multiprocessors} * kBlocksPerSm;
  std::int64_t map_bytes = 0;

  if (request.pruning) {
    plan.kernel = Kernel::kPruned;
    plan.threads = kPrunedThreads;
    plan.per_choice = request.top_k <= kMaxPerChoiceTopK;
    plan.blocks =
        std::min(ceil_div(plan.per_choice ? num_elements : request.num_tokens, kPrunedThreads),
                 2 * max_blocks);
  } else {
    plan.kernel = Kernel::kFlat;
    plan.vector = request.contiguous && request.aligned16;
    const std::int64_t width = 16 / request.id_bytes;
    const std::int64_t work =
        plan.vector ? std::max<std::int64_t>(num_elements / width, 1) : num_elements;
    plan.blocks = std::min(ceil_div(work, kThreads), max_blocks);
    // Rank mode: a per-block map in shared memory when it costs at most one
    // entry per element the block maps, or at most one entry per thread (then
    // building it takes one lookup's latency, which overlaps the ids load).
    if (!request.by_token && request.num_experts <= kMaxSharedMapExperts &&
        (request.num_experts <= kThreads || request.num_experts * plan.blocks <= num_elements)) {
      plan.source = request.prepared ? Source::kPreparedMap : Source::kTableMap;
      map_bytes = request.num_experts * static_cast<std::int64_t>(sizeof(std::int32_t));
      // A thread for every vector, and one for the leftover ids, in one wave.
      const std::int64_t single_pass_blocks =
          ceil_div(num_elements / width + (num_elements % width != 0 ? 1 : 0), kThreads);
      if (plan.vector && !plan.record && single_pass_blocks <= max_blocks) {
        plan.kernel = Kernel::kSinglePass;
        plan.blocks = single_pass_blocks;
      }
    }
  }
  plan.shared_bytes = static_cast<std::size_t>(
      map_bytes + (plan.shared_histogram
                       ? request.num_physical_experts * static_cast<std::int64_t>(sizeof(unsigned))
                       : 0));
  return plan;
}

}  // namespace moe_eplb::cuda::internal

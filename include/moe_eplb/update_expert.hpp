// The update-expert operator: logical expert ids -> physical replica ids.
//
//   e = expert_ids[b, k], c = eplb_table[e, 0]
//   j = 1                                              if c == 1
//   j = 1 + local_rank_id / ceil(world_size / c)       balance_mode 0 (by rank)
//   j = 1 + b % c                                      balance_mode 1 (by token)
//   balanced_expert_ids[b, k] = eplb_table[e, j]
//
// and, optionally, expert pruning:
//
//   balanced_active_mask[b, k] = active_mask[b] &&
//       float32(expert_scales[b, k]) >= pruning_threshold[k] * sum_k float32(expert_scales[b, k])
//
// ../SPEC.md (shared/SPEC.md) is the authoritative statement; every entry
// point here implements exactly that and validates through check_update_expert().
#pragma once

#include <cstdint>

#include "moe_eplb/limits.hpp"
#include "moe_eplb/types.hpp"

namespace moe_eplb {

// Scalars of one call.
struct UpdateExpertParams {
  std::int64_t local_rank_id = 0;  // 0 <= local_rank_id < world_size (checked in rank mode only)
  std::int64_t world_size = 0;     // EP group size (checked in rank mode only)
  BalanceMode balance_mode = BalanceMode::kByRank;
  // Total physical slots (world_size * place_per_rank), or -1 if unknown. When
  // known, every selected instance id must lie in [0, num_physical_experts);
  // when unknown, in [0, limits.max_physical_experts). Required for load recording.
  std::int64_t num_physical_experts = -1;
  LimitProfile profile = LimitProfile::kNative;
};

// Everything a call reads. `pruning` may be null.
struct UpdateExpertInputs {
  ExpertIdsView expert_ids;
  TableView eplb_table;
  const PruningInputs* pruning = nullptr;
};

// Everything a call writes. Outputs are contiguous, row-major (BS, K), and may
// not share memory with expert_ids (in-place mapping is refused with an error).
struct UpdateExpertOutputs {
  // (BS, K), same dtype as expert_ids. Required (may be null only when BS*K == 0).
  void* balanced_expert_ids = nullptr;
  // (BS, K) bytes, 1 = keep, 0 = pruned. Required iff inputs.pruning is set.
  std::uint8_t* balanced_active_mask = nullptr;
  // Optional (num_physical_experts,) counters: each kept choice (not pruned,
  // token active) adds 1 at its physical id. Added to, never cleared.
  std::int64_t* load_counts = nullptr;
};

// Checks shapes, dtypes, scalar ranges, profile limits and which optional
// inputs/outputs go together, without reading any tensor element. Shared by
// the CPU kernel, the CUDA launchers and the PyTorch Meta kernel. Throws
// moe_eplb::Error (kInvalidArgument) naming the argument, the allowed range
// and the value received.
void check_update_expert(const UpdateExpertInputs& inputs, const UpdateExpertParams& params,
                         bool has_load_counts = false);

// CPU implementation. Validates with check_update_expert(), then reads only
// the table rows that expert_ids references. A bad element (expert id outside
// [0, E), a replica count outside [1, F-1] or a selected instance id outside
// the physical range) throws moe_eplb::Error (kIndexOutOfRange) naming the
// position (b, k) and the value; outputs may then be partially written and
// load_counts is left untouched. Allocates at most O(E) scratch per call.
// Thread-safe: concurrent calls with distinct outputs are fine. Deterministic.
void update_expert(const UpdateExpertInputs& inputs, const UpdateExpertParams& params,
                   const UpdateExpertOutputs& outputs);

// Convenience overload without pruning: writes balanced_expert_ids only.
void update_expert(const ExpertIdsView& expert_ids, const TableView& eplb_table,
                   const UpdateExpertParams& params, void* balanced_expert_ids);

}  // namespace moe_eplb

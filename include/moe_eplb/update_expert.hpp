// The update-expert operator: logical expert ids -> the slots of their replicas.
//
//   e = expert_ids[b, k], c = eplb_table[e, 0]
//   j = 1                                              if c == 1
//   j = 1 + local_rank_id / ceil(world_size / c)       balance_mode 0 (by rank)
//   j = 1 + b % c                                      balance_mode 1 (by token)
//   j = 1 + ((b * 2654435769) mod 2^32) % c            balance_mode 2 (vLLM's token hash)
//   balanced_expert_ids[b, k] = eplb_table[e, j]
//
// and, optionally, expert pruning:
//
//   balanced_active_mask[b, k] = active_mask[b] &&
//       float32(expert_scales[b, k]) >= pruning_threshold[k] * sum_k float32(expert_scales[b, k])
//
// docs/SPEC.md is the authoritative statement. Words: a *replica* is one copy
// of a logical expert; it lives in a *slot*, one of the world_size *
// slots_per_rank physical expert positions (numbered from 0; slot p is on rank
// p / slots_per_rank), and the output names that slot. Every entry point
// implements exactly the formula and validates through check_update_expert().
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
  // Total physical slots (world_size * slots_per_rank), or -1 if unknown. When
  // known, every selected slot must lie in [0, num_physical_experts); when
  // unknown, in [0, limits.max_physical_experts). Required for load recording.
  std::int64_t num_physical_experts = -1;
  LimitProfile profile = LimitProfile::kNative;
};

// Everything a call reads. `pruning` may be null.
struct UpdateExpertInputs {
  ExpertIdsView expert_ids;
  TableView eplb_table;
  const PruningInputs* pruning = nullptr;
};

// A caller-owned output buffer of `size` contiguous elements.
template <typename T>
struct OutputSpan {
  T* data = nullptr;
  std::int64_t size = 0;
};

// Everything a call writes. The checks compare every size with what the call
// writes, and refuse outputs that share memory with expert_ids (in-place
// mapping is not supported).
struct UpdateExpertOutputs {
  // (BS, K) row-major, expert_ids' dtype; size BS * K. Required (data may be
  // null only when BS * K == 0).
  OutputSpan<void> balanced_expert_ids;
  // (BS, K) bytes, 1 = keep, 0 = pruned; size BS * K. Required iff pruning.
  OutputSpan<std::uint8_t> balanced_active_mask;
  // Optional per-slot counters, size num_physical_experts (which the params
  // must then give): each kept choice (not pruned, token active) adds 1 at
  // its slot. Added to, never cleared.
  OutputSpan<std::int64_t> load_counts;
};

// Checks shapes, dtypes, scalar ranges, profile limits, which optional inputs
// and outputs go together and the output sizes, without reading any element:
// the front end every backend runs (the CPU kernel, the CUDA launchers and
// PyTorch's Meta kernels). An output is present when its data is non-null.
// `has_memory` = false is for views without memory (meta tensors): data
// pointers then only mark presence and the aliasing checks are skipped.
// Throws moe_eplb::Error (kInvalidArgument) starting with "update_expert():"
// and naming the argument, the allowed range and the value received.
void check_update_expert(const UpdateExpertInputs& inputs, const UpdateExpertParams& params,
                         const UpdateExpertOutputs& outputs, bool has_memory = true);

// CPU implementation. Validates with check_update_expert(), then reads the
// table rows that expert_ids references, or, for a batch of at least E
// elements, every row once to build a per-call map (a bad row is an error
// only if some id references it). A bad element (expert id outside [0, E), a
// replica count outside [1, F-1] or a selected slot outside the physical
// range) throws moe_eplb::Error (kIndexOutOfRange) naming the position (b, k)
// and the value; outputs may then be partially written and load_counts is
// left untouched. Uses O(E) scratch per call (at most a few KiB of stack for
// tables of up to 1024 experts). Thread-safe: concurrent calls with distinct
// outputs are fine. Deterministic.
void update_expert(const UpdateExpertInputs& inputs, const UpdateExpertParams& params,
                   const UpdateExpertOutputs& outputs);

// Convenience overload without pruning: writes the BS * K balanced_expert_ids only.
void update_expert(const ExpertIdsView& expert_ids, const TableView& eplb_table,
                   const UpdateExpertParams& params, void* balanced_expert_ids);

}  // namespace moe_eplb

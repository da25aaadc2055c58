// CPU kernels of the update-expert operator.
//
// Design: every element goes through a Router from detail/route.hpp (the one
// copy of the formula), or through a fast path of gather_simd.hpp that equals
// it. The hot loops are branch-free: a bad element does not stop the loop, it
// only sets a flag; when the flag is set we scan again in order with the
// router to find the first bad element and throw a message naming it. That
// keeps the common (valid) case a tight loop and the error deterministic.
//
// Rank mode depends only on (e, local_rank_id), so when the batch has at least
// as many elements as the table has rows we first resolve every row once into
// a per-call rank map (with negative RouteStatus codes for bad rows) and the
// batch becomes one lookup per element, the same loop the prepared path runs.
// Token mode maps contiguous rows of ids with cpu::TokenMapper, straight from
// the table's rows (stateless op) or the prepared routes (same row form).
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/checks.hpp"
#include "gather_simd.hpp"
#include "moe_eplb/detail/route.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/update_expert.hpp"

#if defined(__GNUC__)
#define MOE_EPLB_NOINLINE __attribute__((noinline))
#else
#define MOE_EPLB_NOINLINE
#endif

namespace moe_eplb {
namespace {

using detail::kRouteBadCount;
using detail::kRouteBadExpertId;

std::int64_t read_id(const ExpertIdsView& ids, std::int64_t token, std::int64_t k) {
  const std::int64_t offset = token * ids.token_stride + k * ids.k_stride;
  return ids.dtype == Dtype::kInt32 ? static_cast<const std::int32_t*>(ids.data)[offset]
                                    : static_cast<const std::int64_t*>(ids.data)[offset];
}

// Element-wise routing through any router (token mode, or rank mode on
// batches smaller than the table). Returns false if any element is bad.
template <typename IdT, typename Router>
bool route_each(const ExpertIdsView& ids, const Router& router, IdT* out) {
  const IdT* in = static_cast<const IdT*>(ids.data);
  bool ok = true;
  for (std::int64_t token = 0; token < ids.num_tokens; ++token) {
    const IdT* in_row = in + token * ids.token_stride;
    IdT* out_row = out + token * ids.top_k;
    for (std::int64_t k = 0; k < ids.top_k; ++k) {
      const std::int64_t slot = detail::route_one(router, in_row[k * ids.k_stride], token);
      ok &= slot >= 0;
      out_row[k] = static_cast<IdT>(slot);
    }
  }
  return ok;
}

// The ids (k_stride == 1) as rows for the fast paths: one row when the
// batch is contiguous, else one row per token.
template <typename IdT>
cpu::IdRows<IdT> id_rows(const ExpertIdsView& ids, IdT* out) {
  const IdT* in = static_cast<const IdT*>(ids.data);
  if (ids.token_stride == ids.top_k) {
    const std::int64_t num_elements = ids.num_tokens * ids.top_k;
    return cpu::IdRows<IdT>{in, 1, num_elements, num_elements, out};
  }
  return cpu::IdRows<IdT>{in, ids.num_tokens, ids.top_k, ids.token_stride, out};
}

// One lookup per element through a route map (rank mode): routes[e] is the
// physical id, or a negative RouteStatus. Returns false if any element is bad.
template <typename IdT>
bool gather_route_map(const ExpertIdsView& ids, const std::int32_t* routes,
                      std::int64_t num_experts, std::int64_t num_physical_experts, IdT* out) {
  if (ids.k_stride == 1) {  // contiguous rows: the vectorised loops
    const cpu::RankMapper mapper(routes, num_experts, num_physical_experts,
                                 ids.num_tokens * ids.top_k);
    return mapper.map(id_rows(ids, out));
  }
  const detail::PreparedRouter router{routes, num_experts, 1, num_physical_experts,
                                      BalanceMode::kByRank};
  return route_each(ids, router, out);
}

// The per-token modes. Token mode: the vector path where it applies
// (contiguous rows, a table it can hold, a batch that pays for building it),
// else the router per element; hash mode: the router per element. Returns
// false if any element is bad. Out of line, with a local router whose mode
// the compiler sees, so each per-element loop is as tight as a loop of its own.
template <typename IdT, typename Router>
MOE_EPLB_NOINLINE bool map_tokens(const ExpertIdsView& ids, const cpu::TokenRows& rows,
                                  const Router& router, IdT* out) {
  Router fixed = router;
  if (router.balance_mode == BalanceMode::kByHash) {
    fixed.balance_mode = BalanceMode::kByHash;
    return route_each(ids, fixed, out);
  }
  const std::int64_t num_elements = ids.num_tokens * ids.top_k;
  if (ids.k_stride == 1 && cpu::TokenMapper::may_vectorize(rows.num_experts, num_elements)) {
    const cpu::TokenMapper mapper(rows, num_elements);
    if (mapper.isa() != cpu::Isa::kScalar) return mapper.map(id_rows(ids, out), ids.top_k, 0);
  }
  fixed.balance_mode = BalanceMode::kByToken;
  return route_each(ids, fixed, out);
}

// Finds the first element (in row-major order) the router rejects and throws
// a message built by `describe(token, k, expert, status)`.
template <typename Router, typename Describe>
[[noreturn]] void throw_first_bad(const char* operation, const ExpertIdsView& ids,
                                  const Router& router, const Describe& describe) {
  for (std::int64_t token = 0; token < ids.num_tokens; ++token) {
    for (std::int64_t k = 0; k < ids.top_k; ++k) {
      const std::int64_t expert = read_id(ids, token, k);
      const std::int64_t status = detail::route_one(router, expert, token);
      if (status < 0) {
        MOE_EPLB_FAIL(ErrorCode::kIndexOutOfRange, describe(token, k, expert, status));
      }
    }
  }
  // Unreachable when the fast loop reported a bad element; keep a clear message anyway.
  MOE_EPLB_FAIL(ErrorCode::kIndexOutOfRange, operation, ": inconsistent error scan");
}

// Calls f with balanced_expert_ids typed as the ids' dtype.
template <typename F>
auto with_typed_output(Dtype dtype, void* balanced_expert_ids, F&& f) {
  return dtype == Dtype::kInt32 ? f(static_cast<std::int32_t*>(balanced_expert_ids))
                                : f(static_cast<std::int64_t*>(balanced_expert_ids));
}

std::string position(std::int64_t token, std::int64_t k, std::int64_t expert) {
  return detail::concat("expert_ids[", token, ", ", k, "] = ", expert);
}

std::string range_end(std::int64_t end) { return detail::concat("0..", end - 1); }

// Under a profile that keeps Ascend's precondition, refuses an active_mask
// with a true entry after a false one (on the host, where it can be read).
void check_active_mask_order(const char* operation, const PruningInputs* pruning,
                             std::int64_t num_tokens, LimitProfile profile) {
  const Limits& limits = limits_of(profile);
  if (pruning == nullptr || !pruning->has_active_mask || !limits.ordered_active_mask) return;
  std::int64_t first_false = -1;
  for (std::int64_t token = 0; token < num_tokens; ++token) {
    const bool active = pruning->active_mask[token] != 0;
    if (!active && first_false < 0) first_false = token;
    MOE_EPLB_CHECK(!active || first_false < 0, operation, ": active_mask[", token,
                   "] is true after active_mask[", first_false, "] is false; the ", limits.name,
                   " profile requires every true entry before every false one (Ascend's "
                   "precondition; the native profile lets each token's entry decide alone)");
  }
}

void compute_pruning_mask(const PruningInputs& pruning, std::int64_t num_tokens, std::int64_t top_k,
                          std::uint8_t* mask) {
  const ScalesView& scales = pruning.expert_scales;
  for (std::int64_t token = 0; token < num_tokens; ++token) {
    std::uint8_t* mask_row = mask + token * top_k;
    if (pruning.has_active_mask && pruning.active_mask[token] == 0) {
      std::fill(mask_row, mask_row + top_k, std::uint8_t{0});
      continue;
    }
    const float sum = detail::token_scale_sum(scales, token);
    for (std::int64_t k = 0; k < top_k; ++k) {
      mask_row[k] = detail::keep_choice(scales, pruning.pruning_threshold.data,
                                        pruning.pruning_threshold.stride, token, k, sum)
                        ? 1
                        : 0;
    }
  }
}

// Adds every kept choice to its physical slot. Runs only after all elements
// mapped successfully, so a failed call leaves the counters untouched.
template <typename IdT>
void record_load(const IdT* balanced, const std::uint8_t* mask, std::int64_t num_elements,
                 std::int64_t* load_counts) {
  for (std::int64_t i = 0; i < num_elements; ++i) {
    if (mask == nullptr || mask[i] != 0) ++load_counts[balanced[i]];
  }
}

void finish_outputs(const ExpertIdsView& ids, const PruningInputs* pruning,
                    const UpdateExpertOutputs& outputs) {
  if (pruning != nullptr) {
    compute_pruning_mask(*pruning, ids.num_tokens, ids.top_k, outputs.balanced_active_mask.data);
  }
  if (outputs.load_counts.data == nullptr) return;
  const std::int64_t num_elements = ids.num_tokens * ids.top_k;
  with_typed_output(ids.dtype, outputs.balanced_expert_ids.data, [&](const auto* balanced) {
    record_load(balanced, outputs.balanced_active_mask.data, num_elements,
                outputs.load_counts.data);
    return true;
  });
}

template <typename IdT>
bool map_with_table(const ExpertIdsView& ids, const TableView& table,
                    const UpdateExpertParams& params, const detail::TableRouter& router,
                    std::vector<std::int32_t>& scratch, IdT* out) {
  if (detail::uses_token_index(router.balance_mode)) {
    return map_tokens(
        ids,
        cpu::TokenRows{table.data, table.num_experts, table.num_columns, table.row_stride,
                       table.column_stride, router.num_physical_experts},
        router, out);
  }
  const bool small_table = router.num_experts <= ids.num_tokens * ids.top_k;
  if (!small_table) {
    detail::TableRouter by_rank = router;  // lets the compiler drop the token-mode branch
    by_rank.balance_mode = BalanceMode::kByRank;
    return route_each(ids, by_rank, out);
  }
  // Rank mode: resolve each row once (bad rows become RouteStatus codes), then gather.
  scratch.resize(static_cast<std::size_t>(router.num_experts));
  build_routes(table, params, scratch.data());
  return gather_route_map(ids, scratch.data(), router.num_experts, router.num_physical_experts,
                          out);
}

template <typename IdT>
bool map_with_prepared(const ExpertIdsView& ids, const detail::PreparedRouter& router, IdT* out) {
  if (detail::uses_token_index(router.balance_mode)) {
    return map_tokens(ids,
                      cpu::TokenRows{router.routes, router.num_experts, router.row_width,
                                     router.row_width, 1, router.num_physical_experts},
                      router, out);
  }
  return gather_route_map(ids, router.routes, router.num_experts, router.num_physical_experts, out);
}

// Maps with map(out) (out typed as the ids' dtype). If an element was bad,
// throws naming the first one: an expert id outside [0, E) with the common
// message (naming what has the E `rows`), anything else with
// describe(token, k, expert, status). Then writes the mask and load counts.
template <typename Router, typename Map, typename Describe>
void map_or_name_first_bad(const char* operation, const ExpertIdsView& ids, const Router& router,
                           const char* holder, const char* rows, const PruningInputs* pruning,
                           const UpdateExpertOutputs& outputs, Map&& map,
                           const Describe& describe) {
  if (!with_typed_output(ids.dtype, outputs.balanced_expert_ids.data, map)) {
    throw_first_bad(
        operation, ids, router,
        [&](std::int64_t token, std::int64_t k, std::int64_t expert, std::int64_t status) {
          if (status != kRouteBadExpertId) return describe(token, k, expert, status);
          return detail::concat(operation, ": ", position(token, k, expert),
                                " is out of range, expected ", range_end(router.num_experts), " (",
                                holder, " has ", router.num_experts, " ", rows, ")");
        });
  }
  finish_outputs(ids, pruning, outputs);
}

}  // namespace

void update_expert(const UpdateExpertInputs& inputs, const UpdateExpertParams& params,
                   const UpdateExpertOutputs& outputs) {
  const char* const kOperation = detail::mapping_operation(inputs);
  check_update_expert(inputs, params, outputs);
  check_active_mask_order(kOperation, inputs.pruning, inputs.expert_ids.num_tokens, params.profile);
  const ExpertIdsView& ids = inputs.expert_ids;
  if (ids.num_tokens == 0 || ids.top_k == 0) return;

  const TableView& table = inputs.eplb_table;
  const detail::TableRouter router = detail::table_router(table, params);
  std::vector<std::int32_t> scratch;
  map_or_name_first_bad(
      kOperation, ids, router, "eplb_table", "rows", inputs.pruning, outputs,
      [&](auto* out) { return map_with_table(ids, table, params, router, scratch, out); },
      [&](std::int64_t token, std::int64_t k, std::int64_t expert, std::int64_t status) {
        const std::int32_t count = table.at(expert, 0);
        if (status == kRouteBadCount) {
          return detail::concat(kOperation, ": ", position(token, k, expert),
                                " selects eplb_table row ", expert, " whose replica count ", count,
                                " is outside 1..", table.num_columns - 1, " (F - 1)");
        }
        const std::int64_t column =
            detail::replica_column(static_cast<std::uint32_t>(count), token, router.local_rank_id,
                                   router.world_size, router.balance_mode);
        return detail::concat(
            kOperation, ": ", position(token, k, expert), " selects eplb_table[", expert, ", ",
            column, "] = ", table.at(expert, column), ", outside the slot range ",
            range_end(router.num_physical_experts),
            params.num_physical_experts == -1
                ? detail::concat(" (", limits_of(params.profile).name,
                                 " profile limit; pass num_physical_experts for the exact range)")
                : detail::concat(" (num_physical_experts ", params.num_physical_experts, ")"));
      });
}

void update_expert(const ExpertIdsView& expert_ids, const TableView& eplb_table,
                   const UpdateExpertParams& params, void* balanced_expert_ids) {
  UpdateExpertOutputs outputs;
  outputs.balanced_expert_ids = {balanced_expert_ids, expert_ids.num_tokens * expert_ids.top_k};
  update_expert(UpdateExpertInputs{expert_ids, eplb_table, nullptr}, params, outputs);
}

void update_expert_prepared(const PreparedView& prepared, const ExpertIdsView& ids,
                            const PruningInputs* pruning, const UpdateExpertOutputs& outputs) {
  constexpr const char* kOperation = "update_expert_prepared()";
  check_update_expert_prepared(prepared, ids, pruning, outputs);
  check_active_mask_order(kOperation, pruning, ids.num_tokens, prepared.profile);
  if (ids.num_tokens == 0 || ids.top_k == 0) return;

  const detail::PreparedRouter router = detail::prepared_router(prepared);
  map_or_name_first_bad(
      kOperation, ids, router, "the prepared table", "experts", pruning, outputs,
      [&](auto* out) { return map_with_prepared(ids, router, out); },
      [&](std::int64_t token, std::int64_t k, std::int64_t expert, std::int64_t status) {
        return detail::concat(kOperation, ": ", position(token, k, expert),
                              " has corrupted prepared routes (status ", status,
                              "); rebuild them from a validated table");
      });
}

}  // namespace moe_eplb

// Expert load statistics and routing traces: what the planner plans on and
// what the analyzer scores against.
//
// A *load* counts routed choices (token, top-k slot) per logical expert. It
// is kept per source rank (the rank whose tokens chose the expert) because
// the operator's rank mode routes by source rank: with per-rank counts each
// replica's share is known exactly. Global counts are the special case of a
// single source row, for which an even split over the ranks is assumed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe_eplb/types.hpp"

namespace moe_eplb {

// The most logical experts load statistics may cover: far above any MoE
// model's (256 to 512 today), and a bound on what a statistics file or a
// recorder allocates.
inline constexpr std::int64_t kMaxLoadExperts = 65536;

// (num_layers, num_source_ranks, num_experts) float64 counts, row-major.
// num_source_ranks is either the EP world_size (per-rank statistics) or 1
// (global counts only). Values are finite and non-negative.
struct ExpertLoad {
  std::int64_t num_layers = 0;
  std::int64_t num_source_ranks = 0;
  std::int64_t num_experts = 0;
  std::vector<double> counts;

  // (num_source_ranks, num_experts) row-major block of one layer.
  const double* layer(std::int64_t layer_idx) const {
    return counts.data() + layer_idx * num_source_ranks * num_experts;
  }
  double* layer(std::int64_t layer_idx) {
    return counts.data() + layer_idx * num_source_ranks * num_experts;
  }
  bool per_rank() const { return num_source_ranks > 1; }
};

// What the dimensions of a load array are. A 2-D array is either per source
// rank or per layer; only the caller knows which, so kInfer refuses it.
enum class LoadLayout : std::uint8_t {
  kInfer,               // from the number of dimensions: "E" (1-D) or "LWE" (3-D); 2-D refused
  kExperts,             // "E":   (E,) global counts, one layer
  kRanksExperts,        // "WE":  (W, E) per-source-rank counts, one layer; W == world_size
  kLayersExperts,       // "LE":  (L, E) global counts per layer
  kLayersRanksExperts,  // "LWE": (L, R, E) per layer; R is world_size or 1 (global counts)
};

// "E", "WE", "LE", "LWE", or "" for kInfer; throws moe_eplb::Error
// (kInvalidArgument) starting with `operation` for any other name.
LoadLayout parse_load_layout(const std::string& name, const char* operation);
const char* load_layout_name(LoadLayout layout);  // "" for kInfer

// Builds an ExpertLoad from an array as read from a .npy file, taking
// ownership of `values` (C order), its dimensions read as `layout` says.
// Throws moe_eplb::Error (kInvalidArgument) starting with `operation` for a
// 2-D array under kInfer (saying how to name the layout), a shape the layout
// does not fit, an empty dimension, more than kMaxLoadExperts experts, or a
// negative / non-finite value, naming its (layer, rank, expert) position,
// e.g. "plan(): load has a negative value -3 at (rank 2, expert 17)".
ExpertLoad make_expert_load(const std::vector<std::int64_t>& shape, std::vector<double> values,
                            std::int64_t world_size, LoadLayout layout, const char* operation);

// Refuses a negative or non-finite count among (num_layers,
// num_source_ranks, num_experts) `counts` (kInvalidArgument, starting with
// `operation`, naming the first one's position). Every planner and the
// analyzer check their loads with it.
void check_load_values(const double* counts, std::int64_t num_layers, std::int64_t num_source_ranks,
                       std::int64_t num_experts, const char* operation);

// Refuses windows of different shapes (layers, source ranks, experts),
// naming the first that differs from window 0 (kInvalidArgument, starting
// with `operation`). Several windows are one series: plan() and replay().
void check_same_shape(const std::vector<ExpertLoad>& windows, const char* operation);

// Sums a per-rank load over its source ranks: (L, 1, E). Never throws.
ExpertLoad global_load(const ExpertLoad& load);

// Top-K logical expert ids of one MoE layer for every source rank:
// expert_ids is (world_size, tokens_per_rank, top_k) int32, row-major;
// active_mask is (world_size, tokens_per_rank) with 1 = real token and
// 0 = padding (all 1 entries of a rank before its 0 entries), or empty when
// every token is active.
struct RoutingTrace {
  std::int64_t world_size = 0;
  std::int64_t tokens_per_rank = 0;
  std::int64_t top_k = 0;
  std::vector<std::int32_t> expert_ids;
  std::vector<std::uint8_t> active_mask;

  // The (tokens_per_rank, top_k) batch of one source rank.
  ExpertIdsView rank_ids(std::int64_t rank) const;
  // That rank's active_mask row, or nullptr when every token is active.
  const std::uint8_t* rank_mask(std::int64_t rank) const;
};

// Accumulates per-source-rank expert loads from routed batches, using the
// core operator's own load recording (update_expert with an identity table
// and load_counts), so inactive tokens (active_mask) and pruned choices
// (expert_scales below pruning_threshold) are skipped exactly as the
// operator skips them. Not thread-safe; deterministic.
class LoadRecorder {
 public:
  // Throws moe_eplb::Error (kInvalidArgument) for a non-positive size or
  // more than kMaxLoadExperts experts.
  LoadRecorder(std::int64_t num_layers, std::int64_t world_size, std::int64_t num_experts);

  // Adds one batch of `source_rank` in `layer_idx`. `pruning` may be null.
  // An expert id outside [0, E) throws moe_eplb::Error (kIndexOutOfRange)
  // naming (b, k), and the batch is not recorded.
  void record(std::int64_t layer_idx, std::int64_t source_rank, const ExpertIdsView& expert_ids,
              const PruningInputs* pruning = nullptr);
  // Same, honouring only an active_mask of expert_ids.num_tokens bytes
  // (nullptr: every token is active).
  void record_masked(std::int64_t layer_idx, std::int64_t source_rank,
                     const ExpertIdsView& expert_ids, const std::uint8_t* active_mask);
  // Every rank of a trace into `layer_idx`.
  void record(std::int64_t layer_idx, const RoutingTrace& trace);

  const ExpertLoad& load() const { return load_; }

 private:
  ExpertLoad load_;
  std::vector<std::int32_t> identity_table_;  // (E, 2): [1, e]
  std::vector<std::int64_t> counts_;          // scratch, (E,)
};

}  // namespace moe_eplb

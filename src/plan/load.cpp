#include "moe_eplb/plan/load.hpp"

#include <cmath>

#include "moe_eplb/error.hpp"
#include "routing.hpp"

namespace moe_eplb {
namespace {

std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return text + (shape.size() == 1 ? ",)" : ")");
}

// "(layer 1, rank 2, expert 17)", leaving out what the shape does not have.
std::string position(const ExpertLoad& load, std::int64_t flat) {
  const std::int64_t expert = flat % load.num_experts;
  const std::int64_t rank = flat / load.num_experts % load.num_source_ranks;
  const std::int64_t layer_idx = flat / (load.num_experts * load.num_source_ranks);
  std::string text = "(";
  if (load.num_layers > 1) text += detail::concat("layer ", layer_idx, ", ");
  if (load.num_source_ranks > 1) text += detail::concat("rank ", rank, ", ");
  return text + detail::concat("expert ", expert, ")");
}

}  // namespace

ExpertLoad make_expert_load(const std::vector<std::int64_t>& shape, std::vector<double> values,
                            std::int64_t world_size, const char* operation) {
  ExpertLoad load;
  const std::size_t dims = shape.size();
  MOE_EPLB_CHECK(dims >= 1 && dims <= 3, operation,
                 ": load must be (E,) global counts, (W, E) per-rank counts or (L, W, E) per "
                 "layer, got a ",
                 dims, "-D array of shape ", shape_string(shape));
  for (std::int64_t extent : shape) {
    MOE_EPLB_CHECK(extent >= 1, operation, ": load has an empty dimension, shape ",
                   shape_string(shape));
  }
  MOE_EPLB_CHECK(shape.back() <= kMaxLoadExperts, operation, ": load has ", shape.back(),
                 " experts (last dimension), expected 1..", kMaxLoadExperts);
  load.num_layers = dims == 3 ? shape[0] : 1;
  load.num_source_ranks = dims == 1 ? 1 : shape[dims - 2];
  load.num_experts = shape[dims - 1];
  if (dims == 2) {
    MOE_EPLB_CHECK(
        load.num_source_ranks == world_size, operation, ": load of shape ", shape_string(shape),
        " is read as (W, E) per-source-rank counts, but W = ", load.num_source_ranks,
        " differs from world_size ", world_size, " (per-layer global counts are (L, 1, E))");
  } else if (dims == 3) {
    MOE_EPLB_CHECK(load.num_source_ranks == world_size || load.num_source_ranks == 1, operation,
                   ": load of shape ", shape_string(shape),
                   " is read as (L, W, E), but W = ", load.num_source_ranks,
                   " is neither world_size ", world_size, " nor 1 (global counts)");
  }
  MOE_EPLB_CHECK(static_cast<std::int64_t>(values.size()) ==
                     load.num_layers * load.num_source_ranks * load.num_experts,
                 operation, ": load has ", values.size(), " values, shape ", shape_string(shape),
                 " needs ", load.num_layers * load.num_source_ranks * load.num_experts);
  for (std::size_t i = 0; i < values.size(); ++i) {
    MOE_EPLB_CHECK(std::isfinite(values[i]), operation, ": load has a non-finite value ", values[i],
                   " at ", position(load, static_cast<std::int64_t>(i)));
    MOE_EPLB_CHECK(values[i] >= 0, operation, ": load has a negative value ", values[i], " at ",
                   position(load, static_cast<std::int64_t>(i)));
  }
  load.counts = std::move(values);
  return load;
}

ExpertLoad global_load(const ExpertLoad& load) {
  ExpertLoad global;
  global.num_layers = load.num_layers;
  global.num_source_ranks = 1;
  global.num_experts = load.num_experts;
  global.counts.assign(static_cast<std::size_t>(load.num_layers * load.num_experts), 0.0);
  for (std::int64_t layer_idx = 0; layer_idx < load.num_layers; ++layer_idx) {
    double* out = global.layer(layer_idx);
    for (std::int64_t rank = 0; rank < load.num_source_ranks; ++rank) {
      const double* row = load.layer(layer_idx) + rank * load.num_experts;
      for (std::int64_t expert = 0; expert < load.num_experts; ++expert) out[expert] += row[expert];
    }
  }
  return global;
}

ExpertIdsView RoutingTrace::rank_ids(std::int64_t rank) const {
  ExpertIdsView view;
  view.data = expert_ids.data() + rank * tokens_per_rank * top_k;
  view.dtype = Dtype::kInt32;
  view.num_tokens = tokens_per_rank;
  view.top_k = top_k;
  view.token_stride = top_k;
  view.k_stride = 1;
  return view;
}

const std::uint8_t* RoutingTrace::rank_mask(std::int64_t rank) const {
  return active_mask.empty() ? nullptr : active_mask.data() + rank * tokens_per_rank;
}

LoadRecorder::LoadRecorder(std::int64_t num_layers, std::int64_t world_size,
                           std::int64_t num_experts) {
  MOE_EPLB_CHECK(num_layers >= 1 && world_size >= 1 && num_experts >= 1,
                 "LoadRecorder(): num_layers, world_size and num_experts must be positive, got ",
                 num_layers, ", ", world_size, ", ", num_experts);
  MOE_EPLB_CHECK(num_experts <= kMaxLoadExperts, "LoadRecorder(): num_experts must be in 1..",
                 kMaxLoadExperts, ", got ", num_experts);
  load_.num_layers = num_layers;
  load_.num_source_ranks = world_size;
  load_.num_experts = num_experts;
  load_.counts.assign(static_cast<std::size_t>(num_layers * world_size * num_experts), 0.0);
  identity_table_.resize(static_cast<std::size_t>(num_experts * 2));
  for (std::int64_t expert = 0; expert < num_experts; ++expert) {
    identity_table_[static_cast<std::size_t>(2 * expert)] = 1;
    identity_table_[static_cast<std::size_t>(2 * expert + 1)] = static_cast<std::int32_t>(expert);
  }
  counts_.resize(static_cast<std::size_t>(num_experts));
}

namespace {

void record_batch(ExpertLoad& load, const std::vector<std::int32_t>& identity_table,
                  std::vector<std::int64_t>& counts, std::int64_t layer_idx,
                  std::int64_t source_rank, const ExpertIdsView& expert_ids,
                  const PruningInputs* pruning, const std::uint8_t* active_mask) {
  MOE_EPLB_CHECK(layer_idx >= 0 && layer_idx < load.num_layers,
                 "LoadRecorder::record(): layer must be in 0..", load.num_layers - 1, ", got ",
                 layer_idx);
  MOE_EPLB_CHECK(source_rank >= 0 && source_rank < load.num_source_ranks,
                 "LoadRecorder::record(): source_rank must be in 0..", load.num_source_ranks - 1,
                 ", got ", source_rank);
  // Identity table (every expert one replica, in the slot of its own id) in token mode: the
  // operator then counts logical experts, with its own pruning rules.
  const TableView table{identity_table.data(), load.num_experts, 2, 2, 1};
  UpdateExpertParams params;
  params.balance_mode = BalanceMode::kByToken;
  params.num_physical_experts = load.num_experts;
  std::fill(counts.begin(), counts.end(), 0);
  plan_detail::BatchRouter router;
  router.route(table, params, expert_ids, pruning, active_mask, counts.data(),
               detail::concat("LoadRecorder::record(): layer ", layer_idx, ", source rank ",
                              source_rank, ": "));
  double* row = load.layer(layer_idx) + source_rank * load.num_experts;
  for (std::int64_t expert = 0; expert < load.num_experts; ++expert) {
    row[expert] += static_cast<double>(counts[static_cast<std::size_t>(expert)]);
  }
}

}  // namespace

void LoadRecorder::record(std::int64_t layer_idx, std::int64_t source_rank,
                          const ExpertIdsView& expert_ids, const PruningInputs* pruning) {
  record_batch(load_, identity_table_, counts_, layer_idx, source_rank, expert_ids, pruning,
               nullptr);
}

void LoadRecorder::record_masked(std::int64_t layer_idx, std::int64_t source_rank,
                                 const ExpertIdsView& expert_ids, const std::uint8_t* active_mask) {
  record_batch(load_, identity_table_, counts_, layer_idx, source_rank, expert_ids, nullptr,
               active_mask);
}

void LoadRecorder::record(std::int64_t layer_idx, const RoutingTrace& trace) {
  MOE_EPLB_CHECK(trace.world_size == load_.num_source_ranks, "LoadRecorder::record(): trace has ",
                 trace.world_size, " ranks, the recorder ", load_.num_source_ranks);
  for (std::int64_t rank = 0; rank < trace.world_size; ++rank) {
    record_masked(layer_idx, rank, trace.rank_ids(rank), trace.rank_mask(rank));
  }
}

}  // namespace moe_eplb

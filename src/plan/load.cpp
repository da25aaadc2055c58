#include "moe_eplb/plan/load.hpp"

#include <cmath>
#include <limits>

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
std::string position(std::int64_t num_layers, std::int64_t num_source_ranks,
                     std::int64_t num_experts, std::int64_t flat) {
  const std::int64_t expert = flat % num_experts;
  const std::int64_t rank = flat / num_experts % num_source_ranks;
  const std::int64_t layer_idx = flat / (num_experts * num_source_ranks);
  std::string text = "(";
  if (num_layers > 1) text += detail::concat("layer ", layer_idx, ", ");
  if (num_source_ranks > 1) text += detail::concat("rank ", rank, ", ");
  return text + detail::concat("expert ", expert, ")");
}

}  // namespace

LoadLayout parse_load_layout(const std::string& name, const char* operation) {
  for (const LoadLayout layout :
       {LoadLayout::kInfer, LoadLayout::kExperts, LoadLayout::kRanksExperts,
        LoadLayout::kLayersExperts, LoadLayout::kLayersRanksExperts}) {
    if (name == load_layout_name(layout)) return layout;
  }
  MOE_EPLB_FAIL(ErrorCode::kInvalidArgument, operation, ": unknown load layout '", name,
                "', expected E (experts), WE (source ranks, experts), LE (layers, experts) or "
                "LWE (layers, source ranks, experts)");
}

const char* load_layout_name(LoadLayout layout) {
  switch (layout) {
    case LoadLayout::kInfer:
      return "";
    case LoadLayout::kExperts:
      return "E";
    case LoadLayout::kRanksExperts:
      return "WE";
    case LoadLayout::kLayersExperts:
      return "LE";
    case LoadLayout::kLayersRanksExperts:
      return "LWE";
  }
  return "?";
}

void check_load_values(const double* counts, std::int64_t num_layers, std::int64_t num_source_ranks,
                       std::int64_t num_experts, const char* operation) {
  const std::int64_t count = num_layers * num_source_ranks * num_experts;
  for (std::int64_t i = 0; i < count; ++i) {
    // One comparison on the common path: finite and >= 0.
    if (counts[i] >= 0 && counts[i] <= std::numeric_limits<double>::max()) continue;
    MOE_EPLB_CHECK(std::isfinite(counts[i]), operation, ": load has a non-finite value ", counts[i],
                   " at ", position(num_layers, num_source_ranks, num_experts, i));
    MOE_EPLB_FAIL(ErrorCode::kInvalidArgument, operation, ": load has a negative value ", counts[i],
                  " at ", position(num_layers, num_source_ranks, num_experts, i));
  }
}

ExpertLoad make_expert_load(const std::vector<std::int64_t>& shape, std::vector<double> values,
                            std::int64_t world_size, LoadLayout layout, const char* operation) {
  const std::size_t dims = shape.size();
  MOE_EPLB_CHECK(dims >= 1 && dims <= 3, operation,
                 ": load must be (E,) global counts, (W, E) per source rank, (L, E) per layer "
                 "or (L, W, E), got a ",
                 dims, "-D array of shape ", shape_string(shape));
  if (layout == LoadLayout::kInfer) {
    MOE_EPLB_CHECK(dims != 2, operation, ": load of shape ", shape_string(shape),
                   " is 2-D: rows of source ranks (W, E) or of layers (L, E)? Give its layout: "
                   "WE or LE");
    layout = dims == 1 ? LoadLayout::kExperts : LoadLayout::kLayersRanksExperts;
  }
  const std::string name = load_layout_name(layout);
  MOE_EPLB_CHECK(name.size() == dims, operation, ": load of shape ", shape_string(shape), " is ",
                 dims, "-D but layout ", name, " is ", name.size(), "-D");
  for (std::int64_t extent : shape) {
    MOE_EPLB_CHECK(extent >= 1, operation, ": load has an empty dimension, shape ",
                   shape_string(shape));
  }
  MOE_EPLB_CHECK(shape.back() <= kMaxLoadExperts, operation, ": load has ", shape.back(),
                 " experts (last dimension), expected 1..", kMaxLoadExperts);
  ExpertLoad load;
  load.num_layers = name.front() == 'L' ? shape[0] : 1;
  load.num_source_ranks = name.find('W') != std::string::npos ? shape[dims - 2] : 1;
  load.num_experts = shape[dims - 1];
  if (layout == LoadLayout::kRanksExperts) {
    MOE_EPLB_CHECK(load.num_source_ranks == world_size, operation, ": load of shape ",
                   shape_string(shape), " has layout WE, but W = ", load.num_source_ranks,
                   " differs from world_size ", world_size,
                   " (per-layer global counts have layout LE)");
  } else if (layout == LoadLayout::kLayersRanksExperts) {
    MOE_EPLB_CHECK(load.num_source_ranks == world_size || load.num_source_ranks == 1, operation,
                   ": load of shape ", shape_string(shape),
                   " has layout LWE, but W = ", load.num_source_ranks, " is neither world_size ",
                   world_size, " nor 1 (global counts)");
  }
  MOE_EPLB_CHECK(static_cast<std::int64_t>(values.size()) ==
                     load.num_layers * load.num_source_ranks * load.num_experts,
                 operation, ": load has ", values.size(), " values, shape ", shape_string(shape),
                 " needs ", load.num_layers * load.num_source_ranks * load.num_experts);
  load.counts = std::move(values);
  check_load_values(load.counts.data(), load.num_layers, load.num_source_ranks, load.num_experts,
                    operation);
  return load;
}

void check_same_shape(const std::vector<ExpertLoad>& windows, const char* operation) {
  for (std::size_t i = 1; i < windows.size(); ++i) {
    const ExpertLoad& first = windows.front();
    const ExpertLoad& window = windows[i];
    MOE_EPLB_CHECK(window.num_layers == first.num_layers &&
                       window.num_source_ranks == first.num_source_ranks &&
                       window.num_experts == first.num_experts,
                   operation, ": load window ", i, " is (", window.num_layers, " layers, ",
                   window.num_source_ranks, " source ranks, ", window.num_experts,
                   " experts), but window 0 is (", first.num_layers, ", ", first.num_source_ranks,
                   ", ", first.num_experts, "); every window must have the same shape");
  }
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

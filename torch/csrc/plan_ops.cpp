// torch.ops.moe_eplb planning ops: plan, analyze, migration_plan and
// align_to_previous over CPU tensors, for moe_eplb.planning (Python). Host
// work on small arrays: one CompositeExplicitAutograd kernel per op serves
// every backend, so a tensor on another device gets a clear error here rather
// than a missing-kernel error from the dispatcher.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "mapping_call.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "moe_eplb/plan/planner.hpp"

namespace moe_eplb::torch_adapter {
namespace {

void check_host(const char* operation, const char* name, const at::Tensor& tensor) {
  MOE_EPLB_CHECK(tensor.device().is_cpu(), operation, ": ", name,
                 " must be a CPU tensor (planning runs on the host), got one on ",
                 tensor.device().str());
}

// An (E, F) int32 CPU table, viewed in place (any strides).
TableView host_table(const char* operation, const char* name, const at::Tensor& table) {
  check_host(operation, name, table);
  MOE_EPLB_CHECK(table.dim() == 2, operation, ": ", name, " must be a 2-D (E, F) table, got ",
                 table.dim(), " dimensions");
  MOE_EPLB_CHECK(table.scalar_type() == at::kInt, operation, ": ", name, " must be int32, got ",
                 c10::toString(table.scalar_type()));
  return TableView{table.data_ptr<std::int32_t>(), table.size(0), table.size(1), table.stride(0),
                   table.stride(1)};
}

// A float64 CPU array's shape and values in C order.
std::vector<std::int64_t> shape_of(const at::Tensor& tensor) {
  return std::vector<std::int64_t>(tensor.sizes().begin(), tensor.sizes().end());
}
std::vector<double> float64_values(const char* operation, const char* name,
                                   const at::Tensor& tensor) {
  check_host(operation, name, tensor);
  MOE_EPLB_CHECK(tensor.scalar_type() == at::kDouble, operation, ": ", name,
                 " must be float64, got ", c10::toString(tensor.scalar_type()));
  const at::Tensor dense = tensor.contiguous();
  const double* data = dense.data_ptr<double>();
  return std::vector<double>(data, data + dense.numel());
}

// (E, F) or (L, E, F) int32 as a LayeredTable (copied, C order).
LayeredTable host_layered_table(const char* operation, const char* name, const at::Tensor& table) {
  check_host(operation, name, table);
  MOE_EPLB_CHECK(table.dim() == 2 || table.dim() == 3, operation, ": ", name,
                 " must be (E, F) or (L, E, F), got ", table.dim(), " dimensions");
  MOE_EPLB_CHECK(table.scalar_type() == at::kInt, operation, ": ", name, " must be int32, got ",
                 c10::toString(table.scalar_type()));
  const at::Tensor dense = table.dim() == 2 ? table.unsqueeze(0).contiguous() : table.contiguous();
  LayeredTable layered;
  layered.num_layers = dense.size(0);
  layered.num_experts = dense.size(1);
  layered.num_columns = dense.size(2);
  const std::int32_t* data = dense.data_ptr<std::int32_t>();
  layered.values.assign(data, data + dense.numel());
  return layered;
}

// (table (L, E, F) int32, report (L, 5) float64: persistence, predicted
// max/mean, low, high, slots_changed).
std::tuple<at::Tensor, at::Tensor> plan_op(at::TensorList windows, std::int64_t world_size,
                                           std::int64_t slots_per_rank, std::int64_t balance_mode,
                                           std::int64_t ranks_per_node, std::int64_t num_columns,
                                           c10::string_view algorithm, std::int64_t num_groups,
                                           const c10::optional<at::Tensor>& previous,
                                           std::int64_t max_moves, double move_cost) {
  constexpr const char* kPlan = "plan()";
  return translate_errors([&] {
    std::vector<ExpertLoad> loads;
    for (std::size_t i = 0; i < windows.size(); ++i) {
      const std::string name = "load window " + std::to_string(i);
      loads.push_back(make_expert_load(shape_of(windows[i]),
                                       float64_values(kPlan, name.c_str(), windows[i]), world_size,
                                       kPlan));
    }
    PlanOptions options;
    options.world_size = world_size;
    options.slots_per_rank = slots_per_rank;
    options.ranks_per_node = ranks_per_node;
    options.num_columns = num_columns;
    options.balance_mode = static_cast<BalanceMode>(balance_mode);
    options.algorithm = parse_plan_algorithm(std::string(algorithm.data(), algorithm.size()));
    options.num_groups = num_groups;
    options.max_moves = max_moves;
    options.move_cost = move_cost;
    LayeredTable previous_table;
    if (previous.has_value()) {
      previous_table = host_layered_table(kPlan, "previous", *previous);
      options.previous = &previous_table;
    }
    PlanReport report;
    const LayeredTable table = plan(loads, options, &report);
    at::Tensor values = at::empty({table.num_layers, table.num_experts, table.num_columns},
                                  at::TensorOptions().dtype(at::kInt));
    std::memcpy(values.data_ptr<std::int32_t>(), table.values.data(),
                table.values.size() * sizeof(std::int32_t));
    at::Tensor report_values =
        at::zeros({table.num_layers, 5}, at::TensorOptions().dtype(at::kDouble));
    double* out = report_values.data_ptr<double>();
    for (std::size_t layer = 0; layer < report.layers.size(); ++layer) {
      const LayerPlanReport& estimate = report.layers[layer];
      out[layer * 5 + 0] = estimate.persistence;
      out[layer * 5 + 1] = estimate.predicted_max_over_mean;
      out[layer * 5 + 2] = estimate.predicted_low;
      out[layer * 5 + 3] = estimate.predicted_high;
      out[layer * 5 + 4] = static_cast<double>(estimate.slots_changed);
    }
    return std::make_tuple(values, report_values);
  });
}

// (slot_load (W*S,), rank_load (W,), scalars (13,) float64 in the order of
// moe_eplb.planning.ANALYZE_SCALARS).
std::tuple<at::Tensor, at::Tensor, at::Tensor> analyze_op(
    const at::Tensor& table, const at::Tensor& load, std::int64_t world_size,
    std::int64_t slots_per_rank, std::int64_t balance_mode, std::int64_t ranks_per_node) {
  constexpr const char* kAnalyze = "analyze()";
  return translate_errors([&] {
    const TableView view = host_table(kAnalyze, "table", table);
    MOE_EPLB_CHECK(load.dim() == 1 || load.dim() == 2, kAnalyze,
                   ": load must be (E,) global or (W, E) per source rank, got ", load.dim(),
                   " dimensions");
    const std::vector<double> counts = float64_values(kAnalyze, "load", load);
    const std::int64_t num_source_ranks = load.dim() == 2 ? load.size(0) : 1;
    const std::int64_t num_experts = load.size(load.dim() - 1);
    MOE_EPLB_CHECK(num_experts == view.num_experts, kAnalyze, ": load has ", num_experts,
                   " experts but table has ", view.num_experts, " rows");
    MOE_EPLB_CHECK(load.dim() == 1 || num_source_ranks == world_size, kAnalyze, ": load has ",
                   num_source_ranks, " source ranks, expected world_size ", world_size);
    AnalyzeOptions options;
    options.world_size = world_size;
    options.slots_per_rank = slots_per_rank;
    options.ranks_per_node = ranks_per_node;
    options.balance_mode = static_cast<BalanceMode>(balance_mode);
    const BalanceReport report = analyze_load(view, counts.data(), num_source_ranks, options);
    const auto float64 = at::TensorOptions().dtype(at::kDouble);
    at::Tensor slot_load = at::empty({static_cast<std::int64_t>(report.slot_load.size())}, float64);
    std::copy(report.slot_load.begin(), report.slot_load.end(), slot_load.data_ptr<double>());
    at::Tensor rank_load = at::empty({static_cast<std::int64_t>(report.rank_load.size())}, float64);
    std::copy(report.rank_load.begin(), report.rank_load.end(), rank_load.data_ptr<double>());
    const double scalars[] = {
        report.total_load,
        report.mean_rank_load,
        report.max_rank_load,
        report.max_over_mean,
        report.imbalance,
        static_cast<double>(report.num_replicas),
        static_cast<double>(report.dead_replicas),
        static_cast<double>(report.idle_replicas),
        static_cast<double>(report.replicas_sharing_rank),
        static_cast<double>(report.slots_claimed_twice),
        static_cast<double>(report.unused_slots),
        report.local_rank_share,
        report.local_node_share,
    };
    constexpr std::int64_t kNumScalars = sizeof(scalars) / sizeof(scalars[0]);
    at::Tensor scalar_values = at::empty({kNumScalars}, float64);
    std::copy(scalars, scalars + kNumScalars, scalar_values.data_ptr<double>());
    return std::make_tuple(slot_load, rank_load, scalar_values);
  });
}

TopologyOptions make_topology(std::int64_t world_size, std::int64_t slots_per_rank,
                              std::int64_t ranks_per_node) {
  TopologyOptions topology;
  topology.world_size = world_size;
  topology.slots_per_rank = slots_per_rank;
  topology.ranks_per_node = ranks_per_node;
  return topology;
}

at::Tensor int64_vector(const std::vector<std::int64_t>& values) {
  at::Tensor tensor =
      at::empty({static_cast<std::int64_t>(values.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(values.begin(), values.end(), tensor.data_ptr<std::int64_t>());
  return tensor;
}

// (moves (W*S, 3) int32 [action, source_rank, source_slot], received_per_rank
// (W,) int64, sent_per_rank (W,) int64, totals (4,) int64 [kept,
// local_copies, received, cross_node]).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> migration_plan_op(
    const at::Tensor& old_table, const at::Tensor& new_table, std::int64_t world_size,
    std::int64_t slots_per_rank, std::int64_t ranks_per_node) {
  constexpr const char* kMigrationPlan = "migration_plan()";
  return translate_errors([&] {
    const MigrationPlan plan =
        migration_plan(host_table(kMigrationPlan, "old_table", old_table),
                       host_table(kMigrationPlan, "new_table", new_table),
                       make_topology(world_size, slots_per_rank, ranks_per_node));
    const auto num_slots = static_cast<std::int64_t>(plan.moves.size());
    at::Tensor moves = at::empty({num_slots, 3}, at::TensorOptions().dtype(at::kInt));
    std::int32_t* out = moves.data_ptr<std::int32_t>();
    for (std::int64_t p = 0; p < num_slots; ++p) {
      const SlotMove& move = plan.moves[static_cast<std::size_t>(p)];
      out[p * 3 + 0] = static_cast<std::int32_t>(move.action);
      out[p * 3 + 1] = move.source_rank;
      out[p * 3 + 2] = move.source_slot;
    }
    return std::make_tuple(
        moves, int64_vector(plan.received_per_rank), int64_vector(plan.sent_per_rank),
        int64_vector({plan.kept, plan.local_copies, plan.received, plan.cross_node}));
  });
}

at::Tensor align_to_previous_op(const at::Tensor& new_table, const at::Tensor& old_table,
                                std::int64_t world_size, std::int64_t slots_per_rank) {
  constexpr const char* kAlign = "align_to_previous()";
  return translate_errors([&] {
    const TableView new_view = host_table(kAlign, "new_table", new_table);
    const std::vector<std::int32_t> aligned =
        align_to_previous(new_view, host_table(kAlign, "old_table", old_table),
                          make_topology(world_size, slots_per_rank, 0));
    at::Tensor result = at::empty({new_view.num_experts, new_view.num_columns},
                                  at::TensorOptions().dtype(at::kInt));
    std::memcpy(result.data_ptr<std::int32_t>(), aligned.data(),
                aligned.size() * sizeof(std::int32_t));
    return result;
  });
}

// (W * S,) int64: the logical expert in every physical slot, -1 where none.
at::Tensor slot_experts_op(const at::Tensor& table, std::int64_t world_size,
                           std::int64_t slots_per_rank) {
  constexpr const char* kSlotExperts = "slot_experts()";
  return translate_errors([&] {
    const std::vector<std::int32_t> experts = slot_experts(
        host_table(kSlotExperts, "table", table), make_topology(world_size, slots_per_rank, 0));
    return at::tensor(std::vector<std::int64_t>(experts.begin(), experts.end()),
                      at::TensorOptions().dtype(at::kLong));
  });
}

// (slots_changed, rows_changed, received_per_rank (W,) int64).
std::tuple<std::int64_t, std::int64_t, at::Tensor> table_diff_op(const at::Tensor& old_table,
                                                                 const at::Tensor& new_table,
                                                                 std::int64_t world_size,
                                                                 std::int64_t slots_per_rank) {
  constexpr const char* kTableDiff = "table_diff()";
  return translate_errors([&] {
    const TableDiff diff = diff_tables(host_table(kTableDiff, "old_table", old_table),
                                       host_table(kTableDiff, "new_table", new_table),
                                       make_topology(world_size, slots_per_rank, 0));
    return std::make_tuple(diff.slots_changed, diff.rows_changed,
                           int64_vector(diff.received_per_rank));
  });
}

std::int64_t widest_plan_columns_op(std::int64_t num_experts, std::int64_t world_size,
                                    std::int64_t slots_per_rank) {
  return translate_errors([&] {
    return widest_plan_columns(num_experts, world_size, slots_per_rank, "widest_plan_columns()");
  });
}

}  // namespace
}  // namespace moe_eplb::torch_adapter

TORCH_LIBRARY_FRAGMENT(moe_eplb, m) {
  m.def(
      "plan(Tensor[] windows, int world_size, int slots_per_rank, *, int balance_mode=0, "
      "int ranks_per_node=0, int num_columns=0, str algorithm=\"moe-eplb\", int num_groups=1, "
      "Tensor? previous=None, int max_moves=-1, float move_cost=0.0) -> (Tensor, Tensor)");
  m.def(
      "analyze(Tensor table, Tensor load, int world_size, int slots_per_rank, *, "
      "int balance_mode=0, int ranks_per_node=0) -> (Tensor, Tensor, Tensor)");
  m.def(
      "migration_plan(Tensor old_table, Tensor new_table, int world_size, int slots_per_rank, *, "
      "int ranks_per_node=0) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "align_to_previous(Tensor new_table, Tensor old_table, int world_size, "
      "int slots_per_rank) -> Tensor");
  m.def("slot_experts(Tensor table, int world_size, int slots_per_rank) -> Tensor");
  m.def(
      "table_diff(Tensor old_table, Tensor new_table, int world_size, int slots_per_rank) "
      "-> (int, int, Tensor)");
  // No tensor argument to dispatch on: one catch-all kernel.
  m.def("widest_plan_columns(int num_experts, int world_size, int slots_per_rank) -> int",
        TORCH_FN(moe_eplb::torch_adapter::widest_plan_columns_op));
}

TORCH_LIBRARY_IMPL(moe_eplb, CompositeExplicitAutograd, m) {
  m.impl("plan", TORCH_FN(moe_eplb::torch_adapter::plan_op));
  m.impl("analyze", TORCH_FN(moe_eplb::torch_adapter::analyze_op));
  m.impl("migration_plan", TORCH_FN(moe_eplb::torch_adapter::migration_plan_op));
  m.impl("align_to_previous", TORCH_FN(moe_eplb::torch_adapter::align_to_previous_op));
  m.impl("slot_experts", TORCH_FN(moe_eplb::torch_adapter::slot_experts_op));
  m.impl("table_diff", TORCH_FN(moe_eplb::torch_adapter::table_diff_op));
}

// Plans and tables carry no gradient.
TORCH_LIBRARY_IMPL(moe_eplb, Autograd, m) {
  for (const char* name :
       {"plan", "analyze", "migration_plan", "align_to_previous", "slot_experts", "table_diff"}) {
    m.impl(name, torch::CppFunction::makeFallthrough());
  }
}

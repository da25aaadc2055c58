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

#include "host_ops.hpp"
#include "mapping_call.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/convert.hpp"
#include "moe_eplb/plan/load.hpp"
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

// The rule an op plans for or routes by: `rule` by name, or the operator's
// `balance_mode`; ascend-rank when neither is given.
ReplicaRule resolve_rule(const char* operation, const c10::optional<c10::string_view>& rule,
                         const c10::optional<std::int64_t>& balance_mode) {
  if (!rule.has_value()) {
    return balance_mode.has_value()
               ? rule_of_balance_mode(static_cast<BalanceMode>(*balance_mode), operation)
               : ReplicaRule::kAscendRank;
  }
  const ReplicaRule parsed = parse_replica_rule(std::string(rule->data(), rule->size()), operation);
  MOE_EPLB_CHECK(!balance_mode.has_value() || rule_info(parsed).balance_mode == *balance_mode,
                 operation, ": rule \"", rule_info(parsed).name, "\" and balance_mode ",
                 balance_mode.value_or(-1), " disagree; give one of them");
  return parsed;
}

// The fields of plan()'s per-layer report, in the order of the report's columns.
const std::vector<std::string> kPlanReportFields = {
    "persistence", "predicted_max_over_mean", "predicted_low", "predicted_high", "slots_changed"};

// (table (L, E, F) int32, report (L, len(kPlanReportFields)) float64).
std::tuple<at::Tensor, at::Tensor> plan_op(
    at::TensorList windows, std::int64_t world_size, std::int64_t slots_per_rank,
    c10::string_view layout, c10::optional<std::int64_t> balance_mode,
    c10::optional<c10::string_view> rule, std::int64_t ranks_per_node, std::int64_t num_columns,
    c10::string_view algorithm, std::int64_t num_groups, const c10::optional<at::Tensor>& previous,
    std::int64_t max_moves, double move_cost, std::int64_t threads) {
  constexpr const char* kPlan = "plan()";
  return translate_errors([&] {
    const LoadLayout load_layout =
        parse_load_layout(std::string(layout.data(), layout.size()), kPlan);
    std::vector<ExpertLoad> loads;
    for (std::size_t i = 0; i < windows.size(); ++i) {
      const std::string name = "load window " + std::to_string(i);
      loads.push_back(make_expert_load(shape_of(windows[i]),
                                       float64_values(kPlan, name.c_str(), windows[i]), world_size,
                                       load_layout, kPlan));
    }
    PlanOptions options;
    options.world_size = world_size;
    options.slots_per_rank = slots_per_rank;
    options.ranks_per_node = ranks_per_node;
    options.num_columns = num_columns;
    options.rule = resolve_rule(kPlan, rule, balance_mode);
    options.algorithm = parse_plan_algorithm(std::string(algorithm.data(), algorithm.size()));
    options.num_groups = num_groups;
    options.max_moves = max_moves;
    options.move_cost = move_cost;
    options.threads = threads;
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
    const auto num_fields = static_cast<std::int64_t>(kPlanReportFields.size());
    at::Tensor report_values =
        at::zeros({table.num_layers, num_fields}, at::TensorOptions().dtype(at::kDouble));
    double* out = report_values.data_ptr<double>();
    for (std::size_t layer = 0; layer < report.layers.size(); ++layer) {
      const LayerPlanReport& estimate = report.layers[layer];
      const double fields[] = {estimate.persistence, estimate.predicted_max_over_mean,
                               estimate.predicted_low, estimate.predicted_high,
                               static_cast<double>(estimate.slots_changed)};
      static_assert(sizeof(fields) / sizeof(fields[0]) == 5);
      std::copy(fields, fields + num_fields, out + layer * num_fields);
    }
    return std::make_tuple(values, report_values);
  });
}

// The scalars of analyze()'s report, in the order of its third output.
const std::vector<std::string> kAnalyzeFields = {
    "total_load",          "mean_rank_load", "max_rank_load",
    "max_over_mean",       "imbalance",      "num_replicas",
    "dead_replicas",       "idle_replicas",  "replicas_sharing_rank",
    "slots_claimed_twice", "unused_slots",   "local_rank_share",
    "local_node_share"};

// (slot_load (W*S,), rank_load (W,), scalars (len(kAnalyzeFields),) float64).
std::tuple<at::Tensor, at::Tensor, at::Tensor> analyze_op(
    const at::Tensor& table, const at::Tensor& load, std::int64_t world_size,
    std::int64_t slots_per_rank, c10::string_view layout, c10::optional<std::int64_t> balance_mode,
    c10::optional<c10::string_view> rule, std::int64_t ranks_per_node) {
  constexpr const char* kAnalyze = "analyze()";
  return translate_errors([&] {
    const TableView view = host_table(kAnalyze, "table", table);
    const LoadLayout load_layout =
        parse_load_layout(std::string(layout.data(), layout.size()), kAnalyze);
    MOE_EPLB_CHECK(load_layout != LoadLayout::kLayersExperts &&
                       load_layout != LoadLayout::kLayersRanksExperts && load.dim() != 3,
                   kAnalyze,
                   ": analyze() scores one layer: load must be (E,) or (W, E) (layout E "
                   "or WE), got shape ",
                   load.sizes());
    const ExpertLoad counts = make_expert_load(
        shape_of(load), float64_values(kAnalyze, "load", load), world_size, load_layout, kAnalyze);
    MOE_EPLB_CHECK(counts.num_experts == view.num_experts, kAnalyze, ": load has ",
                   counts.num_experts, " experts but table has ", view.num_experts, " rows");
    const std::int64_t num_source_ranks = counts.num_source_ranks;
    AnalyzeOptions options;
    options.world_size = world_size;
    options.slots_per_rank = slots_per_rank;
    options.ranks_per_node = ranks_per_node;
    options.rule = resolve_rule(kAnalyze, rule, balance_mode);
    const BalanceReport report =
        analyze_load(view, counts.layer(0), num_source_ranks, options, kAnalyze);
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
    static_assert(kNumScalars == 13);  // kAnalyzeFields
    at::Tensor scalar_values = at::empty({kNumScalars}, float64);
    std::copy(scalars, scalars + kNumScalars, scalar_values.data_ptr<double>());
    return std::make_tuple(slot_load, rank_load, scalar_values);
  });
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
    const MigrationPlan plan = migration_plan(host_table(kMigrationPlan, "old_table", old_table),
                                              host_table(kMigrationPlan, "new_table", new_table),
                                              Topology{world_size, slots_per_rank, ranks_per_node});
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

at::Tensor align_to_previous_op(const at::Tensor& old_table, const at::Tensor& new_table,
                                std::int64_t world_size, std::int64_t slots_per_rank) {
  constexpr const char* kAlign = "align_to_previous()";
  return translate_errors([&] {
    const TableView new_view = host_table(kAlign, "new_table", new_table);
    const std::vector<std::int32_t> aligned =
        align_to_previous(host_table(kAlign, "old_table", old_table), new_view,
                          Topology{world_size, slots_per_rank, 0});
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
    const std::vector<std::int32_t> experts = slot_experts(host_table(kSlotExperts, "table", table),
                                                           Topology{world_size, slots_per_rank, 0});
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
                                       Topology{world_size, slots_per_rank, 0});
    return std::make_tuple(diff.slots_changed, diff.rows_changed,
                           int64_vector(diff.received_per_rank));
  });
}

// SlotAction's names, in enum order (moe_eplb.MigrationAction reads them).
const std::vector<std::string> kSlotActionNames = {"keep", "copy_local", "receive",
                                                   "copy_received"};
static_assert(static_cast<int>(SlotAction::kCopyReceived) == 3);

}  // namespace

std::int64_t widest_plan_columns(std::int64_t num_experts, std::int64_t world_size,
                                 std::int64_t slots_per_rank) {
  return translate_errors([&] {
    return moe_eplb::widest_plan_columns(num_experts, world_size, slots_per_rank,
                                         "widest_plan_columns()");
  });
}

// The names Python and the CLI read from C++ instead of keeping copies.
std::vector<std::string> names(c10::string_view what) {
  return translate_errors([&] {
    const std::string name(what.data(), what.size());
    if (name == "replica_rules") {
      std::vector<std::string> names;
      for (const RuleInfo& info : replica_rules()) names.emplace_back(info.name);
      return names;
    }
    if (name == "balance_modes") {  // the rule of balance_mode 0, 1, 2
      std::vector<std::string> names;
      for (std::int64_t mode = 0; mode <= static_cast<std::int64_t>(BalanceMode::kByHash); ++mode) {
        names.emplace_back(rule_info(rule_of_balance_mode(static_cast<BalanceMode>(mode))).name);
      }
      return names;
    }
    if (name == "plan_algorithms") return plan_algorithm_names();
    if (name == "plan_report") return kPlanReportFields;
    if (name == "analyze") return kAnalyzeFields;
    if (name == "slot_actions") return kSlotActionNames;
    MOE_EPLB_FAIL(ErrorCode::kInvalidArgument,
                  "names(): what must be \"replica_rules\", \"balance_modes\", "
                  "\"plan_algorithms\", \"plan_report\", \"analyze\" or \"slot_actions\", got \"",
                  name, "\"");
  });
}

namespace {

// ---- layout converters (convert.hpp), one layer (E, ...) or per layer (L, E, ...) ----

// An int32 or int64 CPU integer array as int64 values in C order, with a
// leading layer dimension (added when the array has `dims` - 1 dimensions).
struct LayeredInts {
  std::int64_t num_layers = 1;
  std::vector<std::int64_t> shape;  // without the layer dimension
  std::vector<std::int64_t> values;
  bool layered = false;
  std::int64_t layer_size() const {
    std::int64_t size = 1;
    for (const std::int64_t extent : shape) size *= extent;
    return size;
  }
  const std::int64_t* layer(std::int64_t l) const { return values.data() + l * layer_size(); }
};
LayeredInts layered_ints(const char* operation, const char* name, const at::Tensor& tensor,
                         std::int64_t dims) {
  check_host(operation, name, tensor);
  MOE_EPLB_CHECK(tensor.dim() == dims || tensor.dim() == dims - 1, operation, ": ", name,
                 " must have ", dims - 1, " or ", dims, " (with layers) dimensions, got shape ",
                 tensor.sizes());
  MOE_EPLB_CHECK(tensor.scalar_type() == at::kLong || tensor.scalar_type() == at::kInt, operation,
                 ": ", name, " must be int64 or int32, got ", c10::toString(tensor.scalar_type()));
  LayeredInts out;
  out.layered = tensor.dim() == dims;
  const at::Tensor dense = (out.layered ? tensor : tensor.unsqueeze(0)).to(at::kLong).contiguous();
  out.num_layers = dense.size(0);
  out.shape.assign(dense.sizes().begin() + 1, dense.sizes().end());
  const std::int64_t* data = dense.data_ptr<std::int64_t>();
  out.values.assign(data, data + dense.numel());
  return out;
}

// Runs `convert(layer)` for every layer, naming the layer in an error.
template <typename Convert>
auto for_each_layer(const char* operation, std::int64_t num_layers, bool layered,
                    Convert&& convert) {
  std::vector<decltype(convert(std::int64_t{0}))> results;
  for (std::int64_t layer = 0; layer < num_layers; ++layer) {
    try {
      results.push_back(convert(layer));
    } catch (const Error& error) {
      if (!layered) throw;
      MOE_EPLB_FAIL(error.code(), operation, ": layer ", layer, ": ", error.what());
    }
  }
  return results;
}

at::Tensor int32_table_tensor(const LayeredTable& table, bool layered) {
  at::Tensor out = at::empty({table.num_layers, table.num_experts, table.num_columns},
                             at::TensorOptions().dtype(at::kInt));
  std::memcpy(out.data_ptr<std::int32_t>(), table.values.data(),
              table.values.size() * sizeof(std::int32_t));
  return layered ? out : out[0];
}

at::Tensor int64_tensor(std::vector<std::int64_t> shape, const std::vector<std::int64_t>& values,
                        bool layered) {
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kLong));
  std::copy(values.begin(), values.end(), out.data_ptr<std::int64_t>());
  return layered ? out : out[0];
}

// The replicas of every layer of a table (E, F) or (L, E, F), checked for
// num_physical_experts slots.
std::vector<ReplicaSlots> table_slots(const char* operation, const at::Tensor& table,
                                      std::int64_t num_physical_experts, bool& layered) {
  const LayeredTable tables = host_layered_table(operation, "table", table);
  layered = table.dim() == 3;
  return for_each_layer(operation, tables.num_layers, layered, [&](std::int64_t layer) {
    return slots_from_table(tables.layer(layer), num_physical_experts);
  });
}

// phy2log (P,) or (L, P) int64: the expert in every slot, -1 where none.
at::Tensor table_to_phy2log_op(const at::Tensor& table, std::int64_t num_physical_experts,
                               bool sort_replicas) {
  constexpr const char* kOperation = "table_to_phy2log()";
  return translate_errors([&] {
    bool layered = false;
    const std::vector<ReplicaSlots> layers =
        table_slots(kOperation, table, num_physical_experts, layered);
    std::vector<std::int64_t> values;
    for_each_layer(kOperation, static_cast<std::int64_t>(layers.size()), layered,
                   [&](std::int64_t layer) {
                     const std::vector<std::int64_t> phy2log =
                         slots_to_phy2log(layers[layer], num_physical_experts, sort_replicas);
                     values.insert(values.end(), phy2log.begin(), phy2log.end());
                     return 0;
                   });
    return int64_tensor({static_cast<std::int64_t>(layers.size()), num_physical_experts}, values,
                        layered);
  });
}

// (log2phy (E, X) or (L, E, X) int64 padded with -1, logcnt (E,) or (L, E)),
// the table's replica order kept; X = max_replicas, or the largest count of
// any layer when 0.
std::tuple<at::Tensor, at::Tensor> table_to_log2phy_op(const at::Tensor& table,
                                                       std::int64_t max_replicas) {
  constexpr const char* kOperation = "table_to_log2phy()";
  return translate_errors([&] {
    bool layered = false;
    const std::vector<ReplicaSlots> layers = table_slots(kOperation, table, -1, layered);
    std::int64_t width = max_replicas;
    for (const ReplicaSlots& slots : layers) {
      for (const auto& replicas : slots) {
        if (max_replicas == 0) width = std::max<std::int64_t>(width, replicas.size());
      }
    }
    std::vector<std::int64_t> log2phy, logcnt;
    for_each_layer(kOperation, static_cast<std::int64_t>(layers.size()), layered,
                   [&](std::int64_t layer) {
                     const Log2Phy maps = slots_to_log2phy(layers[layer], width);
                     log2phy.insert(log2phy.end(), maps.log2phy.begin(), maps.log2phy.end());
                     logcnt.insert(logcnt.end(), maps.logcnt.begin(), maps.logcnt.end());
                     return 0;
                   });
    const auto num_layers = static_cast<std::int64_t>(layers.size());
    const auto num_experts = static_cast<std::int64_t>(layers.empty() ? 0 : layers[0].size());
    return std::make_tuple(int64_tensor({num_layers, num_experts, width}, log2phy, layered),
                           int64_tensor({num_layers, num_experts}, logcnt, layered));
  });
}

// A table (E, F) or (L, E, F) from phy2log (P,) or (L, P): each expert's
// replicas in ascending slot order. num_columns 0 = the largest count + 1.
at::Tensor table_from_phy2log_op(const at::Tensor& phy2log, std::int64_t num_experts,
                                 std::int64_t num_columns) {
  constexpr const char* kOperation = "table_from_phy2log()";
  return translate_errors([&] {
    const LayeredInts maps = layered_ints(kOperation, "phy2log", phy2log, 2);
    const std::vector<ReplicaSlots> layers =
        for_each_layer(kOperation, maps.num_layers, maps.layered, [&](std::int64_t layer) {
          return slots_from_phy2log(maps.layer(layer), maps.shape[0], num_experts);
        });
    return int32_table_tensor(make_layered_table(layers, num_columns), maps.layered);
  });
}

// A table from log2phy (E, X) or (L, E, X) with logcnt (E,) or (L, E), or
// with logcnt None from SGLang's map (the count is the leading non-negative
// entries); the replica order kept.
at::Tensor table_from_log2phy_op(const at::Tensor& log2phy, const c10::optional<at::Tensor>& logcnt,
                                 std::int64_t num_columns) {
  constexpr const char* kOperation = "table_from_log2phy()";
  return translate_errors([&] {
    const LayeredInts maps = layered_ints(kOperation, "log2phy", log2phy, 3);
    LayeredInts counts;
    if (logcnt.has_value()) {
      counts = layered_ints(kOperation, "logcnt", *logcnt, 2);
      MOE_EPLB_CHECK(counts.layered == maps.layered && counts.num_layers == maps.num_layers &&
                         counts.shape[0] == maps.shape[0],
                     kOperation, ": logcnt has shape ", logcnt->sizes(),
                     ", expected one count per row of log2phy ", log2phy.sizes());
    }
    const std::vector<ReplicaSlots> layers =
        for_each_layer(kOperation, maps.num_layers, maps.layered, [&](std::int64_t layer) {
          return slots_from_log2phy(maps.layer(layer), maps.shape[0], maps.shape[1],
                                    logcnt.has_value() ? counts.layer(layer) : nullptr);
        });
    return int32_table_tensor(make_layered_table(layers, num_columns), maps.layered);
  });
}

}  // namespace
}  // namespace moe_eplb::torch_adapter

TORCH_LIBRARY_IMPL(moe_eplb, CompositeExplicitAutograd, m) {
  m.impl("plan", TORCH_FN(moe_eplb::torch_adapter::plan_op));
  m.impl("analyze", TORCH_FN(moe_eplb::torch_adapter::analyze_op));
  m.impl("migration_plan", TORCH_FN(moe_eplb::torch_adapter::migration_plan_op));
  m.impl("align_to_previous", TORCH_FN(moe_eplb::torch_adapter::align_to_previous_op));
  m.impl("slot_experts", TORCH_FN(moe_eplb::torch_adapter::slot_experts_op));
  m.impl("table_diff", TORCH_FN(moe_eplb::torch_adapter::table_diff_op));
  m.impl("table_to_phy2log", TORCH_FN(moe_eplb::torch_adapter::table_to_phy2log_op));
  m.impl("table_to_log2phy", TORCH_FN(moe_eplb::torch_adapter::table_to_log2phy_op));
  m.impl("table_from_phy2log", TORCH_FN(moe_eplb::torch_adapter::table_from_phy2log_op));
  m.impl("table_from_log2phy", TORCH_FN(moe_eplb::torch_adapter::table_from_log2phy_op));
}

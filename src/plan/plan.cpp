#include "moe_eplb/plan/planner.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <thread>

#include "moe_eplb/detail/route.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "moe_eplb/table.hpp"
#include "planners.hpp"

namespace moe_eplb {
namespace {

constexpr const char* kPlan = "plan()";

void check_plan_request(const ExpertLoad& load, const PlanOptions& options) {
  const std::int64_t world_size = options.world_size;
  const std::int64_t slots_per_rank = options.slots_per_rank;
  const std::int64_t num_experts = load.num_experts;
  options.topology().check(kPlan);
  MOE_EPLB_CHECK(load.num_layers >= 1 && num_experts >= 1, kPlan,
                 ": load has no experts or no layers");
  MOE_EPLB_CHECK(load.num_source_ranks == 1 || load.num_source_ranks == world_size, kPlan,
                 ": load has ", load.num_source_ranks,
                 " source ranks per layer, expected world_size ", world_size, " or 1 (global)");
  MOE_EPLB_CHECK(static_cast<std::int64_t>(load.counts.size()) ==
                     load.num_layers * load.num_source_ranks * num_experts,
                 kPlan, ": load has ", load.counts.size(), " values, expected ",
                 load.num_layers * load.num_source_ranks * num_experts);
  const std::int64_t num_physical = world_size * slots_per_rank;
  MOE_EPLB_CHECK(num_physical >= num_experts, kPlan, ": world_size ", world_size,
                 " x slots_per_rank ", slots_per_rank, " = ", num_physical,
                 " physical slots cannot hold ", num_experts,
                 " experts (every expert needs a slot); use at least ",
                 (num_experts + world_size - 1) / world_size, " slots per rank");
  MOE_EPLB_CHECK(slots_per_rank <= num_experts, kPlan, ": slots_per_rank ", slots_per_rank,
                 " is more than the ", num_experts,
                 " experts, so some rank would hold two replicas of one expert; expected 1..",
                 num_experts);
  MOE_EPLB_CHECK(options.num_columns == 0 || options.num_columns >= 2, kPlan,
                 ": num_columns (F) must be 0 (fit) or at least 2, got ", options.num_columns);
  rule_info(options.rule);  // throws for a value outside the registry
  MOE_EPLB_CHECK(options.threads >= 0, kPlan,
                 ": threads must be 0 (one per hardware thread) or at least 1, got ",
                 options.threads);
  MOE_EPLB_CHECK(options.num_groups >= 1 && num_experts % options.num_groups == 0, kPlan,
                 ": num_groups must be at least 1 and divide the ", num_experts, " experts, got ",
                 options.num_groups);
  if (options.num_columns != 0 && options.algorithm == PlanAlgorithm::kRuleAware) {
    const std::int64_t max_count = std::min(world_size, options.num_columns - 1);
    MOE_EPLB_CHECK(
        num_experts * max_count >= num_physical, kPlan, ": num_columns ", options.num_columns,
        " allows at most ", max_count, " replicas per expert, ", num_experts * max_count,
        " in all, fewer than the ", num_physical,
        " physical slots; use num_columns >= ", (num_physical + num_experts - 1) / num_experts + 1);
  }
}

void check_windows(const std::vector<ExpertLoad>& windows) {
  MOE_EPLB_CHECK(!windows.empty(), kPlan, ": no load windows given; expected at least one");
  for (const ExpertLoad& window : windows) {
    MOE_EPLB_CHECK(static_cast<std::int64_t>(window.counts.size()) ==
                       window.num_layers * window.num_source_ranks * window.num_experts,
                   kPlan, ": a load window has ", window.counts.size(), " values, expected ",
                   window.num_layers * window.num_source_ranks * window.num_experts);
    check_load_values(window.counts.data(), window.num_layers, window.num_source_ranks,
                      window.num_experts, kPlan);
  }
  check_same_shape(windows, kPlan);
}

void check_migration_options(const ExpertLoad& load, const PlanOptions& options) {
  MOE_EPLB_CHECK(options.max_moves >= -1, kPlan,
                 ": max_moves must be -1 (no cap) or at least 0, got ", options.max_moves);
  MOE_EPLB_CHECK(std::isfinite(options.move_cost) && options.move_cost >= 0.0, kPlan,
                 ": move_cost must be a finite number >= 0, got ", options.move_cost);
  if (options.previous == nullptr) {
    MOE_EPLB_CHECK(options.max_moves == -1 && options.move_cost == 0.0, kPlan,
                   ": max_moves and move_cost need the previous table (--previous)");
    return;
  }
  MOE_EPLB_CHECK(
      options.algorithm == PlanAlgorithm::kRuleAware ||
          (options.max_moves == -1 && options.move_cost == 0.0),
      kPlan, ": max_moves and move_cost are only honoured by the moe-eplb (rule-aware) algorithm");
  const LayeredTable& previous = *options.previous;
  MOE_EPLB_CHECK(previous.num_layers == load.num_layers && previous.num_experts == load.num_experts,
                 kPlan, ": previous table has ", previous.num_layers, " layers of ",
                 previous.num_experts, " experts, but the load has ", load.num_layers,
                 " layers of ", load.num_experts, " experts");
  MOE_EPLB_CHECK(static_cast<std::int64_t>(previous.values.size()) ==
                     previous.num_layers * previous.num_experts * previous.num_columns,
                 kPlan, ": previous table has ", previous.values.size(), " values, expected ",
                 previous.num_layers * previous.num_experts * previous.num_columns);
  for (std::int64_t layer = 0; layer < previous.num_layers; ++layer) {
    check_table_for(options.topology(), previous.layer(layer), kPlan,
                    "previous table, layer " + std::to_string(layer));
  }
}

plan_detail::LayerRows plan_deepseek_layer(const plan_detail::LayerRequest& request,
                                           LayerPlanReport*) {
  return plan_detail::pack_rows(plan_detail::plan_deepseek(request));
}
plan_detail::LayerRows plan_flashlb_layer(const plan_detail::LayerRequest& request,
                                          LayerPlanReport*) {
  return plan_detail::pack_rows(plan_detail::plan_flashlb(request));
}

// The registry of planner algorithms (the CLI and Python read the names from it).
struct AlgorithmEntry {
  PlanAlgorithm algorithm;
  const char* name;
  plan_detail::LayerRows (*plan_layer)(const plan_detail::LayerRequest&, LayerPlanReport*);
};
constexpr AlgorithmEntry kAlgorithms[] = {
    {PlanAlgorithm::kRuleAware, "moe-eplb", plan_detail::plan_rule_aware},
    {PlanAlgorithm::kDeepSeek, "deepseek", plan_deepseek_layer},
    {PlanAlgorithm::kFlashLB, "flashlb", plan_flashlb_layer},
};

const AlgorithmEntry& entry_of(PlanAlgorithm algorithm) {
  for (const AlgorithmEntry& entry : kAlgorithms) {
    if (entry.algorithm == algorithm) return entry;
  }
  MOE_EPLB_FAIL(ErrorCode::kInvalidArgument, kPlan, ": unknown algorithm ",
                static_cast<int>(algorithm));
}

// The element-wise mean of the windows' layer `layer_idx`, written to `out`
// (the first window's layer itself when alone, without a copy).
const double* mean_layer(const std::vector<ExpertLoad>& windows, std::int64_t layer_idx,
                         std::vector<double>& out) {
  const ExpertLoad& first = windows.front();
  if (windows.size() == 1) return first.layer(layer_idx);
  const double* values = first.layer(layer_idx);
  out.assign(values, values + first.num_source_ranks * first.num_experts);
  for (std::size_t i = 1; i < windows.size(); ++i) {
    values = windows[i].layer(layer_idx);
    for (std::size_t v = 0; v < out.size(); ++v) out[v] += values[v];
  }
  const double scale = 1.0 / static_cast<double>(windows.size());
  for (double& value : out) value *= scale;
  return out.data();
}

// All layers' mean (mean_layer() of each).
ExpertLoad mean_load(const std::vector<ExpertLoad>& windows) {
  ExpertLoad mean = windows.front();
  std::vector<double> layer;
  for (std::int64_t layer_idx = 0; layer_idx < mean.num_layers; ++layer_idx) {
    const double* values = mean_layer(windows, layer_idx, layer);
    std::copy(values, values + mean.num_source_ranks * mean.num_experts, mean.layer(layer_idx));
  }
  return mean;
}

// Runs plan_layer(layer, scratch) for every layer on `threads` threads (0 =
// one per hardware thread), each taking the next layer not yet taken. An
// error stops the others taking more; the lowest layer's error is rethrown,
// the one a single thread would have met first.
template <typename PlanLayer>
void for_each_layer(std::int64_t num_layers, std::int64_t threads, PlanLayer& plan_layer) {
  if (threads == 0) threads = std::max<std::int64_t>(1, std::thread::hardware_concurrency());
  threads = std::min(threads, num_layers);
  if (threads <= 1) {
    std::vector<double> scratch;
    for (std::int64_t layer_idx = 0; layer_idx < num_layers; ++layer_idx) {
      plan_layer(layer_idx, scratch);
    }
    return;
  }
  std::atomic<std::int64_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(num_layers));
  const auto work = [&] {
    std::vector<double> scratch;
    for (std::int64_t layer_idx = next++; layer_idx < num_layers && !failed; layer_idx = next++) {
      try {
        plan_layer(layer_idx, scratch);
      } catch (...) {
        errors[static_cast<std::size_t>(layer_idx)] = std::current_exception();
        failed = true;
      }
    }
  };
  std::vector<std::thread> pool;
  for (std::int64_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& thread : pool) thread.join();
  for (const std::exception_ptr& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

}  // namespace

const std::vector<std::string>& plan_algorithm_names() {
  static const std::vector<std::string> kNames = [] {
    std::vector<std::string> names;
    for (const AlgorithmEntry& entry : kAlgorithms) names.emplace_back(entry.name);
    return names;
  }();
  return kNames;
}

const char* plan_algorithm_name(PlanAlgorithm algorithm) { return entry_of(algorithm).name; }

PlanAlgorithm parse_plan_algorithm(const std::string& name, const char* operation) {
  std::string names;
  for (const AlgorithmEntry& entry : kAlgorithms) {
    if (name == entry.name) return entry.algorithm;
    names += (names.empty() ? "\"" : ", \"") + std::string(entry.name) + "\"";
  }
  MOE_EPLB_FAIL(ErrorCode::kInvalidArgument, operation, ": algorithm must be one of ", names,
                ", got \"", name, "\"");
}

std::int64_t widest_plan_columns(std::int64_t num_experts, std::int64_t world_size,
                                 std::int64_t slots_per_rank, const char* operation) {
  MOE_EPLB_CHECK(world_size >= 1 && world_size <= INT32_MAX, operation,
                 ": world_size must be in 1..", INT32_MAX, ", got ", world_size);
  MOE_EPLB_CHECK(slots_per_rank >= 1 && slots_per_rank <= INT32_MAX / world_size, operation,
                 ": slots_per_rank must be in 1..", INT32_MAX / world_size, " for world_size ",
                 world_size, ", got ", slots_per_rank);
  const std::int64_t num_physical = world_size * slots_per_rank;
  MOE_EPLB_CHECK(num_experts >= slots_per_rank && num_experts <= num_physical, operation,
                 ": num_experts must be in slots_per_rank..world_size * slots_per_rank = ",
                 slots_per_rank, "..", num_physical, ", got ", num_experts);
  return 1 + std::min(world_size, num_physical - num_experts + 1);
}

std::vector<std::int64_t> live_replica_counts(std::int64_t world_size) {
  std::vector<std::int64_t> counts;
  for (std::int64_t count = 1; count <= world_size; ++count) {
    if (detail::rank_mode_count_is_live(count, world_size)) counts.push_back(count);
  }
  return counts;
}

namespace plan_detail {

LayerRows pack_rows(const ReplicaSlots& slots) {
  LayerRows packed;
  packed.num_experts = static_cast<std::int64_t>(slots.size());
  std::size_t size = 0;
  for (const auto& replicas : slots) size += 1 + replicas.size();
  packed.rows.reserve(size);
  for (const auto& replicas : slots) {
    MOE_EPLB_CHECK(!replicas.empty(), "make_layered_table(): an expert has no replica");
    packed.max_count =
        std::max<std::int64_t>(packed.max_count, static_cast<std::int64_t>(replicas.size()));
    packed.rows.push_back(static_cast<std::int32_t>(replicas.size()));
    packed.rows.insert(packed.rows.end(), replicas.begin(), replicas.end());
  }
  return packed;
}

ReplicaSlots unpack_rows(const LayerRows& rows) {
  ReplicaSlots slots(static_cast<std::size_t>(rows.num_experts));
  auto row = rows.rows.begin();
  for (auto& replicas : slots) {
    replicas.assign(row + 1, row + 1 + *row);
    row += 1 + *row;
  }
  return slots;
}

LayeredTable table_of_layers(const std::vector<LayerRows>& layers, std::int64_t num_columns) {
  LayeredTable table;
  table.num_layers = static_cast<std::int64_t>(layers.size());
  table.num_experts = layers.empty() ? 0 : layers[0].num_experts;
  std::int64_t max_count = 1;
  for (const LayerRows& layer : layers) {
    MOE_EPLB_CHECK(layer.num_experts == table.num_experts,
                   "make_layered_table(): layers have different expert counts ", layer.num_experts,
                   " and ", table.num_experts);
    max_count = std::max(max_count, layer.max_count);
  }
  table.num_columns = num_columns == 0 ? max_count + 1 : num_columns;
  MOE_EPLB_CHECK(max_count <= table.num_columns - 1, "make_layered_table(): num_columns ",
                 table.num_columns, " holds at most ", table.num_columns - 1,
                 " replicas, a plan uses ", max_count);
  table.values.assign(
      static_cast<std::size_t>(table.num_layers * table.num_experts * table.num_columns), -1);
  std::size_t row_start = 0;
  for (const LayerRows& layer : layers) {
    for (auto row = layer.rows.begin(); row != layer.rows.end(); row += 1 + *row) {
      std::copy(row, row + 1 + *row, table.values.begin() + static_cast<std::ptrdiff_t>(row_start));
      row_start += static_cast<std::size_t>(table.num_columns);
    }
  }
  return table;
}

}  // namespace plan_detail

LayeredTable make_layered_table(const std::vector<ReplicaSlots>& layers, std::int64_t num_columns) {
  std::vector<plan_detail::LayerRows> packed;
  packed.reserve(layers.size());
  for (const ReplicaSlots& layer : layers) packed.push_back(plan_detail::pack_rows(layer));
  return plan_detail::table_of_layers(packed, num_columns);
}

LayeredTable no_redundancy_table(std::int64_t num_experts, std::int64_t world_size) {
  MOE_EPLB_CHECK(num_experts >= 1 && world_size >= 1,
                 "no_redundancy_table(): num_experts and world_size must be positive, got ",
                 num_experts, " and ", world_size);
  const std::int64_t slots_per_rank = (num_experts + world_size - 1) / world_size;
  ReplicaSlots slots(static_cast<std::size_t>(num_experts));
  for (std::int64_t rank = 0; rank < world_size; ++rank) {
    const std::int64_t first = rank * num_experts / world_size;
    const std::int64_t last = (rank + 1) * num_experts / world_size;
    for (std::int64_t expert = first; expert < last; ++expert) {
      slots[static_cast<std::size_t>(expert)] = {
          static_cast<std::int32_t>(rank * slots_per_rank + expert - first)};
    }
  }
  return make_layered_table({slots}, 2);
}

LayeredTable plan(const ExpertLoad& load, const PlanOptions& options) {
  return plan(std::vector<ExpertLoad>{load}, options, nullptr);
}

LayeredTable plan(const std::vector<ExpertLoad>& windows, const PlanOptions& options,
                  PlanReport* report) {
  check_windows(windows);
  // Every window has the first one's shape (checked): the checks read it.
  check_plan_request(windows.front(), options);
  check_migration_options(windows.front(), options);
  const bool global_only = options.algorithm == PlanAlgorithm::kDeepSeek;
  std::vector<ExpertLoad> global_windows;
  if (global_only && windows.front().per_rank()) {
    for (const ExpertLoad& window : windows) global_windows.push_back(global_load(window));
  }
  const std::vector<ExpertLoad>& window_input = global_windows.empty() ? windows : global_windows;
  // DeepSeek's algorithm plans on global counts and has no count cap. The
  // planners read each layer's mean of the windows (computed layer by layer).
  const ExpertLoad global =
      global_only && windows.front().per_rank() ? global_load(mean_load(windows)) : ExpertLoad{};
  const ExpertLoad& input = global_only && windows.front().per_rank() ? global : windows.front();

  plan_detail::LayerRequest base;
  base.num_source_ranks = input.num_source_ranks;
  base.num_experts = input.num_experts;
  base.world_size = options.world_size;
  base.slots_per_rank = options.slots_per_rank;
  base.ranks_per_node = options.ranks_per_node;
  base.max_count = options.num_columns == 0 ? options.world_size
                                            : std::min(options.world_size, options.num_columns - 1);
  base.rule = options.rule;
  base.num_groups = options.num_groups;
  base.max_moves = options.max_moves;
  base.move_cost = options.move_cost;

  const std::int64_t num_layers = input.num_layers;
  if (report != nullptr) report->layers.assign(static_cast<std::size_t>(num_layers), {});
  std::vector<plan_detail::LayerRows> layers(static_cast<std::size_t>(num_layers));
  // One layer, from its windows alone: the layers share nothing, so the
  // threads below take them in any order and the table stays the same.
  const auto plan_layer = [&](std::int64_t layer_idx, std::vector<double>& layer_mean) {
    plan_detail::LayerRequest request = base;
    request.counts = global_only && windows.front().per_rank()
                         ? input.layer(layer_idx)
                         : mean_layer(window_input, layer_idx, layer_mean);
    request.layer_idx = layer_idx;
    for (const ExpertLoad& window : window_input)
      request.windows.push_back(window.layer(layer_idx));
    request.previous =
        options.previous != nullptr ? options.previous->layer(layer_idx) : TableView{};
    LayerPlanReport* layer_report =
        report != nullptr ? &report->layers[static_cast<std::size_t>(layer_idx)] : nullptr;
    plan_detail::LayerRows& rows = layers[static_cast<std::size_t>(layer_idx)];
    rows = entry_of(options.algorithm).plan_layer(request, layer_report);
    // Baselines may exceed the replica cap; the rule-aware planner respects it.
    MOE_EPLB_CHECK(options.num_columns == 0 || rows.max_count <= options.num_columns - 1, kPlan,
                   ": num_columns ", options.num_columns, " holds at most ",
                   options.num_columns - 1,
                   " replicas, but the baseline algorithm gives an expert of layer ", layer_idx,
                   " ", rows.max_count, " replicas; use num_columns 0 (fit)");
  };
  for_each_layer(num_layers, options.threads, plan_layer);
  LayeredTable table = plan_detail::table_of_layers(layers, options.num_columns);
  if (report != nullptr && options.previous != nullptr) {
    const Topology topology = options.topology();
    for (std::int64_t layer_idx = 0; layer_idx < table.num_layers; ++layer_idx) {
      report->layers[static_cast<std::size_t>(layer_idx)].slots_changed =
          diff_tables(options.previous->layer(layer_idx), table.layer(layer_idx), topology)
              .slots_rerouted;
    }
  }
  return table;
}

}  // namespace moe_eplb

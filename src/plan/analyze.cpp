#include "moe_eplb/plan/analyze.hpp"

#include <algorithm>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/topology.hpp"
#include "moe_eplb/table.hpp"
#include "routing.hpp"

namespace moe_eplb {
namespace {

void check_options(const char* operation, const TableView& table, const AnalyzeOptions& options) {
  options.topology().check(operation);
  rule_info(options.rule);  // throws for a value outside the registry
  // Refuse what the operator could not route; slots claimed twice (or twice
  // in a row) route fine and are what the report is for.
  check_table_for(options.topology(), table, operation, "table", TableUse::kRouting);
}

// Which replica each source rank's tokens of one expert go to under a rule
// that picks per source rank; empty under an even-split rule.
class SourceRouting {
 public:
  SourceRouting(const TableView& table, const AnalyzeOptions& options)
      : table_(table),
        topology_(options.topology()),
        per_source_(rule_info(options.rule).split != RuleSplit::kEven),
        rule_(options.rule),
        slots_(static_cast<std::size_t>(table.num_columns)),
        replicas_(static_cast<std::size_t>(options.world_size)) {}

  bool per_source() const { return per_source_; }
  // Routes expert e's row; replica(source) is then valid until the next call.
  void route(std::int64_t e) {
    if (!per_source_) return;
    const std::int64_t count = table_.at(e, 0);
    for (std::int64_t j = 0; j < count; ++j) slots_[j] = table_.at(e, j + 1);
    source_replicas(rule_, slots_.data(), count, topology_, replicas_.data());
  }
  std::int64_t replica(std::int64_t source) const { return replicas_[source]; }

 private:
  const TableView& table_;
  Topology topology_;
  bool per_source_;
  ReplicaRule rule_;
  std::vector<std::int32_t> slots_;
  std::vector<std::int32_t> replicas_;
};

// Report skeleton with the table's structure: replica, dead, shared-rank,
// claimed-twice and unused counts.
BalanceReport describe_table(const TableView& table, const AnalyzeOptions& options) {
  BalanceReport report;
  report.rule = options.rule;
  report.world_size = options.world_size;
  report.slots_per_rank = options.slots_per_rank;
  const std::int64_t num_physical = options.world_size * options.slots_per_rank;
  report.slot_load.assign(static_cast<std::size_t>(num_physical), 0.0);
  report.rank_load.assign(static_cast<std::size_t>(options.world_size), 0.0);
  std::vector<std::int64_t> claims(static_cast<std::size_t>(num_physical), 0);
  std::vector<std::int64_t> ranks;
  std::vector<std::uint8_t> selected(static_cast<std::size_t>(table.num_columns), 0);
  SourceRouting routing(table, options);
  for (std::int64_t e = 0; e < table.num_experts; ++e) {
    const std::int64_t count = table.at(e, 0);
    report.num_replicas += count;
    // A replica is dead when no source rank's tokens can reach it.
    std::fill(selected.begin(), selected.end(), routing.per_source() ? 0 : 1);
    routing.route(e);
    for (std::int64_t source = 0; routing.per_source() && source < options.world_size; ++source) {
      selected[routing.replica(source)] = 1;
    }
    ranks.clear();
    for (std::int64_t column = 1; column <= count; ++column) {
      const std::int32_t slot = table.at(e, column);
      ++claims[slot];
      ranks.push_back(slot / options.slots_per_rank);
      if (selected[column - 1] == 0) ++report.dead_replicas;
    }
    std::sort(ranks.begin(), ranks.end());
    report.replicas_sharing_rank +=
        static_cast<std::int64_t>(ranks.end() - std::unique(ranks.begin(), ranks.end()));
  }
  for (std::int64_t claim : claims) {
    if (claim == 0) ++report.unused_slots;
    if (claim > 1) ++report.slots_claimed_twice;
  }
  return report;
}

// Totals, ratios and idle replicas once slot_load and the local sums are in.
// A selectable replica that got no tokens is idle.
void finish(BalanceReport& report, const TableView& table, double local_rank, double local_node,
            const AnalyzeOptions& options) {
  const std::int64_t slots_per_rank = options.slots_per_rank;
  for (std::size_t p = 0; p < report.slot_load.size(); ++p) {
    report.rank_load[p / static_cast<std::size_t>(slots_per_rank)] += report.slot_load[p];
  }
  for (double load : report.rank_load) {
    report.total_load += load;
    report.max_rank_load = std::max(report.max_rank_load, load);
  }
  report.mean_rank_load = report.total_load / static_cast<double>(options.world_size);
  if (report.total_load > 0) {
    report.max_over_mean = report.max_rank_load / report.mean_rank_load;
    report.imbalance = report.max_over_mean - 1.0;
    report.local_rank_share = local_rank / report.total_load;
    if (options.ranks_per_node > 0) report.local_node_share = local_node / report.total_load;
  } else if (options.ranks_per_node > 0) {
    report.local_node_share = 0.0;
  }
  std::int64_t unloaded = 0;
  for (std::int64_t e = 0; e < table.num_experts; ++e) {
    const std::int64_t count = table.at(e, 0);
    for (std::int64_t column = 1; column <= count; ++column) {
      if (report.slot_load[table.at(e, column)] == 0) ++unloaded;
    }
  }
  report.idle_replicas = unloaded - report.dead_replicas;
}

}  // namespace

BalanceReport analyze_load(const TableView& table, const double* counts,
                           std::int64_t num_source_ranks, const AnalyzeOptions& options,
                           const char* operation) {
  check_options(operation, table, options);
  const std::int64_t world_size = options.world_size;
  MOE_EPLB_CHECK(num_source_ranks == 1 || num_source_ranks == world_size, operation, ": load has ",
                 num_source_ranks, " source ranks, expected world_size ", world_size,
                 " or 1 (global counts)");
  check_load_values(counts, 1, num_source_ranks, table.num_experts, operation);
  BalanceReport report = describe_table(table, options);
  const std::int64_t num_experts = table.num_experts;
  const std::int64_t slots_per_rank = options.slots_per_rank;
  const std::int64_t ranks_per_node = options.ranks_per_node;
  const auto same_node = [&](std::int64_t a, std::int64_t b) {
    return ranks_per_node > 0 && a / ranks_per_node == b / ranks_per_node;
  };
  double local_rank = 0.0, local_node = 0.0;
  SourceRouting routing(table, options);
  for (std::int64_t e = 0; e < num_experts; ++e) {
    const std::int64_t count = table.at(e, 0);
    routing.route(e);
    for (std::int64_t source = 0; source < world_size; ++source) {
      const double tokens = num_source_ranks == 1 ? counts[e] / static_cast<double>(world_size)
                                                  : counts[source * num_experts + e];
      if (tokens == 0) continue;
      // A per-source rule: all of it to one replica; an even split: a part to each.
      const bool one = routing.per_source();
      const std::int64_t first = one ? routing.replica(source) + 1 : 1;
      const std::int64_t last = one ? first : count;
      const double part = one ? tokens : tokens / static_cast<double>(count);
      for (std::int64_t column = first; column <= last; ++column) {
        const std::int32_t slot = table.at(e, column);
        const std::int64_t rank = slot / slots_per_rank;
        report.slot_load[slot] += part;
        if (rank == source) local_rank += part;
        if (same_node(rank, source)) local_node += part;
      }
    }
  }
  finish(report, table, local_rank, local_node, options);
  return report;
}

BalanceReport analyze_trace(const TableView& table, const RoutingTrace& trace,
                            const AnalyzeOptions& options) {
  constexpr const char* kOperation = "analyze_trace()";
  check_options(kOperation, table, options);
  MOE_EPLB_CHECK(trace.world_size == options.world_size, kOperation, ": trace has ",
                 trace.world_size, " source ranks, expected world_size ", options.world_size);
  const std::int64_t balance_mode = rule_info(options.rule).balance_mode;
  if (balance_mode < 0) {
    // Another engine's rule: route the trace's per-source-rank counts.
    LoadRecorder recorder(1, trace.world_size, table.num_experts);
    recorder.record(0, trace);
    return analyze_load(table, recorder.load().layer(0), trace.world_size, options);
  }
  BalanceReport report = describe_table(table, options);
  const std::int64_t num_physical = options.world_size * options.slots_per_rank;
  const std::int64_t slots_per_rank = options.slots_per_rank;
  const std::int64_t ranks_per_node = options.ranks_per_node;

  UpdateExpertParams params;
  params.world_size = options.world_size;
  params.balance_mode = static_cast<BalanceMode>(balance_mode);
  params.num_physical_experts = num_physical;
  plan_detail::BatchRouter router;
  std::vector<std::int64_t> counts(static_cast<std::size_t>(num_physical));
  double local_rank = 0.0, local_node = 0.0;
  for (std::int64_t source = 0; source < trace.world_size; ++source) {
    params.local_rank_id = source;
    std::fill(counts.begin(), counts.end(), 0);
    router.route(table, params, trace.rank_ids(source), nullptr, trace.rank_mask(source),
                 counts.data(), detail::concat(kOperation, ": source rank ", source, ": "));
    for (std::int64_t slot = 0; slot < num_physical; ++slot) {
      const auto tokens = static_cast<double>(counts[slot]);
      const std::int64_t rank = slot / slots_per_rank;
      report.slot_load[slot] += tokens;
      if (rank == source) local_rank += tokens;
      if (ranks_per_node > 0 && rank / ranks_per_node == source / ranks_per_node) {
        local_node += tokens;
      }
    }
  }
  finish(report, table, local_rank, local_node, options);
  return report;
}

LayersBalance analyze_layers(const LayeredTable& table, const ExpertLoad& load,
                             const AnalyzeOptions& options, const char* operation) {
  MOE_EPLB_CHECK(table.num_layers == 1 || table.num_layers == load.num_layers, operation,
                 ": the table has ", table.num_layers, " layers, the load ", load.num_layers,
                 "; expected one table layer or one per load layer");
  LayersBalance balance;
  for (std::int64_t layer = 0; layer < load.num_layers; ++layer) {
    const double ratio = analyze_load(table.layer(table.num_layers == 1 ? 0 : layer),
                                      load.layer(layer), load.num_source_ranks, options, operation)
                             .max_over_mean;
    balance.max_over_mean.push_back(ratio);
    balance.mean += ratio;
    balance.worst = std::max(balance.worst, ratio);
  }
  if (load.num_layers > 0) balance.mean /= static_cast<double>(load.num_layers);
  return balance;
}

}  // namespace moe_eplb

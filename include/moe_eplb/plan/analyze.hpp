// The analyzer / simulator: how an eplb_table balances real traffic when the
// operator routes it, rank by rank.
//
// Traffic is routed by a replica rule (plan/rule.hpp): the operator's modes
// (ascend-rank, ascend-token, vllm) or another engine's rule.
// analyze_trace() is the brute force for the operator's modes: every source
// rank's tokens go through update_expert() with local_rank_id = that rank
// and the operator's own load counters. analyze_load() computes the routing
// arithmetically from per-source-rank statistics: exact for the rules that
// pick a replica per source rank (ascend-rank, sglang-static), and for the
// others the expected even split (each rank's tokens for e spread evenly
// over its c replicas). analyze_trace() routes the other engines' rules the
// same way from the trace's per-source-rank counts.
//
// Both allocate their report (O(W * S)) and are deterministic and
// thread-safe (no shared state).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe_eplb/plan/load.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/plan/rule.hpp"
#include "moe_eplb/plan/topology.hpp"
#include "moe_eplb/types.hpp"

namespace moe_eplb {

struct AnalyzeOptions {
  std::int64_t world_size = 0;      // W
  std::int64_t slots_per_rank = 0;  // S: slot p lives on rank p / S
  // Ranks per node; 0 = one node (node locality then not reported). The
  // sglang-static rule reads it.
  std::int64_t ranks_per_node = 0;
  ReplicaRule rule = ReplicaRule::kAscendRank;

  Topology topology() const { return {world_size, slots_per_rank, ranks_per_node}; }
};

struct BalanceReport {
  ReplicaRule rule = ReplicaRule::kAscendRank;
  std::int64_t world_size = 0;
  std::int64_t slots_per_rank = 0;
  std::vector<double> slot_load;  // (W * S,) tokens per slot
  std::vector<double> rank_load;  // (W,) tokens per rank (sum of its slots)
  double total_load = 0.0;
  double mean_rank_load = 0.0;
  double max_rank_load = 0.0;
  double max_over_mean = 1.0;              // max / mean per-rank load; 1.0 with no traffic
  double imbalance = 0.0;                  // (max - mean) / mean
  std::int64_t num_replicas = 0;           // sum of the rows' counts
  std::int64_t dead_replicas = 0;          // the rule can never select them
  std::int64_t idle_replicas = 0;          // selectable, but got no tokens here
  std::int64_t replicas_sharing_rank = 0;  // replicas on a rank that holds one of e already
  std::int64_t slots_claimed_twice = 0;    // slots named by more than one row
  std::int64_t unused_slots = 0;           // slots no row names
  double local_rank_share = 0.0;           // share of tokens whose slot is on their source rank
  double local_node_share = -1.0;          // ... on their source node; -1 when ranks_per_node is 0
};

// Routes per-source-rank statistics `counts` ((num_source_ranks, E), with
// num_source_ranks W, or 1 for global counts spread evenly over the ranks)
// through `eplb_table` arithmetically. Throws moe_eplb::Error starting with
// `operation`: kInvalidTable when the operator could not route the table
// (bad counts or slots; slots claimed twice are reported, not refused),
// kInvalidArgument for sizes and for a negative or non-finite count (as
// plan() refuses them).
BalanceReport analyze_load(const TableView& eplb_table, const double* counts,
                           std::int64_t num_source_ranks, const AnalyzeOptions& options,
                           const char* operation = "analyze_load()");

// Routes every rank of `trace` through update_expert() (rank r with
// local_rank_id = r), honouring its active_mask. Errors as analyze_load(),
// plus the operator's own for an expert id outside [0, E).
BalanceReport analyze_trace(const TableView& eplb_table, const RoutingTrace& trace,
                            const AnalyzeOptions& options);

// max/mean per-rank load of every layer of `load` routed through `table`:
// its layer l, or its only layer for every layer of the load. `mean` and
// `worst` summarise them. Errors as analyze_load(), plus a table whose layer
// count is neither 1 nor the load's.
struct LayersBalance {
  std::vector<double> max_over_mean;  // (L,)
  double mean = 0.0;
  double worst = 0.0;
};
LayersBalance analyze_layers(const LayeredTable& table, const ExpertLoad& load,
                             const AnalyzeOptions& options,
                             const char* operation = "analyze_layers()");

}  // namespace moe_eplb

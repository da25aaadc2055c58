// The analyzer / simulator: how an eplb_table balances real traffic when the
// operator routes it, rank by rank.
//
// analyze_trace() is the brute force: every source rank's tokens go through
// update_expert() with local_rank_id = that rank and the operator's own load
// counters. analyze_load() computes the same routing arithmetically from
// per-source-rank statistics: exact in rank mode, and in token mode the
// expected even split (each rank's tokens for e spread evenly over its c
// replicas).
//
// Both allocate their report (O(W * S)) and are deterministic and
// thread-safe (no shared state).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe_eplb/plan/load.hpp"
#include "moe_eplb/types.hpp"

namespace moe_eplb {

struct AnalyzeOptions {
  std::int64_t world_size = 0;      // W
  std::int64_t slots_per_rank = 0;  // S: slot p lives on rank p / S
  std::int64_t ranks_per_node = 0;  // 0 = unknown (node locality not reported)
  BalanceMode balance_mode = BalanceMode::kByRank;
};

struct BalanceReport {
  BalanceMode balance_mode = BalanceMode::kByRank;
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
  std::int64_t dead_replicas = 0;          // the mode can never select them
  std::int64_t idle_replicas = 0;          // selectable, but got no tokens here
  std::int64_t replicas_sharing_rank = 0;  // replicas on a rank that holds one of e already
  std::int64_t slots_claimed_twice = 0;    // slots named by more than one row
  std::int64_t unused_slots = 0;           // slots no row names
  double local_rank_share = 0.0;           // share of tokens whose slot is on their source rank
  double local_node_share = -1.0;          // ... on their source node; -1 when ranks_per_node is 0
};

// Routes per-source-rank statistics `counts` ((num_source_ranks, E), with
// num_source_ranks W, or 1 for global counts spread evenly over the ranks)
// through `eplb_table` arithmetically. Throws moe_eplb::Error: kInvalidTable
// when the operator could not route the table (bad counts or slots;
// slots claimed twice are reported, not refused), kInvalidArgument for sizes.
BalanceReport analyze_load(const TableView& eplb_table, const double* counts,
                           std::int64_t num_source_ranks, const AnalyzeOptions& options);

// Routes every rank of `trace` through update_expert() (rank r with
// local_rank_id = r), honouring its active_mask. Errors as analyze_load(),
// plus the operator's own for an expert id outside [0, E).
BalanceReport analyze_trace(const TableView& eplb_table, const RoutingTrace& trace,
                            const AnalyzeOptions& options);

}  // namespace moe_eplb

// Replaying a sequence of load windows under rebalancing policies: after
// window t (t = 0, every, 2 * every, ...) each policy that rebalances plans
// on the last `history` windows, and the table in force is always scored on
// the *next* window, so no policy sees the traffic it is scored on. Window 0's
// plan is every policy's first table (no moves counted). A pure function of
// its inputs, apart from the planning times it measures: `moe-eplb replay`
// prints it, bench/planner/window_bench.cpp summarises it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "moe_eplb/plan/load.hpp"
#include "moe_eplb/plan/planner.hpp"

namespace moe_eplb {

// One rebalancing policy.
struct ReplayPolicy {
  std::string name;         // short, for columns and JSON keys: "moe-eplb-capped"
  std::string description;  // one line for a legend
  PlanAlgorithm algorithm = PlanAlgorithm::kRuleAware;
  bool rebalances = true;        // false: keeps window 0's plan
  bool migration_aware = false;  // plans against the table in force
  bool capped = false;           // and, for kRuleAware, at ReplayOptions::max_moves
};

// never (moe-eplb planned once on window 0), deepseek (from scratch), flashlb
// (migration-aware as published), moe-eplb (from scratch) and
// moe-eplb-capped (migration-aware at `max_moves` per layer).
std::vector<ReplayPolicy> default_replay_policies(std::int64_t max_moves);

struct ReplayOptions {
  Topology topology;
  ReplicaRule rule = ReplicaRule::kAscendRank;  // planned for and scored with
  std::int64_t every = 1;                       // rebalance after every N windows (>= 1)
  std::int64_t history = 4;                     // plan on the last H windows (>= 1)
  std::int64_t max_moves = -1;                  // for capped policies; -1 = no cap
  // Called after each scored window with (scored, to score); may be empty.
  std::function<void(std::int64_t, std::int64_t)> progress;
};

// What happened to one policy, per scored window (windows 1 .. N-1).
struct PolicyReplay {
  ReplayPolicy policy;
  std::vector<double> balance;        // max/mean per-rank load, mean over layers
  std::vector<double> slots_changed;  // at the rebalance before the window; NaN: none
  std::vector<double> received;       // experts received over the network, same
  std::vector<double> plan_seconds;   // per rebalance after window 0
  LayeredTable table;                 // in force after the last window
};

struct ReplayResult {
  std::vector<std::int64_t> scored_windows;  // 1 .. N-1
  std::vector<bool> rebalanced;              // a rebalance came before the window
  std::vector<PolicyReplay> policies;        // in the order given
};

// Throws moe_eplb::Error (kInvalidArgument, starting "replay()") for fewer
// than 2 windows, windows of different shapes, every / history < 1, a bad
// topology, and what plan() and the analyzer refuse.
ReplayResult replay(const std::vector<ExpertLoad>& windows, const ReplayOptions& options,
                    const std::vector<ReplayPolicy>& policies);

// Mean and worst of a finite-valued series, NaN entries left out (NaN when
// none is left).
double mean_of(const std::vector<double>& values);
double max_of(const std::vector<double>& values);

}  // namespace moe_eplb

// The replica rules of the engines: how each one splits a logical expert's
// tokens over its replicas. The analyzer, the simulator, replay and the
// planner take a rule, so that users predict (and plan for) the balance
// their own engine will see.
//
// The operator's own modes are rules here too (ascend-rank, ascend-token and
// vllm are balance_mode 0, 1 and 2); their formula lives once, in
// detail/route.hpp, and this file reads it. The other rules are modelled
// from the engines' sources (see docs/SPEC.md, "Replica rules"):
//
//   name            split        what the engine does
//   ascend-rank     by source    replica 1 + rank / ceil(W / c): rank groups
//   ascend-token    even         replica 1 + token % c
//   vllm            even         replica 1 + hash(token) % c, the same on every rank
//   sglang-static   nearest      each rank sends all its tokens of an expert to one
//                                replica: on its own rank, else the first on its
//                                node, else a fair share of the replicas
//   sglang-dynamic  even         a random replica per token
//   trtllm          even         round-robin within blocks of 1024 choices
//
// "even" rules split every source rank's tokens evenly over the replicas in
// expectation; that is how the analyzer routes them and how the planner
// plans for them (token mode).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe_eplb/plan/topology.hpp"
#include "moe_eplb/types.hpp"

namespace moe_eplb {

enum class ReplicaRule : std::uint8_t {
  kAscendRank,
  kAscendToken,
  kVllm,
  kSglangStatic,
  kSglangDynamic,
  kTrtllm,
};

// How a rule splits an expert's tokens over its c replicas.
enum class RuleSplit : std::uint8_t {
  // Replica j receives all tokens of source-rank group j (rank mode).
  kSourceGroups,
  // Each replica receives 1 / c of every source rank's tokens (in expectation).
  kEven,
  // Each source rank sends all its tokens to its nearest replica: on its own
  // rank, else the first (in row order) on its node, else a fair share.
  kNearest,
};

struct RuleInfo {
  ReplicaRule rule;
  const char* name;  // "ascend-rank", ...
  RuleSplit split;
  std::int64_t balance_mode;  // the operator's mode that implements it, or -1
  const char* description;    // one line, for --help and errors
};

// The registry: every rule, in enum order.
const std::vector<RuleInfo>& replica_rules();
const RuleInfo& rule_info(ReplicaRule rule);
// The rule named `name`; throws moe_eplb::Error (kInvalidArgument) starting
// with `operation` and listing the names otherwise.
ReplicaRule parse_replica_rule(const std::string& name, const char* operation);
// The rule the operator's balance_mode implements (throws for other values).
ReplicaRule rule_of_balance_mode(BalanceMode balance_mode,
                                 const char* operation = "rule_of_balance_mode()");

// For rules that are not kEven: writes, for each of world_size source ranks,
// the 0-based replica of the row [slot of replica 0, ..., slot of replica
// count-1] that receives that rank's tokens of the expert. Slots must lie in
// [0, world_size * slots_per_rank), count >= 1. Deterministic.
// sglang-static's fair share: SGLang draws it with a seeded random shuffle;
// here the i-th rank left over (ascending) takes replica i % count, which
// gives every replica the same number of ranks as SGLang does (up to which
// replicas take the remainder).
void source_replicas(ReplicaRule rule, const std::int32_t* replica_slots, std::int64_t count,
                     const Topology& topology, std::int32_t* replica_of_source);

// The number of source ranks (of world_size) replica `replica` (0-based) of
// a `count`-replica expert receives when the ranks send alike, under the
// placement the planner aims for: kSourceGroups its rank group; kEven
// world_size / count; kNearest the replicas spread over distinct nodes
// (replica j on node j % N of N nodes, the first replica of a node its
// head): a node's head serves its node's ranks that hold no replica, every
// replica its own rank, and ranks on nodes without a replica split evenly.
double expected_sources_served(ReplicaRule rule, std::int64_t count, std::int64_t replica,
                               const Topology& topology);

}  // namespace moe_eplb

// Converters between the Ascend eplb_table and the layouts other engines use,
// one MoE layer at a time. The pivot is ReplicaSlots (plan.hpp):
// replicas[e][j] = physical slot of replica j + 1 of logical expert e.
//
//   Ascend       eplb_table (E, F) int32, row e = [c, p_1 .. p_c, unused ...]
//   DeepSeek /   phy2log (N,): logical expert of each physical slot (-1: unused)
//   vLLM         log2phy (E, R): slots of each expert, padded with -1; logcnt (E,)
//   SGLang       logical_to_all_physical_map (E, R): as log2phy, padded with
//                -1, the count implied by the leading non-negative entries
//
// Replica order matters to the operator (rank mode sends source-rank group j
// to replica j; token mode sends token b to replica b % c). log2phy and the
// SGLang map keep it; phy2log alone cannot, so slots_from_phy2log() lists each
// expert's slots in ascending order, and slots_to_phy2log() refuses replicas
// in any other order unless told to sort them.
//
// Every function checks its input and throws moe_eplb::Error
// (kInvalidArgument) naming the position and value of the first problem.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/types.hpp"

namespace moe_eplb {

// The rows of a table (which must pass validate_table() for num_physical_experts
// slots, world_size unknown). num_physical_experts = -1 infers it.
ReplicaSlots slots_from_table(const TableView& eplb_table, std::int64_t num_physical_experts = -1);

// (num_physical_experts,) phy2log; -1 marks a slot no expert uses. Throws when a slot
// is out of range or claimed twice, and, unless sort_replicas, when an
// expert's replicas are not in ascending slot order (phy2log would drop that
// order, and with it the routing).
std::vector<std::int64_t> slots_to_phy2log(const ReplicaSlots& slots,
                                           std::int64_t num_physical_experts,
                                           bool sort_replicas = false);

// (E, max_replicas) log2phy padded with -1, and logcnt (E,). max_replicas = 0
// means the largest count. This is also SGLang's logical_to_all_physical_map.
struct Log2Phy {
  std::int64_t num_experts = 0;
  std::int64_t max_replicas = 0;
  std::vector<std::int64_t> log2phy;
  std::vector<std::int64_t> logcnt;
};
Log2Phy slots_to_log2phy(const ReplicaSlots& slots, std::int64_t max_replicas = 0);

// The first expert whose replicas are not in ascending slot order, or -1.
std::int64_t first_unordered_expert(const ReplicaSlots& slots);
// "expert 3 has replica 1 in slot 7 and replica 2 in slot 2" for that expert.
std::string describe_replica_order(const ReplicaSlots& slots, std::int64_t expert);

// From phy2log (num_physical_experts,) with values in [-1, num_experts); every expert
// needs at least one slot. Replicas come out in ascending slot order.
ReplicaSlots slots_from_phy2log(const std::int64_t* phy2log, std::int64_t num_physical_experts,
                                std::int64_t num_experts);

// From log2phy (num_experts, max_replicas) and logcnt, or with logcnt =
// nullptr from SGLang's map (count = the leading non-negative entries).
// Entries past the count must be -1; counts in 1..max_replicas; every slot
// named once (within a row and across rows).
ReplicaSlots slots_from_log2phy(const std::int64_t* log2phy, std::int64_t num_experts,
                                std::int64_t max_replicas, const std::int64_t* logcnt);

}  // namespace moe_eplb

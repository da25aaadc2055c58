// Where the physical slots live, and "a table valid for these slots": checked
// here once for every function of the planner layer that takes them.
#pragma once

#include <cstdint>
#include <string>

#include "moe_eplb/types.hpp"

namespace moe_eplb {

// world_size ranks of slots_per_rank slots each: physical slot p lives on
// rank p / slots_per_rank; ranks_per_node consecutive ranks share a node.
struct Topology {
  std::int64_t world_size = 0;      // W
  std::int64_t slots_per_rank = 0;  // S
  std::int64_t ranks_per_node = 0;  // 0 = one node (or unknown); else divides W

  std::int64_t num_slots() const { return world_size * slots_per_rank; }
  std::int64_t rank_of(std::int64_t slot) const { return slot / slots_per_rank; }
  // The node of `rank`; 0 for every rank when ranks_per_node is 0.
  std::int64_t node_of(std::int64_t rank) const {
    return ranks_per_node > 0 ? rank / ranks_per_node : 0;
  }

  // Throws moe_eplb::Error (kInvalidArgument) starting with `operation`
  // unless world_size is in 1..INT32_MAX, slots_per_rank in 1..INT32_MAX /
  // world_size (every slot id fits int32), and ranks_per_node 0 or a divisor
  // of world_size.
  void check(const char* operation) const;
};

// What a table has to be for a function that takes it.
enum class TableUse : std::uint8_t {
  // A placement: validate_table() finds no error for num_slots() slots on
  // world_size ranks (counts in range, slots in range, every slot named at
  // most once). Migration plans, diffs and replanning need this.
  kPlacement,
  // Routable: the operator can route it (counts and slots in range); slots
  // named twice are allowed, as the analyzer reports them.
  kRouting,
};

// Throws moe_eplb::Error (kInvalidTable) unless `table` is valid for
// `topology` as `use` says: "<operation>: <argument> is not a valid table for
// W ranks x S slots:" and the first problems. kInvalidArgument for a view
// without data. `argument` is the caller's name for the table ("old_table",
// "--from old.npy, layer 2").
void check_table_for(const Topology& topology, const TableView& table, const char* operation,
                     const std::string& argument, TableUse use = TableUse::kPlacement);

}  // namespace moe_eplb

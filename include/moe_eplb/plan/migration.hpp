// From one table to the next: what changes, and how the expert weights move.
//
// A physical slot p lives on rank p / slots_per_rank. A slot is *changed*
// when the logical expert at p differs between the two tables (a slot that no
// row names holds no expert); a row is changed when its count or its replicas'
// slots, in order, differ (the order is the routing: replica j serves
// source-rank group j in rank mode and tokens b with b mod c = j - 1 in token
// mode). Two tables route every token alike exactly when no row changed. A
// slot is *rerouted* when its expert or its replica position in the expert's
// row differs: the traffic it serves changes, whether or not weights move
// (the planner's max_moves counts these). Tables are (E, F) eplb_tables valid
// for world_size * slots_per_rank slots; the two may differ in F, not in E.
#pragma once

#include <cstdint>
#include <vector>

#include "moe_eplb/plan/topology.hpp"
#include "moe_eplb/types.hpp"

namespace moe_eplb {

// (W * S,) logical expert of every physical slot, -1 where no row names it.
std::vector<std::int32_t> slot_experts(const TableView& table, const Topology& topology);

struct TableDiff {
  std::int64_t slots_changed = 0;               // slots whose expert differs
  std::int64_t rows_changed = 0;                // rows whose count or replica list (in order)
                                                // differs: 0 iff both tables route alike
  std::int64_t slots_rerouted = 0;              // slots whose (expert, position) differs
  std::int64_t experts_received = 0;            // sum over ranks of experts new to the rank
  std::vector<std::int64_t> received_per_rank;  // (W,) distinct experts new to each rank
};
TableDiff diff_tables(const TableView& from, const TableView& to, const Topology& topology);

// What destination slot p (its content under the new table) is made from.
enum class SlotAction : std::int8_t {
  kKeep = 0,          // p already holds it (or p is unused in the new table)
  kCopyLocal = 1,     // copy the *old* content of slot `source_slot` of this rank
  kReceive = 2,       // receive from (source_rank, source_slot)'s old content
  kCopyReceived = 3,  // copy the *new* content of `source_slot` of this rank,
                      // a slot that receives the same expert
};
struct SlotMove {
  SlotAction action = SlotAction::kKeep;
  std::int32_t source_rank = 0;  // == this rank except for kReceive
  std::int32_t source_slot = 0;  // local slot index in [0, S) on source_rank
};
struct MigrationPlan {
  Topology topology;
  std::vector<SlotMove> moves;  // (W * S,) by destination physical slot
  std::int64_t kept = 0;
  std::int64_t local_copies = 0;                // kCopyLocal + kCopyReceived
  std::int64_t received = 0;                    // kReceive: one per (rank, expert new to it)
  std::vector<std::int64_t> received_per_rank;  // (W,)
  std::vector<std::int64_t> sent_per_rank;      // (W,) sends each rank serves
  std::int64_t cross_node = 0;                  // receives from another node
};
// Rules: a rank receives each expert at most once and fills further slots of
// it by local copy; sources are chosen same rank, then same node, then other
// nodes, spread evenly over the old holders. Deterministic. Throws
// moe_eplb::Error (kInvalidArgument / kInvalidTable) naming the argument.
//
// In detail: a slot whose expert is unchanged, or that no new row names, is
// kKeep. Otherwise, when the rank held the expert in the old table, kCopyLocal
// from the lowest such local slot; else the rank's lowest slot wanting the
// expert is kReceive and its other slots wanting it kCopyReceived from that
// one. A receive takes its source from the holders on the receiver's node
// when there are any, else from every holder (the lowest old slot of the
// holder rank); among those it ends least-sent: no receive could switch to
// another holder of its tier whose sent_per_rank is 2 or more below its
// source's. Executing it: read every old content (kCopyLocal, kReceive
// sources) before writing any slot, then write; kCopyReceived reads the new
// content of its receiving slot. Both tables pass validate_table() for
// world_size * slots_per_rank slots (warnings allowed); E must match, F may
// differ. Allocates O(W * (S + E)); thread-safe (no shared state).
MigrationPlan migration_plan(const TableView& old_table, const TableView& new_table,
                             const Topology& topology);

// Permutes each rank's slots of `new_table` so that an expert staying on a
// rank keeps its old slot; returns the (E, F) row-major table (new_table's
// F). No rank's set of experts changes, so balance is unchanged, and the
// replica order within each row (which the rank rule depends on) is kept.
// Arguments in (old, new) order, as migration_plan() and diff_tables().
std::vector<std::int32_t> align_to_previous(const TableView& old_table, const TableView& new_table,
                                            const Topology& topology);

}  // namespace moe_eplb

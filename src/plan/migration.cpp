// migration_plan(): how each destination slot gets its expert's weights.
//
// Design: the decision for a slot is local (keep, or copy from a slot this
// rank held the expert in) wherever it can be; what is left is one receive
// per (rank, expert new to the rank). Each receive then picks a holder rank of
// the old table from its most preferred tier (same node as the receiver if
// any holder is there, else every holder), least-sent first, and a final pass
// moves receives between holders of the same tier until no single move
// lowers a busier holder's sends by two or more. That local optimum is the
// "spread evenly" contract the tests check.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "moe_eplb/table.hpp"

namespace moe_eplb {
namespace {

constexpr const char* kMigrationPlan = "migration_plan()";

// One (rank, expert) the rank must receive: its first destination slot, and
// the old holders it may receive from (its most preferred tier).
struct Receive {
  std::int64_t slot = 0;                 // destination physical slot
  std::vector<std::int32_t> candidates;  // holder ranks, ascending
  std::int32_t source_rank = -1;
};

}  // namespace

MigrationPlan migration_plan(const TableView& old_table, const TableView& new_table,
                             const Topology& topology) {
  topology.check(kMigrationPlan);
  check_table_for(topology, old_table, kMigrationPlan, "old_table");
  check_table_for(topology, new_table, kMigrationPlan, "new_table");
  MOE_EPLB_CHECK(old_table.num_experts == new_table.num_experts, kMigrationPlan, ": old_table has ",
                 old_table.num_experts, " experts but new_table has ", new_table.num_experts,
                 "; the two tables must have the same E");

  const std::int64_t world_size = topology.world_size;
  const std::int64_t slots_per_rank = topology.slots_per_rank;
  const std::int64_t num_slots = world_size * slots_per_rank;
  const std::int64_t num_experts = old_table.num_experts;
  const std::int64_t ranks_per_node =
      topology.ranks_per_node == 0 ? world_size : topology.ranks_per_node;
  const std::vector<std::int32_t> old_experts = slot_experts(old_table, topology);
  const std::vector<std::int32_t> new_experts = slot_experts(new_table, topology);

  // holders[e]: ranks whose old slots hold e, ascending, each once; and the
  // lowest such local slot per (rank, expert).
  std::vector<std::vector<std::int32_t>> holders(static_cast<std::size_t>(num_experts));
  std::vector<std::vector<std::int32_t>> old_local_slot(
      static_cast<std::size_t>(world_size),
      std::vector<std::int32_t>(static_cast<std::size_t>(num_experts), -1));
  for (std::int64_t p = 0; p < num_slots; ++p) {
    const std::int32_t e = old_experts[static_cast<std::size_t>(p)];
    if (e < 0) continue;
    const auto rank = static_cast<std::int32_t>(p / slots_per_rank);
    std::int32_t& local =
        old_local_slot[static_cast<std::size_t>(rank)][static_cast<std::size_t>(e)];
    if (local >= 0) continue;  // a second replica on this rank: the lowest slot serves
    local = static_cast<std::int32_t>(p % slots_per_rank);
    holders[static_cast<std::size_t>(e)].push_back(rank);
  }

  MigrationPlan result;
  result.topology = topology;
  result.moves.assign(static_cast<std::size_t>(num_slots), SlotMove{});
  result.received_per_rank.assign(static_cast<std::size_t>(world_size), 0);
  result.sent_per_rank.assign(static_cast<std::size_t>(world_size), 0);

  // Local decisions, rank by rank; `receiving[e]` is the local slot that
  // receives e on the current rank (-1: none yet).
  std::vector<Receive> receives;
  std::vector<std::int32_t> receiving(static_cast<std::size_t>(num_experts), -1);
  for (std::int64_t rank = 0; rank < world_size; ++rank) {
    std::fill(receiving.begin(), receiving.end(), -1);
    const std::int64_t node = rank / ranks_per_node;
    for (std::int64_t s = 0; s < slots_per_rank; ++s) {
      const std::int64_t p = rank * slots_per_rank + s;
      SlotMove& move = result.moves[static_cast<std::size_t>(p)];
      move.source_rank = static_cast<std::int32_t>(rank);
      move.source_slot = static_cast<std::int32_t>(s);
      const std::int32_t e = new_experts[static_cast<std::size_t>(p)];
      if (e < 0 || e == old_experts[static_cast<std::size_t>(p)]) {
        continue;  // kKeep: unused in the new table, or unchanged
      }
      const std::int32_t local =
          old_local_slot[static_cast<std::size_t>(rank)][static_cast<std::size_t>(e)];
      if (local >= 0) {
        move.action = SlotAction::kCopyLocal;
        move.source_slot = local;
        continue;
      }
      std::int32_t& first = receiving[static_cast<std::size_t>(e)];
      if (first >= 0) {
        move.action = SlotAction::kCopyReceived;
        move.source_slot = first;
        continue;
      }
      first = static_cast<std::int32_t>(s);
      move.action = SlotAction::kReceive;
      Receive receive;
      receive.slot = p;
      for (std::int32_t holder : holders[static_cast<std::size_t>(e)]) {
        if (holder / ranks_per_node == node) receive.candidates.push_back(holder);
      }
      if (receive.candidates.empty()) receive.candidates = holders[static_cast<std::size_t>(e)];
      receives.push_back(std::move(receive));
    }
  }

  // Greedy: the least-sent candidate, ties to the first one at or after the
  // receiver in rank order (so equal receivers fan out over the holders).
  std::vector<std::int64_t>& sent = result.sent_per_rank;
  for (Receive& receive : receives) {
    const std::int64_t receiver = receive.slot / slots_per_rank;
    std::int64_t best_key = -1;
    for (std::int32_t holder : receive.candidates) {
      const std::int64_t distance = (holder - receiver + world_size) % world_size;
      const std::int64_t key = sent[static_cast<std::size_t>(holder)] * world_size + distance;
      if (best_key < 0 || key < best_key) {
        best_key = key;
        receive.source_rank = holder;
      }
    }
    ++sent[static_cast<std::size_t>(receive.source_rank)];
  }
  // Local improvement: each move lowers the sum of squared sends, so it ends.
  for (bool moved = true; moved;) {
    moved = false;
    for (Receive& receive : receives) {
      for (std::int32_t holder : receive.candidates) {
        if (sent[static_cast<std::size_t>(holder)] + 2 <=
            sent[static_cast<std::size_t>(receive.source_rank)]) {
          --sent[static_cast<std::size_t>(receive.source_rank)];
          ++sent[static_cast<std::size_t>(holder)];
          receive.source_rank = holder;
          moved = true;
        }
      }
    }
  }

  for (const Receive& receive : receives) {
    const std::int64_t receiver = receive.slot / slots_per_rank;
    const std::int32_t e = new_experts[static_cast<std::size_t>(receive.slot)];
    SlotMove& move = result.moves[static_cast<std::size_t>(receive.slot)];
    move.source_rank = receive.source_rank;
    move.source_slot =
        old_local_slot[static_cast<std::size_t>(receive.source_rank)][static_cast<std::size_t>(e)];
    ++result.received_per_rank[static_cast<std::size_t>(receiver)];
    if (receive.source_rank / ranks_per_node != receiver / ranks_per_node) ++result.cross_node;
  }
  result.received = static_cast<std::int64_t>(receives.size());
  for (const SlotMove& move : result.moves) {
    if (move.action == SlotAction::kKeep) ++result.kept;
    if (move.action == SlotAction::kCopyLocal || move.action == SlotAction::kCopyReceived) {
      ++result.local_copies;
    }
  }
  return result;
}

}  // namespace moe_eplb

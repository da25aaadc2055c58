// What changes between two tables, and slot matching (migration.hpp).
#include <algorithm>
#include <utility>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "moe_eplb/table.hpp"

namespace moe_eplb {
namespace {

// slot_experts() for a table named `argument` of `operation`; `positions`,
// when not null, receives each slot's replica position in its row (0-based,
// -1 where no row names the slot).
std::vector<std::int32_t> experts_by_slot(const TableView& table, const Topology& topology,
                                          const char* operation, const char* argument,
                                          std::vector<std::int32_t>* positions = nullptr) {
  const std::int64_t num_physical = topology.num_slots();
  check_table_for(topology, table, operation, argument);
  std::vector<std::int32_t> experts(static_cast<std::size_t>(num_physical), -1);
  if (positions != nullptr) positions->assign(experts.size(), -1);
  for (std::int64_t e = 0; e < table.num_experts; ++e) {
    const std::int32_t count = table.at(e, 0);
    for (std::int32_t j = 1; j <= count; ++j) {
      const auto slot = static_cast<std::size_t>(table.at(e, j));
      experts[slot] = static_cast<std::int32_t>(e);
      if (positions != nullptr) (*positions)[slot] = j - 1;
    }
  }
  return experts;
}

void check_same_experts(const TableView& from, const TableView& to, const char* operation,
                        const char* from_name, const char* to_name) {
  MOE_EPLB_CHECK(from.num_experts == to.num_experts, operation, ": ", from_name, " has ",
                 from.num_experts, " experts (rows) but ", to_name, " has ", to.num_experts,
                 "; both tables must map the same logical experts");
}

}  // namespace

std::vector<std::int32_t> slot_experts(const TableView& table, const Topology& topology) {
  topology.check("slot_experts()");
  return experts_by_slot(table, topology, "slot_experts()", "table");
}

TableDiff diff_tables(const TableView& from, const TableView& to, const Topology& topology) {
  constexpr const char* kDiff = "diff_tables()";
  topology.check(kDiff);
  check_same_experts(from, to, kDiff, "from", "to");
  std::vector<std::int32_t> old_positions, new_positions;
  const std::vector<std::int32_t> old_experts =
      experts_by_slot(from, topology, kDiff, "from", &old_positions);
  const std::vector<std::int32_t> new_experts =
      experts_by_slot(to, topology, kDiff, "to", &new_positions);
  TableDiff diff;
  diff.received_per_rank.assign(static_cast<std::size_t>(topology.world_size), 0);
  const auto slots = static_cast<std::size_t>(topology.slots_per_rank);
  for (std::size_t p = 0; p < old_experts.size(); ++p) {
    diff.slots_changed += old_experts[p] != new_experts[p] ? 1 : 0;
    diff.slots_rerouted +=
        old_experts[p] != new_experts[p] || old_positions[p] != new_positions[p] ? 1 : 0;
  }
  for (std::int64_t e = 0; e < from.num_experts; ++e) {
    const std::int32_t count = from.at(e, 0);
    bool same = count == to.at(e, 0);
    for (std::int32_t j = 1; same && j <= count; ++j) same = from.at(e, j) == to.at(e, j);
    diff.rows_changed += same ? 0 : 1;
  }
  // Distinct experts a rank holds under `to` and not under `from`.
  std::vector<std::int32_t> held, wanted;
  for (std::size_t rank = 0; rank < diff.received_per_rank.size(); ++rank) {
    held.assign(old_experts.begin() + rank * slots, old_experts.begin() + (rank + 1) * slots);
    wanted.assign(new_experts.begin() + rank * slots, new_experts.begin() + (rank + 1) * slots);
    std::sort(held.begin(), held.end());
    std::sort(wanted.begin(), wanted.end());
    wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
    std::int64_t received = 0;
    for (const std::int32_t expert : wanted) {
      received += expert >= 0 && !std::binary_search(held.begin(), held.end(), expert) ? 1 : 0;
    }
    diff.received_per_rank[rank] = received;
    diff.experts_received += received;
  }
  return diff;
}

std::vector<std::int32_t> align_to_previous(const TableView& old_table, const TableView& new_table,
                                            const Topology& topology) {
  constexpr const char* kAlign = "align_to_previous()";
  topology.check(kAlign);
  check_same_experts(old_table, new_table, kAlign, "old_table", "new_table");
  const std::vector<std::int32_t> old_experts =
      experts_by_slot(old_table, topology, kAlign, "old_table");
  const std::vector<std::int32_t> new_experts =
      experts_by_slot(new_table, topology, kAlign, "new_table");
  const std::int64_t slots = topology.slots_per_rank;
  // target[p]: where the content planned for slot p goes, a permutation of
  // each rank's slots.
  std::vector<std::int32_t> target(new_experts.size(), -1);
  std::vector<std::pair<std::int32_t, std::int32_t>> old_holders;  // (expert, slot) on a rank
  std::vector<char> taken(static_cast<std::size_t>(slots));
  for (std::int64_t rank = 0; rank < topology.world_size; ++rank) {
    const std::int64_t first = rank * slots;
    old_holders.clear();
    for (std::int64_t p = first; p < first + slots; ++p) {
      if (old_experts[static_cast<std::size_t>(p)] >= 0) {
        old_holders.emplace_back(old_experts[static_cast<std::size_t>(p)],
                                 static_cast<std::int32_t>(p));
      }
    }
    std::sort(old_holders.begin(), old_holders.end());
    std::fill(taken.begin(), taken.end(), 0);
    // An expert already in its old slot stays there (this makes aligning
    // twice a no-op); another that stays takes the lowest free old slot that
    // held it.
    for (std::int64_t p = first; p < first + slots; ++p) {
      const std::int32_t expert = new_experts[static_cast<std::size_t>(p)];
      if (expert >= 0 && expert == old_experts[static_cast<std::size_t>(p)]) {
        taken[static_cast<std::size_t>(p - first)] = 1;
        target[static_cast<std::size_t>(p)] = static_cast<std::int32_t>(p);
      }
    }
    for (std::int64_t p = first; p < first + slots; ++p) {
      const std::int32_t expert = new_experts[static_cast<std::size_t>(p)];
      if (expert < 0 || target[static_cast<std::size_t>(p)] >= 0) continue;
      auto holder = std::lower_bound(old_holders.begin(), old_holders.end(),
                                     std::make_pair(expert, std::int32_t{-1}));
      for (; holder != old_holders.end() && holder->first == expert; ++holder) {
        if (!taken[static_cast<std::size_t>(holder->second - first)]) break;
      }
      if (holder == old_holders.end() || holder->first != expert) continue;
      taken[static_cast<std::size_t>(holder->second - first)] = 1;
      target[static_cast<std::size_t>(p)] = holder->second;
    }
    // The rest (new experts, then unused slots) fill the free slots in order.
    std::int64_t next_free = 0;
    for (const bool used : {true, false}) {
      for (std::int64_t p = first; p < first + slots; ++p) {
        if (target[static_cast<std::size_t>(p)] >= 0) continue;
        if ((new_experts[static_cast<std::size_t>(p)] >= 0) != used) continue;
        while (taken[static_cast<std::size_t>(next_free)]) ++next_free;
        taken[static_cast<std::size_t>(next_free)] = 1;
        target[static_cast<std::size_t>(p)] = static_cast<std::int32_t>(first + next_free);
      }
    }
  }
  std::vector<std::int32_t> aligned(
      static_cast<std::size_t>(new_table.num_experts * new_table.num_columns), -1);
  for (std::int64_t e = 0; e < new_table.num_experts; ++e) {
    std::int32_t* row = aligned.data() + e * new_table.num_columns;
    const std::int32_t count = new_table.at(e, 0);
    row[0] = count;
    for (std::int32_t j = 1; j <= count; ++j) {
      row[j] = target[static_cast<std::size_t>(new_table.at(e, j))];
    }
    for (std::int64_t j = count + 1; j < new_table.num_columns; ++j) row[j] = new_table.at(e, j);
  }
  return aligned;
}

}  // namespace moe_eplb

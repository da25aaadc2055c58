// diff_tables(), slot_experts() and align_to_previous() against brute-force
// references on random tables, plus hand-worked cases and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "moe_eplb/table.hpp"

namespace moe_eplb {
namespace {

struct Table {
  std::int64_t num_experts = 0;
  std::int64_t num_columns = 0;
  std::vector<std::int32_t> values;
  TableView view() const {
    return TableView{values.data(), num_experts, num_columns, num_columns, 1};
  }
};

Table make_table(std::int64_t num_columns, const std::vector<std::vector<std::int32_t>>& rows) {
  Table table{static_cast<std::int64_t>(rows.size()), num_columns, {}};
  table.values.assign(rows.size() * static_cast<std::size_t>(num_columns), -1);
  for (std::size_t e = 0; e < rows.size(); ++e) {
    table.values[e * num_columns] = static_cast<std::int32_t>(rows[e].size());
    std::copy(rows[e].begin(), rows[e].end(), table.values.begin() + e * num_columns + 1);
  }
  return table;
}

// A random table over W * S slots: every expert gets >= 1 replica, some slots
// may stay unused, replicas of one expert may share a rank.
Table random_table(std::mt19937& rng, std::int64_t num_experts, std::int64_t num_physical,
                   bool use_every_slot) {
  std::vector<std::int32_t> slots(static_cast<std::size_t>(num_physical));
  for (std::size_t p = 0; p < slots.size(); ++p) slots[p] = static_cast<std::int32_t>(p);
  std::shuffle(slots.begin(), slots.end(), rng);
  const std::int64_t used =
      use_every_slot ? num_physical
                     : std::uniform_int_distribution<std::int64_t>(num_experts, num_physical)(rng);
  std::vector<std::vector<std::int32_t>> rows(static_cast<std::size_t>(num_experts));
  for (std::int64_t i = 0; i < used; ++i) {
    const auto e = static_cast<std::size_t>(
        i < num_experts ? i : std::uniform_int_distribution<std::int64_t>(0, num_experts - 1)(rng));
    rows[e].push_back(slots[static_cast<std::size_t>(i)]);
  }
  std::size_t widest = 0;
  for (const auto& row : rows) widest = std::max(widest, row.size());
  return make_table(static_cast<std::int64_t>(widest) + 1, rows);
}

std::vector<std::int32_t> reference_slot_experts(const Table& table, std::int64_t num_physical) {
  std::vector<std::int32_t> experts(static_cast<std::size_t>(num_physical), -1);
  for (std::int64_t e = 0; e < table.num_experts; ++e) {
    for (std::int32_t j = 1; j <= table.values[e * table.num_columns]; ++j) {
      experts[static_cast<std::size_t>(table.values[e * table.num_columns + j])] =
          static_cast<std::int32_t>(e);
    }
  }
  return experts;
}

// (expert, position in its row) of every slot; (-1, -1) where no row names it.
std::vector<std::pair<std::int32_t, std::int32_t>> reference_slot_replicas(
    const Table& table, std::int64_t num_physical) {
  std::vector<std::pair<std::int32_t, std::int32_t>> replicas(
      static_cast<std::size_t>(num_physical), {-1, -1});
  for (std::int64_t e = 0; e < table.num_experts; ++e) {
    for (std::int32_t j = 1; j <= table.values[e * table.num_columns]; ++j) {
      replicas[static_cast<std::size_t>(table.values[e * table.num_columns + j])] = {
          static_cast<std::int32_t>(e), j - 1};
    }
  }
  return replicas;
}

// Slots whose (expert, position) differs: the definition of a rerouted slot.
std::int64_t reference_slots_rerouted(const Table& from, const Table& to,
                                      std::int64_t num_physical) {
  const auto before = reference_slot_replicas(from, num_physical);
  const auto after = reference_slot_replicas(to, num_physical);
  std::int64_t rerouted = 0;
  for (std::size_t p = 0; p < before.size(); ++p) rerouted += before[p] != after[p];
  return rerouted;
}

std::multiset<std::int32_t> rank_experts(const std::vector<std::int32_t>& experts,
                                         std::int64_t rank, std::int64_t slots_per_rank) {
  std::multiset<std::int32_t> held;
  for (std::int64_t s = 0; s < slots_per_rank; ++s) {
    const std::int32_t e = experts[static_cast<std::size_t>(rank * slots_per_rank + s)];
    if (e >= 0) held.insert(e);
  }
  return held;
}

TEST(TableDiff, HandWorkedCase) {
  // W = 2, S = 2. Old: rank 0 = {e0, e1}, rank 1 = {e2, e1}.
  // New: rank 0 = {e2, e0}, rank 1 = {e1, e0}.
  const Table old_table = make_table(3, {{0}, {1, 3}, {2}});
  const Table new_table = make_table(3, {{1, 3}, {2}, {0}});
  const Topology topology{2, 2, 0};
  EXPECT_EQ(slot_experts(old_table.view(), topology), (std::vector<std::int32_t>{0, 1, 2, 1}));
  const TableDiff diff = diff_tables(old_table.view(), new_table.view(), topology);
  EXPECT_EQ(diff.slots_changed, 4);
  EXPECT_EQ(diff.received_per_rank, (std::vector<std::int64_t>{1, 1}));  // e2 on 0, e0 on 1
  EXPECT_EQ(diff.experts_received, 2);
  EXPECT_EQ(diff.rows_changed, 3);
  EXPECT_EQ(diff.slots_rerouted, 4);
  // Aligned: e0 stays in slot 0 on rank 0 and e1 in slot 3 on rank 1. Slot 3
  // is still rerouted: it held e1's second replica and now holds its first (a
  // different source group in rank mode), so only slot 0 keeps its traffic.
  const std::vector<std::int32_t> aligned =
      align_to_previous(old_table.view(), new_table.view(), topology);
  EXPECT_EQ(aligned, (std::vector<std::int32_t>{2, 0, 2, 1, 3, -1, 1, 1, -1}));
  const Table aligned_table{3, 3, aligned};
  const TableDiff aligned_diff = diff_tables(old_table.view(), aligned_table.view(), topology);
  EXPECT_EQ(aligned_diff.slots_changed, 2);
  EXPECT_EQ(aligned_diff.slots_rerouted, 3);
}

TEST(TableDiff, MatchesBruteForceOnRandomTables) {
  std::mt19937 rng(20261127);
  for (int trial = 0; trial < 300; ++trial) {
    const std::int64_t world_size = 1 + trial % 7;
    const std::int64_t slots_per_rank = 1 + (trial / 7) % 5;
    const std::int64_t num_physical = world_size * slots_per_rank;
    const std::int64_t num_experts =
        std::uniform_int_distribution<std::int64_t>(1, num_physical)(rng);
    const bool every_slot = trial % 3 != 0;
    const Table old_table = random_table(rng, num_experts, num_physical, every_slot);
    const Table new_table = random_table(rng, num_experts, num_physical, trial % 2 == 0);
    const Topology topology{world_size, slots_per_rank, 0};
    SCOPED_TRACE(testing::Message() << "trial " << trial << " W=" << world_size
                                    << " S=" << slots_per_rank << " E=" << num_experts);
    const auto old_experts = reference_slot_experts(old_table, num_physical);
    const auto new_experts = reference_slot_experts(new_table, num_physical);
    ASSERT_EQ(slot_experts(new_table.view(), topology), new_experts);

    const TableDiff diff = diff_tables(old_table.view(), new_table.view(), topology);
    std::int64_t changed = 0, received = 0;
    for (std::int64_t p = 0; p < num_physical; ++p) {
      changed +=
          old_experts[static_cast<std::size_t>(p)] != new_experts[static_cast<std::size_t>(p)];
    }
    for (std::int64_t rank = 0; rank < world_size; ++rank) {
      const auto held = rank_experts(old_experts, rank, slots_per_rank);
      const auto wanted = rank_experts(new_experts, rank, slots_per_rank);
      const std::set<std::int32_t> distinct(wanted.begin(), wanted.end());
      std::int64_t new_here = 0;
      for (const std::int32_t e : distinct) new_here += held.count(e) == 0;
      EXPECT_EQ(diff.received_per_rank[static_cast<std::size_t>(rank)], new_here);
      received += new_here;
    }
    EXPECT_EQ(diff.slots_changed, changed);
    EXPECT_EQ(diff.experts_received, received);
    std::int64_t rows_changed = 0;
    for (std::int64_t e = 0; e < num_experts; ++e) {
      const std::int32_t* a = old_table.values.data() + e * old_table.num_columns;
      const std::int32_t* b = new_table.values.data() + e * new_table.num_columns;
      rows_changed += !std::equal(a, a + a[0] + 1, b, b + b[0] + 1);
    }
    EXPECT_EQ(diff.rows_changed, rows_changed);
    const std::int64_t rerouted = reference_slots_rerouted(old_table, new_table, num_physical);
    EXPECT_EQ(diff.slots_rerouted, rerouted);
    EXPECT_GE(diff.slots_rerouted, diff.slots_changed);
    EXPECT_EQ(diff_tables(old_table.view(), old_table.view(), topology).rows_changed, 0);

    // Aligned: same per-rank contents, each replica on the same rank in the
    // same column, valid, staying experts in an old slot of theirs, no more
    // changed slots than before, and aligning again changes nothing.
    const Table aligned{num_experts, new_table.num_columns,
                        align_to_previous(old_table.view(), new_table.view(), topology)};
    ASSERT_TRUE(validate_table(aligned.view(), world_size, num_physical).ok());
    const auto aligned_experts = reference_slot_experts(aligned, num_physical);
    for (std::int64_t e = 0; e < num_experts; ++e) {
      const std::int32_t* before = new_table.values.data() + e * new_table.num_columns;
      const std::int32_t* after = aligned.values.data() + e * aligned.num_columns;
      ASSERT_EQ(before[0], after[0]);
      for (std::int32_t j = 1; j <= before[0]; ++j) {
        EXPECT_EQ(before[j] / slots_per_rank, after[j] / slots_per_rank) << "expert " << e;
      }
    }
    std::int64_t aligned_changed = 0;
    for (std::int64_t rank = 0; rank < world_size; ++rank) {
      EXPECT_EQ(rank_experts(aligned_experts, rank, slots_per_rank),
                rank_experts(new_experts, rank, slots_per_rank));
      // Every expert held before and after on this rank keeps as many of its
      // old slots as it has replicas there (up to its old slot count).
      const auto held = rank_experts(old_experts, rank, slots_per_rank);
      const auto wanted = rank_experts(new_experts, rank, slots_per_rank);
      std::int64_t kept = 0, can_keep = 0;
      for (const std::int32_t e : std::set<std::int32_t>(wanted.begin(), wanted.end())) {
        can_keep += static_cast<std::int64_t>(std::min(held.count(e), wanted.count(e)));
      }
      for (std::int64_t s = 0; s < slots_per_rank; ++s) {
        const auto p = static_cast<std::size_t>(rank * slots_per_rank + s);
        kept += aligned_experts[p] >= 0 && aligned_experts[p] == old_experts[p];
      }
      EXPECT_EQ(kept, can_keep) << "rank " << rank;
    }
    for (std::int64_t p = 0; p < num_physical; ++p) {
      aligned_changed +=
          old_experts[static_cast<std::size_t>(p)] != aligned_experts[static_cast<std::size_t>(p)];
    }
    EXPECT_LE(aligned_changed, changed);
    // Aligning keeps every row's order, so it never reroutes more slots.
    EXPECT_LE(reference_slots_rerouted(old_table, aligned, num_physical), rerouted);
    EXPECT_EQ(align_to_previous(old_table.view(), aligned.view(), topology), aligned.values);
  }
}

// A reorder within a row moves no expert but changes routing (which replica
// serves which source group), and padding columns change nothing.
TEST(TableDiff, CountsReorderedRowsAndIgnoresPadding) {
  const Topology topology{2, 2, 0};
  const Table table = make_table(3, {{0}, {1, 3}, {2}});
  const Table reordered = make_table(3, {{0}, {3, 1}, {2}});
  const Table wider = make_table(4, {{0}, {1, 3}, {2}});
  const TableDiff reorder = diff_tables(table.view(), reordered.view(), topology);
  EXPECT_EQ(reorder.slots_changed, 0);
  EXPECT_EQ(reorder.experts_received, 0);
  EXPECT_EQ(reorder.rows_changed, 1);
  EXPECT_EQ(reorder.slots_rerouted, 2);  // both replicas of e1 serve other traffic
  EXPECT_EQ(diff_tables(table.view(), wider.view(), topology).rows_changed, 0);
}

TEST(TableDiff, RefusesBadArguments) {
  const Table table = make_table(3, {{0}, {1, 3}, {2}});
  const Table fewer = make_table(2, {{0}, {1}});
  const Table bad_slot = make_table(3, {{0}, {1, 9}, {2}});
  const auto expect_error = [](auto call, const std::string& needle) {
    try {
      call();
      ADD_FAILURE() << "no error; expected one containing: " << needle;
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(needle), std::string::npos) << error.what();
    }
  };
  expect_error(
      [&] {
        diff_tables(table.view(), fewer.view(), {2, 2, 0});
      },
      "diff_tables(): from has 3 experts (rows) but to has 2");
  expect_error(
      [&] {
        diff_tables(table.view(), bad_slot.view(), {2, 2, 0});
      },
      "diff_tables(): to is not a valid table for 2 ranks x 2 slots");
  expect_error(
      [&] {
        align_to_previous(table.view(), table.view(), {0, 2, 0});
      },
      "align_to_previous(): world_size must be in 1..");
  expect_error(
      [&] {
        slot_experts(table.view(), {2, 2, 3});
      },
      "slot_experts(): ranks_per_node must be 0 (one node) or divide world_size 2, got 3");
}

}  // namespace
}  // namespace moe_eplb

namespace moe_eplb {
namespace {

// The topology and "a table valid for these slots" are checked in one place;
// each bad value with the message every planner-layer function now gives.
TEST(Topology, CheckAndCheckTableFor) {
  const auto error_of = [](auto&& call) {
    try {
      call();
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  const auto check = [](std::int64_t w, std::int64_t s, std::int64_t n) {
    Topology{w, s, n}.check("f()");
  };
  EXPECT_EQ(error_of([&] { check(0, 2, 0); }), "f(): world_size must be in 1..2147483647, got 0");
  EXPECT_EQ(error_of([&] { check(4, 0, 0); }),
            "f(): slots_per_rank must be in 1..536870911 for world_size 4 (every slot id fits "
            "int32), got 0");
  EXPECT_EQ(error_of([&] { check(4, 2, 3); }),
            "f(): ranks_per_node must be 0 (one node) or divide world_size 4, got 3");
  const Topology topology{2, 2, 1};
  EXPECT_EQ(topology.num_slots(), 4);
  EXPECT_EQ(topology.rank_of(3), 1);
  EXPECT_EQ(topology.node_of(1), 1);
  EXPECT_EQ((Topology{2, 2, 0}.node_of(1)), 0);

  // Slot 0 in two rows: routable (the analyzer reports it), not a placement.
  const std::vector<std::int32_t> shared = {1, 0, 1, 0};
  const TableView view{shared.data(), 2, 2, 2, 1};
  check_table_for(topology, view, "f()", "table", TableUse::kRouting);
  EXPECT_EQ(error_of([&] { check_table_for(topology, view, "f()", "old_table"); }),
            "f(): old_table is not a valid table for 2 ranks x 2 slots (1 problem, the first "
            "below; validate_table() lists all)\n  physical slot 0 is claimed by row 0 (column "
            "1) and row 1 (column 1)");
  const std::vector<std::int32_t> out_of_range = {1, 0, 1, 7};
  const TableView bad{out_of_range.data(), 2, 2, 2, 1};
  EXPECT_NE(error_of([&] {
              check_table_for(topology, bad, "f()", "t", TableUse::kRouting);
            }).find("f(): t is not a valid table for 2 ranks x 2 slots (1 problem"),
            std::string::npos);
}

}  // namespace
}  // namespace moe_eplb

// migration_plan(): hand-worked plans, then random table pairs run through a
// simulator that executes the plan on per-slot contents, checking the result
// and the plan's rules (one receive per (rank, new expert), local copies
// first, same-node sources first, sends spread), and the errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/migration.hpp"

namespace moe_eplb {
namespace {

// A row-major (E, F) table owned by the test.
struct Table {
  std::int64_t num_experts = 0;
  std::int64_t num_columns = 0;
  std::vector<std::int32_t> values;
  TableView view() const {
    return TableView{values.data(), num_experts, num_columns, num_columns, 1};
  }
};

Table table_from_rows(const std::vector<std::vector<std::int32_t>>& rows,
                      std::int64_t num_columns) {
  Table table;
  table.num_experts = static_cast<std::int64_t>(rows.size());
  table.num_columns = num_columns;
  for (const auto& row : rows) {
    std::vector<std::int32_t> padded(static_cast<std::size_t>(num_columns), -1);
    padded[0] = static_cast<std::int32_t>(row.size());
    std::copy(row.begin(), row.end(), padded.begin() + 1);
    table.values.insert(table.values.end(), padded.begin(), padded.end());
  }
  return table;
}

Topology topology(std::int64_t world_size, std::int64_t slots_per_rank,
                  std::int64_t ranks_per_node = 0) {
  Topology options;
  options.world_size = world_size;
  options.slots_per_rank = slots_per_rank;
  options.ranks_per_node = ranks_per_node;
  return options;
}

SlotMove move(SlotAction action, std::int32_t source_rank, std::int32_t source_slot) {
  SlotMove result;
  result.action = action;
  result.source_rank = source_rank;
  result.source_slot = source_slot;
  return result;
}

void expect_moves(const MigrationPlan& plan, const std::vector<SlotMove>& expected) {
  ASSERT_EQ(plan.moves.size(), expected.size());
  for (std::size_t p = 0; p < expected.size(); ++p) {
    SCOPED_TRACE(testing::Message() << "slot " << p);
    EXPECT_EQ(static_cast<int>(plan.moves[p].action), static_cast<int>(expected[p].action));
    EXPECT_EQ(plan.moves[p].source_rank, expected[p].source_rank);
    EXPECT_EQ(plan.moves[p].source_slot, expected[p].source_slot);
  }
}

constexpr SlotAction kKeep = SlotAction::kKeep;
constexpr SlotAction kCopyLocal = SlotAction::kCopyLocal;
constexpr SlotAction kReceive = SlotAction::kReceive;
constexpr SlotAction kCopyReceived = SlotAction::kCopyReceived;

// Swaps within ranks become local copies; only the expert new to rank 1
// is received. Old slots: e0 e1 | e0 e2; new: e1 e0 | e2 e1.
TEST(MigrationPlan, SwapsAreLocalCopies) {
  const Table old_table = table_from_rows({{0, 2}, {1}, {3}}, 3);
  const Table new_table = table_from_rows({{1}, {0, 3}, {2}}, 3);
  const MigrationPlan plan = migration_plan(old_table.view(), new_table.view(), topology(2, 2));
  expect_moves(plan, {move(kCopyLocal, 0, 1), move(kCopyLocal, 0, 0), move(kCopyLocal, 1, 1),
                      move(kReceive, 0, 1)});
  EXPECT_EQ(plan.kept, 0);
  EXPECT_EQ(plan.local_copies, 3);
  EXPECT_EQ(plan.received, 1);
  EXPECT_EQ(plan.received_per_rank, (std::vector<std::int64_t>{0, 1}));
  EXPECT_EQ(plan.sent_per_rank, (std::vector<std::int64_t>{1, 0}));
  EXPECT_EQ(plan.cross_node, 0);
  // One rank per node: the receive crosses nodes.
  EXPECT_EQ(migration_plan(old_table.view(), new_table.view(), topology(2, 2, 1)).cross_node, 1);
}

// A rank that gets two replicas of a new expert receives it once and copies
// the received weights; slots no new row names are kept. F differs.
TEST(MigrationPlan, SecondReplicaCopiesTheReceivedOne) {
  const Table old_table = table_from_rows({{0}, {1}}, 2);     // slots 2, 3 unused
  const Table new_table = table_from_rows({{2, 3}, {1}}, 4);  // slot 0 unused
  const MigrationPlan plan = migration_plan(old_table.view(), new_table.view(), topology(2, 2));
  expect_moves(plan, {move(kKeep, 0, 0), move(kKeep, 0, 1), move(kReceive, 0, 0),
                      move(kCopyReceived, 1, 0)});
  EXPECT_EQ(plan.kept, 2);
  EXPECT_EQ(plan.local_copies, 1);
  EXPECT_EQ(plan.received, 1);
}

// Four ranks on two nodes. X (e0) is held on ranks 0 and 2, Y (e1) on ranks
// 0 and 1; ranks 1 and 3 get X (each from its own node), ranks 2 and 3 get Y
// (node 0 only holds it: one from each holder).
TEST(MigrationPlan, SameNodeFirstThenSpread) {
  const Table old_table = table_from_rows({{0, 6}, {1, 3}, {2}, {5}, {8}, {11}}, 3);
  const Table new_table = table_from_rows({{0, 6, 4, 9}, {1, 3, 7, 10}, {2}, {5}, {8}, {11}}, 5);
  const MigrationPlan plan = migration_plan(old_table.view(), new_table.view(), topology(4, 3, 2));
  std::vector<SlotMove> expected;
  for (std::int32_t p = 0; p < 12; ++p) expected.push_back(move(kKeep, p / 3, p % 3));
  expected[4] = move(kReceive, 0, 0);   // X to rank 1 from rank 0 (same node)
  expected[7] = move(kReceive, 1, 0);   // Y to rank 2: least-sent holder, rank 1
  expected[9] = move(kReceive, 2, 0);   // X to rank 3 from rank 2 (same node)
  expected[10] = move(kReceive, 0, 1);  // Y to rank 3: tie, the holder after rank 3
  expect_moves(plan, expected);
  EXPECT_EQ(plan.sent_per_rank, (std::vector<std::int64_t>{2, 1, 1, 0}));
  EXPECT_EQ(plan.received_per_rank, (std::vector<std::int64_t>{0, 1, 1, 2}));
  EXPECT_EQ(plan.cross_node, 2);
  EXPECT_EQ(plan.kept, 8);
}

TEST(MigrationPlan, IdenticalTablesKeepEverything) {
  const Table table = table_from_rows({{0, 3}, {1}, {2}}, 3);
  const MigrationPlan plan = migration_plan(table.view(), table.view(), topology(2, 2));
  EXPECT_EQ(plan.kept, 4);
  EXPECT_EQ(plan.received + plan.local_copies, 0);
  EXPECT_EQ(plan.sent_per_rank, (std::vector<std::int64_t>{0, 0}));
}

// ---- random pairs ----------------------------------------------------------

// A random valid table: every expert gets a slot, further slots go to random
// experts or stay unused; sometimes two replicas of one expert share a rank
// (valid, only warned about).
Table random_table(std::mt19937_64& rng, std::int64_t world_size, std::int64_t slots_per_rank,
                   std::int64_t num_experts, bool allow_unused) {
  const std::int64_t num_slots = world_size * slots_per_rank;
  std::vector<std::int32_t> slots(static_cast<std::size_t>(num_slots));
  for (std::int64_t p = 0; p < num_slots; ++p)
    slots[static_cast<std::size_t>(p)] = static_cast<std::int32_t>(p);
  std::shuffle(slots.begin(), slots.end(), rng);
  std::vector<std::vector<std::int32_t>> rows(static_cast<std::size_t>(num_experts));
  for (std::int64_t e = 0; e < num_experts; ++e)
    rows[static_cast<std::size_t>(e)].push_back(slots[static_cast<std::size_t>(e)]);
  for (std::int64_t p = num_experts; p < num_slots; ++p) {
    if (allow_unused && rng() % 4 == 0) continue;
    auto& row = rows[static_cast<std::size_t>(rng() % static_cast<std::uint64_t>(num_experts))];
    if (static_cast<std::int64_t>(row.size()) < world_size)
      row.push_back(slots[static_cast<std::size_t>(p)]);
  }
  std::int64_t max_count = 1;
  for (const auto& row : rows)
    max_count = std::max<std::int64_t>(max_count, static_cast<std::int64_t>(row.size()));
  return table_from_rows(rows, max_count + 1 + static_cast<std::int64_t>(rng() % 2));
}

// `table` with a few slots handed to other experts (a replan that moves
// little), keeping every expert at least one slot.
Table perturbed(std::mt19937_64& rng, const Table& table, std::int64_t world_size,
                std::int64_t num_moves) {
  std::vector<std::vector<std::int32_t>> rows;
  for (std::int64_t e = 0; e < table.num_experts; ++e) {
    const std::int32_t* row = table.values.data() + e * table.num_columns;
    rows.emplace_back(row + 1, row + 1 + row[0]);
  }
  for (std::int64_t i = 0; i < num_moves; ++i) {
    auto& from = rows[static_cast<std::size_t>(rng() % rows.size())];
    auto& to = rows[static_cast<std::size_t>(rng() % rows.size())];
    if (from.size() < 2 || static_cast<std::int64_t>(to.size()) >= world_size || &from == &to)
      continue;
    to.push_back(from.back());
    from.pop_back();
  }
  std::int64_t max_count = 1;
  for (const auto& row : rows)
    max_count = std::max<std::int64_t>(max_count, static_cast<std::int64_t>(row.size()));
  return table_from_rows(rows, max_count + 1);
}

std::vector<std::int32_t> experts_by_slot(const Table& table, std::int64_t num_slots) {
  std::vector<std::int32_t> experts(static_cast<std::size_t>(num_slots), -1);
  for (std::int64_t e = 0; e < table.num_experts; ++e) {
    const std::int32_t* row = table.values.data() + e * table.num_columns;
    for (std::int32_t j = 1; j <= row[0]; ++j)
      experts[static_cast<std::size_t>(row[j])] = static_cast<std::int32_t>(e);
  }
  return experts;
}

// Executes `plan` on contents = expert ids and checks every rule.
void check_plan(const MigrationPlan& plan, const Table& old_table, const Table& new_table,
                const Topology& topo) {
  const std::int64_t world_size = topo.world_size;
  const std::int64_t slots_per_rank = topo.slots_per_rank;
  const std::int64_t num_slots = world_size * slots_per_rank;
  const std::int64_t ranks_per_node = topo.ranks_per_node == 0 ? world_size : topo.ranks_per_node;
  const std::vector<std::int32_t> old_contents = experts_by_slot(old_table, num_slots);
  const std::vector<std::int32_t> wanted = experts_by_slot(new_table, num_slots);
  ASSERT_EQ(static_cast<std::int64_t>(plan.moves.size()), num_slots);

  // Receives first (they read old contents), then copies of received slots.
  std::vector<std::int32_t> contents(static_cast<std::size_t>(num_slots), -2);
  std::set<std::pair<std::int64_t, std::int32_t>> received_pairs;
  std::vector<std::int64_t> sent(static_cast<std::size_t>(world_size), 0);
  std::vector<std::int64_t> received(static_cast<std::size_t>(world_size), 0);
  std::int64_t kept = 0, local_copies = 0, cross_node = 0;
  for (std::int64_t p = 0; p < num_slots; ++p) {
    const SlotMove& m = plan.moves[static_cast<std::size_t>(p)];
    const std::int64_t rank = p / slots_per_rank;
    ASSERT_GE(m.source_slot, 0);
    ASSERT_LT(m.source_slot, slots_per_rank);
    if (m.action != kReceive) {
      ASSERT_EQ(m.source_rank, rank) << "slot " << p;
    }
    switch (m.action) {
      case kKeep:
        contents[static_cast<std::size_t>(p)] = old_contents[static_cast<std::size_t>(p)];
        ++kept;
        break;
      case kCopyLocal:
        contents[static_cast<std::size_t>(p)] =
            old_contents[static_cast<std::size_t>(rank * slots_per_rank + m.source_slot)];
        ++local_copies;
        break;
      case kReceive: {
        ASSERT_GE(m.source_rank, 0);
        ASSERT_LT(m.source_rank, world_size);
        ASSERT_NE(m.source_rank, rank) << "slot " << p << " receives from its own rank";
        contents[static_cast<std::size_t>(p)] =
            old_contents[static_cast<std::size_t>(m.source_rank * slots_per_rank + m.source_slot)];
        EXPECT_TRUE(received_pairs.insert({rank, wanted[static_cast<std::size_t>(p)]}).second)
            << "rank " << rank << " receives expert " << wanted[static_cast<std::size_t>(p)]
            << " twice";
        ++sent[static_cast<std::size_t>(m.source_rank)];
        ++received[static_cast<std::size_t>(rank)];
        if (m.source_rank / ranks_per_node != rank / ranks_per_node) ++cross_node;
        break;
      }
      case kCopyReceived:
        ++local_copies;
        break;
    }
  }
  for (std::int64_t p = 0; p < num_slots; ++p) {
    const SlotMove& m = plan.moves[static_cast<std::size_t>(p)];
    if (m.action != kCopyReceived) continue;
    const std::int64_t source = (p / slots_per_rank) * slots_per_rank + m.source_slot;
    ASSERT_EQ(plan.moves[static_cast<std::size_t>(source)].action, kReceive) << "slot " << p;
    contents[static_cast<std::size_t>(p)] = contents[static_cast<std::size_t>(source)];
  }
  for (std::int64_t p = 0; p < num_slots; ++p) {
    const std::int32_t want = wanted[static_cast<std::size_t>(p)];
    if (want < 0) {
      EXPECT_EQ(plan.moves[static_cast<std::size_t>(p)].action, kKeep) << "unused slot " << p;
      continue;
    }
    EXPECT_EQ(contents[static_cast<std::size_t>(p)], want) << "slot " << p;
    // Nothing moves that need not: unchanged slots are kept.
    if (old_contents[static_cast<std::size_t>(p)] == want) {
      EXPECT_EQ(plan.moves[static_cast<std::size_t>(p)].action, kKeep) << "slot " << p;
    }
  }

  // received == distinct (rank, expert) new to the rank, per rank.
  std::vector<std::int64_t> new_to_rank(static_cast<std::size_t>(world_size), 0);
  for (std::int64_t rank = 0; rank < world_size; ++rank) {
    std::set<std::int32_t> before, after;
    for (std::int64_t s = 0; s < slots_per_rank; ++s) {
      before.insert(old_contents[static_cast<std::size_t>(rank * slots_per_rank + s)]);
      after.insert(wanted[static_cast<std::size_t>(rank * slots_per_rank + s)]);
    }
    for (std::int32_t e : after)
      new_to_rank[static_cast<std::size_t>(rank)] += e >= 0 && before.count(e) == 0;
  }
  EXPECT_EQ(received, new_to_rank);
  EXPECT_EQ(plan.received_per_rank, new_to_rank);
  EXPECT_EQ(plan.sent_per_rank, sent);
  EXPECT_EQ(plan.received, static_cast<std::int64_t>(received_pairs.size()));
  EXPECT_EQ(plan.kept, kept);
  EXPECT_EQ(plan.local_copies, local_copies);
  EXPECT_EQ(plan.cross_node, cross_node);
  EXPECT_EQ(plan.kept + plan.local_copies + plan.received, num_slots);

  // Sources: a same-node holder when one exists; and no receive could move
  // to another holder of its tier whose sends are 2 or more below its own.
  std::vector<std::vector<std::int64_t>> holders(static_cast<std::size_t>(old_table.num_experts));
  for (std::int64_t p = 0; p < num_slots; ++p) {
    const std::int32_t e = old_contents[static_cast<std::size_t>(p)];
    if (e >= 0) holders[static_cast<std::size_t>(e)].push_back(p / slots_per_rank);
  }
  for (std::int64_t p = 0; p < num_slots; ++p) {
    const SlotMove& m = plan.moves[static_cast<std::size_t>(p)];
    if (m.action != kReceive) continue;
    const std::int64_t node = p / slots_per_rank / ranks_per_node;
    const auto& all = holders[static_cast<std::size_t>(wanted[static_cast<std::size_t>(p)])];
    std::vector<std::int64_t> tier;
    for (std::int64_t h : all) {
      if (h / ranks_per_node == node) tier.push_back(h);
    }
    if (tier.empty()) tier = all;
    EXPECT_NE(std::find(tier.begin(), tier.end(), m.source_rank), tier.end())
        << "slot " << p << " receives from rank " << m.source_rank << " outside the preferred tier";
    for (std::int64_t h : tier) {
      EXPECT_LE(sent[static_cast<std::size_t>(m.source_rank)],
                sent[static_cast<std::size_t>(h)] + 1)
          << "slot " << p << ": rank " << m.source_rank << " sends "
          << sent[static_cast<std::size_t>(m.source_rank)] << " while holder " << h << " sends "
          << sent[static_cast<std::size_t>(h)];
    }
  }
}

TEST(MigrationPlan, RandomPairsSimulate) {
  const std::int64_t shapes[][4] = {// W, S, E, ranks_per_node
                                    {1, 3, 3, 0},   {2, 2, 3, 1},   {3, 4, 7, 0},  {4, 3, 6, 2},
                                    {5, 2, 9, 0},   {8, 4, 20, 4},  {8, 5, 17, 2}, {16, 6, 64, 4},
                                    {12, 9, 40, 3}, {32, 9, 256, 8}};
  for (const auto& shape : shapes) {
    for (std::uint64_t trial = 0; trial < 12; ++trial) {
      const std::uint64_t seed =
          static_cast<std::uint64_t>(shape[0] * 1000 + shape[2]) * 100 + trial;
      SCOPED_TRACE(testing::Message() << "W=" << shape[0] << " S=" << shape[1] << " E=" << shape[2]
                                      << " ranks_per_node=" << shape[3] << " seed=" << seed);
      std::mt19937_64 rng(seed);
      const Topology topo = topology(shape[0], shape[1], shape[3]);
      const Table old_table = random_table(rng, shape[0], shape[1], shape[2], trial % 3 == 0);
      const Table new_table =
          trial % 2 == 0
              ? random_table(rng, shape[0], shape[1], shape[2], trial % 4 == 0)
              : perturbed(rng, old_table, shape[0], 1 + static_cast<std::int64_t>(trial));
      const MigrationPlan plan = migration_plan(old_table.view(), new_table.view(), topo);
      check_plan(plan, old_table, new_table, topo);
      if (testing::Test::HasFailure()) return;
      // Deterministic.
      const MigrationPlan again = migration_plan(old_table.view(), new_table.view(), topo);
      for (std::size_t p = 0; p < plan.moves.size(); ++p) {
        ASSERT_EQ(plan.moves[p].action, again.moves[p].action);
        ASSERT_EQ(plan.moves[p].source_rank, again.moves[p].source_rank);
        ASSERT_EQ(plan.moves[p].source_slot, again.moves[p].source_slot);
      }
    }
  }
}

// Ranks 1..3 all get e0, which only rank 0 holds: the sends cannot be
// spread, and the balancing pass must neither refuse nor loop.
TEST(MigrationPlan, OneHolderServesEveryone) {
  const Table old_table = table_from_rows({{0}, {1}, {3}, {4}, {6}, {7}, {9}, {10}}, 2);
  const Table new_table = table_from_rows({{0, 5, 8, 11}, {1}, {3}, {4}, {6}, {7}, {9}, {10}}, 5);
  const Topology topo = topology(4, 3);
  const MigrationPlan plan = migration_plan(old_table.view(), new_table.view(), topo);
  check_plan(plan, old_table, new_table, topo);
  EXPECT_EQ(plan.sent_per_rank, (std::vector<std::int64_t>{3, 0, 0, 0}));
  EXPECT_EQ(plan.received_per_rank, (std::vector<std::int64_t>{0, 1, 1, 1}));
}

// ---- errors ----------------------------------------------------------------

std::string error_of(const TableView& old_table, const TableView& new_table, const Topology& topo,
                     ErrorCode* code = nullptr) {
  try {
    migration_plan(old_table, new_table, topo);
  } catch (const Error& error) {
    if (code != nullptr) *code = error.code();
    return error.what();
  }
  return "";
}

TEST(MigrationPlan, Errors) {
  const Table good = table_from_rows({{0}, {1}, {2}, {3}}, 2);
  const Table three = table_from_rows({{0}, {1}, {2, 3}}, 3);
  const Table bad_slot = table_from_rows({{0}, {1}, {2}, {9}}, 2);
  const Table bad_count = table_from_rows({{0}, {1}, {2}, {}}, 2);
  struct Case {
    const Table* old_table;
    const Table* new_table;
    Topology topo;
    const char* pattern;
    ErrorCode code;
  };
  const Case cases[] = {
      {&good, &good, topology(0, 2), "world_size must be in 1..", ErrorCode::kInvalidArgument},
      {&good, &good, topology(2, 0), "slots_per_rank must be in 1..", ErrorCode::kInvalidArgument},
      {&good, &good, topology(2, 2, 3),
       "ranks_per_node must be 0 (one node) or divide world_size 2, got 3",
       ErrorCode::kInvalidArgument},
      {&good, &good, topology(2, 2, -1), "ranks_per_node", ErrorCode::kInvalidArgument},
      {&good, &good, topology(2, INT32_MAX), "slots_per_rank", ErrorCode::kInvalidArgument},
      {&bad_slot, &good, topology(2, 2), "old_table is not a valid table for 2 ranks x 2 slots",
       ErrorCode::kInvalidTable},
      {&good, &bad_count, topology(2, 2), "new_table is not a valid table",
       ErrorCode::kInvalidTable},
      {&good, &good, topology(1, 2), "old_table is not a valid table", ErrorCode::kInvalidTable},
      {&good, &three, topology(2, 2), "old_table has 4 experts but new_table has 3",
       ErrorCode::kInvalidArgument},
  };
  for (const Case& c : cases) {
    ErrorCode code = ErrorCode::kIo;
    const std::string message = error_of(c.old_table->view(), c.new_table->view(), c.topo, &code);
    SCOPED_TRACE(message);
    EXPECT_EQ(message.rfind("migration_plan(): ", 0), 0u);
    EXPECT_NE(message.find(c.pattern), std::string::npos) << "expected: " << c.pattern;
    EXPECT_EQ(static_cast<int>(code), static_cast<int>(c.code));
  }
  EXPECT_NE(
      error_of(TableView{}, good.view(), topology(2, 2)).find("old_table must be a non-empty"),
      std::string::npos);
}

}  // namespace
}  // namespace moe_eplb

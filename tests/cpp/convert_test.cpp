// Converters: round trips through every layout, on planner output and on
// hand-made maps, and the errors for malformed maps.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/convert.hpp"
#include "moe_eplb/plan/planner.hpp"

namespace moe_eplb {
namespace {

ExpertLoad ramp_load(std::int64_t world_size, std::int64_t num_experts) {
  ExpertLoad load;
  load.num_layers = 1;
  load.num_source_ranks = world_size;
  load.num_experts = num_experts;
  for (std::int64_t i = 0; i < world_size * num_experts; ++i) {
    load.counts.push_back(static_cast<double>((i * 37) % 101 + (i % num_experts == 3 ? 900 : 0)));
  }
  return load;
}

ReplicaSlots sorted(ReplicaSlots slots) {
  for (auto& replicas : slots) std::sort(replicas.begin(), replicas.end());
  return slots;
}

TEST(Convert, RoundTripsOnPlannerOutput) {
  const std::int64_t shapes[][3] = {{4, 3, 8}, {6, 4, 20}, {16, 9, 128}};
  bool saw_unordered = false;
  for (const auto& shape : shapes) {
    SCOPED_TRACE(testing::Message() << "W=" << shape[0] << " S=" << shape[1] << " E=" << shape[2]);
    PlanOptions options;
    options.world_size = shape[0];
    options.slots_per_rank = shape[1];
    const LayeredTable table = plan(ramp_load(shape[0], shape[2]), options);
    const std::int64_t num_physical = shape[0] * shape[1];
    const ReplicaSlots slots = slots_from_table(table.layer(0), num_physical);

    // Ascend -> log2phy + logcnt -> Ascend keeps the replica order exactly.
    const Log2Phy maps = slots_to_log2phy(slots);
    EXPECT_EQ(make_layered_table({slots_from_log2phy(maps.log2phy.data(), maps.num_experts,
                                                     maps.max_replicas, maps.logcnt.data())},
                                 table.num_columns)
                  .values,
              table.values);
    // ... and through SGLang's map (counts implied by the padding).
    EXPECT_EQ(slots_from_log2phy(maps.log2phy.data(), maps.num_experts, maps.max_replicas, nullptr),
              slots);
    // Ascend -> phy2log would drop the replica order (the routing): refused
    // unless the rows are already ascending or sort_replicas says so.
    if (first_unordered_expert(slots) >= 0) {
      saw_unordered = true;
      EXPECT_THROW(slots_to_phy2log(slots, num_physical), Error);
    } else {
      EXPECT_EQ(slots_to_phy2log(slots, num_physical), slots_to_phy2log(slots, num_physical, true));
    }
    // phy2log -> Ascend -> phy2log is exact; the rows come back in slot order.
    const std::vector<std::int64_t> phy2log = slots_to_phy2log(slots, num_physical, true);
    const ReplicaSlots from_phy = slots_from_phy2log(phy2log.data(), num_physical, shape[2]);
    EXPECT_EQ(from_phy, sorted(slots));
    EXPECT_EQ(first_unordered_expert(from_phy), -1);
    EXPECT_EQ(slots_to_phy2log(from_phy, num_physical), phy2log);
  }
  EXPECT_TRUE(saw_unordered) << "no planner output exercised the replica-order check";
}

TEST(Convert, HandMadeMaps) {
  // 3 experts on 6 slots, slot 4 unused: e0 on 5 then 0 (order matters), e1 on 1, e2 on 2, 3.
  const ReplicaSlots slots = {{5, 0}, {1}, {2, 3}};
  EXPECT_EQ(first_unordered_expert(slots), 0);
  EXPECT_EQ(describe_replica_order(slots, 0),
            "expert 0 has replica 1 in slot 5 and replica 2 in slot 0");
  EXPECT_THROW(slots_to_phy2log(slots, 6), Error);  // would lose "5 before 0"
  EXPECT_EQ(slots_to_phy2log(slots, 6, true), (std::vector<std::int64_t>{0, 1, 2, 2, -1, 0}));
  const Log2Phy maps = slots_to_log2phy(slots, 3);
  EXPECT_EQ(maps.log2phy, (std::vector<std::int64_t>{5, 0, -1, 1, -1, -1, 2, 3, -1}));
  EXPECT_EQ(maps.logcnt, (std::vector<std::int64_t>{2, 1, 2}));
  const LayeredTable table = make_layered_table({slots}, 0);
  EXPECT_EQ(table.values, (std::vector<std::int32_t>{2, 5, 0, 1, 1, -1, 2, 2, 3}));
  EXPECT_EQ(slots_from_table(table.layer(0)), slots);
}

// Each malformed input with the message it must produce.
TEST(Convert, MalformedMapsAreClearErrors) {
  const auto expect_error = [](auto&& call, const char* message) {
    SCOPED_TRACE(message);
    try {
      call();
      ADD_FAILURE() << "no error";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(message), std::string::npos) << error.what();
    }
  };
  const std::vector<std::int64_t> phy2log = {0, 1, 3, -2};
  expect_error([&] { slots_from_phy2log(phy2log.data(), 4, 4); },
               "slots_from_phy2log(): phy2log[3] = -2 is outside -1..3");
  const std::vector<std::int64_t> missing = {0, 0, 2, -1};
  expect_error([&] { slots_from_phy2log(missing.data(), 4, 3); },
               "slots_from_phy2log(): expert 1 has no physical slot in phy2log");
  const std::vector<std::int64_t> log2phy = {0, 4, 1, -1};
  const std::vector<std::int64_t> logcnt = {1, 1};
  expect_error([&] { slots_from_log2phy(log2phy.data(), 2, 2, logcnt.data()); },
               "slots_from_log2phy(): [0, 1] = 4 after the expert's 1 replicas, expected the -1 "
               "padding");
  const std::vector<std::int64_t> zero = {0, 0};
  expect_error([&] { slots_from_log2phy(log2phy.data(), 2, 2, zero.data()); },
               "slots_from_log2phy(): expert 0 has 0 replicas, expected 1..2");
  const std::vector<std::int64_t> empty_row = {-1, -1, 1, -1};
  expect_error([&] { slots_from_log2phy(empty_row.data(), 2, 2, nullptr); },
               "slots_from_sglang(): expert 0 has 0 replicas, expected 1..2");
  expect_error(
      [] {
        slots_to_phy2log({{0}, {0}}, 2);
      },
      "slots_to_phy2log(): slot 0 is claimed by experts 0 and 1");
  expect_error(
      [] {
        slots_to_phy2log({{1, 0}, {2}}, 3);
      },
      "slots_to_phy2log(): expert 0 has replica 1 in slot 1 and replica 2 in slot 0; phy2log "
      "keeps no replica order");
  // A slot named twice (within a row or across rows) is refused, not copied
  // into a table the operator would refuse.
  const std::vector<std::int64_t> twice_in_row = {0, 0, 1, -1};
  expect_error([&] { slots_from_log2phy(twice_in_row.data(), 2, 2, nullptr); },
               "slots_from_sglang(): slot 0 is named twice, by [0, 0] and [0, 1]");
  const std::vector<std::int64_t> shared = {0, 1, 1, -1};
  const std::vector<std::int64_t> counts = {2, 1};
  expect_error([&] { slots_from_log2phy(shared.data(), 2, 2, counts.data()); },
               "slots_from_log2phy(): slot 1 is named twice, by [0, 1] and [1, 0]");
  expect_error(
      [] {
        slots_to_phy2log({{0}, {7}}, 2);
      },
      "slots_to_phy2log(): expert 1 uses slot 7, outside 0..1");
  const std::vector<std::int32_t> bad_table = {1, 0, 1, 0};  // slot 0 twice
  expect_error(
      [&] {
        slots_from_table(TableView{bad_table.data(), 2, 2, 2, 1});
      },
      "slots_from_table()");
}

}  // namespace
}  // namespace moe_eplb

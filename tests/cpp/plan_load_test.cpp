// Load statistics: the shapes make_expert_load() accepts, the errors for bad
// ones, and the recorder counting the operator's way.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/load.hpp"

namespace moe_eplb {
namespace {

TEST(PlanLoad, AcceptedShapes) {
  constexpr const char* kOp = "plan()";
  const ExpertLoad global = make_expert_load({4}, {1, 2, 3, 4}, 2, LoadLayout::kInfer, kOp);
  EXPECT_EQ(global.num_layers, 1);
  EXPECT_EQ(global.num_source_ranks, 1);
  EXPECT_FALSE(global.per_rank());

  const ExpertLoad per_rank =
      make_expert_load({2, 3}, {1, 2, 3, 4, 5, 6}, 2, LoadLayout::kRanksExperts, kOp);
  EXPECT_EQ(per_rank.num_source_ranks, 2);
  EXPECT_EQ(per_rank.num_experts, 3);
  EXPECT_EQ(global_load(per_rank).counts, (std::vector<double>{5, 7, 9}));

  const ExpertLoad layers =
      make_expert_load({3, 1, 2}, {1, 2, 3, 4, 5, 6}, 8, LoadLayout::kInfer, kOp);
  EXPECT_EQ(layers.num_layers, 3);
  EXPECT_EQ(layers.layer(2)[1], 6);

  // The same 2-D array per layer: 2 layers of global counts, not 2 ranks.
  const ExpertLoad per_layer =
      make_expert_load({2, 3}, {1, 2, 3, 4, 5, 6}, 2, LoadLayout::kLayersExperts, kOp);
  EXPECT_EQ(per_layer.num_layers, 2);
  EXPECT_EQ(per_layer.num_source_ranks, 1);
  EXPECT_EQ(per_layer.layer(1)[0], 4);
  for (const char* name : {"", "E", "WE", "LE", "LWE"}) {
    EXPECT_STREQ(load_layout_name(parse_load_layout(name, kOp)), name);
  }
}

// Each bad statistics input with the message it must produce.
TEST(PlanLoad, BadStatisticsAreClearErrors) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> negative(3 * 20, 1.0);
  negative[2 * 20 + 17] = -3;
  struct Case {
    std::vector<std::int64_t> shape;
    std::vector<double> values;
    LoadLayout layout;
    const char* message;
  };
  const Case cases[] = {
      {{3, 20},
       negative,
       LoadLayout::kRanksExperts,
       "plan(): load has a negative value -3 at (rank 2, expert 17)"},
      {{2}, {1, nan}, LoadLayout::kInfer, "plan(): load has a non-finite value nan at (expert 1)"},
      {{2, 1, 2},
       {1, 1, 1, inf},
       LoadLayout::kInfer,
       "plan(): load has a non-finite value inf at (layer 1, expert 1)"},
      // A 2-D load could be per rank or per layer: the caller must say which.
      {{3, 2},
       std::vector<double>(6, 1.0),
       LoadLayout::kInfer,
       "plan(): load of shape (3, 2) is 2-D: rows of source ranks (W, E) or of layers (L, E)? "
       "Give its layout: WE or LE"},
      {{4, 2},
       std::vector<double>(8, 1.0),
       LoadLayout::kRanksExperts,
       "plan(): load of shape (4, 2) has layout WE, but W = 4 differs from world_size 3 "
       "(per-layer global counts have layout LE)"},
      {{2, 2, 2},
       std::vector<double>(8, 1.0),
       LoadLayout::kInfer,
       "plan(): load of shape (2, 2, 2) has layout LWE, but W = 2 is neither world_size 3"},
      {{4, 2},
       std::vector<double>(8, 1.0),
       LoadLayout::kLayersRanksExperts,
       "plan(): load of shape (4, 2) is 2-D but layout LWE is 3-D"},
      {{1, 1, 1, 1}, {1}, LoadLayout::kInfer, "plan(): load must be (E,) global counts, (W, E)"},
      {{0}, {}, LoadLayout::kInfer, "plan(): load has an empty dimension, shape (0,)"},
      // A bound on what statistics allocate.
      {{kMaxLoadExperts + 1},
       std::vector<double>(kMaxLoadExperts + 1, 1.0),
       LoadLayout::kExperts,
       "plan(): load has 65537 experts (last dimension), expected 1..65536"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    try {
      make_expert_load(c.shape, c.values, 3, c.layout, "plan()");
      ADD_FAILURE() << "no error";
    } catch (const Error& error) {
      EXPECT_EQ(error.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(error.what()).find(c.message), std::string::npos) << error.what();
    }
  }
  try {
    parse_load_layout("EW", "plan()");
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_STREQ(error.what(),
                 "plan(): unknown load layout 'EW', expected E (experts), WE (source ranks, "
                 "experts), LE (layers, experts) or LWE (layers, source ranks, experts)");
  }
}

ExpertIdsView ids_view(const std::vector<std::int32_t>& ids, std::int64_t top_k) {
  return ExpertIdsView{ids.data(), Dtype::kInt32, static_cast<std::int64_t>(ids.size()) / top_k,
                       top_k,      top_k,         1};
}

// A recorder's size is bounded before it allocates (3e9 experts was bad_alloc).
TEST(PlanLoad, RecorderRefusesTooManyExperts) {
  try {
    LoadRecorder recorder(1, 2, 3000000000);
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_STREQ(error.what(), "LoadRecorder(): num_experts must be in 1..65536, got 3000000000");
  }
}

TEST(PlanLoad, RecorderCountsPerSourceRank) {
  LoadRecorder recorder(2, 3, 4);
  const std::vector<std::int32_t> batch = {0, 1, 0, 2, 3, 0};  // 3 tokens, top-2
  recorder.record(1, 2, ids_view(batch, 2), nullptr);
  recorder.record(1, 2, ids_view(batch, 2), nullptr);
  const ExpertLoad& load = recorder.load();
  const double* row = load.layer(1) + 2 * 4;
  EXPECT_EQ(std::vector<double>(row, row + 4), (std::vector<double>{6, 2, 2, 2}));
  EXPECT_EQ(load.layer(0)[0], 0);  // other layer untouched
}

// Inactive tokens (active_mask) and pruned choices are not load.
TEST(PlanLoad, RecorderHonoursActiveMaskAndPruning) {
  const std::vector<std::int32_t> batch = {0, 1, 2, 3, 1, 2};  // 3 tokens, top-2
  LoadRecorder masked(1, 1, 4);
  const std::uint8_t mask[] = {1, 1, 0};
  masked.record_masked(0, 0, ids_view(batch, 2), mask);
  EXPECT_EQ(masked.load().counts, (std::vector<double>{1, 1, 1, 1}));

  // Token 0's second choice has scale 0.1 of 1.0 < threshold 0.2: pruned.
  const std::vector<float> scales = {0.9f, 0.1f, 0.5f, 0.5f, 0.5f, 0.5f};
  const std::vector<float> threshold = {0.2f, 0.2f};
  PruningInputs pruning;
  pruning.expert_scales = ScalesView{scales.data(), Dtype::kFloat32, 3, 2, 2, 1};
  pruning.pruning_threshold = VectorView<float>{threshold.data(), 2, 1};
  LoadRecorder pruned(1, 1, 4);
  pruned.record(0, 0, ids_view(batch, 2), &pruning);
  EXPECT_EQ(pruned.load().counts, (std::vector<double>{1, 1, 2, 1}));
}

// A bad expert id is the operator's error, with its position, and the batch
// is not recorded.
TEST(PlanLoad, RecorderRejectsBadExpertIds) {
  LoadRecorder recorder(1, 2, 4);
  const std::vector<std::int32_t> batch = {0, 1, 7, 2};
  try {
    recorder.record(0, 1, ids_view(batch, 2), nullptr);
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kIndexOutOfRange);
    EXPECT_NE(std::string(error.what())
                  .find("LoadRecorder::record(): layer 0, source rank 1: update_expert(): "
                        "expert_ids[1, 0] = 7 is out of range"),
              std::string::npos)
        << error.what();
  }
  for (double value : recorder.load().counts) EXPECT_EQ(value, 0);
  EXPECT_THROW(recorder.record(0, 2, ids_view(batch, 2)), Error);
}

}  // namespace
}  // namespace moe_eplb

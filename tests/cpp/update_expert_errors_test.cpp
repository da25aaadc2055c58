// The CPU operator's bad inputs, each with the message it must produce: bad
// element values (naming (b, k) and the value), bad arguments (naming the
// argument, the range and the value), outputs of the wrong size, dtypes, and
// outputs that overlap the inputs.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "moe_eplb/detail/route.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/update_expert.hpp"
#include "reference.hpp"
#include "test_util.hpp"

namespace moe_eplb {
namespace {

using ::testing::HasSubstr;
using namespace moe_eplb::test;

// ---- bad element values -------------------------------------------------------------

struct BadValueCase {
  const char* name;
  std::vector<std::vector<std::int64_t>> table;
  std::vector<std::int64_t> ids;  // (2, 2)
  std::int64_t num_physical;
  const char* message;
};

TEST(UpdateExpertErrors, BadValuesNamePositionAndValue) {
  const BadValueCase cases[] = {
      {"expert id too large",
       {{1, 0, 0}, {1, 1, 0}},
       {0, 1, 1, 2},
       -1,
       "update_expert(): expert_ids[1, 1] = 2 is out of range, expected 0..1 (eplb_table has 2 "
       "rows)"},
      {"negative expert id",
       {{1, 0, 0}, {1, 1, 0}},
       {0, -1, 1, 0},
       -1,
       "update_expert(): expert_ids[0, 1] = -1 is out of range, expected 0..1"},
      {"count zero",
       {{1, 0, 0}, {0, 1, 0}},
       {0, 0, 1, 0},
       -1,
       "expert_ids[1, 0] = 1 selects eplb_table row 1 whose replica count 0 is outside 1..2 (F - "
       "1)"},
      {"count above F-1",
       {{3, 0, 1}, {1, 1, 0}},
       {1, 0, 0, 0},
       -1,
       "expert_ids[0, 1] = 0 selects eplb_table row 0 whose replica count 3 is outside 1..2"},
      {"instance id >= num_physical",
       {{1, 0, 0}, {1, 9, 0}},
       {0, 1, 0, 0},
       4,
       "expert_ids[0, 1] = 1 selects eplb_table[1, 1] = 9, outside the slot range "
       "0..3 "
       "(num_physical_experts 4)"},
      {"negative instance id",
       {{1, -3, 0}, {1, 1, 0}},
       {1, 1, 0, 1},
       -1,
       "expert_ids[1, 0] = 0 selects eplb_table[0, 1] = -3, outside the slot range"},
  };
  for (const BadValueCase& c : cases) {
    OwnedTable table(matrix_from_rows(c.table));
    Matrix ids = make_matrix(2, 2);
    ids.values = c.ids;
    for (auto dtype_is_32 : {true, false}) {
      UpdateExpertParams params = rank_params(1, 2);
      params.num_physical_experts = c.num_physical;
      ErrorCode code{};
      const std::string message = error_of(
          [&] {
            if (dtype_is_32)
              run<std::int32_t>(ids, table.view, params);
            else
              run<std::int64_t>(ids, table.view, params);
          },
          &code);
      EXPECT_THAT(message, HasSubstr(c.message)) << c.name;
      EXPECT_EQ(code, ErrorCode::kIndexOutOfRange) << c.name;
    }
  }
}

// Both internal paths (per-call map and per-element) report the same first error.
TEST(UpdateExpertErrors, FirstBadElementInRowMajorOrderOnBothPaths) {
  OwnedTable table(matrix_from_rows({{1, 0, 0}, {0, 0, 0}, {1, 2, 0}}));
  Matrix big = make_matrix(10, 3, 2);
  big.at(4, 2) = 1;  // bad count, first
  big.at(7, 0) = 5;  // bad id, later
  EXPECT_THAT(error_of([&] { run<std::int32_t>(big, table.view, rank_params(0, 2)); }),
              HasSubstr("expert_ids[4, 2] = 1"));
  Matrix small = make_matrix(1, 2, 2);
  small.at(0, 1) = 1;
  EXPECT_THAT(error_of([&] { run<std::int32_t>(small, table.view, rank_params(0, 2, 1)); }),
              HasSubstr("expert_ids[0, 1] = 1"));
}

// ---- bad arguments: each with the message it must produce ------------------------------

struct ArgCase {
  const char* name;
  std::int64_t num_tokens, top_k, num_experts, columns, rank, world_size, mode, num_physical;
  LimitProfile profile;
  const char* message;
};

TEST(UpdateExpertErrors, BadArgumentsNameArgumentRangeAndValue) {
  using P = LimitProfile;
  const ArgCase cases[] = {
      {"BS above seed cap", 513, 8, 16, 3, 0, 8, 0, -1, P::kAscendSeed,
       "update_expert(): expert_ids has 513 tokens (BS), expected 1..512 under the ascend_seed "
       "profile"},
      {"BS zero under ascend", 0, 8, 16, 3, 0, 8, 0, -1, P::kAscend,
       "expert_ids has 0 tokens (BS), expected 1..512 under the ascend profile"},
      {"K above 16", 4, 17, 32, 3, 0, 8, 0, -1, P::kAscend,
       "expert_ids has top_k (K) = 17, expected 1..16 under the ascend profile"},
      {"K above E", 4, 8, 4, 3, 0, 8, 0, -1, P::kAscend,
       "top_k (K) = 8 exceeds the number of experts E = 4 under the ascend profile"},
      {"E above seed cap", 4, 8, 513, 3, 0, 8, 0, -1, P::kAscendSeed,
       "eplb_table has 513 rows (E), expected 1..512 under the ascend_seed profile"},
      {"E above ascend cap", 4, 8, 1025, 3, 0, 8, 0, -1, P::kAscend,
       "eplb_table has 1025 rows (E), expected 1..1024 under the ascend profile"},
      {"world_size below 2", 4, 2, 8, 3, 0, 1, 0, -1, P::kAscendSeed,
       "world_size must be in 2..384 under the ascend_seed profile, got 1"},
      {"world_size above 768", 4, 2, 8, 3, 0, 769, 0, -1, P::kAscend,
       "world_size must be in 2..768 under the ascend profile, got 769"},
      {"world_size zero native", 4, 2, 8, 3, 0, 0, 0, -1, P::kNative,
       "world_size must be in 1..2147483647 under the native profile, got 0"},
      {"rank negative", 4, 2, 8, 3, -1, 8, 0, -1, P::kNative,
       "local_rank_id must be in 0..7 (world_size 8), got -1"},
      {"rank equals world_size", 4, 2, 8, 3, 8, 8, 0, -1, P::kNative,
       "local_rank_id must be in 0..7 (world_size 8), got 8"},
      {"F below 2", 4, 2, 8, 1, 0, 8, 0, -1, P::kNative,
       "eplb_table has 1 columns (F), expected 2..2147483647"},
      {"F above W+1", 4, 2, 8, 10, 0, 8, 0, -1, P::kAscend,
       "eplb_table has 10 columns (F), expected 2..9 (world_size + 1) under the ascend profile"},
      {"balance_mode 3", 4, 2, 8, 3, 0, 8, 3, -1, P::kNative,
       "balance_mode must be 0 (by rank), 1 (by token) or 2 (vLLM's token hash), got 3"},
      {"balance_mode -1", 4, 2, 8, 3, 0, 8, -1, -1, P::kNative,
       "balance_mode must be 0 (by rank), 1 (by token) or 2 (vLLM's token hash), got -1"},
      {"token mode under seed", 4, 2, 8, 3, 0, 8, 1, -1, P::kAscendSeed,
       "balance_mode 1 (by token) is not supported under the ascend_seed profile, expected 0"},
      {"hash mode under ascend", 4, 2, 8, 3, 0, 8, 2, -1, P::kAscend,
       "balance_mode 2 (vLLM's token hash) is not supported under the ascend profile, expected "
       "0..1"},
      {"too many slots", 4, 2, 8, 3, 0, 8, 0, 1032, P::kAscend,
       "num_physical_experts must be -1 (unknown) or in 1..1024 under the ascend profile, got "
       "1032"},
      {"slots not multiple", 4, 2, 8, 3, 0, 8, 0, 12, P::kNative,
       "num_physical_experts 12 is not a multiple of world_size 8"},
      {"negative BS", -1, 2, 8, 3, 0, 8, 0, -1, P::kNative,
       "expert_ids has -1 tokens (BS), expected 0.. under the native profile"},
  };
  for (const ArgCase& c : cases) {
    Matrix table_m = make_matrix(c.num_experts, std::max<std::int64_t>(c.columns, 0), 0);
    for (std::int64_t e = 0; e < c.num_experts && c.columns > 1; ++e) table_m.at(e, 0) = 1;
    std::vector<std::int32_t> table_storage(table_m.values.begin(), table_m.values.end());
    table_storage.push_back(0);
    TableView table{table_storage.data(), c.num_experts, c.columns,
                    std::max<std::int64_t>(c.columns, 1), 1};
    std::vector<std::int32_t> ids(
        static_cast<std::size_t>(std::max<std::int64_t>(c.num_tokens, 0) * c.top_k), 0);
    std::vector<std::int32_t> out(ids.size() + 1);
    UpdateExpertParams params = rank_params(c.rank, c.world_size, static_cast<int>(c.mode));
    params.num_physical_experts = c.num_physical;
    params.profile = c.profile;
    ErrorCode code = ErrorCode::kIo;
    const std::string message = error_of(
        [&] {
          update_expert(ExpertIdsView{ids.data(), Dtype::kInt32, c.num_tokens, c.top_k, c.top_k, 1},
                        table, params, out.data());
        },
        &code);
    EXPECT_THAT(message, HasSubstr(c.message)) << c.name;
    EXPECT_EQ(code, ErrorCode::kInvalidArgument) << c.name;
  }
}

TEST(UpdateExpertErrors, PruningArgumentsGoTogetherWithMatchingShapes) {
  OwnedTable table(matrix_from_rows({{1, 0, 0}, {1, 1, 0}}));
  const std::int32_t ids[] = {0, 1, 1, 0};
  const float scales[] = {0.5f, 0.5f, 0.5f, 0.5f};
  const float threshold[] = {0.1f, 0.1f, 0.1f};
  const std::uint8_t active[] = {1, 1, 1};
  std::int32_t out[4];
  std::uint8_t mask[4];
  const ExpertIdsView ids_view_{ids, Dtype::kInt32, 2, 2, 2, 1};
  auto call = [&](const PruningInputs* pruning, std::uint8_t* mask_out, LimitProfile profile) {
    UpdateExpertParams params = rank_params(0, 2);
    params.profile = profile;
    return error_of([&] {
      update_expert(UpdateExpertInputs{ids_view_, table.view, pruning}, params,
                    UpdateExpertOutputs{{out, 4}, {mask_out, mask_out ? 4 : 0}, {}});
    });
  };
  PruningInputs good{
      {scales, Dtype::kFloat32, 2, 2, 2, 1}, {threshold, 2, 1}, true, {active, 2, 1}};
  EXPECT_EQ(call(&good, mask, LimitProfile::kAscend), "");
  EXPECT_THAT(call(&good, mask, LimitProfile::kAscendSeed),
              HasSubstr("expert pruning (expert_scales, pruning_threshold, active_mask) is not "
                        "supported under the ascend_seed profile"));
  PruningInputs bad_scales = good;
  bad_scales.expert_scales.num_tokens = 3;
  EXPECT_THAT(call(&bad_scales, mask, LimitProfile::kNative),
              HasSubstr("expert_scales must have the shape of expert_ids (2, 2), got (3, 2)"));
  PruningInputs bad_threshold = good;
  bad_threshold.pruning_threshold.size = 3;
  EXPECT_THAT(call(&bad_threshold, mask, LimitProfile::kNative),
              HasSubstr("pruning_threshold must have K = 2 elements, got 3"));
  PruningInputs bad_active = good;
  bad_active.active_mask.size = 3;
  EXPECT_THAT(call(&bad_active, mask, LimitProfile::kNative),
              HasSubstr("active_mask must have BS = 2 elements, got 3"));
  EXPECT_THAT(
      call(&good, nullptr, LimitProfile::kNative),
      HasSubstr("balanced_active_mask output pointer is null but pruning inputs were given"));
  EXPECT_THAT(
      call(nullptr, mask, LimitProfile::kNative),
      HasSubstr("balanced_active_mask was requested but expert_scales and pruning_threshold "
                "were not given"));
}

TEST(UpdateExpertErrors, OutputsAndLoadRecordingNeedTheirPointers) {
  OwnedTable table(matrix_from_rows({{1, 0, 0}}));
  const std::int32_t ids[] = {0, 0};
  std::int64_t load[2] = {0, 0};
  EXPECT_THAT(error_of([&] {
                update_expert(ExpertIdsView{ids, Dtype::kInt32, 1, 2, 2, 1}, table.view,
                              rank_params(0, 2), nullptr);
              }),
              HasSubstr("balanced_expert_ids output pointer is null for shape (1, 2)"));
  std::int32_t out[2];
  EXPECT_THAT(error_of([&] {
                update_expert(
                    UpdateExpertInputs{{ids, Dtype::kInt32, 1, 2, 2, 1}, table.view, nullptr},
                    rank_params(0, 2), UpdateExpertOutputs{{out, 2}, {}, {load, 2}});
              }),
              HasSubstr("load recording needs num_physical_experts"));
}

// Every output's size is checked against what the call writes.
TEST(UpdateExpertErrors, OutputSizesMustMatch) {
  OwnedTable table(matrix_from_rows({{1, 0, 0}, {1, 1, 0}}));
  const std::int32_t ids[] = {0, 1, 1, 0};
  const ExpertIdsView view{ids, Dtype::kInt32, 2, 2, 2, 1};
  std::int32_t out[4];
  std::uint8_t mask[4];
  std::int64_t load[4] = {0, 0, 0, 0};
  UpdateExpertParams params = rank_params(0, 2);
  params.num_physical_experts = 2;
  const auto call = [&](const UpdateExpertOutputs& outputs, const PruningInputs* pruning) {
    return error_of([&] {
      update_expert(UpdateExpertInputs{view, table.view, pruning}, params, outputs);
    });
  };
  EXPECT_EQ(call(UpdateExpertOutputs{{out, 4}, {}, {load, 2}}, nullptr), "");
  EXPECT_THAT(
      call(UpdateExpertOutputs{{out, 3}, {}, {}}, nullptr),
      HasSubstr("update_expert(): balanced_expert_ids has 3 elements, expected BS * K = 4"));
  EXPECT_THAT(call(UpdateExpertOutputs{{out, 4}, {}, {load, 4}}, nullptr),
              HasSubstr("update_expert(): load_counts has 4 elements, expected "
                        "num_physical_experts = 2"));
  const float scales[] = {0.5f, 0.5f, 0.5f, 0.5f};
  const float threshold[] = {0.1f, 0.1f};
  const PruningInputs pruning{{scales, Dtype::kFloat32, 2, 2, 2, 1}, {threshold, 2, 1}, false, {}};
  EXPECT_THAT(call(UpdateExpertOutputs{{out, 4}, {mask, 5}, {}}, &pruning),
              HasSubstr("balanced_active_mask has 5 elements, expected BS * K = 4"));
  // The prepared form runs the same checks, with its own slot count.
  const PreparedTable prepared(table.view, params);
  EXPECT_THAT(error_of([&] {
                update_expert_prepared(prepared.view(), view, nullptr,
                                       UpdateExpertOutputs{{out, 4}, {}, {load, 3}});
              }),
              HasSubstr("update_expert_prepared(): load_counts has 3 elements, expected "
                        "num_physical_experts = 2"));
}

// Dtypes are the core's to check, whatever front end built the view.
TEST(UpdateExpertErrors, DtypesAreNamed) {
  OwnedTable table(matrix_from_rows({{1, 0, 0}}));
  const float ids[] = {0.0f, 0.0f};
  std::int32_t out[2];
  EXPECT_THAT(error_of([&] {
                update_expert(ExpertIdsView{ids, Dtype::kFloat32, 1, 2, 2, 1}, table.view,
                              rank_params(0, 2), out);
              }),
              HasSubstr("update_expert(): expert_ids must be int32 or int64, got float32"));
  const std::int32_t good_ids[] = {0, 0};
  const double scales[] = {0.5, 0.5};
  const float threshold[] = {0.1f, 0.1f};
  const PruningInputs pruning{{scales, Dtype::kFloat64, 1, 2, 2, 1}, {threshold, 2, 1}, false, {}};
  std::uint8_t mask[2];
  EXPECT_THAT(error_of([&] {
                update_expert(
                    UpdateExpertInputs{{good_ids, Dtype::kInt32, 1, 2, 2, 1}, table.view, &pruning},
                    rank_params(0, 2), UpdateExpertOutputs{{out, 2}, {mask, 2}, {}});
              }),
              // With pruning inputs the call is update_expert_pruned(), as in Python.
              HasSubstr("update_expert_pruned(): expert_scales must be float32, float16 or "
                        "bfloat16, got float64"));
}

// In-place mapping is refused, not half done: the CPU rescans expert_ids to
// name a bad element, and the GPU's strided loops read ids other threads write.
TEST(UpdateExpertErrors, OutputsMustNotOverlapExpertIds) {
  OwnedTable table(matrix_from_rows({{1, 0, 0}, {1, 1, 0}}));
  std::vector<std::int32_t> buffer(24, 1);  // ids in [0, 8), outputs placed around them
  const auto map = [&](const ExpertIdsView& ids, std::int32_t* out) {
    return error_of([&] { update_expert(ids, table.view, rank_params(0, 2), out); });
  };
  const ExpertIdsView row_major{buffer.data(), Dtype::kInt32, 2, 4, 4, 1};
  const ExpertIdsView column_major{buffer.data(), Dtype::kInt32, 2, 4, 1, 2};
  const ExpertIdsView broadcast{buffer.data(), Dtype::kInt32, 2, 4, 0, 1};  // one row, twice
  const std::string overlap =
      "update_expert(): balanced_expert_ids shares memory with "
      "expert_ids; outputs must not overlap the inputs";
  EXPECT_THAT(map(row_major, buffer.data()), HasSubstr(overlap));      // in place
  EXPECT_THAT(map(row_major, buffer.data() + 7), HasSubstr(overlap));  // last element shared
  EXPECT_EQ(map(row_major, buffer.data() + 8), "");                    // adjacent
  EXPECT_THAT(map(column_major, buffer.data() + 4), HasSubstr(overlap));
  EXPECT_EQ(map(column_major, buffer.data() + 8), "");
  EXPECT_THAT(map(broadcast, buffer.data() + 3), HasSubstr(overlap));
  EXPECT_EQ(map(broadcast, buffer.data() + 4), "");  // reads 4 ids, writes 8 after them

  // The prepared path runs the same check.
  const PreparedTable prepared(table.view, rank_params(0, 2));
  UpdateExpertOutputs in_place;
  in_place.balanced_expert_ids = {buffer.data() + 2, 8};
  EXPECT_THAT(
      error_of([&] { update_expert_prepared(prepared.view(), row_major, nullptr, in_place); }),
      HasSubstr("update_expert_prepared(): balanced_expert_ids shares memory"));

  // And the pruning mask, a byte per choice.
  const float scales[] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
  const float threshold[] = {0.1f, 0.1f, 0.1f, 0.1f};
  const PruningInputs pruning{{scales, Dtype::kFloat32, 2, 4, 4, 1}, {threshold, 4, 1}, false, {}};
  std::int32_t out[8];
  const auto map_pruned = [&](std::uint8_t* mask) {
    return error_of([&] {
      update_expert(UpdateExpertInputs{row_major, table.view, &pruning}, rank_params(0, 2),
                    UpdateExpertOutputs{{out, 8}, {mask, 8}, {}});
    });
  };
  auto* bytes = reinterpret_cast<std::uint8_t*>(buffer.data());
  EXPECT_THAT(map_pruned(bytes + 31),
              HasSubstr("balanced_active_mask shares memory with expert_ids"));
  EXPECT_EQ(map_pruned(bytes + 32), "");
}

}  // namespace
}  // namespace moe_eplb

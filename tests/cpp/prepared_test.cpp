// PreparedTable / update_expert_prepared(): the hot-path form must agree with
// the stateless operator on every valid input and refuse invalid tables.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "moe_eplb/error.hpp"
#include "moe_eplb/prepared.hpp"
#include "reference.hpp"
#include "test_util.hpp"

namespace moe_eplb {
namespace {

using ::testing::HasSubstr;
using namespace moe_eplb::test;

template <typename T>
std::vector<std::int64_t> map_prepared(const PreparedTable& prepared, const Matrix& ids,
                                       Layout layout) {
  const Strided<T> storage = lay_out<T>(ids, layout, static_cast<T>(-5));
  std::vector<T> out(static_cast<std::size_t>(ids.rows * ids.cols), static_cast<T>(0x5eadbeef));
  UpdateExpertOutputs outputs;
  outputs.balanced_expert_ids = {out.data(), ids.rows * ids.cols};
  update_expert_prepared(prepared.view(), ids_view(storage, ids), nullptr, outputs);
  return widen(out);
}

TEST(PreparedTable, AgreesWithReferenceOverRanksModesDtypesLayouts) {
  std::uint64_t seed = 77;
  for (std::int64_t world_size : {2, 5, 16, 33}) {
    for (int mode : kAllModes) {
      std::mt19937_64 rng(++seed);
      SCOPED_TRACE(::testing::Message()
                   << "seed " << seed << " W " << world_size << " mode " << mode);
      const std::int64_t slots_per_rank = std::max<std::int64_t>(4, 80 / world_size);
      const TableSpec spec{40, 7, world_size, slots_per_rank, 6};
      const Matrix table_m = random_table(spec, rng);
      OwnedTable table(table_m, kAllLayouts[seed % 4]);
      const Matrix ids = random_ids(129, 5, 40, rng);
      for (std::int64_t rank = 0; rank < world_size; rank += 1 + world_size / 5) {
        const PreparedTable prepared(
            table.view, rank_params(rank, world_size, mode, world_size * slots_per_rank));
        const std::vector<std::int64_t> expected =
            reference_update_expert(ids, table_m, rank, world_size, mode).values;
        for (Layout layout : kAllLayouts) {
          ASSERT_EQ(map_prepared<std::int32_t>(prepared, ids, layout), expected) << "rank " << rank;
          ASSERT_EQ(map_prepared<std::int64_t>(prepared, ids, layout), expected) << "rank " << rank;
        }
      }
    }
  }
}

TEST(PreparedTable, RoutesLayout) {
  OwnedTable table(matrix_from_rows({{3, 40, 7, 19}, {1, 2, -9, -9}}));
  const PreparedTable by_rank(table.view, rank_params(5, 8, 0, 48));
  EXPECT_EQ(by_rank.row_width(), 1);
  EXPECT_EQ(by_rank.routes(), (std::vector<std::int32_t>{7, 2}));  // SPEC worked example
  const PreparedTable by_token(table.view, rank_params(0, 8, 1, 48));
  EXPECT_EQ(by_token.row_width(), 4);
  EXPECT_EQ(by_token.routes(), (std::vector<std::int32_t>{3, 40, 7, 19, 1, 2, -1, -1}));
}

// update() installs a table of the same shape in place (the address device
// owners and CUDA graphs rely on), and refuses another shape or an invalid
// table without touching the routes or the report.
TEST(PreparedTable, UpdateRebuildsInPlaceOrRefusesAndKeepsTheOldTable) {
  OwnedTable first(matrix_from_rows({{2, 0, 3}, {1, 1, -1}}));
  OwnedTable second(matrix_from_rows({{1, 2, -1}, {2, 1, 0}}));
  for (const int mode : kAllModes) {
    PreparedTable prepared(first.view, rank_params(1, 2, mode, 4));
    const std::int32_t* address = prepared.routes().data();
    const std::vector<std::int32_t> before = prepared.routes();
    prepared.update(second.view);
    EXPECT_EQ(prepared.routes().data(), address);
    const PreparedTable fresh(second.view, rank_params(1, 2, mode, 4));
    EXPECT_EQ(prepared.routes(), fresh.routes());
    EXPECT_NE(prepared.routes(), before);

    const std::vector<std::int32_t> installed = prepared.routes();
    OwnedTable invalid(matrix_from_rows({{0, 2, -1}, {2, 1, 0}}));
    ErrorCode code = ErrorCode::kIo;
    EXPECT_THAT(error_of([&] { prepared.update(invalid.view); }, &code),
                HasSubstr("PreparedTable.update(): eplb_table is invalid (1 error)"));
    EXPECT_EQ(code, ErrorCode::kInvalidTable);
    OwnedTable wider(matrix_from_rows({{1, 2, -1, -1}, {2, 1, 0, -1}}));
    EXPECT_THAT(error_of([&] { prepared.update(wider.view); }, &code),
                HasSubstr("PreparedTable.update(): eplb_table has shape (2, 4), expected (2, 3)"));
    EXPECT_EQ(code, ErrorCode::kInvalidArgument);
    EXPECT_EQ(prepared.routes(), installed);
    EXPECT_TRUE(prepared.report().ok());
  }
}

TEST(PreparedTable, RefusesInvalidTablesListingEveryProblem) {
  OwnedTable table(matrix_from_rows({{0, 1, 2}, {2, 3, 3}, {1, 3, 0}}));
  try {
    PreparedTable prepared(table.view, rank_params(0, 2, 0, 4));
    FAIL() << "expected an exception";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kInvalidTable);
    EXPECT_THAT(error.what(), HasSubstr("PreparedTable(): eplb_table is invalid (3 errors)"));
    EXPECT_THAT(error.what(), HasSubstr("row 0: replica count 0"));
    EXPECT_THAT(error.what(), HasSubstr("row 1: slot 3 appears in columns 1 and 2"));
    EXPECT_THAT(error.what(),
                HasSubstr("physical slot 3 is claimed by row 1 (column 1) and row 2"));
  }
}

TEST(PreparedTable, RefusesBadScalarsAndKeepsWarnings) {
  OwnedTable table(matrix_from_rows({{5, 0, 4, 8, 12, 16}}));
  EXPECT_THROW(PreparedTable(table.view, rank_params(16, 16, 0, 32)), Error);
  const PreparedTable prepared(table.view, rank_params(3, 16, 0, 32));
  EXPECT_EQ(prepared.report().total_warnings > 0, true);
  EXPECT_THAT(prepared.report().to_string(),
              HasSubstr("replica 5 (slot 16) never receives tokens"));
}

TEST(PreparedTable, TokenModeIgnoresUnsetWorldSize) {
  OwnedTable table(matrix_from_rows({{2, 0, 1}, {1, 2, 0}}));
  UpdateExpertParams params = rank_params(-1, -1, 1, 3);
  params.profile = LimitProfile::kAscend;
  const PreparedTable prepared(table.view, params);
  Matrix ids = make_matrix(3, 1, 0);
  EXPECT_EQ(map_prepared<std::int32_t>(prepared, ids, Layout::kRowMajor),
            (std::vector<std::int64_t>{0, 1, 0}));
}

TEST(PreparedTable, BadExpertIdNamesPosition) {
  OwnedTable table(matrix_from_rows({{1, 0}, {1, 1}}));
  const PreparedTable prepared(table.view, rank_params(0, 2, 0, 2));
  Matrix ids = make_matrix(2, 2, 0);
  ids.at(1, 0) = 2;
  try {
    map_prepared<std::int32_t>(prepared, ids, Layout::kRowMajor);
    FAIL() << "expected an exception";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kIndexOutOfRange);
    EXPECT_THAT(error.what(), HasSubstr("update_expert_prepared(): expert_ids[1, 0] = 2 is out of "
                                        "range, expected 0..1 (the prepared table has 2 experts)"));
  }
}

// Corrupted routes (a caller overwrote the buffer) are caught, never used as indices.
TEST(PreparedTable, CorruptedRoutesAreDetected) {
  const std::int32_t routes[] = {0, 99};
  PreparedView view;
  view.routes = routes;
  view.num_experts = 2;
  view.num_physical_experts = 4;
  const std::int32_t ids[] = {0, 1};
  std::int32_t out[2];
  std::int64_t load[4] = {0, 0, 0, 0};
  UpdateExpertOutputs outputs{{out, 2}, {}, {load, 4}};
  EXPECT_THROW(
      update_expert_prepared(view, ExpertIdsView{ids, Dtype::kInt32, 1, 2, 2, 1}, nullptr, outputs),
      Error);
  const std::int32_t packed[] = {3, 0, 1, 7, 7};  // token mode, count 3 > row_width - 1
  view.routes = packed;
  view.num_experts = 1;
  view.row_width = 5;
  view.balance_mode = BalanceMode::kByToken;
  const std::int32_t zero[] = {0, 0, 0};
  std::int32_t out3[3];
  outputs.balanced_expert_ids = {out3, 3};
  EXPECT_THROW(update_expert_prepared(view, ExpertIdsView{zero, Dtype::kInt32, 3, 1, 1, 1}, nullptr,
                                      outputs),
               Error);
  EXPECT_EQ(load[0] + load[1] + load[2] + load[3], 0);
}

TEST(PreparedTable, PruningAndLoadRecordingMatchTheStatelessOperator) {
  std::mt19937_64 rng(5);
  const Matrix table_m = random_table(TableSpec{12, 4, 4, 5, 3}, rng);
  OwnedTable table(table_m);
  const Matrix ids = random_ids(64, 4, 12, rng);
  std::vector<std::int32_t> ids32(ids.values.begin(), ids.values.end());
  std::vector<float> scales(ids32.size());
  for (float& s : scales) s = static_cast<float>(rng() % 1000) / 1000.0f;
  const float threshold[] = {0.1f, 0.2f, 0.15f, 0.3f};
  std::vector<std::uint8_t> active(64, 1);
  for (std::size_t b = 50; b < 64; ++b) active[b] = 0;
  PruningInputs pruning{{scales.data(), Dtype::kFloat32, 64, 4, 4, 1},
                        {threshold, 4, 1},
                        true,
                        {active.data(), 64, 1}};
  const ExpertIdsView view{ids32.data(), Dtype::kInt32, 64, 4, 4, 1};
  for (int mode : kAllModes) {
    const UpdateExpertParams params = rank_params(1, 4, mode, 20);
    std::vector<std::int32_t> out_a(256), out_b(256);
    std::vector<std::uint8_t> mask_a(256), mask_b(256, 7);
    std::vector<std::int64_t> load_a(20), load_b(20);
    update_expert(
        UpdateExpertInputs{view, table.view, &pruning}, params,
        UpdateExpertOutputs{{out_a.data(), 256}, {mask_a.data(), 256}, {load_a.data(), 20}});
    const PreparedTable prepared(table.view, params);
    update_expert_prepared(
        prepared.view(), view, &pruning,
        UpdateExpertOutputs{{out_b.data(), 256}, {mask_b.data(), 256}, {load_b.data(), 20}});
    EXPECT_EQ(out_a, out_b);
    EXPECT_EQ(mask_a, mask_b);
    EXPECT_EQ(load_a, load_b);
  }
}

}  // namespace
}  // namespace moe_eplb

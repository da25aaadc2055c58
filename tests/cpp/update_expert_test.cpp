// The CPU operator against SPEC.md: every formula note as a named test, the
// worked example, seeded sweeps against the scalar reference, pruning in all
// scale dtypes and load recording. Bad inputs: update_expert_errors_test.cpp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

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

// ---- SPEC.md worked example and formula notes ---------------------------------

// SPEC worked example: world_size=8, rank 5, row [3, 40, 7, 19] -> 7 in rank mode.
TEST(UpdateExpertSpec, WorkedExampleRankMode) {
  OwnedTable table(matrix_from_rows({{3, 40, 7, 19, -1}}));
  const Matrix ids = make_matrix(6, 1, 0);
  const Matrix out = run<std::int32_t>(ids, table.view, rank_params(5, 8, 0));
  for (std::int64_t b = 0; b < 6; ++b) EXPECT_EQ(out.at(b, 0), 7) << "token " << b;
}

// SPEC worked example, token mode: b = 4 -> 7, b = 5 -> 19.
TEST(UpdateExpertSpec, WorkedExampleTokenMode) {
  OwnedTable table(matrix_from_rows({{3, 40, 7, 19, -1}}));
  const Matrix ids = make_matrix(6, 1, 0);
  const Matrix out = run<std::int64_t>(ids, table.view, rank_params(5, 8, 1));
  EXPECT_EQ(out.at(4, 0), 7);
  EXPECT_EQ(out.at(5, 0), 19);
  EXPECT_EQ(out.at(0, 0), 40);
}

// Note 1: with c == 1 both general branches give j = 1 (the special case is a shortcut).
TEST(UpdateExpertSpec, SingleReplicaAlwaysColumnOne) {
  for (std::int64_t world_size : {1, 2, 3, 16, 384}) {
    for (std::int64_t rank = 0; rank < world_size;
         rank += std::max<std::int64_t>(1, world_size / 7)) {
      for (std::int64_t token : {0, 1, 5, 511}) {
        for (int mode : kAllModes) EXPECT_EQ(reference_column(1, token, rank, world_size, mode), 1);
      }
    }
  }
  OwnedTable table(matrix_from_rows({{1, 42, 9, 9}}));
  const Matrix ids = make_matrix(9, 2, 0);
  for (int mode : kAllModes) {
    for (std::int64_t rank : {0, 7, 15}) {
      const Matrix out = run<std::int32_t>(ids, table.view, rank_params(rank, 16, mode));
      for (std::int64_t value : out.values) EXPECT_EQ(value, 42);
    }
  }
}

// Note 2: world_size=16, c=3 -> ranks 0-5 use replica 1, 6-11 replica 2, 12-15 replica 3.
TEST(UpdateExpertSpec, RankGroupsUnevenWhenCountDoesNotDivide) {
  OwnedTable table(matrix_from_rows({{3, 100, 200, 300}}));
  const Matrix ids = make_matrix(1, 1, 0);
  for (std::int64_t rank = 0; rank < 16; ++rank) {
    const std::int64_t expected = rank <= 5 ? 100 : rank <= 11 ? 200 : 300;
    EXPECT_EQ(run<std::int32_t>(ids, table.view, rank_params(rank, 16)).at(0, 0), expected)
        << "rank " << rank;
  }
}

// Note 2: j never exceeds c, for every (world_size, count, rank); columns past c
// hold a sentinel that must never come out.
TEST(UpdateExpertSpec, RankModeNeverSelectsPastCount) {
  constexpr std::int64_t kSentinel = 999999;
  for (std::int64_t world_size = 1; world_size <= 40; ++world_size) {
    for (std::int64_t count = 1; count <= world_size + 2; ++count) {
      Matrix row = make_matrix(1, count + 3, kSentinel);
      row.at(0, 0) = count;
      for (std::int64_t j = 1; j <= count; ++j) row.at(0, j) = j;
      OwnedTable table(row);
      std::vector<std::int64_t> served(static_cast<std::size_t>(count + 1), 0);
      for (std::int64_t rank = 0; rank < world_size; ++rank) {
        const std::int64_t j =
            run<std::int32_t>(make_matrix(1, 1, 0), table.view, rank_params(rank, world_size))
                .at(0, 0);
        ASSERT_GE(j, 1);
        ASSERT_LE(j, count) << "world_size " << world_size << " count " << count;
        ++served[static_cast<std::size_t>(j)];
      }
      // Groups are consecutive and of size ceil(W / c).
      const std::int64_t group = (world_size + count - 1) / count;
      for (std::int64_t j = 1; j <= count; ++j) {
        const std::int64_t first = (j - 1) * group;
        const std::int64_t expected = first >= world_size ? 0 : std::min(group, world_size - first);
        EXPECT_EQ(served[static_cast<std::size_t>(j)], expected)
            << "world_size " << world_size << " count " << count << " replica " << j;
      }
    }
  }
}

// Note 3: rank-mode output depends only on (e, local_rank_id), never on the token.
TEST(UpdateExpertSpec, RankModeIgnoresTokenIndex) {
  std::mt19937_64 rng(7);
  OwnedTable table(random_table(TableSpec{32, 9, 16, 4, 8}, rng));
  Matrix ids = make_matrix(300, 4);
  for (std::int64_t b = 0; b < 300; ++b) {
    for (std::int64_t k = 0; k < 4; ++k) ids.at(b, k) = (k * 7 + 3) % 32;  // same for every token
  }
  for (std::int64_t rank : {0, 5, 15}) {
    const Matrix out = run<std::int32_t>(ids, table.view, rank_params(rank, 16, 0));
    for (std::int64_t b = 1; b < 300; ++b) {
      for (std::int64_t k = 0; k < 4; ++k) ASSERT_EQ(out.at(b, k), out.at(0, k));
    }
  }
}

// Note 4: token mode uses replica 1 + b mod c for all K choices of token b that hit e.
TEST(UpdateExpertSpec, TokenModeSameReplicaForAllChoicesOfAToken) {
  OwnedTable table(matrix_from_rows({{3, 10, 11, 12}, {2, 20, 21, -5}}));
  Matrix ids = make_matrix(7, 4);
  for (std::int64_t b = 0; b < 7; ++b) {
    ids.at(b, 0) = 0;
    ids.at(b, 1) = 1;
    ids.at(b, 2) = 0;
    ids.at(b, 3) = 0;
  }
  const Matrix out = run<std::int32_t>(ids, table.view, rank_params(0, 4, 1));
  for (std::int64_t b = 0; b < 7; ++b) {
    EXPECT_EQ(out.at(b, 0), 10 + b % 3);
    EXPECT_EQ(out.at(b, 2), out.at(b, 0));
    EXPECT_EQ(out.at(b, 3), out.at(b, 0));
    EXPECT_EQ(out.at(b, 1), 20 + b % 2);
  }
}

// Columns after c are ignored, whatever they hold (even values that would be errors).
TEST(UpdateExpertSpec, ColumnsAfterCountIgnored) {
  OwnedTable table(matrix_from_rows({{2, 5, 6, -1, 1 << 30}}));
  const Matrix ids = make_matrix(4, 2, 0);
  for (int mode : kAllModes) {
    for (std::int64_t rank : {0, 1}) {
      const Matrix out = run<std::int32_t>(ids, table.view, rank_params(rank, 2, mode));
      for (std::int64_t v : out.values) EXPECT_TRUE(v == 5 || v == 6);
    }
  }
}

// Rows no token references are never read, so a bad row elsewhere is not an error.
TEST(UpdateExpertSpec, UnreferencedBadRowsAreNotErrors) {
  OwnedTable table(matrix_from_rows({{1, 3, 0}, {0, 0, 0}, {9, 9, 9}}));
  const Matrix ids = make_matrix(64, 2, 0);  // batch larger than the table: per-call map path
  EXPECT_EQ(run<std::int32_t>(ids, table.view, rank_params(0, 2)).at(63, 1), 3);
  const Matrix few = make_matrix(1, 1, 0);  // batch smaller than the table: per-element path
  EXPECT_EQ(run<std::int32_t>(few, table.view, rank_params(1, 2)).at(0, 0), 3);
}

// ---- sweeps against the reference ------------------------------------------------

struct SweepCase {
  std::int64_t num_tokens, top_k, num_experts, world_size, slots_per_rank, max_count, columns;
};

template <typename T>
void sweep_one(const SweepCase& c, Layout ids_layout, Layout table_layout, int mode,
               std::uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " BS " << c.num_tokens << " K " << c.top_k
                                    << " E " << c.num_experts << " W " << c.world_size << " ids "
                                    << to_string(ids_layout) << " table " << to_string(table_layout)
                                    << " mode " << mode << " dtype " << sizeof(T) * 8);
  std::mt19937_64 rng(seed);
  const Matrix table_m = random_table(
      TableSpec{c.num_experts, c.columns, c.world_size, c.slots_per_rank, c.max_count}, rng);
  OwnedTable table(table_m, table_layout);
  const Matrix ids = random_ids(c.num_tokens, c.top_k, c.num_experts, rng);
  const std::int64_t ranks[] = {0, c.world_size / 3, c.world_size / 2, c.world_size - 1};
  for (std::int64_t rank : ranks) {
    UpdateExpertParams params = rank_params(rank, c.world_size, mode);
    params.num_physical_experts = c.world_size * c.slots_per_rank;
    const Matrix expected = reference_update_expert(ids, table_m, rank, c.world_size, mode);
    const Matrix got = run<T>(ids, table.view, params, ids_layout);
    ASSERT_EQ(got.values, expected.values) << "rank " << rank;
  }
}

TEST(UpdateExpertSweep, MatchesReferenceOverShapesDtypesLayoutsModes) {
  const SweepCase cases[] = {
      {1, 1, 1, 2, 1, 1, 2},       {3, 2, 5, 3, 4, 3, 4},        {17, 8, 64, 8, 9, 8, 9},
      {511, 16, 256, 32, 9, 7, 8}, {512, 16, 512, 384, 2, 5, 6}, {513, 3, 40, 7, 11, 7, 8},
      {8, 8, 256, 32, 9, 9, 10},   {2, 4, 1024, 64, 16, 4, 6},   {100, 6, 10, 33, 1, 33, 34},
      {64, 5, 12, 16, 3, 5, 9},    {4097, 2, 31, 6, 6, 6, 7},    {0, 4, 8, 4, 2, 2, 3},
      {5, 0, 8, 4, 2, 2, 3},
  };
  std::uint64_t seed = 1234;
  for (const SweepCase& c : cases) {
    for (int mode : kAllModes) {
      for (Layout ids_layout : kAllLayouts) {
        const Layout table_layout = kAllLayouts[seed % 4];
        sweep_one<std::int32_t>(c, ids_layout, table_layout, mode, ++seed);
        sweep_one<std::int64_t>(c, ids_layout, table_layout, mode, ++seed);
      }
    }
  }
}

// Every rank of several world sizes, counts that do and do not divide world_size.
TEST(UpdateExpertSweep, EveryRankOfSeveralWorldSizes) {
  for (std::int64_t world_size : {2, 3, 7, 8, 16, 33, 64}) {
    Matrix table = make_matrix(world_size, world_size + 1);
    for (std::int64_t e = 0; e < world_size; ++e) {
      const std::int64_t count = e + 1;  // every count 1..world_size
      table.at(e, 0) = count;
      for (std::int64_t j = 1; j <= count; ++j) table.at(e, j) = e * 1000 + j;
    }
    OwnedTable owned(table);
    std::mt19937_64 rng(static_cast<std::uint64_t>(world_size));
    const Matrix ids = random_ids(40, 3, world_size, rng);
    for (std::int64_t rank = 0; rank < world_size; ++rank) {
      for (int mode : kAllModes) {
        ASSERT_EQ(run<std::int64_t>(ids, owned.view, rank_params(rank, world_size, mode)).values,
                  reference_update_expert(ids, table, rank, world_size, mode).values)
            << "world_size " << world_size << " rank " << rank << " mode " << mode;
      }
    }
  }
}

// A broadcast view (token stride 0) is a valid strided input.
TEST(UpdateExpertSweep, ZeroTokenStrideBroadcast) {
  OwnedTable table(matrix_from_rows({{2, 4, 5}, {1, 6, 0}}));
  const std::int32_t row[] = {1, 0, 1};
  ExpertIdsView ids{row, Dtype::kInt32, 5, 3, 0, 1};
  std::vector<std::int32_t> out(15, kPoison32);
  update_expert(ids, table.view, rank_params(0, 2, 1), out.data());
  for (std::int64_t b = 0; b < 5; ++b) {
    EXPECT_EQ(out[static_cast<std::size_t>(b * 3)], 6);
    EXPECT_EQ(out[static_cast<std::size_t>(b * 3 + 1)], 4 + b % 2);
  }
}

// Large native problems: more tokens than the Ascend cap, big E and world_size.
TEST(UpdateExpertSweep, NativeProfileHasNoAscendCaps) {
  std::mt19937_64 rng(99);
  const Matrix table = random_table(TableSpec{2048, 5, 1000, 3, 4}, rng);
  OwnedTable owned(table);
  const Matrix ids = random_ids(70000, 2, 2048, rng);
  ASSERT_EQ(run<std::int32_t>(ids, owned.view, rank_params(777, 1000)).values,
            reference_update_expert(ids, table, 777, 1000, 0).values);
}

// ---- pruning ------------------------------------------------------------------------

TEST(UpdateExpertPruning, MatchesReferenceInAllDtypes) {
  std::uint64_t seed = 500;
  for (Dtype dtype : {Dtype::kFloat32, Dtype::kFloat16, Dtype::kBFloat16}) {
    for (std::int64_t num_tokens : {1, 7, 128, 512}) {
      for (std::int64_t top_k : {1, 2, 8, 16}) {
        for (bool with_active : {false, true}) {
          std::mt19937_64 rng(++seed);
          SCOPED_TRACE(::testing::Message() << "seed " << seed << " dtype " << to_string(dtype)
                                            << " BS " << num_tokens << " K " << top_k);
          const Matrix table_m = random_table(TableSpec{32, 5, 8, 8, 4}, rng);
          OwnedTable table(table_m);
          const Matrix ids = random_ids(num_tokens, top_k, 32, rng);
          const PruningData d = random_pruning(num_tokens, top_k, dtype, rng);
          // Lay scales out column-major to exercise strides.
          Matrix bits = make_matrix(num_tokens, top_k);
          PruningInputs pruning;
          pruning.expert_scales.dtype = dtype;
          pruning.expert_scales.num_tokens = num_tokens;
          pruning.expert_scales.top_k = top_k;
          pruning.expert_scales.token_stride = 1;
          pruning.expert_scales.k_stride = num_tokens;
          std::vector<float> f32_col(d.f32.size());
          std::vector<std::uint16_t> b16_col(d.bits16.size());
          for (std::int64_t b = 0; b < num_tokens; ++b) {
            for (std::int64_t k = 0; k < top_k; ++k) {
              const auto src = static_cast<std::size_t>(b * top_k + k);
              const auto dst = static_cast<std::size_t>(k * num_tokens + b);
              if (dtype == Dtype::kFloat32)
                f32_col[dst] = d.f32[src];
              else
                b16_col[dst] = d.bits16[src];
            }
          }
          pruning.expert_scales.data = dtype == Dtype::kFloat32
                                           ? static_cast<const void*>(f32_col.data())
                                           : static_cast<const void*>(b16_col.data());
          // Threshold as a (1, K) row with stride 2.
          std::vector<float> threshold_storage(static_cast<std::size_t>(2 * top_k), -1.0f);
          for (std::int64_t k = 0; k < top_k; ++k) {
            threshold_storage[static_cast<std::size_t>(2 * k)] =
                d.threshold[static_cast<std::size_t>(k)];
          }
          pruning.pruning_threshold = {threshold_storage.data(), top_k, 2};
          pruning.has_active_mask = with_active;
          pruning.active_mask = {d.active.data(), num_tokens, 1};

          std::vector<std::int32_t> ids_storage(ids.values.begin(), ids.values.end());
          ExpertIdsView ids_view_{ids_storage.data(), Dtype::kInt32, num_tokens, top_k, top_k, 1};
          std::vector<std::int32_t> out(ids_storage.size(), kPoison32);
          std::vector<std::uint8_t> mask(ids_storage.size(), 0xcc);
          UpdateExpertOutputs outputs;
          outputs.balanced_expert_ids = {out.data(), num_tokens * top_k};
          outputs.balanced_active_mask = {mask.data(), num_tokens * top_k};
          update_expert(UpdateExpertInputs{ids_view_, table.view, &pruning}, rank_params(3, 8, 0),
                        outputs);
          EXPECT_EQ(widen(out), reference_update_expert(ids, table_m, 3, 8, 0).values)
              << "pruning never changes balanced_expert_ids";
          EXPECT_EQ(mask, reference_pruning_mask(d.values, num_tokens, top_k, d.threshold,
                                                 with_active ? &d.active : nullptr));
          (void)bits;
        }
      }
    }
  }
}

// Pruning rule edge cases (SPEC.md): equality keeps, a NaN keeps (pruning
// never drops a choice on a NaN), inactive tokens prune all.
TEST(UpdateExpertPruning, EqualityKeepsNanKeepsInactivePrunesAll) {
  OwnedTable table(matrix_from_rows({{1, 0, 0}}));
  const std::int32_t ids[] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  // token 0: scales 0.5, 0.25, 0.25 (sum 1); thresholds 0.5, 0.25, 0.3 -> keep, keep, prune
  // token 1: a NaN scale -> the sum is NaN: nothing is pruned
  // token 2: as token 0 under a NaN third threshold -> keep, keep, keep
  const float scales[] = {0.5f, 0.25f, 0.25f, 1.0f, NAN, 0.0f, 0.5f, 0.25f, 0.25f};
  const float threshold[] = {0.5f, 0.25f, 0.3f};
  const float nan_threshold[] = {0.5f, 0.25f, NAN};
  const std::uint8_t active[] = {1, 1, 1};
  PruningInputs pruning{
      {scales, Dtype::kFloat32, 2, 3, 3, 1}, {threshold, 3, 1}, true, {active, 2, 1}};
  std::int32_t out[9];
  std::uint8_t mask[9];
  UpdateExpertOutputs outputs{{out, 6}, {mask, 6}, {}};
  update_expert(UpdateExpertInputs{{ids, Dtype::kInt32, 2, 3, 3, 1}, table.view, &pruning},
                rank_params(0, 2), outputs);
  EXPECT_THAT(std::vector<int>(mask, mask + 6), ::testing::ElementsAre(1, 1, 0, 1, 1, 1));
  PruningInputs nan_pruning{
      {scales + 6, Dtype::kFloat32, 1, 3, 3, 1}, {nan_threshold, 3, 1}, true, {active, 1, 1}};
  UpdateExpertOutputs one{{out, 3}, {mask, 3}, {}};
  update_expert(UpdateExpertInputs{{ids, Dtype::kInt32, 1, 3, 3, 1}, table.view, &nan_pruning},
                rank_params(0, 2), one);
  EXPECT_THAT(std::vector<int>(mask, mask + 3), ::testing::ElementsAre(1, 1, 1));
  const std::uint8_t inactive[] = {0, 1};
  pruning.active_mask = {inactive, 2, 1};
  update_expert(UpdateExpertInputs{{ids, Dtype::kInt32, 2, 3, 3, 1}, table.view, &pruning},
                rank_params(0, 2), outputs);
  EXPECT_THAT(std::vector<int>(mask, mask + 3), ::testing::ElementsAre(0, 0, 0));
}

// An active_mask with a true entry after a false one: each entry decides for
// its token under the native profile; the ascend profile refuses it (Ascend's
// precondition), naming both entries, stateless and prepared.
TEST(UpdateExpertPruning, ActiveMaskOrderIsTheAscendProfilesPrecondition) {
  OwnedTable table(matrix_from_rows({{1, 0, 0}}));
  const std::int32_t ids[] = {0, 0, 0};
  const float scales[] = {1.0f, 1.0f, 1.0f};
  const float threshold[] = {0.0f};
  const std::uint8_t out_of_order[] = {0, 1, 1};
  PruningInputs pruning{
      {scales, Dtype::kFloat32, 3, 1, 1, 1}, {threshold, 1, 1}, true, {out_of_order, 3, 1}};
  std::int32_t out[3];
  std::uint8_t mask[3];
  const UpdateExpertOutputs outputs{{out, 3}, {mask, 3}, {}};
  const UpdateExpertInputs inputs{{ids, Dtype::kInt32, 3, 1, 1, 1}, table.view, &pruning};
  update_expert(inputs, rank_params(0, 2), outputs);
  EXPECT_THAT(std::vector<int>(mask, mask + 3), ::testing::ElementsAre(0, 1, 1));
  UpdateExpertParams ascend = rank_params(0, 2);
  ascend.profile = LimitProfile::kAscend;
  try {
    update_expert(inputs, ascend, outputs);
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kInvalidArgument);
    EXPECT_STREQ(error.what(),
                 "update_expert_pruned(): active_mask[1] is true after active_mask[0] is false; "
                 "the ascend profile requires every true entry before every false one (Ascend's "
                 "precondition; the native profile lets each token's entry decide alone)");
  }
  const PreparedTable prepared(table.view, ascend);
  EXPECT_THROW(update_expert_prepared(prepared.view(), inputs.expert_ids, &pruning, outputs),
               Error);
}

// ---- load recording ---------------------------------------------------------------

TEST(UpdateExpertLoad, CountsKeptChoicesPerPhysicalSlot) {
  std::mt19937_64 rng(42);
  const Matrix table_m = random_table(TableSpec{16, 5, 4, 6, 4}, rng);
  OwnedTable table(table_m);
  const Matrix ids = random_ids(200, 4, 16, rng);
  const PruningData d = random_pruning(200, 4, Dtype::kFloat32, rng);
  PruningInputs pruning{{d.f32.data(), Dtype::kFloat32, 200, 4, 4, 1},
                        {d.threshold.data(), 4, 1},
                        true,
                        {d.active.data(), 200, 1}};
  std::vector<std::int64_t> ids64 = ids.values;
  std::vector<std::int64_t> out(ids64.size());
  std::vector<std::uint8_t> mask(ids64.size());
  std::vector<std::int64_t> load(24, 5);  // added to, not cleared
  UpdateExpertParams params = rank_params(2, 4, 1);
  params.num_physical_experts = 24;
  update_expert(
      UpdateExpertInputs{{ids64.data(), Dtype::kInt64, 200, 4, 4, 1}, table.view, &pruning}, params,
      UpdateExpertOutputs{{out.data(), 800}, {mask.data(), 800}, {load.data(), 24}});
  const Matrix expected = reference_update_expert(ids, table_m, 2, 4, 1);
  const std::vector<std::uint8_t> expected_mask =
      reference_pruning_mask(d.f32, 200, 4, d.threshold, &d.active);
  std::vector<std::int64_t> histogram(24, 5);
  for (std::size_t i = 0; i < expected.values.size(); ++i) {
    if (expected_mask[i]) ++histogram[static_cast<std::size_t>(expected.values[i])];
  }
  EXPECT_EQ(load, histogram);
}

TEST(UpdateExpertLoad, FailedCallLeavesCountersUntouched) {
  OwnedTable table(matrix_from_rows({{1, 0, 0}, {1, 1, 0}}));
  const std::int32_t ids[] = {0, 1, 0, 7};
  std::int32_t out[4];
  std::vector<std::int64_t> load(2, 0);
  UpdateExpertParams params = rank_params(0, 2);
  params.num_physical_experts = 2;
  EXPECT_THROW(
      update_expert(UpdateExpertInputs{{ids, Dtype::kInt32, 2, 2, 2, 1}, table.view, nullptr},
                    params, UpdateExpertOutputs{{out, 4}, {}, {load.data(), 2}}),
      Error);
  EXPECT_EQ(load, std::vector<std::int64_t>(2, 0));
}

// Empty batches are valid under the native profile and write nothing.
TEST(UpdateExpertEdge, EmptyBatchesWriteNothing) {
  OwnedTable table(matrix_from_rows({{1, 0, 0}}));
  EXPECT_NO_THROW(update_expert(ExpertIdsView{nullptr, Dtype::kInt64, 0, 8, 8, 1}, table.view,
                                rank_params(0, 2), nullptr));
  EXPECT_NO_THROW(update_expert(ExpertIdsView{nullptr, Dtype::kInt32, 5, 0, 0, 1}, table.view,
                                rank_params(0, 2), nullptr));
}

// Worked example of balance_mode 2 (vLLM's rule), by hand: 2654435769 = 3 * 884811923, so
// token 1 of a 3-replica expert uses replica 1 + 0; token 2: 5308871538 mod 2^32 =
// 1013904242 = 3 * 337968080 + 2, replica 3; token 0: replica 1.
TEST(UpdateExpertSpec, HashModeWorkedExample) {
  OwnedTable table(matrix_from_rows({{3, 40, 7, 19, -1}}));
  const Matrix ids = make_matrix(3, 2, 0);
  const Matrix out = run<std::int64_t>(ids, table.view, rank_params(5, 8, 2));
  EXPECT_EQ(out.values, (std::vector<std::int64_t>{40, 40, 40, 40, 19, 19}));
}

// The hash keeps the low 32 bits of token * 2654435769 for every token index,
// also where vLLM's int64 product wraps (tokens past 2^63 / 2654435769).
TEST(UpdateExpertEdge, HashModeIsExactForLargeTokenIndices) {
  for (std::int64_t token :
       {std::int64_t{0xffffffff}, std::int64_t{1} << 32, (std::int64_t{1} << 32) + 7,
        std::int64_t{1} << 40, std::int64_t{3474613327}, std::int64_t{1} << 62, INT64_MAX}) {
    for (std::uint32_t count : {2u, 3u, 7u, 1000u}) {
      EXPECT_EQ(detail::replica_column(count, token, 0, 1, BalanceMode::kByHash),
                reference_column(count, token, 0, 1, 2))
          << "token " << token << " count " << count;
    }
  }
}

// Token mode's b mod c stays exact past 32-bit token indices (the kernel switches
// from 32- to 64-bit modulo there).
TEST(UpdateExpertEdge, TokenModeModuloIsExactForLargeTokenIndices) {
  for (std::int64_t token : {std::int64_t{0xffffffff}, std::int64_t{1} << 32,
                             (std::int64_t{1} << 32) + 7, std::int64_t{1} << 40}) {
    for (std::uint32_t count : {2u, 3u, 7u, 1000u}) {
      EXPECT_EQ(detail::replica_column(count, token, 0, 1, BalanceMode::kByToken),
                reference_column(count, token, 0, 1, 1))
          << "token " << token << " count " << count;
    }
  }
}

}  // namespace
}  // namespace moe_eplb

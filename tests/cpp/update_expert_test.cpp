// The CPU operator against SPEC.md: every formula note as a named test, the
// worked example, seeded sweeps against the scalar reference, pruning in all
// scale dtypes, load recording, and every bad input with its message.
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

constexpr std::int64_t kPoison32 = 0x7eadbeef;

UpdateExpertParams rank_params(std::int64_t rank, std::int64_t world_size, int mode = 0) {
  UpdateExpertParams params;
  params.local_rank_id = rank;
  params.world_size = world_size;
  params.balance_mode = static_cast<BalanceMode>(mode);
  return params;
}

// Runs the op with ids laid out as `layout` in dtype T; the output buffer is
// poisoned first, so an element the op does not write keeps the poison.
template <typename T>
Matrix run(const Matrix& ids, const TableView& table, const UpdateExpertParams& params,
           Layout layout = Layout::kRowMajor) {
  const Strided<T> storage = lay_out<T>(ids, layout, static_cast<T>(-999));
  std::vector<T> out(static_cast<std::size_t>(ids.rows * ids.cols), static_cast<T>(kPoison32));
  update_expert(ids_view(storage, ids), table, params, out.data());
  Matrix result = make_matrix(ids.rows, ids.cols);
  result.values = widen(out);
  return result;
}

// Message of the moe_eplb::Error a callable throws ("" if none).
template <typename F>
std::string error_of(F&& f, ErrorCode* code = nullptr) {
  try {
    f();
  } catch (const Error& error) {
    if (code != nullptr) *code = error.code();
    return error.what();
  }
  return "";
}

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
        EXPECT_EQ(reference_column(1, token, rank, world_size, 0), 1);
        EXPECT_EQ(reference_column(1, token, rank, world_size, 1), 1);
      }
    }
  }
  OwnedTable table(matrix_from_rows({{1, 42, 9, 9}}));
  const Matrix ids = make_matrix(9, 2, 0);
  for (int mode : {0, 1}) {
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
  for (int mode : {0, 1}) {
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
    for (int mode : {0, 1}) {
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
      for (int mode : {0, 1}) {
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

struct PruningData {
  std::vector<std::uint16_t> bits16;
  std::vector<float> f32;
  std::vector<float> values;  // float value of each scale, by definition
  std::vector<float> threshold;
  std::vector<std::uint8_t> active;
};

PruningData random_pruning(std::int64_t num_tokens, std::int64_t top_k, Dtype dtype,
                           std::mt19937_64& rng) {
  PruningData d;
  const std::size_t n = static_cast<std::size_t>(num_tokens * top_k);
  std::uniform_real_distribution<float> value(0.0f, 0.3f);
  std::uniform_int_distribution<int> mantissa16(0, 1023), exponent16(9, 14);
  std::uniform_int_distribution<int> mantissa_bf(0, 127), exponent_bf(118, 126);
  for (std::size_t i = 0; i < n; ++i) {
    if (dtype == Dtype::kFloat32) {
      d.f32.push_back(value(rng));
      d.values.push_back(d.f32.back());
    } else if (dtype == Dtype::kFloat16) {
      // Include subnormals now and then.
      const int e = i % 17 == 0 ? 0 : exponent16(rng);
      d.bits16.push_back(static_cast<std::uint16_t>((e << 10) | mantissa16(rng)));
      d.values.push_back(reference_half_value(d.bits16.back()));
    } else {
      d.bits16.push_back(static_cast<std::uint16_t>((exponent_bf(rng) << 7) | mantissa_bf(rng)));
      d.values.push_back(reference_bfloat16_value(d.bits16.back()));
    }
  }
  std::uniform_real_distribution<float> thr(0.0f, 0.25f);
  for (std::int64_t k = 0; k < top_k; ++k) d.threshold.push_back(thr(rng));
  const std::int64_t num_active =
      num_tokens == 0 ? 0 : static_cast<std::int64_t>(rng() % (num_tokens + 1));
  for (std::int64_t b = 0; b < num_tokens; ++b) d.active.push_back(b < num_active ? 1 : 0);
  return d;
}

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

// Pruning rule edge cases: equality keeps, NaN prunes, inactive tokens prune all.
TEST(UpdateExpertPruning, EqualityKeepsNanPrunesInactivePrunesAll) {
  OwnedTable table(matrix_from_rows({{1, 0, 0}}));
  const std::int32_t ids[] = {0, 0, 0, 0, 0, 0};
  // token 0: scales 0.5, 0.25, 0.25 (sum 1); thresholds 0.5, 0.25, 0.3 -> keep, keep, prune
  // token 1: a NaN scale -> the sum is NaN, every comparison is false
  const float scales[] = {0.5f, 0.25f, 0.25f, 1.0f, NAN, 0.0f};
  const float threshold[] = {0.5f, 0.25f, 0.3f};
  const std::uint8_t active[] = {1, 1};
  PruningInputs pruning{
      {scales, Dtype::kFloat32, 2, 3, 3, 1}, {threshold, 3, 1}, true, {active, 2, 1}};
  std::int32_t out[6];
  std::uint8_t mask[6];
  UpdateExpertOutputs outputs{{out, 6}, {mask, 6}, {}};
  update_expert(UpdateExpertInputs{{ids, Dtype::kInt32, 2, 3, 3, 1}, table.view, &pruning},
                rank_params(0, 2), outputs);
  EXPECT_THAT(std::vector<int>(mask, mask + 6), ::testing::ElementsAre(1, 1, 0, 0, 0, 0));
  const std::uint8_t inactive[] = {0, 1};
  pruning.active_mask = {inactive, 2, 1};
  update_expert(UpdateExpertInputs{{ids, Dtype::kInt32, 2, 3, 3, 1}, table.view, &pruning},
                rank_params(0, 2), outputs);
  EXPECT_THAT(std::vector<int>(mask, mask + 3), ::testing::ElementsAre(0, 0, 0));
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
      UpdateExpertInputs{{ids64.data(), Dtype::kInt64, 200, 4, 4, 1}, table.view, &pruning},
      params, UpdateExpertOutputs{{out.data(), 800}, {mask.data(), 800}, {load.data(), 24}});
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
      {"balance_mode 2", 4, 2, 8, 3, 0, 8, 2, -1, P::kNative,
       "balance_mode must be 0 (by rank) or 1 (by token), got 2"},
      {"token mode under seed", 4, 2, 8, 3, 0, 8, 1, -1, P::kAscendSeed,
       "balance_mode 1 (by token) is not supported under the ascend_seed profile, expected 0"},
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
          update_expert(
              ExpertIdsView{ids.data(), Dtype::kInt32, c.num_tokens, c.top_k, c.top_k, 1}, table,
              params, out.data());
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
    return error_of(
        [&] { update_expert(UpdateExpertInputs{view, table.view, pruning}, params, outputs); });
  };
  EXPECT_EQ(call(UpdateExpertOutputs{{out, 4}, {}, {load, 2}}, nullptr), "");
  EXPECT_THAT(call(UpdateExpertOutputs{{out, 3}, {}, {}}, nullptr),
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
  EXPECT_THAT(
      error_of([&] {
        update_expert(
            UpdateExpertInputs{{good_ids, Dtype::kInt32, 1, 2, 2, 1}, table.view, &pruning},
            rank_params(0, 2), UpdateExpertOutputs{{out, 2}, {mask, 2}, {}});
      }),
      HasSubstr("update_expert(): expert_scales must be float32, float16 or bfloat16, got "
                "float64"));
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
  const PruningInputs pruning{
      {scales, Dtype::kFloat32, 2, 4, 4, 1}, {threshold, 4, 1}, false, {}};
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

// Empty batches are valid under the native profile and write nothing.
TEST(UpdateExpertEdge, EmptyBatchesWriteNothing) {
  OwnedTable table(matrix_from_rows({{1, 0, 0}}));
  EXPECT_NO_THROW(update_expert(ExpertIdsView{nullptr, Dtype::kInt64, 0, 8, 8, 1}, table.view,
                                rank_params(0, 2), nullptr));
  EXPECT_NO_THROW(update_expert(ExpertIdsView{nullptr, Dtype::kInt32, 5, 0, 0, 1}, table.view,
                                rank_params(0, 2), nullptr));
}

// Token mode's b mod c stays exact past 32-bit token indices (the kernel switches
// from 32- to 64-bit modulo there).
TEST(UpdateExpertEdge, TokenModeModuloIsExactForLargeTokenIndices) {
  for (std::int64_t token : {std::int64_t{0xffffffff}, std::int64_t{1} << 32,
                             (std::int64_t{1} << 32) + 7, std::int64_t{1} << 40}) {
    for (std::uint32_t count : {2u, 3u, 7u, 1000u}) {
      EXPECT_EQ(detail::replica_column(count, token, 0, 1, true),
                reference_column(count, token, 0, 1, 1))
          << "token " << token << " count " << count;
    }
  }
}

}  // namespace
}  // namespace moe_eplb

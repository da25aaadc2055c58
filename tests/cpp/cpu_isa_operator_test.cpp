// The CPU operator on every instruction-set level this machine has (scalar,
// AVX2, AVX-512), forced one after the other: outputs equal the reference's,
// and every error message is the same on every level.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cpu_isa.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/update_expert.hpp"
#include "reference.hpp"
#include "test_util.hpp"

namespace moe_eplb {
namespace {

using namespace moe_eplb::test;

constexpr std::int64_t kPoison = 0x5eadbeef;

// ---- the operator on every level -------------------------------------------------------------

// Runs `f` on every level and returns what it produced on each; the first
// is the scalar level.
template <typename F>
std::vector<std::string> on_every_level(F&& f) {
  std::vector<std::string> results;
  for (Isa isa : available_isas()) {
    const ForcedIsa forced(isa);
    results.push_back(f());
  }
  return results;
}

// Output (or error message) of the stateless op and the prepared form, as text.
template <typename T>
std::string run_both(const Matrix& ids, Layout layout, const TableView& table,
                     const UpdateExpertParams& params, const PreparedTable* prepared) {
  const Strided<T> storage = lay_out<T>(ids, layout, static_cast<T>(-3));
  const ExpertIdsView view = ids_view(storage, ids);
  std::string text;
  for (int form = 0; form < 2; ++form) {
    if (form == 1 && prepared == nullptr) break;
    std::vector<T> out(static_cast<std::size_t>(ids.rows * ids.cols), static_cast<T>(kPoison));
    try {
      if (form == 0) {
        update_expert(view, table, params, out.data());
      } else {
        UpdateExpertOutputs outputs;
        outputs.balanced_expert_ids = {out.data(), ids.rows * ids.cols};
        update_expert_prepared(prepared->view(), view, nullptr, outputs);
      }
      for (T v : out) text += std::to_string(v) + ",";
    } catch (const Error& error) {
      text += error.what();
    }
    text += "|";
  }
  return text;
}

// Valid tables: every level gives the reference's output, in both modes,
// both dtypes, contiguous, padded and strided ids, every tail length.
TEST(CpuSimd, OperatorAgreesWithReferenceOnEveryLevel) {
  std::uint64_t seed = 20000;
  for (int mode : kAllModes) {
    for (const std::int64_t world_size : {4, 32}) {
      std::mt19937_64 rng(++seed);
      const std::int64_t slots_per_rank = world_size == 4 ? 20 : 9;
      const TableSpec spec{world_size == 4 ? 60 : 256, 9, world_size, slots_per_rank, 8};
      const Matrix table_m = random_table(spec, rng);
      OwnedTable table(table_m, world_size == 4 ? Layout::kColumnMajor : Layout::kRowMajor);
      const UpdateExpertParams params =
          rank_params(world_size - 1, world_size, mode, world_size * slots_per_rank);
      const PreparedTable prepared(table.view, params);
      for (std::int64_t top_k : {1, 5, 8, 16}) {
        for (std::int64_t num_tokens : {1, 3, 17, 64, 300}) {
          const Matrix ids = random_ids(num_tokens, top_k, spec.num_experts, rng);
          const Matrix ref =
              reference_update_expert(ids, table_m, world_size - 1, world_size, mode);
          std::string expected;
          for (std::int64_t v : ref.values) expected += std::to_string(v) + ",";
          expected = expected + "|" + expected + "|";
          for (Layout layout : {Layout::kRowMajor, Layout::kPaddedRows, Layout::kSliced}) {
            SCOPED_TRACE(::testing::Message()
                         << "seed " << seed << " mode " << mode << " BS " << num_tokens << " K "
                         << top_k << " " << to_string(layout));
            for (const std::string& got : on_every_level([&] {
                   return run_both<std::int32_t>(ids, layout, table.view, params, &prepared);
                 })) {
              EXPECT_EQ(got, expected);
            }
            for (const std::string& got : on_every_level([&] {
                   return run_both<std::int64_t>(ids, layout, table.view, params, &prepared);
                 })) {
              EXPECT_EQ(got, expected);
            }
          }
        }
      }
    }
  }
}

// Bad ids and bad table rows: every level throws the same message, naming the
// first bad element in row-major order (the scalar level's).
TEST(CpuSimd, OperatorErrorsAreTheSameOnEveryLevel) {
  std::uint64_t seed = 30000;
  for (int mode : kAllModes) {
    for (int trial = 0; trial < 40; ++trial) {
      std::mt19937_64 rng(++seed);
      SCOPED_TRACE(::testing::Message() << "seed " << seed << " mode " << mode);
      const TableSpec spec{256, 9, 32, 9, 8};
      Matrix table_m = random_table(spec, rng);
      // A few corrupted rows: a bad count or a bad slot.
      for (int bad = 0; bad < 3; ++bad) {
        const std::int64_t e = static_cast<std::int64_t>(rng() % 256);
        if (rng() % 2 == 0) {
          table_m.at(e, 0) = (rng() % 2 == 0) ? 0 : 9;
        } else {
          table_m.at(e, 1 + static_cast<std::int64_t>(
                                rng() % static_cast<std::uint64_t>(table_m.at(e, 0)))) = 288;
        }
      }
      OwnedTable table(table_m);
      const UpdateExpertParams params = rank_params(13, 32, mode, 288);
      Matrix ids = random_ids(64 + static_cast<std::int64_t>(rng() % 64), 16, 256, rng);
      if (trial % 2 == 0) {  // and some ids out of range
        ids.values[rng() % ids.values.size()] = (rng() % 2 == 0) ? -1 : 256;
      }
      const std::vector<std::string> results = on_every_level([&] {
        return run_both<std::int32_t>(ids, Layout::kRowMajor, table.view, params, nullptr);
      });
      for (const std::string& got : results) EXPECT_EQ(got, results.front());
      const std::vector<std::string> results64 = on_every_level([&] {
        return run_both<std::int64_t>(ids, Layout::kRowMajor, table.view, params, nullptr);
      });
      for (const std::string& got : results64) EXPECT_EQ(got, results64.front());
    }
  }
}

// Prepared routes corrupted by the caller: every level reports the same first
// bad element.
TEST(CpuSimd, CorruptedPreparedRoutesAreTheSameOnEveryLevel) {
  std::uint64_t seed = 40000;
  for (int mode : kAllModes) {
    std::mt19937_64 rng(++seed);
    const TableSpec spec{256, 9, 32, 9, 8};
    const Matrix table_m = random_table(spec, rng);
    OwnedTable table(table_m);
    const PreparedTable prepared(table.view, rank_params(13, 32, mode, 288));
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<std::int32_t> routes = prepared.routes();
      for (int bad = 0; bad < 2; ++bad) {
        const std::size_t at = rng() % routes.size();
        const std::int32_t values[] = {-1, -2, -3, -100, 288, 100000, 0, 9};
        routes[at] = values[rng() % 8];
      }
      PreparedView view = prepared.view();
      view.routes = routes.data();
      const Matrix ids = random_ids(200, 8, 256, rng);
      const Strided<std::int32_t> storage = lay_out<std::int32_t>(ids, Layout::kRowMajor, -3);
      const std::vector<std::string> results = on_every_level([&] {
        std::vector<std::int32_t> out(ids.values.size(), static_cast<std::int32_t>(kPoison));
        UpdateExpertOutputs outputs;
        outputs.balanced_expert_ids = {out.data(), static_cast<std::int64_t>(out.size())};
        try {
          update_expert_prepared(view, ids_view(storage, ids), nullptr, outputs);
        } catch (const Error& error) {
          return std::string(error.what());
        }
        std::string text;
        for (std::int32_t v : out) text += std::to_string(v) + ",";
        return text;
      });
      for (const std::string& got : results) EXPECT_EQ(got, results.front()) << "seed " << seed;
    }
  }
}

}  // namespace
}  // namespace moe_eplb

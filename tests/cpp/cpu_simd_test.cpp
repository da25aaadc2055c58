// The CPU fast paths (src/cpu): every instruction-set level this machine has
// (scalar, AVX2, AVX-512), forced one after the other in one process, must
// give the routers' results (detail/route.hpp) on seeded random inputs: ids
// in and out of range, bad counts and slots, int32 and int64, every tail
// length, both modes, tokens crossing K boundaries and large token indices.
// Outputs are poisoned and guarded by red zones; the ids sit in buffers of
// their exact size, so the sanitizer build catches any read past them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cpu/gather_simd.hpp"
#include "cpu/isa.hpp"
#include "cpu_isa.hpp"
#include "moe_eplb/detail/route.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/update_expert.hpp"
#include "reference.hpp"
#include "test_util.hpp"

namespace moe_eplb {
namespace {

using cpu::Isa;
using namespace moe_eplb::test;

constexpr std::int64_t kRedZone = 40;
constexpr std::int64_t kPoison = 0x5eadbeef;

// An output buffer of n elements between red zones, all poisoned.
template <typename T>
struct Guarded {
  explicit Guarded(std::int64_t size)
      : storage(static_cast<std::size_t>(size + 2 * kRedZone), static_cast<T>(kPoison)) {}
  T* data() { return storage.data() + kRedZone; }
  bool red_zones_intact() const {
    const auto poisoned = [](T v) { return v == static_cast<T>(kPoison); };
    return std::all_of(storage.begin(), storage.begin() + kRedZone, poisoned) &&
           std::all_of(storage.end() - kRedZone, storage.end(), poisoned);
  }
  std::vector<T> values() const {
    return std::vector<T>(storage.begin() + kRedZone, storage.end() - kRedZone);
  }
  std::vector<T> storage;
};

// Expert ids, mostly in [0, num_experts); with `bad_rate` > 0 some negative,
// some just past the end and some far outside (beyond 32 bits for int64).
template <typename T>
std::vector<T> make_ids(std::int64_t n, std::int64_t num_experts, double bad_rate,
                        std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int64_t> expert(0, num_experts - 1);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<T> ids(static_cast<std::size_t>(n));
  for (T& id : ids) {
    if (unit(rng) >= bad_rate) {
      id = static_cast<T>(expert(rng));
      continue;
    }
    switch (rng() % 5) {
      case 0:
        id = static_cast<T>(-1);
        break;
      case 1:
        id = static_cast<T>(num_experts);
        break;
      case 2:
        id = static_cast<T>(num_experts + 65536);
        break;
      case 3:
        id = sizeof(T) == 8 ? static_cast<T>(std::int64_t{1} << 40)
                            : static_cast<T>(std::int32_t{-2147483647 - 1});
        break;
      default:
        id = sizeof(T) == 8 ? static_cast<T>(-(std::int64_t{1} << 36) + 3)
                            : static_cast<T>(std::int32_t{2147483647});
        break;
    }
  }
  return ids;
}

// Ids laid out as num_rows rows of row_length, row_stride apart, in a buffer
// that ends right after the last row; the gaps hold junk ids a kernel must
// not read (they would map to other slots or fail).
template <typename T>
struct LaidOutIds {
  LaidOutIds(const std::vector<T>& ids, std::int64_t length, std::int64_t stride)
      : num_rows(length == 0 ? 0 : static_cast<std::int64_t>(ids.size()) / length),
        row_length(length),
        row_stride(stride) {
    const std::int64_t size = num_rows == 0 ? 0 : (num_rows - 1) * row_stride + row_length;
    storage.assign(static_cast<std::size_t>(size), static_cast<T>(-5));
    for (std::int64_t r = 0; r < num_rows; ++r) {
      std::copy(ids.begin() + r * row_length, ids.begin() + (r + 1) * row_length,
                storage.begin() + r * row_stride);
    }
  }
  cpu::IdRows<T> rows(T* out) const {
    return cpu::IdRows<T>{storage.data(), num_rows, row_length, row_stride, out};
  }
  std::int64_t num_rows;
  std::int64_t row_length;
  std::int64_t row_stride;
  std::vector<T> storage;
};

// ---- rank mode ------------------------------------------------------------------------------

struct RankCase {
  std::int64_t num_experts;
  std::int64_t num_physical_experts;
  std::int32_t max_slot;  // valid slots are drawn from [0, min(max_slot, P - 1)]
  double bad_route_rate;
  double bad_id_rate;
};

std::vector<std::int32_t> make_rank_routes(const RankCase& c, std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int32_t> slot(
      0, static_cast<std::int32_t>(std::min<std::int64_t>(c.max_slot, c.num_physical_experts - 1)));
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<std::int32_t> routes(static_cast<std::size_t>(c.num_experts));
  for (std::int32_t& route : routes) {
    route = slot(rng);
    if (unit(rng) < c.bad_route_rate) {
      const std::int32_t bad[] = {
          -1, -2, -3, -7, static_cast<std::int32_t>(c.num_physical_experts), 2147483647};
      route = bad[rng() % 6];
    }
  }
  return routes;
}

// n ids, as one row (row_length 0) or as rows of row_length ids with gaps.
template <typename T>
void check_rank_mapper(const RankCase& c, std::int64_t n, std::uint64_t seed,
                       std::int64_t row_length = 0) {
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message()
               << "seed " << seed << " E " << c.num_experts << " P " << c.num_physical_experts
               << " n " << n << " row " << row_length << " int" << 8 * sizeof(T));
  const std::vector<std::int32_t> routes = make_rank_routes(c, rng);
  const std::vector<T> ids = make_ids<T>(n, c.num_experts, c.bad_id_rate, rng);
  const detail::PreparedRouter router{routes.data(), c.num_experts, 1, c.num_physical_experts,
                                      BalanceMode::kByRank};
  bool expected_ok = true;
  std::vector<T> expected(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::int64_t slot = detail::route_one(router, static_cast<std::int64_t>(ids[i]), 0);
    expected_ok &= slot >= 0;
    expected[i] = static_cast<T>(slot);
  }
  const LaidOutIds<T> laid_out(ids, row_length == 0 ? n : row_length,
                               row_length == 0 ? n : row_length + 3);
  for (Isa isa : available_isas()) {
    const ForcedIsa forced(isa);
    SCOPED_TRACE(cpu::to_string(isa));
    Guarded<T> out(n);
    // A large batch-size hint, so that small runs exercise the table kernel too.
    const cpu::RankMapper mapper(routes.data(), c.num_experts, c.num_physical_experts,
                                 std::max<std::int64_t>(n, 4096));
    const bool ok = mapper.map(laid_out.rows(out.data()));
    EXPECT_EQ(ok, expected_ok);
    if (expected_ok) {
      EXPECT_EQ(out.values(), expected);
    }
    EXPECT_TRUE(out.red_zones_intact());
  }
}

// Each kernel choice is reachable: the register table for small tables and
// batches, the gather (AVX2) for others.
TEST(CpuSimd, RankMapperPicksTheRegisterTableWhereItFits) {
  if (cpu::detected_isa() != Isa::kAvx512) GTEST_SKIP() << "no AVX-512 on this CPU";
  const std::vector<std::int32_t> routes(2000, 3);
  EXPECT_EQ(cpu::RankMapper(routes.data(), 256, 288, 8192).isa(), Isa::kAvx512);
  EXPECT_EQ(cpu::RankMapper(routes.data(), 1024, 288, 8192).isa(), Isa::kAvx512);
  EXPECT_EQ(cpu::RankMapper(routes.data(), 1025, 288, 8192).isa(), Isa::kAvx2);  // too many rows
  EXPECT_EQ(cpu::RankMapper(routes.data(), 1024, 288, 8).isa(), Isa::kAvx2);     // small batch
  const std::vector<std::int32_t> wide(256, 70000);  // a valid slot beyond 16 bits
  EXPECT_EQ(cpu::RankMapper(wide.data(), 256, 80000, 8192).isa(), Isa::kAvx2);
  const ForcedIsa forced(Isa::kAvx2);
  EXPECT_EQ(cpu::RankMapper(routes.data(), 256, 288, 8192).isa(), Isa::kAvx2);
}

// Every tail length up to two 32-lane steps, and table sizes around each
// pair count (64 rows per vpermt2w pair), with and without bad ids/routes.
TEST(CpuSimd, RankMapperMatchesRouterOnEveryLevel) {
  std::uint64_t seed = 1000;
  const RankCase cases[] = {
      {1, 1, 0, 0.0, 0.0},
      {7, 20, 100, 0.0, 0.0},
      {64, 288, 287, 0.0, 0.0},
      {65, 288, 287, 0.0, 0.0},
      {256, 288, 287, 0.0, 0.0},
      {300, 1024, 1023, 0.0, 0.0},
      {1024, 65535, 65534, 0.0, 0.0},
      {1025, 5000, 4999, 0.0, 0.0},
      {256, 288, 287, 0.05, 0.0},
      {256, 288, 287, 0.0, 0.05},
      {1000, 288, 287, 0.01, 0.01},
      {200, 70000, 69999, 0.0, 0.0},
      {5, 300, 299, 1.0, 0.0},
  };
  for (const RankCase& c : cases) {
    for (std::int64_t n = 0; n <= 70; ++n) {
      check_rank_mapper<std::int32_t>(c, n, ++seed);
      check_rank_mapper<std::int64_t>(c, n, ++seed);
    }
    for (std::int64_t n : {1000, 8192, 8197}) {
      check_rank_mapper<std::int32_t>(c, n, ++seed);
      check_rank_mapper<std::int64_t>(c, n, ++seed);
    }
    for (std::int64_t row_length : {1, 7, 16, 33}) {  // padded rows
      check_rank_mapper<std::int32_t>(c, 40 * row_length, ++seed, row_length);
      check_rank_mapper<std::int64_t>(c, 40 * row_length, ++seed, row_length);
    }
    // Short rows are packed into chunks of 1024 ids: several chunks, a partial last one.
    check_rank_mapper<std::int32_t>(c, 3 * 1031, ++seed, 3);
    check_rank_mapper<std::int64_t>(c, 7 * 333, ++seed, 7);
  }
}

// ---- token mode -----------------------------------------------------------------------------

// Token-mode rows in a buffer with the given strides; entries past a row's
// count are junk that must be ignored.
struct TokenTable {
  std::vector<std::int32_t> storage;
  cpu::TokenRows rows;
};

struct TokenCase {
  std::int64_t num_experts;
  std::int64_t num_columns;  // F
  std::int64_t num_physical_experts;
  std::int32_t max_count;  // counts drawn from 1..max_count (<= F - 1)
  double multi_rate;       // share of experts with more than one replica
  std::int32_t max_slot;   // valid slots drawn from [0, min(max_slot, P - 1)]
  double bad_row_rate;     // bad counts and bad slots
  double bad_id_rate;
  bool column_major = false;
  std::int32_t min_multi_count = 2;  // counts of multi-replica experts: min..max_count
};

TokenTable make_token_table(const TokenCase& c, std::mt19937_64& rng) {
  const std::int64_t e_count = c.num_experts;
  const std::int64_t f = c.num_columns;
  TokenTable t;
  t.storage.assign(static_cast<std::size_t>(e_count * f), -777);
  const std::int64_t row_stride = c.column_major ? 1 : f;
  const std::int64_t column_stride = c.column_major ? e_count : 1;
  t.rows = cpu::TokenRows{t.storage.data(), e_count,       f,
                          row_stride,       column_stride, c.num_physical_experts};
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_int_distribution<std::int32_t> count(c.min_multi_count,
                                                    std::max(c.min_multi_count, c.max_count));
  std::uniform_int_distribution<std::int32_t> slot(
      0, static_cast<std::int32_t>(std::min<std::int64_t>(c.max_slot, c.num_physical_experts - 1)));
  for (std::int64_t e = 0; e < e_count; ++e) {
    const auto at = [&](std::int64_t j) -> std::int32_t& {
      return t.storage[static_cast<std::size_t>(e * row_stride + j * column_stride)];
    };
    const std::int32_t replicas = c.max_count > 1 && unit(rng) < c.multi_rate ? count(rng) : 1;
    at(0) = replicas;
    for (std::int32_t j = 1; j <= replicas; ++j) at(j) = slot(rng);
    if (unit(rng) < c.bad_row_rate) {
      if (rng() % 2 == 0) {
        const std::int64_t bad_counts[] = {0, -1, f, f + 100, 2147483647};
        at(0) = static_cast<std::int32_t>(bad_counts[rng() % 5]);
      } else {
        const std::int32_t bad_slots[] = {-1, -5, static_cast<std::int32_t>(c.num_physical_experts),
                                          2147483647};
        at(1 + static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(replicas))) =
            bad_slots[rng() % 4];
      }
    }
  }
  return t;
}

// n ids of tokens first_token, first_token + 1, ..., top_k per token, as one
// row or (padded) as one row per token with gaps between rows.
template <typename T>
void check_token_mapper(const TokenCase& c, std::int64_t n, std::int64_t top_k,
                        std::int64_t first_token, std::uint64_t seed,
                        Isa expected_kernel = Isa::kScalar, bool padded = false) {
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(::testing::Message()
               << "seed " << seed << " E " << c.num_experts << " F " << c.num_columns << " n " << n
               << " K " << top_k << " token " << first_token << (padded ? " padded" : "") << " int"
               << 8 * sizeof(T));
  const TokenTable table = make_token_table(c, rng);
  const std::vector<T> ids = make_ids<T>(n, c.num_experts, c.bad_id_rate, rng);
  const cpu::TokenRows& r = table.rows;
  const detail::TableRouter router{r.data,
                                   r.num_experts,
                                   r.num_columns,
                                   r.row_stride,
                                   r.column_stride,
                                   r.num_physical_experts,
                                   0,
                                   1,
                                   BalanceMode::kByToken};
  bool expected_ok = true;
  std::vector<T> expected(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::int64_t token = first_token + static_cast<std::int64_t>(i) / top_k;
    const std::int64_t slot = detail::route_one(router, static_cast<std::int64_t>(ids[i]), token);
    expected_ok &= slot >= 0;
    expected[i] = static_cast<T>(slot);
  }
  const LaidOutIds<T> laid_out(ids, padded ? top_k : n, padded ? top_k + 5 : n);
  for (Isa isa : available_isas()) {
    const ForcedIsa forced(isa);
    SCOPED_TRACE(cpu::to_string(isa));
    Guarded<T> out(n);
    // A large batch-size hint, so that small runs exercise the table kernel too.
    const cpu::TokenMapper mapper(table.rows, std::max<std::int64_t>({n, c.num_experts, 4096}));
    if (isa == Isa::kAvx512) {
      EXPECT_EQ(mapper.isa(), expected_kernel);
    }
    const bool ok = mapper.map(laid_out.rows(out.data()), top_k, first_token);
    EXPECT_EQ(ok, expected_ok);
    if (expected_ok) {
      EXPECT_EQ(out.values(), expected);
    }
    EXPECT_TRUE(out.red_zones_intact());
  }
}

// The cases the AVX-512 token kernel takes (kAvx512) and those it leaves to
// the router (kScalar): too many rows, counts above 32, too many replicas,
// slots beyond 15 bits.
struct TokenSweep {
  TokenCase c;
  Isa kernel;
};

const TokenSweep kTokenSweeps[] = {
    // E, F, P, max count, multi rate, max slot, bad rows, bad ids[, column-major, min count]
    {{1, 2, 4, 1, 0.0, 3, 0.0, 0.0}, Isa::kAvx512},
    {{256, 9, 288, 8, 0.1, 287, 0.0, 0.0}, Isa::kAvx512},
    {{256, 9, 288, 8, 0.1, 287, 0.0, 0.0, true}, Isa::kAvx512},  // column-major table
    {{65, 5, 300, 4, 0.5, 299, 0.0, 0.0}, Isa::kAvx512},
    {{1024, 3, 2048, 2, 0.05, 2047, 0.0, 0.0}, Isa::kAvx512},
    {{7, 40, 64, 32, 1.0, 63, 0.0, 0.0}, Isa::kAvx512},             // counts up to 32
    {{256, 9, 288, 8, 0.1, 287, 0.05, 0.0}, Isa::kAvx512},          // bad rows
    {{256, 9, 288, 8, 0.1, 287, 0.0, 0.05}, Isa::kAvx512},          // bad ids
    {{300, 9, 32767, 8, 0.1, 32766, 0.02, 0.02}, Isa::kAvx512},     // largest word slots
    {{1025, 3, 4096, 2, 0.1, 4095, 0.0, 0.0}, Isa::kScalar},        // too many rows
    {{8, 50, 64, 49, 1.0, 63, 0.0, 0.0, false, 33}, Isa::kScalar},  // counts above 32
    {{256, 9, 4096, 8, 1.0, 4095, 0.0, 0.0}, Isa::kScalar},         // too many replicas
    {{64, 9, 40000, 8, 0.1, 39999, 0.0, 0.0}, Isa::kScalar},        // slots beyond 15 bits
};

// Every tail length up to two 16-lane steps, top_k below, at and above 16
// (tokens cross vector boundaries), both dtypes.
TEST(CpuSimd, TokenMapperMatchesRouterOnEveryLevel) {
  std::uint64_t seed = 5000;
  for (const TokenSweep& sweep : kTokenSweeps) {
    for (std::int64_t top_k : {1, 2, 3, 7, 8, 15, 16, 17, 33}) {
      for (std::int64_t n = 0; n <= 40; ++n) {
        check_token_mapper<std::int32_t>(sweep.c, n, top_k, 0, ++seed, sweep.kernel);
        check_token_mapper<std::int64_t>(sweep.c, n, top_k, 0, ++seed, sweep.kernel);
      }
      check_token_mapper<std::int32_t>(sweep.c, 4099, top_k, 3, ++seed, sweep.kernel);
      check_token_mapper<std::int64_t>(sweep.c, 4099, top_k, 3, ++seed, sweep.kernel);
      check_token_mapper<std::int32_t>(sweep.c, 37 * top_k, top_k, 3, ++seed, sweep.kernel, true);
      check_token_mapper<std::int64_t>(sweep.c, 37 * top_k, top_k, 3, ++seed, sweep.kernel, true);
      // Short rows are packed into chunks of 1024 ids: several chunks, a partial last one.
      check_token_mapper<std::int32_t>(sweep.c, 2100 / top_k * top_k, top_k, 5, ++seed,
                                       sweep.kernel, true);
    }
  }
}

// Token indices at the vector kernel's limit (2^23, where it hands over to
// the router), near 2^32 and beyond it (64-bit tokens).
TEST(CpuSimd, TokenMapperLargeTokenIndices) {
  std::uint64_t seed = 9000;
  const TokenCase c{256, 9, 288, 8, 0.1, 287, 0.0, 0.0};
  const std::int64_t limit = std::int64_t{1} << 23;
  for (std::int64_t first_token : {limit - 40, limit - 3, limit - 1, limit, limit + 1,
                                   (std::int64_t{1} << 32) - 5, (std::int64_t{1} << 40) + 7}) {
    for (std::int64_t top_k : {1, 3, 16}) {
      for (std::int64_t n : {1, 15, 16, 17, 100, 1000}) {
        check_token_mapper<std::int32_t>(c, n, top_k, first_token, ++seed, Isa::kAvx512);
        check_token_mapper<std::int64_t>(c, n, top_k, first_token, ++seed, Isa::kAvx512);
      }
      for (std::int64_t num_tokens : {1, 3, 50}) {  // one row per token
        check_token_mapper<std::int32_t>(c, num_tokens * top_k, top_k, first_token, ++seed,
                                         Isa::kAvx512, true);
        check_token_mapper<std::int64_t>(c, num_tokens * top_k, top_k, first_token, ++seed,
                                         Isa::kAvx512, true);
      }
    }
  }
}

// token % count through the float reciprocal, exhaustively: every count the
// kernel accepts (1..32) and every token below its limit 2^23.
TEST(CpuSimd, TokenModuloIsExactForEveryCountAndToken) {
  if (cpu::detected_isa() != Isa::kAvx512) GTEST_SKIP() << "no AVX-512 on this CPU";
  constexpr std::int64_t kLimit = std::int64_t{1} << 23;
  constexpr std::int64_t kChunk = std::int64_t{1} << 20;
  const std::vector<std::int32_t> ids(static_cast<std::size_t>(kChunk), 0);
  std::vector<std::int32_t> out(static_cast<std::size_t>(kChunk));
  for (std::int32_t count = 1; count <= 32; ++count) {
    // One expert whose replica j (0-based) lives in slot 100 + j.
    std::vector<std::int32_t> row(static_cast<std::size_t>(count + 1));
    row[0] = count;
    for (std::int32_t j = 0; j < count; ++j) row[static_cast<std::size_t>(j + 1)] = 100 + j;
    const cpu::TokenRows rows{row.data(), 1, count + 1, count + 1, 1, 200};
    const cpu::TokenMapper mapper(rows, kChunk);
    ASSERT_EQ(mapper.isa(), Isa::kAvx512);
    std::int32_t replica = 0;  // token % count, advanced incrementally
    for (std::int64_t first = 0; first < kLimit; first += kChunk) {
      ASSERT_TRUE(mapper.map(cpu::IdRows<std::int32_t>{ids.data(), 1, kChunk, kChunk, out.data()},
                             1, first));
      for (std::int64_t i = 0; i < kChunk; ++i) {
        if (out[static_cast<std::size_t>(i)] != 100 + replica) {
          FAIL() << "count " << count << " token " << first + i << ": replica "
                 << out[static_cast<std::size_t>(i)] - 100 << ", expected " << replica;
        }
        if (++replica == count) replica = 0;
      }
    }
  }
}

}  // namespace
}  // namespace moe_eplb

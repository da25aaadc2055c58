// detail::TableRouter and detail::PreparedRouter, the one copy of the formula
// that both the CPU and the CUDA kernels run, checked element by element
// against a status-returning reference over every expert id, rank, token and
// a table full of bad entries, in both of their schedules: the device's
// (clamped reads, selects afterwards) and the host's (early returns). Every
// bad input gets the same status from both, with the same priority: bad
// expert id, then bad count, then bad slot.
#include <gtest/gtest.h>

#include <array>
#include <climits>
#include <cstdint>
#include <vector>

#include "moe_eplb/detail/route.hpp"
#include "reference.hpp"

namespace moe_eplb {
namespace {

using namespace moe_eplb::test;

constexpr std::int64_t kBadExpert = detail::kRouteBadExpertId;
constexpr std::int64_t kBadCount = detail::kRouteBadCount;
constexpr std::int64_t kBadSlot = detail::kRouteBadSlot;

// SPEC.md's formula with its bad-input rules, as statuses.
std::int64_t reference_route(const Matrix& table, std::int64_t expert, std::int64_t token,
                             std::int64_t rank, std::int64_t world_size, int mode,
                             std::int64_t num_physical_experts) {
  if (expert < 0 || expert >= table.rows) return kBadExpert;
  const std::int64_t count = table.at(expert, 0);
  if (count < 1 || count > table.cols - 1) return kBadCount;
  const std::int64_t slot =
      table.at(expert, reference_column(count, token, rank, world_size, mode));
  if (slot < 0 || slot >= num_physical_experts) return kBadSlot;
  return slot;
}

constexpr std::int64_t kHostileRows = 12;

// Rows exercising every status: good rows with 1..F-1 replicas, counts just
// outside [1, F-1] and at the int32 extremes, and replicas outside
// [0, num_physical_experts) in every column. The rows are rotated by `rotation`,
// so that each kind of row is row 0 once: row 0 is what the routers read
// for an out-of-range expert id, and a wrong status priority shows there.
Matrix hostile_table(std::int64_t num_columns, std::int64_t num_physical_experts,
                     std::int64_t rotation) {
  const std::int64_t last = num_columns - 1;
  const std::array<std::int64_t, kHostileRows> counts = {
      1, 2, last, last, 0, -1, last + 1, INT32_MAX, INT32_MIN, 1, last, 2};
  const std::vector<std::int64_t> bad_slots = {-1, num_physical_experts, INT32_MIN, INT32_MAX};
  Matrix table = make_matrix(kHostileRows, num_columns);
  for (std::int64_t e = 0; e < table.rows; ++e) {
    table.at(e, 0) = counts[static_cast<std::size_t>(e)];
    for (std::int64_t j = 1; j < num_columns; ++j) {
      table.at(e, j) = (e * 7 + j * 3) % num_physical_experts;
    }
  }
  // The last rows carry bad replicas in varying columns.
  for (std::int64_t e = table.rows - 3; e < table.rows; ++e) {
    for (std::int64_t j = 1; j < num_columns; ++j) {
      if ((e + j) % 2 == 0) {
        table.at(e, j) = bad_slots[static_cast<std::size_t>((e + j) % 4)];
      }
    }
  }
  Matrix rotated = make_matrix(table.rows, table.cols);
  for (std::int64_t e = 0; e < table.rows; ++e) {
    for (std::int64_t j = 0; j < table.cols; ++j) {
      rotated.at(e, j) = table.at((e + rotation) % table.rows, j);
    }
  }
  return rotated;
}

// route() in the device's schedule, after checking that the host's agrees.
template <typename Router>
std::int64_t route_both_ways(const Router& router, std::int64_t expert, std::int64_t token) {
  const std::int64_t device = detail::route_one<true>(router, expert, token);
  const std::int64_t host = detail::route_one<false>(router, expert, token);
  EXPECT_EQ(device, host) << "schedules disagree at expert=" << expert << " token=" << token;
  return device;
}

const std::vector<std::int64_t> kTokens = {
    0, 1, 2, 3, 5, 7, 11, 1000003, (std::int64_t{1} << 32) + 3, INT64_MAX};

std::vector<std::int64_t> expert_ids_around(std::int64_t num_experts) {
  std::vector<std::int64_t> ids = {INT64_MIN,       -(std::int64_t{1} << 40), -1,       num_experts,
                                   num_experts + 1, std::int64_t{1} << 40,    INT64_MAX};
  for (std::int64_t e = 0; e < num_experts; ++e) ids.push_back(e);
  return ids;
}

TEST(Route, TableRouterMatchesReferenceOnEveryStatus) {
  constexpr std::int64_t kEnd = 40;
  for (std::int64_t rotation = 0; rotation < kHostileRows; ++rotation) {
    for (const std::int64_t num_columns : {2, 3, 5}) {
      const Matrix table = hostile_table(num_columns, kEnd, rotation);
      // Row-major and column-major storage: strides are part of the router.
      for (const bool column_major : {false, true}) {
        std::vector<std::int32_t> storage(table.values.size());
        for (std::int64_t e = 0; e < table.rows; ++e) {
          for (std::int64_t j = 0; j < table.cols; ++j) {
            const std::int64_t at = column_major ? j * table.rows + e : e * table.cols + j;
            storage[static_cast<std::size_t>(at)] = static_cast<std::int32_t>(table.at(e, j));
          }
        }
        for (const int mode : kAllModes) {
          for (const std::int64_t world_size : {1, 2, 3, 7, 8}) {
            for (std::int64_t rank = 0; rank < world_size; ++rank) {
              const detail::TableRouter router{
                  storage.data(),
                  table.rows,
                  table.cols,
                  column_major ? 1 : table.cols,
                  column_major ? table.rows : 1,
                  kEnd,
                  mode == 0 ? static_cast<std::uint32_t>(rank) : 0u,
                  mode == 0 ? static_cast<std::uint32_t>(world_size) : 1u,
                  static_cast<BalanceMode>(mode)};
              for (const std::int64_t expert : expert_ids_around(table.rows)) {
                for (const std::int64_t token : kTokens) {
                  ASSERT_EQ(route_both_ways(router, expert, token),
                            reference_route(table, expert, token, rank, world_size, mode, kEnd))
                      << "rotation=" << rotation << " F=" << num_columns
                      << " column_major=" << column_major << " mode=" << mode << " W=" << world_size
                      << " rank=" << rank << " expert=" << expert << " token=" << token;
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST(Route, PreparedRouterTokenModeMatchesReference) {
  constexpr std::int64_t kEnd = 40;
  for (std::int64_t rotation = 0; rotation < kHostileRows; ++rotation) {
    for (const std::int64_t num_columns : {2, 3, 5}) {
      const Matrix table = hostile_table(num_columns, kEnd, rotation);
      std::vector<std::int32_t> routes(table.values.begin(), table.values.end());
      const detail::PreparedRouter router{routes.data(), table.rows, table.cols, kEnd,
                                          BalanceMode::kByToken};
      for (const std::int64_t expert : expert_ids_around(table.rows)) {
        for (const std::int64_t token : kTokens) {
          ASSERT_EQ(route_both_ways(router, expert, token),
                    reference_route(table, expert, token, 0, 1, 1, kEnd))
              << "rotation=" << rotation << " F=" << num_columns << " expert=" << expert
              << " token=" << token;
        }
      }
    }
  }
}

TEST(Route, PreparedRouterRankModeKeepsStatusesAndRejectsOverwrittenEntries) {
  constexpr std::int64_t kEnd = 40;
  // Entries as build_routes() writes them (ids and statuses), then values an
  // overwritten device buffer could hold.
  const std::vector<std::int32_t> routes = {0,        39, 17,        kBadExpert, kBadCount,
                                            kBadSlot, -4, INT32_MIN, kEnd,       INT32_MAX};
  const std::vector<std::int64_t> expected = {0,        39,       17,       kBadExpert, kBadCount,
                                              kBadSlot, kBadSlot, kBadSlot, kBadSlot,   kBadSlot};
  const auto num_experts = static_cast<std::int64_t>(routes.size());
  const detail::PreparedRouter router{routes.data(), num_experts, 1, kEnd, BalanceMode::kByRank};
  for (const std::int64_t expert : expert_ids_around(num_experts)) {
    const std::int64_t want = expert >= 0 && expert < num_experts
                                  ? expected[static_cast<std::size_t>(expert)]
                                  : kBadExpert;
    for (const std::int64_t token : kTokens) {
      ASSERT_EQ(route_both_ways(router, expert, token), want)
          << "expert=" << expert << " token=" << token;
    }
  }
}

TEST(Route, ReplicaColumnStaysWithinTheReplicas) {
  // The routers rely on 1 <= column <= count to read inside a row.
  for (std::uint32_t count = 1; count <= 9; ++count) {
    for (std::uint32_t world_size = 1; world_size <= 17; ++world_size) {
      for (std::uint32_t rank = 0; rank < world_size; ++rank) {
        const std::int64_t column =
            detail::replica_column<true>(count, 0, rank, world_size, BalanceMode::kByRank);
        ASSERT_GE(column, 1);
        ASSERT_LE(column, count);
        ASSERT_EQ(column, reference_column(count, 0, rank, world_size, 0));
        ASSERT_EQ(column,
                  detail::replica_column<false>(count, 0, rank, world_size, BalanceMode::kByRank));
      }
    }
    for (const std::int64_t token : kTokens) {
      const std::int64_t column =
          detail::replica_column<true>(count, token, 0, 1, BalanceMode::kByToken);
      ASSERT_GE(column, 1);
      ASSERT_LE(column, count);
      ASSERT_EQ(column, reference_column(count, token, 0, 1, 1));
      ASSERT_EQ(column, detail::replica_column<false>(count, token, 0, 1, BalanceMode::kByToken));
    }
  }
}

}  // namespace
}  // namespace moe_eplb

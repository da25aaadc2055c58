// order_by_key() (src/plan/key_order.hpp), the planner's radix sort: the
// order std::sort gives on (key, index) pairs, on keys with ties, signs,
// -0.0, infinities, denormals, magnitudes from 1e-300 to 1e300, and keys that
// differ in their low bits only (long runs for the final pass).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "plan/key_order.hpp"

namespace {

using moe_eplb::plan_detail::KeyOrder;
using moe_eplb::plan_detail::KeyOrderScratch;
using moe_eplb::plan_detail::order_by_key;

std::vector<std::int64_t> reference_order(const std::vector<double>& keys, KeyOrder direction) {
  std::vector<std::pair<double, std::int64_t>> pairs;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const double key = direction == KeyOrder::kDescending ? -keys[i] : keys[i];
    pairs.emplace_back(key, static_cast<std::int64_t>(i));
  }
  std::sort(pairs.begin(), pairs.end());
  std::vector<std::int64_t> order;
  for (const auto& pair : pairs) order.push_back(pair.second);
  return order;
}

TEST(KeyOrder, MatchesComparisonSortOnRandomKeys) {
  std::mt19937_64 rng(7);
  KeyOrderScratch scratch;
  std::vector<std::int64_t> order;
  const double specials[] = {0.0,
                             -0.0,
                             1.0,
                             -1.0,
                             std::numeric_limits<double>::infinity(),
                             -std::numeric_limits<double>::infinity(),
                             std::numeric_limits<double>::denorm_min(),
                             -std::numeric_limits<double>::denorm_min(),
                             std::numeric_limits<double>::max(),
                             std::numeric_limits<double>::lowest()};
  for (int trial = 0; trial < 400; ++trial) {
    const std::size_t n = std::uniform_int_distribution<std::size_t>(0, 600)(rng);
    std::vector<double> keys(n);
    const int kind = trial % 5;
    for (double& key : keys) {
      if (kind == 0) {  // few distinct values: many ties
        key = static_cast<double>(std::uniform_int_distribution<int>(0, 5)(rng));
      } else if (kind == 1) {  // planner-like loads: close non-negative values
        key = 1000.0 + std::uniform_real_distribution<double>(0.0, 1.0)(rng);
      } else if (kind == 2) {  // any sign and magnitude
        key = std::ldexp(std::uniform_real_distribution<double>(-1.0, 1.0)(rng),
                         std::uniform_int_distribution<int>(-1000, 1000)(rng));
      } else if (kind == 3) {
        key = specials[std::uniform_int_distribution<std::size_t>(0, 9)(rng)];
      } else {  // equal in all but the low 20 bits: long runs of equal top bytes
        key = std::ldexp(1.0 + std::ldexp(static_cast<double>(
                                              std::uniform_int_distribution<int>(0, 1 << 20)(rng)),
                                          -40),
                         std::uniform_int_distribution<int>(0, 1)(rng));
      }
    }
    for (const KeyOrder direction : {KeyOrder::kAscending, KeyOrder::kDescending}) {
      order.assign(3, -7);  // stale contents must not survive
      order_by_key(keys.data(), keys.size(), direction, order, scratch);
      ASSERT_EQ(order, reference_order(keys, direction))
          << "trial " << trial << ", n " << n << ", descending "
          << (direction == KeyOrder::kDescending);
    }
  }
}

}  // namespace

// Internal: the order of items by a floating-point key, the one std::sort
// gives on (key, index) pairs, found by a radix sort of the keys' bits. The
// planner orders a few hundred replicas several times per layer, and a
// comparison sort of such keys spends most of its time on branches it
// mispredicts.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

namespace moe_eplb::plan_detail {

enum class KeyOrder : std::uint8_t { kAscending, kDescending };

// Writes to `order` the indices 0..n-1 of `keys` (none NaN) sorted by key in
// `direction`, equal keys (-0 equal to +0) by index ascending. `scratch`
// keeps the buffers between calls.
struct KeyOrderScratch {
  std::vector<std::uint64_t> bits, bits_out;
  std::vector<std::int64_t> order_out;
};
inline void order_by_key(const double* keys, std::size_t n, KeyOrder direction,
                         std::vector<std::int64_t>& order, KeyOrderScratch& scratch) {
  order.resize(n);
  std::iota(order.begin(), order.end(), std::int64_t{0});
  if (n < 2) return;
  std::vector<std::uint64_t>& bits = scratch.bits;
  bits.resize(n);
  scratch.bits_out.resize(n);
  scratch.order_out.resize(n);
  constexpr int kDigits = 8;  // bytes of a key, least significant first
  std::array<std::array<std::uint32_t, 256>, kDigits> counts{};
  for (std::size_t i = 0; i < n; ++i) {
    // A double's bits order like the double once negative values have every
    // bit flipped and the others their sign bit set (x + 0.0 makes -0 +0).
    const double key = keys[i] + 0.0;
    std::uint64_t b = 0;
    std::memcpy(&b, &key, sizeof b);
    b = (b >> 63) != 0 ? ~b : b | (std::uint64_t{1} << 63);
    if (direction == KeyOrder::kDescending) b = ~b;
    bits[i] = b;
    for (int digit = 0; digit < kDigits; ++digit) ++counts[digit][(b >> (8 * digit)) & 0xff];
  }
  // Least significant byte first; each pass is stable, so equal keys stay in
  // index order. A byte every key shares moves nothing and is skipped.
  for (int digit = 0; digit < kDigits; ++digit) {
    std::array<std::uint32_t, 256>& count = counts[digit];
    const int shift = 8 * digit;
    if (count[(bits[0] >> shift) & 0xff] == n) continue;
    std::uint32_t start = 0;
    for (std::uint32_t& c : count) {
      const std::uint32_t size = c;
      c = start;
      start += size;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t at = count[(bits[i] >> shift) & 0xff]++;
      scratch.bits_out[at] = bits[i];
      scratch.order_out[at] = order[i];
    }
    bits.swap(scratch.bits_out);
    order.swap(scratch.order_out);
  }
}

}  // namespace moe_eplb::plan_detail

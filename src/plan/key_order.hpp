// Internal: the order of items by a floating-point key, the one std::sort
// gives on (key, index) pairs, found by a radix sort of the top four bytes of
// the keys' bits and a sort of the short runs those leave equal. The
// planner orders a few hundred replicas several times per layer, and a
// comparison sort of such keys spends most of its time on branches it
// mispredicts.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <tuple>
#include <utility>
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
  // Radix passes over the top four bytes of each key's bits; keys that
  // share them are put in order after (few: ties and near ties).
  constexpr int kFirstDigit = 4, kDigits = 8;  // bytes, least significant first
  std::array<std::array<std::uint32_t, 256>, kDigits - kFirstDigit> counts{};
  for (std::size_t i = 0; i < n; ++i) {
    // A double's bits order like the double once negative values have every
    // bit flipped and the others their sign bit set (x + 0.0 makes -0 +0).
    const double key = keys[i] + 0.0;
    std::uint64_t b = 0;
    std::memcpy(&b, &key, sizeof b);
    b = (b >> 63) != 0 ? ~b : b | (std::uint64_t{1} << 63);
    if (direction == KeyOrder::kDescending) b = ~b;
    bits[i] = b;
    for (int digit = kFirstDigit; digit < kDigits; ++digit) {
      ++counts[digit - kFirstDigit][(b >> (8 * digit)) & 0xff];
    }
  }
  // Least significant byte first; each pass is stable, so equal keys stay in
  // index order. A byte every key shares moves nothing and is skipped.
  for (int digit = kFirstDigit; digit < kDigits; ++digit) {
    std::array<std::uint32_t, 256>& count = counts[digit - kFirstDigit];
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
  // Each run of keys with equal top bytes is in index order: sorting it by
  // (bits, index) puts it in key order, ties by index (an insertion sort for
  // the short runs there mostly are, std::sort for long ones).
  for (std::size_t begin = 0; begin < n;) {
    std::size_t end = begin + 1;
    while (end < n && (bits[end] >> 32) == (bits[begin] >> 32)) ++end;
    if (end - begin > 32) {
      std::vector<std::pair<std::uint64_t, std::int64_t>> run;
      for (std::size_t i = begin; i < end; ++i) run.emplace_back(bits[i], order[i]);
      std::sort(run.begin(), run.end());
      for (std::size_t i = begin; i < end; ++i) std::tie(bits[i], order[i]) = run[i - begin];
    } else {
      for (std::size_t i = begin + 1; i < end; ++i) {
        const std::uint64_t b = bits[i];
        const std::int64_t index = order[i];
        std::size_t j = i;
        for (; j > begin && bits[j - 1] > b; --j) {
          bits[j] = bits[j - 1];
          order[j] = order[j - 1];
        }
        bits[j] = b;
        order[j] = index;
      }
    }
    begin = end;
  }
}

}  // namespace moe_eplb::plan_detail

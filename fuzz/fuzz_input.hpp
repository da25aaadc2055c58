// Turns fuzzer bytes into bounded values; past the end it yields zeros, so
// every input is a valid recipe.
#pragma once

#include <cstdint>
#include <cstring>

namespace moe_eplb::fuzz {

class FuzzInput {
 public:
  FuzzInput(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  template <typename T>
  T next() {
    T value{};
    const std::size_t take = size_ - pos_ < sizeof(T) ? size_ - pos_ : sizeof(T);
    std::memcpy(&value, data_ + pos_, take);
    pos_ += take;
    return value;
  }

  // Uniform-ish in [low, high]; `low` when the range is empty.
  std::int64_t range(std::int64_t low, std::int64_t high) {
    if (high <= low) return low;
    const std::uint64_t span =
        static_cast<std::uint64_t>(high) - static_cast<std::uint64_t>(low) + 1;
    const std::uint64_t pick = span == 0 ? next<std::uint64_t>() : next<std::uint32_t>() % span;
    return static_cast<std::int64_t>(static_cast<std::uint64_t>(low) + pick);
  }

  // Mostly small values near the valid range, sometimes anything.
  std::int64_t value_near(std::int64_t low, std::int64_t high) {
    const std::uint8_t kind = next<std::uint8_t>();
    if (kind < 200) return range(low, high);
    if (kind < 230) return range(low - 3, high + 3);
    return next<std::int32_t>();
  }

  bool empty() const { return pos_ >= size_; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

}  // namespace moe_eplb::fuzz

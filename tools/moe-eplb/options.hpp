// Range checks for the tool's numeric options. CLI11 runs them while it
// parses, before any command starts work, and a failure becomes
// "moe-eplb: error: --print-rows: must be 0 or more, got -5" (exit 1).
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include <CLI/CLI.hpp>

namespace moe_eplb::cli {

inline constexpr std::int64_t kNoUpperBound = std::numeric_limits<std::int64_t>::max();

// An integer in [low, high] (high = kNoUpperBound: no upper bound), or, when
// `sentinel_meaning` is given, also `sentinel` ("-1 = no cap").
CLI::Validator in_range(std::int64_t low, std::int64_t high = kNoUpperBound);
CLI::Validator in_range_or(std::int64_t sentinel, const std::string& sentinel_meaning,
                           std::int64_t low, std::int64_t high = kNoUpperBound);

// A finite number >= 0.
CLI::Validator non_negative_number();

// The command names `app` has, "map, validate, ...".
std::string command_names(const CLI::App& app);

}  // namespace moe_eplb::cli

// Range checks for the tool's numeric options. CLI11 runs them while it
// parses, before any command starts work, and a failure becomes
// "moe-eplb: error: --print-rows: must be 0 or more, got -5" (exit 1).
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include <CLI/CLI.hpp>
#include <vector>

#include "moe_eplb/plan/rule.hpp"

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

// The replica rule a command routes or plans by: --rule NAME (one of the
// registry's, plan/rule.hpp), or --balance-mode N, the operator's mode that
// implements it (0 ascend-rank, 1 ascend-token, 2 vllm). --rule wins; the
// default is ascend-rank.
struct RuleOptions {
  std::string rule;
  std::int64_t balance_mode = 0;
};
void add_rule_options(CLI::App* command, RuleOptions* options);
ReplicaRule chosen_rule(const RuleOptions& options);
// "rank" and "token" for the operator's two Ascend modes, else the rule's
// name; rule_phrase(): "rank mode", "token mode", "vllm rule", ...
std::string rule_label(ReplicaRule rule);
std::string rule_phrase(ReplicaRule rule);

// "moe-eplb|deepseek|flashlb": the names of a registry, for --help.
std::string joined_names(const std::vector<std::string>& names);

}  // namespace moe_eplb::cli

#include "options.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>

namespace moe_eplb::cli {
namespace {

// "0 or more", "1..8", "-1 (no cap) or 0 or more".
std::string describe(std::int64_t low, std::int64_t high) {
  if (high == kNoUpperBound) return std::to_string(low) + " or more";
  return "in " + std::to_string(low) + ".." + std::to_string(high);
}

// The value as an integer; false when the text is not one (CLI11's own
// conversion then reports it).
bool parse_integer(const std::string& text, std::int64_t& value) {
  errno = 0;
  char* end = nullptr;
  const long long parsed = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || end != text.c_str() + text.size() || errno == ERANGE) return false;
  value = parsed;
  return true;
}

CLI::Validator integer_check(std::int64_t low, std::int64_t high, bool has_sentinel,
                             std::int64_t sentinel, const std::string& sentinel_meaning) {
  std::string expected = "must be " + describe(low, high);
  if (has_sentinel) {
    expected = "must be " + std::to_string(sentinel) + " (" + sentinel_meaning + ") or " +
               describe(low, high);
  }
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        std::int64_t value = 0;
        if (!parse_integer(text, value)) return "must be an integer, got '" + text + "'";
        if ((has_sentinel && value == sentinel) || (value >= low && value <= high)) return "";
        return expected + ", got " + text;
      },
      "", "range");
}

}  // namespace

CLI::Validator in_range(std::int64_t low, std::int64_t high) {
  return integer_check(low, high, false, 0, "");
}

CLI::Validator in_range_or(std::int64_t sentinel, const std::string& sentinel_meaning,
                           std::int64_t low, std::int64_t high) {
  return integer_check(low, high, true, sentinel, sentinel_meaning);
}

CLI::Validator non_negative_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        if (text.empty() || end != text.c_str() + text.size()) {
          return "must be a number, got '" + text + "'";
        }
        if (!std::isfinite(value) || value < 0) return "must be a finite number >= 0, got " + text;
        return "";
      },
      "", "non-negative");
}

std::string command_names(const CLI::App& app) {
  std::string names;
  for (const CLI::App* command : app.get_subcommands(std::function<bool(const CLI::App*)>{})) {
    names += (names.empty() ? "" : ", ") + command->get_name();
  }
  return names;
}

}  // namespace moe_eplb::cli

namespace moe_eplb::cli {

std::string joined_names(const std::vector<std::string>& names) {
  std::string joined;
  for (const std::string& name : names) joined += (joined.empty() ? "" : "|") + name;
  return joined;
}

void add_rule_options(CLI::App* command, RuleOptions* options) {
  std::vector<std::string> names;
  for (const RuleInfo& info : replica_rules()) names.emplace_back(info.name);
  command
      ->add_option("--rule", options->rule,
                   "the engine's replica rule: " + joined_names(names) +
                       " (docs/SPEC.md, \"Replica rules\"; default: --balance-mode's)")
      ->check(CLI::IsMember(names));
  command
      ->add_option("--balance-mode", options->balance_mode,
                   "the operator's mode: 0 = by rank (ascend-rank), 1 = by token "
                   "(ascend-token), 2 = vLLM's token hash (vllm)")
      ->check(in_range(0, 2));
}

std::string rule_label(ReplicaRule rule) {
  if (rule == ReplicaRule::kAscendRank) return "rank";
  if (rule == ReplicaRule::kAscendToken) return "token";
  return rule_info(rule).name;
}

std::string rule_phrase(ReplicaRule rule) {
  const bool ascend = rule == ReplicaRule::kAscendRank || rule == ReplicaRule::kAscendToken;
  return rule_label(rule) + (ascend ? " mode" : " rule");
}

ReplicaRule chosen_rule(const RuleOptions& options) {
  return options.rule.empty() ? rule_of_balance_mode(static_cast<BalanceMode>(options.balance_mode))
                              : parse_replica_rule(options.rule, "--rule");
}

}  // namespace moe_eplb::cli

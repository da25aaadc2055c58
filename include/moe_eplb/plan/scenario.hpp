// Synthetic MoE routing scenarios: the demo's default workload, the planner
// benchmark suite and test inputs. A scenario fixes a distribution (expert
// popularity, per-source-rank preferences, tokens per rank); each *window*
// draws tokens from it with its own seed, so window 0 can be planned on and
// window 1 scored, as a deployment re-plans on the last window's statistics.
//
// Deterministic on every platform: own generator (xoshiro256**) and own
// normal / alias sampling, no <random> distributions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/load.hpp"
#include "moe_eplb/plan/planner.hpp"

namespace moe_eplb {

enum class Popularity : std::uint8_t {
  kZipf,       // weight of the i-th most popular expert ~ 1 / (i + 1)^skew
  kLogNormal,  // weight ~ exp(skew * N(0, 1))
};

struct ScenarioSpec {
  std::string name;
  std::string description;  // one line for tables and plots, e.g. "DeepSeek-V3, EP 32, Zipf 0.9"
  std::int64_t num_experts = 0;
  std::int64_t top_k = 0;
  std::int64_t world_size = 0;
  std::int64_t slots_per_rank = 0;
  std::int64_t ranks_per_node = 0;  // 0 = one node
  std::int64_t tokens_per_rank = 0;
  Popularity popularity = Popularity::kZipf;
  double skew = 1.0;             // Zipf exponent or log-normal sigma
  double rank_variation = 0.0;   // sigma of a per-(source rank, expert) log-normal factor
  double token_variation = 0.0;  // rank r has tokens_per_rank * (1 - v * u_r) active tokens
  double hot_expert = 0.0;       // > 0: one expert is a token's first pick with this probability
  std::uint64_t seed = 0;
};

// Draws one window of `spec` (window >= 0): every rank's tokens_per_rank
// tokens, each choosing top_k *distinct* experts by sampling without
// replacement from that rank's expert weights. Padding tokens (token
// variation) are marked inactive in active_mask. Throws moe_eplb::Error
// (kInvalidArgument) for sizes out of range (top_k > num_experts, ...).
RoutingTrace generate_trace(const ScenarioSpec& spec, std::int64_t window);

// The DeepSeek-V3-shaped default of `moe-eplb demo`: 256 experts, top-8,
// EP 32 on 4 nodes of 8, 9 slots per rank, Zipf popularity with per-rank
// preferences, fixed seed.
ScenarioSpec demo_scenario();

// The benchmark suite: DeepSeek-V3, Qwen3-MoE, Kimi-K2 and Mixtral shapes,
// Zipf and log-normal popularity, per-rank variation, one very hot expert,
// world sizes that are and are not powers of two.
std::vector<ScenarioSpec> scenario_suite();

// The demo scenario or a suite member by name; throws moe_eplb::Error
// (kInvalidArgument) listing the known names otherwise.
ScenarioSpec find_scenario(const std::string& name);

// The plan() / analyzer options a scenario implies: its world size, slots per
// rank and node size, with the given mode (and algorithm).
PlanOptions scenario_plan_options(const ScenarioSpec& spec,
                                  BalanceMode balance_mode = BalanceMode::kByRank,
                                  PlanAlgorithm algorithm = PlanAlgorithm::kRuleAware);
AnalyzeOptions scenario_analyze_options(const ScenarioSpec& spec,
                                        BalanceMode balance_mode = BalanceMode::kByRank);

}  // namespace moe_eplb

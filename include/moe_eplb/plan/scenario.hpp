// Synthetic MoE routing scenarios: the demo's default workload, the planner
// benchmark suites and test inputs. A scenario fixes a distribution (expert
// popularity, per-source-rank preferences, tokens per rank); each *window*
// draws tokens from it with its own seed, so window 0 can be planned on and
// window 1 scored, as a deployment re-plans on the last window's statistics.
//
// What changes from one window to the next, and how much:
//   - sampling noise: every window draws tokens_per_rank fresh tokens per
//     rank (fewer tokens, noisier counts);
//   - per-rank preferences: rank r's factor for expert e is
//     exp(rank_variation * z), z = sqrt(p) * z_fixed + sqrt(1 - p) * z_window
//     with p = rank_persistence and z_fixed, z_window independent N(0, 1),
//     z_fixed drawn once per scenario and z_window afresh per window. Every
//     window has the same spread of preferences, and the correlation of z
//     between two windows is p: 1 = fixed (cache-aware request routing),
//     0 = redrawn each window (no request affinity);
//   - popularity drift: the log-weight of every expert takes a random walk,
//     log w_e(t) = log w_e(0) + drift * (n_e1 + ... + n_et), n independent
//     N(0, 1), so drift is the standard deviation of the per-window change
//     of each expert's log-popularity (0 = no drift).
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
  // Window-to-window change (see the top of this file); the defaults keep a
  // fixed distribution, as the single-window suite uses.
  double rank_persistence = 1.0;  // in [0, 1]: correlation of per-rank preferences across windows
  double drift = 0.0;             // >= 0: per-window std of each expert's log-popularity change
  // The multi-window suite's family: "transient", "persistent", "mixed",
  // "drifting", "noisy-transient", "noisy-mixed", "noisy-persistent" or
  // "noisy-sparse"; empty for the single-window suite.
  std::string family;
};

// The most tokens per rank a generated window may have (2^20: a window
// already holds world_size * top_k times as many ids).
inline constexpr std::int64_t kMaxScenarioTokens = 1 << 20;

// Draws one window of `spec` (window >= 0): every rank's tokens_per_rank
// tokens, each choosing top_k *distinct* experts by sampling without
// replacement from that rank's expert weights. Padding tokens (token
// variation) are marked inactive in active_mask. Throws moe_eplb::Error
// (kInvalidArgument) for sizes out of range (top_k > num_experts,
// tokens_per_rank above kMaxScenarioTokens, ...).
RoutingTrace generate_trace(const ScenarioSpec& spec, std::int64_t window);

// The distribution window `window` samples from, before sampling noise:
// (world_size, num_experts) row-major, rank r's relative weight of expert e
// (popularity, drift and that window's preferences; rows are not normalised).
// The first token's pick of rank r is expert e with probability
// weight[r][e] / sum_e weight[r][e]. Same errors as generate_trace().
std::vector<double> window_rank_weights(const ScenarioSpec& spec, std::int64_t window);

// Per-source-rank statistics of windows first_window .. first_window +
// num_windows - 1, oldest first: each a (1 layer, world_size, num_experts)
// ExpertLoad counted from generate_trace() (padding skipped), ready for
// plan(windows, ...). Same errors as generate_trace(), plus num_windows < 0.
std::vector<ExpertLoad> generate_windows(const ScenarioSpec& spec, std::int64_t first_window,
                                         std::int64_t num_windows);

// The DeepSeek-V3-shaped default of `moe-eplb demo`: 256 experts, top-8,
// EP 32 on 4 nodes of 8, 9 slots per rank, Zipf popularity with per-rank
// preferences, fixed seed.
ScenarioSpec demo_scenario();

// The benchmark suite: DeepSeek-V3, Qwen3-MoE, Kimi-K2 and Mixtral shapes,
// Zipf and log-normal popularity, per-rank variation, one very hot expert,
// world sizes that are and are not powers of two.
std::vector<ScenarioSpec> scenario_suite();

// The multi-window suite, four families of five shapes each (DeepSeek-V3 256
// experts top-8 on EP 32 and 64, Qwen3-MoE 128 experts top-8, Mixtral 8
// experts top-2, and world sizes that are not powers of two: 6, 24, 48),
// with per-rank preferences of sigma 0.3 to 0.6:
//   transient   rank_persistence 0 (preferences redrawn every window),
//   persistent  rank_persistence 1,
//   mixed       rank_persistence 0.3 to 0.7,
//   drifting    popularity drift 0.1 to 0.25 per window, persistence 0.5;
// and three families of large per-rank noise (sigma 1, routed top-1 so that
// every count carries it in full; 128 experts Zipf 1.0 on EP 16 x 9, 256
// experts Zipf 0.9 on EP 32 x 9): noisy-transient (persistence 0),
// noisy-mixed (0.3) and noisy-persistent (1), and noisy-sparse (the
// noisy-transient shapes with 512 tokens per rank instead of 4096, where
// sampling noise is as large as the per-rank deviations). Meant to be
// planned on windows 0..3 and scored on window 4 (or replayed).
std::vector<ScenarioSpec> window_suite();

// The demo scenario or a member of either suite by name; throws
// moe_eplb::Error (kInvalidArgument) listing the known names otherwise.
ScenarioSpec find_scenario(const std::string& name);

// Draw `draw` of a scenario: the same spec with seed + draw * 1000003, so
// that benchmarks can average a comparison over independent draws (one draw
// of an 8-expert scenario decides it by luck). Draw 0 is the spec itself.
// Throws moe_eplb::Error (kInvalidArgument) for a negative draw.
ScenarioSpec scenario_draw(ScenarioSpec spec, std::int64_t draw);

// The plan() / analyzer options a scenario implies: its world size, slots per
// rank and node size, with the given mode (and algorithm).
PlanOptions scenario_plan_options(const ScenarioSpec& spec,
                                  BalanceMode balance_mode = BalanceMode::kByRank,
                                  PlanAlgorithm algorithm = PlanAlgorithm::kRuleAware);
AnalyzeOptions scenario_analyze_options(const ScenarioSpec& spec,
                                        BalanceMode balance_mode = BalanceMode::kByRank);

}  // namespace moe_eplb

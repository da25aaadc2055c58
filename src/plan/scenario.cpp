#include "moe_eplb/plan/scenario.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/load.hpp"

namespace moe_eplb {
namespace {

constexpr double kPi = 3.14159265358979323846;

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// xoshiro256**: small, fast, and the same sequence everywhere.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) {
    for (std::uint64_t& word : state_) word = splitmix64(seed);
  }
  std::uint64_t next() {
    const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const std::uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  std::int64_t below(std::int64_t n) {
    return static_cast<std::int64_t>(uniform() * static_cast<double>(n));
  }
  double normal() {  // Box-Muller
    const double u = 1.0 - uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * kPi * uniform());
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t state_[4];
};

// Vose's alias method: O(1) draws from a fixed discrete distribution.
class AliasTable {
 public:
  explicit AliasTable(const std::vector<double>& weights)
      : probability_(weights.size()), alias_(weights.size()) {
    const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
    const auto n = static_cast<std::int64_t>(weights.size());
    std::vector<double> scaled(weights.size());
    std::vector<std::int64_t> small, large;
    for (std::int64_t i = 0; i < n; ++i) {
      scaled[i] = weights[i] * static_cast<double>(n) / total;
      (scaled[i] < 1.0 ? small : large).push_back(i);
    }
    while (!small.empty() && !large.empty()) {
      const std::int64_t s = small.back(), l = large.back();
      small.pop_back();
      probability_[s] = scaled[s];
      alias_[s] = l;
      scaled[l] -= 1.0 - scaled[s];
      if (scaled[l] < 1.0) {
        large.pop_back();
        small.push_back(l);
      }
    }
    for (std::int64_t i : large) probability_[i] = 1.0;
    for (std::int64_t i : small) probability_[i] = 1.0;  // rounding leftovers
  }
  std::int64_t draw(Rng& rng) const {
    const std::int64_t column = rng.below(static_cast<std::int64_t>(probability_.size()));
    return rng.uniform() < probability_[column] ? column : alias_[column];
  }

 private:
  std::vector<double> probability_;
  std::vector<std::int64_t> alias_;
};

void check_spec(const ScenarioSpec& spec) {
  MOE_EPLB_CHECK(spec.num_experts >= 1 && spec.num_experts <= INT32_MAX,
                 "generate_trace(): num_experts must be in 1..", INT32_MAX, ", got ",
                 spec.num_experts);
  MOE_EPLB_CHECK(spec.top_k >= 1 && spec.top_k <= spec.num_experts,
                 "generate_trace(): top_k must be in 1..", spec.num_experts,
                 " (distinct experts per token), got ", spec.top_k);
  MOE_EPLB_CHECK(spec.world_size >= 1, "generate_trace(): world_size must be positive, got ",
                 spec.world_size);
  MOE_EPLB_CHECK(spec.tokens_per_rank >= 0 && spec.tokens_per_rank <= kMaxScenarioTokens,
                 "generate_trace(): tokens_per_rank must be in 0..", kMaxScenarioTokens, ", got ",
                 spec.tokens_per_rank);
  MOE_EPLB_CHECK(spec.skew >= 0 && spec.rank_variation >= 0 && spec.token_variation >= 0 &&
                     spec.token_variation <= 1 && spec.hot_expert >= 0 && spec.hot_expert < 1,
                 "generate_trace(): skew and rank_variation must be >= 0, token_variation in "
                 "[0, 1] and hot_expert in [0, 1)");
  MOE_EPLB_CHECK(spec.rank_persistence >= 0 && spec.rank_persistence <= 1,
                 "generate_trace(): rank_persistence must be in [0, 1], got ",
                 spec.rank_persistence);
  MOE_EPLB_CHECK(spec.drift >= 0 && std::isfinite(spec.drift),
                 "generate_trace(): drift must be a finite number >= 0, got ", spec.drift);
}

// An independent stream per (scenario, window, purpose): the same draws
// whatever else was asked for before.
Rng stream_rng(std::uint64_t seed, std::int64_t window, std::uint64_t purpose) {
  std::uint64_t state = seed ^ (0x9e3779b97f4a7c15ull * purpose);
  state ^= splitmix64(state) + static_cast<std::uint64_t>(window);
  return Rng(splitmix64(state));
}
constexpr std::uint64_t kDriftStream = 1;
constexpr std::uint64_t kPreferenceStream = 2;

// Global expert weights of the scenario (the same for every window).
std::vector<double> expert_weights(const ScenarioSpec& spec, Rng& rng) {
  const auto num_experts = static_cast<std::size_t>(spec.num_experts);
  std::vector<double> weights(num_experts);
  if (spec.popularity == Popularity::kZipf) {
    std::vector<std::int64_t> order(num_experts);  // popularity rank -> expert
    std::iota(order.begin(), order.end(), 0);
    for (std::size_t i = num_experts; i > 1; --i) {  // Fisher-Yates
      std::swap(order[i - 1],
                order[static_cast<std::size_t>(rng.below(static_cast<std::int64_t>(i)))]);
    }
    for (std::size_t i = 0; i < num_experts; ++i) {
      weights[order[i]] = 1.0 / std::pow(static_cast<double>(i + 1), spec.skew);
    }
  } else {
    for (double& weight : weights) weight = std::exp(spec.skew * rng.normal());
  }
  if (spec.hot_expert > 0 && num_experts > 1) {
    const auto hot = static_cast<std::size_t>(rng.below(spec.num_experts));
    const double others = std::accumulate(weights.begin(), weights.end(), 0.0) - weights[hot];
    weights[hot] = others * spec.hot_expert / (1.0 - spec.hot_expert);
  }
  return weights;
}

// Up to top_k distinct draws: rejection while it is cheap, then a direct
// weighted draw among the experts not chosen yet.
void draw_distinct(const AliasTable& alias, const std::vector<double>& weights, std::int64_t top_k,
                   Rng& rng, std::int32_t* out) {
  std::int64_t chosen = 0;
  const auto taken = [&](std::int64_t expert) {
    return std::find(out, out + chosen, static_cast<std::int32_t>(expert)) != out + chosen;
  };
  for (std::int64_t attempt = 0; chosen < top_k && attempt < 16 * top_k; ++attempt) {
    const std::int64_t expert = alias.draw(rng);
    if (!taken(expert)) out[chosen++] = static_cast<std::int32_t>(expert);
  }
  while (chosen < top_k) {
    double left = 0.0;
    for (std::size_t e = 0; e < weights.size(); ++e) {
      if (!taken(static_cast<std::int64_t>(e))) left += weights[e];
    }
    double target = rng.uniform() * left;
    std::int64_t pick = -1;
    for (std::size_t e = 0; e < weights.size(); ++e) {
      if (taken(static_cast<std::int64_t>(e))) continue;
      pick = static_cast<std::int64_t>(e);
      target -= weights[e];
      if (target < 0) break;
    }
    out[chosen++] = static_cast<std::int32_t>(pick);
  }
}

// The shape both tables of built-in scenarios give in braces.
struct ShapeRow {
  std::int64_t num_experts, top_k, world_size, slots_per_rank, ranks_per_node;
  Popularity popularity;
  double skew, rank_variation;
};

// A spec of the given shape; tokens_per_rank is 4096 for every built-in one
// but the sparse family of the multi-window suite.
ScenarioSpec spec_of_shape(const ShapeRow& shape, double hot_expert, std::uint64_t seed) {
  ScenarioSpec spec;
  spec.num_experts = shape.num_experts;
  spec.top_k = shape.top_k;
  spec.world_size = shape.world_size;
  spec.slots_per_rank = shape.slots_per_rank;
  spec.ranks_per_node = shape.ranks_per_node;
  spec.tokens_per_rank = 4096;
  spec.popularity = shape.popularity;
  spec.skew = shape.skew;
  spec.rank_variation = shape.rank_variation;
  spec.hot_expert = hot_expert;
  spec.seed = seed;
  return spec;
}

// One row of the built-in scenarios.
struct ScenarioRow {
  const char* name;
  const char* description;
  ShapeRow shape;
  double token_variation, hot_expert;
  std::uint64_t seed;
};

constexpr Popularity kZipf = Popularity::kZipf;
constexpr Popularity kLogNormal = Popularity::kLogNormal;

// clang-format off
constexpr ScenarioRow kScenarios[] = {
  // name, description,                                                {E,   K, W,  S, node, popularity, skew, rank}, tokens, hot, seed
  {"deepseek-v3-ep32", "DeepSeek-V3, EP 32, Zipf 0.9",                 {256, 8, 32, 9, 8, kZipf,      0.9, 0.5}, 0.0, 0.0, 20250807},
  {"deepseek-v3-ep32-lognormal", "DeepSeek-V3, EP 32, log-normal 1.0", {256, 8, 32, 9, 8, kLogNormal, 1.0, 0.3}, 0.3, 0.0, 11},
  {"deepseek-v3-ep64-zipf", "DeepSeek-V3, EP 64, Zipf 1.0",            {256, 8, 64, 5, 8, kZipf,      1.0, 0.3}, 0.0, 0.0, 12},
  {"deepseek-v3-ep64-hot", "DeepSeek-V3, EP 64, log-normal + hot",     {256, 8, 64, 5, 8, kLogNormal, 0.6, 0.3}, 0.0, 0.5, 13},
  {"qwen3-ep16-lognormal", "Qwen3-MoE, EP 16, log-normal 0.8",         {128, 8, 16, 9, 8, kLogNormal, 0.8, 0.6}, 0.0, 0.0, 14},
  {"qwen3-ep32-hot", "Qwen3-MoE, EP 32, Zipf 0.8 + hot",               {128, 8, 32, 5, 8, kZipf,      0.8, 0.3}, 0.0, 0.4, 15},
  {"kimi-k2-ep64-zipf", "Kimi-K2, EP 64, Zipf 0.9",                    {384, 8, 64, 7, 8, kZipf,      0.9, 0.3}, 0.0, 0.0, 16},
  {"kimi-k2-ep48-lognormal", "Kimi-K2, EP 48, log-normal 1.0",         {384, 8, 48, 9, 8, kLogNormal, 1.0, 0.5}, 0.3, 0.0, 17},
  {"mixtral-ep4-zipf", "Mixtral, EP 4, Zipf 1.0",                      {8,   2, 4,  3, 4, kZipf,      1.0, 0.3}, 0.0, 0.0, 18},
  {"mixtral-ep6-lognormal", "Mixtral, EP 6, log-normal 0.8",           {8,   2, 6,  2, 0, kLogNormal, 0.8, 0.3}, 0.0, 0.0, 19},
  {"mixtral-ep8-hot", "Mixtral, EP 8, Zipf 0.5 + hot",                 {8,   2, 8,  2, 8, kZipf,      0.5, 0.3}, 0.0, 0.4, 20},
};
// clang-format on

ScenarioSpec make_spec(const ScenarioRow& row) {
  ScenarioSpec spec = spec_of_shape(row.shape, row.hot_expert, row.seed);
  spec.name = row.name;
  spec.description = row.description;
  spec.token_variation = row.token_variation;
  return spec;
}

// One row of the multi-window suite: a shape (as above, no token variation)
// with its family's window-to-window change.
struct WindowScenarioRow {
  const char* family;
  const char* shape_name;
  const char* description;
  ShapeRow shape;
  double hot_expert, rank_persistence, drift;
  std::uint64_t seed;
  std::int64_t tokens_per_rank = 4096;
};

// clang-format off
constexpr WindowScenarioRow kWindowScenarios[] = {
  // family, shape, description,                                                 {E,  K, W,  S, node, popularity, skew, rank}, hot, persist, drift, seed
  {"transient", "deepseek-v3-ep32", "DeepSeek-V3, EP 32, Zipf 0.9",              {256, 8, 32, 9, 8, kZipf,      0.9, 0.5}, 0.0, 0.0, 0.0,  101},
  {"transient", "deepseek-v3-ep64", "DeepSeek-V3, EP 64, log-normal 0.8",        {256, 8, 64, 5, 8, kLogNormal, 0.8, 0.5}, 0.0, 0.0, 0.0,  102},
  {"transient", "qwen3-ep16", "Qwen3-MoE, EP 16, Zipf 1.0",                      {128, 8, 16, 9, 8, kZipf,      1.0, 0.6}, 0.0, 0.0, 0.0,  103},
  {"transient", "mixtral-ep6", "Mixtral, EP 6, log-normal 0.8",                  {8,   2, 6,  2, 0, kLogNormal, 0.8, 0.4}, 0.0, 0.0, 0.0,  104},
  {"transient", "deepseek-v3-ep24", "DeepSeek-V3, EP 24, Zipf 0.9 + hot",        {256, 8, 24, 12, 8, kZipf,     0.9, 0.5}, 0.3, 0.0, 0.0,  105},
  {"persistent", "deepseek-v3-ep32", "DeepSeek-V3, EP 32, Zipf 0.9",             {256, 8, 32, 9, 8, kZipf,      0.9, 0.5}, 0.0, 1.0, 0.0,  106},
  {"persistent", "deepseek-v3-ep64", "DeepSeek-V3, EP 64, log-normal 0.8",       {256, 8, 64, 5, 8, kLogNormal, 0.8, 0.5}, 0.0, 1.0, 0.0,  107},
  {"persistent", "qwen3-ep32", "Qwen3-MoE, EP 32, Zipf 0.8 + hot",               {128, 8, 32, 5, 8, kZipf,      0.8, 0.5}, 0.3, 1.0, 0.0,  108},
  {"persistent", "mixtral-ep4", "Mixtral, EP 4, Zipf 1.0",                       {8,   2, 4,  3, 4, kZipf,      1.0, 0.4}, 0.0, 1.0, 0.0,  109},
  {"persistent", "kimi-k2-ep48", "Kimi-K2, EP 48, log-normal 1.0",               {384, 8, 48, 9, 8, kLogNormal, 1.0, 0.5}, 0.0, 1.0, 0.0,  110},
  {"mixed", "deepseek-v3-ep32", "DeepSeek-V3, EP 32, Zipf 0.9",                  {256, 8, 32, 9, 8, kZipf,      0.9, 0.5}, 0.0, 0.5, 0.0,  111},
  {"mixed", "deepseek-v3-ep64", "DeepSeek-V3, EP 64, Zipf 1.0",                  {256, 8, 64, 5, 8, kZipf,      1.0, 0.5}, 0.0, 0.3, 0.0,  112},
  {"mixed", "qwen3-ep12", "Qwen3-MoE, EP 12, log-normal 0.8",                    {128, 8, 12, 12, 4, kLogNormal, 0.8, 0.6}, 0.0, 0.7, 0.0, 113},
  {"mixed", "mixtral-ep6", "Mixtral, EP 6, Zipf 0.8",                            {8,   2, 6,  2, 0, kZipf,      0.8, 0.4}, 0.0, 0.5, 0.0,  114},
  {"mixed", "kimi-k2-ep48", "Kimi-K2, EP 48, Zipf 0.9 + hot",                    {384, 8, 48, 9, 8, kZipf,      0.9, 0.5}, 0.3, 0.7, 0.0,  115},
  {"drifting", "deepseek-v3-ep32", "DeepSeek-V3, EP 32, Zipf 0.9",               {256, 8, 32, 9, 8, kZipf,      0.9, 0.3}, 0.0, 0.5, 0.15, 116},
  {"drifting", "deepseek-v3-ep64", "DeepSeek-V3, EP 64, log-normal 0.8",         {256, 8, 64, 5, 8, kLogNormal, 0.8, 0.3}, 0.0, 0.5, 0.1,  117},
  {"drifting", "qwen3-ep16", "Qwen3-MoE, EP 16, Zipf 1.0",                       {128, 8, 16, 9, 8, kZipf,      1.0, 0.3}, 0.0, 0.5, 0.2,  118},
  {"drifting", "mixtral-ep6", "Mixtral, EP 6, log-normal 0.8",                   {8,   2, 6,  2, 0, kLogNormal, 0.8, 0.3}, 0.0, 0.5, 0.25, 119},
  {"drifting", "deepseek-v3-ep48", "DeepSeek-V3, EP 48, Zipf 0.9",               {256, 8, 48, 6, 8, kZipf,      0.9, 0.3}, 0.0, 0.5, 0.15, 120},
  // Large per-rank noise (issue 18): per-(rank, expert) log-normal sigma 1,
  // routed top-1 so that every count carries its rank's deviation in full
  // (top-8 sampling without replacement saturates the hot experts).
  {"noisy-transient", "qwen3-ep16", "128 experts top-1, EP 16, Zipf 1.0, rank sigma 1",  {128, 1, 16, 9, 8, kZipf, 1.0, 1.0}, 0.0, 0.0, 0.0, 121},
  {"noisy-transient", "deepseek-v3-ep32", "256 experts top-1, EP 32, Zipf 0.9, rank sigma 1", {256, 1, 32, 9, 8, kZipf, 0.9, 1.0}, 0.0, 0.0, 0.0, 122},
  {"noisy-mixed", "qwen3-ep16", "128 experts top-1, EP 16, Zipf 1.0, rank sigma 1",      {128, 1, 16, 9, 8, kZipf, 1.0, 1.0}, 0.0, 0.3, 0.0, 123},
  {"noisy-mixed", "deepseek-v3-ep32", "256 experts top-1, EP 32, Zipf 0.9, rank sigma 1", {256, 1, 32, 9, 8, kZipf, 0.9, 1.0}, 0.0, 0.3, 0.0, 124},
  {"noisy-persistent", "qwen3-ep16", "128 experts top-1, EP 16, Zipf 1.0, rank sigma 1", {128, 1, 16, 9, 8, kZipf, 1.0, 1.0}, 0.0, 1.0, 0.0, 125},
  {"noisy-persistent", "deepseek-v3-ep32", "256 experts top-1, EP 32, Zipf 0.9, rank sigma 1", {256, 1, 32, 9, 8, kZipf, 0.9, 1.0}, 0.0, 1.0, 0.0, 126},
  // Sparse windows: the transient large-noise shapes with 512 tokens per
  // rank (4 routed tokens per (rank, expert) on average at EP 16), where
  // sampling noise is as large as the per-rank deviations.
  {"noisy-sparse", "qwen3-ep16", "128 experts top-1, EP 16, Zipf 1.0, rank sigma 1, 512 tokens per rank",  {128, 1, 16, 9, 8, kZipf, 1.0, 1.0}, 0.0, 0.0, 0.0, 127, 512},
  {"noisy-sparse", "deepseek-v3-ep32", "256 experts top-1, EP 32, Zipf 0.9, rank sigma 1, 512 tokens per rank", {256, 1, 32, 9, 8, kZipf, 0.9, 1.0}, 0.0, 0.0, 0.0, 128, 512},
};
// clang-format on

ScenarioSpec make_window_spec(const WindowScenarioRow& row) {
  ScenarioSpec spec = spec_of_shape(row.shape, row.hot_expert, row.seed);
  spec.family = row.family;
  spec.name = std::string(row.family) + "-" + row.shape_name;
  spec.description = std::string(row.description) + ", " + row.family;
  spec.rank_persistence = row.rank_persistence;
  spec.drift = row.drift;
  spec.tokens_per_rank = row.tokens_per_rank;
  return spec;
}

// What one window samples from: every rank's expert weights and its number
// of active tokens.
struct WindowDistribution {
  std::vector<double> rank_weights;         // (W, E)
  std::vector<std::int64_t> active_tokens;  // (W,)
};

WindowDistribution window_distribution(const ScenarioSpec& spec, std::int64_t window) {
  check_spec(spec);
  MOE_EPLB_CHECK(window >= 0, "generate_trace(): window must be >= 0, got ", window);
  Rng shape_rng(spec.seed);
  std::vector<double> weights = expert_weights(spec, shape_rng);
  const auto num_experts = weights.size();
  if (spec.drift > 0) {  // the random walk of log-popularity up to this window
    std::vector<double> walk(num_experts, 0.0);
    for (std::int64_t step = 1; step <= window; ++step) {
      Rng step_rng = stream_rng(spec.seed, step, kDriftStream);
      for (double& position : walk) position += step_rng.normal();
    }
    for (std::size_t e = 0; e < num_experts; ++e) weights[e] *= std::exp(spec.drift * walk[e]);
  }
  const bool redrawn = spec.rank_persistence < 1.0;
  const double fixed_part = std::sqrt(spec.rank_persistence);
  const double window_part = std::sqrt(1.0 - spec.rank_persistence);
  Rng preference_rng = stream_rng(spec.seed, window, kPreferenceStream);

  WindowDistribution distribution;
  distribution.rank_weights.resize(static_cast<std::size_t>(spec.world_size) * num_experts);
  distribution.active_tokens.resize(static_cast<std::size_t>(spec.world_size));
  for (std::int64_t rank = 0; rank < spec.world_size; ++rank) {
    // The fixed part of the rank's preferences and its size belong to the
    // scenario; the redrawn part to the window.
    double* rank_weights = distribution.rank_weights.data() + rank * spec.num_experts;
    for (std::size_t e = 0; e < num_experts; ++e) {
      double z = shape_rng.normal();
      if (redrawn) z = fixed_part * z + window_part * preference_rng.normal();
      rank_weights[e] = weights[e] * std::exp(spec.rank_variation * z);
    }
    const double shrink = spec.token_variation * shape_rng.uniform();
    distribution.active_tokens[static_cast<std::size_t>(rank)] = static_cast<std::int64_t>(
        std::llround(static_cast<double>(spec.tokens_per_rank) * (1.0 - shrink)));
  }
  return distribution;
}

}  // namespace

RoutingTrace generate_trace(const ScenarioSpec& spec, std::int64_t window) {
  const WindowDistribution distribution = window_distribution(spec, window);
  RoutingTrace trace;
  trace.world_size = spec.world_size;
  trace.tokens_per_rank = spec.tokens_per_rank;
  trace.top_k = spec.top_k;
  trace.expert_ids.resize(
      static_cast<std::size_t>(spec.world_size * spec.tokens_per_rank * spec.top_k));
  if (spec.token_variation > 0) {
    trace.active_mask.assign(static_cast<std::size_t>(spec.world_size * spec.tokens_per_rank), 1);
  }
  std::uint64_t window_seed =
      spec.seed ^ (0x5851f42d4c957f2dull * static_cast<std::uint64_t>(window + 1));
  Rng token_rng(splitmix64(window_seed));

  for (std::int64_t rank = 0; rank < spec.world_size; ++rank) {
    const auto first = distribution.rank_weights.begin() + rank * spec.num_experts;
    const std::vector<double> rank_weights(first, first + spec.num_experts);
    const std::int64_t active = distribution.active_tokens[static_cast<std::size_t>(rank)];
    const AliasTable alias(rank_weights);
    std::int32_t* ids = trace.expert_ids.data() + rank * spec.tokens_per_rank * spec.top_k;
    for (std::int64_t token = 0; token < spec.tokens_per_rank; ++token) {
      std::int32_t* row = ids + token * spec.top_k;
      if (token < active) {
        draw_distinct(alias, rank_weights, spec.top_k, token_rng, row);
        continue;
      }
      // Padding: valid, distinct ids that the mask keeps out of every count.
      for (std::int64_t k = 0; k < spec.top_k; ++k) row[k] = static_cast<std::int32_t>(k);
      trace.active_mask[static_cast<std::size_t>(rank * spec.tokens_per_rank + token)] = 0;
    }
  }
  return trace;
}

std::vector<double> window_rank_weights(const ScenarioSpec& spec, std::int64_t window) {
  return window_distribution(spec, window).rank_weights;
}

std::vector<ExpertLoad> generate_windows(const ScenarioSpec& spec, std::int64_t first_window,
                                         std::int64_t num_windows) {
  MOE_EPLB_CHECK(num_windows >= 0, "generate_windows(): num_windows must be >= 0, got ",
                 num_windows);
  MOE_EPLB_CHECK(first_window >= 0, "generate_windows(): first_window must be >= 0, got ",
                 first_window);
  std::vector<ExpertLoad> windows;
  windows.reserve(static_cast<std::size_t>(num_windows));
  for (std::int64_t window = first_window; window < first_window + num_windows; ++window) {
    LoadRecorder recorder(1, spec.world_size, spec.num_experts);
    recorder.record(0, generate_trace(spec, window));
    windows.push_back(recorder.load());
  }
  return windows;
}

ScenarioSpec demo_scenario() { return make_spec(kScenarios[0]); }

std::vector<ScenarioSpec> scenario_suite() {
  std::vector<ScenarioSpec> suite;
  for (const ScenarioRow& row : kScenarios) suite.push_back(make_spec(row));
  return suite;
}

std::vector<ScenarioSpec> window_suite() {
  std::vector<ScenarioSpec> suite;
  for (const WindowScenarioRow& row : kWindowScenarios) suite.push_back(make_window_spec(row));
  return suite;
}

PlanOptions scenario_plan_options(const ScenarioSpec& spec, BalanceMode balance_mode,
                                  PlanAlgorithm algorithm) {
  PlanOptions options;
  options.world_size = spec.world_size;
  options.slots_per_rank = spec.slots_per_rank;
  options.ranks_per_node = spec.ranks_per_node;
  options.rule = rule_of_balance_mode(balance_mode);
  options.algorithm = algorithm;
  return options;
}

AnalyzeOptions scenario_analyze_options(const ScenarioSpec& spec, BalanceMode balance_mode) {
  AnalyzeOptions options;
  options.world_size = spec.world_size;
  options.slots_per_rank = spec.slots_per_rank;
  options.ranks_per_node = spec.ranks_per_node;
  options.rule = rule_of_balance_mode(balance_mode);
  return options;
}

ScenarioSpec find_scenario(const std::string& name) {
  std::string names;
  std::vector<ScenarioSpec> known = scenario_suite();
  for (ScenarioSpec& spec : window_suite()) known.push_back(std::move(spec));
  for (const ScenarioSpec& spec : known) {
    if (spec.name == name) return spec;
    names += (names.empty() ? "" : ", ") + spec.name;
  }
  MOE_EPLB_FAIL(ErrorCode::kInvalidArgument, "find_scenario(): unknown scenario '", name,
                "', expected one of ", names);
}

ScenarioSpec scenario_draw(ScenarioSpec spec, std::int64_t draw) {
  MOE_EPLB_CHECK(draw >= 0, "scenario_draw(): draw must be >= 0, got ", draw);
  constexpr std::uint64_t kDrawStride = 1000003;  // a prime: draws never share a seed
  spec.seed += kDrawStride * static_cast<std::uint64_t>(draw);
  return spec;
}

}  // namespace moe_eplb

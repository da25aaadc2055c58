// Internal: what the next window of one layer will look like, from the
// windows plan() was given. The method is stated in planner.hpp.
#pragma once

#include <cstdint>
#include <vector>

#include "planners.hpp"

namespace moe_eplb::plan_detail {

// Parameters of the forecast (documented in planner.hpp).
// With one window the share of a rank's deviation that persists cannot be
// measured; this fraction of the deviation that exceeds sampling noise is
// assumed to.
constexpr double kSingleWindowPersistence = 0.5;
// The drift estimate counts only beyond this many of its standard errors:
// 0 reads sampling noise as drift in stationary layers of few experts, 1
// misses a real drift of 0.25 per window there (suite and replays, bench/
// RESULTS.md section 5).
constexpr double kDriftStandardErrors = 0.5;
// Under the even-split rules, windows without drift whose per-rank
// deviations persist less than this are planned on as their mean (one
// window): see forecast_layer().
constexpr double kMeanWindowPersistence = 0.9;
// ... and so are windows whose drift is not established: the pooled drift
// estimate below this many standard errors of what the noise model alone
// gives it (a one-sided test at about 2%).
constexpr double kMeanWindowDriftEvidence = 2.0;

struct LayerForecast {
  std::int64_t num_source_ranks = 1;  // R: world_size, or 1 for global counts
  std::int64_t num_experts = 0;
  // (R, E) expected counts of the next window.
  std::vector<double> mean;
  // (R, E) variance of each count that is independent between ranks and
  // experts: Poisson sampling plus the per-rank deviation that does not persist.
  std::vector<double> variance;
  // (E,) variance of an expert's total that moves all its ranks together
  // (popularity drift and the error of the estimated level), spread over
  // the ranks in proportion to `mean`.
  std::vector<double> coherent_variance;
  double persistence = 1.0;  // lag-1 persistence of the per-rank deviations
  double shrink = 1.0;       // weight the windows' mean deviation keeps
};

LayerForecast forecast_layer(const LayerRequest& request);

}  // namespace moe_eplb::plan_detail

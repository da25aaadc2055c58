// The next window of a layer from the windows seen, in the four stages
// planner.hpp states ("How several windows are used"): persistence,
// shrinkage, level and drift, noise.
#include "forecast.hpp"

#include <algorithm>
#include <cmath>

namespace moe_eplb::plan_detail {
namespace {

double clip01(double value) { return std::min(1.0, std::max(0.0, value)); }

// What every stage reads: the windows (oldest first), each window's expert
// totals and source-rank shares of all tokens, and their means.
struct Windows {
  std::vector<const double*> counts;              // T windows of (R, E)
  std::int64_t num_ranks = 1;                     // R
  std::int64_t num_experts = 0;                   // E
  std::vector<std::vector<double>> expert_total;  // (T, E)
  std::vector<std::vector<double>> rank_share;    // (T, R)
  std::vector<double> total;                      // (T,)
  double mean_total = 0.0;
  std::vector<double> mean_share;   // (R,)
  std::vector<double> mean_expert;  // (E,)

  std::int64_t size() const { return static_cast<std::int64_t>(counts.size()); }
  // Window t's total of expert e scaled to the mean window size.
  double scaled_total(std::int64_t t, std::int64_t e) const {
    return total[t] > 0.0 ? expert_total[t][e] * mean_total / total[t] : 0.0;
  }
};

Windows summarize(const LayerRequest& request) {
  Windows windows;
  windows.counts =
      request.windows.empty() ? std::vector<const double*>{request.counts} : request.windows;
  const std::int64_t num_ranks = windows.num_ranks = request.num_source_ranks;
  const std::int64_t num_experts = windows.num_experts = request.num_experts;
  const std::int64_t num_windows = windows.size();
  const double inv_windows = 1.0 / static_cast<double>(num_windows);
  windows.expert_total.assign(static_cast<std::size_t>(num_windows),
                              std::vector<double>(static_cast<std::size_t>(num_experts), 0.0));
  windows.rank_share.assign(static_cast<std::size_t>(num_windows),
                            std::vector<double>(static_cast<std::size_t>(num_ranks), 0.0));
  windows.total.assign(static_cast<std::size_t>(num_windows), 0.0);
  windows.mean_share.assign(static_cast<std::size_t>(num_ranks), 0.0);
  windows.mean_expert.assign(static_cast<std::size_t>(num_experts), 0.0);
  // Every window's sums in one pass over the ranks; each sum still adds its
  // terms in (rank, expert) order, the windows' sums side by side.
  std::vector<double> rank_sum(static_cast<std::size_t>(num_windows));
  for (std::int64_t w = 0; w < num_ranks; ++w) {
    std::fill(rank_sum.begin(), rank_sum.end(), 0.0);
    for (std::int64_t e = 0; e < num_experts; ++e) {
      for (std::int64_t t = 0; t < num_windows; ++t) {
        const double count = windows.counts[t][w * num_experts + e];
        windows.expert_total[t][e] += count;
        rank_sum[t] += count;
      }
    }
    for (std::int64_t t = 0; t < num_windows; ++t) {
      windows.rank_share[t][w] = rank_sum[t];
      windows.total[t] += rank_sum[t];
    }
  }
  for (std::int64_t t = 0; t < num_windows; ++t) {
    const std::vector<double>& expert_total = windows.expert_total[t];
    std::vector<double>& rank_share = windows.rank_share[t];
    for (double& share : rank_share) {
      share =
          windows.total[t] > 0.0 ? share / windows.total[t] : 1.0 / static_cast<double>(num_ranks);
    }
    windows.mean_total += windows.total[t] * inv_windows;
    for (std::int64_t w = 0; w < num_ranks; ++w)
      windows.mean_share[w] += rank_share[w] * inv_windows;
    for (std::int64_t e = 0; e < num_experts; ++e) {
      windows.mean_expert[e] += expert_total[e] * inv_windows;
    }
  }
  return windows;
}

// Stage 1: the persistence of each source rank's deviation from the global
// share, with what the noise stage needs of the deviations. Sums are
// weighted by 1 / expected count (Pearson residuals), under which a count's
// sampling noise (Poisson: variance = count) adds count / expected, so that
// no few hot experts decide the estimate.
struct Deviations {
  double persistence = 1.0;
  double mean_deviation_sq = 0.0;  // weighted squared deviation, mean over windows
  double mean_noise = 0.0;         // the part of it sampling noise explains
  double expected_sum = 0.0;       // sum of the expected counts
};

Deviations measure_deviations(const Windows& windows) {
  const std::int64_t num_ranks = windows.num_ranks, num_experts = windows.num_experts;
  const std::int64_t num_windows = windows.size();
  const double inv_windows = 1.0 / static_cast<double>(num_windows);
  const auto num_counts = static_cast<std::size_t>(num_ranks * num_experts);
  Deviations result;
  std::vector<double> weight(num_counts);
  for (std::int64_t w = 0; w < num_ranks; ++w) {
    for (std::int64_t e = 0; e < num_experts; ++e) {
      const double expected = windows.mean_expert[e] * windows.mean_share[w];
      const bool counted = expected > 0.0;
      weight[w * num_experts + e] = counted ? 1.0 / expected : 0.0;
    }
  }
  // One pass per window: its deviations, their weighted square, the noise
  // term and the product with the previous window's deviations.
  std::vector<double> deviation(num_counts), previous(num_counts);
  double cross = 0.0, scale = 0.0, previous_sq = 0.0;
  for (std::int64_t t = 0; t < num_windows; ++t) {
    const double* counts = windows.counts[t];
    const std::vector<double>& expert_total = windows.expert_total[t];
    const std::vector<double>& rank_share = windows.rank_share[t];
    double deviation_sq = 0.0, lagged = 0.0;
    for (std::int64_t w = 0; w < num_ranks; ++w) {
      for (std::int64_t e = 0; e < num_experts; ++e) {
        const std::int64_t i = w * num_experts + e;
        const double dev = counts[i] - expert_total[e] * rank_share[w];
        deviation[i] = dev;
        deviation_sq += weight[i] * dev * dev;
        result.mean_noise += weight[i] * counts[i] * inv_windows;
        if (t > 0) {
          lagged += weight[i] * previous[i] * dev;
        } else if (weight[i] > 0.0) {
          // (With the first window, in the same order as before.)
          result.expected_sum += windows.mean_expert[e] * windows.mean_share[w];
        }
      }
    }
    result.mean_deviation_sq += deviation_sq * inv_windows;
    if (t > 0) {
      cross += lagged;
      scale += 0.5 * (previous_sq + deviation_sq);
    }
    previous_sq = deviation_sq;
    previous.swap(deviation);
  }
  if (num_windows >= 2) {
    result.persistence = scale > 0.0 ? clip01(cross / scale) : 1.0;
  } else {
    // One window: persistence cannot be measured; a share of the deviation
    // beyond sampling noise is assumed to persist.
    const double signal = result.mean_deviation_sq > 0.0
                              ? clip01(1.0 - result.mean_noise / result.mean_deviation_sq)
                              : 0.0;
    result.persistence = kSingleWindowPersistence * signal;
  }
  return result;
}

// Stage 2: the weight the windows' mean deviation keeps, the best linear
// predictor when the non-persistent part is independent between windows.
double shrinkage(double persistence, std::int64_t num_windows) {
  if (num_windows < 2) return persistence;
  const double p = persistence;
  const double inv_windows = 1.0 / static_cast<double>(num_windows);
  return p > 0.0 ? p / (p + (1.0 - p) * inv_windows) : 0.0;
}

// Stage 4, its parameter: the variance of the deviation that does not
// persist, relative to the squared expected count (a variance
// kappa * expected^2 adds kappa * expected to the weighted sums).
double transient_kappa(const Deviations& deviations) {
  const double transient =
      (1.0 - deviations.persistence) * deviations.mean_deviation_sq - deviations.mean_noise;
  return deviations.expected_sum > 0.0 ? std::max(0.0, transient / deviations.expected_sum) : 0.0;
}

// The variance of one expert's drift term, lag2 - lag1 (the mean squared
// two-window step less the mean squared one-window step), over T windows of
// independent noise of variance sigma^2 and no drift, in units of sigma^4:
// the term is a quadratic form x'Ax of the windows' totals, whose variance
// under normal noise is 2 sigma^4 tr(A^2) (32 / 9 for four windows).
double drift_null_factor(std::int64_t num_windows) {
  // A = sum_k a_k v_k v_k' over the steps v_k = e_to - e_from, a_k = 1 / (T - 2)
  // for the two-window steps and -1 / (T - 1) for the one-window steps, so
  // tr(A^2) = sum_{k,l} a_k a_l (v_k . v_l)^2.
  struct Step {
    std::int64_t from, to;
    double weight;
  };
  std::vector<Step> steps;
  for (std::int64_t t = 2; t < num_windows; ++t) {
    steps.push_back({t - 2, t, 1.0 / static_cast<double>(num_windows - 2)});
  }
  for (std::int64_t t = 1; t < num_windows; ++t) {
    steps.push_back({t - 1, t, -1.0 / static_cast<double>(num_windows - 1)});
  }
  double trace = 0.0;
  for (const Step& k : steps) {
    for (const Step& l : steps) {
      const auto dot = static_cast<double>((k.to == l.to) + (k.from == l.from) - (k.to == l.from) -
                                           (k.from == l.to));
      trace += k.weight * l.weight * dot * dot;
    }
  }
  return 2.0 * trace;
}

// Stage 3: each expert's level, a local-level Kalman filter over its totals
// (scaled to the mean window size), and the variance of its next total
// shared by its ranks (the level's error plus one drift step).
struct Levels {
  std::vector<double> level;              // (E,)
  std::vector<double> coherent_variance;  // (E,)
  double drift = 0.0;                     // a step's variance, relative to level^2
  double drift_evidence = 0.0;            // the drift estimate in null standard errors
};

Levels estimate_levels(const Windows& windows, double kappa) {
  const std::int64_t num_ranks = windows.num_ranks, num_experts = windows.num_experts;
  const std::int64_t num_windows = windows.size();
  const std::vector<double>& mean_expert = windows.mean_expert;
  // Sampling noise of each total, from the noise model.
  std::vector<double> noise(static_cast<std::size_t>(num_experts));
  double mean_expert_sq = 0.0;
  for (std::int64_t e = 0; e < num_experts; ++e) {
    double sq = 0.0;
    for (std::int64_t w = 0; w < num_ranks; ++w) {
      const double expected = mean_expert[e] * windows.mean_share[w];
      sq += expected * expected;
    }
    noise[e] = mean_expert[e] + kappa * sq;
    mean_expert_sq += mean_expert[e] * mean_expert[e];
  }
  // Drift: a step's variance is E[(x_t - x_{t-2})^2] - E[(x_t - x_{t-1})^2]
  // when steps are independent (the sampling noise cancels); pooled over the
  // experts, relative to their squared levels. Needs three windows. Only
  // what exceeds kDriftStandardErrors of the estimate's standard error (from
  // its spread over the experts) counts: with few experts the estimate is
  // mostly noise, and a spurious drift trades the windows' mean for the
  // noisier latest ones. The evidence for drift is the pooled estimate in
  // standard errors of what the noise model alone gives it (each expert's
  // term has variance drift_null_factor() * noise^2 without drift): unlike
  // the spread over the experts, this standard error is not inflated by the
  // drift it tests.
  double drift = 0.0;  // variance of a window-to-window step, relative to level^2
  double evidence = 0.0;
  if (num_windows >= 3 && num_experts > 1 && mean_expert_sq > 0.0) {
    const double null_factor = drift_null_factor(num_windows);
    double sum = 0.0, sum_sq = 0.0, null_variance = 0.0;
    for (std::int64_t e = 0; e < num_experts; ++e) {
      double lag1 = 0.0, lag2 = 0.0;
      for (std::int64_t t = 1; t < num_windows; ++t) {
        const double step = windows.scaled_total(t, e) - windows.scaled_total(t - 1, e);
        lag1 += step * step / static_cast<double>(num_windows - 1);
      }
      for (std::int64_t t = 2; t < num_windows; ++t) {
        const double step = windows.scaled_total(t, e) - windows.scaled_total(t - 2, e);
        lag2 += step * step / static_cast<double>(num_windows - 2);
      }
      const double share = (lag2 - lag1) / mean_expert_sq;
      sum += share;
      sum_sq += share * share;
      null_variance += null_factor * noise[e] * noise[e];
    }
    const auto n = static_cast<double>(num_experts);
    const double standard_error = std::sqrt(std::max(0.0, sum_sq - sum * sum / n) * n / (n - 1.0));
    drift = std::max(0.0, sum - kDriftStandardErrors * standard_error);
    const double null_error = std::sqrt(null_variance) / mean_expert_sq;
    evidence = sum / null_error;  // (noise[e] >= mean_expert[e], not all 0)
  }
  Levels levels;
  levels.drift = drift;
  levels.drift_evidence = evidence;
  levels.level.resize(static_cast<std::size_t>(num_experts));
  levels.coherent_variance.assign(static_cast<std::size_t>(num_experts), 0.0);
  for (std::int64_t e = 0; e < num_experts; ++e) {
    const double step_variance = drift * mean_expert[e] * mean_expert[e];
    double estimate = windows.scaled_total(0, e);
    double error = noise[e];
    for (std::int64_t t = 1; t < num_windows; ++t) {
      error += step_variance;
      const double gain =
          error + noise[e] > 0.0 ? error / (error + noise[e]) : 1.0 / static_cast<double>(t + 1);
      estimate += gain * (windows.scaled_total(t, e) - estimate);
      error *= 1.0 - gain;
    }
    levels.level[e] = std::max(0.0, estimate);
    levels.coherent_variance[e] = error + step_variance;
  }
  return levels;
}

}  // namespace

LayerForecast forecast_layer(const LayerRequest& request) {
  const Windows windows = summarize(request);
  const std::int64_t num_ranks = windows.num_ranks, num_experts = windows.num_experts;
  LayerForecast forecast;
  forecast.num_source_ranks = num_ranks;
  forecast.num_experts = num_experts;
  double kappa = 0.0;
  if (num_ranks > 1) {
    const Deviations deviations = measure_deviations(windows);  // stage 1
    forecast.persistence = deviations.persistence;
    forecast.shrink = shrinkage(deviations.persistence, windows.size());  // stage 2
    kappa = transient_kappa(deviations);                                  // stage 4
  }
  Levels levels = estimate_levels(windows, kappa);  // stage 3
  const bool drift_established =
      levels.drift > 0.0 && levels.drift_evidence >= kMeanWindowDriftEvidence;
  if (!drift_established && forecast.persistence < kMeanWindowPersistence && windows.size() > 1 &&
      !order_matters(request)) {
    // Even splits, no established drift, deviations that do not all
    // persist: the windows' mean as one window. (Noise alone passes the
    // drift estimate's threshold in about a third of stationary layers, but
    // establishes a drift in about 2%.) Their per-rank split forecasts nothing
    // there (a replica gets 1 / c of the expert's total), a level without
    // drift is the mean, and the transient deviations measured per rank
    // overstate the noise of an expert's total (each rank routes a fixed
    // number of tokens, so they cancel across its experts). The measured
    // persistence is still the one reported.
    LayerRequest mean_only = request;
    mean_only.windows = {request.counts};
    LayerForecast mean_forecast = forecast_layer(mean_only);
    mean_forecast.persistence = forecast.persistence;
    return mean_forecast;
  }
  forecast.coherent_variance = std::move(levels.coherent_variance);

  // Expected counts: the level spread over the ranks by the global share,
  // plus the persisting part of the windows' mean deviation (stage 2); each
  // with Poisson noise plus the deviation that does not persist (stage 4).
  forecast.mean.resize(static_cast<std::size_t>(num_ranks * num_experts));
  forecast.variance.resize(forecast.mean.size());
  for (std::int64_t w = 0; w < num_ranks; ++w) {
    for (std::int64_t e = 0; e < num_experts; ++e) {
      const std::int64_t i = w * num_experts + e;
      // (Computed for every expert, kept where it applies: no branch.)
      const double share = windows.mean_share[w];
      const double shrunk =
          share + forecast.shrink * (request.counts[i] / windows.mean_expert[e] - share);
      const double profile = num_ranks > 1 && windows.mean_expert[e] > 0.0 ? shrunk : share;
      const double expected = levels.level[e] * std::max(0.0, profile);
      forecast.mean[i] = expected;
      forecast.variance[i] = expected + kappa * expected * expected;
    }
  }
  return forecast;
}

}  // namespace moe_eplb::plan_detail

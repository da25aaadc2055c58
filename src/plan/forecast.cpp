// The next window of a layer from the windows seen: the method and its
// parameters are stated in planner.hpp ("How several windows are used").
#include "forecast.hpp"

#include <algorithm>
#include <cmath>

namespace moe_eplb::plan_detail {
namespace {

double clip01(double value) { return std::min(1.0, std::max(0.0, value)); }

// Per-window sums: each expert's total and each source rank's share of all
// tokens.
struct WindowSums {
  std::vector<double> expert_total;  // (E,)
  std::vector<double> rank_share;    // (R,)
  double total = 0.0;
};

WindowSums window_sums(const double* counts, std::int64_t num_ranks, std::int64_t num_experts) {
  WindowSums sums;
  sums.expert_total.assign(static_cast<std::size_t>(num_experts), 0.0);
  sums.rank_share.assign(static_cast<std::size_t>(num_ranks), 0.0);
  for (std::int64_t w = 0; w < num_ranks; ++w) {
    const double* row = counts + w * num_experts;
    for (std::int64_t e = 0; e < num_experts; ++e) {
      sums.expert_total[e] += row[e];
      sums.rank_share[w] += row[e];
    }
    sums.total += sums.rank_share[w];
  }
  for (double& share : sums.rank_share) {
    share = sums.total > 0.0 ? share / sums.total : 1.0 / static_cast<double>(num_ranks);
  }
  return sums;
}

// Sum over (w, e) of weight * a * b for two windows' deviations from their
// global share. weight = 1 / expected count makes sampling noise count the
// same for every pair (a Pearson residual), so that no few hot experts
// decide the estimate.
double deviation_product(const double* a, const WindowSums& sums_a, const double* b,
                         const WindowSums& sums_b, const std::vector<double>& weight,
                         std::int64_t num_ranks, std::int64_t num_experts) {
  double sum = 0.0;
  for (std::int64_t w = 0; w < num_ranks; ++w) {
    for (std::int64_t e = 0; e < num_experts; ++e) {
      const std::int64_t i = w * num_experts + e;
      const double dev_a = a[i] - sums_a.expert_total[e] * sums_a.rank_share[w];
      const double dev_b = b[i] - sums_b.expert_total[e] * sums_b.rank_share[w];
      sum += weight[i] * dev_a * dev_b;
    }
  }
  return sum;
}

}  // namespace

LayerForecast forecast_layer(const LayerRequest& request) {
  const std::int64_t num_ranks = request.num_source_ranks;
  const std::int64_t num_experts = request.num_experts;
  const std::vector<const double*> windows =
      request.windows.empty() ? std::vector<const double*>{request.counts} : request.windows;
  const auto num_windows = static_cast<std::int64_t>(windows.size());
  const double inv_windows = 1.0 / static_cast<double>(num_windows);

  std::vector<WindowSums> sums;
  sums.reserve(windows.size());
  for (const double* window : windows) sums.push_back(window_sums(window, num_ranks, num_experts));
  double mean_total = 0.0;
  std::vector<double> mean_share(static_cast<std::size_t>(num_ranks), 0.0);
  std::vector<double> mean_expert(static_cast<std::size_t>(num_experts), 0.0);
  for (const WindowSums& window : sums) {
    mean_total += window.total * inv_windows;
    for (std::int64_t w = 0; w < num_ranks; ++w)
      mean_share[w] += window.rank_share[w] * inv_windows;
    for (std::int64_t e = 0; e < num_experts; ++e) {
      mean_expert[e] += window.expert_total[e] * inv_windows;
    }
  }

  LayerForecast forecast;
  forecast.num_source_ranks = num_ranks;
  forecast.num_experts = num_experts;

  // Persistence of the per-rank deviations, and the variance that does not
  // persist, relative to the squared expected counts (kappa). Sums are
  // weighted by 1 / expected count, under which a count's sampling noise
  // (Poisson: variance = count) adds the count / expected.
  double kappa = 0.0;
  if (num_ranks > 1) {
    std::vector<double> weight(static_cast<std::size_t>(num_ranks * num_experts), 0.0);
    double expected_sum = 0.0;
    for (std::int64_t w = 0; w < num_ranks; ++w) {
      for (std::int64_t e = 0; e < num_experts; ++e) {
        const double expected = mean_expert[e] * mean_share[w];
        if (expected <= 0.0) continue;
        weight[w * num_experts + e] = 1.0 / expected;
        expected_sum += expected;
      }
    }
    double mean_deviation_sq = 0.0, mean_noise = 0.0;
    std::vector<double> deviation_sq(windows.size());
    for (std::int64_t t = 0; t < num_windows; ++t) {
      deviation_sq[t] = deviation_product(windows[t], sums[t], windows[t], sums[t], weight,
                                          num_ranks, num_experts);
      mean_deviation_sq += deviation_sq[t] * inv_windows;
      for (std::size_t i = 0; i < weight.size(); ++i) {
        mean_noise += weight[i] * windows[t][i] * inv_windows;
      }
    }
    if (num_windows >= 2) {
      double cross = 0.0, scale = 0.0;
      for (std::int64_t t = 1; t < num_windows; ++t) {
        cross += deviation_product(windows[t - 1], sums[t - 1], windows[t], sums[t], weight,
                                   num_ranks, num_experts);
        scale += 0.5 * (deviation_sq[t - 1] + deviation_sq[t]);
      }
      forecast.persistence = scale > 0.0 ? clip01(cross / scale) : 1.0;
      const double p = forecast.persistence;
      forecast.shrink = p > 0.0 ? p / (p + (1.0 - p) * inv_windows) : 0.0;
    } else {
      const double signal =
          mean_deviation_sq > 0.0 ? clip01(1.0 - mean_noise / mean_deviation_sq) : 0.0;
      forecast.persistence = kSingleWindowPersistence * signal;
      forecast.shrink = forecast.persistence;
    }
    // Weighted, a variance kappa * expected^2 adds kappa * expected.
    const double transient = (1.0 - forecast.persistence) * mean_deviation_sq - mean_noise;
    kappa = expected_sum > 0.0 ? std::max(0.0, transient / expected_sum) : 0.0;
  }

  // Each expert's level: a local-level Kalman filter over its totals (scaled
  // to the mean window size), with sampling noise from the model above and
  // drift estimated from consecutive windows.
  std::vector<double> noise(static_cast<std::size_t>(num_experts));
  double mean_expert_sq = 0.0;
  for (std::int64_t e = 0; e < num_experts; ++e) {
    double sq = 0.0;
    for (std::int64_t w = 0; w < num_ranks; ++w) {
      const double expected = mean_expert[e] * mean_share[w];
      sq += expected * expected;
    }
    noise[e] = mean_expert[e] + kappa * sq;
    mean_expert_sq += mean_expert[e] * mean_expert[e];
  }
  auto scaled_total = [&](std::int64_t t, std::int64_t e) {
    return sums[t].total > 0.0 ? sums[t].expert_total[e] * mean_total / sums[t].total : 0.0;
  };
  // Drift: a step's variance is E[(x_t - x_{t-2})^2] - E[(x_t - x_{t-1})^2]
  // when steps are independent (the sampling noise cancels); pooled over the
  // experts, relative to their squared levels. Needs three windows. Only
  // what exceeds kDriftStandardErrors of the estimate's standard error (from
  // its spread over the experts) counts: with few experts the estimate is
  // mostly noise, and a spurious drift trades the windows' mean for the
  // noisier latest ones.
  double drift = 0.0;  // variance of a window-to-window step, relative to level^2
  if (num_windows >= 3 && num_experts > 1 && mean_expert_sq > 0.0) {
    double sum = 0.0, sum_sq = 0.0;
    for (std::int64_t e = 0; e < num_experts; ++e) {
      double lag1 = 0.0, lag2 = 0.0;
      for (std::int64_t t = 1; t < num_windows; ++t) {
        const double step = scaled_total(t, e) - scaled_total(t - 1, e);
        lag1 += step * step / static_cast<double>(num_windows - 1);
      }
      for (std::int64_t t = 2; t < num_windows; ++t) {
        const double step = scaled_total(t, e) - scaled_total(t - 2, e);
        lag2 += step * step / static_cast<double>(num_windows - 2);
      }
      const double share = (lag2 - lag1) / mean_expert_sq;
      sum += share;
      sum_sq += share * share;
    }
    const auto n = static_cast<double>(num_experts);
    const double standard_error = std::sqrt(std::max(0.0, sum_sq - sum * sum / n) * n / (n - 1.0));
    drift = std::max(0.0, sum - kDriftStandardErrors * standard_error);
  }
  std::vector<double> level(static_cast<std::size_t>(num_experts));
  forecast.coherent_variance.assign(static_cast<std::size_t>(num_experts), 0.0);
  for (std::int64_t e = 0; e < num_experts; ++e) {
    const double step_variance = drift * mean_expert[e] * mean_expert[e];
    double estimate = scaled_total(0, e);
    double error = noise[e];
    for (std::int64_t t = 1; t < num_windows; ++t) {
      error += step_variance;
      const double gain =
          error + noise[e] > 0.0 ? error / (error + noise[e]) : 1.0 / static_cast<double>(t + 1);
      estimate += gain * (scaled_total(t, e) - estimate);
      error *= 1.0 - gain;
    }
    level[e] = std::max(0.0, estimate);
    forecast.coherent_variance[e] = error + step_variance;
  }

  // Expected counts: the level spread over the ranks by the global share,
  // plus the persisting part of the windows' mean deviation.
  forecast.mean.resize(static_cast<std::size_t>(num_ranks * num_experts));
  forecast.variance.resize(forecast.mean.size());
  for (std::int64_t w = 0; w < num_ranks; ++w) {
    for (std::int64_t e = 0; e < num_experts; ++e) {
      const std::int64_t i = w * num_experts + e;
      double profile = mean_share[w];
      if (num_ranks > 1 && mean_expert[e] > 0.0) {
        profile += forecast.shrink * (request.counts[i] / mean_expert[e] - mean_share[w]);
      }
      const double expected = level[e] * std::max(0.0, profile);
      forecast.mean[i] = expected;
      forecast.variance[i] = expected + kappa * expected * expected;
    }
  }
  return forecast;
}

}  // namespace moe_eplb::plan_detail

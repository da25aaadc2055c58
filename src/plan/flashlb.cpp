// FlashLB (Huawei; vllm-ascend PR #3042, proposed for SGLang in PR #14176),
// written from its public description, as a baseline for the rule-aware
// planner. Per layer it
//   1. keeps the windows' global loads (the sliding window is the windows
//      given, oldest first) with their mean, variance and covariance;
//   2. gives replicas one at a time to the expert with the largest
//      (mean + 0.674 std) / count, at most one replica per rank;
//   3. places the replicas, hottest first, on the device whose load would have
//      the lowest mean + z std over the windows: a device's per-window load
//      series carries the covariance of the experts it holds, so experts that
//      peak together are kept apart;
//   4. with a previous table, keeps it unless its balance degraded; otherwise
//      matches the new devices to the old ranks (Hungarian matching, most
//      experts in common) and keeps each staying expert in its old slot.
// It sees global counts only (not the operator's rank rule) and has no cap on
// moves. Each replica is assumed to get load / count, as the description does.
#include "flashlb.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "planners.hpp"

namespace moe_eplb::plan_detail {
namespace {

// Global load of each expert in each window: (T, E) row-major.
struct LoadSeries {
  std::int64_t num_windows = 0;
  std::int64_t num_experts = 0;
  std::vector<double> values;

  const double* window(std::int64_t t) const { return values.data() + t * num_experts; }
};

LoadSeries global_series(const LayerRequest& request) {
  LoadSeries series;
  series.num_windows = static_cast<std::int64_t>(request.windows.size());
  series.num_experts = request.num_experts;
  series.values.assign(static_cast<std::size_t>(series.num_windows * series.num_experts), 0.0);
  for (std::int64_t t = 0; t < series.num_windows; ++t) {
    const double* counts = request.windows[static_cast<std::size_t>(t)];
    double* out = series.values.data() + t * series.num_experts;
    for (std::int64_t r = 0; r < request.num_source_ranks; ++r) {
      for (std::int64_t e = 0; e < series.num_experts; ++e)
        out[e] += counts[r * series.num_experts + e];
    }
  }
  return series;
}

// Mean and standard deviation over the windows (sample deviation, n - 1; 0
// with one window).
std::pair<double, double> mean_and_deviation(const double* values, std::int64_t n) {
  const double mean = std::accumulate(values, values + n, 0.0) / static_cast<double>(n);
  if (n < 2) return {mean, 0.0};
  double sum = 0.0;
  for (std::int64_t t = 0; t < n; ++t) sum += (values[t] - mean) * (values[t] - mean);
  return {mean, std::sqrt(sum / static_cast<double>(n - 1))};
}

// What FlashLB plans: the experts of each device, and each expert's count.
struct Placement {
  std::vector<std::vector<std::int32_t>> device_experts;  // (W,) up to S each
  std::vector<std::int64_t> counts;                       // (E,)
};

// Per-device load in each window, (W, T): a replica of e adds series[e] / c_e.
class DeviceLoads {
 public:
  DeviceLoads(std::int64_t num_devices, std::int64_t num_windows)
      : num_windows_(num_windows),
        loads_(static_cast<std::size_t>(num_devices * num_windows), 0.0),
        scratch_(static_cast<std::size_t>(num_windows)),
        zeros_(static_cast<std::size_t>(num_windows), 0.0) {}

  // mean + z std of the device's load series plus `extra` (T values).
  double score_with(std::int64_t device, const double* extra) {
    const double* load = loads_.data() + device * num_windows_;
    for (std::int64_t t = 0; t < num_windows_; ++t) scratch_[t] = load[t] + extra[t];
    const auto [mean, deviation] = mean_and_deviation(scratch_.data(), num_windows_);
    return mean + kPlacementQuantile * deviation;
  }
  double score(std::int64_t device) { return score_with(device, zeros_.data()); }
  double mean(std::int64_t device) const {
    const double* load = loads_.data() + device * num_windows_;
    return std::accumulate(load, load + num_windows_, 0.0) / static_cast<double>(num_windows_);
  }
  void add(std::int64_t device, const double* extra, double sign) {
    double* load = loads_.data() + device * num_windows_;
    for (std::int64_t t = 0; t < num_windows_; ++t) load[t] += sign * extra[t];
  }

 private:
  std::int64_t num_windows_;
  std::vector<double> loads_;
  std::vector<double> scratch_;
  std::vector<double> zeros_;
};

// (T,) per-replica load series of expert e with `count` replicas.
void replica_series(const LoadSeries& series, std::int64_t expert, std::int64_t count,
                    std::vector<double>& out) {
  out.resize(static_cast<std::size_t>(series.num_windows));
  for (std::int64_t t = 0; t < series.num_windows; ++t) {
    out[t] = series.window(t)[expert] / static_cast<double>(count);
  }
}

// Step 2: one replica each, then every further slot to the largest
// (mean + 0.674 std) / count among the experts below max_count (first on
// ties).
std::vector<std::int64_t> allot_replicas(const std::vector<double>& hotness, std::int64_t num_slots,
                                         std::int64_t max_count) {
  std::vector<std::int64_t> counts(hotness.size(), 1);
  for (auto slot = static_cast<std::int64_t>(hotness.size()); slot < num_slots; ++slot) {
    std::int64_t best = -1;
    for (std::size_t e = 0; e < hotness.size(); ++e) {
      if (counts[e] >= max_count) continue;
      if (best < 0 || hotness[e] / static_cast<double>(counts[e]) >
                          hotness[best] / static_cast<double>(counts[best])) {
        best = static_cast<std::int64_t>(e);
      }
    }
    ++counts[best];
  }
  return counts;
}

// Step 3: hottest replica first, onto the device with room, without that
// expert, whose load would score lowest (first on ties).
Placement place_replicas(const LoadSeries& series, const std::vector<double>& hotness,
                         std::vector<std::int64_t> counts, std::int64_t num_devices,
                         std::int64_t slots_per_device) {
  const std::int64_t num_experts = series.num_experts;
  std::vector<std::int64_t> order;  // one entry per replica, by expert
  for (std::int64_t e = 0; e < num_experts; ++e) order.insert(order.end(), counts[e], e);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    return hotness[a] / static_cast<double>(counts[a]) >
           hotness[b] / static_cast<double>(counts[b]);
  });

  Placement placement;
  placement.device_experts.assign(static_cast<std::size_t>(num_devices), {});
  std::vector<char> holds(static_cast<std::size_t>(num_devices * num_experts), 0);
  DeviceLoads loads(num_devices, series.num_windows);
  std::vector<double> extra, moved;
  const auto has_room = [&](std::int64_t d) {
    return static_cast<std::int64_t>(placement.device_experts[d].size()) < slots_per_device;
  };
  const auto put = [&](std::int64_t d, std::int64_t e) {
    replica_series(series, e, counts[e], extra);
    loads.add(d, extra.data(), 1.0);
    placement.device_experts[d].push_back(static_cast<std::int32_t>(e));
    holds[d * num_experts + e] = 1;
  };
  for (const std::int64_t e : order) {
    replica_series(series, e, counts[e], extra);
    std::int64_t best = -1;
    double best_score = 0.0;
    for (std::int64_t d = 0; d < num_devices; ++d) {
      if (!has_room(d) || holds[d * num_experts + e]) continue;
      const double score = loads.score_with(d, extra.data());
      if (best < 0 || score < best_score) {
        best = d;
        best_score = score;
      }
    }
    if (best < 0) {
      // Every device with room holds e already. Such a device `open` holds
      // fewer experts than a full device `full` without e, so `full` has an
      // expert f that `open` lacks: f moves to `open` and e takes its slot.
      std::int64_t open = 0;
      while (!has_room(open)) ++open;
      std::int64_t full = 0;
      while (holds[full * num_experts + e]) ++full;
      auto& full_experts = placement.device_experts[full];
      const auto f = std::find_if(full_experts.begin(), full_experts.end(),
                                  [&](std::int32_t x) { return !holds[open * num_experts + x]; });
      replica_series(series, *f, counts[*f], moved);
      loads.add(full, moved.data(), -1.0);
      holds[full * num_experts + *f] = 0;
      const std::int64_t f_expert = *f;
      full_experts.erase(f);
      put(open, f_expert);
      best = full;
    }
    put(best, e);
  }
  placement.counts = std::move(counts);
  return placement;
}

// FlashLB's own measure of a placement: the highest device mean + z std
// over the average device mean (1 with no load).
double predicted_peak_ratio(const LoadSeries& series, const Placement& placement) {
  const auto num_devices = static_cast<std::int64_t>(placement.device_experts.size());
  DeviceLoads loads(num_devices, series.num_windows);
  std::vector<double> extra;
  for (std::int64_t d = 0; d < num_devices; ++d) {
    for (const std::int32_t e : placement.device_experts[d]) {
      replica_series(series, e, placement.counts[e], extra);
      loads.add(d, extra.data(), 1.0);
    }
  }
  double peak = 0.0, total = 0.0;
  for (std::int64_t d = 0; d < num_devices; ++d) {
    peak = std::max(peak, loads.score(d));
    total += loads.mean(d);
  }
  return total > 0 ? peak * static_cast<double>(num_devices) / total : 1.0;
}

// The previous table as a placement, when it is one FlashLB could have made:
// every slot used, no expert twice on a rank, no count above max_count.
bool previous_placement(const TableView& previous, const std::vector<std::int32_t>& slot_owner,
                        std::int64_t slots_per_rank, std::int64_t max_count, Placement& placement) {
  const auto num_ranks = static_cast<std::int64_t>(slot_owner.size()) / slots_per_rank;
  placement.device_experts.assign(static_cast<std::size_t>(num_ranks), {});
  placement.counts.assign(static_cast<std::size_t>(previous.num_experts), 0);
  for (std::int64_t rank = 0; rank < num_ranks; ++rank) {
    auto& experts = placement.device_experts[rank];
    for (std::int64_t i = 0; i < slots_per_rank; ++i) {
      const std::int32_t e = slot_owner[static_cast<std::size_t>(rank * slots_per_rank + i)];
      if (e < 0 || std::find(experts.begin(), experts.end(), e) != experts.end()) return false;
      experts.push_back(e);
    }
  }
  for (std::int64_t e = 0; e < previous.num_experts; ++e) {
    placement.counts[e] = previous.at(e, 0);
    if (placement.counts[e] > max_count) return false;
  }
  return true;
}

ReplicaSlots table_rows(const TableView& table) {
  ReplicaSlots slots(static_cast<std::size_t>(table.num_experts));
  for (std::int64_t e = 0; e < table.num_experts; ++e) {
    for (std::int32_t j = 1; j <= table.at(e, 0); ++j) slots[e].push_back(table.at(e, j));
  }
  return slots;
}

// Device d becomes rank rank_of_device[d]; its experts take that rank's
// slots in placement order.
ReplicaSlots placement_slots(const Placement& placement,
                             const std::vector<std::int64_t>& rank_of_device,
                             std::int64_t slots_per_rank) {
  ReplicaSlots slots(placement.counts.size());
  for (std::size_t d = 0; d < placement.device_experts.size(); ++d) {
    const std::vector<std::int32_t>& experts = placement.device_experts[d];
    for (std::size_t i = 0; i < experts.size(); ++i) {
      slots[experts[i]].push_back(static_cast<std::int32_t>(rank_of_device[d] * slots_per_rank +
                                                            static_cast<std::int64_t>(i)));
    }
  }
  return slots;
}

}  // namespace

std::vector<std::int64_t> min_cost_assignment(const std::vector<double>& cost, std::int64_t n) {
  MOE_EPLB_CHECK(n >= 0 && static_cast<std::int64_t>(cost.size()) == n * n,
                 "min_cost_assignment(): expected an n x n cost matrix for n = ", n, ", got ",
                 cost.size(), " values");
  // Rows and columns 1..n; column 0 is the free row being augmented.
  // potential_row / potential_col keep reduced costs >= 0; row_of[j] is the
  // row matched to column j (0 = none).
  const double kInfinity = std::numeric_limits<double>::infinity();
  const auto size = static_cast<std::size_t>(n + 1);
  std::vector<double> potential_row(size, 0.0), potential_col(size, 0.0), slack(size);
  std::vector<std::int64_t> row_of(size, 0), previous_col(size, 0);
  std::vector<char> visited(size);
  for (std::int64_t row = 1; row <= n; ++row) {
    row_of[0] = row;
    std::int64_t col = 0;
    std::fill(slack.begin(), slack.end(), kInfinity);
    std::fill(visited.begin(), visited.end(), 0);
    do {  // grow the alternating tree until it reaches a free column
      visited[col] = 1;
      const std::int64_t tree_row = row_of[col];
      double delta = kInfinity;
      std::int64_t next_col = 0;
      for (std::int64_t j = 1; j <= n; ++j) {
        if (visited[j]) continue;
        const double reduced =
            cost[(tree_row - 1) * n + (j - 1)] - potential_row[tree_row] - potential_col[j];
        if (reduced < slack[j]) {
          slack[j] = reduced;
          previous_col[j] = col;
        }
        if (slack[j] < delta) {
          delta = slack[j];
          next_col = j;
        }
      }
      for (std::int64_t j = 0; j <= n; ++j) {
        if (visited[j]) {
          potential_row[row_of[j]] += delta;
          potential_col[j] -= delta;
        } else {
          slack[j] -= delta;
        }
      }
      col = next_col;
    } while (row_of[col] != 0);
    do {  // flip the augmenting path
      const std::int64_t prior = previous_col[col];
      row_of[col] = row_of[prior];
      col = prior;
    } while (col != 0);
  }
  std::vector<std::int64_t> col_of_row(static_cast<std::size_t>(n));
  for (std::int64_t j = 1; j <= n; ++j) col_of_row[row_of[j] - 1] = j - 1;
  return col_of_row;
}

ReplicaSlots plan_flashlb(const LayerRequest& request) {
  const std::int64_t num_experts = request.num_experts;
  const std::int64_t world_size = request.world_size;
  const std::int64_t slots_per_rank = request.slots_per_rank;
  const std::int64_t num_slots = world_size * slots_per_rank;
  const std::int64_t max_count = std::min(request.max_count, world_size);
  MOE_EPLB_CHECK(num_experts * max_count >= num_slots, "plan(): FlashLB can give each of the ",
                 num_experts, " experts at most ", max_count, " replicas (num_columns - 1 and ",
                 "world_size), fewer than the ", num_slots, " slots");

  const LoadSeries series = global_series(request);
  std::vector<double> hotness(static_cast<std::size_t>(num_experts));
  std::vector<double> expert_series(static_cast<std::size_t>(series.num_windows));
  for (std::int64_t e = 0; e < num_experts; ++e) {
    for (std::int64_t t = 0; t < series.num_windows; ++t) expert_series[t] = series.window(t)[e];
    const auto [mean, deviation] = mean_and_deviation(expert_series.data(), series.num_windows);
    hotness[e] = mean + kReplicaQuantile * deviation;
  }
  const Placement fresh = place_replicas(
      series, hotness, allot_replicas(hotness, num_slots, max_count), world_size, slots_per_rank);
  std::vector<std::int64_t> rank_of_device(static_cast<std::size_t>(world_size));
  std::iota(rank_of_device.begin(), rank_of_device.end(), 0);
  if (request.previous.data == nullptr) {
    return placement_slots(fresh, rank_of_device, slots_per_rank);
  }

  // Step 4: keep the previous table unless its balance degraded.
  const Topology topology{world_size, slots_per_rank, request.ranks_per_node};
  const std::vector<std::int32_t> old_owner = slot_experts(request.previous, topology);
  Placement old_placement;
  if (previous_placement(request.previous, old_owner, slots_per_rank, max_count, old_placement) &&
      predicted_peak_ratio(series, old_placement) <=
          predicted_peak_ratio(series, fresh) * (1.0 + kReplanTolerance)) {
    return table_rows(request.previous);
  }
  // Devices to ranks with the most experts in common, then staying experts
  // back into their old slots.
  std::vector<double> cost(static_cast<std::size_t>(world_size * world_size), 0.0);
  std::vector<char> on_old_rank(static_cast<std::size_t>(num_experts));
  for (std::int64_t rank = 0; rank < world_size; ++rank) {
    std::fill(on_old_rank.begin(), on_old_rank.end(), 0);
    for (std::int64_t i = 0; i < slots_per_rank; ++i) {
      const std::int32_t e = old_owner[static_cast<std::size_t>(rank * slots_per_rank + i)];
      if (e >= 0) on_old_rank[e] = 1;
    }
    for (std::int64_t d = 0; d < world_size; ++d) {
      for (const std::int32_t e : fresh.device_experts[d])
        cost[d * world_size + rank] -= on_old_rank[e];
    }
  }
  rank_of_device = min_cost_assignment(cost, world_size);
  const LayeredTable matched =
      make_layered_table({placement_slots(fresh, rank_of_device, slots_per_rank)}, 0);
  LayeredTable aligned = matched;
  aligned.values = align_to_previous(request.previous, matched.layer(0), topology);
  return table_rows(aligned.layer(0));
}

}  // namespace moe_eplb::plan_detail

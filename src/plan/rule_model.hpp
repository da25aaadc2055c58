// Internal: the model the rule-aware planner and the replanner share: what
// each replica receives on the next window under the operator's rule, and
// the replica counts that are allowed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <tuple>
#include <utility>
#include <vector>

#include "forecast.hpp"
#include "moe_eplb/detail/route.hpp"
#include "planners.hpp"

namespace moe_eplb::plan_detail {

// Source ranks [begin, end) whose tokens replica j (0-based) of a c-replica
// expert receives in rank mode; empty for a dead replica. The rule itself is
// the operator's (detail/route.hpp).
inline std::pair<std::int64_t, std::int64_t> source_group(std::int64_t count, std::int64_t replica,
                                                          std::int64_t world_size) {
  const detail::SourceRanks sources = detail::rank_mode_sources(count, replica, world_size);
  return {sources.begin, sources.end};
}

// A replica's (or a rank's) predicted tokens: the expected count and its
// variance on the next window.
struct Load {
  double mean = 0.0;
  double variance = 0.0;
};

// The noise-aware size of a load: mean + kNoiseWeight * std. Balancing these
// lowers the expected busiest rank rather than the busiest expected rank.
constexpr double kNoiseWeight = 1.0;
inline double cost(double mean, double variance) {
  return mean + kNoiseWeight * std::sqrt(std::max(0.0, variance));
}
inline double cost(const Load& load) { return cost(load.mean, load.variance); }

// What each replica receives on the next window, from the layer's forecast,
// under the request's replica rule (plan/rule.hpp):
//   kSourceGroups  replica j: the tokens of source-rank group j (exact);
//   kEven          each replica 1 / c of every rank's tokens;
//   kNearest       replica j: the tokens of the expected_sources_served()
//                  ranks of the placement the planner aims for, as a
//                  fraction of the expert's total (the ranks sending alike).
class ShareModel {
 public:
  ShareModel(const LayerRequest& request, const LayerForecast& forecast)
      : world_size_(request.world_size),
        ranks_per_node_(request.ranks_per_node),
        per_rank_(forecast.num_source_ranks > 1),
        split_(rule_info(request.rule).split),
        rule_(request.rule),
        topology_(request.topology()),
        coherent_(forecast.coherent_variance) {
    const std::int64_t stride = per_rank_ ? world_size_ + 1 : 1;
    const std::int64_t num_experts = forecast.num_experts;
    prefix_mean_.assign(static_cast<std::size_t>(num_experts * stride), 0.0);
    prefix_variance_.assign(prefix_mean_.size(), 0.0);
    for (std::int64_t e = 0; e < num_experts; ++e) {
      double* mean = prefix_mean_.data() + e * stride;
      double* variance = prefix_variance_.data() + e * stride;
      if (!per_rank_) {
        mean[0] = forecast.mean[e];
        variance[0] = forecast.variance[e];
        continue;
      }
      for (std::int64_t w = 0; w < world_size_; ++w) {
        mean[w + 1] = mean[w] + forecast.mean[w * num_experts + e];
        variance[w + 1] = variance[w] + forecast.variance[w * num_experts + e];
      }
    }
  }

  // Expected tokens expert e receives from source ranks [begin, end).
  double from_ranks(std::int64_t e, std::int64_t begin, std::int64_t end) const {
    return range(prefix_mean_, e, begin, end);
  }
  double total(std::int64_t e) const { return from_ranks(e, 0, world_size_); }

  // Tokens replica j (0-based) of expert e receives when e has c replicas.
  // Its variance: the independent per-rank parts of its source ranks plus
  // its fraction of the expert's coherent variance.
  Load share(std::int64_t e, std::int64_t count, std::int64_t replica) const {
    const double expert_total = total(e);
    if (split_ == RuleSplit::kEven) {
      const double c = static_cast<double>(count);
      return {expert_total / c,
              (range(prefix_variance_, e, 0, world_size_) + coherent_[e]) / (c * c)};
    }
    if (split_ == RuleSplit::kNearest) {
      const double fraction = expected_sources_served(rule_, count, replica, topology_) /
                              static_cast<double>(world_size_);
      return {fraction * expert_total, fraction * range(prefix_variance_, e, 0, world_size_) +
                                           fraction * fraction * coherent_[e]};
    }
    const auto [begin, end] = source_group(count, replica, world_size_);
    const double mean = from_ranks(e, begin, end);
    const double fraction = expert_total > 0.0 ? mean / expert_total : 0.0;
    return {mean, range(prefix_variance_, e, begin, end) + fraction * fraction * coherent_[e]};
  }
  // The largest cost among the replicas of e with c replicas.
  double max_cost(std::int64_t e, std::int64_t count) const {
    if (split_ == RuleSplit::kEven) return cost(share(e, count, 0));
    double heaviest = 0.0;
    for (std::int64_t replica = 0; replica < count; ++replica) {
      heaviest = std::max(heaviest, cost(share(e, count, replica)));
    }
    return heaviest;
  }

  // For every rank: the traffic of that replica that would start on the
  // rank itself plus the part that would start on the rank's node, i.e.
  // what placing it there keeps local. Writes world_size values to `out`
  // and returns the largest.
  double locality(std::int64_t e, std::int64_t count, std::int64_t replica, double* out) const {
    std::int64_t begin = 0, end = world_size_;
    // The even splits: an even part of each rank; kNearest: its expected part.
    double fraction = 1.0 / static_cast<double>(count);
    if (split_ == RuleSplit::kSourceGroups) {
      std::tie(begin, end) = source_group(count, replica, world_size_);
      fraction = 1.0;
    } else if (split_ == RuleSplit::kNearest) {
      fraction = expected_sources_served(rule_, count, replica, topology_) /
                 static_cast<double>(world_size_);
    }
    // Global statistics: every rank of the group sends the same share.
    const double each = !per_rank_ && begin < end ? from_ranks(e, begin, begin + 1) : 0.0;
    // One value per node, the part of the group on it (none without nodes);
    // the group's ranks add their own part.
    const std::int64_t node_size = ranks_per_node_ > 0 ? ranks_per_node_ : world_size_;
    double top = 0.0;
    for (std::int64_t node_begin = 0; node_begin < world_size_; node_begin += node_size) {
      const std::int64_t node_end = std::min(world_size_, node_begin + node_size);
      const std::int64_t group_begin = std::max(begin, node_begin);
      const std::int64_t group_end = std::min(end, node_end);
      const double on_node = ranks_per_node_ > 0 ? from_ranks(e, group_begin, group_end) : 0.0;
      const double outside = on_node * fraction;
      std::fill(out + node_begin, out + node_end, outside);
      if (group_end - group_begin < node_end - node_begin) top = std::max(top, outside);
      if (!per_rank_) {
        if (group_begin >= group_end) continue;
        const double inside = (on_node + each) * fraction;
        std::fill(out + group_begin, out + group_end, inside);
        top = std::max(top, inside);
        continue;
      }
      for (std::int64_t rank = group_begin; rank < group_end; ++rank) {
        out[rank] = (on_node + from_ranks(e, rank, rank + 1)) * fraction;
        top = std::max(top, out[rank]);
      }
    }
    return top;
  }

 private:
  // Sum over source ranks [begin, end) of a per-rank quantity; global
  // statistics are spread evenly over the ranks.
  double range(const std::vector<double>& prefix, std::int64_t e, std::int64_t begin,
               std::int64_t end) const {
    if (begin >= end) return 0.0;
    if (!per_rank_) {
      return prefix[e] * static_cast<double>(end - begin) / static_cast<double>(world_size_);
    }
    const double* row = prefix.data() + e * (world_size_ + 1);
    return row[end] - row[begin];
  }

  std::int64_t world_size_;
  std::int64_t ranks_per_node_;
  bool per_rank_;
  RuleSplit split_;
  ReplicaRule rule_;
  Topology topology_;
  std::vector<double> coherent_;         // (E,)
  std::vector<double> prefix_mean_;      // per expert: prefix sums over source ranks, or the total
  std::vector<double> prefix_variance_;  // the same for the independent variance
};

// The replica counts the planner may use, ascending: under source groups
// (rank mode) the live ones (every replica serves a rank), under the other
// rules all; at most max_count.
class CountLadder {
 public:
  explicit CountLadder(const LayerRequest& request) {
    if (rule_info(request.rule).split == RuleSplit::kSourceGroups) {
      for (std::int64_t count : live_replica_counts(request.world_size)) {
        if (count <= request.max_count) counts_.push_back(count);
      }
    } else {
      for (std::int64_t count = 1; count <= request.max_count; ++count) counts_.push_back(count);
    }
  }
  // The next usable count above / below `count`, or 0 when there is none.
  std::int64_t above(std::int64_t count) const {
    const auto it = std::upper_bound(counts_.begin(), counts_.end(), count);
    return it == counts_.end() ? 0 : *it;
  }
  std::int64_t below(std::int64_t count) const {
    const auto it = std::lower_bound(counts_.begin(), counts_.end(), count);
    return it == counts_.begin() ? 0 : *(it - 1);
  }
  bool allows(std::int64_t count) const {
    return std::binary_search(counts_.begin(), counts_.end(), count);
  }
  const std::vector<std::int64_t>& counts() const { return counts_; }

 private:
  std::vector<std::int64_t> counts_;
};

// The busiest rank's load over the mean on the next window, when rank r's
// load is normal with the predicted mean and variance, independently:
// P(max <= x) = prod_r Phi((x - mean_r) / std_r). `expected` is its
// expectation, `low` and `high` its 16% and 84% quantiles (one standard
// deviation either side for a normal).
struct BalanceForecast {
  double expected = 1.0, low = 1.0, high = 1.0;
};
BalanceForecast forecast_balance(const std::vector<Load>& ranks);

// A layer's placement with the predicted load of every rank.
struct Placement {
  ReplicaSlots slots;
  std::vector<Load> rank_loads;  // (W,)
};

// Whether the request's rule makes shares depend on the placement
// (kNearest), which polish_for_rule() then judges by the exact rule.
inline bool rule_needs_polish(const LayerRequest& request) {
  return rule_info(request.rule).split == RuleSplit::kNearest;
}
// Rules that need it: judges the placement by the exact rule and improves it
// step by step (rule_polish.cpp). Other rules: returns it unchanged.
Placement polish_for_rule(const LayerRequest& request, const LayerForecast& forecast,
                          Placement placement);

// Migration-aware replanning against request.previous (replan.cpp): returns
// the placement to use, given the plan from scratch.
Placement replan(const LayerRequest& request, const ShareModel& shares, const CountLadder& ladder,
                 Placement scratch);

}  // namespace moe_eplb::plan_detail

// Design note: planning for a rule whose shares depend on the placement.
//
// Under SGLang's static dispatch (RuleSplit::kNearest) a source rank sends
// all its tokens of an expert to the replica on its own rank, else to the
// first replica on its node, else to a fair share of the replicas. What a
// replica receives therefore depends on where the expert's other replicas
// are: two replicas on one node split that node's traffic 7 : 1 at 8 ranks
// per node. The share model (rule_model.hpp) plans for the placement that
// makes the split even, the replicas on distinct nodes, and the packer does
// not know nodes. This pass judges the packed placement by the exact rule
// (source_replicas() in rule.cpp, on the forecast's per-rank means) and
// improves it step by step, best step first:
//   - reorders: a replica of an expert on the costliest rank becomes the
//     first of its row, the one a node's other ranks send to;
//   - swaps: a replica of such an expert trades slots with any replica of
//     another expert on another rank.
// A step must lower the costliest rank's cost (mean + std, as the packer
// compares ranks), or keep it and narrow the affected ranks. With a previous
// table, a step's moves (slots whose expert or place in its row differs from
// the previous table, as the replanner and plan()'s report count them) count
// against max_moves and must buy move_cost each. Deterministic: ties go to the lower expert,
// replica and slot.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "forecast.hpp"
#include "rule_model.hpp"

namespace moe_eplb::plan_detail {
namespace {

class NearestPolisher {
 public:
  NearestPolisher(const LayerRequest& request, const LayerForecast& forecast, ReplicaSlots rows)
      : request_(request),
        topology_(request.topology()),
        num_experts_(request.num_experts),
        world_size_(request.world_size),
        rows_(std::move(rows)),
        replica_loads_(rows_.size()),
        rank_load_(static_cast<std::size_t>(world_size_)),
        replica_of_source_(static_cast<std::size_t>(world_size_)) {
    const std::int64_t num_slots = world_size_ * request.slots_per_rank;
    slot_expert_.assign(static_cast<std::size_t>(num_slots), -1);
    for (std::int64_t e = 0; e < num_experts_; ++e) {
      for (const std::int32_t slot : rows_[e]) slot_expert_[slot] = static_cast<std::int32_t>(e);
    }
    if (request.previous.data != nullptr) {
      previous_expert_.assign(static_cast<std::size_t>(num_slots), -1);
      previous_position_.assign(static_cast<std::size_t>(num_slots), -1);
      const TableView& previous = request.previous;
      for (std::int64_t e = 0; e < previous.num_experts; ++e) {
        for (std::int64_t j = 0; j < previous.at(e, 0); ++j) {
          const std::int32_t slot = previous.at(e, j + 1);
          previous_expert_[slot] = static_cast<std::int32_t>(e);
          previous_position_[slot] = static_cast<std::int32_t>(j);
        }
      }
      for (std::int64_t e = 0; e < num_experts_; ++e) moves_ += changed_in_row(e, rows_[e]);
    }
    // Per (expert, source rank): the forecast's counts, global ones spread
    // evenly; and each expert's sum over the source ranks, in rank order.
    const bool per_rank = forecast.num_source_ranks > 1;
    source_.resize(static_cast<std::size_t>(num_experts_ * world_size_));
    expert_total_.resize(static_cast<std::size_t>(num_experts_));
    total_ = 0.0;
    for (std::int64_t w = 0; w < world_size_; ++w) {
      for (std::int64_t e = 0; e < num_experts_; ++e) {
        const std::size_t from = static_cast<std::size_t>(per_rank ? w * num_experts_ + e : e);
        const double scale = per_rank ? 1.0 : 1.0 / static_cast<double>(world_size_);
        source_[e * world_size_ + w] =
            Load{forecast.mean[from] * scale, forecast.variance[from] * scale};
        total_ += forecast.mean[from] * scale;
      }
    }
    for (std::int64_t e = 0; e < num_experts_; ++e) {
      Load& sum = expert_total_[e];
      for (std::int64_t w = 0; w < world_size_; ++w) {
        sum.mean += source_[e * world_size_ + w].mean;
        sum.variance += source_[e * world_size_ + w].variance;
      }
    }
    coherent_ = forecast.coherent_variance;
    for (std::int64_t e = 0; e < num_experts_; ++e) {
      loads_of(e, rows_[e], replica_loads_[e]);
      for (std::size_t j = 0; j < rows_[e].size(); ++j) {
        add(rank_of(rows_[e][j]), replica_loads_[e][j], 1.0);
      }
    }
    epsilon_ = 1e-9 * (total_ / static_cast<double>(world_size_) + 1.0);
  }

  void polish() {
    const std::int64_t max_steps = 4 * static_cast<std::int64_t>(slot_expert_.size());
    for (std::int64_t step = 0; step < max_steps; ++step) {
      if (!apply_best_step()) break;
    }
  }

  Placement placement() const { return Placement{rows_, rank_load_}; }

 private:
  // A candidate: the rows of one or two experts replaced.
  struct Step {
    std::int64_t expert_a = -1, expert_b = -1;
    std::vector<std::int32_t> row_a, row_b;
    std::int64_t moves = 0;  // change in slots that differ from the previous table
    double max_cost = 0.0, spread = 0.0;

    // Expert a's row alone, the rows' storage kept.
    void reset(std::int64_t a, const std::vector<std::int32_t>& row) {
      expert_a = a;
      expert_b = -1;
      row_a.assign(row.begin(), row.end());
      row_b.clear();
      moves = 0;
      max_cost = spread = 0.0;
    }
  };

  std::int64_t rank_of(std::int32_t slot) const { return slot / request_.slots_per_rank; }
  // Slots of `row`, laid out as expert e's row, whose expert or place in the
  // row differs from the previous table.
  std::int64_t changed_in_row(std::int64_t e, const std::vector<std::int32_t>& row) const {
    if (previous_expert_.empty()) return 0;
    std::int64_t changed = 0;
    for (std::size_t j = 0; j < row.size(); ++j) {
      changed += previous_expert_[row[j]] != e ||
                         previous_position_[row[j]] != static_cast<std::int32_t>(j)
                     ? 1
                     : 0;
    }
    return changed;
  }
  // A step's change in moves: its new rows against the ones they replace.
  std::int64_t step_moves(const Step& step) const {
    std::int64_t delta = changed_in_row(step.expert_a, step.row_a) -
                         changed_in_row(step.expert_a, rows_[step.expert_a]);
    if (step.expert_b >= 0) {
      delta += changed_in_row(step.expert_b, step.row_b) -
               changed_in_row(step.expert_b, rows_[step.expert_b]);
    }
    return delta;
  }
  bool holds(std::int64_t e, std::int64_t rank, std::int32_t except_slot) const {
    for (const std::int32_t slot : rows_[e]) {
      if (slot != except_slot && rank_of(slot) == rank) return true;
    }
    return false;
  }
  void add(std::int64_t rank, const Load& load, double sign) {
    rank_load_[rank].mean += sign * load.mean;
    rank_load_[rank].variance += sign * load.variance;
  }

  // What each replica of the row receives under the exact rule, into `loads`.
  void loads_of(std::int64_t e, const std::vector<std::int32_t>& row, std::vector<Load>& loads) {
    const double expert_total = expert_total_[e].mean;
    loads.assign(row.size(), Load{});
    if (row.size() == 1) {  // everything, summed once
      loads[0] = expert_total_[e];
    } else {
      source_replicas(request_.rule, row.data(), static_cast<std::int64_t>(row.size()), topology_,
                      replica_of_source_.data());
      const Load* source = source_.data() + e * world_size_;
      for (std::int64_t w = 0; w < world_size_; ++w) {
        Load& load = loads[replica_of_source_[w]];
        load.mean += source[w].mean;
        load.variance += source[w].variance;
      }
    }
    for (Load& load : loads) {
      const double fraction = expert_total > 0.0 ? load.mean / expert_total : 0.0;
      load.variance += fraction * fraction * coherent_[e];
    }
  }

  // Fills step.max_cost (the costliest rank after the step) and step.spread
  // (the sum of squared costs of the ranks it touches, after minus before).
  void judge(Step& step) {
    touched_.clear();
    deltas_.clear();
    const auto touch = [&](std::int64_t rank, const Load& load, double sign) {
      const auto at = std::find(touched_.begin(), touched_.end(), rank) - touched_.begin();
      if (at == static_cast<std::ptrdiff_t>(touched_.size())) {
        touched_.push_back(rank);
        deltas_.push_back(Load{});
      }
      deltas_[at].mean += sign * load.mean;
      deltas_[at].variance += sign * load.variance;
    };
    const auto account = [&](std::int64_t e, const std::vector<std::int32_t>& row) {
      loads_of(e, row, after_);
      for (std::size_t j = 0; j < rows_[e].size(); ++j) {
        touch(rank_of(rows_[e][j]), replica_loads_[e][j], -1.0);
      }
      for (std::size_t j = 0; j < row.size(); ++j) touch(rank_of(row[j]), after_[j], 1.0);
    };
    account(step.expert_a, step.row_a);
    if (step.expert_b >= 0) account(step.expert_b, step.row_b);
    double worst = 0.0, spread = 0.0;
    for (std::size_t i = 0; i < touched_.size(); ++i) {
      const Load& now = rank_load_[touched_[i]];
      const double before = cost(now);
      const double after = cost(now.mean + deltas_[i].mean, now.variance + deltas_[i].variance);
      worst = std::max(worst, after);
      spread += after * after - before * before;
    }
    for (const std::int64_t rank : order_) {  // the costliest untouched rank
      if (std::find(touched_.begin(), touched_.end(), rank) == touched_.end()) {
        worst = std::max(worst, cost(rank_load_[rank]));
        break;
      }
    }
    step.max_cost = worst;
    step.spread = spread;
  }

  bool better(const Step& step, const Step& best, double current) const {
    // Each changed slot must buy move_cost of max/mean.
    const double mean = total_ / static_cast<double>(world_size_);
    const double price =
        static_cast<double>(std::max<std::int64_t>(step.moves, 0)) * request_.move_cost * mean;
    const double value = step.max_cost + price;
    if (value > current + epsilon_) return false;
    if (value > current - epsilon_ && step.spread >= -epsilon_ * current) return false;
    if (best.expert_a < 0) return true;
    const double best_value =
        best.max_cost +
        static_cast<double>(std::max<std::int64_t>(best.moves, 0)) * request_.move_cost * mean;
    if (value < best_value - epsilon_) return true;
    return value < best_value + epsilon_ && step.spread < best.spread - epsilon_ * current;
  }

  bool apply_best_step() {
    order_.resize(static_cast<std::size_t>(world_size_));
    std::iota(order_.begin(), order_.end(), std::int64_t{0});
    std::stable_sort(order_.begin(), order_.end(), [&](std::int64_t a, std::int64_t b) {
      return cost(rank_load_[a]) > cost(rank_load_[b]);
    });
    const std::int64_t heavy = order_[0];
    const double current = cost(rank_load_[heavy]);
    double mean_cost = 0.0;
    for (const Load& load : rank_load_) mean_cost += cost(load);
    mean_cost /= static_cast<double>(world_size_);
    if (current <= kTightPolish * mean_cost) return false;

    Step best, step;
    for (std::int64_t a = 0; a < num_experts_; ++a) {
      if (!holds(a, heavy, -1)) continue;
      const std::vector<std::int32_t>& row = rows_[a];
      // Reorders: replica j becomes the first of the row.
      for (std::size_t j = 1; j < row.size(); ++j) {
        step.reset(a, row);
        std::rotate(step.row_a.begin(), step.row_a.begin() + static_cast<std::ptrdiff_t>(j),
                    step.row_a.begin() + static_cast<std::ptrdiff_t>(j) + 1);
        step.moves = step_moves(step);
        if (request_.max_moves >= 0 && moves_ + step.moves > request_.max_moves) continue;
        judge(step);
        if (better(step, best, current)) best = step;
      }
      // Swaps: replica i of a trades slots with a replica of another expert.
      for (std::size_t i = 0; i < row.size(); ++i) {
        const std::int32_t p = row[i];
        const std::int64_t rank_p = rank_of(p);
        for (std::int32_t q = 0; q < static_cast<std::int32_t>(slot_expert_.size()); ++q) {
          const std::int64_t b = slot_expert_[q];
          const std::int64_t rank_q = rank_of(q);
          if (b == a || rank_q == rank_p || holds(a, rank_q, p)) continue;
          if (b >= 0 && holds(b, rank_p, q)) continue;
          step.reset(a, row);
          step.row_a[i] = q;
          if (b >= 0) {
            step.expert_b = b;
            step.row_b.assign(rows_[b].begin(), rows_[b].end());
            *std::find(step.row_b.begin(), step.row_b.end(), q) = p;
          }
          step.moves = step_moves(step);
          if (request_.max_moves >= 0 && moves_ + step.moves > request_.max_moves) continue;
          judge(step);
          if (better(step, best, current)) best = step;
        }
      }
    }
    if (best.expert_a < 0) return false;
    apply(best);
    return true;
  }

  void remove_row(std::int64_t e) {
    for (std::size_t j = 0; j < rows_[e].size(); ++j) {
      add(rank_of(rows_[e][j]), replica_loads_[e][j], -1.0);
      slot_expert_[rows_[e][j]] = -1;
    }
  }
  void install_row(std::int64_t e, std::vector<std::int32_t> row) {
    rows_[e] = std::move(row);
    loads_of(e, rows_[e], replica_loads_[e]);
    for (std::size_t j = 0; j < rows_[e].size(); ++j) {
      add(rank_of(rows_[e][j]), replica_loads_[e][j], 1.0);
      slot_expert_[rows_[e][j]] = static_cast<std::int32_t>(e);
    }
  }

  void apply(const Step& step) {
    moves_ += step.moves;
    remove_row(step.expert_a);
    if (step.expert_b >= 0) remove_row(step.expert_b);
    install_row(step.expert_a, step.row_a);
    if (step.expert_b >= 0) install_row(step.expert_b, step.row_b);
  }

  // Polishing stops within this of the mean cost, as the packer does.
  static constexpr double kTightPolish = 1.0005;

  const LayerRequest& request_;
  Topology topology_;
  std::int64_t num_experts_;
  std::int64_t world_size_;
  ReplicaSlots rows_;
  std::vector<std::vector<Load>> replica_loads_;
  std::vector<Load> rank_load_;
  std::vector<std::int32_t> slot_expert_;
  std::vector<std::int32_t> previous_expert_;    // empty without a previous table
  std::vector<std::int32_t> previous_position_;  // the slot's place in its previous row
  std::int64_t moves_ = 0;
  std::vector<Load> source_;        // (expert, source rank)
  std::vector<Load> expert_total_;  // per expert, over the source ranks
  std::vector<double> coherent_;
  double total_ = 0.0;
  double epsilon_ = 0.0;
  std::vector<std::int32_t> replica_of_source_;
  std::vector<std::int64_t> order_;  // ranks, costliest first (refreshed every step)
  std::vector<std::int64_t> touched_;
  std::vector<Load> deltas_;
  std::vector<Load> after_;  // judge()'s scratch
};

}  // namespace

Placement polish_for_rule(const LayerRequest& request, const LayerForecast& forecast,
                          Placement placement) {
  if (!rule_needs_polish(request)) return placement;
  NearestPolisher polisher(request, forecast, std::move(placement.slots));
  polisher.polish();
  return polisher.placement();
}

}  // namespace moe_eplb::plan_detail

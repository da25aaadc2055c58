// Design note: migration-aware replanning.
//
// A slot is changed (a move) when its logical expert or its replica position
// in the expert's row differs from the table in force (diff_tables()'s
// slots_rerouted): the position is the routing (replica j serves source-rank
// group j in rank mode, tokens t % c == j in token mode), so a reorder is a
// move too. Two candidates are built and the cheaper one under
// "predicted max/mean + move_cost * moves" is kept, subject to max_moves:
//
//  A. Local search from the previous placement. First a repair, forced and
//     counted: replicas that rank mode could never select (a count that is
//     not live, or above the column cap), second replicas of an expert on
//     one rank, and unused slots are freed, and each freed slot is given to
//     the expert that lowers the predicted balance most. Then greedy steps
//     around the costliest rank (cost = mean + std, as the planner), each
//     the best gain per move:
//       - reorder two replicas of one expert (which source group a replica
//         serves is its position in the row): two moves;
//       - swap two slots' experts between the costliest rank and another:
//         two moves;
//       - replace a replica of a cooler expert on another rank by a new
//         replica of an expert on the costliest rank, or a replica on the
//         costliest rank by a new replica of any other expert (one count up
//         one, the other down one; both must stay usable counts): one move,
//         plus the replicas whose position in their row shifts.
//     A step's gain is how much it lowers the squared excess over the mean
//     of the ranks it touches, scaled to max/mean units at the costliest
//     rank (no step may raise the costliest rank); steps stop when no step
//     gains move_cost of max/mean per move, or the cap is reached. Layers
//     of at most 16 slots then try every reorder, replacement and swap by
//     the expected busiest rank itself (refine_expected_max()). The steps
//     are enumerated in one place (Editor::for_each_step(): around one rank,
//     or all of them) and judged two ways (proxy gain per move, or the
//     expected busiest rank plus move_cost per move).
//  B. The plan from scratch, with its ranks relabelled to the old ranks of
//     largest overlap (Hungarian assignment), so that a rank keeps the
//     experts it already holds; only when it fits the cap.
//
// Within a rank an expert that stays keeps its slot: both candidates go
// through align_to_previous() (A edits slots in place, but an expert swapped
// away and back may land in another slot), which keeps every row's order.
// With max_moves 0 the result is the previous table itself. Deterministic:
// ties go to the lower index.
#include <algorithm>
#include <cmath>
#include <limits>

#include "flashlb.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "rule_model.hpp"

namespace moe_eplb::plan_detail {
namespace {

constexpr const char* kPlan = "plan()";
// Layers of at most this many slots also get refine_expected_max().
constexpr std::int64_t kExactSlots = 16;

// The load changes of one candidate step, by rank (a handful of ranks).
class RankChanges {
 public:
  void clear() { changes_.clear(); }
  void add(std::int64_t rank, double mean, double variance) {
    for (auto& change : changes_) {
      if (change.first == rank) {
        change.second.mean += mean;
        change.second.variance += variance;
        return;
      }
    }
    changes_.push_back({rank, Load{mean, variance}});
  }
  void add(std::int64_t rank, const Load& load, double sign) {
    add(rank, sign * load.mean, sign * load.variance);
  }
  const std::vector<std::pair<std::int64_t, Load>>& list() const { return changes_; }

 private:
  std::vector<std::pair<std::int64_t, Load>> changes_;
};

// A row with one edit, read in place: replicas i and j trade slots (kSwap),
// replica i gets `slot` (kSet), replica i leaves (kErase), or `slot` becomes
// replica i (kInsert).
struct RowEdit {
  enum class Op { kNone, kSwap, kSet, kErase, kInsert } op = Op::kNone;
  std::int64_t i = 0, j = 0;
  std::int32_t slot = -1;

  std::int64_t size(const std::vector<std::int32_t>& row) const {
    const auto c = static_cast<std::int64_t>(row.size());
    return op == Op::kErase ? c - 1 : op == Op::kInsert ? c + 1 : c;
  }
  std::int32_t at(const std::vector<std::int32_t>& row, std::int64_t m) const {
    switch (op) {
      case Op::kNone:
        break;
      case Op::kSwap:
        if (m == i) return row[j];
        if (m == j) return row[i];
        break;
      case Op::kSet:
        if (m == i) return slot;
        break;
      case Op::kErase:
        return row[m < i ? m : m + 1];
      case Op::kInsert:
        if (m == i) return slot;
        return row[m < i ? m : m - 1];
    }
    return row[m];
  }
  std::vector<std::int32_t> apply(const std::vector<std::int32_t>& row) const {
    std::vector<std::int32_t> edited(static_cast<std::size_t>(size(row)));
    for (std::size_t m = 0; m < edited.size(); ++m) {
      edited[m] = at(row, static_cast<std::int64_t>(m));
    }
    return edited;
  }
};

// The placement being edited from the previous table.
class Editor {
 public:
  Editor(const LayerRequest& request, const ShareModel& shares, const CountLadder& ladder)
      : request_(request),
        shares_(shares),
        ladder_(ladder),
        world_size_(request.world_size),
        slots_per_rank_(request.slots_per_rank),
        num_experts_(request.num_experts),
        previous_(static_cast<std::size_t>(world_size_ * slots_per_rank_), -1),
        previous_position_(previous_.size(), -1),
        rows_(static_cast<std::size_t>(num_experts_)),
        rank_load_(static_cast<std::size_t>(world_size_)),
        holds_(static_cast<std::size_t>(num_experts_ * world_size_), 0),
        stamp_(static_cast<std::size_t>(world_size_), 0) {
    const TableView& table = request.previous;
    for (std::int64_t e = 0; e < num_experts_; ++e) {
      const std::int64_t count = table.at(e, 0);
      for (std::int64_t j = 1; j <= count; ++j) {
        const std::int32_t slot = table.at(e, j);
        previous_[static_cast<std::size_t>(slot)] = static_cast<std::int32_t>(e);
        previous_position_[static_cast<std::size_t>(slot)] = static_cast<std::int32_t>(j - 1);
        rows_[e].push_back(slot);
      }
    }
    slot_expert_ = previous_;
  }

  // Frees the slots the previous table cannot keep and fills them; returns
  // the number of slots that had to change.
  std::int64_t repair();
  // Greedy improving steps; `budget` moves at most (-1: no cap).
  void improve(std::int64_t budget, double move_cost);
  // Small layers: every reorder, replacement and swap judged by the
  // expected busiest rank itself; `budget` moves at most (-1: no cap).
  void refine_expected_max(std::int64_t budget, double move_cost);

  // Slots whose (expert, position) differs from the previous table; a free
  // slot differs when it held an expert.
  std::int64_t moves() const {
    std::int64_t changed = 0;
    for (std::int64_t e = 0; e < num_experts_; ++e) changed += changed_in_row(e, rows_[e]);
    for (std::size_t p = 0; p < slot_expert_.size(); ++p)
      changed += slot_expert_[p] < 0 && previous_[p] >= 0;
    return changed;
  }
  Placement placement() const {
    Placement result;
    result.slots.resize(rows_.size());
    for (std::size_t e = 0; e < rows_.size(); ++e) result.slots[e] = rows_[e];
    result.rank_loads = rank_load_;
    return result;
  }

 private:
  std::int64_t rank_of(std::int64_t slot) const { return slot / slots_per_rank_; }
  // Slots of `row`, laid out as expert e's row, whose (expert, position)
  // differs from the previous table.
  std::int64_t changed_in_row(std::int64_t e, const std::vector<std::int32_t>& row) const {
    std::int64_t changed = 0;
    for (std::size_t j = 0; j < row.size(); ++j) {
      changed += slot_changed(row[j], e, static_cast<std::int64_t>(j));
    }
    return changed;
  }
  // The same for expert e's row with `edit`.
  std::int64_t changed_in_row(std::int64_t e, const RowEdit& edit) const {
    const std::vector<std::int32_t>& row = rows_[e];
    std::int64_t changed = 0;
    for (std::int64_t j = 0; j < edit.size(row); ++j)
      changed += slot_changed(edit.at(row, j), e, j);
    return changed;
  }
  std::vector<std::int32_t> edited_row(std::int64_t e, const RowEdit& edit) const {
    return edit.apply(rows_[e]);
  }
  // Whether `slot` holding replica `position` of expert e differs from the
  // previous table.
  std::int64_t slot_changed(std::int32_t slot, std::int64_t e, std::int64_t position) const {
    const auto p = static_cast<std::size_t>(slot);
    return previous_[p] != e || previous_position_[p] != position ? 1 : 0;
  }
  std::int64_t count(std::int64_t e) const { return static_cast<std::int64_t>(rows_[e].size()); }
  bool holds(std::int64_t rank, std::int64_t e) const { return holds_[e * world_size_ + rank] > 0; }
  double rank_cost(std::int64_t rank) const { return cost(rank_load_[rank]); }
  // Whether the replica of expert a at `slot` may become a new replica of b:
  // a keeps a usable count, b gains one and is not on that rank yet.
  bool can_replace(std::int32_t slot, std::int64_t a, std::int64_t b) const {
    return a != b && !holds(rank_of(slot), b) && count(a) >= 2 && ladder_.allows(count(a) - 1) &&
           count(b) < request_.max_count && ladder_.allows(count(b) + 1);
  }
  // Whether expert a on rank_a and expert b on rank_b may trade ranks.
  bool can_swap(std::int64_t a, std::int64_t rank_a, std::int64_t b, std::int64_t rank_b) const {
    return rank_a != rank_b && a != b && !holds(rank_b, a) && !holds(rank_a, b);
  }

  void recompute_loads() {
    std::fill(rank_load_.begin(), rank_load_.end(), Load{});
    std::fill(holds_.begin(), holds_.end(), 0);
    for (std::int64_t e = 0; e < num_experts_; ++e) {
      for (std::int64_t j = 0; j < count(e); ++j) {
        const std::int64_t rank = rank_of(rows_[e][j]);
        const Load load = shares_.share(e, count(e), j);
        rank_load_[rank].mean += load.mean;
        rank_load_[rank].variance += load.variance;
        ++holds_[e * world_size_ + rank];
      }
    }
  }
  // Adds to `changes` the loads of expert e's replicas laid out as `row`
  // (sign +1) or as they are (sign -1).
  void add_row(RankChanges& changes, std::int64_t e, const RowEdit& edit, double sign) const {
    const std::vector<std::int32_t>& row = rows_[e];
    const std::int64_t c = edit.size(row);
    for (std::int64_t j = 0; j < c; ++j) {
      changes.add(rank_of(edit.at(row, j)), shares_.share(e, c, j), sign);
    }
  }
  void add_row(RankChanges& changes, std::int64_t e, const std::vector<std::int32_t>& row,
               double sign) const {
    const auto c = static_cast<std::int64_t>(row.size());
    for (std::int64_t j = 0; j < c; ++j) {
      changes.add(rank_of(row[j]), shares_.share(e, c, j), sign);
    }
  }
  void apply_row(std::int64_t e, std::vector<std::int32_t> row) {
    RankChanges changes;
    add_row(changes, e, rows_[e], -1.0);
    add_row(changes, e, row, 1.0);
    for (const std::int32_t slot : rows_[e]) --holds_[e * world_size_ + rank_of(slot)];
    for (const std::int32_t slot : row) ++holds_[e * world_size_ + rank_of(slot)];
    for (const auto& [rank, delta] : changes.list()) {
      rank_load_[rank].mean += delta.mean;
      rank_load_[rank].variance += delta.variance;
    }
    rows_[e] = std::move(row);
  }

  // Ranks by cost, costliest first (refreshed each step).
  void sort_ranks() {
    order_.resize(static_cast<std::size_t>(world_size_));
    costs_.resize(order_.size());
    double sum = 0.0;
    for (std::int64_t rank = 0; rank < world_size_; ++rank) {
      order_[rank] = rank;
      costs_[rank] = rank_cost(rank);
      sum += rank_load_[rank].mean;
    }
    std::stable_sort(order_.begin(), order_.end(),
                     [&](std::int64_t a, std::int64_t b) { return costs_[a] > costs_[b]; });
    mean_load_ = sum / static_cast<double>(world_size_);
    mean_cost_ = 0.0;
    for (double c : costs_) mean_cost_ += c / static_cast<double>(world_size_);
  }

  // Gain of a step in cost units (see the design note): how much it lowers
  // the squared excess over the mean cost of the ranks it touches, divided
  // by twice the costliest rank's excess (so that lowering that rank alone
  // by d gains about d); negative when the costliest rank gets costlier.
  // Spreading the excess this way, rather than only lowering the maximum,
  // leaves later steps (and the next rebalance) more to work with.
  double gain(const RankChanges& changes) {
    ++epoch_;
    double changed_max = 0.0, old_excess = 0.0, new_excess = 0.0;
    for (const auto& [rank, delta] : changes.list()) {
      stamp_[rank] = epoch_;
      const double after =
          cost(rank_load_[rank].mean + delta.mean, rank_load_[rank].variance + delta.variance);
      changed_max = std::max(changed_max, after);
      const double before_excess = std::max(0.0, costs_[rank] - mean_cost_);
      const double after_excess = std::max(0.0, after - mean_cost_);
      old_excess += before_excess * before_excess;
      new_excess += after_excess * after_excess;
    }
    double unchanged_max = 0.0;
    for (std::int64_t rank : order_) {
      if (stamp_[rank] != epoch_) {
        unchanged_max = costs_[rank];
        break;
      }
    }
    const double current = costs_[order_[0]];
    const double lowered = current - std::max(changed_max, unchanged_max);
    if (lowered < -epsilon()) return lowered;
    const double top_excess = current - mean_cost_;
    return top_excess > 0.0 ? (old_excess - new_excess) / (2.0 * top_excess) : 0.0;
  }
  double epsilon() const { return 1e-9 * (mean_cost_ + 1.0); }

  // Candidate steps around the costliest rank; the best is kept in best_.
  struct Step {
    double gain = 0.0;
    std::int64_t moves = 0;
    // Rows to write: up to two experts.
    std::int64_t expert_a = -1, expert_b = -1;
    std::vector<std::int32_t> row_a, row_b;
  };
  void consider(Step& best, const Step& step, double min_gain_per_move) const {
    if (step.gain <= epsilon()) return;
    const double moves = static_cast<double>(std::max<std::int64_t>(step.moves, 0));
    if (step.moves > 0 && step.gain < min_gain_per_move * moves) return;
    // Free steps first, then the most gain per move.
    const auto per_move = [](const Step& s) {
      return s.moves <= 0 ? std::numeric_limits<double>::infinity()
                          : s.gain / static_cast<double>(s.moves);
    };
    const double mine = per_move(step), theirs = per_move(best);
    if (best.expert_a < 0 || mine > theirs ||
        (mine == theirs && step.gain > best.gain + epsilon())) {
      best = step;
    }
  }
  void apply(const Step& step) {
    if (step.expert_a >= 0) apply_row(step.expert_a, step.row_a);
    if (step.expert_b >= 0) apply_row(step.expert_b, step.row_b);
    for (std::int64_t e : {step.expert_a, step.expert_b}) {
      if (e < 0) continue;
      for (const std::int32_t slot : rows_[e])
        slot_expert_[static_cast<std::size_t>(slot)] = static_cast<std::int32_t>(e);
    }
  }
  // One candidate step (see the design note); its rows are written out only
  // for the steps a judge keeps (rows_of()).
  struct Candidate {
    enum class Kind { kReorder, kSwap, kReplace } kind;
    std::int64_t a = -1, b = -1;  // the experts whose rows change (b: swaps and replacements)
    // kReorder: the two positions of a's row that trade slots; kSwap: the
    // positions of a's and b's replicas that trade slots; kReplace: the
    // position of a's replica that becomes b's, and its position in b's row.
    std::int64_t index_a = 0, index_b = 0;
    std::int64_t moves = 0;  // the change in moves()
  };
  // Every candidate step within `left` moves (-1: no cap), to `judge`:
  // around rank `heavy`, or all of them when heavy is -1.
  template <typename Judge>
  void for_each_step(std::int64_t heavy, std::int64_t left, Judge&& judge);
  // Expert a's and b's rows after the step, as edits of their current rows.
  RowEdit edit_a(const Candidate& step) const {
    switch (step.kind) {
      case Candidate::Kind::kReorder:
        return {RowEdit::Op::kSwap, step.index_a, step.index_b, -1};
      case Candidate::Kind::kSwap:
        return {RowEdit::Op::kSet, step.index_a, 0, rows_[step.b][step.index_b]};
      case Candidate::Kind::kReplace:
        break;
    }
    return {RowEdit::Op::kErase, step.index_a, 0, -1};
  }
  RowEdit edit_b(const Candidate& step) const {
    if (step.kind == Candidate::Kind::kSwap) {
      return {RowEdit::Op::kSet, step.index_b, 0, rows_[step.a][step.index_a]};
    }
    return {RowEdit::Op::kInsert, step.index_b, 0, rows_[step.a][step.index_a]};
  }
  // The change in moves() when `step` is applied (it keeps the set of slots
  // its experts' rows hold).
  std::int64_t step_moves(const Candidate& step) const {
    const RowEdit none;
    std::int64_t delta = changed_in_row(step.a, edit_a(step)) - changed_in_row(step.a, none);
    if (step.b >= 0) delta += changed_in_row(step.b, edit_b(step)) - changed_in_row(step.b, none);
    return delta;
  }
  // The rank loads `step` moves. A swap adds its four replica shares (the
  // experts' other replicas stay); the others take the old rows off and put
  // the new ones on.
  void add_changes(const Candidate& step, RankChanges& changes) const {
    if (step.kind == Candidate::Kind::kSwap) {
      const std::int32_t slot_a = rows_[step.a][step.index_a];
      const std::int32_t slot_b = rows_[step.b][step.index_b];
      const Load share_a = shares_.share(step.a, count(step.a), step.index_a);
      const Load share_b = shares_.share(step.b, count(step.b), step.index_b);
      changes.add(rank_of(slot_a), share_a, -1.0);
      changes.add(rank_of(slot_b), share_a, 1.0);
      changes.add(rank_of(slot_b), share_b, -1.0);
      changes.add(rank_of(slot_a), share_b, 1.0);
      return;
    }
    const RowEdit none;
    add_row(changes, step.a, none, -1.0);
    add_row(changes, step.a, edit_a(step), 1.0);
    if (step.b >= 0) {
      add_row(changes, step.b, none, -1.0);
      add_row(changes, step.b, edit_b(step), 1.0);
    }
  }
  Step rows_of(const Candidate& step) const {
    Step rows;
    rows.moves = step.moves;
    rows.expert_a = step.a;
    rows.row_a = edited_row(step.a, edit_a(step));
    if (step.b >= 0) {
      rows.expert_b = step.b;
      rows.row_b = edited_row(step.b, edit_b(step));
    }
    return rows;
  }
  std::int64_t position_in_row(std::int64_t e, std::int32_t slot) const {
    const std::vector<std::int32_t>& row = rows_[e];
    return std::find(row.begin(), row.end(), slot) - row.begin();
  }
  // Gives free slot `slot` to the best expert; false when none may take it.
  bool fill(std::int32_t slot);

  const LayerRequest& request_;
  const ShareModel& shares_;
  const CountLadder& ladder_;
  std::int64_t world_size_, slots_per_rank_, num_experts_;
  std::vector<std::int32_t> previous_;           // (W * S) expert of each slot in the old table
  std::vector<std::int32_t> previous_position_;  // (W * S) its position in that expert's row
  std::vector<std::int32_t> slot_expert_;        // (W * S) now; -1 = free
  std::vector<std::vector<std::int32_t>> rows_;
  std::vector<Load> rank_load_;
  std::vector<std::int32_t> holds_;  // (E, W) replicas of e on the rank
  std::vector<std::int64_t> stamp_;
  std::int64_t epoch_ = 0;
  std::vector<std::int64_t> order_;
  std::vector<double> costs_;
  double mean_load_ = 0.0, mean_cost_ = 0.0;
};

std::int64_t Editor::repair() {
  std::vector<std::int32_t> freed;
  for (std::int64_t e = 0; e < num_experts_; ++e) {
    std::vector<std::int32_t> kept;
    std::vector<std::int64_t> ranks;
    for (const std::int32_t slot : rows_[e]) {
      const std::int64_t rank = rank_of(slot);
      if (std::find(ranks.begin(), ranks.end(), rank) != ranks.end()) {
        freed.push_back(slot);
        continue;
      }
      ranks.push_back(rank);
      kept.push_back(slot);
    }
    auto target = static_cast<std::int64_t>(kept.size());
    if (!ladder_.allows(target)) target = ladder_.below(target);
    while (static_cast<std::int64_t>(kept.size()) > target) {
      freed.push_back(kept.back());
      kept.pop_back();
    }
    rows_[e] = std::move(kept);
  }
  for (std::size_t p = 0; p < slot_expert_.size(); ++p) {
    if (slot_expert_[p] < 0) freed.push_back(static_cast<std::int32_t>(p));
  }
  for (const std::int32_t slot : freed) slot_expert_[static_cast<std::size_t>(slot)] = -1;
  std::sort(freed.begin(), freed.end());
  recompute_loads();
  for (const std::int32_t slot : freed) {
    MOE_EPLB_CHECK(fill(slot), kPlan, ": previous table, layer ", request_.layer_idx,
                   ": no expert can take its slot ", slot,
                   " without two replicas on one rank; plan without --previous");
  }
  return moves();
}

bool Editor::fill(std::int32_t slot) {
  sort_ranks();
  const std::int64_t rank = rank_of(slot);
  Step best;
  RankChanges changes;
  for (std::int64_t b = 0; b < num_experts_; ++b) {
    if (holds(rank, b) || count(b) >= request_.max_count || !ladder_.allows(count(b) + 1)) continue;
    // The new replica may serve any source group: try every position.
    const std::int64_t last = order_matters(request_) ? 0 : count(b);
    for (std::int64_t position = count(b); position >= last; --position) {
      std::vector<std::int32_t> row = rows_[b];
      row.insert(row.begin() + position, slot);
      changes.clear();
      add_row(changes, b, rows_[b], -1.0);
      add_row(changes, b, row, 1.0);
      Step step;
      step.gain = gain(changes);
      step.expert_a = b;
      step.row_a = std::move(row);
      if (best.expert_a < 0 || step.gain > best.gain + epsilon()) best = std::move(step);
    }
  }
  // No usable count can grow: a replica appended where it leaves the live
  // groups as they are, as the planner itself places unavoidable leftovers.
  for (std::int64_t b = 0; b < num_experts_ && best.expert_a < 0; ++b) {
    if (holds(rank, b) || count(b) >= request_.max_count) continue;
    best.expert_a = b;
    best.row_a = rows_[b];
    best.row_a.push_back(slot);
  }
  if (best.expert_a < 0) return false;
  apply(best);
  return true;
}

template <typename Judge>
void Editor::for_each_step(std::int64_t heavy, std::int64_t left, Judge&& judge) {
  const bool by_rank = order_matters(request_);
  const auto num_slots = static_cast<std::int32_t>(slot_expert_.size());
  // Each candidate within the budget goes to the judge, its moves counted.
  const auto offer = [&](Candidate& step) {
    step.moves = step_moves(step);
    if (left < 0 || step.moves <= left) judge(step);
  };
  const auto reorder = [&](std::int64_t a, std::int64_t i, std::int64_t j) {
    Candidate step{Candidate::Kind::kReorder, a, -1, i, j};
    offer(step);
  };
  const auto swap = [&](std::int32_t slot_a, std::int32_t slot_b) {
    const std::int64_t a = slot_expert_[static_cast<std::size_t>(slot_a)];
    const std::int64_t b = slot_expert_[static_cast<std::size_t>(slot_b)];
    if (!can_swap(a, rank_of(slot_a), b, rank_of(slot_b))) return;
    Candidate step{Candidate::Kind::kSwap, a, b, position_in_row(a, slot_a),
                   position_in_row(b, slot_b)};
    offer(step);
  };
  // The new replica may serve any source group: every position of b's row
  // (token mode: the end only, positions being alike there).
  const auto replace = [&](std::int32_t slot, std::int64_t b) {
    const std::int64_t a = slot_expert_[static_cast<std::size_t>(slot)];
    if (!can_replace(slot, a, b)) return;
    const std::int64_t last = by_rank ? 0 : count(b);
    for (std::int64_t position = count(b); position >= last; --position) {
      Candidate step{Candidate::Kind::kReplace, a, b, position_in_row(a, slot), position};
      offer(step);
    }
  };

  if (heavy < 0) {
    // Every step, in the order refine_expected_max() has always used.
    for (std::int64_t a = 0; by_rank && a < num_experts_; ++a) {
      for (std::int64_t i = 0; i < count(a); ++i) {
        for (std::int64_t j = i + 1; j < count(a); ++j) reorder(a, i, j);
      }
    }
    for (std::int32_t slot = 0; slot < num_slots; ++slot) {
      for (std::int64_t b = 0; b < num_experts_; ++b) replace(slot, b);
      for (std::int32_t other = slot + 1; other < num_slots; ++other) swap(slot, other);
    }
    return;
  }
  // Around the costliest rank: its replicas trade source groups with their
  // expert's other replicas, ...
  std::vector<std::int64_t> heavy_experts;
  for (std::int64_t e = 0; e < num_experts_; ++e) {
    if (holds(heavy, e)) heavy_experts.push_back(e);
  }
  const auto heavy_slot = [&](std::int64_t e) {
    const std::vector<std::int32_t>& row = rows_[e];
    return *std::find_if(row.begin(), row.end(),
                         [&](std::int32_t slot) { return rank_of(slot) == heavy; });
  };
  if (by_rank) {
    for (const std::int64_t a : heavy_experts) {
      const std::int64_t here = position_in_row(a, heavy_slot(a));
      for (std::int64_t j = 0; j < count(a); ++j) {
        if (j != here) reorder(a, here, j);
      }
    }
  }
  // ... trade slots with any other rank (two moves), ...
  if (left < 0 || left >= 2) {
    for (const std::int64_t a : heavy_experts) {
      const std::int32_t slot_a = heavy_slot(a);
      for (std::int32_t slot_b = 0; slot_b < num_slots; ++slot_b) swap(slot_a, slot_b);
    }
  }
  // ... gain a replica in another expert's slot, or give theirs up (one move).
  if (left < 0 || left >= 1) {
    for (const std::int64_t b : heavy_experts) {
      for (std::int32_t slot = 0; slot < num_slots; ++slot) replace(slot, b);
    }
    for (std::int32_t slot = static_cast<std::int32_t>(heavy * slots_per_rank_);
         slot < static_cast<std::int32_t>((heavy + 1) * slots_per_rank_); ++slot) {
      for (std::int64_t b = 0; b < num_experts_; ++b) replace(slot, b);
    }
  }
}

void Editor::improve(std::int64_t budget, double move_cost) {
  RankChanges changes;
  // Each step lowers the costliest rank or the excess of the ranks it
  // touches; the cap guards against plateaus.
  for (std::int64_t iteration = 0; iteration < 8 * world_size_ * slots_per_rank_; ++iteration) {
    const std::int64_t used = moves();
    const std::int64_t left = budget < 0 ? -1 : std::max<std::int64_t>(0, budget - used);
    sort_ranks();
    const double min_gain_per_move = move_cost * mean_load_;
    // The judge: the proxy gain around the costliest rank, per move.
    Step best;
    for_each_step(order_[0], left, [&](const Candidate& candidate) {
      changes.clear();
      add_changes(candidate, changes);
      const double step_gain = gain(changes);
      if (step_gain <= epsilon()) return;
      Step step = rows_of(candidate);
      step.gain = step_gain;
      consider(best, step, min_gain_per_move);
    });
    if (best.expert_a < 0) break;
    apply(best);
  }
}

// With a handful of slots every step counts (a 10% cap on 12 slots is one
// move), and there are few enough steps to try them all by the expected
// busiest rank (forecast_balance()) rather than by the proxy around the
// costliest rank that improve() uses on large layers. A step may also undo
// an earlier move (it then frees one).
void Editor::refine_expected_max(std::int64_t budget, double move_cost) {
  const auto num_slots = static_cast<std::int64_t>(slot_expert_.size());
  std::vector<Load> trial;
  RankChanges changes;
  for (std::int64_t iteration = 0; iteration < 4 * num_slots; ++iteration) {
    const std::int64_t used = moves();
    const std::int64_t left = budget < 0 ? -1 : std::max<std::int64_t>(0, budget - used);
    double best_value =
        forecast_balance(rank_load_).expected + move_cost * static_cast<double>(used);
    // The judge: E[max] / mean + move_cost * moves, the objective itself.
    Step best;
    for_each_step(-1, left, [&](const Candidate& candidate) {
      changes.clear();
      add_changes(candidate, changes);
      trial = rank_load_;
      for (const auto& [rank, delta] : changes.list()) {
        trial[rank].mean += delta.mean;
        trial[rank].variance += delta.variance;
      }
      const double value = forecast_balance(trial).expected +
                           move_cost * static_cast<double>(used + candidate.moves);
      if (value < best_value - 1e-9) {
        best_value = value;
        best = rows_of(candidate);
      }
    });
    if (best.expert_a < 0) break;
    apply(best);
  }
}

// Candidate B: the plan from scratch on the old ranks of most overlap.
Placement relabel_to_previous(const LayerRequest& request, Placement scratch) {
  const std::int64_t world_size = request.world_size, slots_per_rank = request.slots_per_rank;
  const std::vector<std::int32_t> old_experts = slot_experts(request.previous, request.topology());
  // overlap(new rank i, old rank r) = experts on both; minimise its negative.
  std::vector<std::int32_t> on_old_rank(static_cast<std::size_t>(request.num_experts * world_size),
                                        0);
  for (std::size_t p = 0; p < old_experts.size(); ++p) {
    if (old_experts[p] >= 0) {
      on_old_rank[old_experts[p] * world_size + static_cast<std::int64_t>(p) / slots_per_rank] = 1;
    }
  }
  std::vector<double> negative_overlap(static_cast<std::size_t>(world_size * world_size), 0.0);
  for (std::size_t e = 0; e < scratch.slots.size(); ++e) {
    for (const std::int32_t slot : scratch.slots[e]) {
      const std::int64_t rank = slot / slots_per_rank;
      for (std::int64_t old_rank = 0; old_rank < world_size; ++old_rank) {
        negative_overlap[rank * world_size + old_rank] -=
            on_old_rank[static_cast<std::int64_t>(e) * world_size + old_rank];
      }
    }
  }
  const std::vector<std::int64_t> new_rank = min_cost_assignment(negative_overlap, world_size);
  std::vector<Load> loads(scratch.rank_loads.size());
  for (std::int64_t rank = 0; rank < world_size; ++rank) {
    loads[new_rank[rank]] = scratch.rank_loads[rank];
  }
  for (auto& row : scratch.slots) {
    for (std::int32_t& slot : row) {
      const std::int64_t rank = slot / slots_per_rank;
      slot = static_cast<std::int32_t>(new_rank[rank] * slots_per_rank + slot % slots_per_rank);
    }
  }
  scratch.rank_loads = std::move(loads);
  return scratch;
}

// Each expert that stays on a rank back in its old slot there; `moves`
// receives the slots whose (expert, position) then differs from the previous
// table.
Placement align(const LayerRequest& request, Placement placement, std::int64_t& moves) {
  const Topology topology = request.topology();
  const LayeredTable table = table_of_layers({pack_rows(placement.slots)}, 0);
  const std::int64_t num_columns = table.num_columns;
  const std::vector<std::int32_t> aligned =
      align_to_previous(request.previous, table.layer(0), topology);
  for (std::size_t e = 0; e < placement.slots.size(); ++e) {
    const std::int32_t* row = aligned.data() + e * static_cast<std::size_t>(num_columns);
    placement.slots[e].assign(row + 1, row + 1 + row[0]);
  }
  const TableView aligned_view{aligned.data(), request.num_experts, num_columns, num_columns, 1};
  moves = diff_tables(request.previous, aligned_view, topology).slots_rerouted;
  return placement;
}

double max_over_mean(const Placement& placement) {
  double max_cost = 0.0, total = 0.0;
  for (const Load& load : placement.rank_loads) {
    max_cost = std::max(max_cost, cost(load));
    total += load.mean;
  }
  const double mean = total / static_cast<double>(placement.rank_loads.size());
  return mean > 0.0 ? max_cost / mean : 1.0;
}

}  // namespace

Placement replan(const LayerRequest& request, const ShareModel& shares, const CountLadder& ladder,
                 Placement scratch) {
  Editor editor(request, shares, ladder);
  const std::int64_t forced = editor.repair();
  MOE_EPLB_CHECK(request.max_moves < 0 || forced <= request.max_moves, kPlan,
                 ": previous table, layer ", request.layer_idx, ", needs ", forced,
                 " changed slots before any rebalancing (replicas rank mode never selects, two "
                 "replicas of an expert on one rank, or unused slots), more than max_moves ",
                 request.max_moves);
  editor.improve(request.max_moves, request.move_cost);
  if (request.world_size * request.slots_per_rank <= kExactSlots) {
    editor.refine_expected_max(request.max_moves, request.move_cost);
  }
  std::int64_t local_moves = 0, relabelled_moves = 0;
  Placement local = align(request, editor.placement(), local_moves);
  Placement relabelled =
      align(request, relabel_to_previous(request, std::move(scratch)), relabelled_moves);
  if (request.max_moves >= 0 && relabelled_moves > request.max_moves) return local;
  const double local_value =
      max_over_mean(local) + request.move_cost * static_cast<double>(local_moves);
  const double relabelled_value =
      max_over_mean(relabelled) + request.move_cost * static_cast<double>(relabelled_moves);
  return relabelled_value < local_value - 1e-12 ? relabelled : local;
}

}  // namespace moe_eplb::plan_detail

// Design note: planning for the operator's real replica rule.
//
// Rank mode sends every token that source rank w routes to expert e (with c
// replicas) to replica 1 + w / ceil(W / c). With per-source-rank statistics
// each replica's load is therefore known, not assumed: the tokens of its
// group of ranks. The forecast (forecast.cpp) turns the windows into the
// next window's expected count and variance per (rank, expert); a replica
// carries its group's mean and variance, a rank the sums over its replicas,
// and ranks compare by cost = mean + std (rule_model.hpp): a rank of
// replicas fed by small, noisy groups is costlier than its mean says. The
// planner balances those costs in four steps.
//
//  1. Counts. Water-filling on the costliest replica: while slots remain,
//     the expert whose costliest replica is costliest moves to its next
//     *live* count, one where every replica serves at least one rank
//     (ceil(W / g) for some group size g; for W = 32 that skips 9, 10,
//     12..15, 17..31). Slots no live count can take become dead replicas
//     appended to a row whose group size they leave unchanged, so they cost
//     nothing. In token mode every count is live and each replica gets 1 / c.
//  2. Packing. Costliest replica first onto the rank where it ends cheapest
//     (a free slot, no replica of that expert yet), then improving swaps:
//     first between the costliest rank and the lightest ones (the best swap
//     with the 8 lightest), then between pairs across the mean whose
//     difference a swap narrows, until neither helps or the costliest rank
//     is within 0.05% of the mean (0.2% for the pairs).
//  3. Count search, only when step 2 ends more than 0.5% above the mean
//     cost (few slots per rank: replicas must pair up to the mean): every
//     split of the slots into live counts for small layers, compared by the
//     expected busiest rank, else a hill-climb that moves count steps
//     between experts, repacking each candidate.
//  4. Locality. Swaps that move replicas onto ranks that send them traffic
//     (replica j onto a rank of its source group j, or at least its node),
//     accepted only when the two ranks' costs stay between their old ones.
//
// With a previous table, replan.cpp then trades this plan against moves.
// Deterministic: ties go to the lower expert, replica and rank index.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <queue>
#include <tuple>

#include "key_order.hpp"
#include "rule_model.hpp"

namespace moe_eplb::plan_detail {
namespace {

// Step 1: replica counts, summing to world_size * slots_per_rank.
std::vector<std::int64_t> choose_counts(const LayerRequest& request, const ShareModel& shares,
                                        const CountLadder& ladder) {
  const std::int64_t num_experts = request.num_experts;
  std::vector<std::int64_t> counts(static_cast<std::size_t>(num_experts), 1);
  std::int64_t spare = request.world_size * request.slots_per_rank - num_experts;
  // Costliest replica first; ties: fewer replicas, then the lower expert.
  using Entry = std::tuple<double, std::int64_t, std::int64_t>;  // (cost, -count, -expert)
  std::vector<Entry> entries(static_cast<std::size_t>(num_experts));
  for (std::int64_t e = 0; e < num_experts; ++e) entries[e] = {shares.max_cost(e, 1), -1, -e};
  // (Built in one go; every entry differs, so the pops below come in one order.)
  std::priority_queue<Entry> heap(std::less<Entry>(), std::move(entries));
  while (spare > 0 && !heap.empty()) {
    const std::int64_t e = -std::get<2>(heap.top());
    heap.pop();
    const std::int64_t next = ladder.above(counts[e]);
    if (next == 0 || next - counts[e] > spare) continue;  // the budget only shrinks
    spare -= next - counts[e];
    counts[e] = next;
    heap.emplace(shares.max_cost(e, next), -next, -e);
  }

  // Leftover slots: dead replicas where they leave the live groups as they
  // are (count + k below the next live count), heaviest experts first (ties
  // to the lower expert).
  if (spare == 0) return counts;
  std::vector<double> totals(static_cast<std::size_t>(num_experts));
  for (std::int64_t e = 0; e < num_experts; ++e) totals[e] = shares.total(e);
  std::vector<std::int64_t> order;
  KeyOrderScratch scratch;
  order_by_key(totals.data(), totals.size(), KeyOrder::kDescending, order, scratch);
  for (const std::int64_t e : order) {
    if (spare == 0) break;
    const std::int64_t next = ladder.above(counts[e]);
    const std::int64_t limit = next == 0 ? request.max_count : next - 1;
    const std::int64_t extra = std::min(spare, limit - counts[e]);
    counts[e] += extra;
    spare -= extra;
  }
  return counts;
}

// Packs closer than this to the mean cost are done (sampling noise is larger).
constexpr double kTight = 1.0005;
// Narrowing pairs of ranks stops this close: it moves the balance the suite
// measures by less than its noise there, at half the time of planning per-rank
// statistics (bench/RESULTS.md section 9).
constexpr double kNarrowEnough = 1.002;
// The costliest rank's swap is the best with this many of the lightest
// ranks (the same plans as with all ranks, within the suite's noise, at a
// fraction of the searches).
constexpr std::size_t kLightestRanks = 8;

struct Replica {
  std::int64_t expert;
  std::int64_t index;  // 0-based replica number: column index + 1 in the table
  Load load;           // tokens it receives
};

// Per rank, a list of at most `capacity` values (a rank's slots), all in one
// buffer: the packer keeps two such lists per rank and makes one per pack.
template <typename T>
class RankLists {
 public:
  struct View {
    const T* first;
    const T* last;
    const T* begin() const { return first; }
    const T* end() const { return last; }
    std::size_t size() const { return static_cast<std::size_t>(last - first); }
    bool empty() const { return first == last; }
    const T& operator[](std::size_t i) const { return first[i]; }
    const T& front() const { return *first; }
    const T& back() const { return *(last - 1); }
  };

  RankLists(std::int64_t num_ranks, std::int64_t capacity)
      : capacity_(capacity),
        values_(static_cast<std::size_t>(num_ranks * capacity)),
        sizes_(static_cast<std::size_t>(num_ranks), 0) {}

  View operator[](std::int64_t rank) const {
    const T* first = values_.data() + rank * capacity_;
    return {first, first + sizes_[rank]};
  }
  // Inserts `value` at `position` of the rank's list (it has room).
  void insert(std::int64_t rank, const T* position, T value) {
    T* first = values_.data() + rank * capacity_;
    T* at = first + (position - first);
    // (By hand: a rank's few values move faster than a memmove() call.)
    for (T* to = first + sizes_[rank]; to != at; --to) *to = *(to - 1);
    *at = value;
    ++sizes_[rank];
  }
  void push_back(std::int64_t rank, T value) { insert(rank, (*this)[rank].end(), value); }
  void erase(std::int64_t rank, const T* position) {
    T* first = values_.data() + rank * capacity_;
    T* at = first + (position - first);
    for (T* last = first + sizes_[rank] - 1; at != last; ++at) *at = *(at + 1);
    --sizes_[rank];
  }

 private:
  std::int64_t capacity_;
  std::vector<T> values_;
  std::vector<std::int64_t> sizes_;
};

// Steps 2 and 3: replicas onto ranks of slots_per_rank slots each, never two
// replicas of one expert on a rank. A rank's load is the sum of its
// replicas' (mean and variance); ranks compare by cost().
class RankPacker {
 public:
  RankPacker(const LayerRequest& request, const ShareModel& shares,
             std::vector<std::int64_t> counts)
      : counts_(std::move(counts)),
        world_size_(request.world_size),
        slots_per_rank_(request.slots_per_rank),
        rank_replicas_(request.world_size, request.slots_per_rank),
        rank_means_(request.world_size, request.slots_per_rank),
        version_(static_cast<std::size_t>(request.world_size), 0),
        rank_load_(static_cast<std::size_t>(request.world_size)),
        rank_cost_(static_cast<std::size_t>(request.world_size), 0.0),
        rank_std_(static_cast<std::size_t>(request.world_size), 0.0),
        holds_(static_cast<std::size_t>(request.num_experts * request.world_size), 0),
        global_counts_(request.num_source_ranks == 1) {
    replicas_.reserve(static_cast<std::size_t>(world_size_ * slots_per_rank_));
    double total = 0.0;
    for (std::int64_t e = 0; e < request.num_experts; ++e) {
      for (std::int64_t j = 0; j < counts_[e]; ++j) {
        replicas_.push_back(Replica{e, j, shares.share(e, counts_[e], j)});
        total += replicas_.back().load.mean;
      }
    }
    rank_of_.assign(replicas_.size(), -1);
    residual_std_.assign(replicas_.size(), 0.0);
    residual_version_.assign(replicas_.size(), 0);
    // (Every value is written below: no zeroing first.)
    locality_.reset(new double[replicas_.size() * static_cast<std::size_t>(world_size_)]);
    locality_top_.resize(replicas_.size());
    for (std::size_t item = 0; item < replicas_.size(); ++item) {
      const Replica& r = replicas_[item];
      locality_top_[item] =
          shares.locality(r.expert, counts_[r.expert], r.index, &locality_[item * world_size_]);
    }
    total_load_ = total;
    // Differences below this are ties (rounding of sums of counts).
    epsilon_ = 1e-9 * (total / static_cast<double>(world_size_) + 1.0);
  }

  void pack_greedy();
  // Swaps that lower the costliest rank or narrow a pair; true if any applied.
  bool lower_heaviest_rank();
  bool narrow_pairs();
  void improve_locality();
  LayerRows rows() const;

  const std::vector<std::int64_t>& counts() const { return counts_; }
  const std::vector<Load>& rank_loads() const { return rank_load_; }
  double mean_cost() const {
    double sum = 0.0;
    for (std::int64_t rank = 0; rank < world_size_; ++rank) sum += rank_cost(rank);
    return sum / static_cast<double>(world_size_);
  }
  double max_cost() const { return rank_cost(costliest_rank()); }
  // Lower costliest rank first, then the smaller spread.
  bool better_than(const RankPacker& other) const {
    const double mine = max_cost(), theirs = other.max_cost();
    if (mine < theirs - epsilon_) return true;
    if (mine > theirs + epsilon_) return false;
    return sum_of_squares() < other.sum_of_squares() - epsilon_ * max_cost();
  }
  // Experts with a replica on the costliest rank.
  std::vector<std::int64_t> experts_on_heaviest_rank() const;

 private:
  std::int64_t slots_free(std::int64_t rank) const {
    return slots_per_rank_ - static_cast<std::int64_t>(rank_replicas_[rank].size());
  }
  bool holds(std::int64_t rank, std::int64_t expert) const {
    return holds_[expert * world_size_ + rank] != 0;
  }
  double locality(std::int64_t item, std::int64_t rank) const {
    return locality_[item * world_size_ + rank];
  }
  double rank_cost(std::int64_t rank) const { return rank_cost_[rank]; }
  // The rank's cost with `added` replicas' load added and `removed`'s taken.
  double cost_after(std::int64_t rank, const Load& added, const Load& removed) const {
    return cost(rank_load_[rank].mean + added.mean - removed.mean,
                rank_load_[rank].variance + added.variance - removed.variance);
  }
  std::int64_t costliest_rank() const {
    std::int64_t best = 0;
    double best_cost = rank_cost(0);
    for (std::int64_t rank = 1; rank < world_size_; ++rank) {
      const double c = rank_cost(rank);
      if (c > best_cost) {
        best = rank;
        best_cost = c;
      }
    }
    return best;
  }
  // kNoiseWeight * sqrt of the variance of `item`'s rank without the item's
  // own: its rank's noise term were it to leave.
  double residual_std(std::int64_t item) const {
    const std::int64_t rank = rank_of_[item];
    if (residual_version_[item] != version_[rank]) {
      residual_version_[item] = version_[rank];
      residual_std_[item] =
          kNoiseWeight *
          std::sqrt(std::max(0.0, rank_load_[rank].variance - replicas_[item].load.variance));
    }
    return residual_std_[item];
  }
  // rank_cost_ and rank_std_ of `rank` from its load (cost() exactly).
  void set_cost(std::int64_t rank) {
    rank_std_[rank] = kNoiseWeight * std::sqrt(std::max(0.0, rank_load_[rank].variance));
    rank_cost_[rank] = rank_load_[rank].mean + rank_std_[rank];
  }
  void put(std::int64_t item, std::int64_t rank);
  void take(std::int64_t item);
  // Whether x (on rank_x) and y (on rank_y) may trade ranks.
  bool can_swap(std::int64_t x, std::int64_t rank_x, std::int64_t y, std::int64_t rank_y) const {
    const std::int64_t ex = replicas_[x].expert, ey = replicas_[y].expert;
    return ex == ey || (!holds(rank_y, ex) && !holds(rank_x, ey));
  }
  void swap(std::int64_t x, std::int64_t y) {
    const std::int64_t rank_x = rank_of_[x], rank_y = rank_of_[y];
    take(x);
    take(y);
    put(x, rank_y);
    put(y, rank_x);
  }
  // Best swap between `heavy` and `light` that brings the costlier of the
  // two below `bound`; returns {x, y} or {-1, -1}.
  std::pair<std::int64_t, std::int64_t> best_swap(std::int64_t heavy, std::int64_t light,
                                                  double& bound) const;
  void place_by_moving(std::int64_t item);
  double sum_of_squares() const {
    double sum = 0.0;
    for (std::int64_t rank = 0; rank < world_size_; ++rank) {
      const double c = rank_cost(rank);
      sum += c * c;
    }
    return sum;
  }

  std::vector<std::int64_t> counts_;
  std::int64_t world_size_;
  std::int64_t slots_per_rank_;
  std::vector<Replica> replicas_;
  std::vector<std::int64_t> rank_of_;
  RankLists<std::int64_t> rank_replicas_;
  RankLists<double> rank_means_;  // each rank's replica means, ascending
  // Per rank: a fresh number from next_version_ at every put() and take(),
  // so that no two states of any ranks share one.
  std::vector<std::uint64_t> version_;
  std::uint64_t next_version_ = 0;
  // Per replica: sqrt of its rank's variance without its own, and the rank
  // version it was computed at (residual_std()).
  mutable std::vector<double> residual_std_;
  mutable std::vector<std::uint64_t> residual_version_;
  // (heavy, light) -> the largest bound best_swap() found no swap under, at
  // those two ranks' versions; a smaller bound finds none either.
  struct NoSwap {
    std::uint64_t version_heavy = 0, version_light = 0;
    double bound = -1.0;
  };
  mutable std::vector<NoSwap> no_swap_;
  std::vector<Load> rank_load_;
  std::vector<double> rank_cost_;       // cost(rank_load_), kept in step
  std::vector<double> rank_std_;        // its noise term, sqrt(variance)
  std::vector<std::uint8_t> holds_;     // (expert, rank)
  std::unique_ptr<double[]> locality_;  // (replica, rank): traffic kept local there
  std::vector<double> locality_top_;    // (replica,): its most on any rank
  bool global_counts_;                  // one source row: planned from expert totals
  double total_load_ = 0.0;
  double epsilon_ = 0.0;
  mutable std::vector<double> light_means_;               // best_swap() scratch
  std::vector<std::pair<double, std::int64_t>> by_cost_;  // lower_heaviest_rank() scratch
  KeyOrderScratch key_scratch_;
};

void RankPacker::put(std::int64_t item, std::int64_t rank) {
  version_[rank] = ++next_version_;
  rank_of_[item] = rank;
  rank_replicas_.push_back(rank, item);
  const auto means = rank_means_[rank];
  const double mean = replicas_[item].load.mean;
  rank_means_.insert(rank, std::upper_bound(means.begin(), means.end(), mean), mean);
  rank_load_[rank].mean += replicas_[item].load.mean;
  rank_load_[rank].variance += replicas_[item].load.variance;
  set_cost(rank);
  holds_[replicas_[item].expert * world_size_ + rank] = 1;
}

void RankPacker::take(std::int64_t item) {
  const std::int64_t rank = rank_of_[item];
  version_[rank] = ++next_version_;
  const auto list = rank_replicas_[rank];
  rank_replicas_.erase(rank, std::find(list.begin(), list.end(), item));
  const auto means = rank_means_[rank];
  rank_means_.erase(rank, std::lower_bound(means.begin(), means.end(), replicas_[item].load.mean));
  rank_load_[rank].mean -= replicas_[item].load.mean;
  rank_load_[rank].variance -= replicas_[item].load.variance;
  set_cost(rank);
  holds_[replicas_[item].expert * world_size_ + rank] = 0;
  rank_of_[item] = -1;
}

void RankPacker::pack_greedy() {
  // Costliest first, ties to the lower index.
  std::vector<double> item_cost(replicas_.size());
  for (std::size_t i = 0; i < replicas_.size(); ++i) item_cost[i] = cost(replicas_[i].load);
  std::vector<std::int64_t> order;
  order_by_key(item_cost.data(), item_cost.size(), KeyOrder::kDescending, order, key_scratch_);
  // Ranks with a free slot, cheapest first.
  std::vector<std::int64_t> open(static_cast<std::size_t>(world_size_));
  const auto sort_open = [&] {
    open.clear();
    for (std::int64_t rank = 0; rank < world_size_; ++rank) {
      if (slots_free(rank) > 0) open.push_back(rank);
    }
    std::stable_sort(open.begin(), open.end(),
                     [&](std::int64_t a, std::int64_t b) { return rank_cost(a) < rank_cost(b); });
  };
  sort_open();
  // Each item goes where the scan below, over the ranks in index order,
  // puts it: the lowest cost, and on a tie (within epsilon) the rank keeping
  // more traffic local. Only ranks whose cost ends within kFar epsilons of
  // the lowest can take part in that scan's outcome (a tie moves the best
  // cost by at most epsilon per rank, and every rank further out is skipped
  // or, when it leads, replaced on cost alone), so the ranks are visited
  // cheapest first, each cost bounded below by its present noise term plus
  // the item's mean, until that bound passes the lowest cost by kFar
  // epsilons; the scan then runs over those ranks alone.
  const double far = (2.0 * static_cast<double>(world_size_) + 8.0) * epsilon_;
  // The visited ranks as bits of rank index (scanned in index order), with
  // each one's cost with the item.
  std::vector<std::uint64_t> near((static_cast<std::size_t>(world_size_) + 63) / 64, 0);
  std::vector<double> near_cost(static_cast<std::size_t>(world_size_));
  const Load none;
  for (const std::int64_t item : order) {
    const Load& load = replicas_[item].load;
    const std::int64_t expert = replicas_[item].expert;
    double lowest = std::numeric_limits<double>::infinity();
    for (const std::int64_t rank : open) {
      // rank_cost(rank) + mean differs from that bound by rounding only.
      if (rank_cost(rank) + load.mean > lowest + far + 1e-12 * (lowest + 1.0)) break;
      if (holds(rank, expert)) continue;
      const double after = cost_after(rank, load, none);
      lowest = std::min(lowest, after);
      near[static_cast<std::size_t>(rank / 64)] |= std::uint64_t{1} << (rank % 64);
      near_cost[rank] = after;
    }
    std::int64_t best = -1;
    double best_cost = 0.0, best_locality = 0.0;
    for (std::size_t word = 0; word < near.size(); ++word) {
      for (std::uint64_t bits = near[word]; bits != 0; bits &= bits - 1) {
        const auto rank = static_cast<std::int64_t>(word * 64) + __builtin_ctzll(bits);
        const double after = near_cost[rank];
        if (after > lowest + far) continue;
        if (best >= 0 && after > best_cost + epsilon_) continue;
        const double local = locality(item, rank);
        // Lower cost wins; on a tie (within epsilon) the rank keeping more local.
        if (best < 0 || after < best_cost - epsilon_ || local > best_locality) {
          best = rank;
          best_cost = after;
          best_locality = local;
        }
      }
      near[word] = 0;
    }
    if (best >= 0) {
      put(item, best);
      // Back into cost order, or out when full.
      auto at = std::find(open.begin(), open.end(), best);
      open.erase(at);
      if (slots_free(best) > 0) {
        open.insert(std::upper_bound(open.begin(), open.end(), best,
                                     [&](std::int64_t a, std::int64_t b) {
                                       return rank_cost(a) < rank_cost(b);
                                     }),
                    best);
      }
    } else {
      place_by_moving(item);
      sort_open();
    }
  }
}

// Every rank with a free slot already holds this expert: move some replica y
// from a full rank A (without the expert) to a rank B with room (y's expert
// not on B), then put the item on A. Such a y always exists: B has fewer
// than slots_per_rank replicas, so A's slots_per_rank distinct experts cannot
// all be on B.
void RankPacker::place_by_moving(std::int64_t item) {
  const std::int64_t expert = replicas_[item].expert;
  const Load none;
  std::int64_t best_y = -1, best_b = -1;
  double best_cost = 0.0;
  for (std::int64_t b = 0; b < world_size_; ++b) {
    if (slots_free(b) == 0) continue;
    for (std::int64_t a = 0; a < world_size_; ++a) {
      if (a == b || holds(a, expert)) continue;
      for (std::int64_t y : rank_replicas_[a]) {
        if (holds(b, replicas_[y].expert)) continue;
        const double after = std::max(cost_after(a, replicas_[item].load, replicas_[y].load),
                                      cost_after(b, replicas_[y].load, none));
        if (best_y < 0 || after < best_cost - epsilon_) {
          best_y = y;
          best_b = b;
          best_cost = after;
        }
      }
    }
  }
  const std::int64_t a = rank_of_[best_y];
  take(best_y);
  put(best_y, best_b);
  put(item, a);
}

std::pair<std::int64_t, std::int64_t> RankPacker::best_swap(std::int64_t heavy, std::int64_t light,
                                                            double& bound) const {
  std::pair<std::int64_t, std::int64_t> best{-1, -1};
  // Neither rank changed since a search under a bound at least this large
  // found nothing: nothing to find (every test below only tightens as the
  // bound falls).
  if (no_swap_.empty()) no_swap_.resize(static_cast<std::size_t>(world_size_ * world_size_));
  NoSwap& known = no_swap_[static_cast<std::size_t>(heavy * world_size_ + light)];
  const bool known_versions =
      known.version_heavy == version_[heavy] && known.version_light == version_[light];
  if (known_versions && bound <= known.bound) return best;
  const double initial_bound = bound;
  // Costs are mean + a non-negative noise term, so the new means bound the
  // new costs from below: a pair must move a mean in (low, high), and most
  // pairs are ruled out on their means alone.
  const double heavy_mean = rank_load_[heavy].mean, light_mean = rank_load_[light].mean;
  const auto light_items = rank_replicas_[light];
  // So y's mean must lie in (x's + light_mean - bound, x's - heavy_mean +
  // bound): an x with no light replica in that window (widened by far more
  // than rounding) is ruled out at once, from the light rank's sorted means.
  // Tighter still: a rank's new noise term is at least its present one
  // without the replica that leaves, so the heavy rank ends at least at
  // heavy_mean - x's + y's + residual_std(x), and the light one likewise.
  const auto by_mean = rank_means_[light];
  const double slack = 1e-9 * (bound + heavy_mean + light_mean + 1.0);
  light_means_.clear();
  for (std::int64_t x : rank_replicas_[heavy]) {
    const Load& load_x = replicas_[x].load;
    const double heavy_rest = heavy_mean - load_x.mean + residual_std(x);
    const double lowest = load_x.mean + light_mean - bound - slack;
    const double highest = bound - heavy_rest + slack;
    // None in [lowest, highest] when as many lie below `lowest` as up to
    // `highest` (counted without branches: these tests mostly fail, at random).
    std::size_t below = 0, up_to = 0;
    for (const double mean : by_mean) {
      below += static_cast<std::size_t>(mean < lowest);
      up_to += static_cast<std::size_t>(mean <= highest);
    }
    if (below == up_to) continue;
    if (light_means_.empty()) {
      for (std::int64_t y : light_items) light_means_.push_back(replicas_[y].load.mean);
    }
    for (std::size_t i = 0; i < light_items.size(); ++i) {
      const double moved = load_x.mean - light_means_[i];
      if (light_mean + moved >= bound - epsilon_ || heavy_mean - moved >= bound - epsilon_) {
        continue;
      }
      const std::int64_t y = light_items[i];
      if (heavy_rest + light_means_[i] >= bound - epsilon_ + slack ||
          light_mean - light_means_[i] + residual_std(y) + load_x.mean >=
              bound - epsilon_ + slack) {
        continue;
      }
      const Load& load_y = replicas_[y].load;
      if (moved <= epsilon_ && load_x.variance <= load_y.variance) continue;
      const double costlier =
          std::max(cost_after(heavy, load_y, load_x), cost_after(light, load_x, load_y));
      if (costlier < bound - epsilon_ && can_swap(x, heavy, y, light)) {
        bound = costlier;
        best = {x, y};
      }
    }
  }
  if (best.first < 0) known = {version_[heavy], version_[light], initial_bound};
  return best;
}

bool RankPacker::lower_heaviest_rank() {
  bool improved = false;
  // Each swap lowers the maximum or the number of ranks at it; the cap only
  // guards against pathological plateaus.
  // Every rank by (cost, rank), kept in that order across the swaps (each
  // moves two ranks), instead of sorted again at every step.
  by_cost_.clear();
  for (std::int64_t rank = 0; rank < world_size_; ++rank)
    by_cost_.emplace_back(rank_cost(rank), rank);
  std::sort(by_cost_.begin(), by_cost_.end());
  const auto reorder = [&](std::int64_t rank) {
    auto at = std::find_if(by_cost_.begin(), by_cost_.end(),
                           [&](const auto& entry) { return entry.second == rank; });
    at->first = rank_cost(rank);
    for (; at != by_cost_.begin() && *at < *(at - 1); --at) std::iter_swap(at, at - 1);
    for (; at + 1 != by_cost_.end() && *(at + 1) < *at; ++at) std::iter_swap(at, at + 1);
  };
  for (std::size_t step = 0; step < 4 * replicas_.size(); ++step) {
    const std::int64_t heavy = costliest_rank();
    double bound = rank_cost(heavy);
    const double mean = mean_cost();
    // From global counts stop within kTight of the mean: the swaps left
    // there move less than sampling noise. (With per-rank statistics the
    // descent goes on: it is what the suite's numbers were measured with.)
    if (global_counts_ && bound <= kTight * mean) break;
    std::pair<std::int64_t, std::int64_t> best{-1, -1};
    // The lightest ranks leave the most room: the best swap with the
    // kLightestRanks lightest, further ranks (lightest first) only until one
    // has a swap.
    std::size_t tried = 0;
    for (const auto& [light_cost, light] : by_cost_) {
      if (light == heavy) continue;
      if (best.first >= 0 && tried >= kLightestRanks) break;
      ++tried;
      const auto candidate = best_swap(heavy, light, bound);
      if (candidate.first >= 0) best = candidate;
    }
    if (best.first < 0) break;
    const std::int64_t light = rank_of_[best.second];
    swap(best.first, best.second);
    reorder(heavy);
    reorder(light);
    improved = true;
  }
  return improved;
}

bool RankPacker::narrow_pairs() {
  bool improved = false;
  // Only pairs across the mean: narrowing two ranks on one side of it does
  // not bring any rank closer to the mean.
  const double mean = mean_cost();
  for (std::int64_t a = 0; a < world_size_; ++a) {
    for (std::int64_t b = a + 1; b < world_size_; ++b) {
      const std::int64_t heavy = rank_cost(a) >= rank_cost(b) ? a : b;
      const std::int64_t light = heavy == a ? b : a;
      if (rank_cost(heavy) <= mean || rank_cost(light) >= mean) continue;
      double bound = rank_cost(heavy);
      const auto best = best_swap(heavy, light, bound);
      if (best.first < 0) continue;
      swap(best.first, best.second);
      improved = true;
    }
  }
  return improved;
}

void RankPacker::improve_locality() {
  // A swap keeps both ranks' costs between their old ones, and a cost is at
  // least its mean plus the noise its rank keeps without the replica that
  // leaves, so y's mean lies in a window around x's: the replicas sorted by
  // mean give the few candidates of each x. Among them x takes the largest
  // gain, ties to the lowest (rank, position in its list) as a scan over
  // ranks and lists in order would.
  // (sorted_means holds the means in replica order until by_mean orders them.)
  std::vector<double> sorted_means(replicas_.size());
  for (std::size_t i = 0; i < replicas_.size(); ++i) sorted_means[i] = replicas_[i].load.mean;
  std::vector<std::int64_t> by_mean;
  order_by_key(sorted_means.data(), sorted_means.size(), KeyOrder::kAscending, by_mean,
               key_scratch_);
  for (std::size_t i = 0; i < by_mean.size(); ++i)
    sorted_means[i] = replicas_[by_mean[i]].load.mean;
  const auto position = [&](std::int64_t item) {
    const auto list = rank_replicas_[rank_of_[item]];
    return std::find(list.begin(), list.end(), item) - list.begin();
  };
  // A rank's new cost is at least its new mean plus the noise term it keeps
  // without the replica that leaves (residual_std()); `floor` is the least
  // over the ranks of mean + that term for the rank's noisiest replica, a
  // bound below every such sum. Both change only with a swap.
  double top_cost = 0.0, floor = 0.0;
  const auto bounds = [&] {
    top_cost = rank_cost(0);
    floor = std::numeric_limits<double>::infinity();
    for (std::int64_t rank = 0; rank < world_size_; ++rank) {
      top_cost = std::max(top_cost, rank_cost(rank));
      double noisiest = 0.0;
      for (std::int64_t y : rank_replicas_[rank]) {
        noisiest = std::max(noisiest, replicas_[y].load.variance);
      }
      floor = std::min(
          floor, rank_load_[rank].mean +
                     kNoiseWeight * std::sqrt(std::max(0.0, rank_load_[rank].variance - noisiest)));
    }
  };
  bounds();
  for (int pass = 0; pass < 2; ++pass) {
    bool improved = false;
    for (std::size_t xi = 0; xi < replicas_.size(); ++xi) {
      const auto x = static_cast<std::int64_t>(xi);
      const std::int64_t rank_x = rank_of_[x];
      // On a rank where it keeps the most it can, x gains nothing by moving.
      if (locality(x, rank_x) >= locality_top_[x]) continue;
      const double cost_x = rank_cost(rank_x);
      const double mean_x = replicas_[x].load.mean;
      const double rest_x = rank_load_[rank_x].mean + residual_std(x);
      // The window of every rank's test below, widened by far more than rounding.
      const double slack = 1e-9 * (top_cost + epsilon_ + 1.0);
      const double window_low = mean_x + floor - top_cost - epsilon_ - 2.0 * slack;
      const double window_high = mean_x + top_cost + epsilon_ - rest_x + 2.0 * slack;
      std::int64_t best_y = -1;
      double best_gain = epsilon_;
      for (auto it = std::lower_bound(sorted_means.begin(), sorted_means.end(), window_low);
           it != sorted_means.end() && *it <= window_high; ++it) {
        const std::int64_t y = by_mean[static_cast<std::size_t>(it - sorted_means.begin())];
        const std::int64_t rank_y = rank_of_[y];
        if (rank_y == rank_x) continue;
        const double gain_x = locality(x, rank_y) - locality(x, rank_x);
        // A swap where x gains nothing is found from y's side, if it helps.
        if (gain_x <= 0.0) continue;
        // The two ranks must end no further apart than they are: both new
        // costs stay between the two old ones (first on the means alone).
        const double cost_y = rank_cost(rank_y);
        const double low = std::min(cost_x, cost_y) - epsilon_;
        const double high = std::max(cost_x, cost_y) + epsilon_;
        const double mean_y = *it;
        if (mean_y > mean_x + high - rest_x + slack ||
            mean_y < mean_x + rank_load_[rank_y].mean + residual_std(y) - high - slack) {
          continue;
        }
        const double gain = gain_x + locality(y, rank_x) - locality(y, rank_y);
        if (gain < best_gain || (gain == best_gain && best_y < 0)) continue;
        if (gain == best_gain) {
          // A tie: the earlier of the two in (rank, position) order.
          const std::int64_t best_rank = rank_of_[best_y];
          if (rank_y > best_rank || (rank_y == best_rank && position(y) > position(best_y))) {
            continue;
          }
        }
        if (!can_swap(x, rank_x, y, rank_y)) continue;
        const double new_x = cost_after(rank_x, replicas_[y].load, replicas_[x].load);
        const double new_y = cost_after(rank_y, replicas_[x].load, replicas_[y].load);
        if (new_x < low || new_x > high || new_y < low || new_y > high) continue;
        best_gain = gain;
        best_y = y;
      }
      if (best_y >= 0) {
        swap(x, best_y);
        bounds();
        improved = true;
      }
    }
    if (!improved) break;
  }
}

std::vector<std::int64_t> RankPacker::experts_on_heaviest_rank() const {
  std::vector<std::int64_t> experts;
  for (std::int64_t item : rank_replicas_[costliest_rank()]) {
    experts.push_back(replicas_[item].expert);
  }
  return experts;
}

LayerRows RankPacker::rows() const {
  // replicas_ holds every expert's replicas in order, expert after expert,
  // and each rank's slots go to its replicas in that (expert) order.
  std::vector<std::int64_t> slots_used(static_cast<std::size_t>(world_size_), 0);
  LayerRows packed;
  packed.num_experts = static_cast<std::int64_t>(counts_.size());
  packed.rows.reserve(counts_.size() + replicas_.size());
  for (std::size_t item = 0; item < replicas_.size(); ++item) {
    const Replica& r = replicas_[item];
    if (r.index == 0) {
      packed.rows.push_back(static_cast<std::int32_t>(counts_[r.expert]));
      packed.max_count = std::max(packed.max_count, counts_[r.expert]);
    }
    const std::int64_t rank = rank_of_[item];
    packed.rows.push_back(static_cast<std::int32_t>(rank * slots_per_rank_ + slots_used[rank]++));
  }
  return packed;
}

RankPacker pack(const LayerRequest& request, const ShareModel& shares,
                std::vector<std::int64_t> counts) {
  RankPacker packer(request, shares, std::move(counts));
  packer.pack_greedy();
  for (int round = 0; round < 8; ++round) {
    const bool lowered = packer.lower_heaviest_rank();
    // Within kNarrowEnough of the mean, narrowing pairs no longer matters.
    if (packer.max_cost() <= kNarrowEnough * packer.mean_cost()) break;
    if (!packer.narrow_pairs() && !lowered) break;
  }
  return packer;
}

// Water-filling ignores how replicas pack: with few slots per rank, groups
// of replicas must add up to the mean, and another split of the counts often
// packs much better. Small layers try every split of the slots into usable
// counts; larger ones hill-climb, moving one count step from expert b to
// expert a (equal slot deltas) and keeping what packs better. Repacks are
// capped by problem size, and layers that already pack within 0.5% of the
// mean skip the search: sampling noise is larger than what it could gain.
constexpr std::int64_t kMaxSplits = 3000;
constexpr double kGoodEnough = 1.005;

// Number of count vectors (each count usable, summing to num_slots), capped
// at kMaxSplits + 1.
std::int64_t count_splits(const LayerRequest& request, const CountLadder& ladder) {
  const std::int64_t num_slots = request.world_size * request.slots_per_rank;
  std::vector<std::int64_t> ways(static_cast<std::size_t>(num_slots + 1), 0);
  ways[0] = 1;
  for (std::int64_t e = 0; e < request.num_experts; ++e) {
    std::vector<std::int64_t> next(ways.size(), 0);
    for (std::int64_t sum = 0; sum <= num_slots; ++sum) {
      if (ways[sum] == 0) continue;
      for (std::int64_t count : ladder.counts()) {
        if (sum + count > num_slots) break;
        next[sum + count] = std::min(kMaxSplits + 1, next[sum + count] + ways[sum]);
      }
    }
    ways.swap(next);
  }
  return ways[num_slots];
}

void try_every_split(const LayerRequest& request, const ShareModel& shares,
                     const CountLadder& ladder, std::vector<std::int64_t>& counts,
                     std::int64_t expert, std::int64_t slots_left, RankPacker& best,
                     double& best_expected) {
  const std::int64_t experts_left = request.num_experts - expert;
  if (experts_left == 0) {
    if (slots_left != 0) return;
    RankPacker candidate = pack(request, shares, counts);
    // Few splits: compare by the expected busiest rank itself.
    const double expected = forecast_balance(candidate.rank_loads()).expected;
    if (expected < best_expected - 1e-9) {
      best = std::move(candidate);
      best_expected = expected;
    }
    return;
  }
  for (std::int64_t count : ladder.counts()) {
    // Every later expert needs at least one slot and at most max_count.
    const std::int64_t rest = slots_left - count;
    if (rest < experts_left - 1) break;
    if (rest > (experts_left - 1) * request.max_count) continue;
    counts[expert] = count;
    try_every_split(request, shares, ladder, counts, expert + 1, rest, best, best_expected);
  }
}

RankPacker hill_climb_counts(const LayerRequest& request, const ShareModel& shares,
                             const CountLadder& ladder, RankPacker best) {
  const std::int64_t num_slots = request.world_size * request.slots_per_rank;
  std::int64_t budget = std::min<std::int64_t>(400, 4'000'000 / (num_slots * num_slots + 1));
  const std::int64_t num_experts = request.num_experts;
  bool improved = true;
  while (improved && budget > 0) {
    improved = false;
    std::vector<std::int64_t> raise = best.experts_on_heaviest_rank();
    if (num_experts * num_experts <= budget) {
      raise.resize(static_cast<std::size_t>(num_experts));
      for (std::int64_t e = 0; e < num_experts; ++e) raise[e] = e;
    }
    for (std::size_t i = 0; i < raise.size() && !improved && budget > 0; ++i) {
      const std::int64_t a = raise[i];
      const std::vector<std::int64_t>& counts = best.counts();
      const std::int64_t up = ladder.above(counts[a]);
      if (up == 0) continue;
      for (std::int64_t b = 0; b < num_experts && budget > 0; ++b) {
        const std::int64_t down = ladder.below(counts[b]);
        if (b == a || down == 0 || counts[b] - down != up - counts[a]) continue;
        std::vector<std::int64_t> trial = counts;
        trial[a] = up;
        trial[b] = down;
        RankPacker candidate = pack(request, shares, std::move(trial));
        --budget;
        if (candidate.better_than(best)) {
          best = std::move(candidate);
          improved = true;
          break;
        }
      }
    }
  }
  return best;
}

RankPacker refine_counts(const LayerRequest& request, const ShareModel& shares,
                         const CountLadder& ladder, RankPacker best) {
  if (best.max_cost() <= kGoodEnough * best.mean_cost()) return best;
  if (count_splits(request, ladder) <= kMaxSplits) {
    std::vector<std::int64_t> counts(static_cast<std::size_t>(request.num_experts));
    double best_expected = forecast_balance(best.rank_loads()).expected;
    try_every_split(request, shares, ladder, counts, 0, request.world_size * request.slots_per_rank,
                    best, best_expected);
    return best;
  }
  return hill_climb_counts(request, shares, ladder, std::move(best));
}

}  // namespace

BalanceForecast forecast_balance(const std::vector<Load>& ranks) {
  double total = 0.0, begin = 0.0, end = 0.0;
  for (const Load& rank : ranks) {
    const double spread = 8.0 * std::sqrt(std::max(0.0, rank.variance));
    total += rank.mean;
    begin = std::max(begin, rank.mean - spread);
    end = std::max(end, rank.mean + spread);
  }
  const double mean = total / static_cast<double>(ranks.size());
  if (mean <= 0.0) return {};
  auto cdf = [&](double x) {
    double p = 1.0;
    for (const Load& rank : ranks) {
      const double std_dev = std::sqrt(std::max(0.0, rank.variance));
      if (std_dev <= 0.0) {
        if (x < rank.mean) return 0.0;
        continue;
      }
      p *= 0.5 * std::erfc((rank.mean - x) / (std_dev * std::sqrt(2.0)));
    }
    return p;
  };
  constexpr int kSteps = 400;
  const double step = (end - begin) / kSteps;
  BalanceForecast result;
  double expected = begin, previous_x = begin, previous_p = cdf(begin);
  double low = end, high = end;
  bool low_found = false, high_found = false;
  for (int i = 1; i <= kSteps && step > 0.0; ++i) {
    const double x = begin + step * i;
    const double p = cdf(x);
    expected += step * (1.0 - 0.5 * (p + previous_p));
    auto crossing = [&](double level) {
      return previous_p == p ? x : previous_x + (level - previous_p) / (p - previous_p) * step;
    };
    if (!low_found && p >= 0.16) {
      low = crossing(0.16);
      low_found = true;
    }
    if (!high_found && p >= 0.84) {
      high = crossing(0.84);
      high_found = true;
    }
    previous_x = x;
    previous_p = p;
  }
  if (step <= 0.0) expected = low = high = begin;
  result.expected = expected / mean;
  result.low = low / mean;
  result.high = high / mean;
  return result;
}

LayerRows plan_rule_aware(const LayerRequest& request, LayerPlanReport* report) {
  const LayerForecast forecast = forecast_layer(request);
  const ShareModel shares(request, forecast);
  const CountLadder ladder(request);
  RankPacker packer = refine_counts(request, shares, ladder,
                                    pack(request, shares, choose_counts(request, shares, ladder)));
  packer.improve_locality();
  LayerRows rows = packer.rows();
  std::vector<Load> rank_loads = packer.rank_loads();
  if (request.previous.data != nullptr || rule_needs_polish(request)) {
    Placement placement{unpack_rows(rows), std::move(rank_loads)};
    if (request.previous.data != nullptr) {
      placement = replan(request, shares, ladder, std::move(placement));
    }
    placement = polish_for_rule(request, forecast, std::move(placement));
    rows = pack_rows(placement.slots);
    rank_loads = std::move(placement.rank_loads);
  }
  if (report != nullptr) {
    report->persistence = forecast.persistence;
    const BalanceForecast balance = forecast_balance(rank_loads);
    report->predicted_max_over_mean = balance.expected;
    report->predicted_low = balance.low;
    report->predicted_high = balance.high;
  }
  return rows;
}

}  // namespace moe_eplb::plan_detail

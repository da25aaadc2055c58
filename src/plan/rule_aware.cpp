// Design note: planning for the operator's real replica rule.
//
// Rank mode sends every token that source rank w routes to expert e (with c
// replicas) to replica 1 + w / ceil(W / c). With per-source-rank statistics
// each replica's load is therefore known, not assumed: the tokens of its
// group of ranks. The planner balances those real shares in four steps.
//
//  1. Counts. Water-filling on the heaviest replica: while slots remain, the
//     expert whose heaviest replica is heaviest moves to its next *live*
//     count, one where every replica serves at least one rank (ceil(W / g)
//     for some group size g; for W = 32 that skips 9, 10, 12..15, 17..31).
//     Slots no live count can take become dead replicas appended to a row
//     whose group size they leave unchanged, so they cost nothing. In token
//     mode every count is live and each replica gets load / c.
//  2. Packing. Heaviest replica first into the lightest rank that has a free
//     slot and no replica of that expert yet, then improving swaps: first
//     between the heaviest rank and any other, then between any two ranks
//     whose difference a swap narrows, until neither helps.
//  3. Count search, only when step 2 ends more than 0.5% above the mean
//     (few slots per rank: replicas must pair up to the mean): every split
//     of the slots into live counts for small layers, else a hill-climb that
//     moves count steps between experts, repacking each candidate.
//  4. Locality. Swaps that move replicas onto ranks that send them traffic
//     (replica j onto a rank of its source group j, or at least its node),
//     accepted only when the two ranks end no further apart than they were.
//
// Deterministic: ties go to the lower expert, replica and rank index.
#include <algorithm>
#include <cmath>
#include <queue>
#include <tuple>

#include "planners.hpp"

namespace moe_eplb::plan_detail {
namespace {

// Source ranks [begin, end) whose tokens replica j (0-based) of a c-replica
// expert receives in rank mode; empty for a dead replica.
std::pair<std::int64_t, std::int64_t> source_group(std::int64_t count, std::int64_t replica,
                                                   std::int64_t world_size) {
  const std::int64_t group = (world_size + count - 1) / count;
  return {std::min(replica * group, world_size), std::min((replica + 1) * group, world_size)};
}

// What each replica receives, from the layer's statistics.
class ShareModel {
 public:
  explicit ShareModel(const LayerRequest& request)
      : world_size_(request.world_size),
        ranks_per_node_(request.ranks_per_node),
        per_rank_(request.num_source_ranks > 1),
        by_token_(request.balance_mode == BalanceMode::kByToken) {
    const std::int64_t stride = per_rank_ ? world_size_ + 1 : 1;
    prefix_.assign(static_cast<std::size_t>(request.num_experts * stride), 0.0);
    for (std::int64_t e = 0; e < request.num_experts; ++e) {
      double* row = prefix_.data() + e * stride;
      if (!per_rank_) {
        row[0] = request.counts[e];
        continue;
      }
      for (std::int64_t w = 0; w < world_size_; ++w) {
        row[w + 1] = row[w] + request.counts[w * request.num_experts + e];
      }
    }
  }

  // Tokens expert e received from source ranks [begin, end).
  double from_ranks(std::int64_t e, std::int64_t begin, std::int64_t end) const {
    if (begin >= end) return 0.0;
    if (!per_rank_) return prefix_[e] * static_cast<double>(end - begin) / world_size_d();
    const double* row = prefix_.data() + e * (world_size_ + 1);
    return row[end] - row[begin];
  }
  double total(std::int64_t e) const { return from_ranks(e, 0, world_size_); }

  // Tokens replica j (0-based) of expert e receives when e has c replicas.
  double share(std::int64_t e, std::int64_t count, std::int64_t replica) const {
    if (by_token_) return total(e) / static_cast<double>(count);
    const auto [begin, end] = source_group(count, replica, world_size_);
    return from_ranks(e, begin, end);
  }
  double max_share(std::int64_t e, std::int64_t count) const {
    if (by_token_) return total(e) / static_cast<double>(count);
    double heaviest = 0.0;
    for (std::int64_t replica = 0; replica < count; ++replica) {
      heaviest = std::max(heaviest, share(e, count, replica));
    }
    return heaviest;
  }

  // Traffic of that replica that would start on `rank` itself plus the part
  // that would start on rank's node: what placing it on `rank` keeps local.
  double locality(std::int64_t e, std::int64_t count, std::int64_t replica,
                  std::int64_t rank) const {
    std::int64_t begin = 0, end = world_size_;
    double fraction = 1.0 / static_cast<double>(count);  // token mode: an even part of each rank
    if (!by_token_) {
      std::tie(begin, end) = source_group(count, replica, world_size_);
      fraction = 1.0;
    }
    double local = rank >= begin && rank < end ? from_ranks(e, rank, rank + 1) : 0.0;
    if (ranks_per_node_ > 0) {
      const std::int64_t node_begin = rank / ranks_per_node_ * ranks_per_node_;
      local +=
          from_ranks(e, std::max(begin, node_begin), std::min(end, node_begin + ranks_per_node_));
    }
    return local * fraction;
  }

 private:
  double world_size_d() const { return static_cast<double>(world_size_); }

  std::int64_t world_size_;
  std::int64_t ranks_per_node_;
  bool per_rank_;
  bool by_token_;
  std::vector<double> prefix_;  // per expert: prefix sums over source ranks, or the total
};

// The replica counts the planner may use, ascending: in rank mode the live
// ones (every replica serves a rank), in token mode all; at most max_count.
class CountLadder {
 public:
  explicit CountLadder(const LayerRequest& request) {
    if (request.balance_mode == BalanceMode::kByRank) {
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
  const std::vector<std::int64_t>& counts() const { return counts_; }

 private:
  std::vector<std::int64_t> counts_;
};

// Step 1: replica counts, summing to world_size * slots_per_rank.
std::vector<std::int64_t> choose_counts(const LayerRequest& request, const ShareModel& shares,
                                        const CountLadder& ladder) {
  const std::int64_t num_experts = request.num_experts;
  std::vector<std::int64_t> counts(static_cast<std::size_t>(num_experts), 1);
  std::int64_t spare = request.world_size * request.slots_per_rank - num_experts;
  // Heaviest replica first; ties: fewer replicas, then the lower expert.
  using Entry = std::tuple<double, std::int64_t, std::int64_t>;  // (share, -count, -expert)
  std::priority_queue<Entry> heap;
  for (std::int64_t e = 0; e < num_experts; ++e) heap.emplace(shares.max_share(e, 1), -1, -e);
  while (spare > 0 && !heap.empty()) {
    const std::int64_t e = -std::get<2>(heap.top());
    heap.pop();
    const std::int64_t next = ladder.above(counts[e]);
    if (next == 0 || next - counts[e] > spare) continue;  // the budget only shrinks
    spare -= next - counts[e];
    counts[e] = next;
    heap.emplace(shares.max_share(e, next), -next, -e);
  }

  // Leftover slots: dead replicas where they leave the live groups as they
  // are (count + k below the next live count), heaviest experts first.
  std::vector<std::int64_t> order(static_cast<std::size_t>(num_experts));
  for (std::int64_t e = 0; e < num_experts; ++e) order[e] = e;
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    return shares.total(a) > shares.total(b);
  });
  for (std::int64_t e : order) {
    if (spare == 0) break;
    const std::int64_t next = ladder.above(counts[e]);
    const std::int64_t limit = next == 0 ? request.max_count : next - 1;
    const std::int64_t extra = std::min(spare, limit - counts[e]);
    counts[e] += extra;
    spare -= extra;
  }
  return counts;
}

struct Replica {
  std::int64_t expert;
  std::int64_t index;  // 0-based replica number: column index + 1 in the table
  double weight;       // tokens it receives
};

// Steps 2 and 3: replicas onto ranks of slots_per_rank slots each, never two
// replicas of one expert on a rank.
class RankPacker {
 public:
  RankPacker(const LayerRequest& request, const ShareModel& shares,
             std::vector<std::int64_t> counts)
      : counts_(std::move(counts)),
        world_size_(request.world_size),
        slots_per_rank_(request.slots_per_rank),
        rank_replicas_(static_cast<std::size_t>(request.world_size)),
        rank_load_(static_cast<std::size_t>(request.world_size), 0.0),
        holds_(static_cast<std::size_t>(request.num_experts * request.world_size), 0) {
    double total = 0.0;
    for (std::int64_t e = 0; e < request.num_experts; ++e) {
      for (std::int64_t j = 0; j < counts_[e]; ++j) {
        replicas_.push_back(Replica{e, j, shares.share(e, counts_[e], j)});
        total += replicas_.back().weight;
      }
    }
    rank_of_.assign(replicas_.size(), -1);
    locality_.reserve(replicas_.size() * static_cast<std::size_t>(world_size_));
    for (const Replica& r : replicas_) {
      for (std::int64_t rank = 0; rank < world_size_; ++rank) {
        locality_.push_back(shares.locality(r.expert, counts_[r.expert], r.index, rank));
      }
    }
    total_load_ = total;
    // Differences below this are ties (rounding of sums of counts).
    epsilon_ = 1e-9 * (total / static_cast<double>(world_size_) + 1.0);
  }

  void pack_greedy();
  // Swaps that lower the heaviest rank or narrow a pair; true if any applied.
  bool lower_heaviest_rank();
  bool narrow_pairs();
  void improve_locality();
  ReplicaSlots slots() const;

  const std::vector<std::int64_t>& counts() const { return counts_; }
  double mean_load() const { return total_load_ / static_cast<double>(world_size_); }
  double max_load() const { return *std::max_element(rank_load_.begin(), rank_load_.end()); }
  // Lighter heaviest rank first, then the smaller spread.
  bool better_than(const RankPacker& other) const {
    const double mine = max_load(), theirs = other.max_load();
    if (mine < theirs - epsilon_) return true;
    if (mine > theirs + epsilon_) return false;
    return sum_of_squares() < other.sum_of_squares() - epsilon_ * max_load();
  }
  // Experts with a replica on the heaviest rank.
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
  // Best swap between `heavy` and `light` that brings the heavier of the two
  // below `bound`; returns {x, y} or {-1, -1}.
  std::pair<std::int64_t, std::int64_t> best_swap(std::int64_t heavy, std::int64_t light,
                                                  double& bound) const;
  void place_by_moving(std::int64_t item);
  double sum_of_squares() const {
    double sum = 0.0;
    for (double load : rank_load_) sum += load * load;
    return sum;
  }

  std::vector<std::int64_t> counts_;
  std::int64_t world_size_;
  std::int64_t slots_per_rank_;
  std::vector<Replica> replicas_;
  std::vector<std::int64_t> rank_of_;
  std::vector<std::vector<std::int64_t>> rank_replicas_;
  std::vector<double> rank_load_;
  std::vector<std::uint8_t> holds_;  // (expert, rank)
  std::vector<double> locality_;     // (replica, rank): traffic kept local there
  double total_load_ = 0.0;
  double epsilon_ = 0.0;
};

void RankPacker::put(std::int64_t item, std::int64_t rank) {
  rank_of_[item] = rank;
  rank_replicas_[rank].push_back(item);
  rank_load_[rank] += replicas_[item].weight;
  holds_[replicas_[item].expert * world_size_ + rank] = 1;
}

void RankPacker::take(std::int64_t item) {
  const std::int64_t rank = rank_of_[item];
  auto& list = rank_replicas_[rank];
  list.erase(std::find(list.begin(), list.end(), item));
  rank_load_[rank] -= replicas_[item].weight;
  holds_[replicas_[item].expert * world_size_ + rank] = 0;
  rank_of_[item] = -1;
}

void RankPacker::pack_greedy() {
  std::vector<std::int64_t> order(replicas_.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::int64_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    return replicas_[a].weight > replicas_[b].weight;
  });
  for (std::int64_t item : order) {
    std::int64_t best = -1;
    double best_locality = 0.0;
    for (std::int64_t rank = 0; rank < world_size_; ++rank) {
      if (slots_free(rank) == 0 || holds(rank, replicas_[item].expert)) continue;
      if (best >= 0 && rank_load_[rank] > rank_load_[best] + epsilon_) continue;
      const double local = locality(item, rank);
      // Lighter wins; on a tie (within epsilon) the rank keeping more local.
      if (best < 0 || rank_load_[rank] < rank_load_[best] - epsilon_ || local > best_locality) {
        best = rank;
        best_locality = local;
      }
    }
    if (best >= 0) {
      put(item, best);
    } else {
      place_by_moving(item);
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
  const double weight = replicas_[item].weight;
  std::int64_t best_y = -1, best_b = -1;
  double best_cost = 0.0;
  for (std::int64_t b = 0; b < world_size_; ++b) {
    if (slots_free(b) == 0) continue;
    for (std::int64_t a = 0; a < world_size_; ++a) {
      if (a == b || holds(a, expert)) continue;
      for (std::int64_t y : rank_replicas_[a]) {
        if (holds(b, replicas_[y].expert)) continue;
        const double cost = std::max(rank_load_[a] - replicas_[y].weight + weight,
                                     rank_load_[b] + replicas_[y].weight);
        if (best_y < 0 || cost < best_cost - epsilon_) {
          best_y = y;
          best_b = b;
          best_cost = cost;
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
  for (std::int64_t x : rank_replicas_[heavy]) {
    for (std::int64_t y : rank_replicas_[light]) {
      const double moved = replicas_[x].weight - replicas_[y].weight;
      if (moved <= epsilon_) continue;
      const double heavier = std::max(rank_load_[heavy] - moved, rank_load_[light] + moved);
      if (heavier < bound - epsilon_ && can_swap(x, heavy, y, light)) {
        bound = heavier;
        best = {x, y};
      }
    }
  }
  return best;
}

bool RankPacker::lower_heaviest_rank() {
  bool improved = false;
  // Each swap lowers the maximum or the number of ranks at it; the cap only
  // guards against pathological plateaus.
  for (std::size_t step = 0; step < 4 * replicas_.size(); ++step) {
    const auto heavy = static_cast<std::int64_t>(
        std::max_element(rank_load_.begin(), rank_load_.end()) - rank_load_.begin());
    double bound = rank_load_[heavy];
    std::pair<std::int64_t, std::int64_t> best{-1, -1};
    for (std::int64_t light = 0; light < world_size_; ++light) {
      if (light == heavy) continue;
      const auto candidate = best_swap(heavy, light, bound);
      if (candidate.first >= 0) best = candidate;
    }
    if (best.first < 0) break;
    swap(best.first, best.second);
    improved = true;
  }
  return improved;
}

bool RankPacker::narrow_pairs() {
  bool improved = false;
  for (std::int64_t a = 0; a < world_size_; ++a) {
    for (std::int64_t b = a + 1; b < world_size_; ++b) {
      const std::int64_t heavy = rank_load_[a] >= rank_load_[b] ? a : b;
      const std::int64_t light = heavy == a ? b : a;
      double bound = rank_load_[heavy];
      const auto best = best_swap(heavy, light, bound);
      if (best.first < 0) continue;
      swap(best.first, best.second);
      improved = true;
    }
  }
  return improved;
}

void RankPacker::improve_locality() {
  for (int pass = 0; pass < 4; ++pass) {
    bool improved = false;
    for (std::size_t xi = 0; xi < replicas_.size(); ++xi) {
      const auto x = static_cast<std::int64_t>(xi);
      const std::int64_t rank_x = rank_of_[x];
      std::int64_t best_y = -1;
      double best_gain = epsilon_;
      for (std::int64_t rank_y = 0; rank_y < world_size_; ++rank_y) {
        if (rank_y == rank_x) continue;
        // The two ranks must end no further apart than they are: the weight
        // moved from x's rank to y's lies between 0 and their difference.
        const double difference = rank_load_[rank_x] - rank_load_[rank_y];
        const double low = std::min(0.0, difference) - epsilon_;
        const double high = std::max(0.0, difference) + epsilon_;
        const double gain_x = locality(x, rank_y) - locality(x, rank_x);
        for (std::int64_t y : rank_replicas_[rank_y]) {
          const double moved = replicas_[x].weight - replicas_[y].weight;
          if (moved < low || moved > high) continue;
          const double gain = gain_x + locality(y, rank_x) - locality(y, rank_y);
          if (gain <= best_gain || !can_swap(x, rank_x, y, rank_y)) continue;
          best_gain = gain;
          best_y = y;
        }
      }
      if (best_y >= 0) {
        swap(x, best_y);
        improved = true;
      }
    }
    if (!improved) break;
  }
}

std::vector<std::int64_t> RankPacker::experts_on_heaviest_rank() const {
  const auto heavy = std::max_element(rank_load_.begin(), rank_load_.end()) - rank_load_.begin();
  std::vector<std::int64_t> experts;
  for (std::int64_t item : rank_replicas_[heavy]) experts.push_back(replicas_[item].expert);
  return experts;
}

ReplicaSlots RankPacker::slots() const {
  ReplicaSlots slots(counts_.size());
  for (std::size_t e = 0; e < counts_.size(); ++e) slots[e].resize(counts_[e]);
  for (std::int64_t rank = 0; rank < world_size_; ++rank) {
    std::vector<std::int64_t> items = rank_replicas_[rank];
    std::sort(items.begin(), items.end());  // replica order = expert order
    for (std::size_t i = 0; i < items.size(); ++i) {
      const Replica& r = replicas_[items[i]];
      slots[r.expert][r.index] =
          static_cast<std::int32_t>(rank * slots_per_rank_ + static_cast<std::int64_t>(i));
    }
  }
  return slots;
}

RankPacker pack(const LayerRequest& request, const ShareModel& shares,
                std::vector<std::int64_t> counts) {
  RankPacker packer(request, shares, std::move(counts));
  packer.pack_greedy();
  for (int round = 0; round < 8; ++round) {
    const bool lowered = packer.lower_heaviest_rank();
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
                     std::int64_t expert, std::int64_t slots_left, RankPacker& best) {
  const std::int64_t experts_left = request.num_experts - expert;
  if (experts_left == 0) {
    if (slots_left != 0) return;
    RankPacker candidate = pack(request, shares, counts);
    if (candidate.better_than(best)) best = std::move(candidate);
    return;
  }
  for (std::int64_t count : ladder.counts()) {
    // Every later expert needs at least one slot and at most max_count.
    const std::int64_t rest = slots_left - count;
    if (rest < experts_left - 1) break;
    if (rest > (experts_left - 1) * request.max_count) continue;
    counts[expert] = count;
    try_every_split(request, shares, ladder, counts, expert + 1, rest, best);
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
  if (best.max_load() <= kGoodEnough * best.mean_load()) return best;
  if (count_splits(request, ladder) <= kMaxSplits) {
    std::vector<std::int64_t> counts(static_cast<std::size_t>(request.num_experts));
    try_every_split(request, shares, ladder, counts, 0, request.world_size * request.slots_per_rank,
                    best);
    return best;
  }
  return hill_climb_counts(request, shares, ladder, std::move(best));
}

}  // namespace

ReplicaSlots plan_rule_aware(const LayerRequest& request, LayerPlanReport* /*report*/) {
  const ShareModel shares(request);
  const CountLadder ladder(request);
  RankPacker packer = refine_counts(request, shares, ladder,
                                    pack(request, shares, choose_counts(request, shares, ladder)));
  packer.improve_locality();
  return packer.slots();
}

}  // namespace moe_eplb::plan_detail

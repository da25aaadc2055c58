// The analyzer: the trace path against a brute-force reference written from
// SPEC.md, the arithmetic path against the trace path, hand-computed
// metrics on a crafted table, and the SVG plot.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/plan/scenario.hpp"
#include "moe_eplb/plan/svg.hpp"

namespace moe_eplb {
namespace {

// The formula of SPEC.md written out, no core code: tokens per slot.
std::vector<double> reference_slot_load(const TableView& table, const RoutingTrace& trace,
                                        std::int64_t num_physical, BalanceMode mode) {
  std::vector<double> load(static_cast<std::size_t>(num_physical), 0.0);
  const std::int64_t world_size = trace.world_size;
  for (std::int64_t rank = 0; rank < world_size; ++rank) {
    for (std::int64_t b = 0; b < trace.tokens_per_rank; ++b) {
      if (!trace.active_mask.empty() && !trace.active_mask[rank * trace.tokens_per_rank + b]) {
        continue;
      }
      for (std::int64_t k = 0; k < trace.top_k; ++k) {
        const std::int64_t e =
            trace.expert_ids[(rank * trace.tokens_per_rank + b) * trace.top_k + k];
        const std::int64_t c = table.at(e, 0);
        std::int64_t j = 1;
        if (c > 1) {
          j = mode == BalanceMode::kByRank ? 1 + rank / ((world_size + c - 1) / c) : 1 + b % c;
        }
        load[table.at(e, j)] += 1;
      }
    }
  }
  return load;
}

ScenarioSpec small_scenario(std::int64_t world_size, std::int64_t num_experts,
                            std::int64_t slots_per_rank) {
  ScenarioSpec spec;
  spec.name = "test";
  spec.num_experts = num_experts;
  spec.top_k = 4;
  spec.world_size = world_size;
  spec.slots_per_rank = slots_per_rank;
  spec.ranks_per_node = 0;
  spec.tokens_per_rank = 300;
  spec.popularity = Popularity::kZipf;
  spec.skew = 1.0;
  spec.rank_variation = 0.5;
  spec.token_variation = 0.4;
  spec.seed = static_cast<std::uint64_t>(world_size * 131 + num_experts);
  return spec;
}

// analyze_trace() agrees with brute-force routing, for planned tables (whose
// counts do and do not divide world_size), with padding tokens masked out.
TEST(Analyze, TraceMatchesBruteForce) {
  const std::int64_t shapes[][3] = {{4, 8, 3}, {6, 16, 4}, {7, 20, 5}, {16, 64, 6}};
  for (const auto& shape : shapes) {
    const ScenarioSpec spec = small_scenario(shape[0], shape[1], shape[2]);
    const RoutingTrace trace = generate_trace(spec, 0);
    LoadRecorder recorder(1, spec.world_size, spec.num_experts);
    recorder.record(0, trace);
    for (BalanceMode mode : {BalanceMode::kByRank, BalanceMode::kByToken}) {
      SCOPED_TRACE(testing::Message()
                   << "W=" << spec.world_size << " E=" << spec.num_experts
                   << " mode=" << static_cast<int>(mode) << " seed=" << spec.seed);
      for (PlanAlgorithm algorithm : {PlanAlgorithm::kRuleAware, PlanAlgorithm::kDeepSeek}) {
        const LayeredTable table =
            plan(recorder.load(), scenario_plan_options(spec, BalanceMode::kByRank, algorithm));
        const BalanceReport report =
            analyze_trace(table.layer(0), trace, scenario_analyze_options(spec, mode));
        EXPECT_EQ(report.slot_load,
                  reference_slot_load(table.layer(0), trace, spec.world_size * spec.slots_per_rank,
                                      mode));
        double total = 0.0;
        for (double load : report.rank_load) total += load;
        EXPECT_EQ(report.total_load, total);
        // Rank mode from statistics is exact.
        if (mode == BalanceMode::kByRank) {
          const BalanceReport arithmetic =
              analyze_load(table.layer(0), recorder.load().layer(0), spec.world_size,
                           scenario_analyze_options(spec, mode));
          EXPECT_EQ(arithmetic.slot_load, report.slot_load);
          EXPECT_DOUBLE_EQ(arithmetic.local_rank_share, report.local_rank_share);
        }
      }
    }
  }
}

// Token mode from statistics is the expected even split: close to the
// routed result on a large trace, not equal.
TEST(Analyze, TokenModeStatisticsApproximateTheTrace) {
  ScenarioSpec spec = small_scenario(8, 16, 3);
  spec.tokens_per_rank = 4000;
  const RoutingTrace trace = generate_trace(spec, 0);
  LoadRecorder recorder(1, spec.world_size, spec.num_experts);
  recorder.record(0, trace);
  const LayeredTable table =
      plan(recorder.load(), scenario_plan_options(spec, BalanceMode::kByToken));
  const AnalyzeOptions options = scenario_analyze_options(spec, BalanceMode::kByToken);
  const BalanceReport routed = analyze_trace(table.layer(0), trace, options);
  const BalanceReport expected = analyze_load(table.layer(0), recorder.load().layer(0), 8, options);
  EXPECT_EQ(routed.total_load, expected.total_load);
  for (std::size_t p = 0; p < routed.slot_load.size(); ++p) {
    EXPECT_NEAR(routed.slot_load[p], expected.slot_load[p], 0.05 * expected.slot_load[p] + 20)
        << "slot " << p;
  }
}

// A crafted table with every defect, on W=4 ranks x 2 slots:
//   e0 = [3, 0, 2, 4]  ceil(4/3) = 2: replicas 1, 2 serve ranks 0-1, 2-3; replica 3 dead
//   e1 = [2, 6, 7]     both replicas on rank 3
//   e2 = [1, 6]        slot 6 claimed by e1 and e2; slots 1, 3, 5 unused
// Loads by source rank: e0 [1, 2, 0, 0] (so replica 2 idles), e1 [10, 20, 30, 40], e2 [5] x 4.
TEST(Analyze, CraftedTableMetrics) {
  const std::vector<std::int32_t> rows = {3, 0, 2,  4,   //
                                          2, 6, 7,  -1,  //
                                          1, 6, -1, -1};
  const TableView table{rows.data(), 3, 4, 4, 1};
  // (W, E) row-major: rank r's counts for e0, e1, e2.
  const std::vector<double> load = {1, 10, 5, 2, 20, 5, 0, 30, 5, 0, 40, 5};
  AnalyzeOptions options;
  options.world_size = 4;
  options.slots_per_rank = 2;
  options.ranks_per_node = 2;
  const BalanceReport report = analyze_load(table, load.data(), 4, options);
  EXPECT_EQ(report.slot_load, (std::vector<double>{3, 0, 0, 0, 0, 0, 50, 70}));
  EXPECT_EQ(report.rank_load, (std::vector<double>{3, 0, 0, 120}));
  EXPECT_DOUBLE_EQ(report.total_load, 123);
  EXPECT_DOUBLE_EQ(report.max_over_mean, 120 / 30.75);
  EXPECT_DOUBLE_EQ(report.imbalance, 120 / 30.75 - 1);
  EXPECT_EQ(report.num_replicas, 6);
  EXPECT_EQ(report.dead_replicas, 1);
  EXPECT_EQ(report.idle_replicas, 1);  // e0's replica 2 (slot 2): its ranks send nothing
  EXPECT_EQ(report.replicas_sharing_rank, 1);
  EXPECT_EQ(report.slots_claimed_twice, 1);
  EXPECT_EQ(report.unused_slots, 3);
  // On the source rank: e0 rank 0 -> slot 0 (1), e1 rank 3 -> slot 7 (40), e2 rank 3 -> slot 6 (5).
  EXPECT_DOUBLE_EQ(report.local_rank_share, 46.0 / 123);
  // On the source node (ranks 0-1, 2-3): e0 3, e1 ranks 2-3 70, e2 ranks 2-3 10.
  EXPECT_DOUBLE_EQ(report.local_node_share, 83.0 / 123);

  // Token mode selects every replica: none dead.
  options.rule = ReplicaRule::kAscendToken;
  EXPECT_EQ(analyze_load(table, load.data(), 4, options).dead_replicas, 0);
}

// Global counts are spread evenly over the source ranks.
TEST(Analyze, GlobalCountsSplitEvenly) {
  const std::vector<std::int32_t> rows = {2, 0, 3, 1, 1, -1};  // e0 on ranks 0, 1; e1 on rank 0
  const TableView table{rows.data(), 2, 3, 3, 1};
  const std::vector<double> global = {100, 10};
  AnalyzeOptions options;
  options.world_size = 2;
  options.slots_per_rank = 2;
  const BalanceReport report = analyze_load(table, global.data(), 1, options);
  EXPECT_EQ(report.slot_load, (std::vector<double>{50, 10, 0, 50}));
  EXPECT_EQ(report.local_node_share, -1.0);  // no ranks_per_node: not reported
}

// Tables the operator could not route are refused with what is wrong.
TEST(Analyze, UnroutableTableIsAnError) {
  const std::vector<std::int32_t> rows = {0, 1, 2, 9};  // count 0; id 9 of 4 slots
  const TableView table{rows.data(), 2, 2, 2, 1};
  const std::vector<double> load = {1, 1};
  AnalyzeOptions options;
  options.world_size = 2;
  options.slots_per_rank = 2;
  try {
    analyze_load(table, load.data(), 1, options);
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kInvalidTable);
    const std::string message = error.what();
    EXPECT_NE(message.find("analyze_load(): table is not a valid table for 2 ranks x 2 slots (2 "
                           "problems, the first below"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("row 0: replica count 0 is outside 1..1"), std::string::npos) << message;
  }
  options.slots_per_rank = 0;
  EXPECT_THROW(analyze_load(table, load.data(), 1, options), Error);
}

// A load plan() would refuse is refused here too, not scored as perfect
// balance (NaN, infinite and negative counts used to give max/mean 1.0).
TEST(Analyze, BadLoadValuesAreErrors) {
  const std::vector<std::int32_t> rows = {1, 0, 1, 1, 1, 2, 1, 3};  // 4 experts on 4 slots
  const TableView table{rows.data(), 4, 2, 2, 1};
  AnalyzeOptions options;
  options.world_size = 2;
  options.slots_per_rank = 2;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  struct Case {
    std::vector<double> load;
    std::int64_t num_source_ranks;
    const char* message;
  };
  const Case cases[] = {
      {{1, nan, 1, 1}, 1, "analyze(): load has a non-finite value nan at (expert 1)"},
      {{1, 1, 1, inf, 1, 1, 1, 1},
       2,
       "analyze(): load has a non-finite value inf at (rank 0, expert 3)"},
      {{1, 1, 1, 1, 1, 1, -2, 1},
       2,
       "analyze(): load has a negative value -2 at (rank 1, expert 2)"},
  };
  for (const Case& c : cases) {
    try {
      analyze_load(table, c.load.data(), c.num_source_ranks, options, "analyze()");
      ADD_FAILURE() << "no error for " << c.message;
    } catch (const Error& error) {
      EXPECT_EQ(error.code(), ErrorCode::kInvalidArgument);
      EXPECT_STREQ(error.what(), c.message);
    }
  }
}

TEST(Analyze, SvgHasPanelsLabelsAndEscapes) {
  const std::string svg =
      balance_svg("Load <before> & after", {{"before", {10, 30, 20}}, {"after", {20, 20, 20}}});
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("Load &lt;before&gt; &amp; after"), std::string::npos);
  EXPECT_NE(svg.find(">before<"), std::string::npos);
  EXPECT_NE(svg.find(">after<"), std::string::npos);
  EXPECT_NE(svg.find("1.50"), std::string::npos);  // before: max 30 over mean 20
  EXPECT_NE(svg.find("1.00"), std::string::npos);
  EXPECT_NE(svg.find("rank 1: 30 tokens"), std::string::npos);
  // Degenerate input still makes a valid image.
  EXPECT_NE(balance_svg("empty", {{"none", {0, 0}}}).find("</svg>"), std::string::npos);
}

}  // namespace
}  // namespace moe_eplb

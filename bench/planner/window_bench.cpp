// Planner benchmarks for issue 10: several windows in, a later window scored.
//
//   moe_eplb_bench_windows [--data DIR] [--quick] [--draws N] [--per-draw CSV] [--section
//   suite|real|timing|replay]... moe_eplb_bench_windows --list  (the suite's scenario names)
//
// suite   the multi-window suite (window_suite(): transient, persistent, mixed,
//         drifting and the four large-noise families, one of them of sparse
//         windows, 512 tokens per rank): every planner plans
//         on windows 0-3 and is scored on window 4's tokens routed through
//         update_expert(), rank mode and token mode, over N independent draws
//         of each scenario (--draws, default 32; 4 with --quick); moe-eplb
//         also fed the plain mean of the windows; per-family geometric means
//         and paired comparisons of moe-eplb with DeepSeek and with that mean.
//         --per-draw CSV also writes every draw's max/mean (scenario, draw,
//         mode, planner), which pair_draws.py pairs between two builds.
// real    DeepSeek-V3 expert loads from SGLang (DIR: the folder of
//         prefill_*.json, {"logical_count": [61][256]}, MoE layers 3..60):
//         plan on run i, score on run i + 1, with per-rank noise (below).
// timing  plan() on 61 layers x 256 experts x EP 64 with 4 windows, and on
//         58 layers x 256 x EP 32 from global counts (needs DIR): wall clock
//         and CPU time, every planner on one thread, moe-eplb also on one
//         thread per hardware thread.
// replay  replay() (plan/replay.hpp, what `moe-eplb replay` prints) of 16
//         windows (8 with --quick) of every suite scenario, over --draws draws
//         (8; 2 with --quick), rebalancing after every window on the last 4:
//         per family the time-averaged max/mean and the share of slots changed
//         per rebalance of each policy, then the drifting family in detail.
//
// Per-rank noise on global counts g[e] (the data has no per-source-rank
// split): rank r gets g[e] * w[r][e] / sum_r' w[r'][e] with
// w[r][e] = exp(0.3 * z), z ~ N(0, 1) independent per (layer, rank, expert),
// drawn from a std::mt19937_64 seeded with kNoiseSeed + the run's index in
// the sorted file list (+ 100 * the window for the timing windows), through
// Box-Muller. Each expert's total stays g[e]; planning and scoring runs get
// independent draws, so per-rank preferences do not persist.
//
// Prints Markdown tables; bench/planner/run.sh runs this with the replays and
// DeepSeek's Python reference, and bench/RESULTS.md keeps the numbers.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/plan/replay.hpp"
#include "moe_eplb/plan/scenario.hpp"
#include "moe_eplb/table.hpp"

namespace {

using namespace moe_eplb;

constexpr double kNoiseSigma = 0.3;
constexpr std::uint64_t kNoiseSeed = 20251127;
constexpr std::int64_t kPlanWindows = 4;  // windows 0..3 planned on, window 4 scored

double geomean(const std::vector<double>& values) {
  double log_sum = 0.0;
  for (double value : values) log_sum += std::log(value);
  return values.empty() ? std::nan("") : std::exp(log_sum / static_cast<double>(values.size()));
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// CPU time of the whole process, every thread's.
double process_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

// Medians of the wall-clock time and of the CPU time (all threads) of a run.
struct Timing {
  double wall = 0.0, cpu = 0.0;
};

// Medians of the wall-clock and CPU times (all threads) of each run, after a
// warm-up of each. The runs take turns, one repetition of each in every
// round, so that a slow spell of a shared machine falls on all of them.
std::vector<Timing> interleaved_medians(int repetitions,
                                        const std::vector<std::function<void()>>& runs) {
  for (const auto& run : runs) run();  // warm-up
  std::vector<std::vector<double>> wall(runs.size()), cpu(runs.size());
  for (int rep = 0; rep < repetitions; ++rep) {
    for (std::size_t r = 0; r < runs.size(); ++r) {
      const auto start = std::chrono::steady_clock::now();
      const double cpu_start = process_cpu_seconds();
      runs[r]();
      cpu[r].push_back(process_cpu_seconds() - cpu_start);
      wall[r].push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  std::vector<Timing> times;
  for (std::size_t r = 0; r < runs.size(); ++r) times.push_back({median(wall[r]), median(cpu[r])});
  return times;
}

// A plan must be valid: every slot used, no expert twice on a rank, and for
// moe-eplb in rank mode no dead replica. Baselines may leave dead replicas.
void check_plan(const LayeredTable& table, std::int64_t world_size, std::int64_t slots_per_rank,
                bool rank_reachability, const std::string& what) {
  for (std::int64_t layer = 0; layer < table.num_layers; ++layer) {
    ValidateTableOptions options;
    options.check_rank_mode_reachability = rank_reachability;
    const TableReport report =
        validate_table(table.layer(layer), world_size, world_size * slots_per_rank, options);
    if (!report.ok() || report.total_warnings != 0) {
      std::fprintf(stderr, "BAD plan (%s, layer %lld):\n%s", what.c_str(),
                   static_cast<long long>(layer), report.to_string().c_str());
      std::exit(1);
    }
  }
}

// ---------------------------------------------------------------- suite

struct Planner {
  const char* label;
  PlanAlgorithm algorithm;
};
constexpr Planner kPlanners[] = {{"moe-eplb", PlanAlgorithm::kRuleAware},
                                 {"DeepSeek", PlanAlgorithm::kDeepSeek},
                                 {"FlashLB", PlanAlgorithm::kFlashLB}};
constexpr std::size_t kNumPlanners = std::size(kPlanners);
constexpr BalanceMode kModes[] = {BalanceMode::kByRank, BalanceMode::kByToken};

// Bold the smallest of a row's values (within 0.0005).
std::string cells(const double* values, std::size_t n) {
  const double best = *std::min_element(values, values + n);
  std::string out;
  char text[32];
  for (std::size_t i = 0; i < n; ++i) {
    const bool bold = values[i] <= best + 5e-4;
    std::snprintf(text, sizeof(text), bold ? " **%.3f** |" : " %.3f |", values[i]);
    out += text;
  }
  return out;
}

// The suite's planners: the three of the timing table, plus moe-eplb fed the
// element-wise mean of the windows as one window (what it must never lose
// to beyond noise).
struct SuitePlanner {
  const char* label;
  PlanAlgorithm algorithm;
  bool mean_of_windows;
};
constexpr SuitePlanner kSuitePlanners[] = {{"moe-eplb", PlanAlgorithm::kRuleAware, false},
                                           {"moe-eplb-mean", PlanAlgorithm::kRuleAware, true},
                                           {"DeepSeek", PlanAlgorithm::kDeepSeek, false},
                                           {"FlashLB", PlanAlgorithm::kFlashLB, false}};
constexpr std::size_t kNumSuitePlanners = std::size(kSuitePlanners);
constexpr std::size_t kColumns = 2 * kNumSuitePlanners;  // (mode, planner)

ExpertLoad windows_mean(const std::vector<ExpertLoad>& windows) {
  ExpertLoad mean = windows.front();
  for (std::size_t v = 0; v < mean.counts.size(); ++v) {
    double sum = 0.0;
    for (const ExpertLoad& window : windows) sum += window.counts[v];
    mean.counts[v] = sum / static_cast<double>(windows.size());
  }
  return mean;
}

// Paired log ratios of moe-eplb against another planner, draw by draw.
struct Paired {
  std::vector<double> log_ratios;
  void add(double ours, double theirs) { log_ratios.push_back(std::log(ours / theirs)); }
  double mean() const {
    double sum = 0.0;
    for (double value : log_ratios) sum += value;
    return log_ratios.empty() ? 0.0 : sum / static_cast<double>(log_ratios.size());
  }
  double standard_error() const {
    const auto n = static_cast<double>(log_ratios.size());
    if (n < 2) return 0.0;
    double sq = 0.0;
    for (double value : log_ratios) sq += (value - mean()) * (value - mean());
    return std::sqrt(sq / (n - 1.0) / n);
  }
  int worse() const {
    int count = 0;
    for (double value : log_ratios) count += value > 5e-4;
    return count;
  }
  // "1.012 +- 0.004" (ratio and one standard error), "**" when beyond two.
  std::string text() const {
    char buffer[64];
    const double ratio = std::exp(mean());
    std::snprintf(buffer, sizeof(buffer), "%.4f +- %.4f%s", ratio, ratio * standard_error(),
                  beyond_noise() ? " **" : "");
    return buffer;
  }
  bool beyond_noise() const { return mean() > 2.0 * standard_error(); }
};

// One scenario of the suite is a generator; a single draw of an 8-expert
// scenario decides a comparison by luck (one draw's max/mean moves by 5-10%).
// Every scenario is therefore drawn `draws` times (scenario_draw(), draw 0
// being the scenario's own seed) and each column reports the geometric mean
// over the draws; moe-eplb is compared with DeepSeek and with itself fed the
// plain mean of the windows draw by draw (paired), with the standard error of
// the mean log ratio, per scenario and per family.
void run_suite(bool quick, int draws, std::FILE* per_draw) {
  std::printf(
      "## Multi-window suite: planned on windows 0-3, scored on window 4\n\n"
      "max/mean per-rank load of window 4's tokens routed through update_expert(), geometric "
      "mean over %d independent draws of each scenario (scenario_draw() k = 0..%d). moe-eplb is "
      "planned on the 4 windows for the mode it is scored in; 'mean' is the same planner fed "
      "the element-wise mean of the 4 windows as one window; DeepSeek and FlashLB plan on "
      "global counts. The last two columns pair rank-mode moe-eplb with DeepSeek and with "
      "'mean' draw by draw: the draws where moe-eplb is worse, and the mean max/mean ratio +- "
      "one standard error (** beyond two).%s\n\n",
      draws, draws - 1, quick ? " (--quick: at most 1024 tokens per rank)" : "");
  std::printf(
      "| family | scenario | E/K | EP x S | persist | drift | rank: moe-eplb | rank: mean | rank: "
      "DeepSeek | rank: FlashLB | token: moe-eplb | token: mean | token: DeepSeek | token: "
      "FlashLB | rank vs DeepSeek | rank vs mean |\n"
      "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  // Per family: each column's per-scenario means, and the paired comparisons
  // (mode x {vs DeepSeek, vs mean}) over every draw of the family.
  struct Family {
    std::vector<std::vector<double>> columns = std::vector<std::vector<double>>(kColumns);
    Paired versus[2][2];
  };
  std::vector<std::string> family_order;
  std::map<std::string, Family> families;
  Family all;
  std::vector<std::string> first_draw_losses;
  for (const ScenarioSpec& scenario : window_suite()) {
    if (!families.count(scenario.family)) family_order.push_back(scenario.family);
    Family& family = families[scenario.family];
    double log_sum[kColumns] = {};
    Paired versus[2][2];
    for (int draw = 0; draw < draws; ++draw) {
      ScenarioSpec spec = scenario_draw(scenario, draw);
      if (quick) spec.tokens_per_rank = std::min<std::int64_t>(spec.tokens_per_rank, 1024);
      const std::vector<ExpertLoad> windows = generate_windows(spec, 0, kPlanWindows);
      const std::vector<ExpertLoad> mean_window{windows_mean(windows)};
      const RoutingTrace scored = generate_trace(spec, kPlanWindows);
      double balance[kColumns];
      for (std::size_t m = 0; m < 2; ++m) {
        for (std::size_t p = 0; p < kNumSuitePlanners; ++p) {
          const SuitePlanner& planner = kSuitePlanners[p];
          const LayeredTable table =
              plan(planner.mean_of_windows ? mean_window : windows,
                   scenario_plan_options(spec, kModes[m], planner.algorithm));
          if (planner.algorithm != PlanAlgorithm::kDeepSeek) {
            check_plan(
                table, spec.world_size, spec.slots_per_rank,
                planner.algorithm == PlanAlgorithm::kRuleAware && kModes[m] == BalanceMode::kByRank,
                spec.name + " " + planner.label);
          }
          const std::size_t c = m * kNumSuitePlanners + p;
          balance[c] =
              analyze_trace(table.layer(0), scored, scenario_analyze_options(spec, kModes[m]))
                  .max_over_mean;
          log_sum[c] += std::log(balance[c]);
          if (per_draw != nullptr) {
            std::fprintf(per_draw, "%s,%d,%s,%s,%.9f\n", scenario.name.c_str(), draw,
                         m == 0 ? "rank" : "token", planner.label, balance[c]);
          }
        }
        const double ours = balance[m * kNumSuitePlanners];
        for (std::size_t k = 0; k < 2; ++k) {
          // k = 0: against DeepSeek (planner 2), k = 1: against the mean (planner 1).
          const double theirs = balance[m * kNumSuitePlanners + (k == 0 ? 2 : 1)];
          versus[m][k].add(ours, theirs);
          family.versus[m][k].add(ours, theirs);
          all.versus[m][k].add(ours, theirs);
        }
      }
      if (draw == 0 && balance[0] > balance[2] + 5e-4) first_draw_losses.push_back(scenario.name);
    }
    double balance[kColumns];
    for (std::size_t c = 0; c < kColumns; ++c) {
      balance[c] = std::exp(log_sum[c] / draws);
      family.columns[c].push_back(balance[c]);
      all.columns[c].push_back(balance[c]);
    }
    const std::string shape = scenario.name.substr(scenario.family.size() + 1);
    std::printf(
        "| %s | %s | %lld/%lld | %lld x %lld | %.1f | %.2f |%s%s %d/%d, %s | %d/%d, %s |\n",
        scenario.family.c_str(), shape.c_str(), static_cast<long long>(scenario.num_experts),
        static_cast<long long>(scenario.top_k), static_cast<long long>(scenario.world_size),
        static_cast<long long>(scenario.slots_per_rank), scenario.rank_persistence, scenario.drift,
        cells(balance, kNumSuitePlanners).c_str(),
        cells(balance + kNumSuitePlanners, kNumSuitePlanners).c_str(), versus[0][0].worse(), draws,
        versus[0][0].text().c_str(), versus[0][1].worse(), draws, versus[0][1].text().c_str());
    std::fflush(stdout);
  }
  std::printf(
      "\nGeometric means over each family's scenarios:\n\n| family | rank: moe-eplb | rank: "
      "mean | rank: DeepSeek | rank: FlashLB | token: moe-eplb | token: mean | token: DeepSeek "
      "| token: FlashLB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  const auto print_means = [](const std::string& name, const Family& family) {
    double means[kColumns];
    for (std::size_t c = 0; c < kColumns; ++c) means[c] = geomean(family.columns[c]);
    std::printf("| %s |%s%s\n", name.c_str(), cells(means, kNumSuitePlanners).c_str(),
                cells(means + kNumSuitePlanners, kNumSuitePlanners).c_str());
  };
  for (const std::string& name : family_order) print_means(name, families[name]);
  print_means("**all " + std::to_string(all.columns[0].size()) + "**", all);
  std::printf(
      "\nPer family, moe-eplb against DeepSeek and against itself fed the plain mean of the "
      "windows, paired over every draw of the family's scenarios: geometric mean of the "
      "max/mean ratio +- one standard error (** worse by more than two):\n\n| family | draws | "
      "rank: vs DeepSeek | rank: vs mean | token: vs DeepSeek | token: vs mean |\n"
      "|---|---:|---:|---:|---:|---:|\n");
  std::vector<std::string> beyond_noise;
  for (const std::string& name : family_order) {
    const Family& family = families[name];
    std::printf("| %s | %zu | %s | %s | %s | %s |\n", name.c_str(),
                family.versus[0][0].log_ratios.size(), family.versus[0][0].text().c_str(),
                family.versus[0][1].text().c_str(), family.versus[1][0].text().c_str(),
                family.versus[1][1].text().c_str());
    for (std::size_t m = 0; m < 2; ++m) {
      for (std::size_t k = 0; k < 2; ++k) {
        if (family.versus[m][k].beyond_noise()) {
          beyond_noise.push_back(name + (m == 0 ? " rank" : " token") +
                                 (k == 0 ? " vs DeepSeek" : " vs mean"));
        }
      }
    }
  }
  std::string losses;
  for (const std::string& loss : beyond_noise) losses += (losses.empty() ? "" : ", ") + loss;
  std::string first;
  for (const std::string& name : first_draw_losses) first += (first.empty() ? "" : ", ") + name;
  std::printf(
      "\nfamilies where moe-eplb loses by more than two standard errors: %s\n"
      "(rank mode, worse than DeepSeek on draw k = 0 alone, the single draw of earlier runs: "
      "%s)\n\n",
      losses.empty() ? "none" : losses.c_str(), first.empty() ? "none" : first.c_str());
}

// ---------------------------------------------------------------- real data

struct RealRun {
  std::string name;
  std::vector<std::vector<double>> counts;  // [61][256]
};

std::vector<RealRun> read_runs(const std::string& dir) {
  std::vector<std::string> paths;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() == ".json" && name.rfind("prefill_", 0) == 0) {
      paths.push_back(entry.path().string());
    }
  }
  std::sort(paths.begin(), paths.end());
  MOE_EPLB_CHECK(!paths.empty(), "bench: no prefill_*.json files in ", dir);
  std::vector<RealRun> runs;
  for (const std::string& path : paths) {
    std::ifstream file(path);
    MOE_EPLB_CHECK(file.good(), "bench: cannot read ", path);
    const nlohmann::json json = nlohmann::json::parse(file);
    RealRun run;
    run.name = std::filesystem::path(path).stem().string();
    run.counts = json.at("logical_count").get<std::vector<std::vector<double>>>();
    MOE_EPLB_CHECK(run.counts.size() == 61 && run.counts[0].size() == 256, "bench: ", path,
                   " is not [61][256]");
    runs.push_back(std::move(run));
  }
  return runs;
}

// Box-Muller on a std::mt19937_64: the same draws on every platform.
double normal(std::mt19937_64& rng) {
  const double u = (static_cast<double>(rng() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
  const double v = static_cast<double>(rng() >> 11) * 0x1.0p-53;
  return std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * 3.14159265358979323846 * v);
}

// Layers [first, last) of `run` as (L, W, E) per-rank counts with seeded noise,
// or (L, 1, E) global counts when world_size is 0.
ExpertLoad real_load(const RealRun& run, std::int64_t first, std::int64_t last,
                     std::int64_t world_size, std::uint64_t seed) {
  ExpertLoad load;
  load.num_layers = last - first;
  load.num_source_ranks = world_size > 0 ? world_size : 1;
  load.num_experts = 256;
  load.counts.assign(static_cast<std::size_t>(load.num_layers * load.num_source_ranks * 256), 0.0);
  std::mt19937_64 rng(seed);
  std::vector<double> weight(static_cast<std::size_t>(load.num_source_ranks * 256));
  for (std::int64_t layer = first; layer < last; ++layer) {
    const std::vector<double>& global = run.counts[static_cast<std::size_t>(layer)];
    double* out = load.layer(layer - first);
    if (world_size == 0) {
      std::copy(global.begin(), global.end(), out);
      continue;
    }
    for (double& w : weight) w = std::exp(kNoiseSigma * normal(rng));
    for (std::int64_t e = 0; e < 256; ++e) {
      double total = 0.0;
      for (std::int64_t r = 0; r < world_size; ++r) total += weight[r * 256 + e];
      for (std::int64_t r = 0; r < world_size; ++r) {
        out[r * 256 + e] = global[e] * weight[r * 256 + e] / total;
      }
    }
  }
  return load;
}

double mean_balance(const LayeredTable& table, const ExpertLoad& load,
                    const AnalyzeOptions& options) {
  return analyze_layers(table, load, options).mean;
}

struct RealConfig {
  std::int64_t world_size, slots_per_rank;
};

void run_real(const std::vector<RealRun>& runs) {
  std::printf(
      "## Real DeepSeek-V3 statistics (SGLang prefill runs), planned on one run, scored on the "
      "next\n\n"
      "58 MoE layers (3..60) x 256 experts, 8 ranks per node, 8 expert groups (DeepSeek's "
      "hierarchical policy). Per-rank noise sigma %.1f on both runs, independent draws. "
      "max/mean per-rank load, mean over the layers; rank mode unless marked.\n\n",
      kNoiseSigma);
  for (const RealConfig config : {RealConfig{32, 9}, RealConfig{64, 5}}) {
    std::printf(
        "EP %lld x %lld slots:\n\n| plan on | score on | moe-eplb rank | DeepSeek hier. rank | "
        "FlashLB rank | moe-eplb (global counts) rank | moe-eplb token | DeepSeek token |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|\n",
        static_cast<long long>(config.world_size), static_cast<long long>(config.slots_per_rank));
    std::vector<std::vector<double>> columns(6);
    for (std::size_t i = 0; i < runs.size(); ++i) {
      const std::size_t j = (i + 1) % runs.size();
      const ExpertLoad planned = real_load(runs[i], 3, 61, config.world_size, kNoiseSeed + i);
      const ExpertLoad global = real_load(runs[i], 3, 61, 0, 0);
      const ExpertLoad scored = real_load(runs[j], 3, 61, config.world_size, kNoiseSeed + j);
      PlanOptions options;
      options.world_size = config.world_size;
      options.slots_per_rank = config.slots_per_rank;
      options.ranks_per_node = 8;
      options.num_groups = 8;
      AnalyzeOptions analyze;
      analyze.world_size = config.world_size;
      analyze.slots_per_rank = config.slots_per_rank;
      analyze.ranks_per_node = 8;
      AnalyzeOptions analyze_token = analyze;
      analyze_token.rule = ReplicaRule::kAscendToken;

      PlanOptions deepseek = options, flashlb = options, token = options;
      deepseek.algorithm = PlanAlgorithm::kDeepSeek;
      flashlb.algorithm = PlanAlgorithm::kFlashLB;
      token.rule = ReplicaRule::kAscendToken;
      const LayeredTable ours = plan(planned, options);
      const LayeredTable ours_global = plan(global, options);
      const LayeredTable theirs = plan(planned, deepseek);
      const LayeredTable flash = plan(planned, flashlb);
      const LayeredTable ours_token = plan(planned, token);
      check_plan(ours, config.world_size, config.slots_per_rank, true, "real moe-eplb");
      check_plan(flash, config.world_size, config.slots_per_rank, false, "real FlashLB");
      const double values[6] = {mean_balance(ours, scored, analyze),
                                mean_balance(theirs, scored, analyze),
                                mean_balance(flash, scored, analyze),
                                mean_balance(ours_global, scored, analyze),
                                mean_balance(ours_token, scored, analyze_token),
                                mean_balance(theirs, scored, analyze_token)};
      for (std::size_t c = 0; c < 6; ++c) columns[c].push_back(values[c]);
      std::printf("| %s | %s |%s %.3f | %.3f |\n", runs[i].name.c_str(), runs[j].name.c_str(),
                  cells(values, 4).c_str(), values[4], values[5]);
      std::fflush(stdout);
    }
    double means[6];
    for (std::size_t c = 0; c < 6; ++c) means[c] = geomean(columns[c]);
    std::printf("| **geometric mean** | |%s %.3f | %.3f |\n", cells(means, 4).c_str(), means[4],
                means[5]);
    const auto [low, high] = std::minmax_element(columns[0].begin(), columns[0].end());
    const auto [dlow, dhigh] = std::minmax_element(columns[1].begin(), columns[1].end());
    std::printf("\nrank mode range: moe-eplb %.3f-%.3f, DeepSeek hierarchical %.3f-%.3f\n\n", *low,
                *high, *dlow, *dhigh);
  }
}

// ---------------------------------------------------------------- timing

void run_timing(const std::vector<RealRun>& runs, bool quick) {
  const int repetitions = quick ? 3 : 31;
  const RealRun& run = runs.front();
  const unsigned hardware = std::max(1u, std::thread::hardware_concurrency());
  std::printf(
      "## Planning time (median of %d, after a warm-up), %s\n\nWall clock (CPU time of all "
      "threads); every planner on one thread (PlanOptions::threads = 1), and moe-eplb on %u "
      "(threads = 0, one per hardware thread). The planners take turns, one run each per "
      "round.\n\n| input | moe-eplb | moe-eplb, %u threads | "
      "DeepSeek (C++) | FlashLB |\n|---|---:|---:|---:|---:|\n",
      repetitions, run.name.c_str(), hardware, hardware);
  // Median times of every planner on `windows`, one table row; the first
  // planner's (moe-eplb's) plan is checked, and is the same on every thread count.
  const auto time_planners = [&](const std::vector<ExpertLoad>& windows, const PlanOptions& options,
                                 const char* label) {
    std::vector<PlanOptions> configs;
    for (std::size_t p = 0; p < kNumPlanners; ++p) {
      for (const std::int64_t threads : {1, 0}) {
        if (threads == 0 && p != 0) continue;
        PlanOptions o = options;
        o.algorithm = kPlanners[p].algorithm;
        o.threads = threads;
        configs.push_back(o);
      }
    }
    const LayeredTable first = plan(windows, configs[0]);
    check_plan(first, options.world_size, options.slots_per_rank, true, label);
    MOE_EPLB_CHECK(plan(windows, configs[1]).values == first.values,
                   "bench: threads changed the plan of ", label);
    std::vector<std::function<void()>> planners;
    for (const PlanOptions& o : configs) {
      planners.emplace_back([&windows, o] { plan(windows, o); });
    }
    const std::vector<Timing> times = interleaved_medians(repetitions, planners);
    std::printf("| %s |", label);
    for (const Timing& time : times)
      std::printf(" %.1f ms (%.1f) |", time.wall * 1e3, time.cpu * 1e3);
    std::printf("\n");
  };
  PlanOptions options;
  options.ranks_per_node = 8;
  options.num_groups = 8;
  {
    // 61 layers (0-2 dense: all zero) x 256, EP 64 x 5 slots, 4 noisy windows.
    std::vector<ExpertLoad> windows;
    for (std::uint64_t w = 0; w < 4; ++w) {
      windows.push_back(real_load(run, 0, 61, 64, kNoiseSeed + 100 * (w + 1)));
    }
    options.world_size = 64;
    options.slots_per_rank = 5;
    time_planners(windows, options, "61 layers x 256, EP 64 x 5, 4 windows of per-rank counts");
  }
  {
    const ExpertLoad global = real_load(run, 3, 61, 0, 0);
    options.world_size = 32;
    options.slots_per_rank = 9;
    time_planners({global}, options, "58 layers x 256, EP 32 x 9, global counts");
    std::printf("\n");
    // The even-split balance DeepSeek's own model predicts, to check this
    // implementation against the Python reference (same number there).
    PlanOptions deepseek = options;
    deepseek.algorithm = PlanAlgorithm::kDeepSeek;
    AnalyzeOptions analyze;
    analyze.world_size = 32;
    analyze.slots_per_rank = 9;
    analyze.rule = ReplicaRule::kAscendToken;
    std::printf(
        "DeepSeek (C++), 58 x 256, EP 32 x 9: mean over layers of max/mean per-GPU load under "
        "an even split over replicas = %.4f\n\n",
        mean_balance(plan(global, deepseek), global, analyze));
  }
}

// ---------------------------------------------------------------- replays

// One policy over a scenario's draws: time-averaged max/mean (geometric mean
// over the draws), slots changed per rebalance and experts received (means),
// and the largest change of any draw.
struct PolicySummary {
  std::string name;
  double balance = 0.0;
  double slots_changed = std::nan("");
  double max_slots_changed = std::nan("");
  double received = 0.0;
};

std::vector<PolicySummary> replay_scenario(const ScenarioSpec& scenario, std::int64_t num_windows,
                                           int draws) {
  std::vector<PolicySummary> summary;
  for (int draw = 0; draw < draws; ++draw) {
    const ScenarioSpec spec = scenario_draw(scenario, draw);
    ReplayOptions options;
    options.topology = {spec.world_size, spec.slots_per_rank, spec.ranks_per_node};
    options.max_moves = spec.world_size * spec.slots_per_rank / 10;
    const ReplayResult result = replay(generate_windows(spec, 0, num_windows), options,
                                       default_replay_policies(options.max_moves));
    summary.resize(result.policies.size());
    for (std::size_t p = 0; p < result.policies.size(); ++p) {
      const PolicyReplay& replayed = result.policies[p];
      PolicySummary& entry = summary[p];
      entry.name = replayed.policy.name;
      entry.balance += std::log(mean_of(replayed.balance)) / draws;
      const double changed = mean_of(replayed.slots_changed);
      entry.slots_changed = std::isfinite(changed)
                                ? (draw == 0 ? 0.0 : entry.slots_changed) + changed / draws
                                : std::nan("");
      entry.max_slots_changed =
          std::isfinite(changed)
              ? std::max(draw == 0 ? 0.0 : entry.max_slots_changed, max_of(replayed.slots_changed))
              : std::nan("");
      for (const double received : replayed.received) {
        if (std::isfinite(received)) entry.received += received / draws;
      }
    }
  }
  for (PolicySummary& entry : summary) entry.balance = std::exp(entry.balance);
  return summary;
}

void run_replays(bool quick, int draws) {
  const std::int64_t num_windows = quick ? 8 : 16;
  std::printf(
      "## Replays: %lld windows of every suite scenario, %d draws each, rebalancing after every "
      "window on the last 4\n\n"
      "replay() (plan/replay.hpp; `moe-eplb replay --scenario NAME --draw K` prints the same), "
      "rank mode: each policy is scored on the next window; moe-eplb-capped plans against the "
      "table in force with max_moves = 10%% of the slots. Time-averaged max/mean over windows "
      "1..%lld, geometric mean over the draws; slots changed per rebalance, of W x S, mean over "
      "the draws (max: the largest).\n\n",
      static_cast<long long>(num_windows), draws, static_cast<long long>(num_windows - 1));
  std::map<std::string, std::vector<std::pair<double, std::vector<PolicySummary>>>> by_family;
  std::vector<std::string> family_order;  // as the suite lists them
  for (const ScenarioSpec& scenario : window_suite()) {
    const double slots = static_cast<double>(scenario.world_size * scenario.slots_per_rank);
    if (!by_family.count(scenario.family)) family_order.push_back(scenario.family);
    by_family[scenario.family].emplace_back(slots, replay_scenario(scenario, num_windows, draws));
  }
  const std::vector<PolicySummary>& any = by_family.begin()->second.front().second;
  std::printf(
      "Per family: geometric mean of the time-averaged max/mean, and the mean share of slots "
      "changed per rebalance.\n\n| family |");
  for (const PolicySummary& policy : any) std::printf(" %s |", policy.name.c_str());
  std::printf("\n|---|");
  for (std::size_t p = 0; p < any.size(); ++p) std::printf("---:|");
  std::printf("\n");
  for (const std::string& family : family_order) {
    const auto& members = by_family[family];
    std::printf("| %s |", family.c_str());
    for (std::size_t p = 0; p < any.size(); ++p) {
      std::vector<double> balance, shares;
      for (const auto& [slots, summary] : members) {
        balance.push_back(summary[p].balance);
        if (std::isfinite(summary[p].slots_changed)) {
          shares.push_back(summary[p].slots_changed / slots);
        }
      }
      std::printf(" %.3f", geomean(balance));
      if (!shares.empty()) std::printf(", %.0f%% moved", 100.0 * mean_of(shares));
      std::printf(" |");
    }
    std::printf("\n");
  }
  std::printf(
      "\nDrifting family in detail:\n\n| scenario | policy | time-avg max/mean | vs moe-eplb "
      "from scratch | slots changed per rebalance (mean) | max | experts received |\n"
      "|---|---|---:|---:|---:|---:|---:|\n");
  std::vector<double> ratios, shares;
  double worst_share = 0.0;
  std::size_t member = 0;
  for (const ScenarioSpec& scenario : window_suite()) {
    if (scenario.family != "drifting") continue;
    const auto& [slots, summary] = by_family["drifting"][member++];
    const auto find = [&](const char* name) {
      return *std::find_if(summary.begin(), summary.end(),
                           [&](const PolicySummary& entry) { return entry.name == name; });
    };
    const double scratch = find("moe-eplb").balance;
    for (const PolicySummary& policy : summary) {
      char moved[48] = "-", most[24] = "-";
      if (std::isfinite(policy.slots_changed)) {
        std::snprintf(moved, sizeof(moved), "%.1f (%.1f%%)", policy.slots_changed,
                      100.0 * policy.slots_changed / slots);
        std::snprintf(most, sizeof(most), "%.0f", policy.max_slots_changed);
      }
      std::printf("| %s | %s | %.4f | %+.1f%% | %s | %s | %.0f |\n",
                  scenario.name.substr(std::strlen("drifting-")).c_str(), policy.name.c_str(),
                  policy.balance, 100.0 * (policy.balance / scratch - 1.0), moved, most,
                  policy.received);
    }
    const PolicySummary capped = find("moe-eplb-capped");
    ratios.push_back(capped.balance / scratch);
    shares.push_back(capped.slots_changed / slots);
    worst_share = std::max(worst_share, capped.max_slots_changed / slots);
  }
  std::printf(
      "\nDrifting, moe-eplb-capped against moe-eplb from scratch: time-averaged max/mean "
      "%+.2f%% (geometric mean), worst scenario %+.2f%%; slots changed per rebalance %.1f%% on "
      "average, at most %.1f%%\n\n",
      100.0 * (geomean(ratios) - 1.0),
      100.0 * (*std::max_element(ratios.begin(), ratios.end()) - 1.0), 100.0 * mean_of(shares),
      100.0 * worst_share);
}

}  // namespace

int main(int argc, char** argv) {
  std::string data_dir;
  bool quick = false;
  int draws = 0;  // per suite scenario; 0 = 32 (4 with --quick)
  const char* per_draw_path = nullptr;
  std::vector<std::string> sections;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--draws") == 0 && i + 1 < argc) {
      draws = std::atoi(argv[++i]);
      if (draws < 1) {
        std::fprintf(stderr, "--draws must be >= 1, got %s\n", argv[i]);
        return 1;
      }
    } else if (std::strcmp(argv[i], "--per-draw") == 0 && i + 1 < argc) {
      per_draw_path = argv[++i];
    } else if (std::strcmp(argv[i], "--data") == 0 && i + 1 < argc) {
      data_dir = argv[++i];
    } else if (std::strcmp(argv[i], "--list") == 0) {  // the suite's names, for run.sh
      for (const ScenarioSpec& spec : window_suite()) std::printf("%s\n", spec.name.c_str());
      return 0;
    } else if (std::strcmp(argv[i], "--section") == 0 && i + 1 < argc) {
      sections.push_back(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: %s [--data DIR] [--quick] [--draws N] [--per-draw CSV] [--section "
                   "suite|real|timing|replay]... "
                   "| --list\n",
                   argv[0]);
      return 2;
    }
  }
  if (sections.empty()) sections = {"suite", "real", "timing", "replay"};
  const auto wants = [&](const char* name) {
    return std::find(sections.begin(), sections.end(), name) != sections.end();
  };
  try {
    if (wants("suite")) {
      std::FILE* per_draw = nullptr;
      if (per_draw_path != nullptr) {
        per_draw = std::fopen(per_draw_path, "w");
        MOE_EPLB_CHECK(per_draw != nullptr, "bench: cannot write ", per_draw_path);
        std::fprintf(per_draw, "scenario,draw,mode,planner,max_over_mean\n");
      }
      run_suite(quick, draws > 0 ? draws : (quick ? 4 : 32), per_draw);
      if (per_draw != nullptr) std::fclose(per_draw);
    }
    if (wants("replay")) run_replays(quick, draws > 0 ? draws : (quick ? 2 : 8));
    if (wants("real") || wants("timing")) {
      if (data_dir.empty()) {
        std::printf("(real data and timing skipped: no --data DIR)\n");
        return 0;
      }
      const std::vector<RealRun> runs = read_runs(data_dir);
      if (wants("real")) run_real(runs);
      if (wants("timing")) run_timing(runs, quick);
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "bench: %s\n", error.what());
    return 1;
  }
  return 0;
}

// moe-eplb record: routing traces in, per-source-rank load statistics out,
// counted by the operator's own load recording (active_mask honoured).
#include <cstdio>
#include <memory>
#include <string>

#include "commands.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/load.hpp"
#include "options.hpp"
#include "plan_io.hpp"

namespace moe_eplb::cli {
namespace {

struct RecordOptions {
  std::string expert_ids_path;
  std::string active_mask_path;
  std::int64_t num_experts = 0;
  std::string out_path;
};

void run_record(const RecordOptions& options) {
  const RoutingTrace trace =
      load_trace("--expert-ids", options.expert_ids_path, options.active_mask_path);
  check_trace_experts("--expert-ids", options.expert_ids_path, trace, options.num_experts,
                      "--num-experts");
  LoadRecorder recorder(1, trace.world_size, options.num_experts);
  recorder.record(0, trace);
  const ExpertLoad& load = recorder.load();
  const std::vector<std::int64_t> counts(load.counts.begin(), load.counts.end());
  write_outputs({{options.out_path, int64_file({trace.world_size, options.num_experts}, counts)}});
  std::int64_t total = 0;
  for (std::int64_t count : counts) total += count;
  std::printf(
      "recorded %lld routed choices from %lld ranks x %lld tokens x top-%lld%s\n"
      "wrote %s: int64 (%lld, %lld) tokens per source rank and expert\n",
      static_cast<long long>(total), static_cast<long long>(trace.world_size),
      static_cast<long long>(trace.tokens_per_rank), static_cast<long long>(trace.top_k),
      trace.active_mask.empty() ? "" : " (inactive tokens skipped)", options.out_path.c_str(),
      static_cast<long long>(trace.world_size), static_cast<long long>(options.num_experts));
}

}  // namespace

void add_record_command(CLI::App& app) {
  auto options = std::make_shared<RecordOptions>();
  CLI::App* command = app.add_subcommand(
      "record", "Count expert loads per source rank from routing traces (input for plan)");
  command
      ->add_option("--expert-ids", options->expert_ids_path,
                   "(W, BS, K) .npy of logical expert ids per source rank")
      ->required();
  command->add_option("--active-mask", options->active_mask_path,
                      "(W, BS) bool .npy: tokens to count");
  command->add_option("--num-experts", options->num_experts, "E, logical experts")
      ->required()
      ->check(in_range(1, kMaxLoadExperts));
  command->add_option("--out", options->out_path, "write the (W, E) int64 load .npy here")
      ->required();
  command->callback([options] { run_record(*options); });
}

}  // namespace moe_eplb::cli

// moe-eplb map: run the operator on .npy files.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "commands.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/npy.hpp"
#include "moe_eplb/update_expert.hpp"
#include "options.hpp"

namespace moe_eplb::cli {
namespace {

struct MapOptions {
  std::string expert_ids_path;
  std::string table_path;
  std::int64_t local_rank_id = 0;
  std::int64_t world_size = 0;
  std::int64_t balance_mode = 0;
  std::int64_t num_physical_experts = -1;
  std::string profile = "native";
  std::string out_path;
  std::int64_t print_rows = 16;
};

template <typename T>
void print_mapping(const LoadedIds& ids, const T* balanced, std::int64_t max_rows) {
  const ExpertIdsView& view = ids.view;
  const std::int64_t rows = std::min(view.num_tokens, max_rows);
  for (std::int64_t token = 0; token < rows; ++token) {
    std::string logical, physical;
    for (std::int64_t k = 0; k < view.top_k; ++k) {
      const T* in = static_cast<const T*>(view.data);
      logical += (k ? " " : "") + std::to_string(in[token * view.token_stride + k * view.k_stride]);
      physical += (k ? " " : "") + std::to_string(balanced[token * view.top_k + k]);
    }
    std::printf("  token %4lld: logical [%s] -> physical [%s]\n", static_cast<long long>(token),
                logical.c_str(), physical.c_str());
  }
  if (rows < view.num_tokens) {
    std::printf("  ... %lld more tokens (use --out to save them all)\n",
                static_cast<long long>(view.num_tokens - rows));
  }
}

void run_map(const MapOptions& options) {
  const LoadedIds ids = load_expert_ids("--expert-ids", options.expert_ids_path);
  const LoadedTable table = load_table("--table", options.table_path);

  UpdateExpertParams params;
  params.local_rank_id = options.local_rank_id;
  params.world_size = options.world_size;
  params.balance_mode = static_cast<BalanceMode>(options.balance_mode);
  params.num_physical_experts = options.num_physical_experts;
  params.profile = parse_limit_profile(options.profile);

  npy::Array out;
  out.dtype = ids.view.dtype == Dtype::kInt32 ? Dtype::kInt32 : Dtype::kInt64;
  out.shape = {ids.view.num_tokens, ids.view.top_k};
  out.bytes.resize(static_cast<std::size_t>(out.num_elements()) * element_size(out.dtype));
  update_expert(ids.view, table.view, params, out.bytes.data());

  std::printf(
      "mapped %lld tokens x top-%lld on rank %lld of %lld (balance_mode %lld, %s profile)\n",
      static_cast<long long>(ids.view.num_tokens), static_cast<long long>(ids.view.top_k),
      static_cast<long long>(options.local_rank_id), static_cast<long long>(options.world_size),
      static_cast<long long>(options.balance_mode), options.profile.c_str());
  if (!options.out_path.empty()) {
    npy::save(options.out_path, out);
    std::printf("wrote %s (%s, shape (%lld, %lld))\n", options.out_path.c_str(),
                to_string(out.dtype).c_str(), static_cast<long long>(out.shape[0]),
                static_cast<long long>(out.shape[1]));
  }
  if (options.out_path.empty() || options.print_rows > 0) {
    if (ids.view.dtype == Dtype::kInt32) {
      print_mapping(ids, out.data<std::int32_t>(), options.print_rows);
    } else {
      print_mapping(ids, out.data<std::int64_t>(), options.print_rows);
    }
  }
}

}  // namespace

void add_map_command(CLI::App& app) {
  auto options = std::make_shared<MapOptions>();
  CLI::App* map = app.add_subcommand(
      "map", "Map logical expert ids to the slots of their replicas with an EPLB table");
  map->add_option("--expert-ids", options->expert_ids_path,
                  "(BS, K) int32/int64 .npy of logical expert ids")
      ->required();
  map->add_option("--table", options->table_path, "(E, F) int32 .npy EPLB table")->required();
  map->add_option("--rank", options->local_rank_id, "local_rank_id of this rank")
      ->required()
      ->check(in_range(0));
  map->add_option("--world-size", options->world_size, "EP group size")
      ->required()
      ->check(in_range(1));
  map->add_option("--balance-mode", options->balance_mode,
                  "0 = by rank, 1 = by token, 2 = vLLM's token hash (native profile)")
      ->check(in_range(0, 2))
      ->capture_default_str();
  map->add_option("--num-physical", options->num_physical_experts,
                  "physical slots (world_size * slots_per_rank); -1 = not checked exactly")
      ->check(in_range_or(-1, "not checked exactly", 1))
      ->capture_default_str();
  map->add_option("--profile", options->profile, "limit profile: native, ascend, ascend_seed")
      ->capture_default_str();
  map->add_option("--out", options->out_path, "write balanced ids here (.npy, same dtype)");
  map->add_option("--print-rows", options->print_rows,
                  "tokens to print (default 16; 0 with --out prints none)")
      ->check(in_range(0))
      ->capture_default_str();
  map->callback([options] { run_map(*options); });
}

}  // namespace moe_eplb::cli

// moe-eplb convert: the Ascend eplb_table <-> DeepSeek/vLLM phy2log,
// log2phy + logcnt, SGLang's logical-to-all-physical map.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include "commands.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/plan/convert.hpp"
#include "options.hpp"
#include "plan_io.hpp"

namespace moe_eplb::cli {
namespace {

constexpr const char* kConvert = "convert()";

struct ConvertOptions {
  std::string from;
  std::string to;
  std::string in_path;
  std::string logcnt_path;
  std::string out_path;
  std::string logcnt_out_path;
  std::int64_t num_experts = 0;
  std::int64_t num_physical = 0;
  std::int64_t num_columns = 0;
  std::int64_t max_replicas = 0;
  bool sort_replicas = false;
};

// The layers of the input, as replica slots, and whether it had a layer dim.
struct Layers {
  std::vector<ReplicaSlots> slots;
  bool layered = false;
};

// Splits (..., inner) integers into layers of `inner_dims` dimensions.
std::int64_t num_layers_of(const LoadedIntegers& array, std::size_t inner_dims,
                           const std::string& flag, const char* expected) {
  const std::size_t dims = array.shape.size();
  MOE_EPLB_CHECK(dims == inner_dims || dims == inner_dims + 1, kConvert, ": ", flag, " must be ",
                 expected, " or with a leading layer dimension, got a ", dims, "-D array");
  return dims == inner_dims ? 1 : array.shape[0];
}

Layers read_input(const ConvertOptions& options) {
  Layers layers;
  if (options.from == "ascend") {
    const LoadedTables loaded = load_layered_table("--in", options.in_path);
    for (std::int64_t l = 0; l < loaded.table.num_layers; ++l) {
      layers.slots.push_back(slots_from_table(loaded.table.layer(l)));
    }
    layers.layered = loaded.per_layer_file;
    return layers;
  }
  const LoadedIntegers in = load_integers("--in", options.in_path);
  if (options.from == "phy2log") {
    const std::int64_t num_layers = num_layers_of(in, 1, "--in", "phy2log (N,)");
    const std::int64_t num_physical = in.shape.back();
    std::int64_t num_experts = options.num_experts;
    if (num_experts == 0) {
      num_experts = 1 + *std::max_element(in.values.begin(), in.values.end());
    }
    for (std::int64_t l = 0; l < num_layers; ++l) {
      layers.slots.push_back(
          slots_from_phy2log(in.values.data() + l * num_physical, num_physical, num_experts));
    }
    layers.layered = in.shape.size() == 2;
    return layers;
  }
  // log2phy (+ logcnt) or SGLang's map.
  const bool sglang = options.from == "sglang";
  const std::int64_t num_layers = num_layers_of(in, 2, "--in", "(E, R)");
  const std::int64_t num_experts = in.shape[in.shape.size() - 2];
  const std::int64_t max_replicas = in.shape.back();
  LoadedIntegers logcnt;
  if (!sglang) {
    MOE_EPLB_CHECK(!options.logcnt_path.empty(), kConvert,
                   ": --from log2phy needs --logcnt (the replica count of each expert)");
    logcnt = load_integers("--logcnt", options.logcnt_path);
    MOE_EPLB_CHECK(static_cast<std::int64_t>(logcnt.values.size()) == num_layers * num_experts,
                   kConvert, ": --logcnt has ", logcnt.values.size(), " values, expected ",
                   num_layers * num_experts, " (one per layer and expert)");
  }
  for (std::int64_t l = 0; l < num_layers; ++l) {
    layers.slots.push_back(slots_from_log2phy(
        in.values.data() + l * num_experts * max_replicas, num_experts, max_replicas,
        sglang ? nullptr : logcnt.values.data() + l * num_experts));
  }
  layers.layered = in.shape.size() == 3;
  return layers;
}

void run_convert(const ConvertOptions& options) {
  MOE_EPLB_CHECK(options.from != options.to, kConvert, ": --from and --to are both ", options.from);
  const Layers layers = read_input(options);
  const auto num_layers = static_cast<std::int64_t>(layers.slots.size());
  const std::int64_t num_experts = static_cast<std::int64_t>(layers.slots[0].size());
  const auto with_layers = [&](std::vector<std::int64_t> shape) {
    if (layers.layered) shape.insert(shape.begin(), num_layers);
    return shape;
  };

  if (options.to == "ascend") {
    const LayeredTable table = make_layered_table(layers.slots, options.num_columns);
    save_layered_table(options.out_path, table, !layers.layered);
    std::printf("wrote %s: eplb_table, %lld layer(s) x %lld experts x %lld columns\n",
                options.out_path.c_str(), static_cast<long long>(num_layers),
                static_cast<long long>(num_experts), static_cast<long long>(table.num_columns));
  } else if (options.to == "phy2log") {
    for (const ReplicaSlots& slots : layers.slots) {
      const std::int64_t unordered = options.sort_replicas ? -1 : first_unordered_expert(slots);
      MOE_EPLB_CHECK(unordered < 0, kConvert, ": --in ", options.in_path, ": ",
                     describe_replica_order(slots, unordered),
                     "; phy2log keeps no replica order, and the order is the routing. Pass "
                     "--sort-replicas to accept ascending order, or convert to log2phy, which "
                     "keeps it");
    }
    std::int64_t num_physical = options.num_physical;
    if (num_physical == 0) {  // the largest slot + 1
      for (const ReplicaSlots& slots : layers.slots) {
        for (const auto& replicas : slots) {
          for (std::int32_t slot : replicas)
            num_physical = std::max<std::int64_t>(num_physical, slot + 1);
        }
      }
    }
    std::vector<std::int64_t> values;
    for (const ReplicaSlots& slots : layers.slots) {
      const std::vector<std::int64_t> phy2log =
          slots_to_phy2log(slots, num_physical, options.sort_replicas);
      values.insert(values.end(), phy2log.begin(), phy2log.end());
    }
    write_outputs({{options.out_path, int64_file(with_layers({num_physical}), values)}});
    std::printf("wrote %s: phy2log, %lld layer(s) x %lld physical slots (-1 = unused)\n",
                options.out_path.c_str(), static_cast<long long>(num_layers),
                static_cast<long long>(num_physical));
  } else {
    const bool sglang = options.to == "sglang";
    MOE_EPLB_CHECK(sglang || !options.logcnt_out_path.empty(), kConvert,
                   ": --to log2phy needs --logcnt-out for the replica counts");
    std::int64_t max_replicas = options.max_replicas;
    for (const ReplicaSlots& slots : layers.slots) {
      for (const auto& replicas : slots) {
        if (options.max_replicas == 0) {
          max_replicas =
              std::max<std::int64_t>(max_replicas, static_cast<std::int64_t>(replicas.size()));
        }
      }
    }
    std::vector<std::int64_t> maps, counts;
    for (const ReplicaSlots& slots : layers.slots) {
      const Log2Phy layer = slots_to_log2phy(slots, max_replicas);
      maps.insert(maps.end(), layer.log2phy.begin(), layer.log2phy.end());
      counts.insert(counts.end(), layer.logcnt.begin(), layer.logcnt.end());
    }
    OutputFiles outputs = {
        {options.out_path, int64_file(with_layers({num_experts, max_replicas}), maps)}};
    if (!sglang) {
      outputs.emplace_back(options.logcnt_out_path, int64_file(with_layers({num_experts}), counts));
    }
    write_outputs(outputs);  // both files or neither
    std::printf("wrote %s%s%s: %s, %lld layer(s) x %lld experts x %lld replicas (-1 padded)\n",
                options.out_path.c_str(), sglang ? "" : " and ",
                sglang ? "" : options.logcnt_out_path.c_str(),
                sglang ? "SGLang logical_to_all_physical_map" : "log2phy and logcnt",
                static_cast<long long>(num_layers), static_cast<long long>(num_experts),
                static_cast<long long>(max_replicas));
  }
}

}  // namespace

void add_convert_command(CLI::App& app) {
  auto options = std::make_shared<ConvertOptions>();
  CLI::App* command = app.add_subcommand(
      "convert",
      "Convert between the Ascend eplb_table and DeepSeek/vLLM/SGLang placement layouts");
  const auto formats = CLI::IsMember({"ascend", "phy2log", "log2phy", "sglang"});
  command->add_option("--from", options->from, "input layout: ascend, phy2log, log2phy, sglang")
      ->required()
      ->check(formats);
  command->add_option("--to", options->to, "output layout: ascend, phy2log, log2phy, sglang")
      ->required()
      ->check(formats);
  command->add_option("--in", options->in_path, "input .npy (an optional leading layer dim)")
      ->required();
  command->add_option("--logcnt", options->logcnt_path, "replica counts .npy for --from log2phy");
  command->add_option("--out", options->out_path, "output .npy")->required();
  command->add_option("--logcnt-out", options->logcnt_out_path,
                      "write replica counts here for --to log2phy");
  command
      ->add_option("--num-experts", options->num_experts,
                   "E for --from phy2log (0 = largest id + 1)")
      ->check(in_range(0, INT32_MAX))
      ->capture_default_str();
  command
      ->add_option("--num-physical", options->num_physical,
                   "slots for --to phy2log (0 = largest slot + 1)")
      ->check(in_range(0, INT32_MAX))
      ->capture_default_str();
  command->add_option("--columns", options->num_columns, "F for --to ascend (0 = fit)")
      ->check(in_range_or(0, "fit", 2, INT32_MAX))
      ->capture_default_str();
  command
      ->add_option("--max-replicas", options->max_replicas, "R for --to log2phy/sglang (0 = fit)")
      ->check(in_range(0, INT32_MAX))
      ->capture_default_str();
  command->add_flag("--sort-replicas", options->sort_replicas,
                    "--to phy2log: accept listing each expert's replicas in ascending slot order "
                    "(phy2log keeps no order; without this flag a table in another order, whose "
                    "order is its routing, is refused)");
  command->callback([options] { run_convert(*options); });
}

}  // namespace moe_eplb::cli

#include "plan_io.hpp"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "arrays.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/npy.hpp"
#include "moe_eplb/table.hpp"

namespace moe_eplb::cli {
namespace {

// The values as int32, refusing any that do not fit.
std::vector<std::int32_t> narrow_to_int32(const std::string& flag, const std::string& path,
                                          const std::vector<std::int64_t>& values) {
  std::vector<std::int32_t> narrowed;
  narrowed.reserve(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    MOE_EPLB_CHECK(values[i] >= std::numeric_limits<std::int32_t>::min() &&
                       values[i] <= std::numeric_limits<std::int32_t>::max(),
                   flag, " ", path, ": value ", values[i], " at flat index ", i,
                   " does not fit in int32");
    narrowed.push_back(static_cast<std::int32_t>(values[i]));
  }
  return narrowed;
}

// Flattens a rectangular nested JSON array of numbers, appending its shape
// (on first sight of each depth) and values.
void flatten_json(const std::string& where, const nlohmann::json& value, std::size_t depth,
                  std::vector<std::int64_t>& shape, std::vector<double>& values) {
  if (!value.is_array()) {
    MOE_EPLB_CHECK(value.is_number() && depth == shape.size(), where,
                   ": logical_count must be a rectangular array of numbers");
    values.push_back(value.get<double>());
    return;
  }
  const auto size = static_cast<std::int64_t>(value.size());
  if (depth == shape.size()) shape.push_back(size);
  MOE_EPLB_CHECK(shape[depth] == size, where, ": logical_count is not rectangular (", size,
                 " entries where an earlier row has ", shape[depth], ")");
  for (const nlohmann::json& item : value) flatten_json(where, item, depth + 1, shape, values);
}

// SGLang's expert-distribution statistics as JSON, {"logical_count": ...}:
// (layers, experts), or (passes, layers, experts) summed over the passes; as
// the (layers, 1, experts) global counts the planner takes.
LoadedNumbers load_sglang_stat(const std::string& flag, const std::string& path) {
  const std::string where = flag + " " + path;
  std::ifstream stream(path);
  MOE_EPLB_CHECK_CODE(stream.good(), ErrorCode::kIo, where, ": cannot open it");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(stream);
  } catch (const nlohmann::json::exception& error) {
    MOE_EPLB_FAIL(ErrorCode::kIo, where, ": not JSON (", error.what(), ")");
  }
  MOE_EPLB_CHECK(json.is_object() && json.contains("logical_count"), where,
                 ": expected SGLang's statistics {\"logical_count\": [...]}");
  std::vector<std::int64_t> shape;
  std::vector<double> values;
  flatten_json(where, json["logical_count"], 0, shape, values);
  MOE_EPLB_CHECK(shape.size() == 2 || shape.size() == 3, where,
                 ": logical_count must be (layers, experts) or (passes, layers, experts), got ",
                 shape.size(), " dimensions");
  LoadedNumbers loaded;
  loaded.dtype = Dtype::kFloat64;
  const std::int64_t num_layers = shape[shape.size() - 2], num_experts = shape.back();
  loaded.shape = {num_layers, 1, num_experts};
  loaded.values.assign(static_cast<std::size_t>(num_layers * num_experts), 0.0);
  for (std::size_t i = 0; i < values.size(); ++i)
    loaded.values[i % loaded.values.size()] += values[i];
  return loaded;
}

}  // namespace

LoadedIntegers load_integers(const std::string& flag, const std::string& path) {
  const LoadedNumbers numbers = load_numbers(flag, path);
  MOE_EPLB_CHECK(numbers.dtype != Dtype::kFloat32 && numbers.dtype != Dtype::kFloat64, flag, " ",
                 path, ": expected an integer array, got ", to_string(numbers.dtype));
  LoadedIntegers loaded;
  loaded.shape = numbers.shape;
  loaded.values.reserve(numbers.values.size());
  for (double value : numbers.values) {
    MOE_EPLB_CHECK(value >= -9.2e18 && value <= 9.2e18, flag, " ", path, ": value ", value,
                   " does not fit in int64");
    loaded.values.push_back(static_cast<std::int64_t>(value));
  }
  return loaded;
}

LoadedLoad load_expert_load(const std::string& flag, const std::string& path,
                            std::int64_t world_size, const std::string& layout,
                            const char* operation) {
  const bool json = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  const LoadLayout parsed = json ? LoadLayout::kInfer : parse_load_layout(layout, operation);
  LoadedNumbers numbers = json ? load_sglang_stat(flag, path) : load_numbers(flag, path);
  MOE_EPLB_CHECK(parsed != LoadLayout::kInfer || numbers.shape.size() != 2, operation, ": ", flag,
                 " ", path, " has shape ", shape_string(numbers.shape),
                 ": are its rows source ranks (W, E) or layers (L, E)? Pass --layout WE or "
                 "--layout LE");
  LoadedLoad loaded;
  loaded.per_layer_file = numbers.shape.size() == 3 || parsed == LoadLayout::kLayersExperts;
  try {
    loaded.load =
        make_expert_load(numbers.shape, std::move(numbers.values), world_size, parsed, operation);
  } catch (const Error& error) {
    MOE_EPLB_FAIL(error.code(), error.what(), " (", flag, " ", path, ")");
  }
  return loaded;
}

void add_layout_option(CLI::App& command, std::string& layout) {
  command
      .add_option("--layout", layout,
                  "dimensions of the --load files: E (experts), WE (source ranks, experts), LE "
                  "(layers, experts) or LWE (layers, source ranks or 1, experts); needed for a "
                  "2-D file, whose rows could be either ranks or layers")
      ->check(CLI::IsMember({"E", "WE", "LE", "LWE"}));
}

LoadedTables load_layered_table(const std::string& flag, const std::string& path) {
  LoadedIntegers loaded = load_integers(flag, path);
  const std::size_t dims = loaded.shape.size();
  MOE_EPLB_CHECK(dims == 2 || dims == 3, flag, " ", path,
                 ": expected an (E, F) table or (L, E, F) tables, got shape ",
                 shape_string(loaded.shape));
  LoadedTables result;
  result.per_layer_file = dims == 3;
  LayeredTable& table = result.table;
  table.num_layers = dims == 3 ? loaded.shape[0] : 1;
  table.num_experts = loaded.shape[dims - 2];
  table.num_columns = loaded.shape[dims - 1];
  table.values = narrow_to_int32(flag, path, loaded.values);
  return result;
}

RoutingTrace load_trace(const std::string& flag, const std::string& path,
                        const std::string& mask_path) {
  LoadedIntegers ids = load_integers(flag, path);
  MOE_EPLB_CHECK(ids.shape.size() == 3, flag, " ", path,
                 ": expected expert ids per source rank, shape (W, BS, K), got ",
                 shape_string(ids.shape));
  RoutingTrace trace;
  trace.world_size = ids.shape[0];
  trace.tokens_per_rank = ids.shape[1];
  trace.top_k = ids.shape[2];
  // Ids outside [0, E) are the operator's to report, with their position.
  trace.expert_ids = narrow_to_int32(flag, path, ids.values);
  if (!mask_path.empty()) {
    LoadedIntegers mask = load_integers("--active-mask", mask_path);
    MOE_EPLB_CHECK(mask.shape.size() == 2 && mask.shape[0] == trace.world_size &&
                       mask.shape[1] == trace.tokens_per_rank,
                   "--active-mask ", mask_path, ": expected shape (", trace.world_size, ", ",
                   trace.tokens_per_rank, ") to match ", flag, ", got ", shape_string(mask.shape));
    trace.active_mask.reserve(mask.values.size());
    for (std::int64_t value : mask.values) trace.active_mask.push_back(value != 0 ? 1 : 0);
  }
  return trace;
}

void check_trace_experts(const std::string& flag, const std::string& path,
                         const RoutingTrace& trace, std::int64_t num_experts,
                         const char* experts_flag) {
  for (std::size_t i = 0; i < trace.expert_ids.size(); ++i) {
    const std::int32_t expert = trace.expert_ids[i];
    if (expert >= 0 && expert < num_experts) continue;
    const auto flat = static_cast<std::int64_t>(i);
    MOE_EPLB_FAIL(ErrorCode::kIndexOutOfRange, flag, " ", path, ": rank ",
                  flat / (trace.tokens_per_rank * trace.top_k), ", token ",
                  flat / trace.top_k % trace.tokens_per_rank, ", choice ", flat % trace.top_k,
                  ": expert id ", expert, " is outside 0..", num_experts - 1, " (", experts_flag,
                  " ", num_experts, ")");
  }
}

std::vector<std::uint8_t> table_file(const std::string& path, const LayeredTable& table,
                                     bool squeeze) {
  ValidateTableOptions options;
  options.check_rank_mode_reachability = false;
  options.warn_unused_slots = false;
  options.max_issues = 5;
  for (std::int64_t layer = 0; layer < table.num_layers; ++layer) {
    const TableReport report = validate_table(table.layer(layer), -1, -1, options);
    MOE_EPLB_CHECK_CODE(report.ok(), ErrorCode::kInvalidTable, "refusing to write ", path,
                        ": layer ", layer, " is not a valid eplb_table: ", report.to_string());
  }
  std::vector<std::int64_t> shape = {table.num_experts, table.num_columns};
  if (!(squeeze && table.num_layers == 1)) shape.insert(shape.begin(), table.num_layers);
  return npy::serialize(npy::make_int32(shape, table.values.data()));
}

std::vector<std::uint8_t> int64_file(std::vector<std::int64_t> shape,
                                     const std::vector<std::int64_t>& values) {
  return npy::serialize(npy::make_int64(std::move(shape), values.data()));
}

void write_outputs(const OutputFiles& files) { npy::write_files(files); }

void save_layered_table(const std::string& path, const LayeredTable& table, bool squeeze) {
  write_outputs({{path, table_file(path, table, squeeze)}});
}

void write_text(const std::string& path, const std::string& text) {
  write_outputs({{path, std::vector<std::uint8_t>(text.begin(), text.end())}});
}

}  // namespace moe_eplb::cli

// .npy input and output for the planner commands (plan, simulate, convert,
// demo), with errors that name the flag and the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "moe_eplb/plan/load.hpp"
#include "moe_eplb/plan/planner.hpp"

namespace moe_eplb::cli {

// Integer array of any integer dtype, C order, with its shape. Refuses
// floating-point files and values outside int64.
struct LoadedIntegers {
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> values;
};
LoadedIntegers load_integers(const std::string& flag, const std::string& path);

// Load statistics of any numeric dtype, its dimensions as `layout` (the
// --layout flag: E, WE, LE, LWE, or "" for a 1-D or 3-D file) says; or, from
// a .json file, SGLang's {"logical_count": (layers, experts) or (passes,
// layers, experts)} as (L, 1, E) global counts. per_layer_file says the file
// had the layer dimension.
struct LoadedLoad {
  ExpertLoad load;
  bool per_layer_file = false;
};
LoadedLoad load_expert_load(const std::string& flag, const std::string& path,
                            std::int64_t world_size, const std::string& layout,
                            const char* operation);

// Adds the --layout option that load_expert_load() reads.
void add_layout_option(CLI::App& command, std::string& layout);

// An (E, F) table as one layer, or (L, E, F) tables.
struct LoadedTables {
  LayeredTable table;
  bool per_layer_file = false;  // the file was (L, E, F)
};
LoadedTables load_layered_table(const std::string& flag, const std::string& path);

// Routing traces: (W, BS, K) expert ids; mask_path ("" = none) is (W, BS).
RoutingTrace load_trace(const std::string& flag, const std::string& path,
                        const std::string& mask_path);

// Refuses an expert id of `trace` outside [0, num_experts), naming its
// (rank, token, choice) in the file and `experts_flag`.
void check_trace_experts(const std::string& flag, const std::string& path,
                         const RoutingTrace& trace, std::int64_t num_experts,
                         const char* experts_flag);

// The .npy contents of a table to be written to `path`: (E, F) when it has
// one layer and `squeeze`, else (L, E, F). Every layer is validated first (no
// table the tool writes is one the operator would refuse): throws
// kInvalidTable naming the path and the problems.
std::vector<std::uint8_t> table_file(const std::string& path, const LayeredTable& table,
                                     bool squeeze);

// The .npy contents of an int64 array.
std::vector<std::uint8_t> int64_file(std::vector<std::int64_t> shape,
                                     const std::vector<std::int64_t>& values);

// Writes files so that they appear together or not at all (npy::write_files).
using OutputFiles = std::vector<std::pair<std::string, std::vector<std::uint8_t>>>;
void write_outputs(const OutputFiles& files);

// One file: write_outputs({{path, table_file(path, table, squeeze)}}).
void save_layered_table(const std::string& path, const LayeredTable& table, bool squeeze);

// Writes a text file (the SVG), replacing it atomically. Throws kIo.
void write_text(const std::string& path, const std::string& text);

}  // namespace moe_eplb::cli

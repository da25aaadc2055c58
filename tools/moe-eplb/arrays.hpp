// Loading .npy files as the core's strided views, with errors that name the
// command-line flag and the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe_eplb/npy.hpp"
#include "moe_eplb/types.hpp"

namespace moe_eplb::cli {

struct LoadedIds {
  npy::Array array;
  ExpertIdsView view;
};

struct LoadedTable {
  npy::Array array;  // int32 (int64 files are narrowed into it)
  TableView view;
};

// "(2, 3)", "(4,)": a shape as NumPy prints it.
std::string shape_string(const std::vector<std::int64_t>& shape);

// A 2-D int32 or int64 array, C or Fortran order.
LoadedIds load_expert_ids(const std::string& flag, const std::string& path);

// A 2-D int32 array; int64 files are accepted when every value fits in int32.
LoadedTable load_table(const std::string& flag, const std::string& path);

// Any integer or floating array as float64 values in C order, with its shape.
struct LoadedNumbers {
  Dtype dtype = Dtype::kFloat64;  // the file's dtype
  std::vector<std::int64_t> shape;
  std::vector<double> values;
};
LoadedNumbers load_numbers(const std::string& flag, const std::string& path);

}  // namespace moe_eplb::cli

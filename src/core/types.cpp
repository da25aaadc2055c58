#include "moe_eplb/types.hpp"

namespace moe_eplb {
namespace {

struct DtypeInfo {
  const char* name;
  std::size_t size;
};

// Indexed by Dtype.
constexpr DtypeInfo kDtypeInfo[] = {
    {"bool", 1},
    {"int8", 1},
    {"uint8", 1},
    {"int16", 2},
    {"int32", 4},
    {"int64", 8},
    {"uint32", 4},
    {"uint64", 8},
    {"float16", 2},
    {"bfloat16", 2},
    {"float32", 4},
    {"float64", 8},
    {"unsupported dtype", 0},
};
static_assert(sizeof(kDtypeInfo) / sizeof(kDtypeInfo[0]) ==
              static_cast<std::size_t>(Dtype::kUnsupported) + 1);

const DtypeInfo& info(Dtype dtype) {
  const auto index = static_cast<std::size_t>(dtype);
  return index <= static_cast<std::size_t>(Dtype::kUnsupported)
             ? kDtypeInfo[index]
             : kDtypeInfo[static_cast<std::size_t>(Dtype::kUnsupported)];
}

}  // namespace

std::string to_string(Dtype dtype) { return info(dtype).name; }

std::size_t element_size(Dtype dtype) { return info(dtype).size; }

}  // namespace moe_eplb

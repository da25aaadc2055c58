#include "moe_eplb/types.hpp"

namespace moe_eplb {

std::string to_string(IdDtype dtype) { return dtype == IdDtype::kInt32 ? "int32" : "int64"; }

std::string to_string(ScaleDtype dtype) {
  switch (dtype) {
    case ScaleDtype::kFloat32:
      return "float32";
    case ScaleDtype::kFloat16:
      return "float16";
    case ScaleDtype::kBFloat16:
      return "bfloat16";
  }
  return "unknown";
}

std::size_t element_size(IdDtype dtype) { return dtype == IdDtype::kInt32 ? 4 : 8; }

std::size_t element_size(ScaleDtype dtype) { return dtype == ScaleDtype::kFloat32 ? 4 : 2; }

}  // namespace moe_eplb

#include "arrays.hpp"

#include <cmath>
#include <cstring>
#include <limits>

#include "moe_eplb/error.hpp"

namespace moe_eplb::cli {
namespace {

std::string describe(const npy::Array& array) {
  return std::to_string(array.shape.size()) + "-D " + to_string(array.dtype) + " array " +
         shape_string(array.shape);
}

npy::Array load_flag(const std::string& flag, const std::string& path) {
  try {
    return npy::load(path);
  } catch (const Error& error) {
    MOE_EPLB_FAIL(ErrorCode::kIo, flag, " ", error.what());
  }
}

template <typename T>
double value_at(const npy::Array& array, std::int64_t index) {
  T value;
  std::memcpy(&value, array.bytes.data() + index * sizeof(T), sizeof(T));
  return static_cast<double>(value);
}

}  // namespace

std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return text + (shape.size() == 1 ? ",)" : ")");
}

LoadedIds load_expert_ids(const std::string& flag, const std::string& path) {
  LoadedIds loaded{load_flag(flag, path), {}};
  const npy::Array& array = loaded.array;
  MOE_EPLB_CHECK(
      array.shape.size() == 2 && (array.dtype == Dtype::kInt32 || array.dtype == Dtype::kInt64),
      flag, " ", path, ": expected a 2-D int32 or int64 array (BS, K), got a ", describe(array));
  const std::vector<std::int64_t> strides = array.strides();
  loaded.view.data = array.bytes.data();
  loaded.view.dtype = array.dtype == Dtype::kInt32 ? Dtype::kInt32 : Dtype::kInt64;
  loaded.view.num_tokens = array.shape[0];
  loaded.view.top_k = array.shape[1];
  loaded.view.token_stride = strides[0];
  loaded.view.k_stride = strides[1];
  return loaded;
}

LoadedTable load_table(const std::string& flag, const std::string& path) {
  LoadedTable loaded{load_flag(flag, path), {}};
  npy::Array& array = loaded.array;
  MOE_EPLB_CHECK(
      array.shape.size() == 2 && (array.dtype == Dtype::kInt32 || array.dtype == Dtype::kInt64),
      flag, " ", path, ": expected a 2-D int32 array (E, F), got a ", describe(array));
  if (array.dtype == Dtype::kInt64) {
    const std::int64_t count = array.num_elements();
    std::vector<std::uint8_t> narrowed(static_cast<std::size_t>(count) * 4);
    for (std::int64_t i = 0; i < count; ++i) {
      std::int64_t value;
      std::memcpy(&value, array.bytes.data() + i * 8, 8);
      MOE_EPLB_CHECK(value >= std::numeric_limits<std::int32_t>::min() &&
                         value <= std::numeric_limits<std::int32_t>::max(),
                     flag, " ", path, ": int64 table value ", value,
                     " does not fit in int32 (flat index ", i, ")");
      const auto narrow = static_cast<std::int32_t>(value);
      std::memcpy(narrowed.data() + i * 4, &narrow, 4);
    }
    array.bytes = std::move(narrowed);
    array.dtype = Dtype::kInt32;
  }
  const std::vector<std::int64_t> strides = array.strides();
  loaded.view.data = array.data<std::int32_t>();
  loaded.view.num_experts = array.shape[0];
  loaded.view.num_columns = array.shape[1];
  loaded.view.row_stride = strides[0];
  loaded.view.column_stride = strides[1];
  return loaded;
}

LoadedNumbers load_numbers(const std::string& flag, const std::string& path) {
  const npy::Array array = load_flag(flag, path);
  LoadedNumbers loaded;
  loaded.dtype = array.dtype;
  loaded.shape = array.shape;
  const std::int64_t count = array.num_elements();
  loaded.values.resize(static_cast<std::size_t>(count));
  // Read in C order whatever the file's order.
  const std::vector<std::int64_t> strides = array.strides();
  std::vector<std::int64_t> index(array.shape.size(), 0);
  for (std::int64_t flat = 0; flat < count; ++flat) {
    std::int64_t offset = 0;
    for (std::size_t d = 0; d < index.size(); ++d) offset += index[d] * strides[d];
    double value = 0;
    switch (array.dtype) {
      case Dtype::kBool:
      case Dtype::kUInt8:
        value = value_at<std::uint8_t>(array, offset);
        break;
      case Dtype::kInt8:
        value = value_at<std::int8_t>(array, offset);
        break;
      case Dtype::kInt16:
        value = value_at<std::int16_t>(array, offset);
        break;
      case Dtype::kInt32:
        value = value_at<std::int32_t>(array, offset);
        break;
      case Dtype::kInt64:
        value = value_at<std::int64_t>(array, offset);
        break;
      case Dtype::kUInt32:
        value = value_at<std::uint32_t>(array, offset);
        break;
      case Dtype::kUInt64:
        value = value_at<std::uint64_t>(array, offset);
        break;
      case Dtype::kFloat32:
        value = value_at<float>(array, offset);
        break;
      case Dtype::kFloat64:
        value = value_at<double>(array, offset);
        break;
      case Dtype::kFloat16:
      case Dtype::kBFloat16:
      case Dtype::kUnsupported:
        MOE_EPLB_FAIL(ErrorCode::kInvalidArgument, flag, " ", path, ": ", to_string(array.dtype),
                      " statistics are not supported, save them as float32 or int64");
    }
    loaded.values[static_cast<std::size_t>(flat)] = value;
    for (std::size_t d = index.size(); d-- > 0;) {
      if (++index[d] < array.shape[d]) break;
      index[d] = 0;
    }
  }
  return loaded;
}

}  // namespace moe_eplb::cli

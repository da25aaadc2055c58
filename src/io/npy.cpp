// .npy reader and writer. The header is a Python dict literal; we parse the
// small subset NumPy writes (strings, True/False, tuples of integers) and
// reject everything else with a one-line reason. Every size is checked before
// it is used, so a header that lies cannot cause an out-of-bounds read.
#include "moe_eplb/npy.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include "moe_eplb/error.hpp"

namespace moe_eplb::npy {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicSize = 6;

// The dtypes a .npy file can hold, with NumPy's kind letter ("<i4": 'i').
struct NpyKind {
  Dtype dtype;
  char kind;
};

constexpr NpyKind kNpyKinds[] = {
    {Dtype::kBool, 'b'},    {Dtype::kInt8, 'i'},    {Dtype::kUInt8, 'u'},   {Dtype::kInt16, 'i'},
    {Dtype::kInt32, 'i'},   {Dtype::kInt64, 'i'},   {Dtype::kUInt32, 'u'},  {Dtype::kUInt64, 'u'},
    {Dtype::kFloat16, 'f'}, {Dtype::kFloat32, 'f'}, {Dtype::kFloat64, 'f'},
};

// NumPy's kind letter of `dtype`, or '\0' when .npy cannot hold it.
char npy_kind(Dtype dtype) {
  for (const NpyKind& entry : kNpyKinds) {
    if (entry.dtype == dtype) return entry.kind;
  }
  return '\0';
}

[[noreturn]] void fail(const std::string& name, const std::string& reason) {
  MOE_EPLB_FAIL(ErrorCode::kIo, name, ": ", reason);
}

// Minimal parser for the header dict.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& name) : text_(text), name_(name) {}

  void parse(std::string& descr, bool& fortran_order, std::vector<std::int64_t>& shape) {
    bool have_descr = false, have_order = false, have_shape = false;
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = parse_string();
      expect(':');
      if (key == "descr") {
        skip_space();
        if (peek() == '[') fail(name_, "structured (record) dtypes are not supported");
        descr = parse_string();
        have_descr = true;
      } else if (key == "fortran_order") {
        fortran_order = parse_bool();
        have_order = true;
      } else if (key == "shape") {
        shape = parse_shape();
        have_shape = true;
      } else {
        fail(name_, "unexpected key '" + key + "' in the .npy header");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_space();
      if (peek() != '}') bad("',' or '}'");
    }
    if (!have_descr || !have_order || !have_shape) {
      fail(name_, "the .npy header lacks one of 'descr', 'fortran_order', 'shape'");
    }
  }

 private:
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t')) ++pos_;
  }
  [[noreturn]] void bad(const char* expected) {
    fail(name_, detail::concat("malformed .npy header: expected ", expected, " at offset ", pos_,
                               " of the header"));
  }
  void expect(char c) {
    skip_space();
    if (peek() != c) bad(detail::concat("'", c, "'").c_str());
    ++pos_;
  }
  std::string parse_string() {
    skip_space();
    const char quote = peek();
    if (quote != '\'' && quote != '"') bad("a quoted string");
    const std::size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string::npos) bad("a closing quote");
    std::string value = text_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return value;
  }
  bool parse_bool() {
    skip_space();
    if (text_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (text_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    bad("True or False");
  }
  std::vector<std::int64_t> parse_shape() {
    std::vector<std::int64_t> shape;
    expect('(');
    while (true) {
      skip_space();
      if (peek() == ')') {
        ++pos_;
        return shape;
      }
      if (peek() < '0' || peek() > '9') bad("a non-negative integer dimension");
      std::int64_t value = 0;
      while (peek() >= '0' && peek() <= '9') {
        const int digit = peek() - '0';
        if (value > (std::numeric_limits<std::int64_t>::max() - digit) / 10) {
          fail(name_, "a dimension in the .npy header is too large");
        }
        value = value * 10 + digit;
        ++pos_;
      }
      // Python writes 'L' suffixes in very old files.
      if (peek() == 'L') ++pos_;
      shape.push_back(value);
      if (shape.size() > 32) fail(name_, "the .npy header has more than 32 dimensions");
      skip_space();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() != ')') {
        bad("',' or ')' in the shape");
      }
    }
  }

  const std::string& text_;
  const std::string& name_;
  std::size_t pos_ = 0;
};

// "<i4" -> (kInt32, swap=false).
Dtype parse_descr(const std::string& descr, const std::string& name, bool& byte_swap) {
  if (descr.size() < 3) fail(name, "unsupported dtype '" + descr + "'");
  const char order = descr[0];
  if (order != '<' && order != '>' && order != '|' && order != '=') {
    fail(name, "unsupported dtype '" + descr + "' (unknown byte order)");
  }
  const char kind = descr[1];
  const std::string size_text = descr.substr(2);
  std::size_t size = 0;
  for (char c : size_text) {
    if (c < '0' || c > '9' || size > 64) fail(name, "unsupported dtype '" + descr + "'");
    size = size * 10 + static_cast<std::size_t>(c - '0');
  }
  for (const NpyKind& entry : kNpyKinds) {
    if (entry.kind == kind && element_size(entry.dtype) == size) {
      byte_swap = order == '>' && size > 1;
      return entry.dtype;
    }
  }
  fail(name, "unsupported dtype '" + descr +
                 "' (supported: bool, int8/16/32/64, uint8/32/64, float16/32/64)");
}

std::uint32_t read_le(const std::uint8_t* bytes, std::size_t count) {
  std::uint32_t value = 0;
  for (std::size_t i = 0; i < count; ++i) value |= static_cast<std::uint32_t>(bytes[i]) << (8 * i);
  return value;
}

}  // namespace

std::int64_t Array::num_elements() const {
  std::int64_t count = 1;
  for (std::int64_t dim : shape) count *= dim;
  return count;
}

std::vector<std::int64_t> Array::strides() const {
  std::vector<std::int64_t> strides(shape.size());
  std::int64_t stride = 1;
  if (fortran_order) {
    for (std::size_t i = 0; i < shape.size(); ++i) {
      strides[i] = stride;
      stride *= std::max<std::int64_t>(shape[i], 1);
    }
  } else {
    for (std::size_t i = shape.size(); i-- > 0;) {
      strides[i] = stride;
      stride *= std::max<std::int64_t>(shape[i], 1);
    }
  }
  return strides;
}

Array parse(const std::uint8_t* data, std::size_t size, const std::string& name) {
  if (size < kMagicSize + 2 || std::memcmp(data, kMagic, kMagicSize) != 0) {
    fail(name, "not a .npy file (missing the \\x93NUMPY magic)");
  }
  const int major = data[6];
  if (major < 1 || major > 3) {
    fail(name, detail::concat("unsupported .npy format version ", major, ".", int{data[7]}));
  }
  const std::size_t length_size = major == 1 ? 2 : 4;
  if (size < 8 + length_size) fail(name, "truncated .npy header");
  const std::size_t header_size = read_le(data + 8, length_size);
  const std::size_t header_begin = 8 + length_size;
  if (header_size > size - header_begin) {
    fail(name, detail::concat("truncated .npy header: it claims ", header_size,
                              " bytes but the file has ", size - header_begin, " left"));
  }
  const std::string header(reinterpret_cast<const char*>(data + header_begin), header_size);

  Array array;
  std::string descr;
  HeaderParser(header, name).parse(descr, array.fortran_order, array.shape);
  bool byte_swap = false;
  array.dtype = parse_descr(descr, name, byte_swap);

  const std::size_t item = element_size(array.dtype);
  std::uint64_t num_bytes = item;
  for (std::int64_t dim : array.shape) {
    const auto udim = static_cast<std::uint64_t>(dim);
    if (udim != 0 && num_bytes > std::numeric_limits<std::uint64_t>::max() / 4 / udim) {
      fail(name, "the shape in the .npy header is too large to address");
    }
    num_bytes *= udim;
  }
  const std::size_t data_begin = header_begin + header_size;
  const std::size_t available = size - data_begin;
  if (num_bytes != available) {
    fail(name,
         detail::concat("the .npy header promises ", num_bytes, " data bytes (shape ",
                        array.shape.size(), "-D, ", to_string(array.dtype), ") but the file has ",
                        available, num_bytes > available ? " (truncated)" : " (trailing bytes)"));
  }
  array.bytes.assign(data + data_begin, data + size);
  if (byte_swap) {
    for (std::size_t offset = 0; offset < array.bytes.size(); offset += item) {
      std::reverse(array.bytes.begin() + static_cast<std::ptrdiff_t>(offset),
                   array.bytes.begin() + static_cast<std::ptrdiff_t>(offset + item));
    }
  }
  return array;
}

Array load(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) fail(path, detail::concat("cannot open for reading: ", std::strerror(errno)));
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(file)),
                                  std::istreambuf_iterator<char>());
  if (file.bad()) fail(path, "read error");
  return parse(bytes.data(), bytes.size(), path);
}

std::vector<std::uint8_t> serialize(const Array& array) {
  const char kind = npy_kind(array.dtype);
  if (kind == '\0') {
    MOE_EPLB_FAIL(ErrorCode::kIo, "npy::serialize(): a .npy file cannot hold ",
                  to_string(array.dtype), " values");
  }
  const std::size_t size = element_size(array.dtype);
  std::string shape = "(";
  for (std::size_t i = 0; i < array.shape.size(); ++i) {
    shape += std::to_string(array.shape[i]);
    if (array.shape.size() == 1 || i + 1 < array.shape.size()) shape += ",";
    if (i + 1 < array.shape.size()) shape += " ";
  }
  shape += ")";
  const std::string descr = std::string(size == 1 ? "|" : "<") + kind + std::to_string(size);
  std::string header = "{'descr': '" + descr +
                       "', 'fortran_order': " + (array.fortran_order ? "True" : "False") +
                       ", 'shape': " + shape + ", }";
  // Pad so that the data starts on a 64-byte boundary, as NumPy does.
  const bool version2 = header.size() + 1 + 10 > 65535;
  const std::size_t prefix = version2 ? 12 : 10;
  const std::size_t total = (prefix + header.size() + 1 + 63) / 64 * 64;
  header.append(total - prefix - header.size() - 1, ' ');
  header += '\n';

  std::vector<std::uint8_t> out(kMagic, kMagic + kMagicSize);
  out.push_back(version2 ? 2 : 1);
  out.push_back(0);
  const std::size_t length = header.size();
  for (std::size_t i = 0; i < (version2 ? 4u : 2u); ++i) {
    out.push_back(static_cast<std::uint8_t>((length >> (8 * i)) & 0xff));
  }
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), array.bytes.begin(), array.bytes.end());
  return out;
}

void save(const std::string& path, const Array& array) {
  const std::vector<std::uint8_t> bytes = serialize(array);
  const std::string temporary = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    if (!file) fail(path, detail::concat("cannot open for writing: ", std::strerror(errno)));
    file.write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    file.flush();
    if (!file) {
      std::remove(temporary.c_str());
      fail(path, "write failed (disk full?)");
    }
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    std::remove(temporary.c_str());
    fail(path, "cannot rename the finished file into place: " + reason);
  }
}

namespace {
template <typename T>
Array make(Dtype dtype, std::vector<std::int64_t> shape, const T* values) {
  Array array;
  array.dtype = dtype;
  array.shape = std::move(shape);
  const std::size_t count = static_cast<std::size_t>(array.num_elements());
  array.bytes.resize(count * sizeof(T));
  if (count != 0) std::memcpy(array.bytes.data(), values, count * sizeof(T));
  return array;
}
}  // namespace

Array make_int32(std::vector<std::int64_t> shape, const std::int32_t* values) {
  return make(Dtype::kInt32, std::move(shape), values);
}
Array make_int64(std::vector<std::int64_t> shape, const std::int64_t* values) {
  return make(Dtype::kInt64, std::move(shape), values);
}
Array make_float64(std::vector<std::int64_t> shape, const double* values) {
  return make(Dtype::kFloat64, std::move(shape), values);
}

}  // namespace moe_eplb::npy

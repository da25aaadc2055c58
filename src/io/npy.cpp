// .npy reader and writer. The header is a Python dict literal; we parse the
// small subset NumPy writes (strings, True/False, tuples of integers) and
// reject everything else with a one-line reason. Every size is checked before
// it is used, so a header that lies cannot cause an out-of-bounds read, and
// load() reads the header before the data and never more than it promises.
#include "moe_eplb/npy.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>

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

namespace {

// The most header bytes a file may claim. NumPy writes about a hundred, and
// itself refuses headers over 10000 bytes by default.
constexpr std::size_t kMaxHeaderSize = 1 << 20;

// What the fixed-size prefix and the header dict say, before any data.
struct Header {
  Array array;                  // dtype, shape, fortran_order; no bytes yet
  bool byte_swap = false;       // the file is big-endian
  std::size_t data_begin = 0;   // offset of the data in the file
  std::uint64_t num_bytes = 0;  // data bytes the shape promises
};

// The prefix's size (magic, version, header length) for `prefix`, which
// holds at least its first 8 bytes; and the header length it claims.
std::size_t read_prefix(const std::uint8_t* prefix, std::size_t size, const std::string& name,
                        std::size_t& header_size) {
  if (size < kMagicSize + 2 || std::memcmp(prefix, kMagic, kMagicSize) != 0) {
    fail(name, "not a .npy file (missing the \\x93NUMPY magic)");
  }
  const int major = prefix[6];
  if (major < 1 || major > 3) {
    fail(name, detail::concat("unsupported .npy format version ", major, ".", int{prefix[7]}));
  }
  const std::size_t length_size = major == 1 ? 2 : 4;
  if (size < 8 + length_size) fail(name, "truncated .npy header");
  header_size = read_le(prefix + 8, length_size);
  if (header_size > kMaxHeaderSize) {
    fail(name, detail::concat("the .npy header claims ", header_size, " bytes, more than the ",
                              kMaxHeaderSize, " this reader accepts"));
  }
  return 8 + length_size;
}

// Parses the header dict and computes the data size it promises.
Header parse_header(const std::string& text, std::size_t data_begin, const std::string& name) {
  Header header;
  Array& array = header.array;
  std::string descr;
  HeaderParser(text, name).parse(descr, array.fortran_order, array.shape);
  array.dtype = parse_descr(descr, name, header.byte_swap);
  header.num_bytes = element_size(array.dtype);
  for (std::int64_t dim : array.shape) {
    const auto udim = static_cast<std::uint64_t>(dim);
    if (udim != 0 && header.num_bytes > std::numeric_limits<std::uint64_t>::max() / 4 / udim) {
      fail(name, "the shape in the .npy header is too large to address");
    }
    header.num_bytes *= udim;
  }
  header.data_begin = data_begin;
  return header;
}

[[noreturn]] void fail_data_size(const Header& header, const std::string& available, bool truncated,
                                 const std::string& name) {
  fail(name, detail::concat("the .npy header promises ", header.num_bytes, " data bytes (shape ",
                            header.array.shape.size(), "-D, ", to_string(header.array.dtype),
                            ") but the file has ", available,
                            truncated ? " (truncated)" : " (trailing bytes)"));
}

// Fails unless the data section has exactly the promised size.
void check_data_size(const Header& header, std::uint64_t available, const std::string& name) {
  if (available != header.num_bytes) {
    fail_data_size(header, std::to_string(available), available < header.num_bytes, name);
  }
}

// Takes the data bytes (host byte order) into the header's array.
Array finish(Header header, std::vector<std::uint8_t> bytes) {
  Array array = std::move(header.array);
  array.bytes = std::move(bytes);
  if (header.byte_swap) {
    const std::size_t item = element_size(array.dtype);
    for (std::size_t offset = 0; offset < array.bytes.size(); offset += item) {
      std::reverse(array.bytes.begin() + static_cast<std::ptrdiff_t>(offset),
                   array.bytes.begin() + static_cast<std::ptrdiff_t>(offset + item));
    }
  }
  return array;
}

// Reads up to `count` bytes; fewer only at the end of the file.
std::size_t read_some(std::FILE* file, std::uint8_t* out, std::size_t count,
                      const std::string& name) {
  const std::size_t got = std::fread(out, 1, count, file);
  if (got < count && std::ferror(file)) fail(name, "read error");
  return got;
}

}  // namespace

Array parse(const std::uint8_t* data, std::size_t size, const std::string& name) {
  std::size_t header_size = 0;
  const std::size_t header_begin = read_prefix(data, size, name, header_size);
  if (header_size > size - header_begin) {
    fail(name, detail::concat("truncated .npy header: it claims ", header_size,
                              " bytes but the file has ", size - header_begin, " left"));
  }
  const std::string text(reinterpret_cast<const char*>(data + header_begin), header_size);
  Header header = parse_header(text, header_begin + header_size, name);
  check_data_size(header, size - header.data_begin, name);
  return finish(std::move(header),
                std::vector<std::uint8_t>(data + header.data_begin, data + size));
}

// Reads the prefix and the header first, and then exactly the data they
// promise: a regular file's size is checked before any data is read, and a
// stream (a pipe, /dev/zero) is read in chunks that stop at the promise.
Array load(const std::string& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"),
                                                       &std::fclose);
  if (!file) fail(path, detail::concat("cannot open for reading: ", std::strerror(errno)));
  std::uint8_t prefix[12] = {};
  const std::size_t prefix_read = read_some(file.get(), prefix, 8, path);
  std::size_t prefix_size = prefix_read;
  if (prefix_read == 8 && prefix[6] >= 2 && prefix[6] <= 3) {
    prefix_size += read_some(file.get(), prefix + 8, 4, path);
  } else if (prefix_read == 8) {
    prefix_size += read_some(file.get(), prefix + 8, 2, path);
  }
  std::size_t header_size = 0;
  const std::size_t header_begin = read_prefix(prefix, prefix_size, path, header_size);
  std::string text(header_size, '\0');
  const std::size_t header_read =
      read_some(file.get(), reinterpret_cast<std::uint8_t*>(text.data()), header_size, path);
  if (header_read < header_size) {
    fail(path, detail::concat("truncated .npy header: it claims ", header_size,
                              " bytes but the file has ", header_read, " left"));
  }
  Header header = parse_header(text, header_begin + header_size, path);

  struct stat info {};
  if (::fstat(::fileno(file.get()), &info) == 0 && S_ISREG(info.st_mode)) {
    const auto file_size = static_cast<std::uint64_t>(info.st_size);
    check_data_size(header, file_size - std::min<std::uint64_t>(file_size, header.data_begin),
                    path);
  }
  // Chunks of at most 64 MiB: a promise the file does not keep costs at most
  // what the file holds, plus one chunk.
  constexpr std::uint64_t kChunk = std::uint64_t{1} << 26;
  std::vector<std::uint8_t> bytes;
  while (bytes.size() < header.num_bytes) {
    const std::size_t offset = bytes.size();
    const auto want = static_cast<std::size_t>(std::min(kChunk, header.num_bytes - offset));
    bytes.resize(offset + want);
    const std::size_t got = read_some(file.get(), bytes.data() + offset, want, path);
    if (got < want) check_data_size(header, offset + got, path);
  }
  std::uint8_t extra = 0;
  if (read_some(file.get(), &extra, 1, path) != 0) fail_data_size(header, "more", false, path);
  return finish(std::move(header), std::move(bytes));
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

void write_files(const std::vector<std::pair<std::string, std::vector<std::uint8_t>>>& files) {
  const std::string suffix = ".tmp-" + std::to_string(::getpid());
  std::size_t written = 0;
  const auto remove_temporaries = [&] {
    for (std::size_t i = 0; i < written; ++i) std::remove((files[i].first + suffix).c_str());
  };
  for (const auto& [path, bytes] : files) {
    const std::string temporary = path + suffix;
    std::FILE* file = std::fopen(temporary.c_str(), "wb");
    if (file == nullptr) {
      const std::string reason = std::strerror(errno);
      remove_temporaries();
      fail(path, "cannot open for writing: " + reason);
    }
    ++written;
    const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), file) == bytes.size();
    if (std::fclose(file) != 0 || !ok) {
      remove_temporaries();
      fail(path, "write failed (disk full?)");
    }
  }
  for (std::size_t i = 0; i < files.size(); ++i) {
    const std::string& path = files[i].first;
    if (std::rename((path + suffix).c_str(), path.c_str()) != 0) {
      const std::string reason = std::strerror(errno);
      for (std::size_t j = i; j < files.size(); ++j) std::remove((files[j].first + suffix).c_str());
      fail(path, "cannot rename the finished file into place: " + reason);
    }
  }
}

void save(const std::string& path, const Array& array) { write_files({{path, serialize(array)}}); }

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

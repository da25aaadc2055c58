// NumPy .npy files (format versions 1.0, 2.0 and 3.0): the file format users
// already have for expert ids, tables and load statistics. Arrays hold any
// moe_eplb::Dtype NumPy has (every one but bfloat16 and kUnsupported).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "moe_eplb/types.hpp"

namespace moe_eplb::npy {

// An array read from or written to a .npy file. Data is stored as in the file
// (C or Fortran order) converted to host byte order; strides() gives element
// strides so callers can wrap it in a strided view without copying.
struct Array {
  Dtype dtype = Dtype::kFloat64;
  std::vector<std::int64_t> shape;
  bool fortran_order = false;
  std::vector<std::uint8_t> bytes;  // exactly num_elements() * element_size(dtype)

  std::int64_t num_elements() const;
  std::vector<std::int64_t> strides() const;  // in elements
  template <typename T>
  const T* data() const {
    return reinterpret_cast<const T*>(bytes.data());
  }
  template <typename T>
  T* data() {
    return reinterpret_cast<T*>(bytes.data());
  }
};

// Parses a whole .npy file held in memory. Throws moe_eplb::Error (kIo) with a
// one-line reason for anything that is not a well-formed .npy file: bad magic,
// unknown version, truncated or malformed header, unsupported dtype (structured,
// object, strings), a shape whose byte size overflows, or a data section whose
// length differs from what the header promises. `name` prefixes the message.
Array parse(const std::uint8_t* data, std::size_t size, const std::string& name = "<memory>");

// Reads a file; errors as parse(), plus the reason a file cannot be opened.
// Reads the header first and then never more than the data it promises (a
// regular file's size is checked before its data is read), so a large or
// endless wrong input (/dev/zero) fails at once.
Array load(const std::string& path);

// Serialises as format 1.0 (2.0 when the header needs it), C order unless
// array.fortran_order, little-endian.
std::vector<std::uint8_t> serialize(const Array& array);

// Writes atomically: to "<path>.tmp-<pid>" first, then renamed over `path`,
// so a failed write never leaves a partial file behind. Throws kIo.
void save(const std::string& path, const Array& array);

// Writes several files (path, contents) so that they appear together or not
// at all: each goes to "<path>.tmp-<pid>" first, and only when every one is
// complete are they renamed into place, in order. A failure to open or write
// any of them removes every temporary and leaves every path as it was. Throws
// kIo naming the path.
void write_files(const std::vector<std::pair<std::string, std::vector<std::uint8_t>>>& files);

// Helpers to build arrays.
Array make_int32(std::vector<std::int64_t> shape, const std::int32_t* values);
Array make_int64(std::vector<std::int64_t> shape, const std::int64_t* values);
Array make_float64(std::vector<std::int64_t> shape, const double* values);

}  // namespace moe_eplb::npy

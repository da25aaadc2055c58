// .npy reader/writer: round trips, NumPy-written files, and every way a file
// can be broken, each with its one-line reason.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "moe_eplb/error.hpp"
#include "moe_eplb/npy.hpp"

namespace moe_eplb {
namespace {

using ::testing::HasSubstr;

std::vector<std::uint8_t> bytes_of(const std::string& text) {
  return std::vector<std::uint8_t>(text.begin(), text.end());
}

// A v1.0 file with the given header dict and payload.
std::vector<std::uint8_t> npy_file(const std::string& dict, const std::string& payload,
                                   int major = 1) {
  std::string header = dict;
  const std::size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string file = "\x93NUMPY";
  file += static_cast<char>(major);
  file += '\0';
  const std::size_t n = header.size();
  file += static_cast<char>(n & 0xff);
  file += static_cast<char>((n >> 8) & 0xff);
  if (major > 1) file += std::string(2, '\0');
  return bytes_of(file + header + payload);
}

std::string parse_error(const std::vector<std::uint8_t>& file) {
  try {
    npy::parse(file.data(), file.size(), "f.npy");
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kIo);
    return error.what();
  }
  return "";
}

TEST(Npy, RoundTripsEveryDtypeAndOrder) {
  for (Dtype dtype :
       {Dtype::kBool, Dtype::kInt8, Dtype::kUInt8, Dtype::kInt16, Dtype::kInt32, Dtype::kInt64,
        Dtype::kUInt32, Dtype::kUInt64, Dtype::kFloat16, Dtype::kFloat32, Dtype::kFloat64}) {
    for (bool fortran : {false, true}) {
      npy::Array array;
      array.dtype = dtype;
      array.shape = std::vector<std::int64_t>{3, 5};
      array.fortran_order = fortran;
      array.bytes.resize(15 * element_size(dtype));
      for (std::size_t i = 0; i < array.bytes.size(); ++i)
        array.bytes[i] = static_cast<std::uint8_t>(i * 7 + 1);
      const std::vector<std::uint8_t> file = npy::serialize(array);
      EXPECT_EQ((file.size() - array.bytes.size()) % 64, 0u) << "data is 64-byte aligned";
      const npy::Array back = npy::parse(file.data(), file.size());
      EXPECT_EQ(back.dtype, dtype);
      EXPECT_EQ(back.shape, array.shape);
      EXPECT_EQ(back.fortran_order, fortran);
      EXPECT_EQ(back.bytes, array.bytes);
    }
  }
}

TEST(Npy, ScalarsAndEmptyAndOneDimensional) {
  // (), (0,), (7,), (0, 4), (2, 3, 4); built by push_back to dodge a GCC 12
  // -Wnonnull false positive on assigning short initializer lists.
  std::vector<std::vector<std::int64_t>> shapes(5);
  shapes[1].push_back(0);
  shapes[2].push_back(7);
  shapes[3].push_back(0);
  shapes[3].push_back(4);
  for (std::int64_t d : {2, 3, 4}) shapes[4].push_back(d);
  for (const std::vector<std::int64_t>& shape : shapes) {
    npy::Array array;
    array.dtype = Dtype::kInt32;
    array.shape = shape;
    array.bytes.resize(static_cast<std::size_t>(array.num_elements()) * 4, 3);
    const std::vector<std::uint8_t> file = npy::serialize(array);
    const npy::Array back = npy::parse(file.data(), file.size());
    EXPECT_EQ(back.shape, shape);
    EXPECT_EQ(back.bytes.size(), array.bytes.size());
  }
}

// A dtype .npy cannot hold (NumPy has no bfloat16) is refused, not mislabelled.
TEST(Npy, SerializeRefusesDtypesNumPyCannotHold) {
  npy::Array array;
  array.dtype = Dtype::kBFloat16;
  array.shape = {2};
  array.bytes.resize(4);
  try {
    npy::serialize(array);
    FAIL() << "expected an exception";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kIo);
    EXPECT_STREQ(error.what(), "npy::serialize(): a .npy file cannot hold bfloat16 values");
  }
}

TEST(Npy, StridesFollowOrder) {
  npy::Array array;
  array.shape = std::vector<std::int64_t>{3, 5, 2};
  EXPECT_EQ(array.strides(), (std::vector<std::int64_t>{10, 2, 1}));
  array.fortran_order = true;
  EXPECT_EQ(array.strides(), (std::vector<std::int64_t>{1, 3, 15}));
}

TEST(Npy, BigEndianIsSwappedAndVersionsTwoAndThreeParse) {
  const auto file = npy_file("{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }",
                             std::string("\x00\x00\x01\x02\xff\xff\xff\xfe", 8));
  const npy::Array array = npy::parse(file.data(), file.size());
  EXPECT_EQ(array.data<std::int32_t>()[0], 0x0102);
  EXPECT_EQ(array.data<std::int32_t>()[1], -2);
  for (int major : {2, 3}) {
    const auto v = npy_file("{'descr': '<i8', 'fortran_order': True, 'shape': (1, 1), }",
                            std::string("\x05\0\0\0\0\0\0\0", 8), major);
    const npy::Array a = npy::parse(v.data(), v.size());
    EXPECT_EQ(a.data<std::int64_t>()[0], 5);
    EXPECT_TRUE(a.fortran_order);
  }
}

TEST(Npy, KeysInAnyOrderAndDoubleQuotes) {
  const auto file = npy_file("{\"shape\": (1,), \"fortran_order\": False, \"descr\": \"|u1\"}",
                             std::string("\x09", 1));
  EXPECT_EQ(npy::parse(file.data(), file.size()).bytes[0], 9);
}

TEST(Npy, BrokenFilesGetOneLineReasons) {
  const std::string four(16, '\0');
  struct Case {
    std::vector<std::uint8_t> file;
    const char* message;
  };
  const Case cases[] = {
      {bytes_of("hello"), "f.npy: not a .npy file (missing the \\x93NUMPY magic)"},
      {bytes_of("PK\x03\x04 a zip file, maybe .npz"), "not a .npy file"},
      {bytes_of(std::string("\x93NUMPY\x07\x00", 8) + "xx"), "unsupported .npy format version 7.0"},
      {bytes_of(std::string("\x93NUMPY\x01\x00\xff\x00", 10) + "{"),
       "truncated .npy header: it claims 255 bytes"},
      {npy_file("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }", four.substr(0, 12)),
       "the .npy header promises 16 data bytes (shape 2-D, int32) but the file has 12 (truncated)"},
      {npy_file("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }", four + "x"),
       "but the file has 17 (trailing bytes)"},
      {npy_file("{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,), }", four),
       "structured (record) dtypes are not supported"},
      {npy_file("{'descr': '<U5', 'fortran_order': False, 'shape': (1,), }", four),
       "unsupported dtype '<U5' (supported: bool, int8/16/32/64"},
      {npy_file("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", four),
       "unsupported dtype '|O'"},
      {npy_file("{'descr': '<c16', 'fortran_order': False, 'shape': (1,), }", four),
       "unsupported dtype '<c16'"},
      {npy_file("{'descr': '<i4', 'fortran_order': Maybe, 'shape': (1,), }", four),
       "malformed .npy header: expected True or False"},
      {npy_file("{'descr': '<i4', 'fortran_order': False, 'shape': (-1,), }", four),
       "expected a non-negative integer dimension"},
      {npy_file("{'descr': '<i4', 'fortran_order': False, 'shape': (99999999999, 99999999999, "
                "99999999999), }",
                four),
       "the shape in the .npy header is too large to address"},
      {npy_file("{'descr': '<i4', 'fortran_order': False, 'shape': (999999999999999999999,), }",
                four),
       "a dimension in the .npy header is too large"},
      {npy_file("{'descr': '<i4', 'fortran_order': False}", four),
       "lacks one of 'descr', 'fortran_order', 'shape'"},
      {npy_file("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), 'extra': 1}", four),
       "unexpected key 'extra'"},
      {npy_file("{'descr': '<i4' 'fortran_order': False, 'shape': (1,)}", four),
       "expected ',' or '}'"},
      {npy_file("{'descr: '<i4', 'fortran_order': False, 'shape': (1,)}", four),
       "malformed .npy header"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(parse_error(c.file), HasSubstr(c.message));
  }
}

TEST(Npy, SaveIsAtomicAndLeavesNothingOnFailure) {
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/moe_eplb_npy_save_test.npy";
  const std::int32_t values[] = {1, 2, 3, 4};
  npy::save(path, npy::make_int32({2, 2}, values));
  const npy::Array back = npy::load(path);
  EXPECT_EQ(back.shape, (std::vector<std::int64_t>{2, 2}));
  EXPECT_EQ(back.data<std::int32_t>()[3], 4);
  std::remove(path.c_str());

  const std::string missing_dir = dir + "/no/such/dir/out.npy";
  try {
    npy::save(missing_dir, npy::make_int32({2, 2}, values));
    FAIL() << "expected an exception";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("cannot open for writing"));
  }
  std::ifstream probe(missing_dir);
  EXPECT_FALSE(probe.good());
}

TEST(Npy, LoadNamesMissingFile) {
  try {
    npy::load("/nonexistent/file.npy");
    FAIL() << "expected an exception";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("/nonexistent/file.npy: cannot open for reading"));
  }
}

}  // namespace
}  // namespace moe_eplb

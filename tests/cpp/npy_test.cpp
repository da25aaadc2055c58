// .npy reader/writer: round trips, NumPy-written files, and every way a file
// can be broken, each with its one-line reason.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

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

// A folder of this test process's own under the system's temporary folder,
// removed by the test that made it.
std::string scratch_folder(const std::string& name) {
  const std::string folder =
      ::testing::TempDir() + "/moe_eplb_npy_" + std::to_string(::getpid()) + "_" + name;
  std::filesystem::create_directories(folder);
  return folder;
}

std::string load_error(const std::string& path) {
  try {
    npy::load(path);
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kIo);
    return error.what();
  }
  return "";
}

// A wrong input is refused from its first bytes, however large: /dev/zero
// used to be read whole (1.7 GB after 3 s) before the magic was checked.
TEST(Npy, LoadRefusesAnEndlessWrongInputAtOnce) {
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(load_error("/dev/zero"), "/dev/zero: not a .npy file (missing the \\x93NUMPY magic)");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

// A regular file's size is checked against the header before any data is
// read, so a header that promises terabytes costs nothing.
TEST(Npy, LoadChecksTheFileSizeBeforeReadingData) {
  const std::string folder = scratch_folder("size");
  const std::vector<std::uint8_t> huge =
      npy_file("{'descr': '<i8', 'fortran_order': False, 'shape': (1099511627776,), }", "abcd");
  std::ofstream(folder + "/huge.npy", std::ios::binary)
      .write(reinterpret_cast<const char*>(huge.data()), static_cast<std::streamsize>(huge.size()));
  EXPECT_THAT(load_error(folder + "/huge.npy"),
              HasSubstr("promises 8796093022208 data bytes (shape 1-D, int64) but the file has 4 "
                        "(truncated)"));
  std::filesystem::remove_all(folder);
}

// A stream (a pipe) is read no further than the header promises: a header
// that promises 16 bytes followed by 32 MB stops after the 16 (and one more
// to see the trailing bytes); the writer is left with most of its data.
TEST(Npy, LoadReadsAStreamNoFurtherThanThePromise) {
  ::signal(SIGPIPE, SIG_IGN);  // the writer learns of the closed pipe from write()
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const std::vector<std::uint8_t> head =
      npy_file("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", "");
  std::size_t written = 0;
  std::thread writer([&] {
    const std::vector<std::uint8_t> zeros(1 << 16, 0);
    std::size_t offset = 0;
    while (offset < head.size()) {
      const ssize_t n = ::write(fds[1], head.data() + offset, head.size() - offset);
      if (n <= 0) break;
      offset += static_cast<std::size_t>(n);
    }
    written = offset;
    while (written < head.size() + (std::size_t{32} << 20)) {
      const ssize_t n = ::write(fds[1], zeros.data(), zeros.size());
      if (n <= 0) break;
      written += static_cast<std::size_t>(n);
    }
    ::close(fds[1]);
  });
  const std::string path = "/proc/self/fd/" + std::to_string(fds[0]);
  EXPECT_THAT(load_error(path),
              HasSubstr("promises 16 data bytes (shape 1-D, int64) but the file has more "
                        "(trailing bytes)"));
  ::close(fds[0]);  // the writer's next write fails
  writer.join();
  EXPECT_LT(written, std::size_t{4} << 20) << "the reader drained the stream";
}

// A header that promises more than a stream holds fails at the end of the
// stream, having allocated at most one 64 MiB chunk, not the promise.
TEST(Npy, LoadOfATruncatedStreamFailsWithoutAllocatingThePromise) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const std::vector<std::uint8_t> file =
      npy_file("{'descr': '<i8', 'fortran_order': False, 'shape': (1099511627776,), }", "12345678");
  ASSERT_EQ(::write(fds[1], file.data(), file.size()), static_cast<ssize_t>(file.size()));
  ::close(fds[1]);
  EXPECT_THAT(load_error("/proc/self/fd/" + std::to_string(fds[0])),
              HasSubstr("promises 8796093022208 data bytes (shape 1-D, int64) but the file has 8 "
                        "(truncated)"));
  ::close(fds[0]);
}

// Several outputs appear together or not at all: when the second cannot be
// written, the first is not left behind either.
TEST(Npy, WriteFilesIsAllOrNothing) {
  const std::string folder = scratch_folder("write_files");
  const std::int32_t values[] = {1, 2, 3, 4};
  const std::vector<std::uint8_t> bytes = npy::serialize(npy::make_int32({4}, values));
  try {
    npy::write_files({{folder + "/first.npy", bytes}, {folder + "/missing/second.npy", bytes}});
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr(folder + "/missing/second.npy: cannot open for writing"));
  }
  EXPECT_TRUE(std::filesystem::is_empty(folder)) << "no output and no temporary left";
  npy::write_files({{folder + "/first.npy", bytes}, {folder + "/second.npy", bytes}});
  EXPECT_EQ(npy::load(folder + "/second.npy").data<std::int32_t>()[3], 4);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(folder),
                          std::filesystem::directory_iterator()),
            2);
  std::filesystem::remove_all(folder);
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

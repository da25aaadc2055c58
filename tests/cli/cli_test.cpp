// Runs the built moe-eplb tool on .npy files written by NumPy and checks
// outputs, exit statuses and error lines. Bad input must give one clear line
// on stderr, a non-zero exit, and no output file.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "moe_eplb/npy.hpp"

namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const std::string kData = MOE_EPLB_TEST_DATA;
const std::string kExamples = MOE_EPLB_EXAMPLES;

struct Result {
  int status = -1;
  std::string out;
  std::string err;
};

std::string slurp(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// ctest runs each test in its own process, in parallel: every temporary
// file name carries the process id.
std::string unique(const std::string& name) {
  return ::testing::TempDir() + "/" + std::to_string(::getpid()) + "_" + name;
}

Result run(const std::string& args) {
  const std::string out = unique("cli_stdout.txt"), err = unique("cli_stderr.txt");
  const std::string command = std::string(MOE_EPLB_TOOL) + " " + args + " >" + out + " 2>" + err;
  const int raw = std::system(command.c_str());
  Result result;
  result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  result.out = slurp(out);
  result.err = slurp(err);
  return result;
}

bool exists(const std::string& path) { return std::ifstream(path).good(); }

std::string temp_path(const std::string& name) {
  const std::string path = unique(name);
  std::remove(path.c_str());
  return path;
}

std::vector<std::int64_t> values_of(const moe_eplb::npy::Array& array) {
  std::vector<std::int64_t> values;
  const std::vector<std::int64_t> strides = array.strides();
  for (std::int64_t r = 0; r < array.shape[0]; ++r) {
    for (std::int64_t c = 0; c < array.shape[1]; ++c) {
      const std::int64_t i = r * strides[0] + c * strides[1];
      values.push_back(array.dtype == moe_eplb::Dtype::kInt32 ? array.data<std::int32_t>()[i]
                                                              : array.data<std::int64_t>()[i]);
    }
  }
  return values;
}

std::string map_args(const std::string& ids, const std::string& table, const std::string& extra) {
  return "map --expert-ids " + ids + " --table " + table + " --rank 2 --world-size 4 " + extra;
}

// Output equals what an independent NumPy formulation computed, for every
// input layout NumPy writes, and keeps the ids' dtype.
TEST(CliMap, MatchesNumPyReferenceForEveryInputLayout) {
  const auto expected0 = values_of(moe_eplb::npy::load(kData + "/expected_rank2_mode0.npy"));
  const auto expected1 = values_of(moe_eplb::npy::load(kData + "/expected_rank2_mode1.npy"));
  struct Case {
    std::string ids, table;
    moe_eplb::Dtype dtype;
  };
  const Case cases[] = {
      {kData + "/ids_c_int32.npy", kExamples + "/eplb_table.npy", moe_eplb::Dtype::kInt32},
      {kData + "/ids_f_int64.npy", kExamples + "/eplb_table.npy", moe_eplb::Dtype::kInt64},
      {kData + "/ids_be_int32.npy", kData + "/table_int64.npy", moe_eplb::Dtype::kInt32},
      {kData + "/ids_c_int32.npy", kData + "/table_f_int32.npy", moe_eplb::Dtype::kInt32},
  };
  for (const Case& c : cases) {
    for (int mode : {0, 1}) {
      const std::string out = temp_path("cli_map_out.npy");
      const Result r = run(
          map_args(c.ids, c.table,
                   "--balance-mode " + std::to_string(mode) + " --num-physical 20 --out " + out));
      ASSERT_EQ(r.status, 0) << c.ids << "\n" << r.err;
      const moe_eplb::npy::Array array = moe_eplb::npy::load(out);
      EXPECT_EQ(array.dtype, c.dtype) << c.ids;
      EXPECT_FALSE(array.fortran_order);
      EXPECT_EQ(values_of(array), mode == 0 ? expected0 : expected1) << c.ids << " mode " << mode;
      EXPECT_THAT(r.out, HasSubstr("wrote " + out));
    }
  }
}

TEST(CliMap, PrintsTheMappingWithoutOut) {
  const Result r = run(map_args(kExamples + "/expert_ids.npy", kExamples + "/eplb_table.npy", ""));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("token    0: logical [0 11 10 2] -> physical [5 18 13 2]"));
}

TEST(CliMap, BadFilesGiveOneLineAndNoOutput) {
  struct Case {
    std::string ids, table, message;
  };
  const std::string table = kExamples + "/eplb_table.npy";
  const Case cases[] = {
      {kData + "/not_npy.npy", table, "--expert-ids " + kData + "/not_npy.npy: not a .npy file"},
      {kData + "/truncated.npy", table, "but the file has 123 (truncated)"},
      {kData + "/lying_header.npy", table, "the .npy header promises 1584 data bytes"},
      {kData + "/ids_float32.npy", table,
       "expected a 2-D int32 or int64 array (BS, K), got a 2-D float32 array (8, 4)"},
      {kData + "/ids_3d.npy", table, "got a 3-D int32 array (2, 4, 4)"},
      {kData + "/structured.npy", table, "structured (record) dtypes are not supported"},
      {kData + "/missing.npy", table, "cannot open for reading"},
      {kData + "/ids_c_int32.npy", kData + "/ids_float32.npy",
       "--table " + kData + "/ids_float32.npy: expected a 2-D int32 array (E, F)"},
  };
  for (const Case& c : cases) {
    const std::string out = temp_path("cli_bad_out.npy");
    const Result r = run(map_args(c.ids, c.table, "--out " + out));
    EXPECT_EQ(r.status, 1) << c.ids;
    EXPECT_THAT(r.err, HasSubstr("moe-eplb: error: "));
    EXPECT_THAT(r.err, HasSubstr(c.message)) << c.ids;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
    EXPECT_FALSE(exists(out)) << "no output file on failure";
  }
}

TEST(CliMap, BadValuesAndArguments) {
  const std::string ids = kData + "/ids_c_int32.npy", table = kExamples + "/eplb_table.npy";
  const std::string out = temp_path("cli_bad_values.npy");
  Result r = run("map --expert-ids " + ids + " --table " + table +
                 " --rank 4 --world-size 4 --out " + out);
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, HasSubstr("local_rank_id must be in 0..3 (world_size 4), got 4"));
  r = run(map_args(ids, kData + "/table_invalid.npy", "--out " + out));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err,
              HasSubstr("expert_ids[0, 3] = 2 selects eplb_table row 2 whose replica count 0"));
  r = run(map_args(ids, table, "--balance-mode 1 --profile ascend_seed --out " + out));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(
      r.err, HasSubstr("balance_mode 1 (by token) is not supported under the ascend_seed profile"));
  r = run(map_args(ids, table, "--profile fast --out " + out));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(
      r.err,
      HasSubstr("unknown limit profile 'fast', expected one of: native, ascend, ascend_seed"));
  r = run(map_args(ids, table, "--num-physical 8 --out " + out));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, HasSubstr("outside the slot range 0..7 (num_physical_experts 8)"));
  EXPECT_FALSE(exists(out));
  r = run("map --expert-ids " + ids);
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.err, HasSubstr("--table is required"));
}

TEST(CliValidate, ValidTableExitsZeroWithWarnings) {
  const Result r =
      run("validate --table " + kExamples + "/eplb_table.npy --world-size 4 --num-physical 20");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("valid (0 errors, 1 warnings)"));
  EXPECT_THAT(r.out,
              HasSubstr("warning: row 0, column 3: replica 3 (slot 10) never receives tokens"));
}

TEST(CliValidate, InvalidTableListsEveryProblemAndExitsOne) {
  const Result r = run("validate --table " + kData + "/table_invalid.npy --world-size 4");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.out, HasSubstr("error: row 2: replica count 0 is outside 1..3 (F - 1)"));
  EXPECT_THAT(
      r.out,
      HasSubstr("error: physical slot 0 is claimed by row 0 (column 1) and row 5 (column 1)"));
  EXPECT_THAT(r.out, HasSubstr("INVALID (2 errors"));
}

TEST(CliValidate, AscendProfileAndBadWorldSize) {
  Result r =
      run("validate --table " + kExamples + "/eplb_table.npy --world-size 1 --profile ascend");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.out, HasSubstr("world_size 1 is outside 2..768 under the ascend profile"));
  r = run("validate --table " + kExamples + "/eplb_table.npy --world-size 0");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, HasSubstr("world_size must be -1 (unknown) or in 1..2147483647, got 0"));
}

TEST(CliGeneral, HelpAndUnknownCommand) {
  Result r = run("--help");
  EXPECT_EQ(r.status, 0);
  EXPECT_THAT(r.out, HasSubstr("map"));
  EXPECT_THAT(r.out, HasSubstr("validate"));
  r = run("frobnicate");
  EXPECT_NE(r.status, 0);
}

}  // namespace

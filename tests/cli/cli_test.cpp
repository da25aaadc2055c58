// Runs the built moe-eplb tool on .npy files written by NumPy and checks
// outputs, exit statuses and error lines. Bad input must give one clear line
// on stderr that starts "moe-eplb: error: ", exit status 1, and no output
// file. Every file a test writes lives in its own folder under the build
// tree, removed when the test program ends.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
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

// ctest runs each test in its own process, in parallel: each process writes
// in a folder of its own under the build tree, removed at exit.
class WorkFolder : public ::testing::Environment {
 public:
  static const std::string& path() {
    static const std::string folder =
        std::string(MOE_EPLB_CLI_WORK) + "/" + std::to_string(::getpid());
    return folder;
  }
  void SetUp() override { std::filesystem::create_directories(path()); }
  void TearDown() override { std::filesystem::remove_all(path()); }
};
const auto* const kWorkFolder = ::testing::AddGlobalTestEnvironment(new WorkFolder);

std::string unique(const std::string& name) { return WorkFolder::path() + "/" + name; }

// The built tool, or the one MOE_EPLB_CLI_TOOL names (to run these tests
// against another build, e.g. an older commit's).
std::string tool() {
  const char* other = std::getenv("MOE_EPLB_CLI_TOOL");
  return other != nullptr ? other : MOE_EPLB_TOOL;
}

// `limits` is a shell prefix (ulimit, timeout) for the tool's command.
Result run(const std::string& args, const std::string& limits = "") {
  const std::string out = unique("cli_stdout.txt"), err = unique("cli_stderr.txt");
  const std::string command = limits + tool() + " " + args + " >" + out + " 2>" + err;
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

// A large wrong file is refused from its first bytes: --table /dev/zero used
// to be read whole before it was checked (1.7 GB after 3 s, and no error).
// Memory and time are capped, so a regression fails here instead of
// exhausting the machine (the cap on memory only outside the sanitizers,
// which reserve terabytes of address space).
TEST(CliMap, EndlessWrongTableIsRefusedAtOnce) {
#if defined(__SANITIZE_ADDRESS__)
  const std::string limits = "timeout 20 ";
#else
  const std::string limits = "ulimit -v 1000000; timeout 20 ";
#endif
  const Result r = run(
      "map --expert-ids " + kData + "/ids_c_int32.npy --table /dev/zero --rank 0 --world-size 4",
      limits);
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err,
            "moe-eplb: error: --table /dev/zero: not a .npy file (missing the \\x93NUMPY "
            "magic)\n");
  EXPECT_EQ(r.out, "");
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
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "moe-eplb: error: --table is required (moe-eplb map --help)\n");
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
  EXPECT_EQ(r.err, "moe-eplb: error: --table " + kData +
                       "/table_invalid.npy is not a valid eplb_table: 2 errors (listed above)\n");
}

TEST(CliValidate, AscendProfileAndBadWorldSize) {
  Result r =
      run("validate --table " + kExamples + "/eplb_table.npy --world-size 1 --profile ascend");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.out, HasSubstr("world_size 1 is outside 2..768 under the ascend profile"));
  r = run("validate --table " + kExamples + "/eplb_table.npy --world-size 0");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, HasSubstr("--world-size: must be -1 (unknown) or in 1..2147483647, got 0"));
}

TEST(CliGeneral, HelpAndVersionExitZero) {
  Result r = run("--help");
  EXPECT_EQ(r.status, 0);
  EXPECT_THAT(r.out, HasSubstr("map"));
  EXPECT_THAT(r.out, HasSubstr("validate"));
  EXPECT_THAT(r.out, HasSubstr("Exit status 0 on success, 1 on any error"));
  r = run("plan --help");
  EXPECT_EQ(r.status, 0);
  EXPECT_THAT(r.out, HasSubstr("--slots-per-rank"));
  r = run("--version");
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.out, "moe-eplb " MOE_EPLB_VERSION "\n");
}

// The flags ("--name", lowercase and dashes) in `text`, each where no letter,
// digit or dash comes before it. (No std::regex: GCC 12 warns inside it
// under the sanitizers, and the asan preset treats warnings as errors.)
std::set<std::string> flags_in(const std::string& text) {
  std::set<std::string> flags;
  for (std::size_t at = text.find("--"); at != std::string::npos; at = text.find("--", at + 2)) {
    const auto before = static_cast<unsigned char>(at == 0 ? ' ' : text[at - 1]);
    std::size_t end = at + 2;
    while (end < text.size() && (std::islower(static_cast<unsigned char>(text[end])) ||
                                 (text[end] == '-' && end > at + 2))) {
      ++end;
    }
    if (!std::isalnum(before) && before != '-' && end > at + 2) {
      flags.insert(text.substr(at, end - at));
    }
  }
  return flags;
}

// The flag each option line of `moe-eplb COMMAND --help` starts with
// ("  --name ..." or "  -h,--name ..."), --help itself aside.
std::set<std::string> help_options(const std::string& command) {
  const Result r = run(command + " --help");
  EXPECT_EQ(r.status, 0) << command;
  std::set<std::string> options;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    const std::size_t first = line.find_first_not_of(' ');
    if (first == 0 || first == std::string::npos || line[first] != '-') continue;
    const std::string name = line.substr(first, line.find(' ', first) - first);
    for (const std::string& flag : flags_in(name)) {
      if (flag != "--help") options.insert(flag);
    }
  }
  return options;
}

// The README's synopsis ("## Command line") names every command and every
// option of each, as `--help` prints them: nothing missing, nothing stale.
TEST(CliGeneral, ReadmeSynopsisNamesEveryCommandAndOption) {
  const std::string readme = slurp(kExamples + "/../README.md");
  const std::string start = "## Command line\n\n```sh\n";
  const std::size_t begin = readme.find(start);
  ASSERT_NE(begin, std::string::npos) << "no synopsis in the README";
  const std::size_t end = readme.find("\n```\n", begin + start.size());
  std::istringstream synopsis(readme.substr(begin + start.size(), end - begin - start.size()));
  std::map<std::string, std::set<std::string>> readme_options;
  std::string command;
  for (std::string line; std::getline(synopsis, line);) {
    line = line.substr(0, line.find('#'));  // the comments
    if (line.rfind("moe-eplb ", 0) == 0) {
      command = line.substr(9, line.find(' ', 9) - 9);
      readme_options[command];
    }
    ASSERT_FALSE(command.empty()) << line;
    for (const std::string& flag : flags_in(line)) readme_options[command].insert(flag);
  }
  // The commands are the ones `moe-eplb --help` lists.
  const Result top = run("--help");
  std::set<std::string> commands;
  std::istringstream lines(top.out.substr(top.out.find("Subcommands:")));
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("  ", 0) == 0 && std::islower(static_cast<unsigned char>(line[2]))) {
      commands.insert(line.substr(2, line.find(' ', 2) - 2));
    }
  }
  std::set<std::string> in_readme;
  for (const auto& entry : readme_options) in_readme.insert(entry.first);
  EXPECT_EQ(in_readme, commands);
  for (const auto& [name, options] : readme_options) {
    EXPECT_EQ(options, help_options(name)) << "moe-eplb " << name << ": the README's options "
                                           << "(left) against --help's (right)";
  }
}

// Every error, usage errors included, is one prefixed line and exit status 1.
TEST(CliGeneral, UsageErrorsExitOneWithOnePrefixedLine) {
  const std::string commands =
      "expected one of: map, validate, record, plan, simulate, convert, demo, diff, replay "
      "(moe-eplb --help)";
  const std::string ids = kData + "/ids_c_int32.npy", table = kExamples + "/eplb_table.npy";
  const std::string map = "map --expert-ids " + ids + " --table " + table;
  struct Case {
    std::string args, message;
  };
  const Case cases[] = {
      {"frobnicate", "unknown command 'frobnicate'; " + commands},
      {"", "no command given; " + commands},
      {"--frobnicate", "'--frobnicate' is not a command; " + commands},
      {map + " --rank 0", "--world-size is required (moe-eplb map --help)"},
      {map + " --rank 0 --world-size 4 --flip",
       "The following argument was not expected: --flip (moe-eplb map --help)"},
      {map + " --rank x --world-size 4", "--rank: must be an integer, got 'x'"},
      {"validate --table " + table, "--world-size is required (moe-eplb validate --help)"},
      {"convert --from ascend --to csv --in a --out b", "--to: csv not in {ascend,phy2log"},
  };
  for (const Case& c : cases) {
    const Result r = run(c.args);
    EXPECT_EQ(r.status, 1) << c.args;
    EXPECT_EQ(r.err.rfind("moe-eplb: error: ", 0), 0u) << c.args << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.message)) << c.args;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
  }
}

// Every numeric option has a range, checked while parsing, before any file
// is read or any work is done (the files named here do not exist).
TEST(CliGeneral, NumericOptionsOutOfRangeAreRefusedFirst) {
  const std::string ids = kData + "/ids_c_int32.npy", table = kExamples + "/eplb_table.npy";
  const std::string map = "map --expert-ids " + ids + " --table " + table + " --world-size 4 ";
  struct Case {
    std::string args, message;
  };
  const Case cases[] = {
      {map + "--rank 0 --print-rows -5", "--print-rows: must be 0 or more, got -5"},
      {map + "--rank -1", "--rank: must be 0 or more, got -1"},
      {map + "--rank 0 --balance-mode 3", "--balance-mode: must be in 0..2, got 3"},
      {"simulate --table none.npy --load none.npy --world-size 4 --slots-per-rank 2 --rule sglang",
       "--rule: sglang not in {ascend-rank,ascend-token,vllm,sglang-static,sglang-dynamic,"
       "trtllm}"},
      {map + "--rank 0 --num-physical 0",
       "--num-physical: must be -1 (not checked exactly) or 1 or more, got 0"},
      {"validate --table " + table + " --world-size 4 --max-issues -1",
       "--max-issues: must be 0 or more, got -1"},
      {"validate --table " + table + " --world-size 0",
       "--world-size: must be -1 (unknown) or in 1..2147483647, got 0"},
      {"demo --tokens-per-rank -1", "--tokens-per-rank: must be in 0..1048576, got -1"},
      {"demo --tokens-per-rank 2000000", "--tokens-per-rank: must be in 0..1048576, got 2000000"},
      {"record --expert-ids none.npy --out none_out.npy --num-experts 3000000000",
       "--num-experts: must be in 1..65536, got 3000000000"},
      {"record --expert-ids none.npy --out none_out.npy --num-experts 10000000",
       "--num-experts: must be in 1..65536, got 10000000"},
      {"plan --load none.npy --world-size 4 --slots-per-rank 0 --out t.npy",
       "--slots-per-rank: must be in 1..2147483647, got 0"},
      {"plan --load none.npy --world-size 4 --slots-per-rank 2 --columns 1 --out t.npy",
       "--columns: must be 0 (fit) or in 2..2147483647, got 1"},
      {"plan --load none.npy --world-size 4 --slots-per-rank 2 --max-moves -2 --out t.npy",
       "--max-moves: must be -1 (no cap) or 0 or more, got -2"},
      {"plan --load none.npy --world-size 4 --slots-per-rank 2 --move-cost nan --out t.npy",
       "--move-cost: must be a finite number >= 0, got nan"},
      {"plan --load none.npy --world-size 4 --slots-per-rank 2 --threads -1 --out t.npy",
       "--threads: must be 0 or more, got -1"},
      {"simulate --table none.npy --load none.npy --world-size 4 --slots-per-rank 2 --layer -2",
       "--layer: must be -1 (all) or 0 or more, got -2"},
      {"diff --from a.npy --to b.npy --world-size 4 --slots-per-rank 2 --expert-bytes -1",
       "--expert-bytes: must be 0 or more, got -1"},
      {"convert --from ascend --to log2phy --in a.npy --out b.npy --max-replicas -1",
       "--max-replicas: must be in 0..2147483647, got -1"},
      {"replay --scenario transient-qwen3-ep16 --windows 1",
       "--windows: must be in 2..100000, got 1"},
      {"replay --scenario transient-qwen3-ep16 --windows 3 --every 0",
       "--every: must be 1 or more, got 0"},
      {"replay --scenario transient-qwen3-ep16 --windows 3 --expert-bytes -5",
       "--expert-bytes: must be a finite number >= 0, got -5"},
  };
  for (const Case& c : cases) {
    const Result r = run(c.args);
    EXPECT_EQ(r.status, 1) << c.args;
    EXPECT_EQ(r.err.rfind("moe-eplb: error: ", 0), 0u) << c.args << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.message)) << c.args;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
    EXPECT_EQ(r.out, "") << c.args;
  }
}

// A bad --save-dir is refused before the demo does its work.
TEST(CliDemo, SaveDirIsCheckedFirst) {
  const Result r = run("demo --save-dir " + unique("missing_folder") + " --svg ''");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "moe-eplb: error: --save-dir " + unique("missing_folder") +
                       ": No such file or directory (give an existing folder)\n");
  EXPECT_EQ(r.out, "");
}

// record names the trace position and --num-experts, not the operator's terms.
TEST(CliRecord, ExpertIdOutOfRangeNamesTheTracePosition) {
  const std::string trace = unique("trace.npy");
  const std::int32_t ids[] = {0, 1, 2, 3, 1, 0, 7, 2};  // (2 ranks, 2 tokens, top-2)
  moe_eplb::npy::save(trace, moe_eplb::npy::make_int32({2, 2, 2}, ids));
  const std::string out = temp_path("load.npy");
  const Result r = run("record --expert-ids " + trace + " --num-experts 4 --out " + out);
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "moe-eplb: error: --expert-ids " + trace +
                       ": rank 1, token 1, choice 0: expert id 7 is outside 0..3 "
                       "(--num-experts 4)\n");
  EXPECT_FALSE(exists(out));
}

}  // namespace

// validate_table(): every problem of SPEC.md's "Bad input" list, all at once,
// with rows and columns; warnings for placements rank mode wastes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "moe_eplb/error.hpp"
#include "moe_eplb/table.hpp"
#include "reference.hpp"
#include "test_util.hpp"

namespace moe_eplb {
namespace {

using ::testing::HasSubstr;
using namespace moe_eplb::test;
using Kind = TableIssue::Kind;
using Severity = TableIssue::Severity;

std::vector<Kind> kinds(const TableReport& report, Severity severity) {
  std::vector<Kind> out;
  for (const TableIssue& issue : report.issues) {
    if (issue.severity == severity) out.push_back(issue.kind);
  }
  return out;
}

const TableIssue* find(const TableReport& report, Kind kind) {
  for (const TableIssue& issue : report.issues) {
    if (issue.kind == kind) return &issue;
  }
  return nullptr;
}

ValidateTableOptions quiet() {
  ValidateTableOptions options;
  options.warn_unused_slots = false;
  options.check_rank_mode_reachability = false;
  return options;
}

TEST(ValidateTable, RandomValidTablesHaveNoErrors) {
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 50; ++trial) {
    const TableSpec spec{1 + static_cast<std::int64_t>(rng() % 64), 6,
                         1 + static_cast<std::int64_t>(rng() % 16), 5, 5};
    if (spec.num_experts > spec.world_size * spec.slots_per_rank) continue;
    for (Layout layout : kAllLayouts) {
      OwnedTable table(random_table(spec, rng), layout);
      const TableReport report = validate_table(table.view, spec.world_size,
                                                spec.world_size * spec.slots_per_rank, quiet());
      EXPECT_TRUE(report.ok()) << report.to_string();
    }
  }
}

// A table with one of each problem: all reported, each with row and column.
TEST(ValidateTable, ReportsEveryProblemWithRowAndColumn) {
  OwnedTable table(matrix_from_rows({
      {2, 0, 1, 9},   // ok
      {0, 2, 3, 9},   // count 0
      {4, 2, 3, 4},   // count 4 > F-1 = 3
      {2, 16, 2, 9},  // id 16 out of range (16 slots)
      {3, 5, 6, 5},   // 5 twice in one row
      {1, 0, 9, 9},   // slot 0 again (row 0 has it)
      {1, -1, 9, 9},  // negative id
  }));
  const TableReport report = validate_table(table.view, 4, 16, quiet());
  EXPECT_FALSE(report.ok());
  EXPECT_EQ(report.total_errors, 6);
  EXPECT_THAT(report.to_string(),
              HasSubstr("error: row 1: replica count 0 is outside 1..3 (F - 1)"));
  EXPECT_THAT(report.to_string(),
              HasSubstr("error: row 2: replica count 4 is outside 1..3 (F - 1)"));
  EXPECT_THAT(
      report.to_string(),
      HasSubstr("error: row 3, column 1: slot 16 is outside 0..15 (num_physical_experts 16)"));
  EXPECT_THAT(report.to_string(), HasSubstr("error: row 4: slot 5 appears in columns 1 and 3"));
  EXPECT_THAT(
      report.to_string(),
      HasSubstr("error: physical slot 0 is claimed by row 0 (column 1) and row 5 (column 1)"));
  EXPECT_THAT(report.to_string(), HasSubstr("error: row 6, column 1: slot -1 is outside 0..15"));
  const TableIssue* dup = find(report, Kind::kSlotClaimedTwice);
  ASSERT_NE(dup, nullptr);
  EXPECT_EQ(dup->row, 5);
  EXPECT_EQ(dup->column, 1);
  // Issues come in row order.
  for (std::size_t i = 1; i < report.issues.size(); ++i) {
    EXPECT_LE(report.issues[i - 1].row, report.issues[i].row);
  }
}

TEST(ValidateTable, SlotCountMustBeAMultipleOfWorldSizeAndWithinProfile) {
  OwnedTable table(matrix_from_rows({{1, 0}, {1, 1}}));
  TableReport report = validate_table(table.view, 4, 6, quiet());
  EXPECT_EQ(kinds(report, Severity::kError), std::vector<Kind>{Kind::kSlotsNotMultiple});
  EXPECT_THAT(report.to_string(),
              HasSubstr("num_physical_experts 6 is not a multiple of world_size 4"));
  ValidateTableOptions ascend = quiet();
  ascend.profile = LimitProfile::kAscend;
  report = validate_table(table.view, 4, 1028, ascend);
  EXPECT_EQ(kinds(report, Severity::kError), std::vector<Kind>{Kind::kTooManySlots});
  EXPECT_THAT(report.to_string(),
              HasSubstr("num_physical_experts 1028 exceeds 1024 under the ascend profile"));
}

TEST(ValidateTable, InfersSlotCountAsSmallestMultipleOfWorldSize) {
  OwnedTable table(matrix_from_rows({{2, 0, 9}, {1, 4, 0}}));
  const TableReport report = validate_table(table.view, 4, -1, quiet());
  EXPECT_TRUE(report.ok());
  EXPECT_TRUE(report.num_physical_experts_inferred);
  EXPECT_EQ(report.num_physical_experts, 12);
}

// SPEC: world_size=16 with count 5 -> groups of 4 ranks reach replicas 1..4; replica 5 is dead.
TEST(ValidateTable, WarnsAboutReplicasRankModeNeverSelects) {
  OwnedTable table(matrix_from_rows({{5, 0, 4, 8, 12, 16}}));
  ValidateTableOptions options = quiet();
  options.check_rank_mode_reachability = true;
  const TableReport report = validate_table(table.view, 16, 32, options);
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(kinds(report, Severity::kWarning), std::vector<Kind>{Kind::kDeadReplica});
  EXPECT_THAT(report.to_string(),
              HasSubstr("warning: row 0, column 5: replica 5 (slot 16) never receives tokens in "
                        "rank mode: world_size 16 with 5 replicas makes groups of 4 ranks, which "
                        "reach only replicas 1..4"));
  EXPECT_EQ(find(report, Kind::kDeadReplica)->column, 5);
}

TEST(ValidateTable, WarnsAboutReplicasSharingARankAndUnusedSlots) {
  // 2 ranks x 2 slots: slots 0,1 on rank 0; 2,3 on rank 1.
  OwnedTable table(matrix_from_rows({{2, 0, 1}, {1, 2, 0}}));
  ValidateTableOptions options;
  const TableReport report = validate_table(table.view, 2, 4, options);
  EXPECT_TRUE(report.ok());
  EXPECT_THAT(report.to_string(),
              HasSubstr("warning: row 0: several replicas sit on rank 0 (2 slots per rank)"));
  EXPECT_THAT(report.to_string(),
              HasSubstr("warning: physical slot 3 (rank 1) is not used by any logical expert"));
  EXPECT_EQ(report.total_warnings, 2);
}

TEST(ValidateTable, TruncatesTheListButCountsExactly) {
  Matrix rows = make_matrix(50, 3, 0);  // every count 0
  OwnedTable table(rows);
  ValidateTableOptions options = quiet();
  options.max_issues = 5;
  const TableReport report = validate_table(table.view, 2, 2, options);
  EXPECT_EQ(report.issues.size(), 5u);
  EXPECT_EQ(report.total_errors, 50);
  EXPECT_THAT(report.to_string(), HasSubstr("... and 45 more (50 errors and 0 warnings in all)"));
}

TEST(ValidateTable, UnusedSlotCountIsExactForHugeSlotRanges) {
  OwnedTable table(matrix_from_rows({{1, 3}}));
  ValidateTableOptions options;
  options.max_issues = 10;
  const TableReport report =
      validate_table(table.view, 1, 1 << 30, options);  // must not loop 2^30 times
  EXPECT_EQ(report.total_warnings, (1 << 30) - 1);
  EXPECT_EQ(report.issues.size(), 10u);
}

// Found by fuzzing: the largest int32 id made the inferred slot count 2^31 and
// overflowed the unused-slot walk (UBSan). Now it is a clear limit error.
TEST(ValidateTable, LargestInt32InstanceIdIsALimitErrorNotOverflow) {
  OwnedTable table(matrix_from_rows({{1, INT32_MAX}}));
  const TableReport report = validate_table(table.view, 1, -1);
  EXPECT_EQ(report.num_physical_experts, std::int64_t{1} << 31);
  EXPECT_THAT(
      report.to_string(),
      HasSubstr("num_physical_experts 2147483648 (inferred from the largest slot in the table) "
                "exceeds 2147483647 under the native profile"));
}

TEST(ValidateTable, AscendProfileShapeLimits) {
  OwnedTable table(matrix_from_rows({{3, 0, 1, 2, 3, 4}}));
  ValidateTableOptions options = quiet();
  options.profile = LimitProfile::kAscend;
  const TableReport report = validate_table(table.view, 2, 8, options);
  EXPECT_THAT(report.to_string(),
              HasSubstr("eplb_table has 6 columns (F), expected at most world_size + 1 = 3"));
  EXPECT_THAT(report.to_string(),
              HasSubstr("row 0: replica count 3 exceeds world_size 2 under the ascend profile"));
}

TEST(ValidateTable, UnknownWorldSizeSkipsPerRankChecks) {
  OwnedTable table(matrix_from_rows({{3, 0, 1, 2}}));
  ValidateTableOptions options;
  options.profile = LimitProfile::kAscend;
  const TableReport report = validate_table(table.view, -1, 3, options);
  EXPECT_TRUE(report.ok()) << report.to_string();
}

TEST(ValidateTable, TooFewColumnsIsOneShapeError) {
  std::int32_t data[] = {1, 1, 1};
  const TableReport report = validate_table(TableView{data, 3, 1, 1, 1}, 2, 2, quiet());
  EXPECT_EQ(report.total_errors, 1);
  EXPECT_THAT(report.to_string(), HasSubstr("eplb_table has 1 columns (F), expected at least 2"));
}

TEST(ValidateTable, BadArgumentsThrow) {
  std::int32_t data[] = {1, 0};
  EXPECT_THROW(validate_table(TableView{data, 1, 2, 2, 1}, 0, 2), Error);
  EXPECT_THROW(validate_table(TableView{nullptr, 1, 2, 2, 1}, 2, 2), Error);
  EXPECT_THROW(validate_table(TableView{data, -1, 2, 2, 1}, 2, 2), Error);
  EXPECT_THROW(validate_table(TableView{data, 1, 2, 2, 1}, 2, 0), Error);
}

TEST(ValidateTable, ThrowIfInvalidListsEveryError) {
  OwnedTable table(matrix_from_rows({{0, 0}, {0, 0}}));
  try {
    throw_if_invalid(validate_table(table.view, 2, 2, quiet()), "prepare_table()");
    FAIL() << "expected an exception";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kInvalidTable);
    EXPECT_THAT(error.what(),
                HasSubstr("prepare_table(): eplb_table is invalid (2 errors):\nerror: row 0"));
    EXPECT_THAT(error.what(), HasSubstr("error: row 1: replica count 0"));
  }
}

// SPEC: world_size=16, c=3 -> 6:6:4 ranks.
TEST(RankModeFacts, RanksServedByReplica) {
  EXPECT_EQ(ranks_served_by_replica(3, 1, 16), 6);
  EXPECT_EQ(ranks_served_by_replica(3, 2, 16), 6);
  EXPECT_EQ(ranks_served_by_replica(3, 3, 16), 4);
  EXPECT_EQ(ranks_served_by_replica(5, 5, 16), 0);
  EXPECT_EQ(ranks_served_by_replica(1, 1, 16), 16);
  for (std::int64_t w = 1; w <= 50; ++w) {
    for (std::int64_t c = 1; c <= w; ++c) {
      std::int64_t total = 0;
      for (std::int64_t j = 1; j <= c; ++j) total += ranks_served_by_replica(c, j, w);
      EXPECT_EQ(total, w) << "every rank is served exactly once";
      for (std::int64_t r = 0; r < w; ++r) {
        EXPECT_EQ(rank_mode_replica(c, r, w), reference_column(c, 0, r, w, 0));
      }
    }
  }
}

}  // namespace
}  // namespace moe_eplb

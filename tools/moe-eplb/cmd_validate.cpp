// moe-eplb validate: every problem of a table, with rows and columns.
#include <cstdio>
#include <memory>
#include <string>

#include "arrays.hpp"
#include "commands.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/table.hpp"
#include "options.hpp"

namespace moe_eplb::cli {
namespace {

struct ValidateOptions {
  std::string table_path;
  std::int64_t world_size = 0;
  std::int64_t num_physical_experts = -1;
  std::string profile = "native";
  std::int64_t max_issues = 1000;
};

void run_validate(const ValidateOptions& options) {
  const LoadedTable table = load_table("--table", options.table_path);
  ValidateTableOptions validate_options;
  validate_options.profile = parse_limit_profile(options.profile);
  validate_options.max_issues = options.max_issues;
  const TableReport report = validate_table(table.view, options.world_size,
                                            options.num_physical_experts, validate_options);
  std::fputs(report.to_string().c_str(), stdout);
  std::printf(
      "%s: %lld rows, %lld columns, %lld physical slots%s, world_size %lld: %s "
      "(%lld errors, %lld warnings)\n",
      options.table_path.c_str(), static_cast<long long>(table.view.num_experts),
      static_cast<long long>(table.view.num_columns),
      static_cast<long long>(report.num_physical_experts),
      report.num_physical_experts_inferred ? " (inferred)" : "",
      static_cast<long long>(options.world_size), report.ok() ? "valid" : "INVALID",
      static_cast<long long>(report.total_errors), static_cast<long long>(report.total_warnings));
  MOE_EPLB_CHECK_CODE(report.ok(), ErrorCode::kInvalidTable, "--table ", options.table_path,
                      " is not a valid eplb_table: ", report.total_errors, " error",
                      report.total_errors == 1 ? "" : "s", " (listed above)");
}

}  // namespace

void add_validate_command(CLI::App& app) {
  auto options = std::make_shared<ValidateOptions>();
  CLI::App* validate = app.add_subcommand(
      "validate", "Check an EPLB table; exits 1 when it is invalid (warnings do not fail)");
  validate->add_option("--table", options->table_path, "(E, F) int32 .npy EPLB table")->required();
  validate
      ->add_option("--world-size", options->world_size,
                   "EP group size (-1 = unknown: token mode, the per-rank checks are skipped)")
      ->required()
      ->check(in_range_or(-1, "unknown", 1, INT32_MAX));
  validate
      ->add_option("--num-physical", options->num_physical_experts,
                   "physical slots; -1 infers the smallest multiple of world_size")
      ->check(in_range_or(-1, "infer", 1))
      ->capture_default_str();
  validate->add_option("--profile", options->profile, "limit profile: native, ascend, ascend_seed")
      ->capture_default_str();
  validate->add_option("--max-issues", options->max_issues, "list at most this many issues")
      ->check(in_range(0))
      ->capture_default_str();
  validate->callback([options] { run_validate(*options); });
}

}  // namespace moe_eplb::cli

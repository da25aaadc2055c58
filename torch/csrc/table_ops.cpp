// Host work on a whole table, whatever its device (it is read on the host):
// prepare_table validates it and precomputes this rank's routes;
// validate_table lists every problem, as `moe-eplb validate` does. One
// CompositeExplicitAutograd kernel each serves every backend.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "mapping_call.hpp"
#include "moe_eplb/table.hpp"

namespace moe_eplb::torch_adapter {
namespace {

// A table holding values, on the host.
at::Tensor host_values(const char* operation, const at::Tensor& eplb_table) {
  MOE_EPLB_CHECK(!eplb_table.is_meta(), operation,
                 ": eplb_table must hold values (every entry is validated), got a meta tensor");
  return eplb_table.cpu();
}

// (routes, num_physical_experts): int32 routes on the table's device in
// prepared.hpp's layout, and the slot count (inferred when -1 was given).
std::tuple<at::Tensor, std::int64_t> prepare_table(
    const at::Tensor& eplb_table, std::int64_t local_rank_id, std::int64_t world_size,
    std::int64_t balance_mode, std::int64_t num_physical_experts, c10::string_view profile) {
  constexpr const char* kPrepareTable = "prepare_table()";
  return translate_errors([&] {
    const at::Tensor host = host_values(kPrepareTable, eplb_table);
    const PreparedTable prepared(table_view(kPrepareTable, host),
                                 make_params(kPrepareTable, local_rank_id, world_size, balance_mode,
                                             num_physical_experts, profile),
                                 kPrepareTable);
    at::Tensor routes = at::empty({prepared.num_experts(), prepared.row_width()}, host.options());
    std::memcpy(routes.data_ptr<std::int32_t>(), prepared.routes().data(),
                prepared.routes().size() * sizeof(std::int32_t));
    return std::make_tuple(routes.to(eplb_table.device()), prepared.params().num_physical_experts);
  });
}

// validate_table()'s report: the errors' and the warnings' messages (at most
// max_issues in all), the exact totals, and the slot count it checked with.
std::tuple<std::vector<std::string>, std::vector<std::string>, std::int64_t, std::int64_t,
           std::int64_t, bool>
validate_table_op(const at::Tensor& eplb_table, std::int64_t world_size,
                  std::int64_t num_physical_experts, c10::string_view profile, bool warnings,
                  std::int64_t max_issues) {
  constexpr const char* kValidate = "validate_table()";
  return translate_errors([&] {
    MOE_EPLB_CHECK(max_issues >= 0, kValidate, ": max_issues must be 0 or more, got ", max_issues);
    const at::Tensor host = host_values(kValidate, eplb_table);
    ValidateTableOptions options;
    options.profile = parse_limit_profile(std::string(profile.data(), profile.size()));
    options.check_rank_mode_reachability = warnings;
    options.warn_unused_slots = warnings;
    options.max_issues = max_issues;
    const TableReport report =
        validate_table(table_view(kValidate, host), world_size, num_physical_experts, options);
    std::vector<std::string> errors, found_warnings;
    for (const TableIssue& issue : report.issues) {
      (issue.severity == TableIssue::Severity::kError ? errors : found_warnings)
          .push_back(issue.message);
    }
    return std::make_tuple(errors, found_warnings, report.total_errors, report.total_warnings,
                           report.num_physical_experts, report.num_physical_experts_inferred);
  });
}

}  // namespace
}  // namespace moe_eplb::torch_adapter

TORCH_LIBRARY_IMPL(moe_eplb, CompositeExplicitAutograd, m) {
  m.impl("prepare_table", TORCH_FN(moe_eplb::torch_adapter::prepare_table));
  m.impl("validate_table", TORCH_FN(moe_eplb::torch_adapter::validate_table_op));
}

// Fuzzes validate_table() on arbitrary tables, world sizes, slot counts and
// profiles. Properties: never crashes or reads out of bounds; ok() agrees
// with the error count; the list never exceeds max_issues; and a table it
// accepts always prepares and maps every valid expert id in rank mode.
#include <cstdlib>
#include <vector>

#include "fuzz_input.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/table.hpp"

using moe_eplb::fuzz::FuzzInput;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzInput in(data, size);
  const std::int64_t num_experts = in.range(0, 30);
  const std::int64_t columns = in.range(0, 9);
  const std::int64_t world_size = in.value_near(1, 16);
  const std::int64_t num_physical = in.next<std::uint8_t>() % 3 == 0 ? -1 : in.value_near(1, 80);
  moe_eplb::ValidateTableOptions options;
  options.profile = static_cast<moe_eplb::LimitProfile>(in.range(0, 2));
  options.max_issues = in.range(1, 20);
  options.warn_unused_slots = in.next<std::uint8_t>() & 1;
  const std::int64_t span = num_physical > 0 ? num_physical : 80;
  std::vector<std::int32_t> table(static_cast<std::size_t>(num_experts * columns));
  for (std::int64_t e = 0; e < num_experts; ++e) {
    for (std::int64_t c = 0; c < columns; ++c) {
      table[static_cast<std::size_t>(e * columns + c)] = static_cast<std::int32_t>(
          c == 0 ? in.value_near(1, columns - 1) : in.value_near(0, span - 1));
    }
  }
  const moe_eplb::TableView view{table.empty() ? nullptr : table.data(), num_experts, columns,
                                 columns, 1};
  moe_eplb::TableReport report;
  try {
    report = moe_eplb::validate_table(view, world_size, num_physical, options);
  } catch (const moe_eplb::Error&) {
    return 0;  // argument errors (world_size, null data) are allowed to throw
  }
  if (report.ok() != (report.total_errors == 0)) std::abort();
  if (static_cast<std::int64_t>(report.issues.size()) > options.max_issues) std::abort();
  if (report.total_errors + report.total_warnings <
      static_cast<std::int64_t>(report.issues.size())) {
    std::abort();
  }
  (void)report.to_string();
  if (!report.ok() || world_size > INT32_MAX) return 0;

  moe_eplb::UpdateExpertParams params;
  params.world_size = world_size;
  params.local_rank_id = in.range(0, world_size - 1);
  params.num_physical_experts = report.num_physical_experts;
  params.profile = options.profile;
  try {
    const moe_eplb::PreparedTable prepared(view, params);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(num_experts));
    for (std::int64_t e = 0; e < num_experts; ++e)
      ids[static_cast<std::size_t>(e)] = static_cast<std::int32_t>(e);
    std::vector<std::int32_t> out(ids.size());
    moe_eplb::UpdateExpertOutputs outputs;
    outputs.balanced_expert_ids = {out.data(), num_experts};
    moe_eplb::update_expert_prepared(prepared.view(),
                                     moe_eplb::ExpertIdsView{ids.data(), moe_eplb::Dtype::kInt32, 1,
                                                             num_experts, num_experts, 1},
                                     nullptr, outputs);
  } catch (const moe_eplb::Error& error) {
    // A valid table may still be refused for profile limits on the batch
    // (e.g. K = E above 16 under the Ascend profiles), never for its contents.
    if (error.code() == moe_eplb::ErrorCode::kInvalidTable) std::abort();
  }
  return 0;
}

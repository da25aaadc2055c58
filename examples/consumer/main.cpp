// The README's C++ example as a program, against an installed moe-eplb (its
// lines stand here as in the README; tests/python/test_readme.py checks that):
// SPEC.md's worked example (world_size 8, rank 5, row [3, 40, 7, 19] -> 7),
// stateless and prepared (moe_eplb::moe_eplb), then a table planned for that
// rank's traffic and routed through the operator (moe_eplb::moe_eplb_plan).
#include <cstdio>
#include <moe_eplb/moe_eplb.hpp>  // CMake: find_package(moe_eplb) + moe_eplb::moe_eplb
#include <moe_eplb/plan.hpp>

int main() {
  const std::int32_t table_values[] = {3, 40, 7, 19, 1, 2, -1, -1};
  const std::int64_t ids_values[] = {0, 1, 1, 0};
  std::int64_t out[4] = {-9, -9, -9, -9};
  std::int64_t again[4] = {-9, -9, -9, -9};

  try {
    // The README's lines, as they stand there.
    moe_eplb::UpdateExpertParams params;
    params.local_rank_id = 5;
    params.world_size = 8;
    params.num_physical_experts = 48;  // optional: exact range check of selected slots
    const moe_eplb::TableView table{table_values, 2, 4, 4, 1};  // (E, F) = (2, 4), strides 4, 1
    const moe_eplb::ExpertIdsView ids{ids_values, moe_eplb::Dtype::kInt64, 2, 2, 2, 1};
    moe_eplb::update_expert(ids, table, params, out);  // throws moe_eplb::Error on bad input

    moe_eplb::TableReport report = moe_eplb::validate_table(table, params.world_size, 48);
    moe_eplb::PreparedTable prepared(table, params);  // hot path: validate once, then gather
    moe_eplb::UpdateExpertOutputs outputs;            // every output carries its size
    outputs.balanced_expert_ids = {again, 4};
    moe_eplb::update_expert_prepared(prepared.view(), ids, nullptr, outputs);

    if (!report.ok()) return 1;
    for (int i = 0; i < 4; ++i) {
      if (again[i] != out[i]) return 1;
    }

    // 4 experts on 2 ranks of 3 slots: expert 0 is hot and gets a replica on
    // each rank; every plan passes validation and routes every id.
    const double counts[] = {90, 10, 10, 10};
    moe_eplb::ExpertLoad load = moe_eplb::make_expert_load(
        {4}, {counts, counts + 4}, 2, moe_eplb::LoadLayout::kExperts, "plan()");
    moe_eplb::PlanOptions options;
    options.world_size = 2;
    options.slots_per_rank = 3;
    const moe_eplb::LayeredTable plan = moe_eplb::plan(load, options);
    if (!moe_eplb::validate_table(plan.layer(0), 2, 6).ok() || plan.layer(0).at(0, 0) != 2) {
      return 1;
    }
  } catch (const moe_eplb::Error& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
  std::printf("%lld %lld %lld %lld\n", static_cast<long long>(out[0]),
              static_cast<long long>(out[1]), static_cast<long long>(out[2]),
              static_cast<long long>(out[3]));
  return out[0] == 7 && out[1] == 2 ? 0 : 1;
}

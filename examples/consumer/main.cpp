// The README's C++ example as a program: SPEC.md's worked example
// (world_size 8, rank 5, row [3, 40, 7, 19] -> 7), stateless and prepared.
#include <cstdio>
#include <moe_eplb/moe_eplb.hpp>

int main() {
  const std::int32_t table_values[] = {3, 40, 7, 19, 1, 2, -1, -1};
  const std::int64_t ids_values[] = {0, 1, 1, 0};
  std::int64_t out[4] = {-9, -9, -9, -9};

  moe_eplb::UpdateExpertParams params;
  params.local_rank_id = 5;
  params.world_size = 8;
  params.num_physical_experts = 48;
  const moe_eplb::TableView table{table_values, 2, 4, 4, 1};
  const moe_eplb::ExpertIdsView ids{ids_values, moe_eplb::Dtype::kInt64, 2, 2, 2, 1};
  try {
    moe_eplb::update_expert(ids, table, params, out);
    const moe_eplb::PreparedTable prepared(table, params);
    std::int64_t again[4] = {-9, -9, -9, -9};
    moe_eplb::UpdateExpertOutputs outputs;
    outputs.balanced_expert_ids = {again, 4};
    moe_eplb::update_expert_prepared(prepared.view(), ids, nullptr, outputs);
    for (int i = 0; i < 4; ++i) {
      if (again[i] != out[i]) return 1;
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

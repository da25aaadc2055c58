#include "routing.hpp"

#include "moe_eplb/error.hpp"

namespace moe_eplb::plan_detail {

void BatchRouter::route(const TableView& table, const UpdateExpertParams& params,
                        const ExpertIdsView& expert_ids, const PruningInputs* pruning,
                        const std::uint8_t* active_mask, std::int64_t* load_counts,
                        const std::string& context) {
  const auto num_elements = static_cast<std::size_t>(expert_ids.num_tokens * expert_ids.top_k);
  balanced_.resize(num_elements);  // large enough for int32 or int64 output
  mask_.resize(num_elements);

  // An active_mask alone becomes pruning that keeps every choice of an active
  // token: scales of 1.0 against thresholds of 0.0 (stride-0 views).
  static const float kOne = 1.0f;
  static const float kZero = 0.0f;
  PruningInputs mask_only;
  if (active_mask != nullptr) {
    MOE_EPLB_CHECK(pruning == nullptr,
                   "route(): pass the active_mask inside pruning when pruning is given");
    mask_only.expert_scales =
        ScalesView{&kOne, Dtype::kFloat32, expert_ids.num_tokens, expert_ids.top_k, 0, 0};
    mask_only.pruning_threshold = VectorView<float>{&kZero, expert_ids.top_k, 0};
    mask_only.has_active_mask = true;
    mask_only.active_mask = VectorView<std::uint8_t>{active_mask, expert_ids.num_tokens, 1};
    pruning = &mask_only;
  }

  UpdateExpertInputs inputs;
  inputs.expert_ids = expert_ids;
  inputs.eplb_table = table;
  inputs.pruning = pruning;
  UpdateExpertOutputs outputs;
  const auto size = static_cast<std::int64_t>(num_elements);
  outputs.balanced_expert_ids = {balanced_.data(), size};
  if (pruning != nullptr) outputs.balanced_active_mask = {mask_.data(), size};
  outputs.load_counts = {load_counts, params.num_physical_experts};
  try {
    update_expert(inputs, params, outputs);
  } catch (const Error& error) {
    MOE_EPLB_FAIL(error.code(), context, error.what());
  }
}

}  // namespace moe_eplb::plan_detail

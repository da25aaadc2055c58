// Named limit profiles. The Ascend operators reject inputs outside fixed
// ranges; code that must behave exactly like them asks for those profiles,
// everything else uses kNative, which has no artificial caps.
#pragma once

#include <cstdint>
#include <string>

namespace moe_eplb {

enum class LimitProfile : std::uint8_t {
  kAscendSeed,  // torch_npu.npu_moe_eplb_update_expert: rank mode only, no pruning
  kAscend,      // aclnnMoeUpdateExpert / npu_moe_update_expert: both modes, pruning
  kNative,      // any BS >= 0, any K/E/world_size that fits the index types
};

// Inclusive ranges. kNoLimit marks an open upper end.
struct Limits {
  static constexpr std::int64_t kNoLimit = INT64_MAX;

  const char* name;
  std::int64_t min_tokens, max_tokens;          // BS
  std::int64_t min_top_k, max_top_k;            // K
  bool top_k_at_most_num_experts;               // K <= E
  std::int64_t min_experts, max_experts;        // E
  std::int64_t min_world_size, max_world_size;  // world_size (rank mode)
  std::int64_t min_columns;                     // F
  bool columns_at_most_world_size_plus_one;     // F <= world_size + 1
  std::int64_t max_physical_experts;            // world_size * place_per_rank
  std::int64_t max_balance_mode;                // balance_mode in 0..this
  bool allows_pruning;                          // expert_scales / pruning_threshold / active_mask
  // active_mask must have every true entry before every false one (Ascend's
  // precondition; refused on the CPU, where it is read, when broken). Without
  // it each token's entry decides for that token alone.
  bool ordered_active_mask;
};

// The limits of a profile. Never fails.
const Limits& limits_of(LimitProfile profile);

// "ascend_seed", "ascend", "native".
std::string to_string(LimitProfile profile);

// Parses a profile name as printed by to_string(). Throws moe_eplb::Error
// (kInvalidArgument) naming the accepted names for anything else.
LimitProfile parse_limit_profile(const std::string& name);

}  // namespace moe_eplb

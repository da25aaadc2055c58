#include "moe_eplb/limits.hpp"

#include "moe_eplb/error.hpp"

namespace moe_eplb {
namespace {

constexpr std::int64_t kNoLimit = Limits::kNoLimit;
// Slots, counts, ranks and world sizes are int32 values in the table
// and in 32-bit kernel arithmetic, so even the native profile caps them here.
constexpr std::int64_t kInt32Max = INT32_MAX;

// clang-format off
constexpr Limits kAscendSeedLimits{
    "ascend_seed",
    /*tokens*/ 1, 512, /*top_k*/ 1, 16, /*K <= E*/ true, /*experts*/ 1, 512,
    /*world_size*/ 2, 384, /*min_columns*/ 2, /*F <= W + 1*/ false,
    /*physical*/ 1024, /*balance modes*/ 0, /*pruning*/ false, /*ordered mask*/ true};
constexpr Limits kAscendLimits{
    "ascend",
    /*tokens*/ 1, 512, /*top_k*/ 1, 16, /*K <= E*/ true, /*experts*/ 1, 1024,
    /*world_size*/ 2, 768, /*min_columns*/ 2, /*F <= W + 1*/ true,
    /*physical*/ 1024, /*balance modes*/ 1, /*pruning*/ true, /*ordered mask*/ true};
constexpr Limits kNativeLimits{
    "native",
    /*tokens*/ 0, kNoLimit, /*top_k*/ 0, kNoLimit, /*K <= E*/ false, /*experts*/ 1, kInt32Max,
    /*world_size*/ 1, kInt32Max, /*min_columns*/ 2, /*F <= W + 1*/ false,
    /*physical*/ kInt32Max, /*balance modes*/ 2, /*pruning*/ true, /*ordered mask*/ false};
// clang-format on

}  // namespace

const Limits& limits_of(LimitProfile profile) {
  switch (profile) {
    case LimitProfile::kAscendSeed:
      return kAscendSeedLimits;
    case LimitProfile::kAscend:
      return kAscendLimits;
    case LimitProfile::kNative:
      break;
  }
  return kNativeLimits;
}

std::string to_string(LimitProfile profile) { return limits_of(profile).name; }

LimitProfile parse_limit_profile(const std::string& name) {
  for (LimitProfile profile :
       {LimitProfile::kNative, LimitProfile::kAscend, LimitProfile::kAscendSeed}) {
    if (name == limits_of(profile).name) return profile;
  }
  MOE_EPLB_FAIL(ErrorCode::kInvalidArgument, "unknown limit profile '", name,
                "', expected one of: native, ascend, ascend_seed");
}

}  // namespace moe_eplb

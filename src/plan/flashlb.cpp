// FlashLB as its public description states it: a baseline. Placeholder until
// the full algorithm lands: DeepSeek's algorithm on the mean global counts.
#include "planners.hpp"

namespace moe_eplb::plan_detail {

ReplicaSlots plan_flashlb(const LayerRequest& request) { return plan_deepseek(request); }

}  // namespace moe_eplb::plan_detail

// moe-eplb, the operator layer, in one include: views, limits, the
// update-expert operator (CPU, and CUDA when built with it), table
// validation, the prepared form and .npy files. Link moe_eplb::moe_eplb
// (CMake: find_package(moe_eplb)). The planner layer is moe_eplb/plan.hpp.
#pragma once

#include "moe_eplb/error.hpp"
#include "moe_eplb/limits.hpp"
#include "moe_eplb/npy.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/table.hpp"
#include "moe_eplb/types.hpp"
#include "moe_eplb/update_expert.hpp"

#if defined(MOE_EPLB_WITH_CUDA) && MOE_EPLB_WITH_CUDA
#include "moe_eplb/cuda.hpp"
#endif

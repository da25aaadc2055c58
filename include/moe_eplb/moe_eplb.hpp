// moe-eplb: everything in one include. Link moe_eplb::moe_eplb
// (CMake: find_package(moe_eplb)).
#pragma once

#include "moe_eplb/analyze.hpp"
#include "moe_eplb/convert.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/limits.hpp"
#include "moe_eplb/load.hpp"
#include "moe_eplb/npy.hpp"
#include "moe_eplb/plan.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/scenario.hpp"
#include "moe_eplb/table.hpp"
#include "moe_eplb/types.hpp"
#include "moe_eplb/update_expert.hpp"

#if defined(MOE_EPLB_WITH_CUDA) && MOE_EPLB_WITH_CUDA
#include "moe_eplb/cuda.hpp"
#endif

// moe-eplb, the planner layer, in one include: load statistics and routing
// traces, the engines' replica rules, the planners, the analyzer, layout
// converters, table diffs and migration plans, synthetic scenarios and SVG
// plots. Link moe_eplb::moe_eplb_plan (it links moe_eplb::moe_eplb).
#pragma once

#include "moe_eplb/moe_eplb.hpp"
#include "moe_eplb/plan/analyze.hpp"
#include "moe_eplb/plan/convert.hpp"
#include "moe_eplb/plan/load.hpp"
#include "moe_eplb/plan/migration.hpp"
#include "moe_eplb/plan/planner.hpp"
#include "moe_eplb/plan/replay.hpp"
#include "moe_eplb/plan/rule.hpp"
#include "moe_eplb/plan/scenario.hpp"
#include "moe_eplb/plan/svg.hpp"
#include "moe_eplb/plan/topology.hpp"

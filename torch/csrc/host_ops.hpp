// The kernels of the ops without a tensor argument (library.cpp defines each
// with its one kernel: there is no device to dispatch on).
#pragma once

#include <ATen/core/Tensor.h>

#include <c10/util/string_view.h>

#include <cstdint>
#include <string>
#include <vector>

namespace moe_eplb::torch_adapter {

// plan_ops.cpp: widest_plan_columns() of the planner, and the names of
// rules, algorithms, report fields and slot actions that Python reads.
std::int64_t widest_plan_columns(std::int64_t num_experts, std::int64_t world_size,
                                 std::int64_t slots_per_rank);
std::vector<std::string> names(c10::string_view what);

// ops_cuda.cpp in CUDA builds; ops_no_cuda.cpp otherwise, where the first and
// the last raise RuntimeError ("built without CUDA") and the default is off.
at::Tensor library_error_counter(std::int64_t device_index);
bool default_programmatic_dependent_launch();
void set_default_programmatic_dependent_launch(bool enabled);

}  // namespace moe_eplb::torch_adapter

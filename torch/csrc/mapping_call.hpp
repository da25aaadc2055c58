// The PyTorch adapter's shared half: one op call's tensors as the core's
// views, its freshly allocated outputs, and moe_eplb::Error mapped onto c10
// errors. Every backend's kernels (ops_cpu.cpp, ops_cuda.cpp, ops_meta.cpp)
// build their call here and hand it to the core, whose front end checks it.
// The adapter checks only what a core view cannot express: tensor ranks,
// devices, the strides of buffers the core takes as contiguous, and the
// dtypes of the arguments whose views are typed (eplb_table, routes,
// pruning_threshold, active_mask, load_counts, error_counter).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <tuple>

#include "moe_eplb/error.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/update_expert.hpp"

namespace moe_eplb::torch_adapter {

using OptionalTensor = c10::optional<at::Tensor>;

// Throws the c10 error matching `error`: kIndexOutOfRange -> IndexError,
// kCuda and kIo -> RuntimeError, everything else -> ValueError, with the
// core's message.
[[noreturn]] void rethrow(const Error& error);

// Runs `body`, turning moe_eplb::Error into the matching c10 error.
template <typename Body>
auto translate_errors(Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Error& error) {
    rethrow(error);
  }
}

// Checks rank and dtype of a 2-D int32 (E, F) table tensor and views it.
TableView table_view(const char* operation, const at::Tensor& eplb_table);

// The core's parameters from a schema's scalars (the core checks them; an
// unknown profile name throws moe_eplb::Error starting with `operation`).
UpdateExpertParams make_params(const char* operation, std::int64_t local_rank_id,
                               std::int64_t world_size, std::int64_t balance_mode,
                               std::int64_t num_physical_experts, c10::string_view profile);

// The schema arguments of one mapping op.
struct MappingArgs {
  const char* operation = "update_expert()";
  const at::Tensor* expert_ids = nullptr;
  const at::Tensor* eplb_table = nullptr;  // stateless ops
  const at::Tensor* routes = nullptr;      // prepared ops
  OptionalTensor expert_scales;
  OptionalTensor pruning_threshold;
  OptionalTensor active_mask;
  OptionalTensor load_counts;
  OptionalTensor error_counter;
  std::int64_t local_rank_id = 0;
  std::int64_t world_size = 1;
  std::int64_t balance_mode = 0;
  std::int64_t num_physical_experts = -1;
  c10::string_view profile = "native";
  c10::optional<bool> enable_pdl;
  bool always_mask = false;  // counted ops return an all-true mask without pruning
};

// One call as the core sees it: views over the arguments and over the
// outputs allocated here (contiguous, on expert_ids' device). Not copyable:
// inputs.pruning points into it.
class MappingCall {
 public:
  explicit MappingCall(const MappingArgs& args);
  MappingCall(const MappingCall&) = delete;
  MappingCall& operator=(const MappingCall&) = delete;

  const char* operation;
  bool prepared;                // routes (prepared view) rather than eplb_table
  UpdateExpertInputs inputs;    // expert_ids, eplb_table (stateless ops), pruning
  PreparedView routes;          // prepared ops
  UpdateExpertParams params;    // stateless ops
  UpdateExpertOutputs outputs;  // over the tensors below, plus load_counts
  std::int32_t* error_counter;  // the caller's counter, or null
  c10::optional<bool> enable_pdl;
  // Symbolic shapes (torch.compile, dynamic): only the shape-free checks ran
  // and the outputs are symbolic; there is nothing to compute.
  bool symbolic = false;
  const at::Tensor& expert_ids_tensor() const { return *expert_ids_; }

  // (balanced_expert_ids, balanced_active_mask); the mask is undefined unless
  // pruning or always_mask (then all true when there was no pruning).
  std::tuple<at::Tensor, at::Tensor> results();

 private:
  PruningInputs pruning_;
  const at::Tensor* expert_ids_;
  bool always_mask_;
  at::Tensor balanced_expert_ids_;
  at::Tensor balanced_active_mask_;
};

// Builds the call and runs Backend::map() or Backend::map_prepared() on it
// unless shapes are symbolic; core errors become c10 errors.
template <typename Backend>
std::tuple<at::Tensor, at::Tensor> run_mapping(const MappingArgs& args) {
  return translate_errors([&] {
    MappingCall call(args);
    if (!call.symbolic) {
      if (call.prepared) {
        Backend::map_prepared(call);
      } else {
        Backend::map(call);
      }
    }
    return call.results();
  });
}

}  // namespace moe_eplb::torch_adapter

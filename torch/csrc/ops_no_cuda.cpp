// The CUDA-only ops in a build without CUDA: each says so.
#include "host_ops.hpp"
#include "mapping_call.hpp"

namespace moe_eplb::torch_adapter {

at::Tensor library_error_counter(std::int64_t) {
  return translate_errors([]() -> at::Tensor {
    MOE_EPLB_FAIL(ErrorCode::kCuda, "library_error_counter(): moe_eplb was built without CUDA");
  });
}

bool default_programmatic_dependent_launch() { return false; }

void set_default_programmatic_dependent_launch(bool) {
  translate_errors([] {
    MOE_EPLB_FAIL(ErrorCode::kCuda,
                  "set_default_programmatic_dependent_launch(): moe_eplb was built without CUDA");
  });
}

}  // namespace moe_eplb::torch_adapter

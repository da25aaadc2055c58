// Forcing the CPU kernels' instruction-set level in tests (cpu/isa.hpp).
#pragma once

#include <vector>

#include "cpu/isa.hpp"

namespace moe_eplb::test {

using cpu::Isa;

// Forces an instruction-set level for one scope.
class ForcedIsa {
 public:
  explicit ForcedIsa(Isa isa) : active_(cpu::set_isa_for_testing(isa)) {}
  ~ForcedIsa() { cpu::set_isa_for_testing(cpu::detected_isa()); }
  ForcedIsa(const ForcedIsa&) = delete;
  ForcedIsa& operator=(const ForcedIsa&) = delete;
  Isa active() const { return active_; }

 private:
  Isa active_;
};

// The levels this machine can run, lowest first.
inline std::vector<Isa> available_isas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (static_cast<int>(isa) <= static_cast<int>(cpu::detected_isa())) isas.push_back(isa);
  }
  return isas;
}

}  // namespace moe_eplb::test

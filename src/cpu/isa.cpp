#include "isa.hpp"

#include <atomic>

namespace moe_eplb::cpu {
namespace {

Isa detect() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    return Isa::kAvx512;
  }
  if (avx2) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

// -1: nothing forced.
std::atomic<int> forced_isa{-1};

}  // namespace

const char* to_string(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "?";
}

Isa detected_isa() {
  static const Isa detected = detect();
  return detected;
}

Isa active_isa() {
  const int forced = forced_isa.load(std::memory_order_relaxed);
  return forced < 0 ? detected_isa() : static_cast<Isa>(forced);
}

Isa set_isa_for_testing(Isa isa) {
  const Isa effective =
      static_cast<int>(isa) < static_cast<int>(detected_isa()) ? isa : detected_isa();
  forced_isa.store(effective == detected_isa() ? -1 : static_cast<int>(effective),
                   std::memory_order_relaxed);
  return effective;
}

}  // namespace moe_eplb::cpu

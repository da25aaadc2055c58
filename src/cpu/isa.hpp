// Instruction-set levels of the CPU kernels (internal). The level is detected
// once per process; tests and the benchmark may force a lower one so that
// every kernel can be compared on one machine.
#pragma once

namespace moe_eplb::cpu {

// Ordered: each level's kernels need the instructions of the ones below it.
enum class Isa : int {
  kScalar = 0,  // portable C++, any CPU
  kAvx2 = 1,    // x86-64 with AVX2
  kAvx512 = 2,  // x86-64 with AVX-512 F, BW and VL (and AVX2)
};

const char* to_string(Isa isa);

// The best level this CPU and this build support (kScalar off x86-64).
// Detected on first use; thread-safe.
Isa detected_isa();

// The level the kernels use now: detected_isa(), or a lower one forced by
// set_isa_for_testing().
Isa active_isa();

// Forces the kernels' level for the whole process, for tests and
// benchmarks; calls running meanwhile in other threads may use either level.
// A level above detected_isa() is clamped to it. Returns the level now in
// effect; set_isa_for_testing(detected_isa()) undoes it.
Isa set_isa_for_testing(Isa isa);

}  // namespace moe_eplb::cpu

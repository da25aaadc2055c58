// Writes the windows of one draw of a suite scenario (moe-eplb replay's
// generator) as per-source-rank loads, for bench/engines/engine_windows.py:
//
//   dump_scenario NAME DRAW NUM_WINDOWS OUT_DIR
//
// writes OUT_DIR/window<w>.npy, float64 (L, W, E) each, and prints the
// scenario's "world_size slots_per_rank ranks_per_node num_groups" (num_groups:
// 8 when the experts divide into 8 groups, as DeepSeek-V3's do, else 1).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/npy.hpp"
#include "moe_eplb/plan/scenario.hpp"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: dump_scenario NAME DRAW NUM_WINDOWS OUT_DIR\n");
    return 2;
  }
  try {
    const moe_eplb::ScenarioSpec spec =
        moe_eplb::scenario_draw(moe_eplb::find_scenario(argv[1]), std::atoll(argv[2]));
    const std::vector<moe_eplb::ExpertLoad> windows =
        moe_eplb::generate_windows(spec, 0, std::atoll(argv[3]));
    for (std::size_t w = 0; w < windows.size(); ++w) {
      const moe_eplb::ExpertLoad& load = windows[w];
      moe_eplb::npy::Array array;
      array.dtype = moe_eplb::Dtype::kFloat64;
      array.shape = {load.num_layers, load.num_source_ranks, load.num_experts};
      array.bytes.resize(load.counts.size() * sizeof(double));
      std::memcpy(array.bytes.data(), load.counts.data(), array.bytes.size());
      moe_eplb::npy::save(std::string(argv[4]) + "/window" + std::to_string(w) + ".npy", array);
    }
    std::printf("%lld %lld %lld %d\n", static_cast<long long>(spec.world_size),
                static_cast<long long>(spec.slots_per_rank),
                static_cast<long long>(spec.ranks_per_node), spec.num_experts % 8 == 0 ? 8 : 1);
  } catch (const moe_eplb::Error& error) {
    std::fprintf(stderr, "dump_scenario: %s\n", error.what());
    return 1;
  }
  return 0;
}

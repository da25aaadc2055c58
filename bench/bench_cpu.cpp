// CPU benchmark of the update-expert operator, side by side in one run:
//   op        update_expert() on the raw table (validates and maps per call)
//   prepared  update_expert_prepared() on routes built once per table
//   reference the scalar reference of the tests (clarity, not speed)
//   memcpy    std::memcpy of the same bytes (read ids, write output)
//   copy_loop the same copy as a plain loop the compiler vectorises (glibc's
//             memcpy uses `rep movsb` at these sizes, which some VMs run slowly)
// Shapes 8x8, 512x16 (the Ascend maximum) and 65536x8, int32 and int64 ids,
// DeepSeek-V3-like table (256 experts, EP 32, 9 slots per rank). Every
// variant's output is checked against the reference after timing.
// BM_ForcedIsa rows run op and prepared with the CPU kernels forced down to
// the AVX2 or scalar level (src/cpu/isa.hpp), so one run shows every level.
//
//   build/bench/moe_eplb_bench_cpu --benchmark_repetitions=7
//       --benchmark_report_aggregates_only=true --benchmark_min_time=0.2
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "cpu/isa.hpp"  // internal: forcing the kernels' level
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/update_expert.hpp"
#include "reference.hpp"

namespace {

using moe_eplb::test::Matrix;

constexpr std::int64_t kExperts = 256, kWorldSize = 32, kSlotsPerRank = 9, kColumns = 9;
constexpr std::int64_t kRank = 13;

struct Problem {
  Matrix table;
  std::vector<std::int32_t> table32;
  Matrix ids;
  std::vector<std::int64_t> expected;
  moe_eplb::TableView table_view() const {
    return moe_eplb::TableView{table32.data(), table.rows, table.cols, table.cols, 1};
  }
};

Problem make_problem(std::int64_t num_tokens, std::int64_t top_k, int mode) {
  std::mt19937_64 rng(static_cast<std::uint64_t>(num_tokens * 31 + top_k));
  Problem p;
  p.table = moe_eplb::test::random_table(
      moe_eplb::test::TableSpec{kExperts, kColumns, kWorldSize, kSlotsPerRank, kColumns - 1}, rng);
  p.table32.assign(p.table.values.begin(), p.table.values.end());
  p.ids = moe_eplb::test::random_ids(num_tokens, top_k, kExperts, rng);
  p.expected =
      moe_eplb::test::reference_update_expert(p.ids, p.table, kRank, kWorldSize, mode).values;
  return p;
}

moe_eplb::UpdateExpertParams params(int mode) {
  moe_eplb::UpdateExpertParams p;
  p.local_rank_id = kRank;
  p.world_size = kWorldSize;
  p.balance_mode = static_cast<moe_eplb::BalanceMode>(mode);
  p.num_physical_experts = kWorldSize * kSlotsPerRank;
  return p;
}

template <typename T>
void finish(benchmark::State& state, const Problem& p, const std::vector<T>& out) {
  const auto elements = static_cast<std::int64_t>(out.size());
  state.SetItemsProcessed(state.iterations() * elements);
  state.SetBytesProcessed(state.iterations() * elements * static_cast<std::int64_t>(2 * sizeof(T)));
  if (!std::equal(out.begin(), out.end(), p.expected.begin())) {
    state.SkipWithError("output differs from the reference");
  }
}

enum class Variant { kOp, kPrepared, kReference, kMemcpy, kCopyLoop };

template <typename T, Variant V, int Mode>
void BM_UpdateExpert(benchmark::State& state) {
  const Problem p = make_problem(state.range(0), state.range(1), Mode);
  const std::vector<T> ids(p.ids.values.begin(), p.ids.values.end());
  std::vector<T> out(ids.size());
  const moe_eplb::ExpertIdsView view{
      ids.data(), sizeof(T) == 4 ? moe_eplb::Dtype::kInt32 : moe_eplb::Dtype::kInt64,
      p.ids.rows, p.ids.cols,
      p.ids.cols, 1};
  const moe_eplb::PreparedTable prepared(p.table_view(), params(Mode));
  moe_eplb::UpdateExpertOutputs outputs;
  outputs.balanced_expert_ids = {out.data(), static_cast<std::int64_t>(out.size())};
  T zero = 0;
  benchmark::DoNotOptimize(zero);
  for (auto _ : state) {
    if constexpr (V == Variant::kOp) {
      moe_eplb::update_expert(view, p.table_view(), params(Mode), out.data());
    } else if constexpr (V == Variant::kPrepared) {
      moe_eplb::update_expert_prepared(prepared.view(), view, nullptr, outputs);
    } else if constexpr (V == Variant::kReference) {
      const Matrix result =
          moe_eplb::test::reference_update_expert(p.ids, p.table, kRank, kWorldSize, Mode);
      std::copy(result.values.begin(), result.values.end(), out.begin());
    } else if constexpr (V == Variant::kMemcpy) {
      std::memcpy(out.data(), ids.data(), ids.size() * sizeof(T));
      benchmark::ClobberMemory();
    } else {
      // `+ zero` (a run-time 0) stops GCC from turning the loop back into memcpy.
      for (std::size_t i = 0; i < ids.size(); ++i) out[i] = ids[i] + zero;
      benchmark::ClobberMemory();
    }
    benchmark::DoNotOptimize(out.data());
  }
  if constexpr (V == Variant::kMemcpy || V == Variant::kCopyLoop) {
    std::vector<T> expected(p.expected.begin(), p.expected.end());
    out = expected;  // memcpy moves bytes only; nothing to check
  }
  finish(state, p, out);
}

// BM_UpdateExpert with the CPU kernels forced to instruction-set level kIsa.
template <typename T, Variant V, int Mode, moe_eplb::cpu::Isa kIsa>
void BM_ForcedIsa(benchmark::State& state) {
  if (moe_eplb::cpu::set_isa_for_testing(kIsa) != kIsa) {
    state.SkipWithError("this CPU lacks the instruction-set level");
  } else {
    BM_UpdateExpert<T, V, Mode>(state);
  }
  moe_eplb::cpu::set_isa_for_testing(moe_eplb::cpu::detected_isa());
}

void shapes(benchmark::internal::Benchmark* b) {
  b->Args({8, 8})->Args({512, 16})->Args({65536, 8})->ArgNames({"BS", "K"});
}

#define MOE_EPLB_BENCH(T, V, MODE) BENCHMARK_TEMPLATE(BM_UpdateExpert, T, V, MODE)->Apply(shapes)

MOE_EPLB_BENCH(std::int32_t, Variant::kMemcpy, 0);
MOE_EPLB_BENCH(std::int32_t, Variant::kCopyLoop, 0);
MOE_EPLB_BENCH(std::int32_t, Variant::kPrepared, 0);
MOE_EPLB_BENCH(std::int32_t, Variant::kOp, 0);
MOE_EPLB_BENCH(std::int32_t, Variant::kReference, 0);
MOE_EPLB_BENCH(std::int64_t, Variant::kMemcpy, 0);
MOE_EPLB_BENCH(std::int64_t, Variant::kCopyLoop, 0);
MOE_EPLB_BENCH(std::int64_t, Variant::kPrepared, 0);
MOE_EPLB_BENCH(std::int64_t, Variant::kOp, 0);
MOE_EPLB_BENCH(std::int64_t, Variant::kReference, 0);
MOE_EPLB_BENCH(std::int32_t, Variant::kPrepared, 1);
MOE_EPLB_BENCH(std::int32_t, Variant::kOp, 1);
MOE_EPLB_BENCH(std::int64_t, Variant::kPrepared, 1);
MOE_EPLB_BENCH(std::int64_t, Variant::kOp, 1);

#define MOE_EPLB_BENCH_ISA(T, V, MODE, ISA) \
  BENCHMARK_TEMPLATE(BM_ForcedIsa, T, V, MODE, moe_eplb::cpu::Isa::ISA)->Apply(shapes)
#define MOE_EPLB_BENCH_LEVELS(T, V, MODE) \
  MOE_EPLB_BENCH_ISA(T, V, MODE, kAvx2);  \
  MOE_EPLB_BENCH_ISA(T, V, MODE, kScalar)

MOE_EPLB_BENCH_LEVELS(std::int32_t, Variant::kPrepared, 0);
MOE_EPLB_BENCH_LEVELS(std::int32_t, Variant::kOp, 0);
MOE_EPLB_BENCH_LEVELS(std::int64_t, Variant::kPrepared, 0);
MOE_EPLB_BENCH_LEVELS(std::int64_t, Variant::kOp, 0);
MOE_EPLB_BENCH_LEVELS(std::int32_t, Variant::kPrepared, 1);
MOE_EPLB_BENCH_LEVELS(std::int32_t, Variant::kOp, 1);
MOE_EPLB_BENCH_LEVELS(std::int64_t, Variant::kPrepared, 1);
MOE_EPLB_BENCH_LEVELS(std::int64_t, Variant::kOp, 1);

}  // namespace

BENCHMARK_MAIN();

// Launch-floor benchmark: the library's kernels next to the hand-written
// kernels that bound them, timed the same way in one process, on one card.
//
// The floor of a launch is an empty kernel, and of a mapping a hand-written
// gather on a precomputed map. This program measures those anchors next to
// the library's prepared and stateless launches (plain, and with
// programmatic dependent launch), so that a result says how far the library
// is from the floor of the same card in the same run.
//
// Every candidate is captured into a CUDA graph of back-to-back calls and
// timed over replays (CUDA events, median); the rounds are interleaved so
// that clock drift hits every candidate alike. The library's outputs are
// compared with the hand-written gather's after timing. For the small,
// host-bound sizes a "stream" time per call is printed too: back-to-back
// calls timed on the host, which is the launch path's own cost.
//
// Built by CMake with the CUDA kernels (target moe_eplb_launch_floor; run by
// bench/gpu_check.sh). Argument: rounds (default 3).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "moe_eplb/cuda.hpp"

namespace {

#define CHECK_CUDA(call)                                                          \
  do {                                                                            \
    const cudaError_t status = (call);                                            \
    if (status != cudaSuccess) {                                                  \
      std::fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(status)); \
      std::exit(1);                                                               \
    }                                                                             \
  } while (0)

// The same scenario as bench_torch.py: rank mode, E = 256, world size 32,
// 16 slots per rank, F = 5, rank 7.
constexpr int kExperts = 256;
constexpr int kWorldSize = 32;
constexpr int kSlotsPerRank = 16;
constexpr int kColumns = 5;
constexpr int kRank = 7;
constexpr int kThreads = 256;

template <typename IdT>  // 16 bytes of ids: one load or store instruction
using Vec16 = std::conditional_t<sizeof(IdT) == 4, int4, longlong2>;

__global__ void EmptyKernel() {}

template <typename IdT>
__global__ void CopyKernel(const IdT* in, IdT* out, std::int64_t num_vectors) {
  using V = Vec16<IdT>;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t v = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       v < num_vectors; v += stride) {
    reinterpret_cast<V*>(out)[v] = __ldg(reinterpret_cast<const V*>(in) + v);
  }
}

// The issue's anchor: a vectorised gather on a precomputed map, no checks.
template <typename IdT>
__global__ void GatherKernel(const IdT* in, IdT* out, const std::int32_t* map,
                             std::int64_t num_vectors) {
  using V = Vec16<IdT>;
  constexpr int kWidth = sizeof(V) / sizeof(IdT);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t v = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       v < num_vectors; v += stride) {
    V packed = __ldg(reinterpret_cast<const V*>(in) + v);
    IdT lanes[kWidth];
    memcpy(lanes, &packed, sizeof(packed));
#pragma unroll
    for (int lane = 0; lane < kWidth; ++lane) lanes[lane] = __ldg(map + lanes[lane]);
    memcpy(&packed, lanes, sizeof(packed));
    reinterpret_cast<V*>(out)[v] = packed;
  }
}

struct Table {
  std::vector<std::int32_t> host;  // (E, F)
};

Table make_table(std::mt19937& rng) {
  Table table{std::vector<std::int32_t>(kExperts * kColumns, -1)};
  std::vector<std::int32_t> slots(kWorldSize * kSlotsPerRank);
  for (std::size_t i = 0; i < slots.size(); ++i) slots[i] = static_cast<std::int32_t>(i);
  std::shuffle(slots.begin(), slots.end(), rng);
  int spare = static_cast<int>(slots.size()) - kExperts;
  std::size_t next = 0;
  for (int e = 0; e < kExperts; ++e) {
    int count = std::uniform_int_distribution<int>(1, kColumns - 1)(rng);
    count = std::max(1, std::min(count, 1 + spare));
    spare -= count - 1;
    table.host[e * kColumns] = count;
    for (int c = 0; c < count; ++c) table.host[e * kColumns + 1 + c] = slots[next++];
  }
  return table;
}

// Per-call microseconds of `launch` in a graph of `calls` back-to-back calls:
// the median over `replays` replays.
double graph_us(cudaStream_t stream, int calls, int replays, const std::function<void()>& launch) {
  for (int i = 0; i < 3; ++i) launch();
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) launch();
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphLaunch(exec, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int r = 0; r < replays; ++r) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    CHECK_CUDA(cudaGraphLaunch(exec, stream));
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms * 1e3 / calls);
  }
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  CHECK_CUDA(cudaGraphDestroy(graph));
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

// Per-call microseconds of `calls` back-to-back calls on the stream, timed
// on the host until the stream drains: host-bound for small batches (the
// launch path itself), the median of 5 repetitions.
double stream_us(cudaStream_t stream, const std::function<void()>& launch) {
  constexpr int kCalls = 2000;
  for (int i = 0; i < 100; ++i) launch();
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<double> times;
  for (int rep = 0; rep < 5; ++rep) {
    const auto begin = std::chrono::steady_clock::now();
    for (int i = 0; i < kCalls; ++i) launch();
    CHECK_CUDA(cudaStreamSynchronize(stream));
    const std::chrono::duration<double, std::micro> elapsed =
        std::chrono::steady_clock::now() - begin;
    times.push_back(elapsed.count() / kCalls);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double median(std::vector<double> values) {
  std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
  return values[values.size() / 2];
}

template <typename IdT>
void run_shape(cudaStream_t stream, const std::int32_t* device_table,
               const moe_eplb::cuda::DevicePreparedTable& prepared, std::int64_t num_tokens,
               std::int64_t top_k, int rounds, std::mt19937& rng) {
  using namespace moe_eplb;
  const std::int64_t n = num_tokens * top_k;
  const std::int64_t width = 16 / sizeof(IdT);
  const std::int64_t num_vectors = n / width;
  std::vector<IdT> ids(n);
  std::uniform_int_distribution<int> pick(0, kExperts - 1);
  for (auto& id : ids) id = static_cast<IdT>(pick(rng));
  IdT *in, *out, *reference;
  CHECK_CUDA(cudaMalloc(&in, n * sizeof(IdT)));
  CHECK_CUDA(cudaMalloc(&out, n * sizeof(IdT)));
  CHECK_CUDA(cudaMalloc(&reference, n * sizeof(IdT)));
  CHECK_CUDA(cudaMemcpy(in, ids.data(), n * sizeof(IdT), cudaMemcpyHostToDevice));
  const int blocks_needed = static_cast<int>(std::max<std::int64_t>(
      1, std::min<std::int64_t>((num_vectors + kThreads - 1) / kThreads, 132 * 8)));

  const ExpertIdsView view{
      in, sizeof(IdT) == 4 ? Dtype::kInt32 : Dtype::kInt64, num_tokens, top_k, top_k, 1};
  UpdateExpertParams params;
  params.local_rank_id = kRank;
  params.world_size = kWorldSize;
  params.num_physical_experts = kWorldSize * kSlotsPerRank;
  const UpdateExpertInputs inputs{view, TableView{device_table, kExperts, kColumns, kColumns, 1},
                                  nullptr};
  const UpdateExpertOutputs outputs{{out, n}, {}, {}};
  std::int32_t* counter = cuda::library_error_counter();
  const PreparedView routes = prepared.view();

  const int calls = static_cast<int>(std::max<std::int64_t>(
      2,
      std::min<std::int64_t>(200, 400000000 / (2 * n * static_cast<std::int64_t>(sizeof(IdT))))));
  // The library's launches: prepared or stateless, plain or with PDL.
  const auto library = [&](bool prepared_path, bool pdl) -> std::function<void()> {
    return [&, prepared_path, pdl] {
      cuda::LaunchOptions options;
      options.programmatic_dependent_launch = pdl;
      if (prepared_path) {
        cuda::launch_update_expert_prepared(routes, view, nullptr, outputs, counter, stream,
                                            options);
      } else {
        cuda::launch_update_expert(inputs, params, outputs, counter, stream, options);
      }
    };
  };
  std::vector<std::pair<std::string, std::function<void()>>> candidates = {
      {"empty", [&] { EmptyKernel<<<1, 32, 0, stream>>>(); }},
      {"copy kernel",
       [&] { CopyKernel<IdT><<<blocks_needed, kThreads, 0, stream>>>(in, out, num_vectors); }},
      {"memcpy d2d",
       [&] {
         CHECK_CUDA(cudaMemcpyAsync(out, in, n * sizeof(IdT), cudaMemcpyDeviceToDevice, stream));
       }},
      {"gather (anchor)",
       [&] {
         GatherKernel<IdT>
             <<<blocks_needed, kThreads, 0, stream>>>(in, reference, routes.routes, num_vectors);
       }},
      {"prepared", library(true, false)},
      {"op", library(false, false)},
      {"prepared pdl", library(true, true)},
      {"op pdl", library(false, true)},
  };
  std::map<std::string, std::vector<double>> results;
  for (int round = 0; round < rounds; ++round) {
    for (auto& [name, launch] : candidates) {
      results[name].push_back(graph_us(stream, calls, 30, launch));
    }
  }
  std::map<std::string, double> stream_times;
  if (n <= 8192) {  // host-bound sizes only
    for (auto& [name, launch] : candidates) stream_times[name] = stream_us(stream, launch);
  }

  // The library's result must equal the anchor gather's (the same map).
  std::vector<IdT> expected(n), got(n);
  GatherKernel<IdT>
      <<<blocks_needed, kThreads, 0, stream>>>(in, reference, routes.routes, num_vectors);
  CHECK_CUDA(cudaMemsetAsync(out, 0xff, n * sizeof(IdT), stream));
  cuda::launch_update_expert(inputs, params, outputs, counter, stream);
  CHECK_CUDA(cudaMemcpyAsync(got.data(), out, n * sizeof(IdT), cudaMemcpyDeviceToHost, stream));
  CHECK_CUDA(
      cudaMemcpyAsync(expected.data(), reference, n * sizeof(IdT), cudaMemcpyDeviceToHost, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::int64_t mismatches = 0;
  for (std::int64_t i = 0; i < num_vectors * width; ++i) mismatches += got[i] != expected[i];

  const double copy = median(results["copy kernel"]);
  const double bytes = 2.0 * n * sizeof(IdT);
  std::printf("\n%lldx%lld %s (%d calls per graph, %d rounds; mismatches vs anchor: %lld)\n",
              static_cast<long long>(num_tokens), static_cast<long long>(top_k),
              sizeof(IdT) == 4 ? "int32" : "int64", calls, rounds,
              static_cast<long long>(mismatches));
  for (auto& [name, launch] : candidates) {
    const auto& times = results[name];
    std::printf("  %-16s %8.3f us  (rounds:", name.c_str(), median(times));
    for (double t : times) std::printf(" %.3f", t);
    std::printf(")  %7.1f GB/s  %5.1f%% of copy kernel bw", bytes / median(times) / 1e3,
                100.0 * copy / median(times));
    if (stream_times.count(name) != 0) std::printf("  stream %6.3f us", stream_times[name]);
    std::printf("\n");
  }
  CHECK_CUDA(cudaFree(in));
  CHECK_CUDA(cudaFree(out));
  CHECK_CUDA(cudaFree(reference));
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 3;
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("launch_floor: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::mt19937 rng(1234);
  const Table table = make_table(rng);
  std::int32_t* device_table;
  CHECK_CUDA(cudaMalloc(&device_table, table.host.size() * sizeof(std::int32_t)));
  CHECK_CUDA(cudaMemcpy(device_table, table.host.data(), table.host.size() * sizeof(std::int32_t),
                        cudaMemcpyHostToDevice));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  moe_eplb::UpdateExpertParams params;
  params.local_rank_id = kRank;
  params.world_size = kWorldSize;
  params.num_physical_experts = kWorldSize * kSlotsPerRank;
  const moe_eplb::TableView host_view{table.host.data(), kExperts, kColumns, kColumns, 1};
  moe_eplb::cuda::DevicePreparedTable prepared(host_view, params, stream);
  CHECK_CUDA(cudaStreamSynchronize(stream));
  for (const auto& [tokens, k] : std::vector<std::pair<std::int64_t, std::int64_t>>{
           {8, 8}, {512, 16}, {65536, 8}, {1048576, 8}}) {
    run_shape<std::int32_t>(stream, device_table, prepared, tokens, k, rounds, rng);
    run_shape<std::int64_t>(stream, device_table, prepared, tokens, k, rounds, rng);
  }
  return 0;
}

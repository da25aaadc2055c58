// CUDA kernels of the update-expert operator.
//
// Design: every element goes through a Router from detail/route.hpp (the one
// copy of the formula, shared with the CPU kernel) and every call is validated
// by the same front-end checks (src/core/checks.hpp); this file only decides
// which thread maps which element and how memory is touched.
// - Plain batches (no pruning) are a flat map over the BS*K elements.
//   Contiguous, 16-byte-aligned ids are read and written as int4 / longlong2
//   vectors (one 16-byte load and store per thread and step), which is what
//   lets a large batch run at copy bandwidth. Non-contiguous views and
//   misaligned slices take a strided element loop instead.
// - In rank mode each block first resolves every expert once into a rank map
//   in shared memory (from the table through TableRouter, or copied from the
//   prepared routes through PreparedRouter; a SharedMapRouter reads it), when
//   the block has at least E elements to map. Each element then costs one
//   shared-memory lookup, and the map's global reads overlap the ids load
//   instead of following it: one global latency less on the critical path,
//   which is most of a 512x16 call's time after the launch itself.
// - The routers run their device schedule (route.hpp: clamped reads, then
//   selects, no early return), the per-element error handling here has no
//   branch either, and a vector's lanes issue all their first reads before
//   any second one: the 2 or 4 ids of one vector then wait for their lookups
//   together. Each id behind its own branch had cost one full lookup latency
//   after another (seen in the SASS; at 8x8 and 512x16, where latency rules,
//   int32 vectors with 4 ids were measured slower than int64 vectors with 2).
// - The grid-stride loop loads the next vector before mapping the current
//   one, so a thread's lookups and store overlap its next load.
// - Batches that one wave of threads covers (a thread per vector; decode
//   sizes) take a single-pass kernel in rank mode: the same routers and
//   checks without the loop, 64-bit indexing or per-block bookkeeping, its ids
//   load issued before the map build. At 512x16 on an H100 it matches a bare
//   unchecked gather (bench/launch_floor.cu); the general kernel was 0.2 us
//   slower per call.
// - Pruning needs each token's scale sum, summed in k order like the CPU
//   (bit-identical). Up to K = 32 each choice gets a thread that sums its
//   token's scales itself, so a token's K lookups overlap; beyond that, one
//   thread per token sums once and maps its K choices in turn.
// - Load recording counts into a per-block shared-memory histogram when the
//   physical slot count is small (the usual EPLB case), then flushes each
//   non-zero bin with one global atomic; otherwise it uses global atomics.
// - A bad element writes -1; each thread counts its bad elements and adds them
//   to *error_count with one atomic at the end.
// - Programmatic dependent launch (Hopper and newer, opt-in): the launch lets
//   the GPU start this grid while the previous kernel on the stream is still
//   finishing, and every kernel's first statement waits (griddepcontrol.wait)
//   until that kernel has completed and its writes are visible. Nothing
//   global is read or written before the wait, so the ordering is the same as
//   a plain launch; what overlaps is the launch itself (block scheduling,
//   parameter fetch). Each kernel then allows its own dependents to launch.
//   Without the launch attribute both instructions are no-ops.
// Grids are sized from the work (at most a few blocks per SM, grid-stride loops
// beyond that), so a 512x16 batch is one launch of 8 blocks.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "../core/checks.hpp"
#include "moe_eplb/cuda.hpp"
#include "moe_eplb/detail/route.hpp"
#include "moe_eplb/error.hpp"

// Throws moe_eplb::Error (kCuda) naming the operation, the call and the error.
#define MOE_EPLB_CUDA_CHECK(operation, call)                                                     \
  do {                                                                                           \
    const cudaError_t moe_eplb_status = (call);                                                  \
    MOE_EPLB_CHECK_CODE(moe_eplb_status == cudaSuccess, ::moe_eplb::ErrorCode::kCuda, operation, \
                        ": ", #call, " failed: ", cudaGetErrorName(moe_eplb_status), " (",       \
                        cudaGetErrorString(moe_eplb_status), ")");                               \
  } while (0)

namespace moe_eplb::cuda {
namespace {

constexpr int kThreads = 256;                        // flat kernels
constexpr int kTokenThreads = 128;                   // pruning kernels
constexpr std::int64_t kMaxPerChoiceTopK = 32;       // pruning: a thread per choice up to this K
constexpr int kBlocksPerSm = 8;                      // 2048 resident threads per SM at kThreads
constexpr std::int64_t kMaxSharedMapExperts = 4096;  // 16 KiB rank map
constexpr std::int64_t kMaxSharedHistogram = 8192;   // 32 KiB; both fit the 48 KiB default
constexpr int kMaxCachedDevices = 64;

__device__ std::int32_t g_library_error_count;  // zero at module load

// Process-wide programmatic-dependent-launch switch: -1 = not read yet (the
// MOE_EPLB_PDL environment variable decides), else 0 or 1.
std::atomic<int> g_programmatic_launch{-1};

// The first statement of every kernel (see the design note): wait for the
// previous grid on the stream, then let the next one launch.
__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Where a kernel finds the replica: straight from the (untrusted) table or
// from prepared routes, or (rank mode) from a rank map in shared memory that
// each block first builds from the table or copies from the prepared routes.
enum class Source { kTable, kPrepared, kTableMap, kPreparedMap };

template <typename IdT>
struct BatchArgs {
  const IdT* ids;
  std::int64_t num_tokens;
  std::int64_t top_k;
  std::int64_t token_stride;
  std::int64_t k_stride;
  IdT* out;                      // (BS, K) contiguous
  std::uint8_t* mask;            // (BS, K) contiguous; pruning kernels only
  std::int64_t* load_counts;     // null: no load recording
  std::int64_t num_load_counts;  // bins in load_counts
  bool shared_histogram;         // count per block in shared memory first
  std::int32_t* error_count;     // null: bad elements are not counted
};

struct RouteArgs {
  detail::TableRouter table;        // Source::kTable and kTableMap
  detail::PreparedRouter prepared;  // Source::kPrepared and kPreparedMap
};

struct PruneArgs {
  ScalesView scales;
  const float* threshold;
  std::int64_t threshold_stride;
  const std::uint8_t* active_mask;  // null: every token active
  std::int64_t active_stride;
};

template <typename IdT>
struct Vector16;  // 16-byte vector of ids, loadable with one instruction
template <>
struct Vector16<std::int32_t> {
  using Type = int4;
};
template <>
struct Vector16<std::int64_t> {
  using Type = longlong2;
};

// token = flat index / K, in 32-bit arithmetic when it fits (a 64-bit
// division is several times slower on the GPU).
__device__ __forceinline__ std::int64_t token_of(std::int64_t index, std::int64_t top_k) {
  if ((static_cast<std::uint64_t>(index) | static_cast<std::uint64_t>(top_k)) <= 0xffffffffu) {
    return static_cast<std::uint32_t>(index) / static_cast<std::uint32_t>(top_k);
  }
  return index / top_k;
}

// Rank-mode lookups in the block's shared-memory map. Its entries came from a
// TableRouter or PreparedRouter, so each one is already a physical id below
// instance_id_end or a negative RouteStatus: only the expert id needs a check.
struct SharedMapRouter {
  const std::int32_t* map;
  std::int64_t num_experts;
  static constexpr bool by_token = false;

  // Clamped index, then select (route.hpp's device schedule).
  __device__ __forceinline__ detail::FirstRead first_read(std::int64_t expert) const {
    return detail::read_row_head<true>(map, num_experts, 1, expert);
  }

  __device__ __forceinline__ std::int64_t route(const detail::FirstRead& read, std::int64_t) const {
    return read.expert_ok ? read.head : detail::kRouteBadExpertId;
  }
};

// Fills the block's rank map (rank mode): entry e is what the source router
// says for expert e on this rank, a physical id or a negative RouteStatus,
// which the returned map router reports. The caller synchronises the block.
template <typename SourceRouter>
__device__ __forceinline__ SharedMapRouter build_rank_map(const SourceRouter& source,
                                                          std::int32_t* shared) {
  for (std::int64_t expert = threadIdx.x; expert < source.num_experts; expert += blockDim.x) {
    shared[expert] = static_cast<std::int32_t>(source.route(expert, 0));
  }
  return SharedMapRouter{shared, source.num_experts};
}

// Per-block state: the router (for the map sources, a SharedMapRouter over the
// rank map this block builds in shared memory), the shared load histogram, and
// this thread's count of bad elements. Holds copies, not references, of the
// kernel arguments it needs, so nothing forces them out of the parameter space.
template <Source kSource, bool kRecord>
class BlockMapper {
 public:
  static constexpr bool kSharedMap =
      kSource == Source::kTableMap || kSource == Source::kPreparedMap;
  using Router = std::conditional_t<
      kSource == Source::kTable, detail::TableRouter,
      std::conditional_t<kSource == Source::kPrepared, detail::PreparedRouter, SharedMapRouter>>;

  template <typename IdT>
  __device__ BlockMapper(const BatchArgs<IdT>& args, const RouteArgs& routes, std::int32_t* shared)
      : load_counts_(args.load_counts),
        num_load_counts_(args.num_load_counts),
        error_count_(args.error_count) {
    std::int64_t map_size = 0;
    if constexpr (kSource == Source::kTable) {
      router_ = routes.table;
    } else if constexpr (kSource == Source::kPrepared) {
      router_ = routes.prepared;
    } else {
      if constexpr (kSource == Source::kTableMap) {
        router_ = build_rank_map(routes.table, shared);
      } else {
        router_ = build_rank_map(routes.prepared, shared);
      }
      map_size = router_.num_experts;
    }
    if constexpr (kRecord) {
      if (args.shared_histogram) {
        histogram_ = reinterpret_cast<unsigned int*>(shared + map_size);
        for (std::int64_t bin = threadIdx.x; bin < num_load_counts_; bin += blockDim.x) {
          histogram_[bin] = 0;
        }
      }
    }
    if (kSharedMap || histogram_ != nullptr) __syncthreads();
  }

  // Whether token indices matter (token mode); rank mode may pass 0.
  __device__ bool by_token() const { return router_.by_token; }

  // The router's first read for `expert` (see detail::FirstRead).
  __device__ __forceinline__ detail::FirstRead first_read(std::int64_t expert) const {
    return router_.first_read(expert);
  }

  // The physical id of one choice, or -1 (counted) for a bad element. `keep`
  // says whether a good element is load-counted (not pruned, token active).
  __device__ __forceinline__ std::int64_t map(std::int64_t expert, std::int64_t token_idx,
                                              bool keep) {
    return map(router_.first_read(expert), token_idx, keep);
  }

  // The same, from a first read the caller issued earlier.
  __device__ __forceinline__ std::int64_t map(const detail::FirstRead& read, std::int64_t token_idx,
                                              bool keep) {
    // No early return: the ids of one vector stay one branch-free block, so
    // their lookups issue together (see route.hpp).
    const std::int64_t instance = router_.route(read, token_idx);
    const bool bad = instance < 0;
    num_bad_ += bad ? 1u : 0u;
    if constexpr (kRecord) {
      // Routers bound instance by instance_id_end == num_load_counts; the
      // range test keeps a stray value from ever writing outside the buffer.
      if (keep && detail::in_range(instance, num_load_counts_)) {
        if (histogram_ != nullptr) {
          atomicAdd(histogram_ + instance, 1u);
        } else {
          atomicAdd(reinterpret_cast<unsigned long long*>(load_counts_ + instance), 1ull);
        }
      }
    }
    (void)keep;
    return bad ? -1 : instance;
  }

  // Flushes the histogram and the bad-element count. Every thread of the
  // block must call it (it synchronises when a histogram is in use).
  __device__ void finish() {
    if constexpr (kRecord) {
      if (histogram_ != nullptr) {
        __syncthreads();
        for (std::int64_t bin = threadIdx.x; bin < num_load_counts_; bin += blockDim.x) {
          const unsigned int count = histogram_[bin];
          if (count != 0) {
            atomicAdd(reinterpret_cast<unsigned long long*>(load_counts_ + bin),
                      static_cast<unsigned long long>(count));
          }
        }
      }
    }
    if (num_bad_ != 0 && error_count_ != nullptr) {
      atomicAdd(error_count_, static_cast<std::int32_t>(num_bad_));
    }
  }

 private:
  Router router_{};
  std::int64_t* load_counts_;
  std::int64_t num_load_counts_;
  std::int32_t* error_count_;
  unsigned int* histogram_ = nullptr;
  std::uint32_t num_bad_ = 0;
};

// Plain batches: flat map over BS*K elements. Each thread issues its first
// ids load before the block builds its shared state (rank map, histogram), so
// the two latencies overlap; a 512x16 batch is exactly that one step.
template <typename IdT, Source kSource, bool kVector, bool kRecord>
__global__ void __launch_bounds__(kThreads)
    UpdateExpertKernel(const BatchArgs<IdT> args, const RouteArgs routes) {
  wait_for_previous_grid();
  extern __shared__ std::int32_t shared[];
  const std::int64_t top_k = args.top_k;
  const std::int64_t num_elements = args.num_tokens * top_k;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;

  if constexpr (kVector) {
    using Vector = typename Vector16<IdT>::Type;
    constexpr int kWidth = sizeof(Vector) / sizeof(IdT);
    const std::int64_t num_vectors = num_elements / kWidth;
    const Vector* in = reinterpret_cast<const Vector*>(args.ids);
    Vector* out = reinterpret_cast<Vector*>(args.out);
    Vector prefetched{};
    if (first < num_vectors) prefetched = __ldg(in + first);
    BlockMapper<kSource, kRecord> mapper(args, routes, shared);
    const bool by_token = mapper.by_token();
    // `Token` is std::uint32_t whenever every token index fits (any batch
    // under 2^32 tokens): replica_column()'s 64-bit fallback is then provably
    // dead, and its branch no longer splits the lanes (see the note above).
    const bool narrow_tokens = !by_token || args.num_tokens <= (std::int64_t{1} << 32);
    const auto map_vector = [&](std::int64_t v, Vector packed, auto token_type) {
      using Token = decltype(token_type);
      IdT lanes[kWidth];
      std::memcpy(lanes, &packed, sizeof(packed));
      Token token = 0;
      std::int64_t k = 0;
      if (by_token) {
        const std::int64_t first_token = token_of(v * kWidth, top_k);
        token = static_cast<Token>(first_token);
        k = v * kWidth - first_token * top_k;
      }
      // Every lane's first read, then the rest: the 2 or 4 (dependent) second
      // reads and the arithmetic between then overlap instead of queueing.
      detail::FirstRead reads[kWidth];
#pragma unroll
      for (int lane = 0; lane < kWidth; ++lane) reads[lane] = mapper.first_read(lanes[lane]);
#pragma unroll
      for (int lane = 0; lane < kWidth; ++lane) {
        lanes[lane] =
            static_cast<IdT>(mapper.map(reads[lane], static_cast<std::int64_t>(token), true));
        if (by_token && ++k == top_k) {
          k = 0;
          ++token;
        }
      }
      std::memcpy(&packed, lanes, sizeof(packed));
      out[v] = packed;
    };
    // Software pipelined: the next vector's load is issued before this one is
    // mapped, so every thread keeps a load in flight during its lookups and
    // store (at most one step of lookahead, which keeps 8 blocks per SM).
    for (std::int64_t v = first; v < num_vectors; v += stride) {
      Vector next{};
      if (v + stride < num_vectors) next = __ldg(in + v + stride);
      if (BlockMapper<kSource, kRecord>::kSharedMap || narrow_tokens) {
        map_vector(v, prefetched, std::uint32_t{});
      } else {
        map_vector(v, prefetched, std::int64_t{});
      }
      prefetched = next;
    }
    for (std::int64_t i = num_vectors * kWidth + first; i < num_elements; i += stride) {
      args.out[i] =
          static_cast<IdT>(mapper.map(args.ids[i], by_token ? token_of(i, top_k) : 0, true));
    }
    mapper.finish();
  } else {
    const auto load = [&](std::int64_t i, std::int64_t token) {
      return args.ids[token * args.token_stride + (i - token * top_k) * args.k_stride];
    };
    const std::int64_t first_token = first < num_elements ? token_of(first, top_k) : 0;
    const IdT prefetched = first < num_elements ? load(first, first_token) : IdT{0};
    BlockMapper<kSource, kRecord> mapper(args, routes, shared);
    if (first < num_elements) {
      args.out[first] = static_cast<IdT>(mapper.map(prefetched, first_token, true));
    }
    for (std::int64_t i = first + stride; i < num_elements; i += stride) {
      const std::int64_t token = token_of(i, top_k);
      args.out[i] = static_cast<IdT>(mapper.map(load(i, token), token, true));
    }
    mapper.finish();
  }
}

// Single-pass batches: rank mode through a shared map, 16-byte vectors, no
// load recording, and a grid with a thread for every vector (plus one for
// the 1-3 leftover ids, if any). This is the decode-time case (512x16 is 8
// blocks), where a call's cost is latency: the kernel is the general one
// without its loop, 64-bit indexing and per-block bookkeeping, so a thread
// issues its ids load, builds its share of the map, and after one barrier
// does 2 or 4 shared-memory lookups and one store. Same routers, same
// results (the tests run both kernels against the CPU).
template <typename IdT, typename SourceRouter>
__global__ void __launch_bounds__(kThreads)
    UpdateExpertSinglePassKernel(const IdT* __restrict__ ids, IdT* __restrict__ out,
                                 std::uint32_t num_elements, SourceRouter source,
                                 std::int32_t* error_count) {
  wait_for_previous_grid();
  extern __shared__ std::int32_t shared[];
  using Vector = typename Vector16<IdT>::Type;
  constexpr std::uint32_t kWidth = sizeof(Vector) / sizeof(IdT);
  const std::uint32_t num_vectors = num_elements / kWidth;
  const std::uint32_t v = blockIdx.x * kThreads + threadIdx.x;
  Vector packed{};
  if (v < num_vectors) packed = __ldg(reinterpret_cast<const Vector*>(ids) + v);
  source.by_token = false;  // rank mode (the host's plan): the token branch folds away
  const SharedMapRouter router = build_rank_map(source, shared);
  __syncthreads();
  std::uint32_t num_bad = 0;
  const auto map = [&](IdT id) {
    const std::int64_t instance = router.route(router.first_read(id), 0);
    num_bad += instance < 0 ? 1u : 0u;
    return static_cast<IdT>(instance < 0 ? -1 : instance);
  };
  if (v < num_vectors) {
    IdT lanes[kWidth];
    std::memcpy(lanes, &packed, sizeof(packed));
#pragma unroll
    for (std::uint32_t lane = 0; lane < kWidth; ++lane) lanes[lane] = map(lanes[lane]);
    std::memcpy(&packed, lanes, sizeof(packed));
    reinterpret_cast<Vector*>(out)[v] = packed;
  } else if (v == num_vectors) {
#pragma unroll 1
    for (std::uint32_t i = num_vectors * kWidth; i < num_elements; ++i) out[i] = map(ids[i]);
  }
  if (num_bad != 0 && error_count != nullptr) {
    atomicAdd(error_count, static_cast<std::int32_t>(num_bad));
  }
}

// Whether a token takes part (active_mask), and its scale sum if it does.
__device__ __forceinline__ float active_scale_sum(const PruneArgs& prune, std::int64_t token,
                                                  bool& active) {
  active = prune.active_mask == nullptr || prune.active_mask[token * prune.active_stride] != 0;
  return active ? detail::token_scale_sum(prune.scales, token) : 0.0f;
}

// Maps choice k of a pruning batch's token and writes its mask byte.
template <typename IdT, typename Mapper>
__device__ __forceinline__ void map_pruned_choice(Mapper& mapper, const BatchArgs<IdT>& args,
                                                  const PruneArgs& prune, std::int64_t token,
                                                  std::int64_t k, bool active, float scale_sum) {
  const bool keep = active && detail::keep_choice(prune.scales, prune.threshold,
                                                  prune.threshold_stride, token, k, scale_sum);
  const std::int64_t i = token * args.top_k + k;
  args.out[i] = static_cast<IdT>(
      mapper.map(args.ids[token * args.token_stride + k * args.k_stride], token, keep));
  args.mask[i] = keep ? 1 : 0;
}

// Pruning batches. Each choice needs its token's scale sum, summed in k
// order like the CPU (bit-identical). kPerChoice: one thread per choice, each
// summing its token's K scales itself (the K threads of a token read the same
// bytes, mostly from L1), so a token's K lookups run in parallel instead of one
// after another: for K up to kMaxPerChoiceTopK. Otherwise one thread per
// token, which sums once and maps its K choices in turn.
template <typename IdT, Source kSource, bool kRecord, bool kPerChoice>
__global__ void __launch_bounds__(kTokenThreads)
    UpdateExpertPrunedKernel(const BatchArgs<IdT> args, const RouteArgs routes,
                             const PruneArgs prune) {
  wait_for_previous_grid();
  extern __shared__ std::int32_t shared[];
  BlockMapper<kSource, kRecord> mapper(args, routes, shared);
  const std::int64_t top_k = args.top_k;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  if constexpr (kPerChoice) {
    const std::int64_t num_elements = args.num_tokens * top_k;
    for (std::int64_t i = first; i < num_elements; i += stride) {
      const std::int64_t token = token_of(i, top_k);
      bool active = false;
      const float scale_sum = active_scale_sum(prune, token, active);
      map_pruned_choice(mapper, args, prune, token, i - token * top_k, active, scale_sum);
    }
  } else {
    for (std::int64_t token = first; token < args.num_tokens; token += stride) {
      bool active = false;
      const float scale_sum = active_scale_sum(prune, token, active);
      for (std::int64_t k = 0; k < top_k; ++k) {
        map_pruned_choice(mapper, args, prune, token, k, active, scale_sum);
      }
    }
  }
  mapper.finish();
}

// ---- host side ------------------------------------------------------------

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* pointer) { return reinterpret_cast<std::uintptr_t>(pointer) % 16 == 0; }

int current_device(const char* operation) {
  int device = 0;
  MOE_EPLB_CUDA_CHECK(operation, cudaGetDevice(&device));
  return device;
}

// What a launch needs to know about the current device, cached per device
// (attribute queries would otherwise be the only per-call driver work
// besides the launch itself).
struct DeviceInfo {
  int multiprocessors;
  bool programmatic_launch;  // compute capability 9.0 or newer
};

DeviceInfo device_info(const char* operation) {
  static std::atomic<int> cache[kMaxCachedDevices];  // multiprocessors | major << 16
  const int device = current_device(operation);
  int packed = device < kMaxCachedDevices ? cache[device].load(std::memory_order_relaxed) : 0;
  if (packed == 0) {
    int count = 0;
    int major = 0;
    MOE_EPLB_CUDA_CHECK(operation,
                        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    MOE_EPLB_CUDA_CHECK(operation,
                        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    packed = std::clamp(count, 1, 0xffff) | (std::clamp(major, 0, 0x7fff) << 16);
    if (device < kMaxCachedDevices) cache[device].store(packed, std::memory_order_relaxed);
  }
  return DeviceInfo{packed & 0xffff, (packed >> 16) >= 9};
}

struct LaunchPlan {
  Source source;
  bool vector;       // plain batches: 16-byte vectors
  bool single_pass;  // plain batches: UpdateExpertSinglePassKernel
  bool per_choice;   // pruning batches: a thread per choice, not per token
  bool record;
  std::int64_t blocks;
  std::size_t shared_bytes;
  bool programmatic;  // launch with programmatic stream serialization
};

// Launches kernel<<<plan.blocks, threads, plan.shared_bytes, stream>>>(args...),
// through cudaLaunchKernelEx with the programmatic-dependent-launch attribute
// when the plan says so. The error, if any, is picked up by the caller's
// cudaGetLastError().
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), const LaunchPlan& plan, int threads,
                   cudaStream_t stream, const Args&... args) {
  const dim3 grid(static_cast<unsigned int>(plan.blocks));
  if (!plan.programmatic) {
    kernel<<<grid, threads, plan.shared_bytes, stream>>>(args...);
    return;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(static_cast<unsigned int>(threads));
  config.dynamicSmemBytes = plan.shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  (void)cudaLaunchKernelEx(&config, kernel, args...);
}

// Calls f(std::true_type{}) or f(std::false_type{}): a run-time flag as a
// template argument.
template <typename F>
void with_flag(bool value, F&& f) {
  if (value) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// Calls f(std::integral_constant<Source, source>{}).
template <typename F>
void with_source(Source source, F&& f) {
  switch (source) {
    case Source::kTable:
      return f(std::integral_constant<Source, Source::kTable>{});
    case Source::kPrepared:
      return f(std::integral_constant<Source, Source::kPrepared>{});
    case Source::kTableMap:
      return f(std::integral_constant<Source, Source::kTableMap>{});
    case Source::kPreparedMap:
      return f(std::integral_constant<Source, Source::kPreparedMap>{});
  }
}

// Plain batches: 4 sources x vector x record, 16 kernels per id type, and
// the 2 single-pass kernels.
template <typename IdT>
void launch_flat(const LaunchPlan& plan, const BatchArgs<IdT>& args, const RouteArgs& routes,
                 cudaStream_t stream) {
  if (plan.single_pass) {
    const auto num_elements = static_cast<std::uint32_t>(args.num_tokens * args.top_k);
    if (plan.source == Source::kTableMap) {
      launch_kernel(UpdateExpertSinglePassKernel<IdT, detail::TableRouter>, plan, kThreads, stream,
                    args.ids, args.out, num_elements, routes.table, args.error_count);
    } else {
      launch_kernel(UpdateExpertSinglePassKernel<IdT, detail::PreparedRouter>, plan, kThreads,
                    stream, args.ids, args.out, num_elements, routes.prepared, args.error_count);
    }
    return;
  }
  with_source(plan.source, [&](auto source) {
    with_flag(plan.vector, [&](auto vector) {
      with_flag(plan.record, [&](auto record) {
        launch_kernel(UpdateExpertKernel<IdT, decltype(source)::value, decltype(vector)::value,
                                         decltype(record)::value>,
                      plan, kThreads, stream, args, routes);
      });
    });
  });
}

// Pruning batches: table or prepared (never a shared map) x record x per
// choice, 8 kernels per id type.
template <typename IdT>
void launch_pruned(const LaunchPlan& plan, const BatchArgs<IdT>& args, const RouteArgs& routes,
                   const PruneArgs& prune, cudaStream_t stream) {
  with_flag(plan.source == Source::kPrepared, [&](auto prepared) {
    constexpr Source kSource = decltype(prepared)::value ? Source::kPrepared : Source::kTable;
    with_flag(plan.record, [&](auto record) {
      with_flag(plan.per_choice, [&](auto per_choice) {
        launch_kernel(UpdateExpertPrunedKernel<IdT, kSource, decltype(record)::value,
                                               decltype(per_choice)::value>,
                      plan, kTokenThreads, stream, args, routes, prune);
      });
    });
  });
}

// Plans and launches one call. `source` is kTable or kPrepared; the plan may
// turn it into the matching shared-map source. `num_bins` is the router's instance id end,
// which is the size of load_counts whenever load recording is on.
template <typename IdT>
void launch(const char* operation, const ExpertIdsView& ids, const PruningInputs* pruning,
            const UpdateExpertOutputs& outputs, const RouteArgs& routes, Source source,
            std::int64_t num_bins, std::int32_t* error_count, cudaStream_t stream) {
  const std::int64_t num_elements = ids.num_tokens * ids.top_k;
  BatchArgs<IdT> args{};
  args.ids = static_cast<const IdT*>(ids.data);
  args.num_tokens = ids.num_tokens;
  args.top_k = ids.top_k;
  args.token_stride = ids.token_stride;
  args.k_stride = ids.k_stride;
  args.out = static_cast<IdT*>(outputs.balanced_expert_ids);
  args.mask = outputs.balanced_active_mask;
  args.load_counts = outputs.load_counts;
  args.num_load_counts = outputs.load_counts != nullptr ? num_bins : 0;
  args.error_count = error_count;

  LaunchPlan plan{};
  plan.source = source;
  plan.record = outputs.load_counts != nullptr;
  // Per-block uint32 bins cannot overflow below 2^32 elements.
  args.shared_histogram = plan.record && num_bins <= kMaxSharedHistogram &&
                          num_elements <= static_cast<std::int64_t>(UINT32_MAX);
  const DeviceInfo device = device_info(operation);
  plan.programmatic = device.programmatic_launch && programmatic_dependent_launch();
  const std::int64_t max_blocks = std::int64_t{device.multiprocessors} * kBlocksPerSm;
  std::int64_t map_bytes = 0;

  if (pruning == nullptr) {
    const bool contiguous = (ids.num_tokens <= 1 || ids.token_stride == ids.top_k) &&
                            (ids.top_k <= 1 || ids.k_stride == 1);
    plan.vector = contiguous && aligned16(ids.data) && aligned16(outputs.balanced_expert_ids);
    const std::int64_t width = static_cast<std::int64_t>(16 / sizeof(IdT));
    const std::int64_t work =
        plan.vector ? std::max<std::int64_t>(num_elements / width, 1) : num_elements;
    plan.blocks = std::min(ceil_div(work, kThreads), max_blocks);
    // Rank mode: a per-block map in shared memory when it costs at most one
    // entry per element the block maps (see the design note), or at most one
    // entry per thread: then building it takes one lookup's latency, which
    // overlaps the ids load, so even a tiny batch waits for one global
    // latency less than with lookups that follow the ids load.
    const bool by_token =
        source == Source::kTable ? routes.table.by_token : routes.prepared.by_token;
    const std::int64_t num_experts =
        source == Source::kTable ? routes.table.num_experts : routes.prepared.num_experts;
    if (!by_token && num_experts <= kMaxSharedMapExperts &&
        (num_experts <= kThreads || num_experts * plan.blocks <= num_elements)) {
      plan.source = source == Source::kTable ? Source::kTableMap : Source::kPreparedMap;
      map_bytes = num_experts * static_cast<std::int64_t>(sizeof(std::int32_t));
      // A thread for every vector, and one for the leftover ids, in one wave.
      const std::int64_t single_pass_blocks =
          ceil_div(num_elements / width + (num_elements % width != 0 ? 1 : 0), kThreads);
      if (plan.vector && !plan.record && single_pass_blocks <= max_blocks) {
        plan.single_pass = true;
        plan.blocks = single_pass_blocks;
      }
    }
  } else {
    plan.per_choice = ids.top_k <= kMaxPerChoiceTopK;
    plan.blocks = std::min(ceil_div(plan.per_choice ? num_elements : ids.num_tokens, kTokenThreads),
                           2 * max_blocks);
  }
  plan.shared_bytes = static_cast<std::size_t>(
      map_bytes +
      (args.shared_histogram ? num_bins * static_cast<std::int64_t>(sizeof(unsigned)) : 0));

  if (pruning == nullptr) {
    launch_flat(plan, args, routes, stream);
  } else {
    PruneArgs prune{};
    prune.scales = pruning->expert_scales;
    prune.threshold = pruning->pruning_threshold.data;
    prune.threshold_stride = pruning->pruning_threshold.stride;
    prune.active_mask = pruning->has_active_mask ? pruning->active_mask.data : nullptr;
    prune.active_stride = pruning->active_mask.stride;
    launch_pruned(plan, args, routes, prune, stream);
  }
  MOE_EPLB_CUDA_CHECK(operation, cudaGetLastError());
}

void launch_for_dtype(const char* operation, const ExpertIdsView& ids, const PruningInputs* pruning,
                      const UpdateExpertOutputs& outputs, const RouteArgs& routes, Source source,
                      std::int64_t num_bins, std::int32_t* error_count, cudaStream_t stream) {
  if (ids.dtype == IdDtype::kInt32) {
    launch<std::int32_t>(operation, ids, pruning, outputs, routes, source, num_bins, error_count,
                         stream);
  } else {
    launch<std::int64_t>(operation, ids, pruning, outputs, routes, source, num_bins, error_count,
                         stream);
  }
}

}  // namespace

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the (non-sticky) "no device" error
    return 0;
  }
  return count;
}

bool programmatic_dependent_launch() noexcept {
  int enabled = g_programmatic_launch.load(std::memory_order_relaxed);
  if (enabled < 0) {
    const char* value = std::getenv("MOE_EPLB_PDL");
    enabled = value != nullptr && value[0] == '1' && value[1] == '\0' ? 1 : 0;
    int expected = -1;  // a concurrent set_...() wins
    if (!g_programmatic_launch.compare_exchange_strong(expected, enabled)) enabled = expected;
  }
  return enabled == 1;
}

void set_programmatic_dependent_launch(bool enabled) noexcept {
  g_programmatic_launch.store(enabled ? 1 : 0, std::memory_order_relaxed);
}

std::int32_t* library_error_count() {
  constexpr const char* kOperation = "library_error_count()";
  static std::atomic<std::int32_t*> cache[kMaxCachedDevices];
  const int device = current_device(kOperation);
  if (device < kMaxCachedDevices) {
    std::int32_t* cached = cache[device].load(std::memory_order_acquire);
    if (cached != nullptr) return cached;
  }
  void* address = nullptr;
  MOE_EPLB_CUDA_CHECK(kOperation, cudaGetSymbolAddress(&address, g_library_error_count));
  auto* counter = static_cast<std::int32_t*>(address);
  if (device < kMaxCachedDevices) cache[device].store(counter, std::memory_order_release);
  return counter;
}

void launch_update_expert(const UpdateExpertInputs& inputs, const UpdateExpertParams& params,
                          const UpdateExpertOutputs& outputs, std::int32_t* error_count,
                          cudaStream_t stream) {
  constexpr const char* kOperation = "update_expert()";
  detail::check_update_expert_call(kOperation, inputs, params, &outputs,
                                   outputs.load_counts != nullptr);
  const ExpertIdsView& ids = inputs.expert_ids;
  if (ids.num_tokens == 0 || ids.top_k == 0) return;
  RouteArgs routes{};
  routes.table = detail::table_router(inputs.eplb_table, params);
  launch_for_dtype(kOperation, ids, inputs.pruning, outputs, routes, Source::kTable,
                   routes.table.instance_id_end, error_count, stream);
}

void launch_update_expert_prepared(const PreparedView& prepared, const ExpertIdsView& expert_ids,
                                   const PruningInputs* pruning, const UpdateExpertOutputs& outputs,
                                   std::int32_t* error_count, cudaStream_t stream) {
  constexpr const char* kOperation = "update_expert_prepared()";
  detail::check_prepared_call(kOperation, prepared, expert_ids, pruning, &outputs);
  if (expert_ids.num_tokens == 0 || expert_ids.top_k == 0) return;
  RouteArgs routes{};
  routes.prepared = detail::prepared_router(prepared);
  launch_for_dtype(kOperation, expert_ids, pruning, outputs, routes, Source::kPrepared,
                   routes.prepared.instance_id_end, error_count, stream);
}

// ---- DevicePreparedTable ----------------------------------------------------

DevicePreparedTable::DevicePreparedTable(const TableView& eplb_table,
                                         const UpdateExpertParams& params, cudaStream_t stream) {
  constexpr const char* kOperation = "DevicePreparedTable()";
  const PreparedTable host(eplb_table, params);  // validates the whole table
  params_ = host.params();
  report_ = host.report();
  num_experts_ = eplb_table.num_experts;
  num_columns_ = eplb_table.num_columns;
  row_width_ = params_.balance_mode == BalanceMode::kByToken ? num_columns_ : 1;
  const std::size_t bytes =
      static_cast<std::size_t>(num_experts_ * row_width_) * sizeof(std::int32_t);
  try {
    MOE_EPLB_CUDA_CHECK(kOperation, cudaMalloc(reinterpret_cast<void**>(&device_routes_), bytes));
    MOE_EPLB_CUDA_CHECK(kOperation,
                        cudaMallocHost(reinterpret_cast<void**>(&staging_routes_), bytes));
    MOE_EPLB_CUDA_CHECK(kOperation,
                        cudaEventCreateWithFlags(&staging_free_, cudaEventDisableTiming));
    stage_and_copy(eplb_table, stream);
  } catch (...) {
    release();
    throw;
  }
}

DevicePreparedTable::~DevicePreparedTable() { release(); }

void DevicePreparedTable::release() noexcept {
  // The last copy may still be reading the staging buffer.
  if (staging_free_ != nullptr) {
    (void)cudaEventSynchronize(staging_free_);
    (void)cudaEventDestroy(staging_free_);
  }
  if (staging_routes_ != nullptr) (void)cudaFreeHost(staging_routes_);
  if (device_routes_ != nullptr) (void)cudaFree(device_routes_);
  staging_free_ = nullptr;
  staging_routes_ = nullptr;
  device_routes_ = nullptr;
}

void DevicePreparedTable::update(const TableView& eplb_table, cudaStream_t stream) {
  constexpr const char* kOperation = "DevicePreparedTable::update()";
  MOE_EPLB_CHECK(eplb_table.num_experts == num_experts_ && eplb_table.num_columns == num_columns_,
                 kOperation, ": eplb_table has shape (", eplb_table.num_experts, ", ",
                 eplb_table.num_columns, "), expected (", num_experts_, ", ", num_columns_,
                 "), the shape this table was prepared with");
  const PreparedTable host(eplb_table, params_);  // throws before anything changes
  stage_and_copy(eplb_table, stream);
  report_ = host.report();
}

void DevicePreparedTable::stage_and_copy(const TableView& eplb_table, cudaStream_t stream) {
  constexpr const char* kOperation = "DevicePreparedTable::update()";
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  MOE_EPLB_CUDA_CHECK(kOperation, cudaStreamIsCapturing(stream, &capture));
  MOE_EPLB_CHECK(capture == cudaStreamCaptureStatusNone, kOperation,
                 ": the stream is capturing a CUDA graph; install tables between replays, "
                 "outside capture");
  MOE_EPLB_CUDA_CHECK(kOperation, cudaEventSynchronize(staging_free_));
  build_routes(eplb_table, params_, staging_routes_, row_width_);
  const std::size_t bytes =
      static_cast<std::size_t>(num_experts_ * row_width_) * sizeof(std::int32_t);
  MOE_EPLB_CUDA_CHECK(kOperation, cudaMemcpyAsync(device_routes_, staging_routes_, bytes,
                                                  cudaMemcpyHostToDevice, stream));
  MOE_EPLB_CUDA_CHECK(kOperation, cudaEventRecord(staging_free_, stream));
}

PreparedView DevicePreparedTable::view() const {
  return make_prepared_view(device_routes_, num_experts_, row_width_, params_);
}

}  // namespace moe_eplb::cuda

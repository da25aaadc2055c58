// CUDA kernels of the update-expert operator (internal header, included by
// update_expert_launch.cu, which launches them).
//
// Design: every element goes through a Router from detail/route.hpp (the one
// copy of the formula, shared with the CPU kernel), every call is validated by
// the core's front-end checks, and launch_plan.cpp decides the kernel, route
// source and grid; this file only decides which thread maps which element and
// how memory is touched.
// - Plain batches are a flat map over the BS*K elements
//   (UpdateExpertFlatKernel). Contiguous, 16-byte-aligned ids are read and
//   written as int4 / longlong2 vectors, which lets a large batch run at copy
//   bandwidth; other views take a strided element loop. The grid-stride loop
//   loads the next vector before mapping the current one, so a thread's
//   lookups and store overlap its next load.
// - In rank mode a block may first resolve every expert once into a rank map
//   in shared memory (from the table through TableRouter, or copied from the
//   prepared routes through PreparedRouter; a SharedMapRouter reads it). Each
//   element then costs one shared-memory lookup, and the map's global reads
//   overlap the ids load instead of following it.
// - The routers run their device schedule (route.hpp: clamped reads, then
//   selects), the per-element error handling has no branch either, and a
//   vector's lanes issue all their first reads before any second one, so the
//   2 or 4 ids of one vector wait for their lookups together.
// - Batches one wave of threads covers (decode sizes) take
//   UpdateExpertSinglePassKernel in rank mode: the same routers and checks
//   without the loop, 64-bit indexing or per-block bookkeeping, its ids load
//   issued before the map build.
// - Pruning (UpdateExpertPrunedKernel) needs each token's scale sum, summed in
//   k order like the CPU (bit-identical). Up to kMaxPerChoiceTopK each choice
//   gets a thread that sums its token's scales itself, so a token's K lookups
//   overlap; beyond that, one thread per token sums once and maps its K
//   choices in turn.
// - Load recording counts into a per-block shared-memory histogram when the
//   slot count is small (the usual EPLB case), then flushes each non-zero bin
//   with one global atomic; otherwise it uses global atomics.
// - A bad element writes -1; each thread counts its bad elements and adds them
//   to *error_counter with one atomic at the end.
// - Programmatic dependent launch (LaunchOptions): every kernel's first
//   statement waits (griddepcontrol.wait) until the previous grid on the
//   stream has completed and its writes are visible, and nothing global is
//   touched before it, so the ordering is that of a plain launch. Without the
//   launch attribute both instructions are no-ops.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "launch_plan.hpp"
#include "moe_eplb/detail/route.hpp"
#include "moe_eplb/types.hpp"

namespace moe_eplb::cuda::internal {

namespace detail = moe_eplb::detail;

// The first statement of every kernel (see the design note): wait for the
// previous grid on the stream, then let the next one launch.
__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

template <typename IdT>
struct BatchArgs {
  const IdT* ids;
  std::int64_t num_tokens;
  std::int64_t top_k;
  std::int64_t token_stride;
  std::int64_t k_stride;
  IdT* out;                           // (BS, K) contiguous
  std::uint8_t* mask;                 // (BS, K) contiguous; pruning kernels only
  std::int64_t* load_counts;          // null: no load recording
  std::int64_t num_physical_experts;  // the routers' slot bound: the size of load_counts
  bool shared_histogram;              // count per block in shared memory first
  std::int32_t* error_counter;        // null: bad elements are not counted
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
// TableRouter or PreparedRouter, so each one is already a slot below
// num_physical_experts or a negative RouteStatus: only the expert id needs a check.
struct SharedMapRouter {
  const std::int32_t* map;
  std::int64_t num_experts;
  static constexpr BalanceMode balance_mode = BalanceMode::kByRank;

  // Clamped index, then select (route.hpp's device schedule).
  __device__ __forceinline__ detail::FirstRead first_read(std::int64_t expert) const {
    return detail::read_row_head<true>(map, num_experts, 1, expert);
  }

  __device__ __forceinline__ std::int64_t route(const detail::FirstRead& read, std::int64_t) const {
    return read.expert_ok ? read.head : detail::kRouteBadExpertId;
  }
};

// Fills the block's rank map (rank mode): entry e is what the source router
// says for expert e on this rank, a slot or a negative RouteStatus,
// which the returned map router reports. The caller synchronises the block.
template <typename SourceRouter>
__device__ __forceinline__ SharedMapRouter build_rank_map(const SourceRouter& source,
                                                          std::int32_t* shared) {
  for (std::int64_t expert = threadIdx.x; expert < source.num_experts; expert += blockDim.x) {
    shared[expert] = static_cast<std::int32_t>(detail::route_one(source, expert, 0));
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
        num_physical_experts_(args.num_physical_experts),
        error_counter_(args.error_counter) {
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
        for (std::int64_t bin = threadIdx.x; bin < num_physical_experts_; bin += blockDim.x) {
          histogram_[bin] = 0;
        }
      }
    }
    if (kSharedMap || histogram_ != nullptr) __syncthreads();
  }

  // Whether token indices matter (the per-token modes); rank mode may pass 0.
  __device__ bool by_token() const { return detail::uses_token_index(router_.balance_mode); }

  // The router's first read for `expert` (see detail::FirstRead).
  __device__ __forceinline__ detail::FirstRead first_read(std::int64_t expert) const {
    return router_.first_read(expert);
  }

  // The slot of one choice, or -1 (counted) for a bad element. `keep`
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
    const std::int64_t slot = router_.route(read, token_idx);
    const bool bad = slot < 0;
    num_bad_ += bad ? 1u : 0u;
    if constexpr (kRecord) {
      // The routers already bound slot by num_physical_experts_; the range
      // test keeps a stray value from ever writing outside the buffer.
      if (keep && detail::in_range(slot, num_physical_experts_)) {
        if (histogram_ != nullptr) {
          atomicAdd(histogram_ + slot, 1u);
        } else {
          atomicAdd(reinterpret_cast<unsigned long long*>(load_counts_ + slot), 1ull);
        }
      }
    }
    (void)keep;
    return bad ? -1 : slot;
  }

  // Flushes the histogram and the bad-element count. Every thread of the
  // block must call it (it synchronises when a histogram is in use).
  __device__ void finish() {
    if constexpr (kRecord) {
      if (histogram_ != nullptr) {
        __syncthreads();
        for (std::int64_t bin = threadIdx.x; bin < num_physical_experts_; bin += blockDim.x) {
          const unsigned int count = histogram_[bin];
          if (count != 0) {
            atomicAdd(reinterpret_cast<unsigned long long*>(load_counts_ + bin),
                      static_cast<unsigned long long>(count));
          }
        }
      }
    }
    if (num_bad_ != 0 && error_counter_ != nullptr) {
      atomicAdd(error_counter_, static_cast<std::int32_t>(num_bad_));
    }
  }

 private:
  Router router_{};
  std::int64_t* load_counts_;
  std::int64_t num_physical_experts_;
  std::int32_t* error_counter_;
  unsigned int* histogram_ = nullptr;
  std::uint32_t num_bad_ = 0;
};

// Plain batches: flat map over BS*K elements. Each thread issues its first
// ids load before the block builds its shared state (rank map, histogram), so
// the two latencies overlap; a 512x16 batch is exactly that one step.
template <typename IdT, Source kSource, bool kVector, bool kRecord>
__global__ void __launch_bounds__(kThreads)
    UpdateExpertFlatKernel(const BatchArgs<IdT> args, const RouteArgs routes) {
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
                                 std::int32_t* error_counter) {
  wait_for_previous_grid();
  extern __shared__ std::int32_t shared[];
  using Vector = typename Vector16<IdT>::Type;
  constexpr std::uint32_t kWidth = sizeof(Vector) / sizeof(IdT);
  const std::uint32_t num_vectors = num_elements / kWidth;
  const std::uint32_t v = blockIdx.x * kThreads + threadIdx.x;
  Vector packed{};
  if (v < num_vectors) packed = __ldg(reinterpret_cast<const Vector*>(ids) + v);
  source.balance_mode = BalanceMode::kByRank;  // the host's plan: the token branch folds away
  const SharedMapRouter router = build_rank_map(source, shared);
  __syncthreads();
  std::uint32_t num_bad = 0;
  const auto map = [&](IdT id) {
    const std::int64_t slot = router.route(router.first_read(id), 0);
    num_bad += slot < 0 ? 1u : 0u;
    return static_cast<IdT>(slot < 0 ? -1 : slot);
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
  if (num_bad != 0 && error_counter != nullptr) {
    atomicAdd(error_counter, static_cast<std::int32_t>(num_bad));
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
__global__ void __launch_bounds__(kPrunedThreads)
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

}  // namespace moe_eplb::cuda::internal

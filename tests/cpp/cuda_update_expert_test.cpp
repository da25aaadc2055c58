// CUDA launchers against the CPU kernel (itself tested against the scalar
// reference): every layout and mode bit-exact, pruning and load recording,
// bad elements -> -1 plus a count, DevicePreparedTable swapped under a
// captured CUDA graph. Compiled only with MOE_EPLB_WITH_CUDA; every test skips
// with a message when the machine has no GPU.
#if MOE_EPLB_WITH_CUDA

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "moe_eplb/cuda.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/update_expert.hpp"
#include "reference.hpp"
#include "test_util.hpp"

namespace moe_eplb {
namespace {

using test::Layout;
using test::Matrix;

#define MOE_EPLB_ASSERT_CUDA(call) \
  ASSERT_EQ((call), cudaSuccess) << #call << ": " << cudaGetErrorString(cudaGetLastError())

#define MOE_EPLB_SKIP_WITHOUT_GPU()                                                     \
  if (cuda::device_count() == 0) {                                                      \
    GTEST_SKIP() << "no CUDA device: the CUDA launchers are compiled but not run here"; \
  }

// Device copy of a host vector; frees on destruction.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(const std::vector<T>& host) : size_(host.size()) {
    if (cudaMalloc(reinterpret_cast<void**>(&data_), bytes()) != cudaSuccess) data_ = nullptr;
    if (data_ != nullptr && !host.empty()) {
      cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    }
  }
  DeviceBuffer(std::size_t size, T fill) : DeviceBuffer(std::vector<T>(size, fill)) {}
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return data_; }
  std::vector<T> to_host() const {
    std::vector<T> host(size_);
    cudaMemcpy(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }

 private:
  std::size_t bytes() const { return (size_ == 0 ? 1 : size_) * sizeof(T); }
  std::size_t size_;
  T* data_ = nullptr;
};

// A strided host layout copied to the device, with the view's pointer moved
// to the device copy (same offsets and strides).
template <typename T>
struct DeviceStrided {
  test::Strided<T> host;
  DeviceBuffer<T> device;
  explicit DeviceStrided(test::Strided<T> layout) : host(std::move(layout)), device(host.storage) {}
  const T* data() const { return device.get() + host.offset; }
};

struct Case {
  std::int64_t num_tokens;
  std::int64_t top_k;
};

// 400000 x 8 is more than one wave of threads on any current GPU: the
// grid-stride loops.
const Case kCases[] = {{1, 1}, {17, 3}, {512, 16}, {4097, 5}, {70000, 8}, {400000, 8}};

template <typename IdT>
void expect_matches_cpu(BalanceMode mode, Layout layout, std::mt19937_64& rng) {
  test::TableSpec spec;
  spec.num_experts = 48;
  spec.num_columns = 5;
  spec.world_size = 8;
  spec.slots_per_rank = 8;
  spec.max_count = 4;
  const Matrix table_matrix = test::random_table(spec, rng);
  DeviceStrided<std::int32_t> table(test::lay_out<std::int32_t>(table_matrix, layout, -777));
  TableView host_table = test::table_view(table.host, table_matrix);
  TableView device_table = host_table;
  device_table.data = table.data();

  const UpdateExpertParams params =
      test::rank_params(static_cast<std::int64_t>(rng() % 8), 8, static_cast<int>(mode), 64);
  cuda::DevicePreparedTable prepared(host_table, params, nullptr);

  for (const Case& c : kCases) {
    const Matrix ids_matrix = test::random_ids(c.num_tokens, c.top_k, spec.num_experts, rng);
    DeviceStrided<IdT> ids(test::lay_out<IdT>(ids_matrix, layout, IdT{-5}));
    const ExpertIdsView host_ids = test::ids_view(ids.host, ids_matrix);
    ExpertIdsView device_ids = host_ids;
    device_ids.data = ids.data();
    const std::size_t count = static_cast<std::size_t>(c.num_tokens * c.top_k);

    std::vector<IdT> expected(count);
    update_expert(host_ids, host_table, params, expected.data());

    DeviceBuffer<IdT> out(count, IdT{0x5A5A});  // poison: unwritten elements show
    DeviceBuffer<std::int32_t> errors(1, 0);
    UpdateExpertOutputs outputs;
    outputs.balanced_expert_ids = {out.get(), static_cast<std::int64_t>(count)};
    cuda::launch_update_expert(UpdateExpertInputs{device_ids, device_table, nullptr}, params,
                               outputs, errors.get(), nullptr);
    MOE_EPLB_ASSERT_CUDA(cudaDeviceSynchronize());
    EXPECT_EQ(out.to_host(), expected)
        << "stateless " << test::to_string(layout) << " BS " << c.num_tokens << " K " << c.top_k;

    DeviceBuffer<IdT> prepared_out(count, IdT{0x5A5A});
    outputs.balanced_expert_ids = {prepared_out.get(), static_cast<std::int64_t>(count)};
    cuda::launch_update_expert_prepared(prepared.view(), device_ids, nullptr, outputs, errors.get(),
                                        nullptr);
    MOE_EPLB_ASSERT_CUDA(cudaDeviceSynchronize());
    EXPECT_EQ(prepared_out.to_host(), expected) << "prepared " << test::to_string(layout);
    EXPECT_EQ(errors.to_host()[0], 0);
  }
}

TEST(CudaUpdateExpert, MatchesCpuInEveryLayoutModeAndDtype) {
  MOE_EPLB_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(20240611);
  for (BalanceMode mode : {BalanceMode::kByRank, BalanceMode::kByToken, BalanceMode::kByHash}) {
    for (Layout layout : test::kAllLayouts) {
      expect_matches_cpu<std::int32_t>(mode, layout, rng);
      expect_matches_cpu<std::int64_t>(mode, layout, rng);
    }
  }
}

// Pruning in every scale dtype, a thread per choice (K = 6) and per token
// (K = 40), and load recording through the shared histogram (64 slots) and
// global atomics (16384 slots), against the CPU kernel.
TEST(CudaUpdateExpert, PruningAndLoadRecordingMatchCpu) {
  MOE_EPLB_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(7);
  const std::int64_t num_tokens = 1000;
  for (const Dtype scale_dtype : {Dtype::kFloat32, Dtype::kFloat16, Dtype::kBFloat16}) {
    for (const std::int64_t top_k : {6, 40}) {
      for (const std::int64_t slots_per_rank : {16, 4096}) {
        test::TableSpec spec;
        spec.num_experts = 48;
        spec.world_size = 4;
        spec.slots_per_rank = slots_per_rank;
        const Matrix table_matrix = test::random_table(spec, rng);
        test::OwnedTable host(table_matrix);
        DeviceBuffer<std::int32_t> table_data(host.storage.storage);
        TableView device_table = host.view;
        device_table.data = table_data.get();
        const std::vector<std::int64_t> ids =
            test::random_ids(num_tokens, top_k, spec.num_experts, rng).values;
        const test::PruningData d = test::random_pruning(num_tokens, top_k, scale_dtype, rng);
        const void* scales = scale_dtype == Dtype::kFloat32 ? static_cast<const void*>(d.f32.data())
                                                            : d.bits16.data();
        const std::size_t scale_bytes = ids.size() * element_size(scale_dtype);
        DeviceBuffer<std::uint8_t> scales_device(
            std::vector<std::uint8_t>(static_cast<const std::uint8_t*>(scales),
                                      static_cast<const std::uint8_t*>(scales) + scale_bytes));
        DeviceBuffer<std::int64_t> ids_device(ids);
        DeviceBuffer<float> threshold_device(d.threshold);
        DeviceBuffer<std::uint8_t> active_device(d.active);

        const auto inputs_for = [&](bool device) {
          const ExpertIdsView view{device ? static_cast<const void*>(ids_device.get()) : ids.data(),
                                   Dtype::kInt64,
                                   num_tokens,
                                   top_k,
                                   top_k,
                                   1};
          PruningInputs pruning;
          pruning.expert_scales =
              ScalesView{device ? static_cast<const void*>(scales_device.get()) : scales,
                         scale_dtype,
                         num_tokens,
                         top_k,
                         top_k,
                         1};
          pruning.pruning_threshold =
              VectorView<float>{device ? threshold_device.get() : d.threshold.data(), top_k, 1};
          pruning.has_active_mask = true;
          pruning.active_mask = VectorView<std::uint8_t>{
              device ? active_device.get() : d.active.data(), num_tokens, 1};
          return std::make_pair(view, pruning);
        };
        const std::int64_t num_physical = spec.world_size * slots_per_rank;
        const auto n = static_cast<std::int64_t>(ids.size());
        for (BalanceMode mode :
             {BalanceMode::kByRank, BalanceMode::kByToken, BalanceMode::kByHash}) {
          const UpdateExpertParams params =
              test::rank_params(2, spec.world_size, static_cast<int>(mode), num_physical);

          auto [host_view, host_pruning] = inputs_for(false);
          std::vector<std::int64_t> expected(ids.size());
          std::vector<std::uint8_t> expected_mask(ids.size());
          std::vector<std::int64_t> expected_load(static_cast<std::size_t>(num_physical), 0);
          update_expert(UpdateExpertInputs{host_view, host.view, &host_pruning}, params,
                        UpdateExpertOutputs{{expected.data(), n},
                                            {expected_mask.data(), n},
                                            {expected_load.data(), num_physical}});

          auto [device_view, device_pruning] = inputs_for(true);
          DeviceBuffer<std::int64_t> out(ids.size(), -9);
          DeviceBuffer<std::uint8_t> mask(ids.size(), 7);
          DeviceBuffer<std::int64_t> load(static_cast<std::size_t>(num_physical), 0);
          cuda::launch_update_expert(
              UpdateExpertInputs{device_view, device_table, &device_pruning}, params,
              UpdateExpertOutputs{{out.get(), n}, {mask.get(), n}, {load.get(), num_physical}},
              nullptr, nullptr);
          MOE_EPLB_ASSERT_CUDA(cudaDeviceSynchronize());
          const std::string context = to_string(scale_dtype) + " K " + std::to_string(top_k) +
                                      " slots " + std::to_string(num_physical);
          EXPECT_EQ(out.to_host(), expected) << context;
          EXPECT_EQ(mask.to_host(), expected_mask) << context;
          EXPECT_EQ(load.to_host(), expected_load) << context;
        }
      }
    }
  }
}

TEST(CudaUpdateExpert, BadElementsWriteMinusOneAndAreCounted) {
  MOE_EPLB_SKIP_WITHOUT_GPU();
  // Row 1 has count 0, row 2 selects instance 99 >= num_physical_experts 8.
  test::OwnedTable host(test::matrix_from_rows({{1, 0, 0}, {0, 1, 2}, {1, 99, 0}, {2, 3, 4}}));
  DeviceBuffer<std::int32_t> table_data(host.storage.storage);
  TableView table = host.view;
  table.data = table_data.get();
  const std::vector<std::int32_t> ids = {0, -1, 4, 1, 2, 3, 2147483647, 3, 0};
  const std::vector<std::int32_t> expected = {0, -1, -1, -1, -1, 4, -1, 4, 0};
  DeviceBuffer<std::int32_t> ids_device(ids);
  for (BalanceMode mode : {BalanceMode::kByRank, BalanceMode::kByToken, BalanceMode::kByHash}) {
    const UpdateExpertParams params = test::rank_params(1, 2, static_cast<int>(mode), 8);
    DeviceBuffer<std::int32_t> out(ids.size(), 0x5A5A);
    DeviceBuffer<std::int32_t> errors(3, 100);  // red zones around the counter
    DeviceBuffer<std::int64_t> load(8, 0);
    const ExpertIdsView view{ids_device.get(), Dtype::kInt32, 3, 3, 3, 1};
    cuda::launch_update_expert(UpdateExpertInputs{view, table, nullptr}, params,
                               UpdateExpertOutputs{{out.get(), 9}, {}, {load.get(), 8}},
                               errors.get() + 1, nullptr);
    MOE_EPLB_ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<std::int32_t> got = out.to_host();
    if (mode != BalanceMode::kByRank) {
      // Row 3 has two replicas: tokens 1 and 2 use replicas 2 and 1 by token, and by hash
      // (2654435769 is odd, 2 * 2654435769 mod 2^32 even).
      EXPECT_EQ(got[5], 4);  // token 1 % 2 = 1 -> column 2
      EXPECT_EQ(got[7], 3);  // token 2 % 2 = 0 -> column 1
      got[7] = 4;
    }
    EXPECT_EQ(got, expected);
    EXPECT_EQ(errors.to_host(), (std::vector<std::int32_t>{100, 100 + 5, 100}));
    std::int64_t counted = 0;
    for (std::int64_t value : load.to_host()) counted += value;
    EXPECT_EQ(counted, 4);  // only the valid elements
  }
}

TEST(CudaUpdateExpert, HostChecksThrowBeforeLaunching) {
  MOE_EPLB_SKIP_WITHOUT_GPU();
  test::OwnedTable host(test::matrix_from_rows({{1, 0}}));
  const std::vector<std::int32_t> ids = {0};
  DeviceBuffer<std::int32_t> ids_device(ids);
  DeviceBuffer<std::int32_t> out(1, 0);
  UpdateExpertParams params;
  params.world_size = 2;
  params.balance_mode = static_cast<BalanceMode>(3);
  const ExpertIdsView view{ids_device.get(), Dtype::kInt32, 1, 1, 1, 1};
  try {
    cuda::launch_update_expert(UpdateExpertInputs{view, host.view, nullptr}, params,
                               UpdateExpertOutputs{{out.get(), 1}, {}, {}}, nullptr, nullptr);
    FAIL() << "expected moe_eplb::Error";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kInvalidArgument);
    EXPECT_STREQ(error.what(),
                 "update_expert(): balance_mode must be 0 (by rank), 1 (by token) or 2 (vLLM's "
                 "token hash), got 3");
  }
  // In place: the same front-end check as the CPU's, on device pointers.
  params.balance_mode = BalanceMode::kByRank;
  try {
    cuda::launch_update_expert(UpdateExpertInputs{view, host.view, nullptr}, params,
                               UpdateExpertOutputs{{ids_device.get(), 1}, {}, {}}, nullptr,
                               nullptr);
    FAIL() << "expected moe_eplb::Error";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(error.what()).find("balanced_expert_ids shares memory with expert_ids"),
              std::string::npos)
        << error.what();
  }
}

// Launches the prepared gather into `graph_exec` via stream capture.
void capture_prepared(const cuda::DevicePreparedTable& prepared, const ExpertIdsView& ids,
                      std::int32_t* out, cudaStream_t stream, cudaGraphExec_t* graph_exec) {
  const std::int64_t count = ids.num_tokens * ids.top_k;
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  cuda::launch_update_expert_prepared(prepared.view(), ids, nullptr,
                                      UpdateExpertOutputs{{out, count}, {}, {}}, nullptr, stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(graph_exec, graph, 0), cudaSuccess);
  cudaGraphDestroy(graph);
}

TEST(CudaUpdateExpert, CapturedGraphSeesTableSwappedByUpdate) {
  MOE_EPLB_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(99);
  test::TableSpec spec;
  spec.num_experts = 32;
  spec.world_size = 4;
  spec.slots_per_rank = 16;
  const Matrix first = test::random_table(spec, rng);
  const Matrix second = test::random_table(spec, rng);
  const Matrix ids_matrix = test::random_ids(512, 16, spec.num_experts, rng);
  std::vector<std::int32_t> ids(ids_matrix.values.begin(), ids_matrix.values.end());
  DeviceBuffer<std::int32_t> ids_device(ids);
  DeviceBuffer<std::int32_t> out(ids.size(), 0);
  const ExpertIdsView view{ids_device.get(), Dtype::kInt32, 512, 16, 16, 1};

  for (BalanceMode mode : {BalanceMode::kByRank, BalanceMode::kByToken, BalanceMode::kByHash}) {
    const UpdateExpertParams params = test::rank_params(3, 4, static_cast<int>(mode), 64);
    test::OwnedTable first_table{Matrix(first)};
    test::OwnedTable second_table{Matrix(second)};
    cudaStream_t stream = nullptr;
    MOE_EPLB_ASSERT_CUDA(cudaStreamCreate(&stream));
    cuda::DevicePreparedTable prepared(first_table.view, params, stream);
    cudaGraphExec_t graph = nullptr;
    capture_prepared(prepared, view, out.get(), stream, &graph);

    for (const Matrix* table : {&first, &second, &first}) {
      prepared.update(table == &first ? first_table.view : second_table.view, stream);
      MOE_EPLB_ASSERT_CUDA(cudaGraphLaunch(graph, stream));
      MOE_EPLB_ASSERT_CUDA(cudaStreamSynchronize(stream));
      const Matrix expected =
          test::reference_update_expert(ids_matrix, *table, 3, 4, static_cast<int>(mode));
      EXPECT_EQ(test::widen(out.to_host()), expected.values);
    }

    // Installing during capture is refused, and the old routes stay.
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    EXPECT_THROW(prepared.update(second_table.view, stream), Error);
    cudaGraph_t aborted = nullptr;
    cudaStreamEndCapture(stream, &aborted);
    if (aborted != nullptr) cudaGraphDestroy(aborted);
    (void)cudaGetLastError();
    // A table of another shape is refused too.
    test::OwnedTable wrong(test::matrix_from_rows({{1, 0}}));
    EXPECT_THROW(prepared.update(wrong.view, stream), Error);

    cudaGraphExecDestroy(graph);
    cudaStreamDestroy(stream);
  }
}

TEST(CudaUpdateExpert, LibraryErrorCountHasOneStableAddress) {
  MOE_EPLB_SKIP_WITHOUT_GPU();
  std::int32_t* counter = cuda::library_error_counter();
  ASSERT_NE(counter, nullptr);
  EXPECT_EQ(cuda::library_error_counter(), counter);
}

}  // namespace
}  // namespace moe_eplb

#endif  // MOE_EPLB_WITH_CUDA

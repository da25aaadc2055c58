// Fuzzes update_expert() and the prepared path with arbitrary shapes, scalars,
// profiles, strides and table contents. Buffers are sized exactly, so any
// out-of-bounds access shows under ASan. Properties checked:
//  - bad input throws moe_eplb::Error, nothing else escapes;
//  - on success every output equals SPEC.md's formula (bounds-checked here);
//  - when both succeed, the prepared path gives the same outputs.
#include <cstdlib>
#include <vector>

#include "fuzz_input.hpp"
#include "moe_eplb/error.hpp"
#include "moe_eplb/prepared.hpp"
#include "moe_eplb/update_expert.hpp"

using moe_eplb::fuzz::FuzzInput;

namespace {

std::int64_t expected_id(const std::vector<std::int32_t>& table, std::int64_t row_stride,
                         std::int64_t column_stride, std::int64_t columns, std::int64_t expert,
                         std::int64_t token, std::int64_t rank, std::int64_t world_size, int mode) {
  const auto at = [&](std::int64_t column) {
    const std::int64_t offset = expert * row_stride + column * column_stride;
    if (offset < 0 || offset >= static_cast<std::int64_t>(table.size()) || column >= columns)
      std::abort();
    return static_cast<std::int64_t>(table[static_cast<std::size_t>(offset)]);
  };
  const std::int64_t count = at(0);
  if (count < 1) std::abort();  // the op accepted a bad count
  std::int64_t column = 1;
  if (count > 1) {
    if (mode == 0) {
      column = 1 + rank / ((world_size + count - 1) / count);
    } else if (mode == 1) {
      column = 1 + token % count;
    } else {  // vLLM's ((token * 2654435769) & 0xFFFFFFFF) % count
      const std::uint64_t hashed =
          (static_cast<std::uint64_t>(token) * 2654435769ull) & 0xFFFFFFFFull;
      column = 1 + static_cast<std::int64_t>(hashed % static_cast<std::uint64_t>(count));
    }
  }
  return at(column);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzInput in(data, size);
  const std::int64_t num_tokens = in.range(0, 40);
  const std::int64_t top_k = in.range(0, 9);
  const std::int64_t num_experts = in.range(1, 24);
  const std::int64_t columns = in.range(1, 8);
  const std::int64_t world_size = in.value_near(1, 20);
  const std::int64_t rank = in.value_near(0, world_size - 1);
  const int mode = static_cast<int>(in.value_near(0, 2));
  const auto profile = static_cast<moe_eplb::LimitProfile>(in.range(0, 2));
  const std::int64_t num_physical = in.next<std::uint8_t>() % 4 == 0 ? -1 : in.value_near(1, 64);
  const std::uint8_t flags = in.next<std::uint8_t>();
  const bool ids64 = flags & 1, table_column_major = flags & 2, ids_column_major = flags & 4;
  const bool with_pruning = flags & 8, with_active = flags & 16, with_load = flags & 32;
  const auto scale_dtype = static_cast<moe_eplb::Dtype>(in.range(0, 2));
  const std::int64_t id_span = num_physical > 0 ? num_physical : 64;

  std::vector<std::int32_t> table(static_cast<std::size_t>(num_experts * columns));
  const std::int64_t row_stride = table_column_major ? 1 : columns;
  const std::int64_t column_stride = table_column_major ? num_experts : 1;
  for (std::int64_t e = 0; e < num_experts; ++e) {
    for (std::int64_t c = 0; c < columns; ++c) {
      table[static_cast<std::size_t>(e * row_stride + c * column_stride)] =
          static_cast<std::int32_t>(c == 0 ? in.value_near(1, columns - 1)
                                           : in.value_near(0, id_span - 1));
    }
  }
  const std::size_t elements = static_cast<std::size_t>(num_tokens * top_k);
  std::vector<std::int64_t> ids(elements);
  for (auto& id : ids) id = in.value_near(0, num_experts - 1);
  std::vector<std::int32_t> ids32(ids.begin(), ids.end());
  const std::int64_t token_stride = ids_column_major ? 1 : top_k;
  const std::int64_t k_stride = ids_column_major ? num_tokens : 1;
  if (ids_column_major) {  // re-lay out
    for (std::int64_t b = 0; b < num_tokens; ++b) {
      for (std::int64_t k = 0; k < top_k; ++k) {
        ids32[static_cast<std::size_t>(k * num_tokens + b)] =
            static_cast<std::int32_t>(ids[static_cast<std::size_t>(b * top_k + k)]);
      }
    }
  }
  std::vector<std::int64_t> ids_laid(ids32.begin(), ids32.end());
  const moe_eplb::ExpertIdsView view{
      ids64 ? static_cast<const void*>(ids_laid.data()) : static_cast<const void*>(ids32.data()),
      ids64 ? moe_eplb::Dtype::kInt64 : moe_eplb::Dtype::kInt32,
      num_tokens,
      top_k,
      token_stride,
      k_stride};
  const moe_eplb::TableView table_view{table.data(), num_experts, columns, row_stride,
                                       column_stride};

  std::vector<float> scales(elements);
  std::vector<std::uint16_t> scales16(elements);
  for (std::size_t i = 0; i < elements; ++i) {
    scales[i] = static_cast<float>(in.next<std::uint8_t>()) / 64.0f;
    scales16[i] = in.next<std::uint16_t>();
  }
  std::vector<float> threshold(static_cast<std::size_t>(top_k));
  for (auto& t : threshold) t = static_cast<float>(in.next<std::uint8_t>()) / 512.0f;
  std::vector<std::uint8_t> active(static_cast<std::size_t>(num_tokens));
  for (auto& a : active) a = in.next<std::uint8_t>() & 1;
  moe_eplb::PruningInputs pruning;
  pruning.expert_scales = {scale_dtype == moe_eplb::Dtype::kFloat32
                               ? static_cast<const void*>(scales.data())
                               : static_cast<const void*>(scales16.data()),
                           scale_dtype,
                           num_tokens,
                           top_k,
                           top_k,
                           1};
  pruning.pruning_threshold = {threshold.data(), top_k, 1};
  pruning.has_active_mask = with_active;
  pruning.active_mask = {active.data(), num_tokens, 1};

  moe_eplb::UpdateExpertParams params;
  params.local_rank_id = rank;
  params.world_size = world_size;
  params.balance_mode = static_cast<moe_eplb::BalanceMode>(mode);
  params.num_physical_experts = num_physical;
  params.profile = profile;

  std::vector<std::int64_t> out64(elements), out64_prepared(elements);
  std::vector<std::int32_t> out32(elements), out32_prepared(elements);
  std::vector<std::uint8_t> mask(elements), mask_prepared(elements);
  // Load counters only for slot counts the harness can afford to allocate.
  std::vector<std::int64_t> load(
      num_physical > 0 && num_physical <= 4096 ? static_cast<std::size_t>(num_physical) : 0);
  std::vector<std::int64_t> load_prepared(load.size());
  auto outputs_for = [&](std::vector<std::int64_t>& o64, std::vector<std::int32_t>& o32,
                         std::vector<std::uint8_t>& m, std::vector<std::int64_t>& l) {
    moe_eplb::UpdateExpertOutputs outputs;
    const auto num_elements = static_cast<std::int64_t>(elements);
    outputs.balanced_expert_ids = {
        ids64 ? static_cast<void*>(o64.data()) : static_cast<void*>(o32.data()), num_elements};
    if (with_pruning) outputs.balanced_active_mask = {m.data(), num_elements};
    if (with_load && !l.empty()) {
      outputs.load_counts = {l.data(), static_cast<std::int64_t>(l.size())};
    }
    return outputs;
  };

  bool stateless_ok = false;
  try {
    moe_eplb::update_expert(
        moe_eplb::UpdateExpertInputs{view, table_view, with_pruning ? &pruning : nullptr}, params,
        outputs_for(out64, out32, mask, load));
    stateless_ok = true;
  } catch (const moe_eplb::Error&) {
  }
  if (stateless_ok) {
    for (std::int64_t b = 0; b < num_tokens; ++b) {
      for (std::int64_t k = 0; k < top_k; ++k) {
        const std::size_t i = static_cast<std::size_t>(b * top_k + k);
        const std::int64_t want = expected_id(table, row_stride, column_stride, columns, ids[i], b,
                                              rank, world_size, mode);
        const std::int64_t got = ids64 ? out64[i] : out32[i];
        if (got != want) std::abort();
      }
    }
  }
  try {
    const moe_eplb::PreparedTable prepared(table_view, params);
    moe_eplb::update_expert_prepared(
        prepared.view(), view, with_pruning ? &pruning : nullptr,
        outputs_for(out64_prepared, out32_prepared, mask_prepared, load_prepared));
    if (stateless_ok && (out64 != out64_prepared || out32 != out32_prepared ||
                         mask != mask_prepared || load != load_prepared)) {
      std::abort();
    }
  } catch (const moe_eplb::Error&) {
  }
  return 0;
}

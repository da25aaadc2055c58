// Test plumbing: lay out a reference Matrix in memory with various strides
// (junk between elements, so a wrong stride reads junk), wrap it in the
// library's views, run the operator on it, and catch its errors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe_eplb/error.hpp"
#include "moe_eplb/types.hpp"
#include "moe_eplb/update_expert.hpp"
#include "reference.hpp"

namespace moe_eplb::test {

enum class Layout { kRowMajor, kColumnMajor, kSliced, kPaddedRows };

inline const char* to_string(Layout layout) {
  switch (layout) {
    case Layout::kRowMajor:
      return "row-major";
    case Layout::kColumnMajor:
      return "column-major";
    case Layout::kSliced:
      return "sliced";
    case Layout::kPaddedRows:
      return "padded-rows";
  }
  return "?";
}

inline const Layout kAllLayouts[] = {Layout::kRowMajor, Layout::kColumnMajor, Layout::kSliced,
                                     Layout::kPaddedRows};

template <typename T>
struct Strided {
  std::vector<T> storage;
  std::int64_t offset = 0;
  std::int64_t row_stride = 0;
  std::int64_t col_stride = 0;
  const T* data() const { return storage.data() + offset; }
};

template <typename T>
Strided<T> lay_out(const Matrix& m, Layout layout, T junk) {
  Strided<T> s;
  std::int64_t size = 0;
  switch (layout) {
    case Layout::kRowMajor:
      s.row_stride = m.cols;
      s.col_stride = 1;
      size = m.rows * m.cols;
      break;
    case Layout::kColumnMajor:
      s.row_stride = 1;
      s.col_stride = m.rows;
      size = m.rows * m.cols;
      break;
    case Layout::kSliced:  // every 2nd row and 3rd column of a larger array, offset (1, 1)
      s.col_stride = 3;
      s.row_stride = 2 * (3 * m.cols + 2);
      s.offset = s.row_stride / 2 + 1;
      size = (2 * m.rows + 1) * (3 * m.cols + 2);
      break;
    case Layout::kPaddedRows:
      s.row_stride = m.cols + 3;
      s.col_stride = 1;
      size = m.rows * (m.cols + 3);
      break;
  }
  s.storage.assign(static_cast<std::size_t>(size), junk);
  for (std::int64_t r = 0; r < m.rows; ++r) {
    for (std::int64_t c = 0; c < m.cols; ++c) {
      s.storage[static_cast<std::size_t>(s.offset + r * s.row_stride + c * s.col_stride)] =
          static_cast<T>(m.at(r, c));
    }
  }
  return s;
}

template <typename T>
ExpertIdsView ids_view(const Strided<T>& s, const Matrix& m) {
  ExpertIdsView view;
  view.data = s.data();
  view.dtype = sizeof(T) == 4 ? Dtype::kInt32 : Dtype::kInt64;
  view.num_tokens = m.rows;
  view.top_k = m.cols;
  view.token_stride = s.row_stride;
  view.k_stride = s.col_stride;
  return view;
}

inline TableView table_view(const Strided<std::int32_t>& s, const Matrix& m) {
  return TableView{s.data(), m.rows, m.cols, s.row_stride, s.col_stride};
}

// Contiguous table for simple cases.
struct OwnedTable {
  Matrix matrix;
  Strided<std::int32_t> storage;
  TableView view;
  explicit OwnedTable(Matrix m, Layout layout = Layout::kRowMajor)
      : matrix(std::move(m)), storage(lay_out<std::int32_t>(matrix, layout, -777)) {
    view = table_view(storage, matrix);
  }
  OwnedTable(const OwnedTable&) = delete;
};

inline Matrix matrix_from_rows(const std::vector<std::vector<std::int64_t>>& rows) {
  Matrix m = make_matrix(static_cast<std::int64_t>(rows.size()),
                         rows.empty() ? 0 : static_cast<std::int64_t>(rows[0].size()));
  for (std::size_t r = 0; r < rows.size(); ++r) {
    for (std::size_t c = 0; c < rows[r].size(); ++c) {
      m.at(static_cast<std::int64_t>(r), static_cast<std::int64_t>(c)) = rows[r][c];
    }
  }
  return m;
}

template <typename T>
std::vector<std::int64_t> widen(const std::vector<T>& values) {
  return std::vector<std::int64_t>(values.begin(), values.end());
}

inline constexpr std::int64_t kPoison32 = 0x7eadbeef;

inline UpdateExpertParams rank_params(std::int64_t rank, std::int64_t world_size, int mode = 0,
                                      std::int64_t num_physical_experts = -1) {
  UpdateExpertParams params;
  params.local_rank_id = rank;
  params.world_size = world_size;
  params.balance_mode = static_cast<BalanceMode>(mode);
  params.num_physical_experts = num_physical_experts;
  return params;
}

// Runs the op with ids laid out as `layout` in dtype T; the output buffer is
// poisoned first, so an element the op does not write keeps the poison.
template <typename T>
Matrix run(const Matrix& ids, const TableView& table, const UpdateExpertParams& params,
           Layout layout = Layout::kRowMajor) {
  const Strided<T> storage = lay_out<T>(ids, layout, static_cast<T>(-999));
  std::vector<T> out(static_cast<std::size_t>(ids.rows * ids.cols), static_cast<T>(kPoison32));
  update_expert(ids_view(storage, ids), table, params, out.data());
  Matrix result = make_matrix(ids.rows, ids.cols);
  result.values = widen(out);
  return result;
}

// Message of the moe_eplb::Error a callable throws ("" if none).
template <typename F>
std::string error_of(F&& f, ErrorCode* code = nullptr) {
  try {
    f();
  } catch (const Error& error) {
    if (code != nullptr) *code = error.code();
    return error.what();
  }
  return "";
}

}  // namespace moe_eplb::test

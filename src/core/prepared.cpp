#include "moe_eplb/prepared.hpp"

#include <algorithm>

#include "checks.hpp"
#include "moe_eplb/error.hpp"

namespace moe_eplb {
namespace {

// World size used for whole-table checks: rank mode needs the real one; token
// mode ignores it, so an unset (< 1) value means "unknown" (-1).
std::int64_t validation_world_size(const UpdateExpertParams& params) {
  return params.world_size >= 1 ? params.world_size : -1;
}

}  // namespace

std::int64_t prepared_row_width(const TableView& eplb_table, BalanceMode balance_mode) {
  if (balance_mode == BalanceMode::kByRank) return 1;
  std::int64_t max_count = 1;
  for (std::int64_t row = 0; row < eplb_table.num_experts; ++row) {
    max_count = std::max<std::int64_t>(max_count, eplb_table.at(row, 0));
  }
  return 1 + std::min<std::int64_t>(max_count, eplb_table.num_columns - 1);
}

void build_routes(const TableView& eplb_table, const UpdateExpertParams& params,
                  std::int32_t* routes) {
  build_routes(eplb_table, params, routes, prepared_row_width(eplb_table, params.balance_mode));
}

void build_routes(const TableView& eplb_table, const UpdateExpertParams& params,
                  std::int32_t* routes, std::int64_t row_width) {
  const std::int64_t min_width = prepared_row_width(eplb_table, params.balance_mode);
  const bool by_rank = params.balance_mode == BalanceMode::kByRank;
  MOE_EPLB_CHECK(
      by_rank ? row_width == 1 : row_width >= min_width, "build_routes(): row_width ", row_width,
      " does not fit this table, expected ",
      by_rank ? "1 in rank mode" : detail::concat("at least ", min_width, " in token mode"));
  const detail::TableRouter router = detail::table_router(eplb_table, params);
  if (params.balance_mode == BalanceMode::kByRank) {
    for (std::int64_t expert = 0; expert < eplb_table.num_experts; ++expert) {
      routes[expert] = static_cast<std::int32_t>(router.route(expert, 0));
    }
    return;
  }
  for (std::int64_t expert = 0; expert < eplb_table.num_experts; ++expert) {
    std::int32_t* row = routes + expert * row_width;
    std::fill(row, row + row_width, -1);
    const std::int32_t count = eplb_table.at(expert, 0);
    row[0] = count;
    for (std::int64_t column = 1; column <= count && column < row_width; ++column) {
      row[column] = eplb_table.at(expert, column);
    }
  }
}

PreparedTable::PreparedTable(const TableView& eplb_table, const UpdateExpertParams& params)
    : params_(params) {
  constexpr const char* kOperation = "prepare_table()";
  const Limits& limits = limits_of(params.profile);
  detail::check_scalars(kOperation, params, &eplb_table, limits);

  ValidateTableOptions options;
  options.profile = params.profile;
  options.check_rank_mode_reachability = params.balance_mode == BalanceMode::kByRank;
  report_ = validate_table(eplb_table, validation_world_size(params), params.num_physical_experts,
                           options);
  throw_if_invalid(report_, kOperation);

  params_.num_physical_experts = report_.num_physical_experts;
  num_experts_ = eplb_table.num_experts;
  row_width_ = prepared_row_width(eplb_table, params.balance_mode);
  routes_.resize(static_cast<std::size_t>(num_experts_ * row_width_));
  build_routes(eplb_table, params_, routes_.data());
}

PreparedView make_prepared_view(const std::int32_t* routes, std::int64_t num_experts,
                                std::int64_t row_width, const UpdateExpertParams& params) {
  PreparedView view;
  view.routes = routes;
  view.num_experts = num_experts;
  view.row_width = row_width;
  view.balance_mode = params.balance_mode;
  view.num_physical_experts = params.num_physical_experts;
  view.profile = params.profile;
  return view;
}

PreparedView PreparedTable::view() const {
  return make_prepared_view(routes_.data(), num_experts_, row_width_, params_);
}

}  // namespace moe_eplb

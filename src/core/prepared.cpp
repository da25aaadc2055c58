#include "moe_eplb/prepared.hpp"

#include <algorithm>

#include "checks.hpp"
#include "moe_eplb/error.hpp"

namespace moe_eplb {

std::int64_t prepared_row_width(std::int64_t num_columns, BalanceMode balance_mode) {
  return detail::uses_token_index(balance_mode) ? num_columns : 1;
}

void build_routes(const TableView& eplb_table, const UpdateExpertParams& params,
                  std::int32_t* routes) {
  if (!detail::uses_token_index(params.balance_mode)) {
    const detail::TableRouter router = detail::table_router(eplb_table, params);
    for (std::int64_t expert = 0; expert < eplb_table.num_experts; ++expert) {
      routes[expert] = static_cast<std::int32_t>(detail::route_one(router, expert, 0));
    }
    return;
  }
  const std::int64_t row_width = eplb_table.num_columns;
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

PreparedTable::PreparedTable(const TableView& eplb_table, const UpdateExpertParams& params,
                             const char* operation)
    : params_(params), num_experts_(eplb_table.num_experts), num_columns_(eplb_table.num_columns) {
  detail::check_scalars(operation, params, &eplb_table, limits_of(params.profile));
  report_ = validate(eplb_table, operation);
  params_.num_physical_experts = report_.num_physical_experts;
  row_width_ = prepared_row_width(num_columns_, params.balance_mode);
  routes_.resize(static_cast<std::size_t>(num_experts_ * row_width_));
  build_routes(eplb_table, params_, routes_.data());
}

void PreparedTable::update(const TableView& eplb_table, const char* operation) {
  MOE_EPLB_CHECK(eplb_table.num_experts == num_experts_ && eplb_table.num_columns == num_columns_,
                 operation, ": eplb_table has shape (", eplb_table.num_experts, ", ",
                 eplb_table.num_columns, "), expected (", num_experts_, ", ", num_columns_,
                 "), the shape this table was prepared with");
  TableReport report = validate(eplb_table, operation);  // throws before anything changes
  build_routes(eplb_table, params_, routes_.data());
  report_ = std::move(report);
}

TableReport PreparedTable::validate(const TableView& eplb_table, const char* operation) const {
  ValidateTableOptions options;
  options.profile = params_.profile;
  options.check_rank_mode_reachability = !detail::uses_token_index(params_.balance_mode);
  // Token mode ignores world_size, so an unset (< 1) value means "unknown".
  const std::int64_t world_size = params_.world_size >= 1 ? params_.world_size : -1;
  TableReport report =
      validate_table(eplb_table, world_size, params_.num_physical_experts, options);
  throw_if_invalid(report, operation);
  return report;
}

PreparedView PreparedTable::view() const {
  PreparedView view;
  view.routes = routes_.data();
  view.num_experts = num_experts_;
  view.row_width = row_width_;
  view.balance_mode = params_.balance_mode;
  view.num_physical_experts = params_.num_physical_experts;
  view.profile = params_.profile;
  return view;
}

}  // namespace moe_eplb

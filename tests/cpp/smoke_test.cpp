#include <gtest/gtest.h>

#include "moe_eplb/update_expert.hpp"
TEST(Smoke, WorkedExample) {
  // world_size=8, rank 5, row [3, 40, 7, 19]
  std::int32_t table[] = {3, 40, 7, 19};
  std::int32_t ids[] = {0, 0, 0, 0, 0, 0};
  moe_eplb::TableView t{table, 1, 4, 4, 1};
  moe_eplb::ExpertIdsView v{ids, moe_eplb::IdDtype::kInt32, 6, 1, 1, 1};
  moe_eplb::UpdateExpertParams p;
  p.local_rank_id = 5;
  p.world_size = 8;
  std::int32_t out[6];
  moe_eplb::update_expert(v, t, p, out);
  EXPECT_EQ(out[0], 7);
  p.balance_mode = moe_eplb::BalanceMode::kByToken;
  moe_eplb::update_expert(v, t, p, out);
  EXPECT_EQ(out[4], 7);
  EXPECT_EQ(out[5], 19);
}

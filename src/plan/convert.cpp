#include "moe_eplb/plan/convert.hpp"

#include <algorithm>
#include <unordered_map>

#include "moe_eplb/error.hpp"
#include "moe_eplb/table.hpp"

namespace moe_eplb {
namespace {

// Every slot names one replica: distinct within a row and across rows (the
// operator would route two experts to one slot).
void check_distinct_slots(const ReplicaSlots& slots, const char* operation) {
  std::unordered_map<std::int32_t, std::pair<std::size_t, std::size_t>> owner;  // expert, replica
  for (std::size_t e = 0; e < slots.size(); ++e) {
    for (std::size_t j = 0; j < slots[e].size(); ++j) {
      const auto [seen, inserted] = owner.emplace(slots[e][j], std::make_pair(e, j));
      MOE_EPLB_CHECK(inserted, operation, ": slot ", slots[e][j], " is named twice, by [",
                     seen->second.first, ", ", seen->second.second, "] and [", e, ", ", j,
                     "]; a slot holds one replica");
    }
  }
}

}  // namespace

std::int64_t first_unordered_expert(const ReplicaSlots& slots) {
  for (std::size_t e = 0; e < slots.size(); ++e) {
    if (!std::is_sorted(slots[e].begin(), slots[e].end())) return static_cast<std::int64_t>(e);
  }
  return -1;
}

std::string describe_replica_order(const ReplicaSlots& slots, std::int64_t expert) {
  const std::vector<std::int32_t>& replicas = slots[static_cast<std::size_t>(expert)];
  const auto unsorted = std::is_sorted_until(replicas.begin(), replicas.end());
  const std::int64_t replica = unsorted - replicas.begin();  // 1-based index of *(unsorted - 1)
  return detail::concat("expert ", expert, " has replica ", replica, " in slot ", *(unsorted - 1),
                        " and replica ", replica + 1, " in slot ", *unsorted);
}

ReplicaSlots slots_from_table(const TableView& table, std::int64_t num_physical_experts) {
  ValidateTableOptions options;
  options.check_rank_mode_reachability = false;
  options.warn_unused_slots = false;
  options.max_issues = 5;
  throw_if_invalid(validate_table(table, -1, num_physical_experts, options), "slots_from_table()");
  ReplicaSlots slots(static_cast<std::size_t>(table.num_experts));
  for (std::int64_t e = 0; e < table.num_experts; ++e) {
    const std::int64_t count = table.at(e, 0);
    for (std::int64_t column = 1; column <= count; ++column)
      slots[e].push_back(table.at(e, column));
  }
  return slots;
}

std::vector<std::int64_t> slots_to_phy2log(const ReplicaSlots& slots,
                                           std::int64_t num_physical_experts, bool sort_replicas) {
  MOE_EPLB_CHECK(num_physical_experts >= 1,
                 "slots_to_phy2log(): num_physical_experts must be positive, got ",
                 num_physical_experts);
  const std::int64_t unordered = sort_replicas ? -1 : first_unordered_expert(slots);
  MOE_EPLB_CHECK(unordered < 0, "slots_to_phy2log(): ", describe_replica_order(slots, unordered),
                 "; phy2log keeps no replica order (read back, an expert's replicas come in "
                 "ascending slot order), and the order is the routing: sort_replicas = true "
                 "accepts the reorder, log2phy keeps the order");
  std::vector<std::int64_t> phy2log(static_cast<std::size_t>(num_physical_experts), -1);
  for (std::size_t e = 0; e < slots.size(); ++e) {
    for (std::int32_t slot : slots[e]) {
      MOE_EPLB_CHECK(slot >= 0 && slot < num_physical_experts, "slots_to_phy2log(): expert ", e,
                     " uses slot ", slot, ", outside 0..", num_physical_experts - 1);
      MOE_EPLB_CHECK(phy2log[slot] == -1, "slots_to_phy2log(): slot ", slot,
                     " is claimed by experts ", phy2log[slot], " and ", e);
      phy2log[slot] = static_cast<std::int64_t>(e);
    }
  }
  return phy2log;
}

Log2Phy slots_to_log2phy(const ReplicaSlots& slots, std::int64_t max_replicas) {
  Log2Phy maps;
  maps.num_experts = static_cast<std::int64_t>(slots.size());
  std::int64_t largest = 1;
  for (const auto& replicas : slots) {
    largest = std::max<std::int64_t>(largest, static_cast<std::int64_t>(replicas.size()));
  }
  maps.max_replicas = max_replicas == 0 ? largest : max_replicas;
  MOE_EPLB_CHECK(largest <= maps.max_replicas, "slots_to_log2phy(): max_replicas ",
                 maps.max_replicas, " is below the largest replica count ", largest);
  maps.log2phy.assign(static_cast<std::size_t>(maps.num_experts * maps.max_replicas), -1);
  maps.logcnt.resize(slots.size());
  for (std::size_t e = 0; e < slots.size(); ++e) {
    maps.logcnt[e] = static_cast<std::int64_t>(slots[e].size());
    std::copy(slots[e].begin(), slots[e].end(),
              maps.log2phy.begin() + static_cast<std::int64_t>(e) * maps.max_replicas);
  }
  return maps;
}

ReplicaSlots slots_from_phy2log(const std::int64_t* phy2log, std::int64_t num_physical_experts,
                                std::int64_t num_experts) {
  MOE_EPLB_CHECK(num_physical_experts >= 1 && num_physical_experts <= INT32_MAX,
                 "slots_from_phy2log(): phy2log must have 1..", INT32_MAX, " slots, got ",
                 num_physical_experts);
  MOE_EPLB_CHECK(num_experts >= 1, "slots_from_phy2log(): num_experts must be positive, got ",
                 num_experts);
  ReplicaSlots slots(static_cast<std::size_t>(num_experts));
  for (std::int64_t slot = 0; slot < num_physical_experts; ++slot) {
    const std::int64_t expert = phy2log[slot];
    MOE_EPLB_CHECK(expert >= -1 && expert < num_experts, "slots_from_phy2log(): phy2log[", slot,
                   "] = ", expert, " is outside -1..", num_experts - 1);
    if (expert >= 0) slots[expert].push_back(static_cast<std::int32_t>(slot));
  }
  for (std::int64_t e = 0; e < num_experts; ++e) {
    MOE_EPLB_CHECK(!slots[e].empty(), "slots_from_phy2log(): expert ", e,
                   " has no physical slot in phy2log");
  }
  return slots;
}

ReplicaSlots slots_from_log2phy(const std::int64_t* log2phy, std::int64_t num_experts,
                                std::int64_t max_replicas, const std::int64_t* logcnt) {
  const char* operation = logcnt != nullptr ? "slots_from_log2phy()" : "slots_from_sglang()";
  MOE_EPLB_CHECK(num_experts >= 1 && max_replicas >= 1, operation,
                 ": map shape must be (E >= 1, R >= 1), got (", num_experts, ", ", max_replicas,
                 ")");
  ReplicaSlots slots(static_cast<std::size_t>(num_experts));
  for (std::int64_t e = 0; e < num_experts; ++e) {
    const std::int64_t* row = log2phy + e * max_replicas;
    std::int64_t count = 0;
    if (logcnt != nullptr) {
      count = logcnt[e];
    } else {
      while (count < max_replicas && row[count] >= 0) ++count;
    }
    MOE_EPLB_CHECK(count >= 1 && count <= max_replicas, operation, ": expert ", e, " has ", count,
                   " replicas, expected 1..", max_replicas);
    for (std::int64_t j = 0; j < max_replicas; ++j) {
      if (j < count) {
        MOE_EPLB_CHECK(row[j] >= 0 && row[j] <= INT32_MAX, operation, ": [", e, ", ", j,
                       "] = ", row[j], " is not a physical slot id (0..", INT32_MAX, ")");
        slots[e].push_back(static_cast<std::int32_t>(row[j]));
      } else {
        MOE_EPLB_CHECK(row[j] == -1, operation, ": [", e, ", ", j, "] = ", row[j],
                       " after the expert's ", count, " replicas, expected the -1 padding");
      }
    }
  }
  check_distinct_slots(slots, operation);
  return slots;
}

}  // namespace moe_eplb

// SPDX-License-Identifier: MIT
//
// sluicectl's order pipeline commands: `order place|show|list`, `stock set|show` and `analytics`. They
// are requests on the BROKER socket (the plugins answer them, as a storefront would ask), not admin
// calls. Each function prints a human table, or JSON with `json`, and returns sluicectl's exit code
// (0 ok, 1 the request failed or was refused, 2 bad arguments, 3 the daemon is unreachable).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sluice::ctl {

struct BrokerTarget {
  std::string socket;
  int timeout_ms = 10000;
  bool json = false;
};

// items: "SKU:QTY" or "SKU:QTY:PRICE_CENTS".
int PlaceOrder(const BrokerTarget& t, const std::string& email, const std::vector<std::string>& items,
               const std::string& idempotency_key);
int ShowOrder(const BrokerTarget& t, const std::string& order_id);
// status: "" (all), "pending", "confirmed" or "cancelled".
int ListOrders(const BrokerTarget& t, const std::string& status, uint32_t limit);
int SetStock(const BrokerTarget& t, const std::string& sku, int64_t quantity);
int ShowStock(const BrokerTarget& t, const std::string& sku);
int Analytics(const BrokerTarget& t, uint32_t minutes);

}  // namespace sluice::ctl

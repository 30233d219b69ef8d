// SPDX-License-Identifier: MIT
#include "daemon/ctl_pipeline.h"

#include <cstdio>
#include <cstdlib>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "broker/client/client.h"
#include "daemon/ctl_output.h"
#include "orders_generated.h"
#include "pipeline.h"

namespace sluice::ctl {
namespace {

using nlohmann::json;
namespace orders = sluice::orders;

constexpr std::string_view kAnalyticsCommands = "analytics.commands";
constexpr std::string_view kAnalyticsQuery = "orders.AnalyticsQuery";

// A request to a plugin and its verified reply payload of root type T.
template <typename T>
struct Answer {
  int exit_code = kExitOk;
  std::string payload;  // aligned storage for the verified buffer
  const T* reply = nullptr;
};

template <typename T>
Answer<T> Ask(const BrokerTarget& t, std::string_view topic, std::string_view type, std::string_view key,
              const flatbuffers::FlatBufferBuilder& fbb, const char* identifier) {
  Answer<T> a;
  client::ConnectOptions opts;
  opts.name = "sluicectl";
  opts.timeout = std::chrono::milliseconds(t.timeout_ms);
  auto conn = client::Connection::Connect(t.socket, opts);
  if (!conn.ok()) {
    std::fprintf(stderr, "sluicectl: %s\n", conn.status().message().c_str());
    a.exit_code = kExitUnreachable;
    return a;
  }
  client::OutMessage m;
  m.topic = std::string(topic);
  m.type = std::string(type);
  m.key = std::string(key);
  m.correlation_id = std::string(key);
  m.payload.assign(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize());
  auto r = (*conn)->Request(m, std::chrono::milliseconds(t.timeout_ms));
  if (!r.ok()) {
    std::fprintf(stderr, "sluicectl: %s on %s: %s\n", std::string(type).c_str(), std::string(topic).c_str(),
                 r.status().message().c_str());
    if (r.status().code() == StatusCode::kTimeout) {
      std::fprintf(stderr, "sluicectl: is the plugin that serves %s running? (sluicectl plugins)\n",
                   std::string(topic).c_str());
    }
    a.exit_code = (*conn)->closed() ? kExitUnreachable : kExitFailed;
    return a;
  }
  if (!r->error.empty()) {
    std::fprintf(stderr, "sluicectl: %s\n", r->error.c_str());
    a.exit_code = kExitFailed;
    return a;
  }
  a.payload = r->payload;
  flatbuffers::Verifier v(reinterpret_cast<const uint8_t*>(a.payload.data()), a.payload.size());
  if (!v.VerifyBuffer<T>(identifier)) {
    std::fprintf(stderr, "sluicectl: the reply to %s is not a valid %s\n", std::string(type).c_str(), identifier);
    a.exit_code = kExitFailed;
    return a;
  }
  a.reply = flatbuffers::GetRoot<T>(a.payload.data());
  return a;
}

// A FieldError in a reply: printed, and the command fails.
bool Refused(const orders::FieldError* e) {
  if (e == nullptr) return false;
  std::fprintf(stderr, "sluicectl: refused: %s: %s\n", pipeline::Str(e->field()).c_str(),
               pipeline::Str(e->message()).c_str());
  return true;
}

std::string StatusName(orders::OrderStatus s) {
  switch (s) {
    case orders::OrderStatus::PENDING: return "PENDING";
    case orders::OrderStatus::CONFIRMED: return "CONFIRMED";
    case orders::OrderStatus::CANCELLED: return "CANCELLED";
    default: return "UNKNOWN";
  }
}

json ItemsJson(const flatbuffers::Vector<flatbuffers::Offset<orders::LineItem>>* items) {
  json out = json::array();
  if (items == nullptr) return out;
  for (const auto* i : *items) {
    out.push_back({{"sku", pipeline::Str(i->sku())},
                   {"quantity", i->quantity()},
                   {"unit_price_cents", i->unit_price_cents().value_or(0)}});
  }
  return out;
}

json OrderJson(const orders::OrderView& o) {
  return {{"order_id", pipeline::Str(o.order_id())},
          {"status", StatusName(o.status())},
          {"email", pipeline::Str(o.email())},
          {"items", ItemsJson(o.items())},
          {"total_cents", o.total_cents()},
          {"created_us", o.created_us()},
          {"updated_us", o.updated_us()},
          {"reason", pipeline::Str(o.reason())}};
}

std::string ItemsText(const json& items) {
  std::string out;
  for (const auto& i : items) {
    if (!out.empty()) out += ", ";
    out += fmt::format("{} x{}", i["sku"].get<std::string>(), i["quantity"].get<int64_t>());
  }
  return out;
}

}  // namespace

int PlaceOrder(const BrokerTarget& t, const std::string& email, const std::vector<std::string>& items,
               const std::string& idempotency_key) {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<orders::LineItem>> lines;
  for (const std::string& item : items) {
    // SKU:QTY[:PRICE_CENTS]
    size_t a = item.find(':');
    size_t b = a == std::string::npos ? std::string::npos : item.find(':', a + 1);
    if (a == std::string::npos || a == 0) {
      std::fprintf(stderr, "sluicectl: --item %s: expected SKU:QTY or SKU:QTY:PRICE_CENTS\n", item.c_str());
      return kExitUsage;
    }
    char* end = nullptr;
    std::string qty_text = item.substr(a + 1, b == std::string::npos ? std::string::npos : b - a - 1);
    long long qty = std::strtoll(qty_text.c_str(), &end, 10);
    if (qty_text.empty() || *end != '\0') {
      std::fprintf(stderr, "sluicectl: --item %s: quantity \"%s\" is not a number\n", item.c_str(), qty_text.c_str());
      return kExitUsage;
    }
    auto sku = fbb.CreateString(item.substr(0, a));
    orders::LineItemBuilder lb(fbb);
    lb.add_sku(sku);
    lb.add_quantity(qty);
    if (b != std::string::npos) {
      std::string price_text = item.substr(b + 1);
      long long price = std::strtoll(price_text.c_str(), &end, 10);
      if (price_text.empty() || *end != '\0') {
        std::fprintf(stderr, "sluicectl: --item %s: price \"%s\" is not a number of cents\n", item.c_str(),
                     price_text.c_str());
        return kExitUsage;
      }
      lb.add_unit_price_cents(price);
    }
    lines.push_back(lb.Finish());
  }
  auto req = orders::CreatePlaceOrderDirect(fbb, email.c_str(), &lines,
                                            idempotency_key.empty() ? nullptr : idempotency_key.c_str());
  fbb.Finish(req, orders::PlaceOrderIdentifier());
  auto a = Ask<orders::PlaceOrderReply>(t, pipeline::kOrderCommands, pipeline::kPlaceOrder, "", fbb,
                                        orders::PlaceOrderReplyIdentifier());
  if (a.exit_code != kExitOk) return a.exit_code;
  if (Refused(a.reply->error())) return kExitFailed;
  json j = {{"order_id", pipeline::Str(a.reply->order_id())},
            {"status", StatusName(a.reply->status())},
            {"total_cents", a.reply->total_cents()}};
  if (t.json) {
    std::puts(j.dump(2).c_str());
  } else {
    std::printf("%s %s total %s\n", j["order_id"].get<std::string>().c_str(), j["status"].get<std::string>().c_str(),
                pipeline::FormatCents(a.reply->total_cents()).c_str());
  }
  return kExitOk;
}

int ShowOrder(const BrokerTarget& t, const std::string& order_id) {
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(orders::CreateGetOrderDirect(fbb, order_id.c_str()), orders::GetOrderIdentifier());
  auto a = Ask<orders::OrderView>(t, pipeline::kOrderCommands, pipeline::kGetOrder, order_id, fbb,
                                  orders::OrderViewIdentifier());
  if (a.exit_code != kExitOk) return a.exit_code;
  if (Refused(a.reply->error())) return kExitFailed;
  json j = OrderJson(*a.reply);
  if (t.json) {
    std::puts(j.dump(2).c_str());
    return kExitOk;
  }
  std::printf("order %s: %s\n", j["order_id"].get<std::string>().c_str(), j["status"].get<std::string>().c_str());
  std::printf("  customer: %s\n", j["email"].get<std::string>().c_str());
  std::printf("  items:    %s\n", ItemsText(j["items"]).c_str());
  std::printf("  total:    %s\n", pipeline::FormatCents(a.reply->total_cents()).c_str());
  if (!j["reason"].get<std::string>().empty()) std::printf("  reason:   %s\n", j["reason"].get<std::string>().c_str());
  return kExitOk;
}

int ListOrders(const BrokerTarget& t, const std::string& status, uint32_t limit) {
  orders::OrderStatus s = orders::OrderStatus::UNKNOWN;
  if (status == "pending") s = orders::OrderStatus::PENDING;
  else if (status == "confirmed") s = orders::OrderStatus::CONFIRMED;
  else if (status == "cancelled") s = orders::OrderStatus::CANCELLED;
  else if (!status.empty()) {
    std::fprintf(stderr, "sluicectl: --status %s: expected pending, confirmed or cancelled\n", status.c_str());
    return kExitUsage;
  }
  json all = json::array();
  std::string after;
  // Pages of at most 200 until the plugin says there are no more, or `limit` orders are in.
  for (int page = 0; page < 10000; ++page) {
    flatbuffers::FlatBufferBuilder fbb;
    uint32_t want = limit == 0 ? 200 : std::min<uint32_t>(200, limit - static_cast<uint32_t>(all.size()));
    fbb.Finish(orders::CreateListOrdersDirect(fbb, s, want, after.empty() ? nullptr : after.c_str()),
               orders::ListOrdersIdentifier());
    auto a = Ask<orders::OrderList>(t, pipeline::kOrderCommands, pipeline::kListOrders, "", fbb,
                                    orders::OrderListIdentifier());
    if (a.exit_code != kExitOk) return a.exit_code;
    if (Refused(a.reply->error())) return kExitFailed;
    if (a.reply->orders()) {
      for (const auto* o : *a.reply->orders()) all.push_back(OrderJson(*o));
    }
    after = pipeline::Str(a.reply->next_after());
    if (after.empty() || (limit > 0 && all.size() >= limit)) break;
  }
  if (t.json) {
    std::puts(json{{"orders", all}}.dump(2).c_str());
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& o : all) {
    rows.push_back({o["order_id"], o["status"], o["email"], pipeline::FormatCents(o["total_cents"].get<int64_t>()),
                    ItemsText(o["items"]), o["reason"]});
  }
  PrintTable({"ORDER", "STATUS", "CUSTOMER", "TOTAL", "ITEMS", "REASON"}, rows);
  return kExitOk;
}

int SetStock(const BrokerTarget& t, const std::string& sku, int64_t quantity) {
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(orders::CreateSetStockDirect(fbb, sku.c_str(), quantity), orders::SetStockIdentifier());
  auto a = Ask<orders::StockList>(t, pipeline::kInventoryCommands, pipeline::kSetStock, sku, fbb,
                                  orders::StockListIdentifier());
  if (a.exit_code != kExitOk) return a.exit_code;
  if (Refused(a.reply->error())) return kExitFailed;
  return ShowStock(t, sku);
}

int ShowStock(const BrokerTarget& t, const std::string& sku) {
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(orders::CreateShowStockDirect(fbb, sku.empty() ? nullptr : sku.c_str()), orders::ShowStockIdentifier());
  auto a = Ask<orders::StockList>(t, pipeline::kInventoryCommands, pipeline::kShowStock, sku, fbb,
                                  orders::StockListIdentifier());
  if (a.exit_code != kExitOk) return a.exit_code;
  if (Refused(a.reply->error())) return kExitFailed;
  json items = json::array();
  if (a.reply->items()) {
    for (const auto* e : *a.reply->items()) {
      items.push_back({{"sku", pipeline::Str(e->sku())}, {"available", e->available()}, {"reserved", e->reserved()}});
    }
  }
  if (t.json) {
    std::puts(json{{"stock", items}}.dump(2).c_str());
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : items) {
    rows.push_back({e["sku"], std::to_string(e["available"].get<int64_t>()), std::to_string(e["reserved"].get<int64_t>())});
  }
  PrintTable({"SKU", "AVAILABLE", "RESERVED"}, rows);
  return kExitOk;
}

int Analytics(const BrokerTarget& t, uint32_t minutes) {
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(orders::CreateAnalyticsQuery(fbb, minutes), orders::AnalyticsQueryIdentifier());
  auto a = Ask<orders::AnalyticsReport>(t, kAnalyticsCommands, kAnalyticsQuery, "", fbb,
                                        orders::AnalyticsReportIdentifier());
  if (a.exit_code != kExitOk) return a.exit_code;
  const auto& r = *a.reply;
  if (Refused(r.error())) return kExitFailed;
  json skus = json::array();
  if (r.skus()) {
    for (const auto* s : *r.skus()) {
      skus.push_back({{"sku", pipeline::Str(s->sku())},
                      {"units", s->units()},
                      {"revenue_cents", s->revenue_cents()},
                      {"orders", s->orders()}});
    }
  }
  json per_minute = json::array();
  if (r.per_minute()) {
    for (const auto* m : *r.per_minute()) {
      per_minute.push_back({{"minute_start_us", m->minute_start_us()}, {"orders", m->orders()}});
    }
  }
  json j = {{"orders", r.orders()},       {"confirmed", r.confirmed()}, {"cancelled", r.cancelled()},
            {"pending", r.pending()},     {"revenue_cents", r.revenue_cents()},
            {"units", r.units()},         {"skus", skus},
            {"per_minute", per_minute}};
  if (t.json) {
    std::puts(j.dump(2).c_str());
    return kExitOk;
  }
  std::printf("orders %lld: %lld confirmed, %lld cancelled, %lld pending; revenue %s, %lld units\n",
              static_cast<long long>(r.orders()), static_cast<long long>(r.confirmed()),
              static_cast<long long>(r.cancelled()), static_cast<long long>(r.pending()),
              pipeline::FormatCents(r.revenue_cents()).c_str(), static_cast<long long>(r.units()));
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : skus) {
    rows.push_back({s["sku"], std::to_string(s["orders"].get<int64_t>()), std::to_string(s["units"].get<int64_t>()),
                    pipeline::FormatCents(s["revenue_cents"].get<int64_t>())});
  }
  PrintTable({"SKU", "ORDERS", "UNITS", "REVENUE"}, rows);
  int64_t last = 0;
  for (const auto& m : per_minute) last += m["orders"].get<int64_t>();
  std::printf("orders in the last %u minutes: %lld\n", minutes, static_cast<long long>(last));
  return kExitOk;
}

}  // namespace sluice::ctl

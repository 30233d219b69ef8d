// SPDX-License-Identifier: MIT
//
// The inventory plugin: stock per SKU. On OrderCreated (order.events) it reserves every item of the
// order or none, and publishes InventoryReserved or InventoryFailed on inventory.events in the same
// commit as the stock change; on OrderCancelled it releases what it reserved for the order. It answers
// SetStock and ShowStock requests on inventory.commands.
//
// Keyspace:
//   stock/<sku>       "<available> <reserved>" (decimal)
//   resv/<order id>   {"state": "reserved"|"failed"|"released"|"cancelled", "items": {sku: qty}}
//   init/done         fingerprint of the config's stock table last applied
//
// Exactly once: the reservation record commits with the stock change and the outcome event, so a
// redelivered OrderCreated finds it and does nothing, and a release happens only from "reserved".
// Initial stock: init() has no keyspace access, so the config's `stock` table is applied by the first
// handler that runs, for SKUs not stored yet, and init/done remembers which table was applied (a
// changed table adds its new SKUs; stored quantities are never overwritten by config).
//
// Threading: the host calls Init and Handle on one thread, one at a time (plugin.h).
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "orders_generated.h"
#include "pipeline.h"
#include "sluice/plugin.hpp"

namespace sluice::inventory_plugin {
namespace {

namespace sdk = ::sluice::sdk;
namespace pl = ::sluice::pipeline;
using nlohmann::json;

constexpr int64_t kMaxStock = 1'000'000'000'000;
constexpr const char* kInitKey = "init/done";

struct Stock {
  int64_t available = 0;
  int64_t reserved = 0;
};

std::string StockKey(std::string_view sku) { return "stock/" + std::string(sku); }
std::string ReservationKey(std::string_view order_id) { return "resv/" + std::string(order_id); }

std::string EncodeStock(const Stock& s) {
  return std::to_string(s.available) + " " + std::to_string(s.reserved);
}

std::optional<Stock> DecodeStock(std::string_view v) {
  Stock s;
  size_t space = v.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  const char* end = v.data() + space;
  auto a = std::from_chars(v.data(), end, s.available);
  auto r = std::from_chars(end + 1, v.data() + v.size(), s.reserved);
  if (a.ec != std::errc() || a.ptr != end || r.ec != std::errc() || r.ptr != v.data() + v.size()) {
    return std::nullopt;
  }
  return s;
}

// The reservation an order holds, or held.
struct Reservation {
  std::string state;
  std::map<std::string, int64_t> items;
};

std::string EncodeReservation(const Reservation& r) {
  json j = {{"state", r.state}, {"items", r.items}};
  return j.dump();
}

std::optional<Reservation> DecodeReservation(std::string_view v) {
  json j = json::parse(v, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("state") || !j["state"].is_string()) return std::nullopt;
  Reservation r;
  r.state = j["state"].get<std::string>();
  if (j.contains("items") && j["items"].is_object()) {
    for (const auto& [sku, qty] : j["items"].items()) {
      if (qty.is_number_integer()) r.items[sku] = qty.get<int64_t>();
    }
  }
  return r;
}

uint64_t Fnv1a(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

flatbuffers::Offset<orders::FieldError> BuildError(flatbuffers::FlatBufferBuilder& fbb,
                                                   std::string_view field, std::string_view message) {
  auto f = fbb.CreateString(field);
  auto m = fbb.CreateString(message);
  return orders::CreateFieldError(fbb, f, m);
}

class InventoryPlugin final : public sdk::Plugin {
 public:
  int Init(const sdk::InitInfo& info) override;
  sdk::Result Handle(const sdk::Message& m, sdk::Context& ctx) override;

 private:
  int EnsureInitialStock(sdk::Context& ctx);
  sdk::Result Reserve(const sdk::Message& m, sdk::Context& ctx);
  sdk::Result Release(const sdk::Message& m, sdk::Context& ctx);
  sdk::Result SetStock(const sdk::Message& m, sdk::Context& ctx);
  sdk::Result ShowStock(const sdk::Message& m, sdk::Context& ctx);
  sdk::Result Fail(sdk::Context& ctx, const std::string& order_id,
                   const std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>>& short_items,
                   const std::string& reason);

  static std::optional<Stock> LoadStock(sdk::Context& ctx, std::string_view sku);
  static sdk::Result ReplyStock(sdk::Context& ctx, const std::vector<std::pair<std::string, Stock>>& rows);
  static sdk::Result ReplyStockError(sdk::Context& ctx, std::string_view field, std::string_view message);

  std::map<std::string, int64_t> initial_stock_;
  std::string fingerprint_;
  // Set once init/done was read back with this config's fingerprint at the start of a handler, so
  // committed: later handlers skip the check. Never set from this process's own (maybe discarded) writes.
  bool initial_stock_committed_ = false;
};

int InventoryPlugin::Init(const sdk::InitInfo& info) {
  const json& config = info.config;
  if (!config.is_object()) {
    info.Log(SLUICE_LOG_ERROR, "config must be a table");
    return -EINVAL;
  }
  for (const auto& [key, value] : config.items()) {
    if (key != "stock") info.Log(SLUICE_LOG_WARNING, "config: unknown key '" + key + "' ignored");
  }
  auto it = config.find("stock");
  if (it != config.end()) {
    if (!it->is_object()) {
      info.Log(SLUICE_LOG_ERROR, "config.stock must be a table of SKU = quantity");
      return -EINVAL;
    }
    for (const auto& [sku, qty] : it->items()) {
      if (!pl::IsToken(sku)) {
        info.Log(SLUICE_LOG_ERROR,
                 "config.stock: '" + sku + "' is not a SKU (1 to 64 characters of A-Z a-z 0-9 . _ -)");
        return -EINVAL;
      }
      auto n = pl::IntIn(qty, 0, kMaxStock);
      if (!n) {
        info.Log(SLUICE_LOG_ERROR, "config.stock." + sku + ": the quantity must be an integer, 0 to " +
                                       std::to_string(kMaxStock));
        return -EINVAL;
      }
      initial_stock_[sku] = *n;
    }
  }
  // Of the order events, only those that reserve or release stock wake inventory (kSubscriptions[0]).
  pl::DeliverOnly(info, 0, {std::string(pl::kOrderCreated), std::string(pl::kOrderCancelled)});
  char buf[20];
  std::snprintf(buf, sizeof(buf), "%016llx",
                static_cast<unsigned long long>(Fnv1a(json(initial_stock_).dump())));
  fingerprint_ = buf;
  return 0;
}

int InventoryPlugin::EnsureInitialStock(sdk::Context& ctx) {
  if (initial_stock_committed_ || initial_stock_.empty()) return 0;
  auto applied = ctx.Get(kInitKey);
  if (applied && *applied == fingerprint_) {
    initial_stock_committed_ = true;
    return 0;
  }
  size_t stored = 0;
  for (const auto& [sku, qty] : initial_stock_) {
    if (ctx.Get(StockKey(sku))) continue;
    int rc = ctx.Put(StockKey(sku), EncodeStock({qty, 0}));
    if (rc != 0) return rc;
    ++stored;
  }
  int rc = ctx.Put(kInitKey, fingerprint_);
  if (rc == 0)
    ctx.Info("initial stock: " + std::to_string(stored) + " of the " + std::to_string(initial_stock_.size()) +
             " SKUs in config stored; the others keep their stored stock (`sluicectl stock set` changes it)");
  return rc;
}

sdk::Result InventoryPlugin::Handle(const sdk::Message& m, sdk::Context& ctx) {
  if (int rc = EnsureInitialStock(ctx); rc != 0) {
    return sdk::Result::Retry(std::chrono::milliseconds(0),
                              "applying initial stock failed: error " + std::to_string(-rc));
  }
  if (m.topic() == pl::kOrderEvents) {
    if (m.type() == pl::kOrderCreated) return Reserve(m, ctx);
    if (m.type() == pl::kOrderCancelled) return Release(m, ctx);
    return sdk::Result::Ok();  // OrderConfirmed and the rest change no stock
  }
  if (m.topic() == pl::kInventoryCommands) {
    if (!m.is_request()) {
      return sdk::Result::Reject("inventory.commands carries requests; this message is not one");
    }
    if (m.type() == pl::kSetStock) return SetStock(m, ctx);
    if (m.type() == pl::kShowStock) return ShowStock(m, ctx);
    return sdk::Result::Reject("unknown request type '" + std::string(m.type()) + "' on inventory.commands");
  }
  return sdk::Result::Reject("inventory does not consume topic '" + std::string(m.topic()) + "'");
}

std::optional<Stock> InventoryPlugin::LoadStock(sdk::Context& ctx, std::string_view sku) {
  auto v = ctx.Get(StockKey(sku));
  if (!v) return std::nullopt;
  auto s = DecodeStock(*v);
  if (!s) ctx.Warning("stock/" + std::string(sku) + " holds no valid stock record; taken as unknown");
  return s;
}

sdk::Result InventoryPlugin::Fail(
    sdk::Context& ctx, const std::string& order_id,
    const std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>>& short_items,
    const std::string& reason) {
  flatbuffers::FlatBufferBuilder fbb(256);
  std::vector<flatbuffers::Offset<orders::ShortItem>> rows;
  for (const auto& [sku, counts] : short_items) {
    auto s = fbb.CreateString(sku);
    rows.push_back(orders::CreateShortItem(fbb, s, counts.first, counts.second));
  }
  auto id = fbb.CreateString(order_id);
  auto list = fbb.CreateVector(rows);
  auto why = fbb.CreateString(reason);
  orders::FinishInventoryFailedBuffer(fbb, orders::CreateInventoryFailed(fbb, id, list, why));

  pl::Effects effects(ctx);
  effects.Put(ReservationKey(order_id), EncodeReservation({"failed", {}}));
  effects.Publish({.topic = pl::kInventoryEvents,
                   .key = order_id,
                   .type = pl::kInventoryFailed,
                   .payload = sdk::Bytes(fbb),
                   .correlation_id = order_id});
  if (effects.failed()) return effects.Retry();
  return sdk::Result::Ok();
}

sdk::Result InventoryPlugin::Reserve(const sdk::Message& m, sdk::Context& ctx) {
  pl::Verified<orders::OrderCreated> ev(m.payload(), orders::OrderCreatedIdentifier());
  if (!ev) return sdk::Result::Reject("payload is not an orders.OrderCreated FlatBuffer");
  std::string order_id = pl::Str(ev->order_id());
  if (!pl::IsToken(order_id)) return sdk::Result::Reject("OrderCreated names no valid order id");
  if (ctx.Get(ReservationKey(order_id))) {
    // Handled before (its outcome committed with this record), or cancelled before it arrived.
    ctx.Log(SLUICE_LOG_DEBUG,
            "order " + order_id + " has a reservation record: OrderCreated " + m.id() + " changes nothing");
    return sdk::Result::Ok();
  }

  // Lines of one SKU are summed: the order plugin accepts an order that names a SKU twice.
  std::map<std::string, int64_t> wanted;
  std::string invalid;
  if (ev->items() == nullptr || ev->items()->size() == 0) invalid = "the order has no items";
  if (ev->items() != nullptr) {
    for (const auto* item : *ev->items()) {
      std::string sku = pl::Str(item->sku());
      if (!pl::IsToken(sku) || item->quantity() <= 0 || item->quantity() > kMaxStock) {
        invalid = "invalid item '" + sku.substr(0, 64) + "' x " + std::to_string(item->quantity());
        break;
      }
      wanted[sku] += item->quantity();
    }
  }
  if (!invalid.empty()) return Fail(ctx, order_id, {}, "invalid order: " + invalid);

  std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> short_items;
  std::string reason;
  std::map<std::string, Stock> stock;
  for (const auto& [sku, qty] : wanted) {
    auto s = LoadStock(ctx, sku);
    std::string why;
    if (!s) {
      short_items.push_back({sku, {qty, 0}});
      why = "unknown sku: " + sku;
    } else if (s->available < qty) {
      short_items.push_back({sku, {qty, s->available}});
      why = "insufficient stock: " + sku + " (requested " + std::to_string(qty) + ", available " +
            std::to_string(s->available) + ")";
    } else {
      stock[sku] = *s;
      continue;
    }
    reason += (reason.empty() ? "" : "; ") + why;
  }
  if (!short_items.empty()) return Fail(ctx, order_id, short_items, reason);

  pl::Effects effects(ctx);
  flatbuffers::FlatBufferBuilder fbb(256);
  std::vector<flatbuffers::Offset<orders::LineItem>> lines;
  for (auto& [sku, s] : stock) {
    int64_t qty = wanted[sku];
    s.available -= qty;
    s.reserved += qty;
    effects.Put(StockKey(sku), EncodeStock(s));
    auto name = fbb.CreateString(sku);
    orders::LineItemBuilder b(fbb);
    b.add_sku(name);
    b.add_quantity(qty);
    lines.push_back(b.Finish());
  }
  effects.Put(ReservationKey(order_id), EncodeReservation({"reserved", wanted}));
  auto id = fbb.CreateString(order_id);
  auto items = fbb.CreateVector(lines);
  orders::FinishInventoryReservedBuffer(fbb, orders::CreateInventoryReserved(fbb, id, items, ctx.NowUs()));
  effects.Publish({.topic = pl::kInventoryEvents,
                   .key = order_id,
                   .type = pl::kInventoryReserved,
                   .payload = sdk::Bytes(fbb),
                   .correlation_id = order_id});
  if (effects.failed()) return effects.Retry();
  return sdk::Result::Ok();
}

sdk::Result InventoryPlugin::Release(const sdk::Message& m, sdk::Context& ctx) {
  pl::Verified<orders::OrderCancelled> ev(m.payload(), orders::OrderCancelledIdentifier());
  if (!ev) return sdk::Result::Reject("payload is not an orders.OrderCancelled FlatBuffer");
  std::string order_id = pl::Str(ev->order_id());
  if (!pl::IsToken(order_id)) return sdk::Result::Reject("OrderCancelled names no valid order id");

  pl::Effects effects(ctx);
  auto stored = ctx.Get(ReservationKey(order_id));
  if (!stored) {
    // Cancelled before its OrderCreated reached us: remember, so that one reserves nothing.
    effects.Put(ReservationKey(order_id), EncodeReservation({"cancelled", {}}));
    return effects.failed() ? effects.Retry() : sdk::Result::Ok();
  }
  auto r = DecodeReservation(*stored);
  if (!r) {
    ctx.Warning("resv/" + order_id + " holds no valid reservation record: nothing released");
    return sdk::Result::Ok();
  }
  if (r->state != "reserved") return sdk::Result::Ok();  // nothing held, or released already
  for (const auto& [sku, qty] : r->items) {
    Stock s = LoadStock(ctx, sku).value_or(Stock{});
    s.available += qty;
    s.reserved = s.reserved >= qty ? s.reserved - qty : 0;
    effects.Put(StockKey(sku), EncodeStock(s));
  }
  r->state = "released";
  effects.Put(ReservationKey(order_id), EncodeReservation(*r));
  if (effects.failed()) return effects.Retry();
  ctx.Info("order " + order_id + " cancelled: released " + std::to_string(r->items.size()) + " SKU(s)");
  return sdk::Result::Ok();
}

sdk::Result InventoryPlugin::ReplyStock(sdk::Context& ctx,
                                        const std::vector<std::pair<std::string, Stock>>& rows) {
  flatbuffers::FlatBufferBuilder fbb(256);
  std::vector<flatbuffers::Offset<orders::StockEntry>> entries;
  entries.reserve(rows.size());
  for (const auto& [sku, s] : rows) {
    auto name = fbb.CreateString(sku);
    entries.push_back(orders::CreateStockEntry(fbb, name, s.available, s.reserved));
  }
  auto list = fbb.CreateVector(entries);
  orders::FinishStockListBuffer(fbb, orders::CreateStockList(fbb, list));
  return pl::Reply(ctx, pl::kStockList, sdk::Bytes(fbb));
}

sdk::Result InventoryPlugin::ReplyStockError(sdk::Context& ctx, std::string_view field,
                                             std::string_view message) {
  flatbuffers::FlatBufferBuilder fbb(256);
  auto error = BuildError(fbb, field, message);
  orders::StockListBuilder b(fbb);
  b.add_error(error);
  orders::FinishStockListBuffer(fbb, b.Finish());
  return pl::Reply(ctx, pl::kStockList, sdk::Bytes(fbb));
}

sdk::Result InventoryPlugin::SetStock(const sdk::Message& m, sdk::Context& ctx) {
  const auto* req = m.As<orders::SetStock>(orders::SetStockIdentifier());
  if (req == nullptr) return ReplyStockError(ctx, "payload", "not an orders.SetStock FlatBuffer");
  std::string sku = pl::Str(req->sku());
  if (!pl::IsToken(sku)) {
    return ReplyStockError(ctx, "sku", "must be 1 to 64 characters of A-Z a-z 0-9 . _ -");
  }
  if (req->quantity() < 0 || req->quantity() > kMaxStock) {
    return ReplyStockError(
        ctx, "quantity",
        "must be 0 to " + std::to_string(kMaxStock) + " (got " + std::to_string(req->quantity()) + ")");
  }
  // Sets what is available; reservations held for orders stay held.
  Stock s = LoadStock(ctx, sku).value_or(Stock{});
  s.available = req->quantity();
  if (int rc = ctx.Put(StockKey(sku), EncodeStock(s)); rc != 0) {
    return sdk::Result::Retry(std::chrono::milliseconds(0), "put failed: error " + std::to_string(-rc));
  }
  ctx.Info("stock of " + sku + " set to " + std::to_string(s.available));
  return ReplyStock(ctx, {{sku, s}});
}

sdk::Result InventoryPlugin::ShowStock(const sdk::Message& m, sdk::Context& ctx) {
  const auto* req = m.As<orders::ShowStock>(orders::ShowStockIdentifier());
  if (req == nullptr) return ReplyStockError(ctx, "payload", "not an orders.ShowStock FlatBuffer");
  std::string sku = pl::Str(req->sku());
  std::vector<std::pair<std::string, Stock>> rows;
  if (!sku.empty()) {
    if (!pl::IsToken(sku)) {
      return ReplyStockError(ctx, "sku", "must be 1 to 64 characters of A-Z a-z 0-9 . _ -");
    }
    auto s = LoadStock(ctx, sku);
    if (!s) return ReplyStockError(ctx, "sku", "unknown SKU '" + sku + "'");
    rows.emplace_back(sku, *s);
    return ReplyStock(ctx, rows);
  }
  int rc = ctx.Scan("stock/", 0, [&](std::string_view key, std::string_view value) {
    if (auto s = DecodeStock(value)) rows.emplace_back(std::string(key.substr(6)), *s);
    return true;
  });
  if (rc != 0) {
    return sdk::Result::Retry(std::chrono::milliseconds(0), "scan failed: error " + std::to_string(-rc));
  }
  return ReplyStock(ctx, rows);
}

// Both event subscriptions start at the earliest message: an OrderCreated published before this
// subscription existed must still be reserved, or its order would stay PENDING.
const sluice_subscription kSubscriptions[] = {
    {"order.events", "inventory", SLUICE_START_EARLIEST, SLUICE_ORDERING_KEY, 0, 0, pl::kPipelinePrefetch},
    {"inventory.commands", "inventory-commands", SLUICE_START_LATEST, SLUICE_ORDERING_NONE, 0, 0, 0},
};
const char* const kPublishes[] = {"inventory.events"};

}  // namespace
}  // namespace sluice::inventory_plugin

SLUICE_PLUGIN(sluice::inventory_plugin::InventoryPlugin, "inventory", "1.0.0",
              sluice::inventory_plugin::kSubscriptions, sluice::inventory_plugin::kPublishes)

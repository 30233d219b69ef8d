// SPDX-License-Identifier: MIT
//
// The order plugin: the system of record for orders. It answers PlaceOrder, GetOrder and ListOrders
// requests on order.commands, and moves orders from PENDING to CONFIRMED or CANCELLED on the outcomes
// inventory publishes on inventory.events. Every handler's writes, publishes and reply commit together
// (the host's bundle), so a stored order always has its OrderCreated and a final status always has its
// OrderConfirmed/OrderCancelled, exactly once.
//
// Keyspace:
//   order/<id>                 the order: an orders.OrderView FlatBuffer ("SOOV")
//   status/<STATUS>/<id>       ""   (index for ListOrders by status)
//   idem/<idempotency key>     <id>
//
// Order ids are "ord-" + 24 hex digits, a function of the PlaceOrder message id: the UUIDv7 millisecond
// timestamp (so ids sort by creation time) and a hash of the whole id. A re-run of the same message
// therefore finds its own order instead of creating a second one.
//
// Unknown SKUs: with a `catalog` in the config ({"catalog": {"SKU-1": 1250}}, SKU -> unit price in
// cents), an order for a SKU not in it is refused at placement and a missing unit price is taken from
// it; without one, any well-formed SKU is accepted and inventory cancels an order for a SKU it does not
// stock ("unknown sku").
//
// Threading: the host calls Init and Handle on one thread, one at a time (plugin.h).
#include <algorithm>
#include <cerrno>
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

namespace sluice::order_plugin {
namespace {

namespace sdk = ::sluice::sdk;
namespace pl = ::sluice::pipeline;
using ::sluice::orders::OrderStatus;

constexpr size_t kMaxItems = 100;
constexpr int64_t kMaxQuantity = 1'000'000;
// 100 items x 1,000,000 units x this stays below 2^63: a total cannot overflow.
constexpr int64_t kMaxUnitPriceCents = 10'000'000'000;
constexpr size_t kMaxIdempotencyKeyBytes = 200;  // keyspace keys are at most 400 bytes
constexpr uint32_t kDefaultListLimit = 50;
constexpr uint32_t kMaxListLimit = 200;
// An OrderList stops growing past this many bytes of orders, so a page stays well below frame limits.
constexpr size_t kListByteBudget = 1 << 20;

struct Item {
  std::string sku;
  int64_t quantity = 0;
  int64_t unit_price_cents = 0;
};

struct Order {
  std::string id;
  OrderStatus status = OrderStatus::UNKNOWN;
  std::string email;
  std::vector<Item> items;
  int64_t total_cents = 0;
  int64_t created_us = 0;
  int64_t updated_us = 0;
  std::string reason;
  std::string idempotency_key;
  std::string request_id;
};

struct Problem {
  std::string field;
  std::string message;
};

std::string OrderKey(std::string_view id) { return "order/" + std::string(id); }
std::string StatusPrefix(OrderStatus s) {
  return "status/" + std::string(orders::EnumNameOrderStatus(s)) + "/";
}
std::string StatusKey(OrderStatus s, std::string_view id) { return StatusPrefix(s) + std::string(id); }
std::string IdempotencyKey(std::string_view key) { return "idem/" + std::string(key); }

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

// Not just the first 16 hex digits of the message id: a UUIDv7 has only 12 random bits there, and at
// thousands of orders per second two in one millisecond collide (birthday bound). 48 bits of time plus
// 48 bits of a hash of the whole id do not, in practice; a collision is still detected (PlaceOrder).
std::string OrderIdFor(const uint8_t* id) {
  uint64_t hi = 0;
  uint64_t lo = 0;
  for (int i = 0; i < 8; ++i) hi = (hi << 8) | id[i];
  for (int i = 8; i < 16; ++i) lo = (lo << 8) | id[i];
  uint64_t hash = Mix(hi ^ Mix(lo ^ 0x9e3779b97f4a7c15ull));
  char buf[32];
  std::snprintf(buf, sizeof(buf), "ord-%012llx%012llx", static_cast<unsigned long long>(hi >> 16),
                static_cast<unsigned long long>(hash & 0xffffffffffffull));
  return buf;
}

flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<orders::LineItem>>> BuildItems(
    flatbuffers::FlatBufferBuilder& fbb, const std::vector<Item>& items) {
  std::vector<flatbuffers::Offset<orders::LineItem>> out;
  out.reserve(items.size());
  for (const Item& item : items) {
    auto sku = fbb.CreateString(item.sku);
    orders::LineItemBuilder b(fbb);
    b.add_sku(sku);
    b.add_quantity(item.quantity);
    b.add_unit_price_cents(item.unit_price_cents);
    out.push_back(b.Finish());
  }
  return fbb.CreateVector(out);
}

flatbuffers::Offset<orders::OrderView> BuildView(flatbuffers::FlatBufferBuilder& fbb, const Order& o) {
  auto id = fbb.CreateString(o.id);
  auto email = fbb.CreateString(o.email);
  auto items = BuildItems(fbb, o.items);
  auto reason = o.reason.empty() ? flatbuffers::Offset<flatbuffers::String>() : fbb.CreateString(o.reason);
  auto idem = o.idempotency_key.empty() ? flatbuffers::Offset<flatbuffers::String>()
                                        : fbb.CreateString(o.idempotency_key);
  auto request = fbb.CreateString(o.request_id);
  return orders::CreateOrderView(fbb, id, o.status, email, items, o.total_cents, o.created_us, o.updated_us,
                                 reason, idem, request);
}

std::string EncodeOrder(const Order& o) {
  flatbuffers::FlatBufferBuilder fbb(512);
  orders::FinishOrderViewBuffer(fbb, BuildView(fbb, o));
  return std::string(sdk::Bytes(fbb));
}

std::optional<Order> DecodeOrder(std::string_view bytes) {
  pl::Verified<orders::OrderView> v(bytes, orders::OrderViewIdentifier());
  if (!v) return std::nullopt;
  Order o;
  o.id = pl::Str(v->order_id());
  o.status = v->status();
  o.email = pl::Str(v->email());
  if (v->items() != nullptr) {
    for (const auto* item : *v->items()) {
      o.items.push_back({pl::Str(item->sku()), item->quantity(), item->unit_price_cents().value_or(0)});
    }
  }
  o.total_cents = v->total_cents();
  o.created_us = v->created_us();
  o.updated_us = v->updated_us();
  o.reason = pl::Str(v->reason());
  o.idempotency_key = pl::Str(v->idempotency_key());
  o.request_id = pl::Str(v->request_id());
  return o;
}

std::string StatusName(OrderStatus s) {
  const char* name = orders::EnumNameOrderStatus(s);
  return name[0] != '\0' ? name : std::to_string(static_cast<int>(s));
}

flatbuffers::Offset<orders::FieldError> BuildError(flatbuffers::FlatBufferBuilder& fbb, const Problem& p) {
  auto field = fbb.CreateString(p.field);
  auto message = fbb.CreateString(p.message);
  return orders::CreateFieldError(fbb, field, message);
}

class OrderPlugin final : public sdk::Plugin {
 public:
  int Init(const sdk::InitInfo& info) override;
  sdk::Result Handle(const sdk::Message& m, sdk::Context& ctx) override;

 private:
  std::optional<Problem> Validate(const orders::PlaceOrder& req, std::vector<Item>* items,
                                  int64_t* total) const;
  sdk::Result PlaceOrder(const sdk::Message& m, sdk::Context& ctx);
  sdk::Result GetOrder(const sdk::Message& m, sdk::Context& ctx);
  sdk::Result ListOrders(const sdk::Message& m, sdk::Context& ctx);
  sdk::Result ApplyOutcome(const sdk::Message& m, sdk::Context& ctx, bool reserved);

  static std::optional<Order> LoadOrder(sdk::Context& ctx, std::string_view id);
  static sdk::Result ReplyPlaced(sdk::Context& ctx, const Order& o);
  static sdk::Result ReplyPlaceError(sdk::Context& ctx, const Problem& p);
  static sdk::Result ReplyViewError(sdk::Context& ctx, const Problem& p);
  static sdk::Result ReplyListError(sdk::Context& ctx, const Problem& p);

  bool has_catalog_ = false;
  std::map<std::string, int64_t, std::less<>> catalog_;  // SKU -> unit price in cents
};

int OrderPlugin::Init(const sdk::InitInfo& info) {
  const nlohmann::json& config = info.config;
  if (!config.is_object()) {
    info.Log(SLUICE_LOG_ERROR, "config must be a table");
    return -EINVAL;
  }
  for (const auto& [key, value] : config.items()) {
    if (key != "catalog") info.Log(SLUICE_LOG_WARNING, "config: unknown key '" + key + "' ignored");
  }
  auto it = config.find("catalog");
  if (it == config.end()) return 0;
  if (!it->is_object()) {
    info.Log(SLUICE_LOG_ERROR, "config.catalog must be a table of SKU = unit price in cents");
    return -EINVAL;
  }
  for (const auto& [sku, price] : it->items()) {
    if (!pl::IsToken(sku)) {
      info.Log(SLUICE_LOG_ERROR,
               "config.catalog: '" + sku + "' is not a SKU (1 to 64 characters of A-Z a-z 0-9 . _ -)");
      return -EINVAL;
    }
    auto cents = pl::IntIn(price, 0, kMaxUnitPriceCents);
    if (!cents) {
      info.Log(SLUICE_LOG_ERROR, "config.catalog." + sku +
                                     ": the unit price must be an integer number of cents, 0 to " +
                                     std::to_string(kMaxUnitPriceCents));
      return -EINVAL;
    }
    catalog_[sku] = *cents;
  }
  has_catalog_ = true;
  return 0;
}

sdk::Result OrderPlugin::Handle(const sdk::Message& m, sdk::Context& ctx) {
  if (m.topic() == pl::kOrderCommands) {
    if (!m.is_request()) {
      return sdk::Result::Reject("order.commands carries requests; this message is not one");
    }
    if (m.type() == pl::kPlaceOrder) return PlaceOrder(m, ctx);
    if (m.type() == pl::kGetOrder) return GetOrder(m, ctx);
    if (m.type() == pl::kListOrders) return ListOrders(m, ctx);
    return sdk::Result::Reject("unknown request type '" + std::string(m.type()) + "' on order.commands");
  }
  if (m.topic() == pl::kInventoryEvents) {
    if (m.type() == pl::kInventoryReserved) return ApplyOutcome(m, ctx, true);
    if (m.type() == pl::kInventoryFailed) return ApplyOutcome(m, ctx, false);
    return sdk::Result::Ok();  // other inventory events are none of the order's business
  }
  return sdk::Result::Reject("order does not consume topic '" + std::string(m.topic()) + "'");
}

std::optional<Problem> OrderPlugin::Validate(const orders::PlaceOrder& req, std::vector<Item>* items,
                                             int64_t* total) const {
  std::string why = pl::CheckEmail(req.email() ? req.email()->string_view() : std::string_view());
  if (!why.empty()) return Problem{"email", why};
  const auto* lines = req.items();
  if (lines == nullptr || lines->size() == 0) return Problem{"items", "at least one item is required"};
  if (lines->size() > kMaxItems) {
    return Problem{"items", "at most 100 items per order (got " + std::to_string(lines->size()) + ")"};
  }
  if (req.idempotency_key() != nullptr && req.idempotency_key()->size() > kMaxIdempotencyKeyBytes) {
    return Problem{"idempotency_key", "longer than 200 bytes"};
  }
  int64_t sum = 0;
  for (uint32_t i = 0; i < lines->size(); ++i) {
    const orders::LineItem* line = lines->Get(i);
    std::string field = "items[" + std::to_string(i) + "]";
    std::string_view sku = line->sku() ? line->sku()->string_view() : std::string_view();
    if (sku.empty()) return Problem{field + ".sku", "required"};
    if (!pl::IsToken(sku)) {
      return Problem{field + ".sku", "must be 1 to 64 characters of A-Z a-z 0-9 . _ -"};
    }
    auto listed = catalog_.find(sku);
    if (has_catalog_ && listed == catalog_.end()) {
      return Problem{field + ".sku", "unknown SKU '" + std::string(sku) + "'"};
    }
    int64_t quantity = line->quantity();
    if (quantity <= 0) {
      return Problem{field + ".quantity", "must be at least 1 (got " + std::to_string(quantity) + ")"};
    }
    if (quantity > kMaxQuantity) {
      return Problem{field + ".quantity", "must be at most 1000000 (got " + std::to_string(quantity) + ")"};
    }
    int64_t price = 0;
    if (auto given = line->unit_price_cents()) {
      if (*given < 0) {
        return Problem{field + ".unit_price_cents",
                       "must not be negative (got " + std::to_string(*given) + ")"};
      }
      if (*given > kMaxUnitPriceCents) {
        return Problem{field + ".unit_price_cents", "must be at most " + std::to_string(kMaxUnitPriceCents)};
      }
      if (has_catalog_ && *given != listed->second) {
        return Problem{field + ".unit_price_cents",
                       "does not match the catalog price " + pl::FormatCents(listed->second)};
      }
      price = *given;
    } else if (has_catalog_) {
      price = listed->second;
    }
    items->push_back({std::string(sku), quantity, price});
    sum += quantity * price;
  }
  *total = sum;
  return std::nullopt;
}

std::optional<Order> OrderPlugin::LoadOrder(sdk::Context& ctx, std::string_view id) {
  if (!pl::IsToken(id)) return std::nullopt;
  auto bytes = ctx.Get(OrderKey(id));
  if (!bytes) return std::nullopt;
  auto order = DecodeOrder(*bytes);
  if (!order) ctx.Warning("order/" + std::string(id) + " does not hold a valid orders.OrderView");
  return order;
}

sdk::Result OrderPlugin::ReplyPlaced(sdk::Context& ctx, const Order& o) {
  flatbuffers::FlatBufferBuilder fbb(128);
  auto id = fbb.CreateString(o.id);
  orders::FinishPlaceOrderReplyBuffer(fbb, orders::CreatePlaceOrderReply(fbb, id, o.status, o.total_cents));
  return pl::Reply(ctx, pl::kPlaceOrderReply, sdk::Bytes(fbb));
}

sdk::Result OrderPlugin::ReplyPlaceError(sdk::Context& ctx, const Problem& p) {
  flatbuffers::FlatBufferBuilder fbb(256);
  auto error = BuildError(fbb, p);
  orders::FinishPlaceOrderReplyBuffer(fbb,
                                      orders::CreatePlaceOrderReply(fbb, 0, OrderStatus::UNKNOWN, 0, error));
  return pl::Reply(ctx, pl::kPlaceOrderReply, sdk::Bytes(fbb));
}

sdk::Result OrderPlugin::ReplyViewError(sdk::Context& ctx, const Problem& p) {
  flatbuffers::FlatBufferBuilder fbb(256);
  auto error = BuildError(fbb, p);
  orders::OrderViewBuilder b(fbb);
  b.add_error(error);
  orders::FinishOrderViewBuffer(fbb, b.Finish());
  return pl::Reply(ctx, pl::kOrderView, sdk::Bytes(fbb));
}

sdk::Result OrderPlugin::ReplyListError(sdk::Context& ctx, const Problem& p) {
  flatbuffers::FlatBufferBuilder fbb(256);
  auto error = BuildError(fbb, p);
  orders::OrderListBuilder b(fbb);
  b.add_error(error);
  orders::FinishOrderListBuffer(fbb, b.Finish());
  return pl::Reply(ctx, pl::kOrderList, sdk::Bytes(fbb));
}

sdk::Result OrderPlugin::PlaceOrder(const sdk::Message& m, sdk::Context& ctx) {
  const auto* req = m.As<orders::PlaceOrder>(orders::PlaceOrderIdentifier());
  if (req == nullptr) return ReplyPlaceError(ctx, {"payload", "not an orders.PlaceOrder FlatBuffer"});
  std::vector<Item> items;
  int64_t total = 0;
  if (auto problem = Validate(*req, &items, &total)) return ReplyPlaceError(ctx, *problem);

  // A repeated idempotency key answers with the first order (its current status), whatever the rest
  // of the request says, as Stripe's Idempotency-Key does.
  std::string idem = pl::Str(req->idempotency_key());
  if (!idem.empty()) {
    if (auto first_id = ctx.Get(IdempotencyKey(idem))) {
      if (auto first = LoadOrder(ctx, *first_id)) return ReplyPlaced(ctx, *first);
      ctx.Warning("idempotency key points to missing order " + *first_id + ": placing a new order");
    }
  }

  Order o;
  o.id = OrderIdFor(m.id_bytes());
  o.request_id = m.id();
  if (auto existing = LoadOrder(ctx, o.id)) {
    // The same request again (a client resending with the same message id): the same answer.
    if (existing->request_id == o.request_id) return ReplyPlaced(ctx, *existing);
    ctx.Warning("order id " + o.id + " of request " + o.request_id + " is taken by request " +
                existing->request_id);
    return ReplyPlaceError(ctx, {"order_id", "order id collision; place the order again"});
  }
  o.status = OrderStatus::PENDING;
  o.email = pl::Str(req->email());
  o.items = std::move(items);
  o.total_cents = total;
  o.created_us = ctx.NowUs();
  o.updated_us = o.created_us;
  o.idempotency_key = idem;

  flatbuffers::FlatBufferBuilder fbb(512);
  auto id = fbb.CreateString(o.id);
  auto email = fbb.CreateString(o.email);
  auto lines = BuildItems(fbb, o.items);
  orders::FinishOrderCreatedBuffer(
      fbb, orders::CreateOrderCreated(fbb, id, email, lines, o.total_cents, o.created_us));

  pl::Effects effects(ctx);
  effects.Put(OrderKey(o.id), EncodeOrder(o));
  effects.Put(StatusKey(o.status, o.id), "");
  if (!idem.empty()) effects.Put(IdempotencyKey(idem), o.id);
  effects.Publish({.topic = pl::kOrderEvents,
                   .key = o.id,
                   .type = pl::kOrderCreated,
                   .payload = sdk::Bytes(fbb),
                   .correlation_id = o.id});
  if (effects.failed()) return effects.Retry();
  return ReplyPlaced(ctx, o);
}

sdk::Result OrderPlugin::GetOrder(const sdk::Message& m, sdk::Context& ctx) {
  const auto* req = m.As<orders::GetOrder>(orders::GetOrderIdentifier());
  if (req == nullptr) return ReplyViewError(ctx, {"payload", "not an orders.GetOrder FlatBuffer"});
  std::string id = pl::Str(req->order_id());
  if (id.empty()) return ReplyViewError(ctx, {"order_id", "required"});
  if (!pl::IsToken(id)) return ReplyViewError(ctx, {"order_id", "not an order id"});
  auto stored = ctx.Get(OrderKey(id));
  if (!stored) return ReplyViewError(ctx, {"order_id", "no order '" + id + "'"});
  // The stored record is an OrderView already.
  return pl::Reply(ctx, pl::kOrderView, *stored);
}

sdk::Result OrderPlugin::ListOrders(const sdk::Message& m, sdk::Context& ctx) {
  const auto* req = m.As<orders::ListOrders>(orders::ListOrdersIdentifier());
  if (req == nullptr) return ReplyListError(ctx, {"payload", "not an orders.ListOrders FlatBuffer"});
  OrderStatus status = req->status();
  if (status != OrderStatus::UNKNOWN && status != OrderStatus::PENDING && status != OrderStatus::CONFIRMED &&
      status != OrderStatus::CANCELLED) {
    return ReplyListError(ctx, {"status", "unknown status " + StatusName(status)});
  }
  uint32_t limit = req->limit() == 0 ? kDefaultListLimit : std::min(req->limit(), kMaxListLimit);
  std::string after = pl::Str(req->after());
  if (!after.empty() && !pl::IsToken(after)) return ReplyListError(ctx, {"after", "not an order id"});

  // Invariant: keys come in order, so everything up to prefix+after was on earlier pages. The scan
  // has no start key, so pages late in a long list cost a walk over the earlier keys.
  std::string prefix = status == OrderStatus::UNKNOWN ? "order/" : StatusPrefix(status);
  std::string start = after.empty() ? std::string() : prefix + after;
  std::vector<std::string> ids;
  std::vector<Order> page;
  bool more = false;
  size_t bytes = 0;
  int rc = ctx.Scan(prefix, 0, [&](std::string_view key, std::string_view value) {
    if (!start.empty() && key <= start) return true;
    if (ids.size() + page.size() >= limit || bytes > kListByteBudget) {
      more = true;
      return false;
    }
    if (status == OrderStatus::UNKNOWN) {
      if (auto o = DecodeOrder(value)) {
        bytes += value.size();
        page.push_back(std::move(*o));
      }
    } else {
      ids.emplace_back(key.substr(prefix.size()));
    }
    return true;
  });
  if (rc != 0)
    return sdk::Result::Retry(std::chrono::milliseconds(0), "scan failed: error " + std::to_string(-rc));
  // Index entries are loaded after the scan: a kv_get inside the scan callback would end the
  // borrowed key and value the scan is handing out.
  for (size_t i = 0; i < ids.size(); ++i) {
    if (bytes > kListByteBudget) {
      more = true;
      break;
    }
    auto o = LoadOrder(ctx, ids[i]);
    if (!o) continue;
    bytes += o->items.size() * 64 + o->email.size() + 128;
    page.push_back(std::move(*o));
  }

  flatbuffers::FlatBufferBuilder fbb(1024);
  std::vector<flatbuffers::Offset<orders::OrderView>> views;
  views.reserve(page.size());
  for (const Order& o : page) views.push_back(BuildView(fbb, o));
  auto list = fbb.CreateVector(views);
  auto next =
      more && !page.empty() ? fbb.CreateString(page.back().id) : flatbuffers::Offset<flatbuffers::String>();
  orders::FinishOrderListBuffer(fbb, orders::CreateOrderList(fbb, list, next));
  return pl::Reply(ctx, pl::kOrderList, sdk::Bytes(fbb));
}

sdk::Result OrderPlugin::ApplyOutcome(const sdk::Message& m, sdk::Context& ctx, bool reserved) {
  std::string order_id;
  std::string reason;
  if (reserved) {
    const auto* ev = m.As<orders::InventoryReserved>(orders::InventoryReservedIdentifier());
    if (ev == nullptr) return sdk::Result::Reject("payload is not an orders.InventoryReserved FlatBuffer");
    order_id = pl::Str(ev->order_id());
  } else {
    const auto* ev = m.As<orders::InventoryFailed>(orders::InventoryFailedIdentifier());
    if (ev == nullptr) return sdk::Result::Reject("payload is not an orders.InventoryFailed FlatBuffer");
    order_id = pl::Str(ev->order_id());
    reason = pl::Str(ev->reason());
    if (reason.empty()) reason = "inventory could not reserve the items";
  }
  std::string what = std::string(m.type()) + " " + m.id();
  if (!pl::IsToken(order_id)) return sdk::Result::Reject(what + " names no valid order id");
  auto o = LoadOrder(ctx, order_id);
  if (!o) {
    ctx.Warning(what + " for unknown order " + order_id + ": ignored");
    return sdk::Result::Ok();
  }
  if (o->status != OrderStatus::PENDING) {
    // A final state is final: a late or repeated outcome changes nothing and publishes nothing.
    ctx.Log(SLUICE_LOG_NOTICE,
            "order " + o->id + " is " + StatusName(o->status) + " already: " + what + " ignored");
    return sdk::Result::Ok();
  }
  OrderStatus old = o->status;
  o->status = reserved ? OrderStatus::CONFIRMED : OrderStatus::CANCELLED;
  o->updated_us = ctx.NowUs();
  if (!reserved) o->reason = reason;

  flatbuffers::FlatBufferBuilder fbb(512);
  auto id = fbb.CreateString(o->id);
  auto email = fbb.CreateString(o->email);
  auto lines = BuildItems(fbb, o->items);
  if (reserved) {
    orders::FinishOrderConfirmedBuffer(
        fbb, orders::CreateOrderConfirmed(fbb, id, email, lines, o->total_cents, o->updated_us));
  } else {
    auto why = fbb.CreateString(o->reason);
    orders::FinishOrderCancelledBuffer(
        fbb, orders::CreateOrderCancelled(fbb, id, email, lines, o->total_cents, why, o->updated_us));
  }

  pl::Effects effects(ctx);
  effects.Put(OrderKey(o->id), EncodeOrder(*o));
  effects.Delete(StatusKey(old, o->id));
  effects.Put(StatusKey(o->status, o->id), "");
  effects.Publish({.topic = pl::kOrderEvents,
                   .key = o->id,
                   .type = reserved ? pl::kOrderConfirmed : pl::kOrderCancelled,
                   .payload = sdk::Bytes(fbb),
                   .correlation_id = o->id});
  if (effects.failed()) return effects.Retry();
  return sdk::Result::Ok();
}

// Commands are requests whose clients wait: take the newest. Events feed a state machine that must see
// every one of them: start at the earliest, so a subscription created after the first order still
// gets its outcome.
const sluice_subscription kSubscriptions[] = {
    {"order.commands", "order-commands", SLUICE_START_LATEST, SLUICE_ORDERING_NONE, 0, 0, pl::kPipelinePrefetch},
    {"inventory.events", "order-inventory", SLUICE_START_EARLIEST, SLUICE_ORDERING_KEY, 0, 0, pl::kPipelinePrefetch},
};
const char* const kPublishes[] = {"order.events"};

}  // namespace
}  // namespace sluice::order_plugin

SLUICE_PLUGIN(sluice::order_plugin::OrderPlugin, "order", "1.0.0", sluice::order_plugin::kSubscriptions,
              sluice::order_plugin::kPublishes)

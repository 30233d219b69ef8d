// SPDX-License-Identifier: MIT
//
// The order plugin (plugins/order) through the fake host: placement, validation, idempotency,
// deterministic ids, the PENDING -> CONFIRMED/CANCELLED state machine and the queries. Single-threaded.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "orders_messages.h"
#include "plugins/testing/fake_host.h"

namespace sluice::testing {
namespace {

using orders::OrderStatus;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::unique_ptr<FakeHost> LoadOrder(const std::string& config = "{}") {
  auto host = FakeHost::Load(SLUICE_PLUGIN_PATH, config);
  EXPECT_TRUE(host.ok()) << host.status().ToString();
  return host.ok() ? std::move(host.value()) : nullptr;
}

InMessage Place(const std::string& email, const std::vector<ItemSpec>& items,
                const std::string& idempotency_key = "") {
  return Request("order.commands", "orders.PlaceOrder", PlaceOrderPayload(email, items, idempotency_key));
}

struct Placed {
  Outcome outcome;
  std::string order_id;
  OrderStatus status = OrderStatus::UNKNOWN;
  std::string error_field;
  std::string error_message;
};

Placed Submit(FakeHost& host, const InMessage& m, Commit commit = Commit::kNormal) {
  Placed p;
  p.outcome = host.Handle(m, commit);
  if (!p.outcome.reply) return p;
  EXPECT_EQ(p.outcome.reply->type, "orders.PlaceOrderReply");
  Parsed<orders::PlaceOrderReply> r(p.outcome.reply->payload, orders::PlaceOrderReplyIdentifier());
  EXPECT_TRUE(r);
  if (!r) return p;
  p.order_id = Str(r->order_id());
  p.status = r->status();
  if (r->error() != nullptr) {
    p.error_field = Str(r->error()->field());
    p.error_message = Str(r->error()->message());
  }
  return p;
}

std::string PlaceOk(FakeHost& host, const std::vector<ItemSpec>& items = {{"SKU-1", 2, 1250}}) {
  Placed p = Submit(host, Place("ann@example.com", items));
  EXPECT_TRUE(p.outcome.committed) << p.outcome.reason;
  EXPECT_EQ(p.error_field, "") << p.error_message;
  return p.order_id;
}

Outcome Inventory(FakeHost& host, const std::string& type, const std::string& id,
                  const std::string& reason = "") {
  std::string payload =
      type == "orders.InventoryReserved" ? InventoryReservedPayload(id) : InventoryFailedPayload(id, reason);
  return host.Handle(Event("inventory.events", type, id, payload));
}

OrderStatus StoredStatus(FakeHost& host, const std::string& id) {
  auto stored = host.Committed("order/" + id);
  if (!stored) return OrderStatus::UNKNOWN;
  Parsed<orders::OrderView> v(*stored, orders::OrderViewIdentifier());
  return v ? v->status() : OrderStatus::UNKNOWN;
}

TEST(OrderPlugin, DescriptorDeclaresItsSubscriptionsAndTopics) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  const sluice_plugin& d = host->descriptor();
  EXPECT_STREQ(d.name, "order");
  ASSERT_EQ(d.n_subscriptions, 2u);
  EXPECT_STREQ(d.subscriptions[0].topic, "order.commands");
  EXPECT_STREQ(d.subscriptions[0].name, "order-commands");
  EXPECT_STREQ(d.subscriptions[1].topic, "inventory.events");
  EXPECT_STREQ(d.subscriptions[1].name, "order-inventory");
  EXPECT_EQ(d.subscriptions[1].ordering, SLUICE_ORDERING_KEY);
  ASSERT_EQ(d.n_publishes, 1u);
  EXPECT_STREQ(d.publishes[0], "order.events");
}

TEST(OrderPlugin, PlaceOrderStoresPendingPublishesCreatedAndReplies) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  Placed p = Submit(*host, Place("ann@example.com", {{"SKU-1", 2, 1250}, {"SKU-2", 1, 499}}));
  ASSERT_TRUE(p.outcome.committed) << p.outcome.reason;
  EXPECT_EQ(p.error_field, "");
  EXPECT_THAT(p.order_id, StartsWith("ord-"));
  EXPECT_EQ(p.order_id.size(), 4u + 24u);
  EXPECT_EQ(p.status, OrderStatus::PENDING);

  // The order and its OrderCreated are one bundle.
  EXPECT_EQ(StoredStatus(*host, p.order_id), OrderStatus::PENDING);
  EXPECT_TRUE(host->Committed("status/PENDING/" + p.order_id));
  ASSERT_EQ(p.outcome.published.size(), 1u);
  const OutMessage& ev = p.outcome.published[0];
  EXPECT_EQ(ev.topic, "order.events");
  EXPECT_EQ(ev.type, "orders.OrderCreated");
  EXPECT_EQ(ev.key, p.order_id);
  EXPECT_EQ(ev.correlation_id, p.order_id);
  Parsed<orders::OrderCreated> created(ev.payload, orders::OrderCreatedIdentifier());
  ASSERT_TRUE(created);
  EXPECT_EQ(Str(created->order_id()), p.order_id);
  EXPECT_EQ(Str(created->email()), "ann@example.com");
  EXPECT_EQ(created->total_cents(), 2 * 1250 + 499);
  EXPECT_EQ(created->created_us(), host->now_us());
  ASSERT_EQ(created->items()->size(), 2u);
  EXPECT_EQ(Str(created->items()->Get(1)->sku()), "SKU-2");
  EXPECT_EQ(created->items()->Get(1)->unit_price_cents().value_or(-1), 499);

  Parsed<orders::PlaceOrderReply> reply(p.outcome.reply->payload, orders::PlaceOrderReplyIdentifier());
  EXPECT_EQ(reply->total_cents(), 2999);
}

TEST(OrderPlugin, OrderIdIsAFunctionOfTheMessageId) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  InMessage m = Place("ann@example.com", {{"SKU-1", 1, 100}});
  m.id = host->NextId();

  // A worker that died before its bundle committed: nothing happened, and the re-run makes the same id.
  Placed crashed = Submit(*host, m, Commit::kCrashBeforeCommit);
  EXPECT_FALSE(crashed.outcome.committed);
  EXPECT_TRUE(host->kv().empty());
  EXPECT_TRUE(host->published().empty());

  Placed first = Submit(*host, m);
  ASSERT_TRUE(first.outcome.committed);
  auto again = FakeHost::Load(SLUICE_PLUGIN_PATH);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(Submit(**again, m).order_id, first.order_id);

  // The same request delivered again (a client resending its message id) gets the same answer and
  // creates nothing new.
  Placed repeat = Submit(*host, m);
  EXPECT_EQ(repeat.order_id, first.order_id);
  EXPECT_TRUE(repeat.outcome.published.empty());
  EXPECT_EQ(host->PublishedOn("order.events").size(), 1u);

  // Ids made in the same millisecond differ.
  std::set<std::string> ids{first.order_id};
  for (int i = 0; i < 200; ++i) ids.insert(PlaceOk(*host));
  EXPECT_EQ(ids.size(), 201u);
}

struct BadInput {
  const char* name;
  std::string email;
  std::vector<ItemSpec> items;
  std::string idempotency_key;
  std::string field;
  std::string message_part;
};

std::vector<ItemSpec> ManyItems(int n) {
  std::vector<ItemSpec> items;
  for (int i = 0; i < n; ++i) items.push_back({"SKU-" + std::to_string(i), 1, 1});
  return items;
}

TEST(OrderPlugin, BadInputGetsAnErrorNamingTheFieldAndNothingIsStoredOrPublished) {
  const std::string mega(1 << 20, 'a');
  const std::vector<ItemSpec> ok_items = {{"SKU-1", 1, 100}};
  const std::vector<BadInput> cases = {
      {"no email", "", ok_items, "", "email", "required"},
      {"no at", "ann.example.com", ok_items, "", "email", "'@'"},
      {"two ats", "ann@x@example.com", ok_items, "", "email", "'@'"},
      {"no domain dot", "ann@localhost", ok_items, "", "email", "two labels"},
      {"space", "ann smith@example.com", ok_items, "", "email", "not allowed"},
      {"header injection", "ann@example.com\r\nBcc: all@example.com", ok_items, "", "email", ""},
      {"1 MB email", mega + "@example.com", ok_items, "", "email", "254"},
      {"zero items", "ann@example.com", {}, "", "items", "at least one"},
      {"101 items", "ann@example.com", ManyItems(101), "", "items", "at most 100"},
      {"negative quantity", "ann@example.com", {{"SKU-1", -1, 100}}, "", "items[0].quantity", "-1"},
      {"zero quantity",
       "ann@example.com",
       {{"SKU-1", 1, 1}, {"SKU-2", 0, 1}},
       "",
       "items[1].quantity",
       "at least 1"},
      {"huge quantity",
       "ann@example.com",
       {{"SKU-1", 1'000'001, 1}},
       "",
       "items[0].quantity",
       "at most 1000000"},
      {"negative price", "ann@example.com", {{"SKU-1", 1, -5}}, "", "items[0].unit_price_cents", "negative"},
      {"empty sku", "ann@example.com", {{"", 1, 1}}, "", "items[0].sku", "required"},
      {"bad sku", "ann@example.com", {{"SKU 1", 1, 1}}, "", "items[0].sku", "A-Z"},
      {"1 MB sku", "ann@example.com", {{mega, 1, 1}}, "", "items[0].sku", "64"},
      {"1 MB idempotency key", "ann@example.com", ok_items, mega, "idempotency_key", "200"},
  };
  for (const BadInput& c : cases) {
    SCOPED_TRACE(c.name);
    auto host = LoadOrder();
    ASSERT_TRUE(host);
    Placed p = Submit(*host, Place(c.email, c.items, c.idempotency_key));
    EXPECT_TRUE(p.outcome.ok()) << "an answered request is acked: " << p.outcome.reason;
    ASSERT_TRUE(p.outcome.reply) << "a bad request gets an error reply";
    EXPECT_EQ(p.error_field, c.field);
    EXPECT_THAT(p.error_message, HasSubstr(c.message_part));
    EXPECT_EQ(p.order_id, "");
    EXPECT_TRUE(host->kv().empty()) << "nothing stored";
    EXPECT_TRUE(host->published().empty()) << "nothing published";
  }
}

TEST(OrderPlugin, APayloadThatIsNotAPlaceOrderIsRefusedAsPayload) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  for (const std::string& payload : {std::string("garbage, not a flatbuffer"), GetOrderPayload("x")}) {
    Placed p = Submit(*host, Request("order.commands", "orders.PlaceOrder", payload));
    EXPECT_EQ(p.error_field, "payload");
    EXPECT_TRUE(host->kv().empty());
    EXPECT_TRUE(host->published().empty());
  }
}

TEST(OrderPlugin, ARepeatedIdempotencyKeyReturnsTheFirstOrder) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  Placed first = Submit(*host, Place("ann@example.com", {{"SKU-1", 1, 100}}, "cart-42"));
  ASSERT_EQ(first.error_field, "");
  Placed second = Submit(*host, Place("ann@example.com", {{"SKU-1", 1, 100}}, "cart-42"));
  EXPECT_EQ(second.order_id, first.order_id);
  EXPECT_EQ(second.status, OrderStatus::PENDING);
  EXPECT_TRUE(second.outcome.published.empty());
  EXPECT_EQ(host->PublishedOn("order.events").size(), 1u);

  // After the order moved on, the repeat reports where it is now.
  ASSERT_TRUE(Inventory(*host, "orders.InventoryReserved", first.order_id).ok());
  Placed third = Submit(*host, Place("ann@example.com", {{"SKU-1", 1, 100}}, "cart-42"));
  EXPECT_EQ(third.order_id, first.order_id);
  EXPECT_EQ(third.status, OrderStatus::CONFIRMED);

  Placed other = Submit(*host, Place("ann@example.com", {{"SKU-1", 1, 100}}, "cart-43"));
  EXPECT_NE(other.order_id, first.order_id);
}

TEST(OrderPlugin, WithACatalogUnknownSkusAreRefusedAndPricesComeFromIt) {
  auto host = LoadOrder(R"({"catalog": {"SKU-1": 1250, "SKU-2": 499}})");
  ASSERT_TRUE(host);
  Placed unknown = Submit(*host, Place("ann@example.com", {{"SKU-1", 1, {}}, {"SKU-9", 1, {}}}));
  EXPECT_EQ(unknown.error_field, "items[1].sku");
  EXPECT_THAT(unknown.error_message, HasSubstr("unknown SKU 'SKU-9'"));
  EXPECT_TRUE(host->kv().empty());

  Placed wrong_price = Submit(*host, Place("ann@example.com", {{"SKU-1", 1, 1000}}));
  EXPECT_EQ(wrong_price.error_field, "items[0].unit_price_cents");
  EXPECT_THAT(wrong_price.error_message, HasSubstr("12.50"));

  Placed ok = Submit(*host, Place("ann@example.com", {{"SKU-1", 2, {}}, {"SKU-2", 1, 499}}));
  ASSERT_EQ(ok.error_field, "") << ok.error_message;
  Parsed<orders::OrderCreated> created(ok.outcome.published.at(0).payload, orders::OrderCreatedIdentifier());
  EXPECT_EQ(created->total_cents(), 2 * 1250 + 499);
  EXPECT_EQ(created->items()->Get(0)->unit_price_cents().value_or(-1), 1250);
}

TEST(OrderPlugin, WithoutACatalogAnySkuIsAcceptedAndAMissingPriceIsZero) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  Placed p = Submit(*host, Place("ann@example.com", {{"NO-SUCH-SKU", 3, {}}}));
  EXPECT_EQ(p.error_field, "");
  EXPECT_EQ(p.status, OrderStatus::PENDING);
  Parsed<orders::PlaceOrderReply> reply(p.outcome.reply->payload, orders::PlaceOrderReplyIdentifier());
  EXPECT_EQ(reply->total_cents(), 0);
}

TEST(OrderPlugin, ABadConfigRefusesToStart) {
  for (const char* config : {R"({"catalog": 5})", R"({"catalog": {"bad sku": 1}})",
                             R"({"catalog": {"SKU-1": -1}})", R"({"catalog": {"SKU-1": "12.50"}})"}) {
    auto host = FakeHost::Load(SLUICE_PLUGIN_PATH, config);
    EXPECT_FALSE(host.ok()) << config;
  }
}

TEST(OrderPlugin, InventoryReservedConfirmsThePendingOrder) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  std::string id = PlaceOk(*host);
  host->Advance(5'000);
  Outcome o = Inventory(*host, "orders.InventoryReserved", id);
  ASSERT_TRUE(o.committed) << o.reason;
  EXPECT_EQ(StoredStatus(*host, id), OrderStatus::CONFIRMED);
  EXPECT_FALSE(host->Committed("status/PENDING/" + id));
  EXPECT_TRUE(host->Committed("status/CONFIRMED/" + id));
  ASSERT_EQ(o.published.size(), 1u);
  EXPECT_EQ(o.published[0].type, "orders.OrderConfirmed");
  EXPECT_EQ(o.published[0].key, id);
  EXPECT_EQ(o.published[0].correlation_id, id);
  Parsed<orders::OrderConfirmed> ev(o.published[0].payload, orders::OrderConfirmedIdentifier());
  ASSERT_TRUE(ev);
  EXPECT_EQ(Str(ev->email()), "ann@example.com");
  EXPECT_EQ(ev->total_cents(), 2500);
  EXPECT_EQ(ev->confirmed_us(), host->now_us());
}

TEST(OrderPlugin, InventoryFailedCancelsWithTheReason) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  std::string id = PlaceOk(*host);
  Outcome o =
      Inventory(*host, "orders.InventoryFailed", id, "insufficient stock: SKU-1 (requested 2, available 1)");
  ASSERT_TRUE(o.committed);
  EXPECT_EQ(StoredStatus(*host, id), OrderStatus::CANCELLED);
  ASSERT_EQ(o.published.size(), 1u);
  EXPECT_EQ(o.published[0].type, "orders.OrderCancelled");
  Parsed<orders::OrderCancelled> ev(o.published[0].payload, orders::OrderCancelledIdentifier());
  ASSERT_TRUE(ev);
  EXPECT_THAT(Str(ev->reason()), HasSubstr("insufficient stock: SKU-1"));
  EXPECT_EQ(Str(ev->email()), "ann@example.com");

  Outcome view = host->Handle(Request("order.commands", "orders.GetOrder", GetOrderPayload(id)));
  Parsed<orders::OrderView> v(view.reply->payload, orders::OrderViewIdentifier());
  EXPECT_EQ(v->status(), OrderStatus::CANCELLED);
  EXPECT_THAT(Str(v->reason()), HasSubstr("insufficient stock"));
}

TEST(OrderPlugin, ATransitionOutOfAFinalStateIsIgnoredAndLogged) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  std::string id = PlaceOk(*host);
  ASSERT_TRUE(Inventory(*host, "orders.InventoryReserved", id).committed);
  auto before = host->Committed("order/" + id);

  // A redelivered outcome and a contradicting one: neither changes the order or publishes again.
  for (const char* type : {"orders.InventoryReserved", "orders.InventoryFailed"}) {
    Outcome o = Inventory(*host, type, id, "late");
    EXPECT_TRUE(o.ok());
    EXPECT_TRUE(o.published.empty()) << type;
    EXPECT_TRUE(o.writes.empty()) << type;
  }
  EXPECT_EQ(host->Committed("order/" + id), before);
  EXPECT_EQ(host->PublishedOn("order.events").size(), 2u);  // OrderCreated, OrderConfirmed
  EXPECT_TRUE(host->Logged("is CONFIRMED already"));
}

TEST(OrderPlugin, AnOutcomeForAnUnknownOrderIsAckedAndLogged) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  Outcome o = Inventory(*host, "orders.InventoryReserved", "ord-000000000000000000000000");
  EXPECT_TRUE(o.ok());
  EXPECT_TRUE(host->published().empty());
  EXPECT_TRUE(host->Logged("unknown order"));

  Outcome garbage = host->Handle(Event("inventory.events", "orders.InventoryReserved", "x", "junk"));
  EXPECT_EQ(garbage.outcome, SLUICE_REJECT);
}

TEST(OrderPlugin, GetOrderAnswersWithTheViewOrAnError) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  std::string id = PlaceOk(*host);
  Outcome o = host->Handle(Request("order.commands", "orders.GetOrder", GetOrderPayload(id)));
  ASSERT_TRUE(o.reply);
  EXPECT_EQ(o.reply->type, "orders.OrderView");
  Parsed<orders::OrderView> v(o.reply->payload, orders::OrderViewIdentifier());
  ASSERT_TRUE(v);
  EXPECT_EQ(Str(v->order_id()), id);
  EXPECT_EQ(v->status(), OrderStatus::PENDING);
  EXPECT_EQ(v->items()->size(), 1u);
  EXPECT_EQ(v->error(), nullptr);

  for (const std::string& bad : {std::string("ord-nope"), std::string(""), std::string(5000, 'x')}) {
    Outcome missing = host->Handle(Request("order.commands", "orders.GetOrder", GetOrderPayload(bad)));
    ASSERT_TRUE(missing.reply);
    Parsed<orders::OrderView> e(missing.reply->payload, orders::OrderViewIdentifier());
    ASSERT_TRUE(e);
    ASSERT_NE(e->error(), nullptr);
    EXPECT_EQ(Str(e->error()->field()), "order_id");
  }
}

std::vector<std::string> ListIds(FakeHost& host, OrderStatus status, uint32_t limit, const std::string& after,
                                 std::string* next) {
  Outcome o =
      host.Handle(Request("order.commands", "orders.ListOrders", ListOrdersPayload(status, limit, after)));
  EXPECT_TRUE(o.reply);
  if (!o.reply) return {};
  EXPECT_EQ(o.reply->type, "orders.OrderList");
  Parsed<orders::OrderList> list(o.reply->payload, orders::OrderListIdentifier());
  EXPECT_TRUE(list);
  std::vector<std::string> ids;
  if (list->orders() != nullptr) {
    for (const auto* v : *list->orders()) {
      if (status != OrderStatus::UNKNOWN) {
        EXPECT_EQ(v->status(), status);
      }
      ids.push_back(Str(v->order_id()));
    }
  }
  if (next != nullptr) *next = Str(list->next_after());
  return ids;
}

TEST(OrderPlugin, ListOrdersFiltersByStatusAndPages) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(PlaceOk(*host));
    host->Advance(1'000);  // one order per millisecond: ids sort in creation order
  }
  ASSERT_TRUE(Inventory(*host, "orders.InventoryReserved", ids[1]).committed);
  ASSERT_TRUE(Inventory(*host, "orders.InventoryFailed", ids[3], "no").committed);

  std::string next;
  EXPECT_EQ(ListIds(*host, OrderStatus::PENDING, 0, "", &next),
            (std::vector<std::string>{ids[0], ids[2], ids[4]}));
  EXPECT_EQ(next, "");
  EXPECT_EQ(ListIds(*host, OrderStatus::CONFIRMED, 0, "", nullptr), (std::vector<std::string>{ids[1]}));
  EXPECT_EQ(ListIds(*host, OrderStatus::CANCELLED, 0, "", nullptr), (std::vector<std::string>{ids[3]}));

  // All orders, two per page.
  std::vector<std::string> seen;
  std::string after;
  for (int page = 0; page < 5; ++page) {
    auto got = ListIds(*host, OrderStatus::UNKNOWN, 2, after, &next);
    seen.insert(seen.end(), got.begin(), got.end());
    if (next.empty()) break;
    after = next;
  }
  EXPECT_EQ(seen, ids);

  Outcome bad = host->Handle(
      Request("order.commands", "orders.ListOrders", ListOrdersPayload(static_cast<OrderStatus>(9))));
  Parsed<orders::OrderList> list(bad.reply->payload, orders::OrderListIdentifier());
  ASSERT_NE(list->error(), nullptr);
  EXPECT_EQ(Str(list->error()->field()), "status");
}

TEST(OrderPlugin, CommandsMustBeRequestsOfAKnownType) {
  auto host = LoadOrder();
  ASSERT_TRUE(host);
  InMessage not_request = Place("ann@example.com", {{"SKU-1", 1, 1}});
  not_request.is_request = false;
  EXPECT_EQ(host->Handle(not_request).outcome, SLUICE_REJECT);
  EXPECT_EQ(host->Handle(Request("order.commands", "orders.Nonsense", "x")).outcome, SLUICE_REJECT);
  EXPECT_TRUE(host->kv().empty());
}

}  // namespace
}  // namespace sluice::testing

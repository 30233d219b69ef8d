// SPDX-License-Identifier: MIT
//
// The inventory plugin (plugins/inventory) through the fake host: initial stock from config, all-or-
// nothing reservations, redelivery, release on cancellation, and the stock commands. Single-threaded.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "orders_messages.h"
#include "plugins/testing/fake_host.h"

namespace sluice::testing {
namespace {

using ::testing::HasSubstr;

constexpr const char* kConfig = R"({"stock": {"SKU-1": 10, "SKU-2": 3}})";

std::unique_ptr<FakeHost> LoadInventory(const std::string& config = kConfig) {
  auto host = FakeHost::Load(SLUICE_PLUGIN_PATH, config);
  EXPECT_TRUE(host.ok()) << host.status().ToString();
  return host.ok() ? std::move(host.value()) : nullptr;
}

InMessage Created(const std::string& id, const std::vector<ItemSpec>& items) {
  return Event("order.events", "orders.OrderCreated", id,
               OrderCreatedPayload(id, "ann@example.com", items, 1));
}

InMessage Cancelled(const std::string& id, const std::vector<ItemSpec>& items) {
  return Event("order.events", "orders.OrderCancelled", id,
               OrderCancelledPayload(id, "ann@example.com", items, "because"));
}

struct StockRow {
  int64_t available;
  int64_t reserved;
  bool operator==(const StockRow&) const = default;
};

std::map<std::string, StockRow> ShowStock(FakeHost& host, const std::string& sku = "",
                                          std::string* error_field = nullptr) {
  Outcome o = host.Handle(Request("inventory.commands", "orders.ShowStock", ShowStockPayload(sku)));
  EXPECT_TRUE(o.reply);
  if (!o.reply) return {};
  EXPECT_EQ(o.reply->type, "orders.StockList");
  Parsed<orders::StockList> list(o.reply->payload, orders::StockListIdentifier());
  EXPECT_TRUE(list);
  std::map<std::string, StockRow> rows;
  if (list->items() != nullptr) {
    for (const auto* e : *list->items()) rows[Str(e->sku())] = {e->available(), e->reserved()};
  }
  if (error_field != nullptr) *error_field = list->error() ? Str(list->error()->field()) : "";
  return rows;
}

TEST(InventoryPlugin, DescriptorDeclaresItsSubscriptionsAndTopics) {
  auto host = LoadInventory();
  ASSERT_TRUE(host);
  const sluice_plugin& d = host->descriptor();
  EXPECT_STREQ(d.name, "inventory");
  ASSERT_EQ(d.n_subscriptions, 2u);
  EXPECT_STREQ(d.subscriptions[0].topic, "order.events");
  EXPECT_STREQ(d.subscriptions[0].name, "inventory");
  EXPECT_EQ(d.subscriptions[0].ordering, SLUICE_ORDERING_KEY);
  EXPECT_STREQ(d.subscriptions[1].topic, "inventory.commands");
  EXPECT_STREQ(d.subscriptions[1].name, "inventory-commands");
  ASSERT_EQ(d.n_publishes, 1u);
  EXPECT_STREQ(d.publishes[0], "inventory.events");
  // OrderConfirmed moves no stock: the broker acks it without waking the plugin.
  using Types = std::map<size_t, std::vector<std::string>>;
  EXPECT_EQ(host->subscription_types(),
            (Types{{0, {"orders.OrderCreated", "orders.OrderCancelled"}}}));
}

TEST(InventoryPlugin, InitialStockIsAppliedOnTheFirstHandlerOnlyForUnstoredSkus) {
  auto host = LoadInventory();
  ASSERT_TRUE(host);
  EXPECT_TRUE(host->kv().empty()) << "init has no keyspace access";
  EXPECT_EQ(ShowStock(*host), (std::map<std::string, StockRow>{{"SKU-1", {10, 0}}, {"SKU-2", {3, 0}}}));
  ASSERT_TRUE(host->Committed("init/done"));

  // Stock changed at run time survives a restart, and a config that adds a SKU adds only that one.
  ASSERT_TRUE(
      host->Handle(Request("inventory.commands", "orders.SetStock", SetStockPayload("SKU-1", 4))).committed);
  auto restarted = FakeHost::Load(SLUICE_PLUGIN_PATH, R"({"stock": {"SKU-1": 10, "SKU-2": 3, "SKU-3": 7}})");
  ASSERT_TRUE(restarted.ok());
  (*restarted)->kv() = host->kv();
  EXPECT_EQ(ShowStock(**restarted),
            (std::map<std::string, StockRow>{{"SKU-1", {4, 0}}, {"SKU-2", {3, 0}}, {"SKU-3", {7, 0}}}));
  // The log says what was and was not taken from the config.
  EXPECT_TRUE((*restarted)->Logged("initial stock: 1 of the 3 SKUs in config stored"));
}

TEST(InventoryPlugin, InitialStockFromADiscardedHandlerIsAppliedAgain) {
  auto host = LoadInventory();
  ASSERT_TRUE(host);
  // The first handler's bundle never commits (its worker died): the next one must still apply it.
  host->Handle(Created("ord-1", {{"SKU-1", 1, 100}}), Commit::kCrashBeforeCommit);
  EXPECT_TRUE(host->kv().empty());
  EXPECT_EQ(ShowStock(*host, "SKU-1")["SKU-1"], (StockRow{10, 0}));
}

TEST(InventoryPlugin, ReservesEveryItemAndPublishesInventoryReserved) {
  auto host = LoadInventory();
  ASSERT_TRUE(host);
  // Two lines of one SKU count together.
  Outcome o = host->Handle(Created("ord-1", {{"SKU-1", 2, 100}, {"SKU-2", 3, 50}, {"SKU-1", 1, 100}}));
  ASSERT_TRUE(o.committed) << o.reason;
  ASSERT_EQ(o.published.size(), 1u);
  const OutMessage& ev = o.published[0];
  EXPECT_EQ(ev.topic, "inventory.events");
  EXPECT_EQ(ev.type, "orders.InventoryReserved");
  EXPECT_EQ(ev.key, "ord-1");
  EXPECT_EQ(ev.correlation_id, "ord-1");
  Parsed<orders::InventoryReserved> r(ev.payload, orders::InventoryReservedIdentifier());
  ASSERT_TRUE(r);
  EXPECT_EQ(Str(r->order_id()), "ord-1");
  ASSERT_EQ(r->items()->size(), 2u);
  EXPECT_EQ(r->items()->Get(0)->quantity(), 3);
  EXPECT_EQ(ShowStock(*host), (std::map<std::string, StockRow>{{"SKU-1", {7, 3}}, {"SKU-2", {0, 3}}}));
}

TEST(InventoryPlugin, ReservesNothingWhenOneSkuIsShort) {
  auto host = LoadInventory();
  ASSERT_TRUE(host);
  Outcome o = host->Handle(Created("ord-2", {{"SKU-1", 2, 100}, {"SKU-2", 5, 50}, {"SKU-404", 1, 1}}));
  ASSERT_TRUE(o.committed);
  ASSERT_EQ(o.published.size(), 1u);
  EXPECT_EQ(o.published[0].type, "orders.InventoryFailed");
  EXPECT_EQ(o.published[0].key, "ord-2");
  Parsed<orders::InventoryFailed> f(o.published[0].payload, orders::InventoryFailedIdentifier());
  ASSERT_TRUE(f);
  EXPECT_EQ(Str(f->order_id()), "ord-2");
  ASSERT_EQ(f->short_items()->size(), 2u);
  EXPECT_EQ(Str(f->short_items()->Get(0)->sku()), "SKU-2");
  EXPECT_EQ(f->short_items()->Get(0)->requested(), 5);
  EXPECT_EQ(f->short_items()->Get(0)->available(), 3);
  EXPECT_EQ(Str(f->short_items()->Get(1)->sku()), "SKU-404");
  EXPECT_EQ(f->short_items()->Get(1)->available(), 0);
  EXPECT_THAT(Str(f->reason()), HasSubstr("insufficient stock: SKU-2 (requested 5, available 3)"));
  EXPECT_THAT(Str(f->reason()), HasSubstr("unknown sku: SKU-404"));
  // All or nothing: SKU-1 had enough and was not touched.
  EXPECT_EQ(ShowStock(*host), (std::map<std::string, StockRow>{{"SKU-1", {10, 0}}, {"SKU-2", {3, 0}}}));
}

TEST(InventoryPlugin, ARedeliveredOrderCreatedNeverReservesTwice) {
  auto host = LoadInventory();
  ASSERT_TRUE(host);
  InMessage m = Created("ord-3", {{"SKU-1", 4, 100}});
  m.id = host->NextId();
  ASSERT_TRUE(host->Handle(m).committed);
  InMessage again = m;
  again.delivery_count = 2;
  Outcome o = host->Handle(again);
  EXPECT_TRUE(o.ok());
  EXPECT_TRUE(o.published.empty());
  // Another delivery of the same order under a new message id changes nothing either.
  EXPECT_TRUE(host->Handle(Created("ord-3", {{"SKU-1", 4, 100}})).published.empty());
  EXPECT_EQ(ShowStock(*host, "SKU-1")["SKU-1"], (StockRow{6, 4}));
  EXPECT_EQ(host->PublishedOn("inventory.events").size(), 1u);
}

TEST(InventoryPlugin, StockArithmeticStaysExactOverManyOrders) {
  auto host = LoadInventory(R"({"stock": {"SKU-1": 100}})");
  ASSERT_TRUE(host);
  int reserved = 0;
  int failed = 0;
  for (int i = 0; i < 60; ++i) {
    Outcome o = host->Handle(Created("ord-" + std::to_string(i), {{"SKU-1", 1 + i % 3, 1}}));
    ASSERT_TRUE(o.committed);
    (o.published.at(0).type == "orders.InventoryReserved" ? reserved : failed) += 1;
  }
  StockRow row = ShowStock(*host, "SKU-1")["SKU-1"];
  EXPECT_EQ(row.available + row.reserved, 100);
  EXPECT_LT(row.available, 3);  // it ran dry
  EXPECT_GT(failed, 0);
  EXPECT_EQ(reserved + failed, 60);
}

TEST(InventoryPlugin, OrderCancelledReleasesAReservationExactlyOnce) {
  auto host = LoadInventory();
  ASSERT_TRUE(host);
  ASSERT_TRUE(host->Handle(Created("ord-4", {{"SKU-1", 4, 100}, {"SKU-2", 1, 1}})).committed);
  EXPECT_EQ(ShowStock(*host)["SKU-1"], (StockRow{6, 4}));
  for (int i = 0; i < 2; ++i) {  // the second is a redelivery
    Outcome o = host->Handle(Cancelled("ord-4", {}));
    EXPECT_TRUE(o.committed);
    EXPECT_TRUE(o.published.empty());
  }
  EXPECT_EQ(ShowStock(*host), (std::map<std::string, StockRow>{{"SKU-1", {10, 0}}, {"SKU-2", {3, 0}}}));
}

TEST(InventoryPlugin, CancellingAFailedOrderReleasesNothing) {
  auto host = LoadInventory();
  ASSERT_TRUE(host);
  ASSERT_TRUE(host->Handle(Created("ord-5", {{"SKU-2", 9, 1}})).committed);
  ASSERT_TRUE(host->Handle(Cancelled("ord-5", {})).committed);
  EXPECT_EQ(ShowStock(*host)["SKU-2"], (StockRow{3, 0}));
}

TEST(InventoryPlugin, ACancellationBeforeItsOrderMeansTheOrderReservesNothing) {
  auto host = LoadInventory();
  ASSERT_TRUE(host);
  ASSERT_TRUE(host->Handle(Cancelled("ord-6", {})).committed);
  Outcome o = host->Handle(Created("ord-6", {{"SKU-1", 1, 1}}));
  EXPECT_TRUE(o.published.empty());
  EXPECT_EQ(ShowStock(*host)["SKU-1"], (StockRow{10, 0}));
}

TEST(InventoryPlugin, OtherEventsAndBadPayloads) {
  auto host = LoadInventory();
  ASSERT_TRUE(host);
  Outcome confirmed = host->Handle(Event("order.events", "orders.OrderConfirmed", "ord-1",
                                         OrderConfirmedPayload("ord-1", "ann@example.com", {})));
  EXPECT_TRUE(confirmed.ok());
  EXPECT_TRUE(confirmed.published.empty());
  Outcome garbage = host->Handle(Event("order.events", "orders.OrderCreated", "ord-1", "junk"));
  EXPECT_EQ(garbage.outcome, SLUICE_REJECT);
  EXPECT_TRUE(host->published().empty());
  // An OrderCreated the order plugin would never send still gets an outcome, so its order settles.
  Outcome invalid = host->Handle(Created("ord-7", {{"SKU-1", 0, 1}}));
  ASSERT_EQ(invalid.published.size(), 1u);
  EXPECT_EQ(invalid.published[0].type, "orders.InventoryFailed");
}

TEST(InventoryPlugin, SetStockAndShowStock) {
  auto host = LoadInventory();
  ASSERT_TRUE(host);
  ASSERT_TRUE(host->Handle(Created("ord-8", {{"SKU-1", 4, 1}})).committed);
  Outcome set = host->Handle(Request("inventory.commands", "orders.SetStock", SetStockPayload("SKU-1", 50)));
  ASSERT_TRUE(set.reply);
  Parsed<orders::StockList> one(set.reply->payload, orders::StockListIdentifier());
  ASSERT_TRUE(one);
  ASSERT_EQ(one->items()->size(), 1u);
  EXPECT_EQ(one->items()->Get(0)->available(), 50);
  EXPECT_EQ(one->items()->Get(0)->reserved(), 4) << "reservations held stay held";
  ASSERT_TRUE(
      host->Handle(Request("inventory.commands", "orders.SetStock", SetStockPayload("NEW-9", 2))).committed);
  EXPECT_EQ(ShowStock(*host),
            (std::map<std::string, StockRow>{{"NEW-9", {2, 0}}, {"SKU-1", {50, 4}}, {"SKU-2", {3, 0}}}));

  std::string field;
  EXPECT_TRUE(ShowStock(*host, "NOPE", &field).empty());
  EXPECT_EQ(field, "sku");
  for (const auto& [sku, qty, want] : std::vector<std::tuple<std::string, int64_t, std::string>>{
           {"bad sku", 1, "sku"}, {"SKU-1", -1, "quantity"}}) {
    Outcome bad = host->Handle(Request("inventory.commands", "orders.SetStock", SetStockPayload(sku, qty)));
    ASSERT_TRUE(bad.reply);
    Parsed<orders::StockList> e(bad.reply->payload, orders::StockListIdentifier());
    ASSERT_NE(e->error(), nullptr);
    EXPECT_EQ(Str(e->error()->field()), want);
    EXPECT_TRUE(bad.writes.empty() || !bad.writes.count("stock/" + sku));
  }
  EXPECT_EQ(ShowStock(*host, "SKU-1")["SKU-1"], (StockRow{50, 4}));
}

TEST(InventoryPlugin, ABadConfigRefusesToStart) {
  for (const char* config : {R"({"stock": []})", R"({"stock": {"SKU 1": 1}})", R"({"stock": {"SKU-1": -3}})",
                             R"({"stock": {"SKU-1": 1.5}})"}) {
    EXPECT_FALSE(FakeHost::Load(SLUICE_PLUGIN_PATH, config).ok()) << config;
  }
}

}  // namespace
}  // namespace sluice::testing

// SPDX-License-Identifier: MIT
//
// The acceptance scenario of DESIGN.md against the real daemon with the four order pipeline plugins:
// an instant PENDING reply, confirmation, cancellation with its mail, Inventory down while 200 orders
// arrive, the analytics drop-in backfilling, kill -9 in the middle of 1,000 orders, and bad input.
// Orders are placed as a storefront would, with Request frames on the broker socket; the state is read
// back through the plugins' own queries, the Maildir and sluicectl.
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "orders_generated.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/plugins/orders_messages.h"

#ifndef SLUICE_PLUGIN_BUILD_DIR
#error "SLUICE_PLUGIN_BUILD_DIR must name the plugins' build folder"
#endif

namespace sluice::testing {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;
using nlohmann::json;

constexpr int64_t kStockSku1 = 1000000;
constexpr int64_t kStockSku2 = 5;

std::string PluginTable(const std::string& name, const std::string& config) {
  return fmt::format("[[plugin]]\nname = \"{}\"\npath = \"{}/{}/{}.so\"\nconfig = {}\n", name,
                     SLUICE_PLUGIN_BUILD_DIR, name, name, config);
}

// Topics keep acked messages for an hour so `trace` can tell an order's story.
std::string PipelineConfig(bool with_analytics = false) {
  std::string c =
      "[[topic]]\nname = \"order.events\"\nretention_max_age = \"1h\"\n"
      "[[topic]]\nname = \"inventory.events\"\nretention_max_age = \"1h\"\n" +
      PluginTable("order", "{ catalog = { \"SKU-1\" = 1250, \"SKU-2\" = 499, \"SKU-OUT\" = 100 } }") +
      PluginTable("inventory", fmt::format("{{ stock = {{ \"SKU-1\" = {}, \"SKU-2\" = {}, \"SKU-OUT\" = 0 }} }}",
                                           kStockSku1, kStockSku2)) +
      PluginTable("notification", "{ send_confirmation = false, from = \"shop@example.com\" }");
  if (with_analytics) c += PluginTable("analytics", "{}");
  return c;
}

struct Placed {
  std::string order_id;
  orders::OrderStatus status = orders::OrderStatus::UNKNOWN;
  std::string error_field;
  std::string error_message;
};

template <typename T>
const T* Verified(const std::string& payload, const char* id) {
  flatbuffers::Verifier v(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  if (!v.VerifyBuffer<T>(id)) return nullptr;
  return flatbuffers::GetRoot<T>(payload.data());
}

Result<std::string> Ask(client::Connection& c, const std::string& topic, const std::string& type,
                        const std::string& payload, std::chrono::milliseconds timeout = 10s) {
  client::OutMessage m;
  m.topic = topic;
  m.type = type;
  m.payload = payload;
  auto r = c.Request(m, timeout);
  if (!r.ok()) return r.status();
  if (!r->error.empty()) return Status(StatusCode::kInvalidArgument, r->error);
  return r->payload;
}

Placed Place(client::Connection& c, const std::string& email, const std::vector<ItemSpec>& items,
             const std::string& idem = "") {
  Placed p;
  auto r = Ask(c, "order.commands", "orders.PlaceOrder", PlaceOrderPayload(email, items, idem));
  if (!r.ok()) {
    p.error_message = r.status().ToString();
    return p;
  }
  const auto* reply = Verified<orders::PlaceOrderReply>(*r, orders::PlaceOrderReplyIdentifier());
  if (reply == nullptr) {
    p.error_message = "reply is not a PlaceOrderReply";
    return p;
  }
  p.order_id = Str(reply->order_id());
  p.status = reply->status();
  if (reply->error()) {
    p.error_field = Str(reply->error()->field());
    p.error_message = Str(reply->error()->message());
  }
  return p;
}

orders::OrderStatus StatusOf(client::Connection& c, const std::string& id) {
  auto r = Ask(c, "order.commands", "orders.GetOrder", GetOrderPayload(id));
  if (!r.ok()) return orders::OrderStatus::UNKNOWN;
  const auto* v = Verified<orders::OrderView>(*r, orders::OrderViewIdentifier());
  return v && !v->error() ? v->status() : orders::OrderStatus::UNKNOWN;
}

// order id -> status of every order, read page by page; `sku1` gets each order's SKU-1 quantity.
std::map<std::string, orders::OrderStatus> AllOrders(client::Connection& c,
                                                     std::map<std::string, int64_t>* sku1 = nullptr) {
  std::map<std::string, orders::OrderStatus> out;
  std::string after;
  for (int page = 0; page < 1000; ++page) {
    auto r = Ask(c, "order.commands", "orders.ListOrders",
                 ListOrdersPayload(orders::OrderStatus::UNKNOWN, 200, after));
    if (!r.ok()) break;
    const auto* l = Verified<orders::OrderList>(*r, orders::OrderListIdentifier());
    if (l == nullptr || l->orders() == nullptr) break;
    for (const auto* o : *l->orders()) {
      out[Str(o->order_id())] = o->status();
      if (sku1 == nullptr || o->items() == nullptr) continue;
      for (const auto* item : *o->items()) {
        if (Str(item->sku()) == "SKU-1") (*sku1)[Str(o->order_id())] += item->quantity();
      }
    }
    after = Str(l->next_after());
    if (after.empty()) break;
  }
  return out;
}

std::pair<int64_t, int64_t> Stock(client::Connection& c, const std::string& sku,
                                  std::chrono::milliseconds timeout = 10s) {
  auto r = Ask(c, "inventory.commands", "orders.ShowStock", ShowStockPayload(sku), timeout);
  if (!r.ok()) return {-1, -1};
  const auto* l = Verified<orders::StockList>(*r, orders::StockListIdentifier());
  if (l == nullptr || l->items() == nullptr || l->items()->size() != 1) return {-1, -1};
  return {l->items()->Get(0)->available(), l->items()->Get(0)->reserved()};
}

// Every mail in the notification plugin's Maildir: file contents by name.
std::map<std::string, std::string> Mails(const DaemonProcess& d) {
  std::map<std::string, std::string> out;
  auto dir = d.data_dir() / "plugins" / "notification" / "Maildir" / "new";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::ifstream in(e.path());
    std::stringstream ss;
    ss << in.rdbuf();
    out[e.path().filename().string()] = ss.str();
  }
  return out;
}

size_t MailsMentioning(const DaemonProcess& d, const std::string& text) {
  size_t n = 0;
  for (const auto& [name, body] : Mails(d)) n += body.find(text) != std::string::npos;
  return n;
}

// WaitUntil with more time: a step of the pipeline waits on three plugins.
bool Eventually(const std::function<bool()>& done, std::chrono::milliseconds timeout = 30s) {
  return WaitUntil(done, timeout);
}

bool Final(orders::OrderStatus s) {
  return s == orders::OrderStatus::CONFIRMED || s == orders::OrderStatus::CANCELLED;
}

class PipelineTest : public ::testing::Test {
 protected:
  void StartDaemon(bool with_analytics = false) {
    d_ = std::make_unique<DaemonProcess>(PipelineConfig(with_analytics));
    ASSERT_TRUE(d_->Start());
    auto c = d_->Connect("storefront");
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    conn_ = std::move(*c);
    // The plugins are up once inventory answers a query. A query sent before Inventory subscribed to
    // its commands (from the latest) is never delivered: ask again soon rather than wait out 10 s.
    ASSERT_TRUE(Eventually([&] { return Stock(*conn_, "SKU-1", 500ms).first >= 0; })) << d_->Log();
  }
  std::unique_ptr<DaemonProcess> d_;
  std::unique_ptr<client::Connection> conn_;
};

TEST_F(PipelineTest, OrderIsPendingAtOnceThenConfirmedWithAThankYouMail) {
  StartDaemon();
  Placed p = Place(*conn_, "ann@example.com", {{"SKU-1", 2}});
  ASSERT_FALSE(p.order_id.empty()) << p.error_message;
  // The reply comes before any other service ran: the order is PENDING in it.
  EXPECT_EQ(p.status, orders::OrderStatus::PENDING);
  EXPECT_TRUE(Eventually([&] { return StatusOf(*conn_, p.order_id) == orders::OrderStatus::CONFIRMED; }))
      << d_->Log();
  EXPECT_TRUE(Eventually([&] { return MailsMentioning(*d_, p.order_id) == 1; }));
  auto mails = Mails(*d_);
  ASSERT_FALSE(mails.empty());
  EXPECT_THAT(mails.begin()->second, HasSubstr("Thank you for your order"));
  EXPECT_EQ(Stock(*conn_, "SKU-1"), (std::pair<int64_t, int64_t>{kStockSku1 - 2, 2}));
  // OrderConfirmed reached neither inventory nor notification (without send_confirmation): the broker
  // acked it for them.
  for (const char* sub : {"inventory", "notification"}) {
    EXPECT_TRUE(Eventually([&] { return Subscription(*d_, "order.events", sub).value("filtered", 0) == 1; }))
        << Subscription(*d_, "order.events", sub);
  }

  // sluicectl tells the same story: the order, and its trace across services.
  CommandResult show = d_->Ctl({"--broker-socket", d_->broker_socket().string(), "order", "show", p.order_id});
  EXPECT_EQ(show.exit_code, 0) << show.err;
  EXPECT_THAT(show.out, HasSubstr("CONFIRMED"));
  CommandResult trace = d_->Ctl({"--json", "trace", p.order_id});
  ASSERT_EQ(trace.exit_code, 0) << trace.err;
  std::vector<std::string> types, sources;
  json story = json::parse(trace.out);
  for (const auto& m : story["messages"]) {
    types.push_back(m["type"]);
    sources.push_back(m["source"]);
  }
  EXPECT_THAT(types, ::testing::Contains("orders.OrderCreated"));
  EXPECT_THAT(types, ::testing::Contains("orders.InventoryReserved"));
  EXPECT_THAT(types, ::testing::Contains("orders.OrderConfirmed"));
  EXPECT_THAT(sources, ::testing::Contains("inventory"));
  trace = d_->Ctl({"trace", p.order_id});
  EXPECT_EQ(trace.exit_code, 0) << trace.err;
  EXPECT_THAT(trace.out, HasSubstr("orders.InventoryReserved"));
  // The request and the bundles that answered it are timed.
  CommandResult metrics = d_->Ctl({"metrics"});
  ASSERT_EQ(metrics.exit_code, 0) << metrics.err;
  for (const char* series : {"sluice_request_seconds_count", "sluice_bundle_seconds_count"}) {
    EXPECT_GE(MetricValue("\n" + metrics.out, series), 1) << series;
  }
  // Nothing stored under an id: status 1 and a message, as grep finds nothing.
  trace = d_->Ctl({"trace", "ord-000000000000000000000000"});
  EXPECT_EQ(trace.exit_code, 1);
  EXPECT_THAT(trace.err, HasSubstr("no stored message has correlation id ord-000000000000000000000000"));
  EXPECT_EQ(trace.out, "");
  trace = d_->Ctl({"--json", "trace", "ord-000000000000000000000000"});
  EXPECT_EQ(trace.exit_code, 1);
  EXPECT_TRUE(json::parse(trace.out)["messages"].empty()) << trace.out;
}

TEST_F(PipelineTest, InsufficientStockCancelsWithACancellationMail) {
  StartDaemon();
  Placed p = Place(*conn_, "bob@example.com", {{"SKU-OUT", 1}});
  ASSERT_FALSE(p.order_id.empty()) << p.error_message;
  EXPECT_TRUE(Eventually([&] { return StatusOf(*conn_, p.order_id) == orders::OrderStatus::CANCELLED; }))
      << d_->Log();
  // The thank-you mail and the cancellation mail.
  EXPECT_TRUE(Eventually([&] { return MailsMentioning(*d_, p.order_id) == 2; }));
  size_t cancellations = 0;
  for (const auto& [name, body] : Mails(*d_)) {
    if (body.find(p.order_id) != std::string::npos && body.find("cancel") != std::string::npos) ++cancellations;
  }
  EXPECT_EQ(cancellations, 1u);
}

TEST_F(PipelineTest, InventoryDownOrdersAcceptedAndMailedThenAllSettleWithExactStock) {
  StartDaemon();
  CommandResult unload = d_->Ctl({"plugin", "unload", "inventory"});
  ASSERT_EQ(unload.exit_code, 0) << unload.err;
  std::vector<std::string> ids;
  int64_t sku2_wanted = 0;
  for (int i = 0; i < 200; ++i) {
    // Every tenth order wants SKU-2, of which there are only 5: most of those must be cancelled.
    std::vector<ItemSpec> items = {{"SKU-1", 1 + i % 3}};
    if (i % 10 == 0) {
      items.push_back({"SKU-2", 1});
      ++sku2_wanted;
    }
    Placed p = Place(*conn_, fmt::format("customer{}@example.com", i), items);
    ASSERT_EQ(p.status, orders::OrderStatus::PENDING) << i << ": " << p.error_message;
    ids.push_back(p.order_id);
  }
  // Accepted and mailed at once, none confirmed while Inventory is away.
  EXPECT_TRUE(Eventually([&] { return Mails(*d_).size() >= 200; })) << Mails(*d_).size();
  auto before = AllOrders(*conn_);
  for (const auto& id : ids) EXPECT_EQ(before[id], orders::OrderStatus::PENDING) << id;

  CommandResult load = d_->Ctl({"plugin", "load", "inventory"});
  ASSERT_EQ(load.exit_code, 0) << load.err;
  std::map<std::string, orders::OrderStatus> after;
  EXPECT_TRUE(Eventually(
      [&] {
        after = AllOrders(*conn_);
        return std::all_of(ids.begin(), ids.end(), [&](const std::string& id) { return Final(after[id]); });
      },
      60s))
      << d_->Log();
  // Stock arithmetic: what confirmed orders took is exactly what left the shelves.
  int64_t sku1_confirmed = 0, sku2_confirmed = 0;
  for (int i = 0; i < 200; ++i) {
    if (after[ids[static_cast<size_t>(i)]] != orders::OrderStatus::CONFIRMED) continue;
    sku1_confirmed += 1 + i % 3;
    if (i % 10 == 0) ++sku2_confirmed;
  }
  EXPECT_EQ(sku2_confirmed, std::min<int64_t>(kStockSku2, sku2_wanted));
  EXPECT_EQ(Stock(*conn_, "SKU-1"), (std::pair<int64_t, int64_t>{kStockSku1 - sku1_confirmed, sku1_confirmed}));
  EXPECT_EQ(Stock(*conn_, "SKU-2"), (std::pair<int64_t, int64_t>{kStockSku2 - sku2_confirmed, sku2_confirmed}));
}

TEST_F(PipelineTest, AnalyticsDropInBackfillsToTheOrderCounts) {
  StartDaemon();
  for (int i = 0; i < 30; ++i) {
    Placed p = Place(*conn_, "dana@example.com", {{i % 5 == 0 ? "SKU-OUT" : "SKU-1", 1}});
    ASSERT_FALSE(p.order_id.empty()) << p.error_message;
  }
  std::map<std::string, orders::OrderStatus> all;
  ASSERT_TRUE(Eventually([&] {
    all = AllOrders(*conn_);
    return all.size() == 30 && std::all_of(all.begin(), all.end(), [](const auto& kv) { return Final(kv.second); });
  }));
  // Dropped in and loaded without restarting anything or touching Order.
  std::filesystem::create_directories(d_->dir() / "plugins.d");
  std::ofstream(d_->dir() / "plugins.d" / "analytics.toml") << PluginTable("analytics", "{}");
  CommandResult load = d_->Ctl({"plugin", "load", "analytics"});
  ASSERT_EQ(load.exit_code, 0) << load.err;
  int64_t confirmed = std::count_if(all.begin(), all.end(), [](const auto& kv) { return kv.second == orders::OrderStatus::CONFIRMED; });
  int64_t cancelled = static_cast<int64_t>(all.size()) - confirmed;
  const orders::AnalyticsReport* report = nullptr;
  std::string payload;
  EXPECT_TRUE(Eventually([&] {
    // Short: a query sent before the drop-in subscribed is never delivered (as in StartDaemon).
    auto r = Ask(*conn_, "analytics.commands", "orders.AnalyticsQuery", AnalyticsQueryPayload(10), 500ms);
    if (!r.ok()) return false;
    payload = *r;
    report = Verified<orders::AnalyticsReport>(payload, orders::AnalyticsReportIdentifier());
    return report && report->orders() == 30 && report->confirmed() == confirmed && report->cancelled() == cancelled;
  })) << (report ? fmt::format("analytics: {} orders, {} confirmed", report->orders(), report->confirmed()) : "");
  CommandResult table = d_->Ctl({"--broker-socket", d_->broker_socket().string(), "analytics"});
  EXPECT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("SKU-1"));
}

TEST_F(PipelineTest, BadInputIsRefusedByFieldAndNothingIsStored) {
  StartDaemon();
  CommandResult topics_before = d_->Ctl({"--json", "topics"});
  struct Case {
    std::string email;
    std::vector<ItemSpec> items;
    std::string field;
  };
  std::vector<Case> cases = {
      {"not-an-email", {{"SKU-1", 1}}, "email"},
      {"ann@example.com", {}, "items"},
      {"ann@example.com", {{"SKU-1", -3}}, "quantity"},
      {std::string(1 << 20, 'a') + "@example.com", {{"SKU-1", 1}}, "email"},
      {"ann@example.com", {{"SKU-NOPE", 1}}, "sku"},
  };
  for (const auto& c : cases) {
    Placed p = Place(*conn_, c.email, c.items);
    EXPECT_TRUE(p.order_id.empty()) << c.field;
    // A 1 MB field may be refused by the broker's size limit before the plugin sees it: either way
    // the error names what is wrong.
    std::string said = p.error_field + " " + p.error_message;
    EXPECT_THAT(said, ::testing::AnyOf(HasSubstr(c.field), HasSubstr("max_message_bytes"),
                                       HasSubstr("max_frame_bytes")))
        << said;
  }
  EXPECT_TRUE(AllOrders(*conn_).empty());
  auto events_seq = [&](const std::string& out) -> int64_t {
    json parsed = json::parse(out);
    for (const auto& t : parsed["topics"]) {
      if (t["name"] == "order.events") return t["last_seq"].get<int64_t>();
    }
    return 0;
  };
  CommandResult topics_after = d_->Ctl({"--json", "topics"});
  EXPECT_EQ(events_seq(topics_after.out), events_seq(topics_before.out));
}

// kill -9 in the middle of 1,000 orders: every accepted order reaches a final state exactly once, the
// stock arithmetic is exact, and every order has exactly one thank-you mail.
TEST_F(PipelineTest, KillNineMidwayLosesAndDuplicatesNothing) {
  StartDaemon();
  std::mutex mu;
  std::vector<std::pair<std::string, int>> accepted;  // order id, SKU-1 quantity
  std::atomic<bool> killed{false};
  std::thread storefront([&] {
    auto c = d_->Connect("storefront-2");
    if (!c.ok()) return;
    for (int i = 0; i < 1000 && !killed.load(); ++i) {
      Placed p = Place(**c, fmt::format("k{}@example.com", i), {{"SKU-1", 1 + i % 4}});
      if (p.order_id.empty()) break;
      std::lock_guard lock(mu);
      accepted.emplace_back(p.order_id, 1 + i % 4);
    }
  });
  ASSERT_TRUE(Eventually([&] {
    std::lock_guard lock(mu);
    return accepted.size() >= 300;
  }));
  d_->Kill();
  killed = true;
  storefront.join();
  conn_.reset();
  ASSERT_TRUE(d_->Start()) << d_->Log();
  auto c = d_->Connect("storefront-3");
  ASSERT_TRUE(c.ok());
  conn_ = std::move(*c);

  std::map<std::string, orders::OrderStatus> all;
  std::map<std::string, int64_t> sku1;
  ASSERT_TRUE(Eventually(
      [&] {
        sku1.clear();
        all = AllOrders(*conn_, &sku1);
        return !all.empty() && std::all_of(all.begin(), all.end(), [](const auto& kv) { return Final(kv.second); });
      },
      90s))
      << d_->Log();
  for (const auto& [id, qty] : accepted) {
    ASSERT_TRUE(all.count(id)) << "accepted order " << id << " was lost";
    EXPECT_EQ(sku1[id], qty) << id;
  }
  // Orders whose reply the kill swallowed may exist too; they count like the others. Each confirmed
  // order reserved its quantity exactly once, and nothing else moved stock.
  int64_t taken = 0;
  for (const auto& [id, status] : all) {
    if (status == orders::OrderStatus::CONFIRMED) taken += sku1[id];
  }
  EXPECT_EQ(Stock(*conn_, "SKU-1"), (std::pair<int64_t, int64_t>{kStockSku1 - taken, taken}));
  // One thank-you mail per order (a resend after the crash rewrites the same file: same event id).
  ASSERT_TRUE(Eventually([&] { return Mails(*d_).size() >= all.size(); }));
  for (const auto& [id, status] : all) EXPECT_EQ(MailsMentioning(*d_, id), 1u) << id;
}

}  // namespace
}  // namespace sluice::testing

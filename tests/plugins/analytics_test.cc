// SPDX-License-Identifier: MIT
//
// The analytics plugin (plugins/analytics) through the fake host: counts, revenue and units per SKU,
// orders per minute, idempotence under redelivery and replay, and the AnalyticsQuery answer.
// Single-threaded.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "orders_messages.h"
#include "plugins/testing/fake_host.h"

namespace sluice::testing {
namespace {

constexpr int64_t kMinute = 60'000'000;

std::unique_ptr<FakeHost> LoadAnalytics(const std::string& config = "{}") {
  auto host = FakeHost::Load(SLUICE_PLUGIN_PATH, config);
  EXPECT_TRUE(host.ok()) << host.status().ToString();
  return host.ok() ? std::move(host.value()) : nullptr;
}

struct Report {
  int64_t orders = 0, confirmed = 0, cancelled = 0, pending = 0, revenue = 0, units = 0;
  std::map<std::string, std::vector<int64_t>> skus;  // units, revenue, orders
  std::vector<std::pair<int64_t, int64_t>> per_minute;
  std::string error_field;
};

Report Query(FakeHost& host, uint32_t minutes = 10, const std::string& payload = "") {
  Outcome o = host.Handle(Request("analytics.commands", "orders.AnalyticsQuery",
                                  payload.empty() ? AnalyticsQueryPayload(minutes) : payload));
  Report r;
  EXPECT_TRUE(o.reply);
  if (!o.reply) return r;
  EXPECT_EQ(o.reply->type, "orders.AnalyticsReport");
  EXPECT_TRUE(o.writes.empty()) << "a query changes nothing";
  Parsed<orders::AnalyticsReport> rep(o.reply->payload, orders::AnalyticsReportIdentifier());
  EXPECT_TRUE(rep);
  if (!rep) return r;
  if (rep->error() != nullptr) r.error_field = Str(rep->error()->field());
  r.orders = rep->orders();
  r.confirmed = rep->confirmed();
  r.cancelled = rep->cancelled();
  r.pending = rep->pending();
  r.revenue = rep->revenue_cents();
  r.units = rep->units();
  if (rep->skus() != nullptr) {
    for (const auto* s : *rep->skus()) r.skus[Str(s->sku())] = {s->units(), s->revenue_cents(), s->orders()};
  }
  if (rep->per_minute() != nullptr) {
    for (const auto* m : *rep->per_minute()) r.per_minute.emplace_back(m->minute_start_us(), m->orders());
  }
  return r;
}

// The events of a small day: ord-1 and ord-2 confirmed, ord-3 cancelled, ord-4 pending.
std::vector<InMessage> Story(int64_t now) {
  const std::vector<ItemSpec> a = {{"SKU-1", 2, 1250}, {"SKU-2", 1, 499}};
  const std::vector<ItemSpec> b = {{"SKU-1", 1, 1250}, {"SKU-1", 3, 1250}};
  const std::vector<ItemSpec> c = {{"SKU-3", 5, 100}};
  auto created = [](const std::string& id, const std::vector<ItemSpec>& items, int64_t at) {
    return Event("order.events", "orders.OrderCreated", id,
                 OrderCreatedPayload(id, "ann@example.com", items, at));
  };
  return {
      created("ord-1", a, now - 3 * kMinute),
      created("ord-2", b, now - 3 * kMinute + 1),
      created("ord-3", c, now - 1 * kMinute),
      created("ord-4", c, now),
      Event("order.events", "orders.OrderConfirmed", "ord-1",
            OrderConfirmedPayload("ord-1", "ann@example.com", a)),
      Event("order.events", "orders.OrderConfirmed", "ord-2",
            OrderConfirmedPayload("ord-2", "ann@example.com", b)),
      Event("order.events", "orders.OrderCancelled", "ord-3",
            OrderCancelledPayload("ord-3", "ann@example.com", c, "insufficient stock")),
  };
}

void ExpectStoryCounts(const Report& r, int64_t now) {
  EXPECT_EQ(r.orders, 4);
  EXPECT_EQ(r.confirmed, 2);
  EXPECT_EQ(r.cancelled, 1);
  EXPECT_EQ(r.pending, 1);
  EXPECT_EQ(r.revenue, (2 * 1250 + 499) + 4 * 1250);
  EXPECT_EQ(r.units, 3 + 4);
  EXPECT_EQ(r.skus, (std::map<std::string, std::vector<int64_t>>{{"SKU-1", {6, 6 * 1250, 2}},
                                                                 {"SKU-2", {1, 499, 1}}}));
  int64_t this_minute = now / kMinute * kMinute;
  ASSERT_EQ(r.per_minute.size(), 5u);
  EXPECT_EQ(r.per_minute.front().first, this_minute - 4 * kMinute);
  EXPECT_EQ(r.per_minute.back().first, this_minute);
  std::vector<int64_t> counts;
  for (const auto& [start, n] : r.per_minute) counts.push_back(n);
  EXPECT_EQ(counts, (std::vector<int64_t>{0, 2, 0, 1, 1}));
}

TEST(AnalyticsPlugin, ConfigKeysAreCheckedAndUnknownOnesReported) {
  auto host = LoadAnalytics(R"({"keep_minuts": 30})");
  ASSERT_TRUE(host);
  EXPECT_TRUE(host->Logged("config: unknown key 'keep_minuts' ignored"));
  EXPECT_FALSE(FakeHost::Load(SLUICE_PLUGIN_PATH, R"({"keep_minutes": 0})").ok());
  EXPECT_FALSE(FakeHost::Load(SLUICE_PLUGIN_PATH, R"([1])").ok()) << "config must be a table";
}

TEST(AnalyticsPlugin, DescriptorBackfillsFromTheEarliestEvent) {
  auto host = LoadAnalytics();
  ASSERT_TRUE(host);
  const sluice_plugin& d = host->descriptor();
  EXPECT_STREQ(d.name, "analytics");
  ASSERT_EQ(d.n_subscriptions, 2u);
  EXPECT_STREQ(d.subscriptions[0].topic, "order.events");
  EXPECT_STREQ(d.subscriptions[0].name, "analytics");
  EXPECT_EQ(d.subscriptions[0].start, SLUICE_START_EARLIEST);
  EXPECT_STREQ(d.subscriptions[1].topic, "analytics.commands");
  EXPECT_STREQ(d.subscriptions[1].name, "analytics-commands");
  EXPECT_EQ(d.n_publishes, 0u);
}

TEST(AnalyticsPlugin, CountsOrdersRevenueUnitsAndOrdersPerMinute) {
  auto host = LoadAnalytics();
  ASSERT_TRUE(host);
  int64_t now = host->now_us();
  Report empty = Query(*host, 5);
  EXPECT_EQ(empty.orders, 0);
  EXPECT_EQ(empty.per_minute.size(), 5u);
  for (const InMessage& m : Story(now)) ASSERT_TRUE(host->Handle(m).committed);
  ExpectStoryCounts(Query(*host, 5), now);
}

TEST(AnalyticsPlugin, RedeliveredAndReplayedEventsCountOnce) {
  auto host = LoadAnalytics();
  ASSERT_TRUE(host);
  int64_t now = host->now_us();
  std::vector<InMessage> story = Story(now);
  for (InMessage& m : story) {
    m.id = host->NextId();
    ASSERT_TRUE(host->Handle(m).committed);
  }
  // The same messages again (redelivery), and the same events under new ids (a replay).
  for (InMessage m : story) {
    m.delivery_count = 2;
    Outcome o = host->Handle(m);
    EXPECT_TRUE(o.ok());
    EXPECT_TRUE(o.writes.empty());
    m.id.reset();
    EXPECT_TRUE(host->Handle(m).writes.empty());
  }
  ExpectStoryCounts(Query(*host, 5), now);
}

TEST(AnalyticsPlugin, ACrashedHandlerCountsNothingAndItsRerunCountsOnce) {
  auto host = LoadAnalytics();
  ASSERT_TRUE(host);
  int64_t now = host->now_us();
  for (const InMessage& m : Story(now)) {
    host->Handle(m, Commit::kCrashBeforeCommit);
    ASSERT_TRUE(host->Handle(m).committed);
  }
  ExpectStoryCounts(Query(*host, 5), now);
}

TEST(AnalyticsPlugin, OutcomesBeforeTheirOrderStillCountOnce) {
  auto host = LoadAnalytics();
  ASSERT_TRUE(host);
  int64_t now = host->now_us();
  std::vector<InMessage> story = Story(now);
  std::reverse(story.begin(), story.end());
  for (const InMessage& m : story) ASSERT_TRUE(host->Handle(m).committed);
  ExpectStoryCounts(Query(*host, 5), now);
}

TEST(AnalyticsPlugin, OldMinuteBucketsArePruned) {
  auto host = LoadAnalytics(R"({"keep_minutes": 10})");
  ASSERT_TRUE(host);
  int64_t now = host->now_us();
  for (int i = 0; i < 30; ++i) {
    std::string id = "ord-" + std::to_string(i);
    ASSERT_TRUE(host->Handle(Event("order.events", "orders.OrderCreated", id,
                                   OrderCreatedPayload(id, "ann@example.com", {{"SKU-1", 1, 1}},
                                                       now - (29 - i) * kMinute)))
                    .committed);
  }
  size_t buckets = 0;
  for (const auto& [key, value] : host->kv()) buckets += key.rfind("m/", 0) == 0;
  EXPECT_LE(buckets, 11u);
  EXPECT_GE(buckets, 10u);
  Report r = Query(*host, 10);
  EXPECT_EQ(r.orders, 30);
  for (const auto& [start, n] : r.per_minute) EXPECT_EQ(n, 1);
}

TEST(AnalyticsPlugin, BadQueriesGetAnErrorAndBadEventsAreRejected) {
  auto host = LoadAnalytics();
  ASSERT_TRUE(host);
  EXPECT_EQ(Query(*host, 1441).error_field, "minutes");
  EXPECT_EQ(Query(*host, 0, "junk").error_field, "payload");
  InMessage not_request = Request("analytics.commands", "orders.AnalyticsQuery", AnalyticsQueryPayload(5));
  not_request.is_request = false;
  EXPECT_EQ(host->Handle(not_request).outcome, SLUICE_REJECT);
  EXPECT_EQ(host->Handle(Event("order.events", "orders.OrderCreated", "ord-1", "junk")).outcome,
            SLUICE_REJECT);
  EXPECT_TRUE(host->Handle(Event("order.events", "orders.SomethingNew", "ord-1", "")).ok());
  EXPECT_TRUE(host->kv().empty());
  EXPECT_FALSE(FakeHost::Load(SLUICE_PLUGIN_PATH, R"({"keep_minutes": 0})").ok());
}

}  // namespace
}  // namespace sluice::testing

// SPDX-License-Identifier: MIT
//
// The broker's semantic rules, tested against the Backend interface only (broker/backend.h), so a second
// backend can run the same tests by adding its factory to kFactories. Time is a fake Clock the tests
// advance; the libuv loop runs in bounded steps (a watchdog timer only guarantees a stuck test fails
// instead of hanging, it never decides an outcome). Each test ends by closing the backend and checking
// that the loop closes cleanly.
#include <stdlib.h>
#include <uv.h>

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include <gtest/gtest.h>

#include "broker/backend.h"
#include "broker/envelope.h"
#include "broker/store/lmdb_backend.h"

namespace sluice::broker {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class FakeClock final : public Clock {
 public:
  int64_t NowUs() const override { return now_us_; }
  void Advance(Duration d) { now_us_ += std::chrono::duration_cast<std::chrono::microseconds>(d).count(); }

 private:
  int64_t now_us_ = 1'700'000'000'000'000;
};

struct BackendFactory {
  std::string name;
  std::function<Result<std::unique_ptr<Backend>>(uv_loop_t*, const StoreOptions&, const Clock&)> open;
};

const BackendFactory kFactories[] = {
    {"lmdb", [](uv_loop_t* loop, const StoreOptions& o, const Clock& c) { return OpenLmdbBackend(loop, o, c); }},
};

struct Got {
  uint64_t consumer = 0;
  uint64_t delivery_id = 0;
  uint64_t seq = 0;
  uint32_t count = 0;
  std::string key;
  std::string payload;
  uint64_t reply_token = 0;
};

class Sink final : public ConsumerSink {
 public:
  void Deliver(const Delivery& d) override {
    std::string copy(d.envelope);  // heap storage: aligned for the FlatBuffer reader
    auto env = ReadEnvelope(copy);
    Got g{d.consumer_id, d.delivery_id, d.seq, d.delivery_count, "", "", d.reply_token};
    if (env.ok()) {
      if ((*env)->key()) g.key = (*env)->key()->str();
      if ((*env)->payload()) g.payload.assign(reinterpret_cast<const char*>((*env)->payload()->data()), (*env)->payload()->size());
      EXPECT_EQ((*env)->seq(), d.seq);
    } else {
      ADD_FAILURE() << "delivered envelope does not verify";
    }
    got.push_back(g);
    if (on_deliver) on_deliver();
  }
  std::vector<uint64_t> Seqs() const {
    std::vector<uint64_t> v;
    for (const Got& g : got) v.push_back(g.seq);
    return v;
  }
  std::vector<Got> got;
  std::function<void()> on_deliver;  // runs inside the backend's delivery, after `got` grew
};

class BackendSemanticsTest : public ::testing::TestWithParam<BackendFactory> {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    uv_timer_init(&loop_, &watchdog_);
    char tmpl[] = "/tmp/sluice-semantics-XXXXXX";
    dir_ = mkdtemp(tmpl);
    options_.data_dir = dir_;
    options_.broker.durability = Durability::kNone;
    options_.broker.map_size = 4 << 20;
  }

  void TearDown() override {
    CloseBackend();
    uv_close(reinterpret_cast<uv_handle_t*>(&watchdog_), nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle was left open";
    std::filesystem::remove_all(dir_);
  }

  void Open() {
    auto b = GetParam().open(&loop_, options_, clock_);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    backend_ = std::move(*b);
  }

  void CloseBackend() {
    if (!backend_) return;
    bool closed = false;
    backend_->Close([&] { closed = true; });
    EXPECT_TRUE(RunUntil([&] { return closed; }));
    backend_.reset();
  }

  void Reopen() {
    CloseBackend();
    Open();
  }

  // Runs the loop until `pred` holds, at most `max_steps` loop iterations.
  bool RunUntil(const std::function<bool()>& pred, int max_steps = 2000) {
    uv_timer_start(&watchdog_, [](uv_timer_t*) {}, 50, 50);
    bool ok = false;
    for (int i = 0; i < max_steps; ++i) {
      if (pred()) {
        ok = true;
        break;
      }
      uv_run(&loop_, UV_RUN_ONCE);
    }
    uv_timer_stop(&watchdog_);
    return ok;
  }

  // Waits until everything enqueued so far is committed and its callbacks and deliveries have run:
  // a publish to a private topic is the barrier (the writer applies ops in order).
  void Settle() {
    bool done = false;
    backend_->Publish(Request("zz-barrier", "", ""), [&](Result<PublishResult>) { done = true; });
    ASSERT_TRUE(RunUntil([&] { return done; }));
    for (int i = 0; i < 5; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
  }

  PublishRequest Request(const std::string& topic, const std::string& key, const std::string& payload,
                         std::optional<Uuid> id = std::nullopt, const std::string& type = "test.Message") {
    EnvelopeFields f;
    f.topic = topic;
    f.key = key;
    f.type = type;
    f.payload = payload;
    PublishRequest r;
    r.topic = topic;
    r.publish_time_us = clock_.NowUs();
    r.id = id ? *id : NewUuidV7(r.publish_time_us / 1000);
    r.dedupe = id.has_value();
    f.id = r.id;
    f.publish_time_us = r.publish_time_us;
    BuildEnvelope(f, &r.envelope);
    return r;
  }

  Result<PublishResult> Publish(const std::string& topic, const std::string& key = "",
                                const std::string& payload = "p", std::optional<Uuid> id = std::nullopt) {
    std::optional<Result<PublishResult>> out;
    backend_->Publish(Request(topic, key, payload, id), [&](Result<PublishResult> r) { out = std::move(r); });
    if (!RunUntil([&] { return out.has_value(); })) return Internal("publish did not complete");
    return std::move(*out);
  }

  // Publishes messages with these keys (payload = key + index) in one batch; returns their seqs.
  std::vector<uint64_t> PublishKeys(const std::string& topic, const std::vector<std::string>& keys) {
    std::vector<uint64_t> seqs(keys.size());
    size_t done = 0;
    for (size_t i = 0; i < keys.size(); ++i) {
      backend_->Publish(Request(topic, keys[i], keys[i] + std::to_string(i)), [&, i](Result<PublishResult> r) {
        EXPECT_TRUE(r.ok()) << r.status().ToString();
        if (r.ok()) seqs[i] = r->seq;
        ++done;
      });
    }
    EXPECT_TRUE(RunUntil([&] { return done == keys.size(); }));
    return seqs;
  }

  // Commits, for the delivery `d` of `consumer`, a bundle that publishes `payload` to `topic` (and
  // writes `writes`), and runs the loop until it is answered.
  Result<BundleResult> CommitBundlePublishing(uint64_t consumer, const Got& d, const std::string& topic,
                                              const std::string& payload, std::vector<KvMutation> writes = {}) {
    BundleRequest bundle;
    bundle.consumer_id = consumer;
    bundle.delivery_id = d.delivery_id;
    bundle.keyspace = "handler";
    bundle.version = 1;
    bundle.writes = std::move(writes);
    PublishRequest effect = Request(topic, "", payload);
    effect.dedupe = true;
    bundle.publishes.push_back(std::move(effect));
    std::optional<Result<BundleResult>> committed;
    backend_->CommitBundle(std::move(bundle), [&](Result<BundleResult> r) { committed = std::move(r); });
    if (!RunUntil([&] { return committed.has_value(); })) return Internal("the bundle was not answered");
    return std::move(*committed);
  }

  // Publishes a Request (a message with a reply token) and runs the loop a few passes, enough for a
  // direct delivery; its callback may run only once a consumer settles it.
  void PublishRequestTo(const std::string& topic, uint64_t reply_token,
                        std::optional<Result<PublishResult>>* out, std::optional<Uuid> id = std::nullopt) {
    PublishRequest r = Request(topic, "", "question", id);
    r.reply_token = reply_token;
    backend_->Publish(std::move(r), [out](Result<PublishResult> x) { *out = std::move(x); });
    for (int i = 0; i < 5; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
  }

  // Publishes one message per type in `types` (payload = type, key = `key`) in one batch.
  void PublishTypes(const std::string& topic, const std::vector<std::string>& types, const std::string& key = "") {
    size_t done = 0;
    for (const std::string& type : types) {
      backend_->Publish(Request(topic, key, type, std::nullopt, type), [&](Result<PublishResult> r) {
        EXPECT_TRUE(r.ok()) << r.status().ToString();
        ++done;
      });
    }
    EXPECT_TRUE(RunUntil([&] { return done == types.size(); }));
  }

  Result<uint64_t> TrySubscribe(const SubscribeSpec& spec, Sink* sink) {
    std::optional<Result<uint64_t>> out;
    backend_->Subscribe(spec, sink, [&](Result<uint64_t> r) { out = std::move(r); });
    if (!RunUntil([&] { return out.has_value(); })) return Internal("the subscribe was not answered");
    return std::move(*out);
  }

  std::vector<uint64_t> PublishN(const std::string& topic, size_t n) {
    return PublishKeys(topic, std::vector<std::string>(n, ""));
  }

  SubscriptionConfig Sub(const std::string& topic, const std::string& name) {
    SubscriptionConfig c;
    c.topic = topic;
    c.name = name;
    c.start = StartPointKind::kEarliest;
    return c;
  }

  uint64_t Subscribe(const SubscriptionConfig& c, Sink* sink, uint32_t credit) {
    std::optional<Result<uint64_t>> out;
    backend_->Subscribe(SubscribeSpec{c, credit}, sink, [&](Result<uint64_t> r) { out = std::move(r); });
    EXPECT_TRUE(RunUntil([&] { return out.has_value(); }));
    EXPECT_TRUE(out && out->ok()) << (out ? out->status().ToString() : "no answer");
    return out && out->ok() ? **out : 0;
  }

  void AckAll(Sink& sink, uint64_t consumer) {
    std::vector<uint64_t> ids;
    for (const Got& g : sink.got) ids.push_back(g.delivery_id);
    EXPECT_TRUE(backend_->Ack(consumer, ids).ok());
  }

  // Consumer `holder` of `c` (max_crashes = 2) holds its topic's one message and crashes; `second`
  // subscribes, gets it again and crashes too: the message is poison, and `third` never sees it.
  void CrashTwiceIntoPoison(const SubscriptionConfig& c, uint64_t holder, Sink* second, Sink* third) {
    uint64_t c2 = Subscribe(c, second, 1);
    backend_->Detach(holder, /*crashed=*/true);
    Settle();
    Settle();  // a direct request is stored first, then delivered
    ASSERT_EQ(second->got.size(), 1u) << "one crash: delivered again";
    Subscribe(c, third, 1);
    backend_->Detach(c2, /*crashed=*/true);
    Settle();
    EXPECT_TRUE(third->got.empty()) << "two crashes: poison, not delivered again";
    auto dead = backend_->ListDeadLetters(c.topic, c.name, 10);
    ASSERT_TRUE(dead.ok());
    ASSERT_EQ(dead->size(), 1u);
    EXPECT_EQ((*dead)[0].reason.rfind("poison", 0), 0u) << (*dead)[0].reason;
  }

  void Ack(uint64_t consumer, const Got& g) { EXPECT_TRUE(backend_->Ack(consumer, std::span(&g.delivery_id, 1)).ok()); }

  TopicInfo Topic(const std::string& name) {
    auto topics = backend_->ListTopics();
    EXPECT_TRUE(topics.ok());
    for (const TopicInfo& t : *topics) {
      if (t.name == name) return t;
    }
    ADD_FAILURE() << "no topic " << name;
    return {};
  }

  SubscriptionInfo SubInfo(const std::string& topic, const std::string& name) {
    auto subs = backend_->ListSubscriptions();
    EXPECT_TRUE(subs.ok());
    for (const SubscriptionInfo& s : *subs) {
      if (s.topic == topic && s.name == name) return s;
    }
    ADD_FAILURE() << "no subscription " << topic << "/" << name;
    return {};
  }

  uv_loop_t loop_;
  uv_timer_t watchdog_;
  std::filesystem::path dir_;
  StoreOptions options_;
  FakeClock clock_;
  std::unique_ptr<Backend> backend_;
};

TEST_P(BackendSemanticsTest, PublishAssignsPerTopicSequences) {
  Open();
  auto a1 = Publish("a");
  auto a2 = Publish("a");
  auto b1 = Publish("b");
  ASSERT_TRUE(a1.ok() && a2.ok() && b1.ok());
  EXPECT_EQ(a1->seq, 1u);
  EXPECT_EQ(a2->seq, 2u);
  EXPECT_EQ(b1->seq, 1u);
  EXPECT_FALSE(a1->duplicate);
  TopicInfo t = Topic("a");
  EXPECT_EQ(t.messages, 2u);
  EXPECT_EQ(t.last_seq, 2u);
}

TEST_P(BackendSemanticsTest, UnknownTopicIsRefusedWithoutAutoCreate) {
  options_.broker.auto_create_topics = false;
  options_.topics.push_back(TopicConfig{.name = "declared"});
  Open();
  EXPECT_TRUE(Publish("declared").ok());
  auto r = Publish("undeclared");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("undeclared"), std::string::npos);
}

TEST_P(BackendSemanticsTest, OversizedMessageIsRefused) {
  options_.broker.max_message_bytes = 200;
  Open();
  auto r = Publish("t", "", std::string(500, 'x'));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kLimitExceeded);
}

TEST_P(BackendSemanticsTest, FanOutToThreeSubscriptions) {
  Open();
  Sink s1, s2, s3;
  uint64_t c1 = Subscribe(Sub("orders", "inventory"), &s1, 100);
  uint64_t c2 = Subscribe(Sub("orders", "notification"), &s2, 100);
  uint64_t c3 = Subscribe(Sub("orders", "analytics"), &s3, 100);
  PublishN("orders", 10);
  Settle();
  std::vector<uint64_t> want = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(s1.Seqs(), want);
  EXPECT_EQ(s2.Seqs(), want);
  EXPECT_EQ(s3.Seqs(), want);
  AckAll(s1, c1);
  AckAll(s2, c2);
  Settle();
  EXPECT_EQ(Topic("orders").messages, 10u) << "analytics has not acked yet";
  AckAll(s3, c3);
  Settle();
  EXPECT_EQ(Topic("orders").messages, 0u) << "acked by every subscription and no retention";
}

TEST_P(BackendSemanticsTest, RatesCoverTheLastTenSecondsWhoeverAsks) {
  Open();
  Sink sink;
  uint64_t c = Subscribe(Sub("r", "s"), &sink, 100);
  backend_->RunTimers();  // the first sample: nothing published yet
  PublishN("r", 20);
  Settle();
  AckAll(sink, c);
  Settle();
  clock_.Advance(seconds(2));
  backend_->RunTimers();
  EXPECT_DOUBLE_EQ(Topic("r").publish_rate, 10.0);
  EXPECT_DOUBLE_EQ(Topic("r").publish_rate, 10.0) << "a second look sees the same window";
  EXPECT_DOUBLE_EQ(SubInfo("r", "s").ack_rate, 10.0);
  // Quiet for longer than the window: the rates fall to zero, not stay at their last value.
  for (int i = 0; i < 10; ++i) {
    clock_.Advance(seconds(1));
    backend_->RunTimers();
  }
  EXPECT_DOUBLE_EQ(Topic("r").publish_rate, 0.0);
  EXPECT_DOUBLE_EQ(SubInfo("r", "s").ack_rate, 0.0);
  // The wall clock steps back an hour: the rate starts over rather than staying 0 until it catches up.
  clock_.Advance(-std::chrono::hours(1));
  backend_->RunTimers();
  PublishN("r", 30);
  Settle();
  clock_.Advance(seconds(3));
  backend_->RunTimers();
  EXPECT_DOUBLE_EQ(Topic("r").publish_rate, 10.0);
}

TEST_P(BackendSemanticsTest, CompetingConsumersShareWithinCredit) {
  Open();
  Sink a, b;
  uint64_t ca = Subscribe(Sub("t", "s"), &a, 3);
  uint64_t cb = Subscribe(Sub("t", "s"), &b, 3);
  PublishN("t", 10);
  Settle();
  EXPECT_EQ(a.got.size(), 3u);
  EXPECT_EQ(b.got.size(), 3u);
  std::set<uint64_t> seen;
  for (const Got& g : a.got) seen.insert(g.seq);
  for (const Got& g : b.got) seen.insert(g.seq);
  EXPECT_EQ(seen.size(), 6u) << "no message went to both consumers";
  AckAll(a, ca);
  backend_->AddCredit(ca, 10);
  Settle();
  EXPECT_EQ(a.got.size(), 7u);
  EXPECT_EQ(b.got.size(), 3u);
  EXPECT_EQ(SubInfo("t", "s").in_flight, 7u);
  (void)cb;
}

TEST_P(BackendSemanticsTest, RedeliveryAfterLeaseExpiry) {
  Open();
  Sink sink;
  SubscriptionConfig c = Sub("t", "s");
  c.ack_wait = seconds(5);
  uint64_t id = Subscribe(c, &sink, 10);
  PublishN("t", 1);
  Settle();
  ASSERT_EQ(sink.got.size(), 1u);
  clock_.Advance(seconds(4));
  backend_->RunTimers();
  Settle();
  EXPECT_EQ(sink.got.size(), 1u) << "lease has not expired yet";
  clock_.Advance(seconds(2));
  backend_->RunTimers();
  Settle();
  ASSERT_EQ(sink.got.size(), 2u);
  EXPECT_EQ(sink.got[1].seq, 1u);
  EXPECT_EQ(sink.got[1].count, 2u);
  // The first lease is gone: acking it is ignored, acking the new one settles the message.
  Ack(id, sink.got[0]);
  EXPECT_EQ(SubInfo("t", "s").in_flight, 1u);
  Ack(id, sink.got[1]);
  EXPECT_EQ(SubInfo("t", "s").in_flight, 0u);
  EXPECT_EQ(SubInfo("t", "s").redelivered, 1u);
}

TEST_P(BackendSemanticsTest, RedeliveryAfterDetach) {
  Open();
  Sink a, b;
  uint64_t ca = Subscribe(Sub("t", "s"), &a, 10);
  PublishN("t", 3);
  Settle();
  ASSERT_EQ(a.got.size(), 3u);
  uint64_t cb = Subscribe(Sub("t", "s"), &b, 10);
  backend_->Detach(ca, /*crashed=*/false);
  Settle();
  ASSERT_EQ(b.got.size(), 3u);
  EXPECT_EQ(b.Seqs(), (std::vector<uint64_t>{1, 2, 3}));
  for (const Got& g : b.got) EXPECT_EQ(g.count, 2u);
  EXPECT_FALSE(backend_->Ack(ca, std::span(&a.got[0].delivery_id, 1)).ok()) << "detached consumer";
  AckAll(b, cb);
}

TEST_P(BackendSemanticsTest, CrashedConsumersMakeAMessagePoison) {
  Open();
  SubscriptionConfig c = Sub("t", "s");
  c.max_deliveries = 10;
  c.max_crashes = 2;
  Sink first, second, third;
  uint64_t c1 = Subscribe(c, &first, 1);
  PublishN("t", 1);
  Settle();
  ASSERT_EQ(first.got.size(), 1u);
  CrashTwiceIntoPoison(c, c1, &second, &third);
}

TEST_P(BackendSemanticsTest, NackFollowsBackoff) {
  Open();
  Sink sink;
  SubscriptionConfig c = Sub("t", "s");
  c.max_deliveries = 10;
  c.backoff = BackoffConfig{seconds(1), 2.0, seconds(3)};
  uint64_t id = Subscribe(c, &sink, 10);
  PublishN("t", 1);
  Settle();
  // Expected waits: 1 s, 2 s, then 4 s capped to 3 s.
  for (int64_t wait_ms : {1000, 2000, 3000}) {
    size_t before = sink.got.size();
    ASSERT_TRUE(backend_->Nack(id, sink.got.back().delivery_id, NackOptions{}).ok());
    clock_.Advance(milliseconds(wait_ms - 1));
    backend_->RunTimers();
    Settle();
    EXPECT_EQ(sink.got.size(), before) << "redelivered before the backoff of " << wait_ms << " ms";
    clock_.Advance(milliseconds(1));
    backend_->RunTimers();
    Settle();
    ASSERT_EQ(sink.got.size(), before + 1) << "not redelivered after " << wait_ms << " ms";
    EXPECT_EQ(sink.got.back().count, before + 1);
  }
}

TEST_P(BackendSemanticsTest, NackWithExplicitDelay) {
  Open();
  Sink sink;
  uint64_t id = Subscribe(Sub("t", "s"), &sink, 10);
  PublishN("t", 1);
  Settle();
  NackOptions o;
  o.delay_us = 0;
  ASSERT_TRUE(backend_->Nack(id, sink.got[0].delivery_id, o).ok());
  Settle();
  ASSERT_EQ(sink.got.size(), 2u) << "a zero delay redelivers at once";
  o.delay_us = 10'000'000;
  ASSERT_TRUE(backend_->Nack(id, sink.got[1].delivery_id, o).ok());
  clock_.Advance(seconds(9));
  backend_->RunTimers();
  Settle();
  EXPECT_EQ(sink.got.size(), 2u);
  clock_.Advance(seconds(1));
  backend_->RunTimers();
  Settle();
  EXPECT_EQ(sink.got.size(), 3u);
  EXPECT_EQ(backend_->Nack(id, 999999, o).code(), StatusCode::kNotFound);
}

TEST_P(BackendSemanticsTest, MaxDeliveriesDeadLettersAndRedriveDeliversAgain) {
  Open();
  Sink sink;
  SubscriptionConfig c = Sub("t", "s");
  c.max_deliveries = 2;
  NackOptions now;
  now.delay_us = 0;
  now.error = "db timeout";
  uint64_t id = Subscribe(c, &sink, 10);
  PublishN("t", 2);
  Settle();
  ASSERT_EQ(sink.got.size(), 2u);
  ASSERT_TRUE(backend_->Nack(id, sink.got[0].delivery_id, now).ok());
  Settle();
  ASSERT_EQ(sink.got.size(), 3u);
  EXPECT_EQ(sink.got[2].count, 2u);
  ASSERT_TRUE(backend_->Nack(id, sink.got[2].delivery_id, now).ok());
  Settle();
  EXPECT_EQ(sink.got.size(), 3u) << "past max_deliveries: not redelivered";
  auto dead = backend_->ListDeadLetters("t", "s", 10);
  ASSERT_TRUE(dead.ok());
  ASSERT_EQ(dead->size(), 1u);
  EXPECT_EQ((*dead)[0].seq, 1u);
  EXPECT_EQ((*dead)[0].delivery_count, 2u);
  EXPECT_EQ((*dead)[0].reason, "max_deliveries (2) reached");
  EXPECT_EQ((*dead)[0].last_error, "db timeout");
  EXPECT_TRUE(ReadEnvelope((*dead)[0].envelope).ok());
  EXPECT_EQ(SubInfo("t", "s").dead_lettered, 1u);

  auto n = backend_->Redrive("t", "s", {});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1u);
  Settle();
  ASSERT_EQ(sink.got.size(), 4u);
  EXPECT_EQ(sink.got[3].seq, 1u);
  EXPECT_EQ(sink.got[3].count, 1u) << "a redrive starts a fresh delivery budget";
  Ack(id, sink.got[3]);
  Ack(id, sink.got[1]);
  Settle();
  EXPECT_TRUE(backend_->ListDeadLetters("t", "s", 10)->empty());
  EXPECT_EQ(SubInfo("t", "s").pending, 0u);
}

TEST_P(BackendSemanticsTest, RejectDeadLettersAtOnceAndPurgeDrops) {
  Open();
  Sink sink;
  uint64_t id = Subscribe(Sub("t", "s"), &sink, 10);
  PublishN("t", 3);
  Settle();
  NackOptions reject;
  reject.reject = true;
  reject.error = "bad payload";
  ASSERT_TRUE(backend_->Nack(id, sink.got[0].delivery_id, reject).ok());
  ASSERT_TRUE(backend_->Nack(id, sink.got[1].delivery_id, reject).ok());
  Settle();
  auto dead = backend_->ListDeadLetters("t", "s", 1);
  ASSERT_TRUE(dead.ok());
  ASSERT_EQ(dead->size(), 1u) << "limit honoured";
  EXPECT_EQ((*dead)[0].reason, "rejected");
  EXPECT_EQ((*dead)[0].last_error, "bad payload");
  auto purged = backend_->Purge("t", "s");
  ASSERT_TRUE(purged.ok());
  EXPECT_EQ(*purged, 2u);
  Settle();
  EXPECT_TRUE(backend_->ListDeadLetters("t", "s", 10)->empty());
  EXPECT_EQ(sink.got.size(), 3u);
  EXPECT_EQ(backend_->Redrive("nope", "s", {}).status().code(), StatusCode::kNotFound);
}

TEST_P(BackendSemanticsTest, KeyOrderingUnderRetriesAndCompetingConsumers) {
  Open();
  Sink a, b;
  SubscriptionConfig c = Sub("t", "s");
  c.ordering = OrderingMode::kKey;
  c.max_deliveries = 10;
  uint64_t ca = Subscribe(c, &a, 10);
  uint64_t cb = Subscribe(c, &b, 10);
  std::map<uint64_t, Sink*> sinks = {{ca, &a}, {cb, &b}};
  PublishKeys("t", {"A", "B", "A", "C", "A", "B"});  // seqs 1..6
  Settle();
  // Only the first message of each key is out: 1 (A), 2 (B), 4 (C).
  auto in_flight = [&] {
    std::vector<Got> all;
    for (auto& [id, s] : sinks) all.insert(all.end(), s->got.begin(), s->got.end());
    return all;
  };
  std::set<uint64_t> first;
  for (const Got& g : in_flight()) first.insert(g.seq);
  EXPECT_EQ(first, (std::set<uint64_t>{1, 2, 4}));
  // Settle messages one at a time, failing the first attempt of every A message, and check the order.
  std::vector<uint64_t> done_a;
  std::set<uint64_t> failed;
  for (int round = 0; round < 20; ++round) {
    std::vector<std::pair<uint64_t, Got>> open;
    for (auto& [id, s] : sinks) {
      for (const Got& g : s->got) open.push_back({id, g});
      s->got.clear();
    }
    if (open.empty()) break;
    std::map<std::string, int> keys_out;
    for (auto& [id, g] : open) EXPECT_EQ(++keys_out[g.key], 1) << "key " << g.key << " in flight twice";
    for (auto& [id, g] : open) {
      if (g.key == "A" && !failed.count(g.seq)) {
        failed.insert(g.seq);
        NackOptions o;
        o.delay_us = 0;
        ASSERT_TRUE(backend_->Nack(id, g.delivery_id, o).ok());
      } else {
        if (g.key == "A") done_a.push_back(g.seq);
        Ack(id, g);
      }
      backend_->AddCredit(id, 1);
    }
    Settle();
  }
  EXPECT_EQ(done_a, (std::vector<uint64_t>{1, 3, 5}));
  EXPECT_EQ(SubInfo("t", "s").pending, 0u);
}

// `sluicectl trace` lists a message once per dead-letter queue it is in: each names its subscription.
TEST_P(BackendSemanticsTest, TraceNamesTheSubscriptionOfEachDeadLetter) {
  Open();
  Sink a, b;
  uint64_t ida = Subscribe(Sub("t", "first"), &a, 10);
  uint64_t idb = Subscribe(Sub("t", "second"), &b, 10);
  ASSERT_TRUE(Publish("t").ok());
  Settle();
  ASSERT_EQ(a.got.size(), 1u);
  ASSERT_EQ(b.got.size(), 1u);
  NackOptions reject;
  reject.reject = true;
  ASSERT_TRUE(backend_->Nack(ida, a.got[0].delivery_id, reject).ok());
  ASSERT_TRUE(backend_->Nack(idb, b.got[0].delivery_id, reject).ok());
  Settle();
  auto traced = backend_->Trace("", 10);
  ASSERT_TRUE(traced.ok()) << traced.status().ToString();
  std::set<std::string> subs;
  for (const StoredMessage& m : *traced) {
    if (m.dead_lettered) subs.insert(m.subscription);
  }
  EXPECT_EQ(subs, (std::set<std::string>{"first", "second"}));
}

TEST_P(BackendSemanticsTest, DeadLetteredKeyParksAndRedriveReleasesInOrder) {
  Open();
  Sink sink;
  SubscriptionConfig c = Sub("t", "s");
  c.ordering = OrderingMode::kKey;
  c.max_deliveries = 1;
  uint64_t id = Subscribe(c, &sink, 100);
  PublishKeys("t", {"K", "K", "X", "K", "Y"});  // 1 K, 2 K, 3 X, 4 K, 5 Y
  Settle();
  EXPECT_EQ(sink.Seqs(), (std::vector<uint64_t>{1, 3, 5}));
  NackOptions o;
  o.error = "boom";
  ASSERT_TRUE(backend_->Nack(id, sink.got[0].delivery_id, o).ok());  // 1 reached max_deliveries
  Ack(id, sink.got[1]);
  Ack(id, sink.got[2]);
  sink.got.clear();
  Settle();
  EXPECT_TRUE(sink.got.empty()) << "K is parked: 2 and 4 wait";
  auto parked = backend_->ListParkedKeys("t", "s");
  ASSERT_TRUE(parked.ok());
  ASSERT_EQ(parked->size(), 1u);
  EXPECT_EQ((*parked)[0].key, "K");
  EXPECT_EQ((*parked)[0].parked_at_seq, 1u);
  EXPECT_EQ((*parked)[0].backlog, 2u);
  EXPECT_EQ(SubInfo("t", "s").parked_keys, 1u);
  // Other keys keep flowing while K is parked.
  PublishKeys("t", {"Z", "K"});  // 6 Z, 7 K
  Settle();
  EXPECT_EQ(sink.Seqs(), (std::vector<uint64_t>{6}));
  Ack(id, sink.got[0]);
  sink.got.clear();

  ASSERT_EQ(*backend_->Redrive("t", "s", {}), 1u);
  Settle();
  EXPECT_TRUE(backend_->ListParkedKeys("t", "s")->empty());
  std::vector<uint64_t> order;
  for (int i = 0; i < 10 && !sink.got.empty(); ++i) {
    ASSERT_EQ(sink.got.size(), 1u) << "one K message at a time";
    order.push_back(sink.got[0].seq);
    Got g = sink.got[0];
    sink.got.clear();
    Ack(id, g);
    Settle();
  }
  EXPECT_EQ(order, (std::vector<uint64_t>{1, 2, 4, 7}));
}

TEST_P(BackendSemanticsTest, DedupeInsideAndOutsideTheWindow) {
  options_.broker.dedupe_window = std::chrono::minutes(2);
  Open();
  Uuid id{0x0123, 0x4567};
  auto first = Publish("t", "", "p", id);
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->duplicate);
  clock_.Advance(seconds(60));
  auto again = Publish("t", "", "p", id);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(again->seq, first->seq);
  EXPECT_EQ(again->id, id);
  EXPECT_EQ(Topic("t").messages, 1u) << "a duplicate is not stored";
  clock_.Advance(seconds(61));
  auto late = Publish("t", "", "p", id);
  ASSERT_TRUE(late.ok());
  EXPECT_FALSE(late->duplicate) << "outside the window the id is new again";
  EXPECT_EQ(late->seq, 2u);
  // Two publishes of one id in the same batch: the second is the duplicate.
  Uuid id2{9, 9};
  std::vector<Result<PublishResult>> r;
  for (int i = 0; i < 2; ++i) {
    backend_->Publish(Request("t", "", "p", id2), [&](Result<PublishResult> x) { r.push_back(std::move(x)); });
  }
  ASSERT_TRUE(RunUntil([&] { return r.size() == 2; }));
  EXPECT_FALSE(r[0]->duplicate);
  EXPECT_TRUE(r[1]->duplicate);
  EXPECT_EQ(r[1]->seq, r[0]->seq);
}

TEST_P(BackendSemanticsTest, ReplayFromEachStartPoint) {
  Open();
  Sink keeper;
  Subscribe(Sub("t", "keeper"), &keeper, 0);  // never acks: keeps every message stored
  int64_t t3 = 0;
  for (int i = 1; i <= 5; ++i) {
    if (i == 3) t3 = clock_.NowUs();
    ASSERT_TRUE(Publish("t").ok());
    clock_.Advance(seconds(1));
  }
  Sink earliest, latest, by_seq, by_time;
  SubscriptionConfig c = Sub("t", "earliest");
  Subscribe(c, &earliest, 100);
  c = Sub("t", "latest");
  c.start = StartPointKind::kLatest;
  Subscribe(c, &latest, 100);
  c = Sub("t", "seq");
  c.start = StartPointKind::kSequence;
  c.start_seq = 4;
  Subscribe(c, &by_seq, 100);
  c = Sub("t", "time");
  c.start = StartPointKind::kTime;
  c.start_time_us = t3;
  Subscribe(c, &by_time, 100);
  Settle();
  EXPECT_EQ(earliest.Seqs(), (std::vector<uint64_t>{1, 2, 3, 4, 5}));
  EXPECT_TRUE(latest.got.empty());
  EXPECT_EQ(by_seq.Seqs(), (std::vector<uint64_t>{4, 5}));
  EXPECT_EQ(by_time.Seqs(), (std::vector<uint64_t>{3, 4, 5}));
  ASSERT_TRUE(Publish("t").ok());
  Settle();
  EXPECT_EQ(latest.Seqs(), (std::vector<uint64_t>{6}));
}

TEST_P(BackendSemanticsTest, RetentionKeepsAckedMessagesForReplay) {
  options_.topics.push_back(TopicConfig{.name = "kept", .retention_max_age = seconds(10)});
  Open();
  Sink a;
  uint64_t ca = Subscribe(Sub("kept", "a"), &a, 100);
  PublishN("kept", 4);
  Settle();
  AckAll(a, ca);
  Settle();
  EXPECT_EQ(Topic("kept").messages, 4u) << "retention keeps acked messages";
  Sink late;
  uint64_t cl = Subscribe(Sub("kept", "backfill"), &late, 100);
  Settle();
  EXPECT_EQ(late.Seqs(), (std::vector<uint64_t>{1, 2, 3, 4}));
  AckAll(late, cl);
  clock_.Advance(seconds(11));
  backend_->RunTimers();
  Settle();
  EXPECT_EQ(Topic("kept").messages, 0u) << "older than retention_max_age and acked by all";
}

TEST_P(BackendSemanticsTest, RetentionByBytes) {
  options_.topics.push_back(TopicConfig{.name = "kept", .retention_max_bytes = 1});
  Open();
  Sink a;
  uint64_t ca = Subscribe(Sub("kept", "a"), &a, 100);
  PublishN("kept", 3);
  Settle();
  uint64_t bytes = Topic("kept").bytes;
  AckAll(a, ca);
  Settle();
  EXPECT_EQ(Topic("kept").messages, 0u) << "1 byte of retention keeps nothing (" << bytes << " bytes)";
}

TEST_P(BackendSemanticsTest, TopicLimitRejects) {
  options_.topics.push_back(TopicConfig{.name = "small", .max_messages = 3});
  Open();
  Sink s;
  Subscribe(Sub("small", "s"), &s, 0);
  PublishN("small", 3);
  auto r = Publish("small");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kLimitExceeded);
  EXPECT_NE(r.status().message().find("small"), std::string::npos);
  EXPECT_NE(r.status().message().find("max_messages = 3"), std::string::npos);
  EXPECT_EQ(Topic("small").messages, 3u);
}

TEST_P(BackendSemanticsTest, TopicLimitDropsOldest) {
  options_.topics.push_back(TopicConfig{.name = "small", .max_messages = 3, .on_full = TopicFullPolicy::kDropOldest});
  Open();
  Sink s;
  uint64_t id = Subscribe(Sub("small", "s"), &s, 0);
  PublishN("small", 5);
  Settle();
  TopicInfo t = Topic("small");
  EXPECT_EQ(t.messages, 3u);
  EXPECT_EQ(t.first_seq, 3u);
  backend_->AddCredit(id, 10);
  Settle();
  EXPECT_EQ(s.Seqs(), (std::vector<uint64_t>{3, 4, 5}));
  EXPECT_EQ(SubInfo("small", "s").skipped, 2u) << "the loss is counted";
}

TEST_P(BackendSemanticsTest, SubscriptionBacklogBlocksPublishers) {
  Open();
  Sink slow;
  SubscriptionConfig c = Sub("t", "slow");
  c.max_backlog = 2;
  c.on_full = BacklogFullPolicy::kBlock;
  uint64_t id = Subscribe(c, &slow, 1);
  PublishN("t", 2);
  auto r = Publish("t");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kLimitExceeded);
  EXPECT_NE(r.status().message().find("slow"), std::string::npos);
  EXPECT_NE(r.status().message().find("max_backlog = 2"), std::string::npos);
  Settle();
  ASSERT_EQ(slow.got.size(), 1u);
  Ack(id, slow.got[0]);
  Settle();
  EXPECT_TRUE(Publish("t").ok()) << "acking made room";
}

TEST_P(BackendSemanticsTest, SubscriptionBacklogSkipsOldest) {
  Open();
  Sink critical, analytics;
  SubscriptionConfig c = Sub("t", "analytics");
  c.max_backlog = 2;
  c.on_full = BacklogFullPolicy::kSkip;
  uint64_t ida = Subscribe(c, &analytics, 0);
  uint64_t idc = Subscribe(Sub("t", "critical"), &critical, 100);
  PublishN("t", 5);
  Settle();
  EXPECT_EQ(critical.got.size(), 5u) << "publishers were never refused";
  SubscriptionInfo info = SubInfo("t", "analytics");
  EXPECT_EQ(info.skipped, 3u);
  EXPECT_EQ(info.pending, 2u);
  backend_->AddCredit(ida, 10);
  Settle();
  EXPECT_EQ(analytics.Seqs(), (std::vector<uint64_t>{4, 5}));
  AckAll(critical, idc);
}

TEST_P(BackendSemanticsTest, MapFullRefusesPublishesWhileConsumersDrain) {
  options_.broker.map_size = 512 << 10;
  options_.broker.max_map_size = 512 << 10;
  Open();
  Sink sink;
  uint64_t id = Subscribe(Sub("t", "s"), &sink, 0);
  Status full;
  int stored = 0;
  for (int i = 0; i < 2000 && full.ok(); ++i) {
    auto r = Publish("t", "", std::string(2000, 'x'));
    if (r.ok()) {
      ++stored;
    } else {
      full = r.status();
    }
  }
  ASSERT_FALSE(full.ok()) << "the map never filled";
  EXPECT_EQ(full.code(), StatusCode::kStorageFull) << full.ToString();
  EXPECT_GT(stored, 10);
  backend_->AddCredit(id, 100000);
  Settle();
  EXPECT_EQ(sink.got.size(), static_cast<size_t>(stored));
  AckAll(sink, id);
  Settle();
  EXPECT_EQ(SubInfo("t", "s").pending, 0u);
  EXPECT_EQ(Topic("t").messages, 0u) << "the acks committed and the messages were deleted";
  auto after = Publish("t", "", std::string(2000, 'x'));
  EXPECT_TRUE(after.ok()) << "draining freed space: " << after.status().ToString();
}

TEST_P(BackendSemanticsTest, MapGrowsUpToMaxMapSize) {
  options_.broker.map_size = 256 << 10;
  options_.broker.max_map_size = 4 << 20;
  Open();
  Sink sink;
  Subscribe(Sub("t", "s"), &sink, 0);
  for (int i = 0; i < 300; ++i) ASSERT_TRUE(Publish("t", "", std::string(2000, 'x')).ok()) << i;
}

// A bundle in a commit that hits MDB_MAP_FULL is applied again once the map has grown: its publishes
// are stored whole, not the leftovers of the first attempt.
TEST_P(BackendSemanticsTest, ABundleRetriedAfterTheMapGrewStoresItsPublishesWhole) {
  options_.broker.map_size = 256 << 10;
  options_.broker.max_map_size = 4 << 20;
  Open();
  Sink in, out;
  uint64_t handler = Subscribe(Sub("in", "h"), &in, 10);
  uint64_t reader = Subscribe(Sub("out", "r"), &out, 10);
  ASSERT_TRUE(Publish("in", "", "go").ok());
  Settle();
  ASSERT_EQ(in.got.size(), 1u);
  const std::string big(600 << 10, 'b');  // more than the whole initial map
  Result<BundleResult> committed = CommitBundlePublishing(handler, in.got[0], "out", big);
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  EXPECT_EQ(committed->outcome, BundleOutcome::kCommitted);
  Settle();
  ASSERT_EQ(out.got.size(), 1u);
  EXPECT_EQ(out.got[0].payload, big);
  EXPECT_EQ(Topic("out").published, 1u);
  (void)reader;
}

TEST_P(BackendSemanticsTest, RestartKeepsCursorsAcksDeadLettersCountsAndDedupe) {
  options_.broker.durability = Durability::kSync;
  Open();
  Sink sink;
  SubscriptionConfig c = Sub("t", "s");
  c.max_deliveries = 5;
  uint64_t id = Subscribe(c, &sink, 100);
  Uuid first_id{42, 42};
  ASSERT_TRUE(Publish("t", "", "p", first_id).ok());
  PublishN("t", 9);  // seqs 2..10
  Settle();
  ASSERT_EQ(sink.got.size(), 10u);
  for (uint64_t seq : {1, 2, 3, 5}) Ack(id, sink.got[seq - 1]);
  NackOptions reject;
  reject.reject = true;
  reject.error = "nope";
  ASSERT_TRUE(backend_->Nack(id, sink.got[3].delivery_id, reject).ok());  // seq 4
  NackOptions retry;
  retry.delay_us = 0;
  ASSERT_TRUE(backend_->Nack(id, sink.got[5].delivery_id, retry).ok());   // seq 6: redelivered (count 2)
  Settle();
  ASSERT_EQ(sink.got.size(), 11u);
  EXPECT_EQ(sink.got[10].seq, 6u);
  EXPECT_EQ(sink.got[10].count, 2u);

  Reopen();
  Sink again;
  Subscribe(c, &again, 100);
  Settle();
  EXPECT_EQ(again.Seqs(), (std::vector<uint64_t>{6, 7, 8, 9, 10}));
  ASSERT_FALSE(again.got.empty());
  EXPECT_EQ(again.got[0].count, 3u) << "the persisted redelivery count survives";
  EXPECT_EQ(again.got[1].count, 1u);
  auto dead = backend_->ListDeadLetters("t", "s", 10);
  ASSERT_TRUE(dead.ok());
  ASSERT_EQ(dead->size(), 1u);
  EXPECT_EQ((*dead)[0].seq, 4u);
  EXPECT_EQ((*dead)[0].last_error, "nope");
  auto dup = Publish("t", "", "p", first_id);
  ASSERT_TRUE(dup.ok());
  EXPECT_TRUE(dup->duplicate);
  EXPECT_EQ(dup->seq, 1u);
  auto next = Publish("t");
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->seq, 11u) << "sequences continue";
  EXPECT_EQ(Topic("t").messages, 6u) << "1-5 were acked or dead-lettered and deleted";
}

TEST_P(BackendSemanticsTest, RestartKeepsParkedKeys) {
  Open();
  Sink sink;
  SubscriptionConfig c = Sub("t", "s");
  c.ordering = OrderingMode::kKey;
  c.max_deliveries = 1;
  uint64_t id = Subscribe(c, &sink, 100);
  PublishKeys("t", {"K", "K", "X"});
  Settle();
  ASSERT_EQ(sink.Seqs(), (std::vector<uint64_t>{1, 3}));
  ASSERT_TRUE(backend_->Nack(id, sink.got[0].delivery_id, NackOptions{}).ok());
  Ack(id, sink.got[1]);
  Settle();
  Reopen();
  Sink again;
  uint64_t id2 = Subscribe(c, &again, 100);
  Settle();
  EXPECT_TRUE(again.got.empty()) << "seq 2 still waits behind the parked key";
  auto parked = backend_->ListParkedKeys("t", "s");
  ASSERT_TRUE(parked.ok());
  ASSERT_EQ(parked->size(), 1u);
  EXPECT_EQ((*parked)[0].backlog, 1u);
  ASSERT_EQ(*backend_->Redrive("t", "s", {}), 1u);
  Settle();
  ASSERT_EQ(again.Seqs(), (std::vector<uint64_t>{1}));
  Ack(id2, again.got[0]);
  Settle();
  EXPECT_EQ(again.Seqs(), (std::vector<uint64_t>{1, 2}));
}

TEST_P(BackendSemanticsTest, ConfiguredSubscriptionExistsAtOpen) {
  SubscriptionConfig c = Sub("orders", "billing");
  options_.subscriptions.push_back(c);
  Open();
  ASSERT_TRUE(Publish("orders").ok());
  EXPECT_EQ(SubInfo("orders", "billing").pending, 1u) << "created before the first publish";
}

TEST_P(BackendSemanticsTest, PublishAfterCloseIsUnavailable) {
  Open();
  bool closed = false;
  std::optional<Result<PublishResult>> r;
  backend_->Close([&] { closed = true; });
  backend_->Publish(Request("t", "", "p"), [&](Result<PublishResult> x) { r = std::move(x); });
  ASSERT_TRUE(RunUntil([&] { return closed && r.has_value(); }));
  EXPECT_EQ(r->status().code(), StatusCode::kUnavailable);
  backend_.reset();
}

// Requests (messages with a reply token) on a topic that is only a queue of requests go to a consumer
// with credit without being stored; the requester's confirmation is the reply, sent after the consumer
// settles. lmdb_backend.cc, DeliverDirect.
TEST_P(BackendSemanticsTest, ARequestAConsumerCanTakeIsDeliveredWithoutBeingStored) {
  Open();
  Sink sink;
  uint64_t id = Subscribe(Sub("rq", "handler"), &sink, 10);
  std::optional<Result<PublishResult>> published;
  PublishRequest first = Request("rq", "", "question");
  first.reply_token = 7;
  backend_->Publish(std::move(first), [&](Result<PublishResult> x) { published = std::move(x); });
  EXPECT_TRUE(sink.got.empty()) << "a consumer is never called from inside Publish()";
  ASSERT_TRUE(RunUntil([&] { return !sink.got.empty(); }));
  ASSERT_EQ(sink.got.size(), 1u);
  EXPECT_EQ(sink.got[0].seq, 0u) << "not stored, so no seq";
  EXPECT_EQ(sink.got[0].reply_token, 7u);
  EXPECT_EQ(sink.got[0].count, 1u);
  EXPECT_EQ(sink.got[0].payload, "question");
  Settle();
  EXPECT_EQ(Topic("rq").messages, 0u);
  EXPECT_EQ(Topic("rq").last_seq, 0u);
  EXPECT_FALSE(published.has_value()) << "the publisher hears once the request is settled";
  EXPECT_EQ(SubInfo("rq", "handler").in_flight, 1u);
  Ack(id, sink.got[0]);
  ASSERT_TRUE(RunUntil([&] { return published.has_value(); }));
  ASSERT_TRUE(published->ok()) << published->status().ToString();
  EXPECT_EQ((*published)->seq, 0u);
  SubscriptionInfo info = SubInfo("rq", "handler");
  EXPECT_EQ(info.in_flight, 0u);
  EXPECT_EQ(info.acked, 1u);
  EXPECT_EQ(info.pending, 0u);
  EXPECT_EQ(Topic("rq").published, 1u);

  // Settled by a bundle: its effects commit, and there is no ack of a stored message to record.
  PublishRequestTo("rq", 8, &published);
  ASSERT_EQ(sink.got.size(), 2u);
  Result<BundleResult> committed =
      CommitBundlePublishing(id, sink.got[1], "events", "answered", {KvMutation{"k", "v", false}});
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  EXPECT_EQ(committed->outcome, BundleOutcome::kCommitted);
  EXPECT_EQ(Topic("events").messages, 1u);
  EXPECT_EQ(Topic("events").published, 1u) << "a bundle's publishes count as published";
  EXPECT_EQ(Topic("rq").published, 2u);
  EXPECT_EQ(Topic("rq").messages, 0u);
  EXPECT_EQ(SubInfo("rq", "handler").in_flight, 0u);
  Reopen();
  EXPECT_EQ(Topic("rq").messages, 0u) << "nothing of the requests was stored";
  EXPECT_EQ(SubInfo("rq", "handler").pending, 0u);
}

TEST_P(BackendSemanticsTest, AnUnsettledDirectRequestIsStoredAndCarriesOn) {
  Open();
  Sink sink;
  SubscriptionConfig c = Sub("rq", "handler");
  c.max_deliveries = 10;
  uint64_t id = Subscribe(c, &sink, 10);
  std::optional<Result<PublishResult>> published;
  PublishRequestTo("rq", 7, &published);
  ASSERT_EQ(sink.got.size(), 1u);
  ASSERT_EQ(sink.got[0].seq, 0u);

  // A nack stores it; it comes back after the delay with its count, its seq and its reply token.
  NackOptions later;
  later.delay_us = 10'000'000;
  ASSERT_TRUE(backend_->Nack(id, sink.got[0].delivery_id, later).ok());
  Settle();
  EXPECT_EQ(Topic("rq").messages, 1u) << "stored on the nack";
  ASSERT_TRUE(published.has_value());
  ASSERT_TRUE(published->ok()) << published->status().ToString();
  EXPECT_EQ((*published)->seq, 1u);
  clock_.Advance(seconds(9));
  backend_->RunTimers();
  Settle();
  EXPECT_EQ(sink.got.size(), 1u) << "redelivered before its delay";
  clock_.Advance(seconds(1));
  backend_->RunTimers();
  Settle();
  ASSERT_EQ(sink.got.size(), 2u);
  EXPECT_EQ(sink.got[1].seq, 1u);
  EXPECT_EQ(sink.got[1].count, 2u);
  EXPECT_EQ(sink.got[1].reply_token, 7u);
  EXPECT_EQ(sink.got[1].payload, "question");
  Ack(id, sink.got[1]);
  Settle();

  // Rejected: a dead letter, like any rejected message.
  published.reset();
  PublishRequestTo("rq", 9, &published);
  ASSERT_EQ(sink.got.size(), 3u);
  ASSERT_EQ(sink.got[2].seq, 0u);
  NackOptions reject;
  reject.reject = true;
  reject.error = "not a request";
  ASSERT_TRUE(backend_->Nack(id, sink.got[2].delivery_id, reject).ok());
  Settle();
  Settle();
  EXPECT_EQ(sink.got.size(), 3u) << "a rejected request is not delivered again";
  auto dead = backend_->ListDeadLetters("rq", "handler", 10);
  ASSERT_TRUE(dead.ok());
  ASSERT_EQ(dead->size(), 1u);
  EXPECT_EQ((*dead)[0].reason, "rejected");
  EXPECT_EQ((*dead)[0].last_error, "not a request");

  // Lease expiry stores it too, and it is delivered again.
  PublishRequestTo("rq", 10, &published);
  ASSERT_EQ(sink.got.size(), 4u);
  ASSERT_EQ(sink.got[3].seq, 0u);
  clock_.Advance(c.ack_wait + seconds(1));
  backend_->RunTimers();
  Settle();
  Settle();
  ASSERT_EQ(sink.got.size(), 5u);
  EXPECT_NE(sink.got[4].seq, 0u);
  EXPECT_EQ(sink.got[4].count, 2u);
  EXPECT_EQ(sink.got[4].reply_token, 10u);
}

TEST_P(BackendSemanticsTest, ADeadLetteredDirectRequestIsADeadLetterInTheStoreAtOnce) {
  Open();
  Sink sink;
  uint64_t id = Subscribe(Sub("rq", "handler"), &sink, 1);
  std::optional<Result<PublishResult>> published;
  PublishRequestTo("rq", 7, &published);
  ASSERT_EQ(sink.got.size(), 1u);
  ASSERT_EQ(sink.got[0].seq, 0u);
  NackOptions reject;
  reject.reject = true;
  reject.error = "bad request";
  ASSERT_TRUE(backend_->Nack(id, sink.got[0].delivery_id, reject).ok());
  ASSERT_TRUE(RunUntil([&] { return published.has_value(); }));
  Settle();
  EXPECT_EQ(SubInfo("rq", "handler").pending, 0u) << "a dead letter, not a pending message";
  EXPECT_EQ(SubInfo("rq", "handler").dead_lettered, 1u);
  // The consumer has no credit left, so nothing reads the stored copy before the restart: the commit
  // that stored it must have dead-lettered it too.
  Reopen();
  auto dead = backend_->ListDeadLetters("rq", "handler", 10);
  ASSERT_TRUE(dead.ok());
  ASSERT_EQ(dead->size(), 1u);
  EXPECT_EQ((*dead)[0].reason, "rejected");
  EXPECT_EQ((*dead)[0].last_error, "bad request");
  EXPECT_EQ(SubInfo("rq", "handler").pending, 0u);
  Sink after;
  Subscribe(Sub("rq", "handler"), &after, 10);
  Settle();
  EXPECT_TRUE(after.got.empty()) << "a dead letter is not delivered";
}

// on_full = "skip" acks the oldest messages, the one in a handler's hands too: that handler's bundle
// still commits its effects (there is just no ack left for it to write).
TEST_P(BackendSemanticsTest, ABundleForAMessageSkippedWhileItsHandlerRanStillCommits) {
  Open();
  SubscriptionConfig c = Sub("t", "s");
  c.max_backlog = 1;
  c.on_full = BacklogFullPolicy::kSkip;
  Sink sink;
  uint64_t consumer = Subscribe(c, &sink, 1);
  ASSERT_TRUE(Publish("t").ok());
  Settle();
  ASSERT_EQ(sink.got.size(), 1u);
  PublishN("t", 2);  // a backlog of 3 against max_backlog 1: seqs 1 (in hand) and 2 are skipped
  Settle();
  ASSERT_GE(SubInfo("t", "s").skipped, 1u);
  auto committed = CommitBundlePublishing(consumer, sink.got[0], "out", "effect", {KvMutation{"k", "v", false}});
  ASSERT_TRUE(committed.ok()) << committed.status().ToString();
  EXPECT_EQ(committed->outcome, BundleOutcome::kCommitted) << committed->message;
  EXPECT_EQ(Topic("out").messages, 1u);
}

TEST_P(BackendSemanticsTest, CloseWaitsForADirectRequestsBundleAndStoresItIfItFailed) {
  Open();
  Sink sink;
  uint64_t id = Subscribe(Sub("rq", "handler"), &sink, 10);
  std::optional<Result<PublishResult>> published;
  PublishRequestTo("rq", 7, &published);
  ASSERT_EQ(sink.got.size(), 1u);
  BundleRequest bundle;
  bundle.consumer_id = id;
  bundle.delivery_id = sink.got[0].delivery_id;
  bundle.keyspace = "handler";
  bundle.version = 1;
  bundle.reads.push_back(KvReadCheck{"k", 99});  // never written: the bundle conflicts
  std::optional<Result<BundleResult>> answered;
  backend_->CommitBundle(std::move(bundle), [&](Result<BundleResult> r) { answered = std::move(r); });
  bool closed = false;
  backend_->Close([&] { closed = true; });
  ASSERT_TRUE(RunUntil([&] { return closed; }));
  ASSERT_TRUE(answered.has_value());
  ASSERT_TRUE(answered->ok()) << answered->status().ToString();
  EXPECT_EQ((*answered)->outcome, BundleOutcome::kConflict);
  ASSERT_TRUE(published.has_value()) << "stored by the close";
  ASSERT_TRUE(published->ok()) << published->status().ToString();
  backend_.reset();
  Open();
  Sink after;
  Subscribe(Sub("rq", "handler"), &after, 10);
  Settle();
  ASSERT_EQ(after.got.size(), 1u);
  EXPECT_EQ(after.got[0].reply_token, 7u);
}

TEST_P(BackendSemanticsTest, CrashesHoldingADirectRequestCountTowardsPoison) {
  Open();
  SubscriptionConfig c = Sub("rq", "handler");
  c.max_deliveries = 10;
  c.max_crashes = 2;
  Sink first, second, third;
  uint64_t c1 = Subscribe(c, &first, 1);
  std::optional<Result<PublishResult>> published;
  PublishRequestTo("rq", 7, &published);
  ASSERT_EQ(first.got.size(), 1u);
  ASSERT_EQ(first.got[0].seq, 0u);
  CrashTwiceIntoPoison(c, c1, &second, &third);  // the crash before it was stored counts
  ASSERT_EQ(second.got.size(), 1u);
  EXPECT_EQ(second.got[0].count, 2u);
}

TEST_P(BackendSemanticsTest, RequestsAreStoredWhenTheTopicIsMoreThanAQueueOfRequests) {
  options_.topics.push_back(TopicConfig{});
  options_.topics.back().name = "kept";
  options_.topics.back().retention_max_age = std::chrono::hours(1);
  options_.topics.push_back(TopicConfig{});
  options_.topics.back().name = "limited";
  options_.topics.back().max_messages = 100;
  Open();
  Sink a, b, kept, dedupe, limited, later;
  Subscribe(Sub("two", "a"), &a, 10);
  Subscribe(Sub("two", "b"), &b, 10);
  Subscribe(Sub("kept", "s"), &kept, 10);
  Subscribe(Sub("dedupe", "s"), &dedupe, 10);
  Subscribe(Sub("limited", "s"), &limited, 10);
  std::optional<Result<PublishResult>> r1, r2, r3, r4, r5;
  PublishRequestTo("two", 1, &r1);             // a second subscription
  PublishRequestTo("kept", 2, &r2);            // retention
  PublishRequestTo("dedupe", 3, &r3, NewUuidV7(1));  // a publisher-chosen id
  PublishRequestTo("nobody", 4, &r4);          // no consumer (auto-created topic)
  PublishRequestTo("limited", 5, &r5);         // a limit its stored copy would have to pass
  ASSERT_TRUE(RunUntil([&] { return r1 && r2 && r3 && r4 && r5; }));
  for (auto* r : {&r1, &r2, &r3, &r4, &r5}) {
    ASSERT_TRUE((*r)->ok()) << (*r)->status().ToString();
    EXPECT_EQ((**r)->seq, 1u) << "stored";
  }
  Settle();
  for (Sink* s : {&a, &b, &kept, &dedupe, &limited}) {
    ASSERT_EQ(s->got.size(), 1u);
    EXPECT_EQ(s->got[0].seq, 1u);
  }
  EXPECT_EQ(a.got[0].reply_token, 1u);
  uint64_t id = Subscribe(Sub("nobody", "s"), &later, 10);
  Settle();
  ASSERT_EQ(later.got.size(), 1u);
  EXPECT_EQ(later.got[0].seq, 1u);
  EXPECT_EQ(later.got[0].reply_token, 4u);

  // One already stored and waiting: a new request queues behind it instead of overtaking it.
  Sink none;
  SubscriptionConfig busy = Sub("busy", "s");
  uint64_t slow = Subscribe(busy, &none, 0);
  std::optional<Result<PublishResult>> first, second;
  PublishRequestTo("busy", 5, &first);
  ASSERT_TRUE(RunUntil([&] { return first.has_value(); }));
  EXPECT_EQ((*first)->seq, 1u) << "no credit: stored";
  backend_->AddCredit(slow, 1);
  PublishRequestTo("busy", 6, &second);
  Settle();
  ASSERT_EQ(none.got.size(), 1u);
  EXPECT_EQ(none.got[0].reply_token, 5u) << "the stored one first";
  (void)id;
}

TEST_P(BackendSemanticsTest, RequestsAndPublishesAreStoredInTheOrderTheyCame) {
  Open();
  Sink none, keyed;
  Subscribe(Sub("rq", "handler"), &none, 0);  // a queue of requests, but no credit: stored
  SubscriptionConfig k = Sub("ko", "s");
  k.ordering = OrderingMode::kKey;
  Subscribe(k, &keyed, 0);
  for (const std::string topic : {"rq", "ko"}) {
    std::vector<std::optional<Result<PublishResult>>> got(3);
    PublishRequest request = Request(topic, "a", "request");
    request.reply_token = 7;
    // No loop pass in between, as when one read brings several frames.
    backend_->Publish(std::move(request), [&](Result<PublishResult> r) { got[0] = std::move(r); });
    backend_->Publish(Request(topic, "a", "publish"), [&](Result<PublishResult> r) { got[1] = std::move(r); });
    backend_->Publish(Request(topic, "a", "again"), [&](Result<PublishResult> r) { got[2] = std::move(r); });
    ASSERT_TRUE(RunUntil([&] { return got[0] && got[1] && got[2]; }));
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_TRUE(got[i]->ok()) << got[i]->status().ToString();
      EXPECT_EQ((*got[i])->seq, i + 1) << topic << ": stored in the order they came";
    }
  }
}

TEST_P(BackendSemanticsTest, CloseStoresTheDirectRequestsStillOut) {
  Open();
  Sink sink;
  Subscribe(Sub("rq", "handler"), &sink, 10);
  std::optional<Result<PublishResult>> published;
  PublishRequestTo("rq", 7, &published);
  ASSERT_EQ(sink.got.size(), 1u);
  ASSERT_EQ(sink.got[0].seq, 0u);
  Reopen();
  ASSERT_TRUE(published.has_value()) << "answered by the close";
  ASSERT_TRUE(published->ok()) << published->status().ToString();
  Sink after;
  Subscribe(Sub("rq", "handler"), &after, 10);
  Settle();
  ASSERT_EQ(after.got.size(), 1u) << "stored at the close, delivered after the restart";
  EXPECT_EQ(after.got[0].seq, 1u);
  EXPECT_EQ(after.got[0].reply_token, 7u);
  EXPECT_EQ(after.got[0].payload, "question");
}


// ---- types: a subscription delivers the types its consumers ask for and acks the rest unseen -------

TEST_P(BackendSemanticsTest, TypesDeliverOnlyThoseAndAckTheRestUnseen) {
  Open();
  PublishTypes("t", {"t.A", "t.B", "t.A", "t.C", "t.B"});
  Sink sink;
  auto consumer = TrySubscribe({Sub("t", "s"), 10, {"t.B", "t.A", "t.B"}}, &sink);
  ASSERT_TRUE(consumer.ok()) << consumer.status().ToString();
  Settle();
  EXPECT_EQ(sink.Seqs(), (std::vector<uint64_t>{1, 2, 3, 5}));
  SubscriptionInfo info = SubInfo("t", "s");
  EXPECT_EQ(info.filtered, 1u);
  EXPECT_EQ(info.types, (std::vector<std::string>{"t.A", "t.B"}));
  AckAll(sink, *consumer);
  Settle();
  EXPECT_EQ(SubInfo("t", "s").pending, 0u) << "the filtered message counts as consumed";

  // The filtered ack was stored: after a restart a consumer of every type gets only what is new.
  Reopen();
  Sink again;
  ASSERT_TRUE(TrySubscribe({Sub("t", "s"), 10, {}}, &again).ok());
  PublishTypes("t", {"t.C"});
  Settle();
  EXPECT_EQ(again.Seqs(), (std::vector<uint64_t>{6}));
  EXPECT_TRUE(SubInfo("t", "s").types.empty());
}

TEST_P(BackendSemanticsTest, ARequestOfAnotherTypeIsFilteredNotHandedOverDirectly) {
  Open();
  Sink sink;
  ASSERT_TRUE(TrySubscribe({Sub("rq", "s"), 10, {"t.Wanted"}}, &sink).ok());
  std::optional<Result<PublishResult>> out;
  PublishRequestTo("rq", 7, &out);  // a test.Message
  Settle();
  ASSERT_TRUE(RunUntil([&] { return out.has_value(); }));
  EXPECT_TRUE(out->ok()) << out->status().ToString();
  EXPECT_TRUE(sink.got.empty()) << "delivered seq " << sink.got[0].seq;
  EXPECT_EQ(SubInfo("rq", "s").filtered, 1u);
}

TEST_P(BackendSemanticsTest, AFilteredMessageHoldsNoKeyBack) {
  Open();
  SubscriptionConfig c = Sub("t", "s");
  c.ordering = OrderingMode::kKey;
  PublishTypes("t", {"t.A", "t.C", "t.B"}, "k");
  Sink sink;
  auto consumer = TrySubscribe({c, 10, {"t.A", "t.B"}}, &sink);
  ASSERT_TRUE(consumer.ok()) << consumer.status().ToString();
  Settle();
  ASSERT_EQ(sink.Seqs(), (std::vector<uint64_t>{1})) << "one message of a key at a time";
  Ack(*consumer, sink.got[0]);
  Settle();
  EXPECT_EQ(sink.Seqs(), (std::vector<uint64_t>{1, 3}));
  EXPECT_EQ(SubInfo("t", "s").parked_keys, 0u);
}

TEST_P(BackendSemanticsTest, TheNewestConsumersTypesApplyToWhatIsReadAhead) {
  Open();
  PublishTypes("t", {"t.A", "t.B", "t.A", "t.B"});
  Sink first;
  ASSERT_TRUE(TrySubscribe({Sub("t", "s"), 1, {"t.A"}}, &first).ok());
  Settle();
  ASSERT_EQ(first.Seqs(), (std::vector<uint64_t>{1}));  // seq 3 waits, read ahead, for credit
  EXPECT_EQ(SubInfo("t", "s").filtered, 2u);
  Sink second;
  ASSERT_TRUE(TrySubscribe({Sub("t", "s"), 10, {"t.B"}}, &second).ok());
  PublishTypes("t", {"t.B", "t.A"});
  Settle();
  EXPECT_EQ(second.Seqs(), (std::vector<uint64_t>{5})) << "seq 3 (t.A) was read ahead under the old types";
  EXPECT_EQ(first.Seqs(), (std::vector<uint64_t>{1}));
  EXPECT_EQ(SubInfo("t", "s").filtered, 4u);  // 2 and 4 first, then 3 and 6 under t.B
  EXPECT_EQ(SubInfo("t", "s").types, (std::vector<std::string>{"t.B"}));
}

TEST_P(BackendSemanticsTest, ALongRunOfFilteredMessagesIsWorkedThroughInSteps) {
  Open();
  // Wanted messages now and then: each one delivered must not start another unbounded run.
  std::vector<std::string> types;
  for (int i = 1; i <= 20000; ++i) types.push_back(i % 5000 == 0 ? "t.Wanted" : "t.Noise");
  types.push_back("t.Wanted");
  PublishTypes("t", types);
  Sink sink;
  std::vector<uint64_t> filtered_at;  // the filtered count as each message is delivered
  sink.on_deliver = [&] { filtered_at.push_back(SubInfo("t", "s").filtered); };
  ASSERT_TRUE(TrySubscribe({Sub("t", "s"), 10, {"t.Wanted"}}, &sink).ok());
  ASSERT_TRUE(RunUntil([&] { return sink.got.size() == 5; }));
  EXPECT_EQ(sink.Seqs(), (std::vector<uint64_t>{5000, 10000, 15000, 20000, 20001}));
  EXPECT_EQ(SubInfo("t", "s").filtered, 19996u);
  // Reading on after seq 5000 until its budget ran out, the first pass filtered 8192 and stopped.
  ASSERT_FALSE(filtered_at.empty());
  EXPECT_EQ(filtered_at[0], 8192u);
}

TEST_P(BackendSemanticsTest, BadTypesAreRefusedByName) {
  Open();
  Sink sink;
  auto empty = TrySubscribe({Sub("t", "s"), 10, {"t.A", ""}}, &sink);
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(empty.status().message(), "type 1 to subscribe to is 0 bytes; a type is 1..256 bytes");
  auto many = TrySubscribe({Sub("t", "s"), 10, std::vector<std::string>(33, "t.A")}, &sink);
  ASSERT_FALSE(many.ok());
  EXPECT_EQ(many.status().message(), "33 types to subscribe to; at most 32");
  auto longer = TrySubscribe({Sub("t", "s"), 10, {std::string(257, 'x')}}, &sink);
  ASSERT_FALSE(longer.ok());
  EXPECT_EQ(longer.status().message(), "type 0 to subscribe to is 257 bytes; a type is 1..256 bytes");
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendSemanticsTest, ::testing::ValuesIn(kFactories),
                         [](const ::testing::TestParamInfo<BackendFactory>& p) { return p.param.name; });

}  // namespace
}  // namespace sluice::broker

// SPDX-License-Identifier: MIT
//
// Tests of HandlerRun (daemon/handler_run.h), the host side of one handle() call: what reads see
// (own writes, then pending bundles, then the committed snapshot) and which versions they record, the
// bundle a run produces, publish ids derived from the input, reply rules, argument checks, and the
// C API table as a plugin calls it. The committed state is a map. Single-threaded.
#include "daemon/handler_run.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <map>
#include <string>

namespace sluice {
namespace {

using ::testing::ElementsAre;

class MapSnapshot final : public KvSnapshot {
 public:
  std::map<std::string, std::pair<uint64_t, std::string>, std::less<>> data;
  Status fail;

  Result<std::optional<Entry>> Get(std::string_view key) override {
    if (!fail.ok()) return fail;
    auto it = data.find(key);
    if (it == data.end()) return std::optional<Entry>();
    return std::optional<Entry>(Entry{it->second.first, it->second.second});
  }
  Status Scan(std::string_view prefix, const ScanFn& fn) override {
    if (!fail.ok()) return fail;
    for (auto it = data.lower_bound(prefix); it != data.end() && it->first.starts_with(prefix); ++it) {
      if (!fn(it->first, Entry{it->second.first, it->second.second})) break;
    }
    return Status::Ok();
  }
};

sluice_bytes B(std::string_view s) { return {s.data(), s.size()}; }
sluice_str S(std::string_view s) { return {s.data(), s.size()}; }
std::string V(sluice_bytes b) { return std::string(static_cast<const char*>(b.data), b.size); }

class HandlerRunTest : public ::testing::Test {
 protected:
  HandlerRunTest() {
    publishes_ = {"out", "audit"};
    host_.plugin = "p";
    host_.publishes = &publishes_;
    host_.now_us = [] { return int64_t{1234}; };
    host_.log = [this](int level, std::string_view m) {
      logs_.push_back(std::to_string(level) + ":" + std::string(m));
    };
    input_.id = Uuid{0x0190000000007000, 0x8000000000000001};
    input_.id_text = FormatUuid(input_.id);
    input_.correlation_id = "order-7";
    snapshot_.data["a"] = {11, "A"};
    snapshot_.data["b"] = {12, "B"};
    snapshot_.data["c"] = {13, "C"};
    snapshot_.data["x"] = {14, "X"};
  }

  std::vector<std::string> publishes_;
  RunHost host_;
  RunInput input_;
  MapSnapshot snapshot_;
  PendingWrites pending_;
  std::vector<std::string> logs_;
};

TEST_F(HandlerRunTest, ReadsSeeOwnWritesThenPendingThenCommitted) {
  pending_.Add(/*version=*/100, {{"b", "B1", false}, {"c", "", true}, {"new", "N", false}});
  HandlerRun run(host_, input_, &snapshot_, &pending_);
  sluice_bytes v{};
  ASSERT_EQ(run.KvGet(B("a"), &v), 0);
  EXPECT_EQ(V(v), "A");
  ASSERT_EQ(run.KvGet(B("b"), &v), 0);
  EXPECT_EQ(V(v), "B1");                       // the pending bundle's write
  EXPECT_EQ(run.KvGet(B("c"), &v), -ENOENT);   // deleted by the pending bundle
  ASSERT_EQ(run.KvGet(B("new"), &v), 0);
  EXPECT_EQ(V(v), "N");
  EXPECT_EQ(run.KvGet(B("zzz"), &v), -ENOENT);
  ASSERT_EQ(run.KvPut(B("a"), B("A2")), 0);
  ASSERT_EQ(run.KvGet(B("a"), &v), 0);
  EXPECT_EQ(V(v), "A2");                       // own write wins
  ASSERT_EQ(run.KvDelete(B("x")), 0);
  EXPECT_EQ(run.KvGet(B("x"), &v), -ENOENT);   // own delete, never read from the snapshot

  client::BundleMessage b = run.TakeBundle();
  std::vector<std::string> reads;
  for (const auto& r : b.reads) reads.push_back(r.key + "@" + std::to_string(r.version));
  // "a" was read before it was written: its committed version is checked. "x" was never read.
  EXPECT_THAT(reads, ElementsAre("a@11", "b@100", "c@0", "new@100", "zzz@0"));
  ASSERT_EQ(b.writes.size(), 2u);
  EXPECT_EQ(b.writes[0].key, "a");
  EXPECT_EQ(b.writes[0].value, "A2");
  EXPECT_FALSE(b.writes[0].erase);
  EXPECT_EQ(b.writes[1].key, "x");
  EXPECT_TRUE(b.writes[1].erase);
  EXPECT_TRUE(b.publishes.empty());
  EXPECT_FALSE(b.reply.has_value());
  EXPECT_TRUE(run.failure().ok());
}

TEST_F(HandlerRunTest, PendingEntriesBelongToTheLastBundleThatWroteThem) {
  pending_.Add(100, {{"k", "one", false}, {"only1", "x", false}});
  pending_.Add(200, {{"k", "two", false}});
  ASSERT_NE(pending_.Find("k"), nullptr);
  EXPECT_EQ(pending_.Find("k")->version, 200u);
  pending_.Remove(100);  // bundle 100 answered: "k" stays, bundle 200 owns it
  ASSERT_NE(pending_.Find("k"), nullptr);
  EXPECT_EQ(pending_.Find("k")->value, "two");
  EXPECT_EQ(pending_.Find("only1"), nullptr);
  pending_.Remove(200);
  EXPECT_EQ(pending_.Find("k"), nullptr);
  EXPECT_EQ(pending_.size(), 0u);
  pending_.Remove(300);  // unknown: nothing
}

TEST_F(HandlerRunTest, ScanMergesTheThreeSourcesInKeyOrder) {
  snapshot_.data["p/1"] = {1, "one"};
  snapshot_.data["p/2"] = {2, "two"};
  snapshot_.data["p/4"] = {4, "four"};
  snapshot_.data["q/1"] = {5, "other prefix"};
  pending_.Add(900, {{"p/2", "", true}, {"p/3", "three", false}});
  HandlerRun run(host_, input_, &snapshot_, &pending_);
  ASSERT_EQ(run.KvPut(B("p/0"), B("zero")), 0);
  ASSERT_EQ(run.KvDelete(B("p/4")), 0);
  std::vector<std::string> seen;
  auto collect = [](void* user, sluice_bytes k, sluice_bytes v) -> int {
    static_cast<std::vector<std::string>*>(user)->push_back(V(k) + "=" + V(v));
    return 0;
  };
  ASSERT_EQ(run.KvScan(B("p/"), 0, collect, &seen), 0);
  EXPECT_THAT(seen, ElementsAre("p/0=zero", "p/1=one", "p/3=three"));
  seen.clear();
  ASSERT_EQ(run.KvScan(B("p/"), 2, collect, &seen), 0);
  EXPECT_THAT(seen, ElementsAre("p/0=zero", "p/1=one"));
  seen.clear();
  auto stop_after_one = [](void* user, sluice_bytes k, sluice_bytes) -> int {
    static_cast<std::vector<std::string>*>(user)->push_back(V(k));
    return 1;
  };
  ASSERT_EQ(run.KvScan(B("p/"), 0, stop_after_one, &seen), 0);
  EXPECT_THAT(seen, ElementsAre("p/0"));
  client::BundleMessage b = run.TakeBundle();
  std::vector<std::string> reads;
  for (const auto& r : b.reads) reads.push_back(r.key + "@" + std::to_string(r.version));
  // Keys returned from state are recorded; own writes and keys never returned are not.
  EXPECT_THAT(reads, ElementsAre("p/1@1", "p/3@900"));
  EXPECT_EQ(run.KvScan(B("p/"), 0, nullptr, nullptr), -EINVAL);
}

TEST_F(HandlerRunTest, PublishDerivesIdsAndFillsTheEnvelope) {
  HandlerRun run(host_, input_, &snapshot_, &pending_);
  sluice_header h{S("trace"), S("t1")};
  sluice_out_message m{};
  m.topic = "out";
  m.key = S("k1");
  m.type = S("orders.X");
  m.headers = &h;
  m.n_headers = 1;
  m.payload = B("payload");
  ASSERT_EQ(run.Publish(&m), 0);
  m.topic = "audit";
  m.correlation_id = S("mine");
  ASSERT_EQ(run.Publish(&m), 0);
  m.topic = "secret";
  EXPECT_EQ(run.Publish(&m), -EPERM);
  m.topic = nullptr;
  EXPECT_EQ(run.Publish(&m), -EINVAL);
  EXPECT_EQ(run.Publish(nullptr), -EINVAL);
  client::BundleMessage b = run.TakeBundle();
  ASSERT_EQ(b.publishes.size(), 2u);
  const client::OutMessage& p0 = b.publishes[0];
  EXPECT_EQ(p0.topic, "out");
  EXPECT_EQ(p0.key, "k1");
  EXPECT_EQ(p0.type, "orders.X");
  EXPECT_EQ(p0.correlation_id, "order-7");  // the input's
  EXPECT_EQ(p0.causation_id, input_.id_text);
  EXPECT_THAT(p0.headers, ElementsAre(std::make_pair(std::string("trace"), std::string("t1"))));
  EXPECT_EQ(p0.payload, "payload");
  EXPECT_EQ(p0.id, DeriveUuid(input_.id, "p/publish/0"));
  EXPECT_EQ(b.publishes[1].correlation_id, "mine");
  EXPECT_EQ(b.publishes[1].id, DeriveUuid(input_.id, "p/publish/1"));
  // The same run again (a conflict or a crash) publishes the same ids.
  HandlerRun again(host_, input_, &snapshot_, &pending_);
  m.topic = "out";
  ASSERT_EQ(again.Publish(&m), 0);
  EXPECT_EQ(again.TakeBundle().publishes[0].id, p0.id);
}

TEST_F(HandlerRunTest, TwoPluginsHandlingOneMessagePublishDifferentIds) {
  sluice_out_message m{};
  m.topic = "out";
  m.payload = B("x");
  HandlerRun first(host_, input_, &snapshot_, &pending_);
  ASSERT_EQ(first.Publish(&m), 0);
  RunHost other = host_;
  other.plugin = "q";
  HandlerRun second(other, input_, &snapshot_, &pending_);
  ASSERT_EQ(second.Publish(&m), 0);
  // Same input, same topic, same position: were the ids equal, dedupe would drop q's message.
  EXPECT_NE(first.TakeBundle().publishes[0].id, second.TakeBundle().publishes[0].id);
}

TEST_F(HandlerRunTest, ReplyOnlyOnceAndOnlyForRequests) {
  sluice_out_message m{};
  m.payload = B("answer");
  {
    HandlerRun run(host_, input_, &snapshot_, &pending_);
    EXPECT_EQ(run.Reply(&m), -EINVAL);  // not a request
    EXPECT_FALSE(run.TakeBundle().reply.has_value());
  }
  input_.reply_token = 77;
  HandlerRun run(host_, input_, &snapshot_, &pending_);
  ASSERT_EQ(run.Reply(&m), 0);
  EXPECT_EQ(run.Reply(&m), -EALREADY);
  client::BundleMessage b = run.TakeBundle();
  EXPECT_EQ(b.reply_token, 77u);
  ASSERT_TRUE(b.reply.has_value());
  EXPECT_EQ(b.reply->payload, "answer");
  EXPECT_EQ(b.reply->causation_id, input_.id_text);
  EXPECT_EQ(b.reply->correlation_id, "order-7");
}

TEST_F(HandlerRunTest, ChecksArguments) {
  HandlerRun run(host_, input_, &snapshot_, &pending_);
  sluice_bytes v{};
  std::string long_key(kMaxPluginKeyBytes + 1, 'k');
  std::string max_key(kMaxPluginKeyBytes, 'k');
  EXPECT_EQ(run.KvGet(B(""), &v), -EINVAL);
  EXPECT_EQ(run.KvGet(B(long_key), &v), -EINVAL);
  EXPECT_EQ(run.KvGet(B("a"), nullptr), -EINVAL);
  EXPECT_EQ(run.KvPut(B(long_key), B("v")), -EINVAL);
  EXPECT_EQ(run.KvPut(B(max_key), B("v")), 0);
  std::string big(kMaxPluginValueBytes + 1, 'v');
  EXPECT_EQ(run.KvPut(B("a"), B(big)), -E2BIG);
  EXPECT_EQ(run.KvPut(B("a"), sluice_bytes{nullptr, 3}), -EINVAL);
  EXPECT_EQ(run.KvPut(B("a"), sluice_bytes{nullptr, 0}), 0);  // an empty value
  EXPECT_EQ(run.KvDelete(sluice_bytes{nullptr, 0}), -EINVAL);
}

TEST_F(HandlerRunTest, AStoreFailureIsEioAndRemembered) {
  snapshot_.fail = Status(StatusCode::kIoError, "disk on fire");
  HandlerRun run(host_, input_, &snapshot_, &pending_);
  sluice_bytes v{};
  EXPECT_EQ(run.KvGet(B("a"), &v), -EIO);
  EXPECT_EQ(run.failure().message(), "disk on fire");
  auto noop = [](void*, sluice_bytes, sluice_bytes) -> int { return 0; };
  EXPECT_EQ(run.KvScan(B(""), 0, noop, nullptr), -EIO);
  EXPECT_EQ(run.failure().message(), "disk on fire");  // the first failure is kept
}

TEST_F(HandlerRunTest, TheCApiReachesTheRun) {
  const sluice_host_api* api = HandlerRun::Api();
  EXPECT_EQ(api->struct_size, sizeof(sluice_host_api));
  HandlerRun run(host_, input_, &snapshot_, &pending_);
  sluice_context* ctx = run.context();
  ASSERT_EQ(api->kv_put(ctx, B("a"), B("via api")), 0);
  sluice_bytes v{};
  ASSERT_EQ(api->kv_get(ctx, B("a"), &v), 0);
  EXPECT_EQ(V(v), "via api");
  EXPECT_EQ(api->now_us(ctx), 1234);
  api->log(ctx, SLUICE_LOG_WARNING, "hello");
  EXPECT_THAT(logs_, ElementsAre("4:hello"));
  // Outside a run (init, shutdown) only log and now_us work.
  EXPECT_EQ(api->kv_get(nullptr, B("a"), &v), -EINVAL);
  EXPECT_EQ(api->kv_put(nullptr, B("a"), B("x")), -EINVAL);
  EXPECT_EQ(api->publish(nullptr, nullptr), -EINVAL);
  HandlerRun::SetDefaultHost(&host_);
  api->log(nullptr, SLUICE_LOG_INFO, "from init");
  EXPECT_EQ(api->now_us(nullptr), 1234);
  HandlerRun::SetDefaultHost(nullptr);
  EXPECT_THAT(logs_, ElementsAre("4:hello", "6:from init"));
  EXPECT_GT(api->now_us(nullptr), 1700000000000000);  // the real clock without a host
}

}  // namespace
}  // namespace sluice

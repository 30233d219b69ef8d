// SPDX-License-Identifier: MIT
//
// The plugin host against the real daemon: sluiced runs the test plugins of tests/plugins/mock in
// worker processes; the tests publish to them, read their keyspaces (read-only, as a worker does),
// their outputs and dead-letter queues, and `sluicectl plugins --json`. Each test shows the broker and
// the other plugins going on while one plugin succeeds, retries, rejects, crashes, hangs, publishes
// where it may not, or is refused; plus restart backoff, hot loading, reload, unload and shutdown.
// Waits are bounded polls. Tests run one at a time (each starts its own daemon).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "broker/store/keyspace_reader.h"
#include "broker/uuid.h"
#include "tests/integration/daemon_fixture.h"

#ifndef SLUICE_MOCK_PLUGIN_DIR
#error "SLUICE_MOCK_PLUGIN_DIR must name the test plugins' build folder"
#endif

namespace sluice::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using ::testing::HasSubstr;

std::string PluginDir() { return std::string("plugin_dir = \"") + SLUICE_MOCK_PLUGIN_DIR + "\"\n"; }

json DeadLetters(const DaemonProcess& d, const std::string& topic, const std::string& sub) {
  return CtlJson(d, {"dlq", "list", topic, sub}).value("dead_letters", json::array());
}

// A key of a plugin's keyspace, read from the store the way a worker reads it.
std::optional<std::string> KvValue(const DaemonProcess& d, const std::string& keyspace, const std::string& key) {
  auto r = broker::store::KeyspaceReader::Open(d.data_dir() / "store", keyspace);
  if (!r.ok() || !(*r)->Begin().ok()) return std::nullopt;
  auto e = (*r)->Get(key);
  std::optional<std::string> out;
  if (e.ok() && e->has_value()) out = std::string((*e)->value);
  (*r)->End();
  return out;
}

int64_t Count(const DaemonProcess& d, const std::string& keyspace) {
  auto v = KvValue(d, keyspace, "count");
  return v ? std::stoll(*v) : 0;
}

std::unique_ptr<client::Connection> MustConnect(const DaemonProcess& d) {
  auto c = d.Connect();
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(*c) : nullptr;
}

client::PublishAck MustPublish(client::Connection& c, const std::string& topic, const std::string& payload,
                               const std::string& key = "") {
  client::OutMessage m;
  m.topic = topic;
  m.payload = payload;
  m.key = key;
  m.correlation_id = "corr-" + payload;
  auto ack = c.Publish(m);
  EXPECT_TRUE(ack.ok()) << ack.status().ToString();
  return ack.ok() ? *ack : client::PublishAck{};
}

bool ProcessGone(int pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

// utime + stime of a process, in clock ticks (0 once it is gone).
long CpuTicks(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto end = stat.rfind(')');
  if (end == std::string::npos) return 0;
  std::istringstream fields(stat.substr(end + 2));
  std::string f;
  long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14) utime = std::stol(f);
    if (i == 15) stime = std::stol(f);
  }
  return utime + stime;
}

// True once every named plugin's workers have subscribed. Publish only after that when several
// plugins share a topic: once one has acked a message that no other subscription holds, the store
// deletes it, and a subscription created afterwards starts after it (as the slower ASan build showed).
bool WorkersSubscribed(const DaemonProcess& d, std::initializer_list<const char*> plugins) {
  return WaitUntil([&] {
    return std::all_of(plugins.begin(), plugins.end(), [&](const char* name) {
      json p = Plugin(d, name);
      return p.value("running", 0) == p.value("instances", -1);
    });
  });
}

TEST(PluginHostTest, AWellBehavedPluginCommitsEachEffectOnce) {
  DaemonProcess d(PluginDir() + "[[plugin]]\nname = \"ok\"\n");
  ASSERT_TRUE(d.Start());
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  client::SubscribeOptions so;
  so.topic = "out";
  so.subscription = "check";
  so.start = wire::StartKind::Earliest;
  so.credit = 200;
  ASSERT_TRUE(c->Subscribe(so).ok());
  std::map<std::string, Uuid> inputs;
  for (int i = 0; i < 50; ++i) {
    std::string payload = "m" + std::to_string(i);
    inputs[payload] = MustPublish(*c, "in", payload, "k" + std::to_string(i % 5)).id;
  }
  std::set<std::string> seen;
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (seen.size() < 50 && std::chrono::steady_clock::now() < deadline) {
    auto m = c->Receive(200ms);
    if (!m.ok()) continue;
    std::string payload(m->payload());
    ASSERT_TRUE(inputs.count(payload)) << payload;
    Uuid input = inputs[payload];
    EXPECT_EQ(m->id(), DeriveUuid(input, "ok/publish/0"));
    EXPECT_EQ(m->causation_id(), FormatUuid(input));
    EXPECT_EQ(m->correlation_id(), "corr-" + payload);
    EXPECT_EQ(m->type(), "mock.Out");
    EXPECT_TRUE(seen.insert(payload).second) << "delivered twice: " << payload;
    std::vector<uint64_t> ids{m->delivery_id};
    ASSERT_TRUE(c->Ack(m->consumer_id, ids).ok());
  }
  EXPECT_EQ(seen.size(), 50u) << d.Log();
  EXPECT_TRUE(WaitUntil([&] { return Count(d, "ok") == 50; })) << Count(d, "ok");
  EXPECT_EQ(KvValue(d, "ok", "seen/m17"), "1");
  EXPECT_TRUE(WaitUntil([&] { return Plugin(d, "ok").value("handled", 0) == 50; })) << Plugin(d, "ok");

  // A request is answered by the plugin's reply, routed after its bundle committed.
  client::OutMessage q;
  q.topic = "in";
  q.payload = "question";
  auto reply = c->Request(q, 10s);
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ(reply->payload, "ok:question");
  EXPECT_EQ(reply->error, "");

  json p = Plugin(d, "ok");
  EXPECT_EQ(p.value("state", ""), "running");
  EXPECT_EQ(p.value("restarts", -1), 0);
  EXPECT_EQ(p.value("pids", json::array()).size(), 1u);
  EXPECT_EQ(d.Stop(), 0);
}

// The value of one sample line of `sluicectl metrics` ("name{labels} value"); -1 when absent.
double MetricValue(const DaemonProcess& d, const std::string& series) {
  return ::sluice::testing::MetricValue("\n" + d.Ctl({"metrics"}).out, series);
}

TEST(PluginHostTest, ARunWithoutEffectsIsAckedWithoutABundle) {
  // "ok" has effects on every message, "ignore" on none: both handle all of them, but only "ok" costs
  // bundle commits; "ignore"'s acks still reach the store (nothing is redelivered after a restart).
  const std::string config = PluginDir() + "[[plugin]]\nname = \"ok\"\n[[plugin]]\nname = \"ignore\"\n";
  DaemonProcess d(config);
  ASSERT_TRUE(d.Start());
  ASSERT_TRUE(WorkersSubscribed(d, {"ok", "ignore"})) << Plugin(d, "ignore");
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  constexpr int kMessages = 40;
  for (int i = 0; i < kMessages; ++i) MustPublish(*c, "in", std::string("e").append(std::to_string(i)));
  EXPECT_TRUE(WaitUntil([&] { return Plugin(d, "ok").value("handled", 0) == kMessages; })) << Plugin(d, "ok");
  EXPECT_TRUE(WaitUntil([&] { return Plugin(d, "ignore").value("handled", 0) == kMessages; }))
      << Plugin(d, "ignore");
  EXPECT_TRUE(WaitUntil([&] { return Subscription(d, "in", "ignore").value("pending", -1) == 0; }))
      << Subscription(d, "in", "ignore");
  EXPECT_EQ(MetricValue(d, "sluice_bundles_total{outcome=\"committed\"}"), kMessages);
  EXPECT_EQ(Count(d, "ok"), kMessages);
  EXPECT_EQ(d.Stop(), 0);

  ASSERT_TRUE(d.Start());
  ASSERT_TRUE(WorkersSubscribed(d, {"ok", "ignore"})) << Plugin(d, "ignore");
  json sub = Subscription(d, "in", "ignore");
  EXPECT_EQ(sub.value("pending", -1), 0) << sub;
  EXPECT_EQ(sub.value("in_flight", -1), 0) << sub;
  EXPECT_EQ(d.Stop(), 0);
}

// Loads a plugin from a drop-in into the running daemon, so that it starts after the messages it
// will take were published: it gets them in one burst and handles them in one pass.
CommandResult LoadDropIn(const DaemonProcess& d, const std::string& name, const std::string& table) {
  std::filesystem::create_directories(d.dir() / "plugins.d");
  std::ofstream(d.dir() / "plugins.d" / (name + ".toml")) << "[[plugin]]\nname = \"" << name << "\"\n" << table;
  return d.Ctl({"plugin", "load", name});
}

// Publishes `payloads` to "in", then loads the effect-free "ignore" plugin with `config`, so that it
// takes them all in one pass. Returns the broker's acked count when it first reached `at_least`, once
// every message ended acked and none was redelivered (-1 when that failed).
int64_t AckedWhenFirstAtLeast(const std::vector<std::string>& payloads, const std::string& config,
                              int64_t at_least) {
  DaemonProcess d(PluginDir());
  if (!d.Start()) return -1;
  auto c = MustConnect(d);
  if (c == nullptr) return -1;
  for (const std::string& payload : payloads) MustPublish(*c, "in", payload);
  CommandResult load = LoadDropIn(d, "ignore", "config = " + config + "\n");
  EXPECT_EQ(load.exit_code, 0) << load.out << load.err;
  int64_t seen = 0;
  auto acked = [&] { return Subscription(d, "in", "ignore").value("acked", 0); };
  if (!WaitUntil([&] { return (seen = acked()) >= at_least; }, 20s)) return -1;
  const auto all = static_cast<int64_t>(payloads.size());
  EXPECT_TRUE(WaitUntil([&] { return acked() == all; }, 20s)) << Subscription(d, "in", "ignore");
  EXPECT_EQ(Subscription(d, "in", "ignore").value("redelivered", -1), 0);
  EXPECT_EQ(d.Stop(), 0);
  return seen;
}

TEST(PluginHostTest, ASubscriptionOfSomeTypesDeliversThoseAndAcksTheRestUnseen) {
  DaemonProcess d(PluginDir() + "[[plugin]]\nname = \"ignore\"\nconfig = { types = [\"t.Keep\"] }\n");
  ASSERT_TRUE(d.Start());
  ASSERT_TRUE(WorkersSubscribed(d, {"ignore"})) << Plugin(d, "ignore");
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  constexpr int kEach = 15;
  for (int i = 0; i < 2 * kEach; ++i) {
    client::OutMessage m;
    m.topic = "in";
    m.type = i % 2 == 0 ? "t.Keep" : "t.Drop";
    m.payload = "e" + std::to_string(i);
    ASSERT_TRUE(c->Publish(m).ok());
  }
  EXPECT_TRUE(WaitUntil([&] { return Subscription(d, "in", "ignore").value("pending", -1) == 0; }))
      << Subscription(d, "in", "ignore");
  json sub = Subscription(d, "in", "ignore");
  EXPECT_EQ(sub.value("filtered", -1), kEach) << sub;
  EXPECT_EQ(sub.value("delivered", -1), kEach) << sub;
  EXPECT_EQ(sub.value("types", json()), json::array({"t.Keep"})) << sub;
  EXPECT_TRUE(WaitUntil([&] { return Plugin(d, "ignore").value("handled", 0) == kEach; })) << Plugin(d, "ignore");
  CommandResult table = d.Ctl({"subs"});
  EXPECT_THAT(table.out, HasSubstr("FILTERED"));
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, SubscriptionTypesForASubscriptionThePluginLacksFailItsInit) {
  DaemonProcess d(PluginDir());
  ASSERT_TRUE(d.Start());
  CommandResult r = LoadDropIn(d, "ignore", "config = { types = [\"t.Keep\"], types_index = 3 }\n");
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_TRUE(WaitUntil([&] {
    return d.Log().find("set_subscription_types refused: subscription index 3 is out of range (the plugin declares 1 "
                      "subscription)") !=
           std::string::npos;
  })) << d.Log();
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, ASlowPassSendsEachAckAsItsRunEnds) {
  // Six runs of 300 ms in one pass: each Ack leaves within kMaxOutputDelay of its run instead of with
  // the pass (1.8 s later), so the broker sees them one by one, and a lease never outlives a finished
  // run because its Ack was still queued.
  std::vector<std::string> payloads;
  for (int i = 0; i < 6; ++i) payloads.push_back(std::string("s").append(std::to_string(i)));
  int64_t first = AckedWhenFirstAtLeast(payloads, "{ sleep_ms = 300 }", 1);
  EXPECT_GE(first, 1);
  EXPECT_LT(first, 6) << "the Acks arrived together, at the end of the pass";
}

TEST(PluginHostTest, AFastRunsAckDoesNotWaitForTheSlowRunAfterIt) {
  // slow0, fast1, slow2 in one pass (runs of 600 ms for the slow ones): fast1's Ack leaves before
  // slow2 starts, so the broker counts 2 acked while slow2 still runs, not 1 and then 3 together.
  EXPECT_EQ(AckedWhenFirstAtLeast({"slow0", "fast1", "slow2"}, "{ sleep_ms = 600, slow_prefix = \"slow\" }", 2), 2)
      << "fast1's Ack waited for slow2";
}

TEST(PluginHostTest, ACrashCountsOnlyAgainstTheMessagesStillHeld) {
  // Runs without effects are acked, not bundled. Before a suspect runs alone, those Acks must have
  // reached the broker: otherwise each crash of the suspect also counts against the quiet messages
  // handled just before it, and they end up dead-lettered as poison with it.
  DaemonProcess d(PluginDir());
  ASSERT_TRUE(d.Start());
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  for (int i = 0; i < 5; ++i) MustPublish(*c, "in", std::string("quiet").append(std::to_string(i)));
  MustPublish(*c, "in", "crash");
  // `plugin load` reports the first crash (status 1); the supervisor restarts the worker all the same.
  (void)LoadDropIn(d, "crash",
             "restart_backoff_initial = \"100ms\"\nrestart_backoff_max = \"1s\"\nmax_restarts = 10\n"
             "max_crashes = 3\n");
  ASSERT_TRUE(WaitUntil([&] { return !DeadLetters(d, "in", "crash").empty(); }, 30s))
      << Plugin(d, "crash") << d.Log();
  EXPECT_TRUE(WaitUntil([&] { return Subscription(d, "in", "crash").value("pending", -1) == 0; }))
      << Subscription(d, "in", "crash");
  json dead = DeadLetters(d, "in", "crash");
  ASSERT_EQ(dead.size(), 1u) << dead;
  EXPECT_THAT(dead[0].value("reason", ""), HasSubstr("poison"));
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, TwoInstancesRacingOnOneKeyLoseNoUpdate) {
  // Every message increments the same key: the instances' bundles conflict, and the loser runs again
  // with fresh reads, so the count is exact.
  DaemonProcess d(PluginDir() + "[[plugin]]\nname = \"ok\"\ninstances = 2\n");
  ASSERT_TRUE(d.Start());
  ASSERT_TRUE(WaitUntil([&] { return Plugin(d, "ok").value("running", 0) == 2; })) << Plugin(d, "ok");
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  constexpr int kMessages = 300;
  for (int i = 0; i < kMessages; ++i) {
    client::OutMessage m;
    m.topic = "in";
    m.payload = "r" + std::to_string(i);
    ASSERT_TRUE(c->PublishAsync(m).ok());
  }
  for (int i = 0; i < kMessages; ++i) ASSERT_TRUE(c->WaitPublishAck(10s).ok());
  EXPECT_TRUE(WaitUntil([&] { return Count(d, "ok") == kMessages; }, 30s)) << Count(d, "ok");
  ASSERT_TRUE(WaitUntil([&] { return Plugin(d, "ok").value("handled", 0) == kMessages; }))
      << Plugin(d, "ok");
  json p = Plugin(d, "ok");
  // Both took part (competing consumers), their bundles conflicted, and the losers ran again.
  EXPECT_GT(p["workers"][0].value("handled", 0), 0) << p;
  EXPECT_GT(p["workers"][1].value("handled", 0), 0) << p;
  EXPECT_GT(p.value("conflicts", 0), 0) << p;
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(Count(d, "ok"), kMessages);
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, RetryAndRejectEndInTheDeadLetterQueueWithTheirReasons) {
  DaemonProcess d(PluginDir() +
                  "[[subscription]]\ntopic = \"in\"\nname = \"retry_reject\"\nstart = \"earliest\"\n"
                  "max_deliveries = 3\nbackoff_initial = \"10ms\"\nbackoff_max = \"20ms\"\n"
                  "[[plugin]]\nname = \"retry_reject\"\n");
  ASSERT_TRUE(d.Start());
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  MustPublish(*c, "in", "reject");
  MustPublish(*c, "in", "retry");
  MustPublish(*c, "in", "fine");
  ASSERT_TRUE(WaitUntil([&] { return DeadLetters(d, "in", "retry_reject").size() == 2; }))
      << DeadLetters(d, "in", "retry_reject") << d.Log();
  json rejected, retried;
  for (const auto& dl : DeadLetters(d, "in", "retry_reject")) {
    (dl.value("last_error", "") == "rejected: bad input" ? rejected : retried) = dl;
  }
  EXPECT_EQ(rejected.value("reason", ""), "rejected");
  EXPECT_EQ(rejected.value("delivery_count", 0), 1);
  EXPECT_THAT(d.Log(), HasSubstr("rejected, dead-lettered: rejected: bad input"));
  EXPECT_EQ(retried.value("reason", ""), "max_deliveries (3) reached");
  EXPECT_EQ(retried.value("last_error", ""), "try again");
  EXPECT_EQ(retried.value("delivery_count", 0), 3);
  EXPECT_TRUE(WaitUntil([&] { return Count(d, "retry_reject") == 1; }));
  json p = Plugin(d, "retry_reject");
  EXPECT_EQ(p.value("state", ""), "running");
  EXPECT_EQ(p.value("restarts", -1), 0);
  EXPECT_TRUE(WaitUntil([&] {
    json q = Plugin(d, "retry_reject");
    return q.value("rejected", 0) == 1 && q.value("retried", 0) == 3;
  })) << Plugin(d, "retry_reject");
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, ACrashingHandlerIsRestartedWithBackoffAndItsMessageBecomesPoison) {
  DaemonProcess d(PluginDir() +
                  "[[plugin]]\nname = \"crash\"\nrestart_backoff_initial = \"200ms\"\n"
                  "restart_backoff_max = \"10s\"\nmax_restarts = 10\nmax_crashes = 4\n"
                  "[[plugin]]\nname = \"ok\"\n");
  ASSERT_TRUE(d.Start());
  ASSERT_TRUE(WorkersSubscribed(d, {"crash", "ok"})) << Plugin(d, "crash") << d.Log();
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  MustPublish(*c, "in", "a");
  MustPublish(*c, "in", "crash");
  MustPublish(*c, "in", "b");
  ASSERT_TRUE(WaitUntil([&] { return DeadLetters(d, "in", "crash").size() == 1; }, 30s))
      << Plugin(d, "crash") << d.Log();
  json dl = DeadLetters(d, "in", "crash")[0];
  EXPECT_THAT(dl.value("reason", ""), HasSubstr("poison"));
  EXPECT_THAT(dl.value("reason", ""), HasSubstr("4"));  // the plugin's max_crashes
  // Only the crashing message: the innocent ones were handled (they ran alone or first).
  EXPECT_TRUE(WaitUntil([&] { return Count(d, "crash") == 2; })) << Count(d, "crash");
  EXPECT_TRUE(WaitUntil([&] { return Plugin(d, "crash").value("state", "") == "running"; }));
  // The other plugin went on: it handled all three, was never restarted, and the broker answers.
  EXPECT_TRUE(WaitUntil([&] { return Count(d, "ok") == 3; }));
  EXPECT_EQ(Plugin(d, "ok").value("restarts", -1), 0);
  EXPECT_TRUE(d.Ctl({"ping"}).exit_code == 0);

  // Restarts back off: 200 ms, 400 ms, 800 ms, 1.6 s between the starts of the crashing worker.
  json p = Plugin(d, "crash");
  EXPECT_EQ(p.value("restarts", 0), 4) << p;
  json starts = p["workers"][0]["starts_us"];
  ASSERT_GE(starts.size(), 5u) << p;
  for (size_t i = 1; i < 5; ++i) {
    int64_t gap_ms = (starts[i].get<int64_t>() - starts[i - 1].get<int64_t>()) / 1000;
    EXPECT_GE(gap_ms, 200 << (i - 1)) << "restart " << i << ": " << p;
  }
  EXPECT_THAT(p["workers"][0].value("last_exit", ""), HasSubstr("signal 11"));
  EXPECT_THAT(d.Log(), HasSubstr("in handle() of message seq 2"));
  EXPECT_EQ(d.Stop(), 0);
}

// A plugin with sync(): the worker holds a pass's bundles until sync() returns 0, so one sync covers a
// backlog, and a failed sync retries its messages without committing any of their effects.
TEST(PluginHostTest, APluginsSyncCoversABacklogAndAFailedSyncRetriesItsMessages) {
  DaemonProcess d(PluginDir() +
                  "[[subscription]]\ntopic = \"in\"\nname = \"sync_once_fails\"\nstart = \"earliest\"\n");
  ASSERT_TRUE(d.Start());
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  constexpr int kMessages = 200;
  for (int i = 0; i < kMessages; ++i) MustPublish(*c, "in", "m" + std::to_string(i));
  std::filesystem::create_directories(d.dir() / "plugins.d");
  std::ofstream(d.dir() / "plugins.d" / "sync.toml") << "[[plugin]]\nname = \"sync_once_fails\"\n";
  CommandResult r = d.Ctl({"plugin", "load", "sync_once_fails"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(WaitUntil([&] { return Count(d, "sync_once_fails") == kMessages; }, 30s))
      << Count(d, "sync_once_fails") << d.Log();
  EXPECT_THAT(d.Log(), HasSubstr("sync() failed: Input/output error; retrying the"));
  EXPECT_TRUE(WaitUntil([&] {
    json p = Plugin(d, "sync_once_fails");
    return p.value("handled", 0) == kMessages && p.value("retried", 0) >= 1;
  })) << Plugin(d, "sync_once_fails");
  // Every message after the failed first pass was covered by far fewer syncs than messages.
  int syncs = 0, covered = 0;
  std::istringstream log(d.Log());
  for (std::string line; std::getline(log, line);) {
    auto at = line.find("sync covered ");
    if (at == std::string::npos) continue;
    ++syncs;
    covered += std::stoi(line.substr(at + 13));
  }
  EXPECT_EQ(covered, kMessages);
  EXPECT_LT(syncs, kMessages / 2) << "one sync per pass over the queued deliveries";
  // Nothing the failed sync covered was committed twice.
  EXPECT_EQ(Count(d, "sync_once_fails"), kMessages);
  EXPECT_EQ(d.Stop(), 0);
}

// `plugin load` answers whether the plugin started, not only whether the daemon took the command.
TEST(PluginHostTest, LoadingAPluginThatCannotStartFailsWithItsError) {
  DaemonProcess d(PluginDir());
  ASSERT_TRUE(d.Start());
  std::filesystem::create_directories(d.dir() / "plugins.d");
  std::ofstream(d.dir() / "plugins.d" / "ghost.toml") << "[[plugin]]\nname = \"ghost\"\n";
  CommandResult r = d.Ctl({"plugin", "load", "ghost"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_THAT(r.err, HasSubstr("plugin ghost did not start (failed)"));
  EXPECT_THAT(r.err, HasSubstr("ghost.so"));
  // --check-config warns about the missing library, and still accepts the file.
  CommandResult check = RunCommand({SluicedPath(), "--check-config", "--config", d.config_path().string()});
  EXPECT_EQ(check.exit_code, 0) << check.err;
  EXPECT_THAT(check.err, HasSubstr("<4>sluiced: plugin ghost: "));
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, AHangingHandlerIsKilledAfterItsTimeoutAndTheMessageRedelivered) {
  DaemonProcess d(PluginDir() +
                  "[[plugin]]\nname = \"hang\"\nhandler_timeout = \"300ms\"\nrestart_backoff_initial = \"50ms\"\n"
                  "max_restarts = 10\n"
                  "[[plugin]]\nname = \"ok\"\n");
  ASSERT_TRUE(d.Start());
  ASSERT_TRUE(WorkersSubscribed(d, {"hang", "ok"})) << Plugin(d, "hang") << d.Log();
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  MustPublish(*c, "in", "hang");
  MustPublish(*c, "in", "after");
  // Killed, restarted and redelivered until the crash count makes it poison (max_crashes = 3).
  ASSERT_TRUE(WaitUntil([&] { return DeadLetters(d, "in", "hang").size() == 1; }, 30s))
      << Plugin(d, "hang") << d.Log();
  EXPECT_THAT(DeadLetters(d, "in", "hang")[0].value("reason", ""), HasSubstr("poison"));
  EXPECT_THAT(d.Log(), HasSubstr("ran longer than handler_timeout (300ms)"));
  EXPECT_THAT(Plugin(d, "hang")["workers"][0].value("last_exit", ""), HasSubstr("signal 9"));
  EXPECT_TRUE(WaitUntil([&] { return Count(d, "hang") == 1; }));
  EXPECT_TRUE(WaitUntil([&] { return Count(d, "ok") == 2; }));
  EXPECT_EQ(Plugin(d, "ok").value("restarts", -1), 0);
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, APublishToAnUndeclaredTopicIsRefused) {
  DaemonProcess d(PluginDir() + "[[plugin]]\nname = \"undeclared\"\n");
  ASSERT_TRUE(d.Start());
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  MustPublish(*c, "in", "x");
  ASSERT_TRUE(WaitUntil([&] { return DeadLetters(d, "in", "undeclared").size() == 1; })) << d.Log();
  json dl = DeadLetters(d, "in", "undeclared")[0];
  EXPECT_EQ(dl.value("reason", ""), "rejected");
  EXPECT_EQ(dl.value("last_error", ""), "publish to secret refused: -1");  // -EPERM
  // Nothing reached the topic.
  json topics = CtlJson(d, {"topics"});
  for (const auto& t : topics.value("topics", json::array())) EXPECT_NE(t.value("name", ""), "secret");
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, ABadPluginIsRefusedWithTheDocumentedMessageAndNotRestarted) {
  DaemonProcess d(PluginDir() +
                  "[[plugin]]\nname = \"wrong_abi\"\n[[plugin]]\nname = \"no_entry\"\n"
                  "[[plugin]]\nname = \"missing\"\n[[plugin]]\nname = \"ok\"\n");
  ASSERT_TRUE(d.Start());
  const std::string dir = SLUICE_MOCK_PLUGIN_DIR;
  struct Case {
    const char* name;
    std::string error;
  } cases[] = {
      {"wrong_abi", dir + "/wrong_abi.so: plugin ABI 2.0 is not supported (host speaks 1.2)"},
      {"no_entry", dir + "/no_entry.so: no sluice_plugin_entry symbol (export it with SLUICE_PLUGIN_EXPORT)"},
      {"missing", dir + "/missing.so: cannot load: cannot open shared object file: No such file or directory"},
  };
  for (const Case& c : cases) {
    ASSERT_TRUE(WaitUntil([&] { return Plugin(d, c.name).value("state", "") == "failed"; })) << Plugin(d, c.name);
    json p = Plugin(d, c.name);
    EXPECT_EQ(p.value("last_error", ""), c.error);
    EXPECT_EQ(p.value("restarts", -1), 0);
    EXPECT_THAT(d.Log(), HasSubstr(c.error));
  }
  // The human table shows it too.
  CommandResult table = d.Ctl({"plugins"});
  EXPECT_EQ(table.exit_code, 0);
  EXPECT_THAT(table.out, HasSubstr("plugin ABI 2.0 is not supported (host speaks 1.2)"));
  // The good plugin and the broker are unaffected.
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  MustPublish(*c, "in", "x");
  EXPECT_TRUE(WaitUntil([&] { return Count(d, "ok") == 1; }));
  EXPECT_EQ(Plugin(d, "ok").value("state", ""), "running");
  EXPECT_EQ(d.Stop(), 0);
}

// The operator fixes the config and reloads: the plugin runs, and its last error is gone with the
// settings that caused it.
TEST(PluginHostTest, AFailedPluginFixedByReloadRunsWithoutItsOldError) {
  const std::string plugin = PluginDir() +
                             "[[plugin]]\nname = \"ok\"\nrestart_backoff_initial = \"20ms\"\nmax_restarts = 2\n";
  DaemonProcess d(plugin + "config = { fail_init = true }\n");
  ASSERT_TRUE(d.Start());
  ASSERT_TRUE(WaitUntil([&] { return Plugin(d, "ok").value("state", "") == "failed"; })) << Plugin(d, "ok");
  EXPECT_THAT(Plugin(d, "ok").value("last_error", ""), HasSubstr("config.fail_init is set"));
  d.WriteConfig(plugin + "config = {}\n");
  CommandResult r = d.Ctl({"reload"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(WaitUntil([&] { return Plugin(d, "ok").value("state", "") == "running"; })) << Plugin(d, "ok");
  EXPECT_EQ(Plugin(d, "ok").value("last_error", "?"), "");
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, APluginThatKeepsFailingIsMarkedFailedUntilRestarted) {
  DaemonProcess d(PluginDir() +
                  "[[plugin]]\nname = \"ok\"\nrestart_backoff_initial = \"20ms\"\nmax_restarts = 3\n"
                  "config = { fail_init = true }\n");
  ASSERT_TRUE(d.Start());
  ASSERT_TRUE(WaitUntil([&] { return Plugin(d, "ok").value("state", "") == "failed"; })) << Plugin(d, "ok");
  json p = Plugin(d, "ok");
  EXPECT_THAT(p.value("last_error", ""), HasSubstr("3 crashes within restart_window"));
  // The reason the plugin logged comes with the code init() returned.
  EXPECT_THAT(p.value("last_error", ""),
              HasSubstr("init() failed: config.fail_init is set: refusing to start (Input/output error, -5)"));
  EXPECT_EQ(p.value("restarts", 0), 2);
  // Nothing restarts it by itself...
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(Plugin(d, "ok").value("restarts", 0), 2);
  // ... but an operator does; as its init() still fails, sluicectl says so.
  CommandResult r = d.Ctl({"plugin", "restart", "ok"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.out, HasSubstr("ok: restarting"));
  EXPECT_THAT(r.err, HasSubstr("plugin ok did not start"));
  EXPECT_THAT(r.err, HasSubstr("init() failed"));
  EXPECT_TRUE(WaitUntil([&] { return Plugin(d, "ok").value("restarts", 0) > 2; }));
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, HotLoadReplaysFromTheStartThenFollowsLiveWhileOthersGoOn) {
  // Replay needs retention: without it, messages every subscription has acked are gone.
  DaemonProcess d(PluginDir() + "[[topic]]\nname = \"in\"\nretention_max_age = \"1h\"\n" +
                  "[[plugin]]\nname = \"ok\"\n");
  ASSERT_TRUE(d.Start());
  std::atomic<int> published{0};
  std::atomic<bool> stop{false};
  std::thread publisher([&] {
    auto c = MustConnect(d);
    if (c == nullptr) return;
    while (!stop.load()) {
      MustPublish(*c, "in", "p" + std::to_string(published.load()));
      ++published;
      std::this_thread::sleep_for(2ms);
    }
  });
  ASSERT_TRUE(WaitUntil([&] { return published.load() >= 200; }));
  // A drop-in and a load, without touching the running plugin.
  std::filesystem::create_directories(d.dir() / "plugins.d");
  std::ofstream(d.dir() / "plugins.d" / "late.toml") << "[[plugin]]\nname = \"late\"\n";
  json ok_before = Plugin(d, "ok");
  CommandResult r = d.Ctl({"plugin", "load", "late"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("late: loaded"));
  EXPECT_THAT(r.out, HasSubstr("late: running (1/1 workers)"));
  ASSERT_TRUE(WaitUntil([&] { return Plugin(d, "late").value("state", "") == "running"; })) << Plugin(d, "late");
  // Live traffic goes on for a while after the load.
  int at_load = published.load();
  ASSERT_TRUE(WaitUntil([&] { return published.load() >= at_load + 200; }));
  stop = true;
  publisher.join();
  const int total = published.load();
  EXPECT_TRUE(WaitUntil([&] { return Count(d, "late") == total; }, 30s)) << Count(d, "late") << " of " << total;
  EXPECT_TRUE(WaitUntil([&] { return Count(d, "ok") == total; }, 30s)) << Count(d, "ok") << " of " << total;
  EXPECT_EQ(KvValue(d, "late", "seen/p0"), "1");  // the backfill reached the first message
  // The running plugin was never interrupted.
  json ok_after = Plugin(d, "ok");
  EXPECT_EQ(ok_after.value("restarts", -1), 0);
  EXPECT_EQ(ok_after["pids"], ok_before["pids"]);
  // Loading it again is refused: it runs.
  r = d.Ctl({"plugin", "load", "late"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("already running"));
  r = d.Ctl({"plugin", "load", "nosuch"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("no [[plugin]] named nosuch"));
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, SighupPicksUpAddedAndRemovedDropIns) {
  DaemonProcess d(PluginDir() + "[[plugin]]\nname = \"ok\"\n");
  ASSERT_TRUE(d.Start());
  std::filesystem::create_directories(d.dir() / "plugins.d");
  std::ofstream(d.dir() / "plugins.d" / "late.toml") << "[[plugin]]\nname = \"late\"\n";
  ::kill(d.pid(), SIGHUP);
  ASSERT_TRUE(WaitUntil([&] { return Plugin(d, "late").value("state", "") == "running"; })) << d.Log();
  int pid = Plugin(d, "late")["pids"][0].get<int>();
  std::filesystem::remove(d.dir() / "plugins.d" / "late.toml");
  ::kill(d.pid(), SIGHUP);
  ASSERT_TRUE(WaitUntil([&] { return Plugin(d, "late").empty(); })) << Plugin(d, "late");
  EXPECT_TRUE(WaitUntil([&] { return ProcessGone(pid); }));
  EXPECT_EQ(Plugin(d, "ok").value("state", ""), "running");
  EXPECT_EQ(Plugin(d, "ok").value("restarts", -1), 0);
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, UnloadStopsTheWorkersAndTheirMessagesWait) {
  DaemonProcess d(PluginDir() + "[[plugin]]\nname = \"ok\"\ninstances = 2\n");
  ASSERT_TRUE(d.Start());
  ASSERT_TRUE(WaitUntil([&] { return Plugin(d, "ok").value("running", 0) == 2; })) << Plugin(d, "ok");
  json pids = Plugin(d, "ok")["pids"];
  ASSERT_EQ(pids.size(), 2u);
  CommandResult r = d.Ctl({"plugin", "unload", "ok"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("ok: stopped (0/2 workers)"));
  // sluicectl returns once the workers have exited and were reaped: no waiting here.
  EXPECT_EQ(Plugin(d, "ok").value("state", ""), "stopped") << Plugin(d, "ok");
  for (const auto& pid : pids) EXPECT_TRUE(ProcessGone(pid.get<int>())) << pid;
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  MustPublish(*c, "in", "while-unloaded");
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(Count(d, "ok"), 0);
  r = d.Ctl({"plugin", "load", "ok"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(WaitUntil([&] { return Count(d, "ok") == 1; }));
  r = d.Ctl({"plugin", "unload", "nosuch"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("no plugin named nosuch"));
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, ALoadWhileTheWorkersAreStillStoppingIsRefusedUntilTheyHaveExited) {
  // The hanging handler keeps its worker alive after SIGTERM until the daemon's shutdown_timeout kills it.
  DaemonProcess d("shutdown_timeout = \"2s\"\n" + PluginDir() +
                  "[[plugin]]\nname = \"hang\"\nhandler_timeout = \"60s\"\n");
  ASSERT_TRUE(d.Start());
  ASSERT_TRUE(WorkersSubscribed(d, {"hang"})) << Plugin(d, "hang") << d.Log();
  auto c = MustConnect(d);
  ASSERT_NE(c, nullptr);
  json pids = Plugin(d, "hang")["pids"];
  ASSERT_EQ(pids.size(), 1u);
  const int pid = pids[0].get<int>();
  const long before = CpuTicks(pid);
  MustPublish(*c, "in", "hang");
  // The handler spins: once the worker has burnt 200 ms of CPU it is in it (an idle worker burns none).
  ASSERT_TRUE(WaitUntil([&] { return CpuTicks(pid) - before >= sysconf(_SC_CLK_TCK) / 5; }));
  CommandResult r = d.Ctl({"--timeout", "300", "plugin", "unload", "hang"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("plugin hang is still stopping after 300 ms"));
  r = d.Ctl({"plugin", "load", "hang"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("plugin hang is still stopping; try again when it is stopped"));
  // A second unload waits out the kill.
  r = d.Ctl({"plugin", "unload", "hang"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("hang: stopped (0/1 workers)"));
  r = d.Ctl({"plugin", "load", "hang"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("hang: running (1/1 workers)"));
  EXPECT_EQ(d.Stop(), 0);
}

TEST(PluginHostTest, SigtermStopsTheWorkersBeforeTheDaemon) {
  DaemonProcess d(PluginDir() + "[[plugin]]\nname = \"ok\"\ninstances = 2\n[[plugin]]\nname = \"retry_reject\"\n");
  ASSERT_TRUE(d.Start());
  ASSERT_TRUE(WaitUntil([&] { return Plugin(d, "ok").value("running", 0) == 2; }));
  ASSERT_TRUE(WaitUntil([&] { return Plugin(d, "retry_reject").value("running", 0) == 1; }));
  std::vector<int> pids;
  for (const char* name : {"ok", "retry_reject"}) {
    json p = Plugin(d, name);
    for (const auto& pid : p["pids"]) pids.push_back(pid.get<int>());
  }
  int status = d.Stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  for (int pid : pids) EXPECT_TRUE(ProcessGone(pid)) << pid;
  std::string log = d.Log();
  size_t worker_stopped = log.find("worker pid");
  size_t daemon_stopped = log.rfind("stopped");
  EXPECT_NE(worker_stopped, std::string::npos);
  EXPECT_LT(worker_stopped, daemon_stopped);
  EXPECT_THAT(log, HasSubstr("ok[0]: stopped"));
}

}  // namespace
}  // namespace sluice::testing

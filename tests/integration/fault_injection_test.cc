// SPDX-License-Identifier: MIT
//
// Exactly-once effects under crashes (DESIGN.md, "Plugins"): the `ok` test plugin (per input: read the
// key "count", write count + 1, publish one message to "out" with an id derived from the input's) runs
// in the real daemon while the test-only hook of broker/fault_point.h kills a worker or the daemon at
// one step of a handler's life: before handle(), after it returns, after the bundle is on the socket,
// after the broker committed it (the daemon dies), and before the worker sees the BundleAck. The
// supervisor restarts a killed worker; a killed daemon is started again by the test, without the
// variable. Afterwards the count is exactly the number of inputs, the dead-letter queue is empty, the
// output topic stored exactly one message per input, and a downstream subscription receives each of
// them once, with no duplicate. The fault fires once across restarts (its once-file), and the file is
// checked, so a hook that never fired fails the test. Two instances racing on one key are covered by
// plugin_host_test.cc (TwoInstancesRacingOnOneKeyLoseNoUpdate). Waits are bounded polls.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <ostream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
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
using ::testing::StartsWith;

constexpr int kInputs = 20;
// Mid-stream: earlier bundles are in flight (or still in the worker's send buffer) when it dies.
constexpr int kFaultAt = 7;

json Topic(const DaemonProcess& d, const std::string& name) {
  for (const auto& t : CtlJson(d, {"topics"}).value("topics", json::array())) {
    if (t.value("name", "") == name) return t;
  }
  return json::object();
}

// The plugin's counter, read from the store the way a worker reads it.
int64_t Count(const DaemonProcess& d) {
  auto r = broker::store::KeyspaceReader::Open(d.data_dir() / "store", "ok");
  if (!r.ok() || !(*r)->Begin().ok()) return -1;
  auto e = (*r)->Get("count");
  int64_t n = e.ok() && e->has_value() ? std::stoll(std::string((*e)->value)) : 0;
  (*r)->End();
  return n;
}

std::string ReadAll(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct FaultCase {
  const char* point;
  bool kills_daemon;
};

void PrintTo(const FaultCase& c, std::ostream* os) { *os << c.point; }

class FaultInjectionTest : public ::testing::TestWithParam<FaultCase> {};

TEST_P(FaultInjectionTest, AfterRestartEachInputHasExactlyOneEffectAndOneOutput) {
  const FaultCase& fc = GetParam();
  // Both subscriptions are declared in the config, so they hold every input and every output from
  // the first one on (the plugin's own Subscribe then attaches to "in"/"ok").
  const std::string base = std::string("plugin_dir = \"") + SLUICE_MOCK_PLUGIN_DIR + "\"\n" +
                           "[[subscription]]\ntopic = \"in\"\nname = \"ok\"\nstart = \"earliest\"\n" +
                           "[[subscription]]\ntopic = \"out\"\nname = \"downstream\"\nstart = \"earliest\"\n";
  const std::string plugin = "[[plugin]]\nname = \"ok\"\nrestart_backoff_initial = \"20ms\"\n";
  DaemonProcess d(base);

  // Every input is stored before the plugin runs, so the fault meets a full pipeline and the test
  // never publishes into a dying daemon.
  ASSERT_TRUE(d.Start());
  std::map<Uuid, Uuid> output_of;  // expected output id -> input id
  {
    auto c = d.Connect();
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    for (int i = 0; i < kInputs; ++i) {
      client::OutMessage m;
      m.topic = "in";
      m.key = "k" + std::to_string(i % 3);
      m.payload = "m" + std::to_string(i);
      auto ack = (*c)->Publish(m);
      ASSERT_TRUE(ack.ok()) << ack.status().ToString();
      output_of[DeriveUuid(ack->id, "ok/publish/0")] = ack->id;
    }
  }
  ASSERT_EQ(d.Stop(), 0) << d.Log();
  ASSERT_EQ(output_of.size(), static_cast<size_t>(kInputs));

  const auto once_file = d.dir() / "fault-fired";
  d.WriteConfig(base + plugin);
  const std::map<std::string, std::string> env = {
      {"SLUICE_FAULT", fmt::format("{}:{}:{}", fc.point, kFaultAt, once_file.string())}};

  if (fc.kills_daemon) {
    // The daemon may die before Start() sees it answer, so only its death and the once-file count.
    (void)d.Start(20s, env);
    ASSERT_TRUE(WaitUntil([&] { return !d.Running(); })) << "the daemon did not die at " << fc.point;
    ASSERT_THAT(ReadAll(once_file), StartsWith(fmt::format("{} {} ", fc.point, kFaultAt)));
    // What the dead daemon committed is in the store; the rest is redelivered after the restart.
    ASSERT_TRUE(d.Start()) << d.Log();
  } else {
    ASSERT_TRUE(d.Start(20s, env));
    ASSERT_TRUE(WaitUntil([&] { return std::filesystem::exists(once_file); }))
        << "the fault never fired at " << fc.point << "\n" << d.Log();
    EXPECT_THAT(ReadAll(once_file), StartsWith(fmt::format("{} {} ", fc.point, kFaultAt)));
  }

  ASSERT_TRUE(WaitUntil([&] { return Count(d) >= kInputs; }, 30s)) << Count(d) << "\n" << d.Log();
  EXPECT_EQ(Count(d), kInputs);
  EXPECT_TRUE(d.Running()) << d.Log();
  if (!fc.kills_daemon) {
    // The supervisor restarted the killed worker once, and the daemon went on.
    ASSERT_TRUE(WaitUntil([&] { return Plugin(d, "ok").value("state", "") == "running"; })) << Plugin(d, "ok");
    json p = Plugin(d, "ok");
    EXPECT_EQ(p.value("restarts", -1), 1) << p;
    EXPECT_THAT(p["workers"][0].value("last_exit", ""), HasSubstr("signal 9")) << p;
  }
  EXPECT_EQ(CtlJson(d, {"dlq", "list", "in", "ok"}).value("dead_letters", json::array()).size(), 0u);
  // One stored output per input: a second commit of any input would have taken another sequence.
  EXPECT_EQ(Topic(d, "out").value("last_seq", -1), kInputs) << Topic(d, "out");

  // Downstream: each output once.
  auto c = d.Connect();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  client::SubscribeOptions so;
  so.topic = "out";
  so.subscription = "downstream";
  so.start = wire::StartKind::Earliest;
  so.credit = 2 * kInputs;
  ASSERT_TRUE((*c)->Subscribe(so).ok());
  std::set<Uuid> seen;
  int deliveries = 0;
  // Until every output arrived, then for a quiet half second in which a duplicate would show.
  auto deadline = std::chrono::steady_clock::now() + 20s;
  auto quiet_until = std::chrono::steady_clock::time_point::max();
  while (std::chrono::steady_clock::now() < std::min(deadline, quiet_until)) {
    auto m = (*c)->Receive(50ms);
    if (!m.ok()) continue;
    ++deliveries;
    auto expected = output_of.find(m->id());
    ASSERT_NE(expected, output_of.end()) << "an output no input explains: " << FormatUuid(m->id());
    EXPECT_EQ(m->causation_id(), FormatUuid(expected->second));
    EXPECT_EQ(m->delivery_count, 1u);
    EXPECT_TRUE(seen.insert(m->id()).second) << "delivered twice: " << FormatUuid(m->id());
    std::vector<uint64_t> ids{m->delivery_id};
    ASSERT_TRUE((*c)->Ack(m->consumer_id, ids).ok());
    if (seen.size() == output_of.size() && quiet_until == std::chrono::steady_clock::time_point::max()) {
      quiet_until = std::chrono::steady_clock::now() + 500ms;
    }
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(kInputs));
  EXPECT_EQ(deliveries, kInputs);
  // Nothing ran twice after the check either.
  EXPECT_EQ(Count(d), kInputs);
  EXPECT_EQ(d.Stop(), 0);
}

INSTANTIATE_TEST_SUITE_P(EachStep, FaultInjectionTest,
                         ::testing::Values(FaultCase{"worker.before_handle", false},
                                           FaultCase{"worker.after_handle", false},
                                           FaultCase{"worker.after_send", false},
                                           FaultCase{"daemon.after_commit", true},
                                           FaultCase{"worker.before_ack", false}),
                         [](const ::testing::TestParamInfo<FaultCase>& param) {
                           std::string name = param.param.point;
                           for (char& ch : name) {
                             if (ch == '.') ch = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace sluice::testing

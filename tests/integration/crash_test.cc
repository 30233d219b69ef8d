// SPDX-License-Identifier: MIT
//
// Crash test: a publisher and a consumer run against the real sluiced while it is killed with SIGKILL
// at random moments (CRASH_ROUNDS, default 20). After the last restart a fresh consumer drains the
// subscription. The bar: every message whose PublishAck the publisher saw is delivered at least once
// (zero loss); duplicates are counted and reported, not failed on (delivery is at-least-once).
// SLUICE_CRASH_SEED replays a failing run.
#include <signal.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <cstdlib>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "tests/integration/daemon_fixture.h"

namespace sluice::testing {
namespace {

using namespace std::chrono_literals;

constexpr char kTopic[] = "crash";
constexpr char kSub[] = "survivor";

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

struct Ledger {
  std::mutex mu;
  std::set<uint64_t> acked_by_broker;   // publish confirmed
  std::set<uint64_t> received;          // seen by a consumer at least once
  uint64_t receipts = 0;                // every delivery, duplicates included
  uint64_t next_id = 1;
};

uint64_t PayloadId(std::string_view payload) {
  uint64_t id = 0;
  std::memcpy(&id, payload.data(), std::min(payload.size(), sizeof id));
  return id;
}

// Publishes until the connection breaks; records every id whose ack arrived.
void Publisher(const DaemonProcess& d, Ledger& ledger, const std::atomic<bool>& stop) {
  auto conn = d.Connect("crash-publisher");
  if (!conn.ok()) return;
  client::OutMessage m;
  m.topic = kTopic;
  m.payload.assign(64, 'p');
  std::deque<uint64_t> in_flight;
  while (!stop.load()) {
    while (in_flight.size() < 32) {
      uint64_t id;
      {
        std::lock_guard lock(ledger.mu);
        id = ledger.next_id++;
      }
      std::memcpy(m.payload.data(), &id, sizeof id);
      if (!(*conn)->PublishAsync(m).ok()) return;
      in_flight.push_back(id);
    }
    auto ack = (*conn)->WaitPublishAck(2s);
    if (!ack.ok()) return;
    std::lock_guard lock(ledger.mu);
    ledger.acked_by_broker.insert(in_flight.front());
    in_flight.pop_front();
  }
}

// Consumes and acks until the connection breaks or `stop`.
void Consumer(const DaemonProcess& d, Ledger& ledger, const std::atomic<bool>& stop) {
  auto conn = d.Connect("crash-consumer");
  if (!conn.ok()) return;
  client::SubscribeOptions so;
  so.topic = kTopic;
  so.subscription = kSub;
  so.start = wire::StartKind::Earliest;
  so.credit = 64;
  auto cid = (*conn)->Subscribe(so);
  if (!cid.ok()) return;
  while (!stop.load()) {
    auto delivery = (*conn)->Receive(200ms);
    if (!delivery.ok()) {
      if (delivery.status().code() == StatusCode::kTimeout) continue;
      return;
    }
    {
      std::lock_guard lock(ledger.mu);
      ledger.received.insert(PayloadId(delivery->payload()));
      ++ledger.receipts;
    }
    uint64_t id = delivery->delivery_id;
    if (!(*conn)->Ack(*cid, std::span<const uint64_t>(&id, 1)).ok()) return;
    if (!(*conn)->AddCredit(*cid, 1).ok()) return;
  }
}

TEST(CrashTest, KillNineLosesNoAcknowledgedMessage) {
  const int rounds = EnvInt("CRASH_ROUNDS", 20);
  const unsigned seed = static_cast<unsigned>(EnvInt("SLUICE_CRASH_SEED", static_cast<int>(std::random_device{}())));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> delay_ms(30, 400);
  RecordProperty("seed", static_cast<int>(seed));

  DaemonProcess d("[[topic]]\nname = \"crash\"\n[[subscription]]\ntopic = \"crash\"\nname = \"survivor\"\n"
                  "start = \"earliest\"\nack_wait = \"2s\"\nmax_deliveries = 1000\n");
  Ledger ledger;
  for (int round = 0; round < rounds; ++round) {
    ASSERT_TRUE(d.Start()) << "round " << round << ", seed " << seed;
    std::atomic<bool> stop{false};
    std::thread pub([&] { Publisher(d, ledger, stop); });
    std::thread con([&] { Consumer(d, ledger, stop); });
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    d.Kill();
    stop = true;
    pub.join();
    con.join();
  }

  // Drain: a final consumer on the restarted daemon must see every confirmed message.
  ASSERT_TRUE(d.Start());
  std::set<uint64_t> missing;
  {
    std::lock_guard lock(ledger.mu);
    for (uint64_t id : ledger.acked_by_broker) {
      if (!ledger.received.count(id)) missing.insert(id);
    }
  }
  auto conn = d.Connect("crash-drain");
  ASSERT_TRUE(conn.ok());
  client::SubscribeOptions so;
  so.topic = kTopic;
  so.subscription = kSub;
  so.credit = 256;
  auto cid = (*conn)->Subscribe(so);
  ASSERT_TRUE(cid.ok()) << cid.status().ToString();
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (!missing.empty() && std::chrono::steady_clock::now() < deadline) {
    auto delivery = (*conn)->Receive(500ms);
    if (!delivery.ok()) continue;
    uint64_t pid = PayloadId(delivery->payload());
    missing.erase(pid);
    {
      std::lock_guard lock(ledger.mu);
      if (!ledger.received.insert(pid).second) {
        // Seen before the crash too: an at-least-once duplicate.
      }
      ++ledger.receipts;
    }
    uint64_t id = delivery->delivery_id;
    ASSERT_TRUE((*conn)->Ack(*cid, std::span<const uint64_t>(&id, 1)).ok());
    ASSERT_TRUE((*conn)->AddCredit(*cid, 1).ok());
  }
  uint64_t confirmed = ledger.acked_by_broker.size();
  uint64_t duplicates = ledger.receipts - ledger.received.size();
  std::printf("crash test: %d kills, %llu confirmed publishes, %llu deliveries, %llu duplicates, %zu lost "
              "(seed %u)\n",
              rounds, static_cast<unsigned long long>(confirmed),
              static_cast<unsigned long long>(ledger.receipts), static_cast<unsigned long long>(duplicates),
              missing.size(), seed);
  RecordProperty("confirmed", static_cast<int>(confirmed));
  RecordProperty("duplicates", static_cast<int>(duplicates));
  EXPECT_GT(confirmed, 0u) << "the publisher never got an ack: the test measured nothing";
  EXPECT_TRUE(missing.empty()) << missing.size() << " confirmed messages were lost, first id "
                               << *missing.begin() << " (seed " << seed << ")";
  EXPECT_EQ(WEXITSTATUS(d.Stop()), 0);
}

}  // namespace
}  // namespace sluice::testing

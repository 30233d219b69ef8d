// SPDX-License-Identifier: MIT
//
// sluice-bench: measures a live sluiced through its broker socket, the way a user would, and prints the
// machine's ceiling measured in the same run (raw LMDB appends of the same messages, 256 per synced
// transaction). Workloads (issue 3; bench/README.md has the figures):
//   A  durable publish: 1 producer, N messages, up to --inflight unconfirmed
//   B  consume + ack of the backlog A left, prefetch --prefetch
//   C  end-to-end latency at a fixed rate for --duration: p50, p99, p99.9, max
//   D  fan-out: one topic, three subscriptions, publish rate and deliveries/s
// Every workload runs --runs times (default 3) on fresh topics; the median, min and max are printed.
// --topic and --subscription leave a backlog behind on purpose (bench/backlog-rss.sh): A publishes to
// the named topic, after creating a durable subscription on it that starts at the earliest, so every
// message stays stored for that subscription.
// Threads: C and D run consumers on their own threads, each with its own Connection.
#include <lmdb.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "broker/client/client.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using sluice::client::Connection;

struct Options {
  std::string socket = "run/broker.sock";
  std::string workloads = "raw,A,B,C,D";
  size_t messages = 200000;
  size_t size = 256;
  size_t inflight = 256;
  uint32_t prefetch = 256;
  int runs = 3;
  double rate = 5000;
  double duration_s = 10;
  std::string raw_dir;
  std::string topic;         // A and B: this topic instead of a fresh one per run
  std::string subscription;  // A: first create this durable subscription on the topic, from the earliest
};

struct Stats {
  double median, min, max;
};

Stats Summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

void PrintStats(const char* what, const char* unit, const std::vector<double>& v) {
  Stats s = Summarize(v);
  std::printf("  %-34s median %12.0f %s   (min %.0f, max %.0f, %zu runs)\n", what, s.median, unit, s.min,
              s.max, v.size());
}

std::string RunId() {
  std::random_device rd;
  return fmt::format("{:08x}", rd());
}

std::unique_ptr<Connection> MustConnect(const Options& o, const char* name) {
  sluice::client::ConnectOptions co;
  co.name = name;
  co.timeout = 30s;
  auto c = Connection::Connect(o.socket, co);
  if (!c.ok()) {
    std::fprintf(stderr, "sluice-bench: %s\n", c.status().message().c_str());
    std::exit(3);
  }
  return std::move(*c);
}

[[noreturn]] void Fail(const std::string& what, const sluice::Status& st) {
  std::fprintf(stderr, "sluice-bench: %s: %s\n", what.c_str(), st.ToString().c_str());
  std::exit(1);
}

void Check(const char* what, const sluice::Status& st) {
  if (!st.ok()) Fail(what, st);
}

// Publishes `n` messages with at most `inflight` unconfirmed; returns messages/s.
double PublishPipelined(Connection& c, const std::string& topic, size_t n, size_t size, size_t inflight) {
  sluice::client::OutMessage m;
  m.topic = topic;
  m.payload.assign(size, 'x');
  size_t sent = 0, acked = 0;
  auto start = Clock::now();
  while (acked < n) {
    while (sent < n && sent - acked < inflight) {
      auto r = c.PublishAsync(m);
      if (!r.ok()) Fail("publish", r.status());
      ++sent;
    }
    auto ack = c.WaitPublishAck(30s);
    if (!ack.ok()) Fail("publish ack", ack.status());
    ++acked;
  }
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  return static_cast<double>(n) / secs;
}

// Receives and acks `n` messages on a fresh consumer of `topic` from the earliest; returns messages/s.
double ConsumeAll(Connection& c, const std::string& topic, const std::string& sub, size_t n, uint32_t prefetch) {
  sluice::client::SubscribeOptions so;
  so.topic = topic;
  so.subscription = sub;
  so.start = sluice::wire::StartKind::Earliest;
  so.credit = prefetch;
  auto consumer = c.Subscribe(so);
  if (!consumer.ok()) Fail("subscribe", consumer.status());
  std::vector<uint64_t> batch;
  batch.reserve(prefetch);
  size_t got = 0;
  auto start = Clock::now();
  // Acks and credit go back in batches of a quarter of the prefetch: one frame each per batch.
  size_t ack_every = std::max<size_t>(1, prefetch / 4);
  while (got < n) {
    auto d = c.Receive(30s);
    if (!d.ok()) Fail(fmt::format("receive ({} of {})", got, n), d.status());
    batch.push_back(d->delivery_id);
    ++got;
    if (batch.size() >= ack_every || got == n) {
      Check("ack", c.Ack(*consumer, batch));
      Check("credit", c.AddCredit(*consumer, static_cast<uint32_t>(batch.size())));
      batch.clear();
    }
  }
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  Check("flush", c.Flush());
  return static_cast<double>(n) / secs;
}

double RawLmdb(const Options& o) {
  std::filesystem::path dir =
      o.raw_dir.empty() ? std::filesystem::temp_directory_path() : std::filesystem::path(o.raw_dir);
  dir /= "sluice-bench-raw-" + RunId();
  std::filesystem::create_directories(dir);
  MDB_env* env;
  mdb_env_create(&env);
  mdb_env_set_mapsize(env, std::max<size_t>(1ull << 30, o.messages * (o.size + 64) * 2));
  if (int rc = mdb_env_open(env, dir.c_str(), 0, 0644); rc != 0) {
    Fail("raw lmdb", sluice::IoError(mdb_strerror(rc)));
  }
  MDB_dbi dbi;
  MDB_txn* txn;
  mdb_txn_begin(env, nullptr, 0, &txn);
  mdb_dbi_open(txn, nullptr, 0, &dbi);
  mdb_txn_commit(txn);
  std::string value(o.size, 'x');
  auto start = Clock::now();
  uint64_t seq = 0;
  while (seq < o.messages) {
    mdb_txn_begin(env, nullptr, 0, &txn);
    for (int i = 0; i < 256 && seq < o.messages; ++i) {
      uint64_t be = __builtin_bswap64(++seq);
      MDB_val k{sizeof be, &be}, v{value.size(), value.data()};
      mdb_put(txn, dbi, &k, &v, MDB_APPEND);
    }
    mdb_txn_commit(txn);
  }
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  mdb_env_close(env);
  std::filesystem::remove_all(dir);
  return static_cast<double>(o.messages) / secs;
}

void Latency(const Options& o, std::vector<double>* p50, std::vector<double>* p99, std::vector<double>* p999,
             std::vector<double>* max) {
  std::string topic = "bench-c-" + RunId();
  auto consumer = MustConnect(o, "bench-c-consumer");
  sluice::client::SubscribeOptions so;
  so.topic = topic;
  so.subscription = "latency";
  so.start = sluice::wire::StartKind::Earliest;
  so.credit = o.prefetch;
  auto cid = consumer->Subscribe(so);
  if (!cid.ok()) Fail("subscribe", cid.status());
  size_t total = static_cast<size_t>(o.rate * o.duration_s);
  std::vector<double> lat;
  lat.reserve(total);
  std::thread reader([&] {
    std::vector<uint64_t> batch;
    while (lat.size() < total) {
      auto d = consumer->Receive(30s);
      if (!d.ok()) Fail("receive", d.status());
      int64_t sent_ns;
      std::memcpy(&sent_ns, d->payload().data(), sizeof sent_ns);
      int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
      lat.push_back(static_cast<double>(now_ns - sent_ns) / 1000.0);
      batch.push_back(d->delivery_id);
      if (batch.size() >= 16) {
        Check("ack", consumer->Ack(*cid, batch));
        Check("credit", consumer->AddCredit(*cid, static_cast<uint32_t>(batch.size())));
        Check("flush", consumer->Flush());
        batch.clear();
      }
    }
  });
  auto pub = MustConnect(o, "bench-c-publisher");
  sluice::client::OutMessage m;
  m.topic = topic;
  m.payload.assign(o.size, 'x');
  auto start = Clock::now();
  auto interval = std::chrono::duration<double>(1.0 / o.rate);
  size_t outstanding = 0;
  for (size_t i = 0; i < total; ++i) {
    auto due = start + std::chrono::duration_cast<Clock::duration>(interval * static_cast<double>(i));
    // Collect the acks that have arrived, then sleep once until the send time. (Polling every 20 us
    // woke this thread ~30,000 times a second, CPU the daemon needs on a 2-core machine.)
    while (outstanding > 0 && pub->WaitPublishAck(0ms).ok()) --outstanding;
    std::this_thread::sleep_until(due);
    int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
    std::memcpy(m.payload.data(), &now_ns, sizeof now_ns);
    if (auto r = pub->PublishAsync(m); !r.ok()) Fail("publish", r.status());
    Check("flush", pub->Flush());
    ++outstanding;
  }
  while (outstanding > 0) {
    if (!pub->WaitPublishAck(30s).ok()) break;
    --outstanding;
  }
  reader.join();
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double p) { return lat[std::min(lat.size() - 1, static_cast<size_t>(p * static_cast<double>(lat.size())))]; };
  p50->push_back(pct(0.50));
  p99->push_back(pct(0.99));
  p999->push_back(pct(0.999));
  max->push_back(lat.back());
}

void FanOut(const Options& o, std::vector<double>* pub_rate, std::vector<double>* deliveries) {
  std::string topic = "bench-d-" + RunId();
  std::vector<std::unique_ptr<Connection>> consumers;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) {
    consumers.push_back(MustConnect(o, "bench-d-consumer"));
    sluice::client::SubscribeOptions so;
    so.topic = topic;
    so.subscription = fmt::format("fan-{}", i);
    so.start = sluice::wire::StartKind::Earliest;
    so.credit = o.prefetch;
    auto cid = consumers.back()->Subscribe(so);
    if (!cid.ok()) Fail("subscribe", cid.status());
    ids.push_back(*cid);
  }
  std::atomic<size_t> delivered{0};
  auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      auto& c = *consumers[static_cast<size_t>(i)];
      std::vector<uint64_t> batch;
      size_t ack_every = std::max<size_t>(1, o.prefetch / 4);
      for (size_t got = 0; got < o.messages; ++got) {
        auto d = c.Receive(60s);
        if (!d.ok()) Fail("fan-out receive", d.status());
        batch.push_back(d->delivery_id);
        if (batch.size() >= ack_every || got + 1 == o.messages) {
          Check("ack", c.Ack(ids[static_cast<size_t>(i)], batch));
          Check("credit", c.AddCredit(ids[static_cast<size_t>(i)], static_cast<uint32_t>(batch.size())));
          batch.clear();
        }
        delivered.fetch_add(1, std::memory_order_relaxed);
      }
      Check("flush", c.Flush());
    });
  }
  auto pub = MustConnect(o, "bench-d-publisher");
  pub_rate->push_back(PublishPipelined(*pub, topic, o.messages, o.size, o.inflight));
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  deliveries->push_back(static_cast<double>(delivered.load()) / secs);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"sluice-bench: measure a running sluiced (see bench/README.md)", "sluice-bench"};
  app.add_option("-s,--socket", o.socket, "broker socket of the daemon")->capture_default_str();
  app.add_option("-w,--workloads", o.workloads, "comma-separated: raw,A,B,C,D")->capture_default_str();
  app.add_option("-n,--messages", o.messages, "messages per run (A, B, D, raw)")->capture_default_str();
  app.add_option("--size", o.size, "payload bytes")->capture_default_str();
  app.add_option("--inflight", o.inflight, "unconfirmed publishes in flight")->capture_default_str();
  app.add_option("--prefetch", o.prefetch, "consumer credit")->capture_default_str();
  app.add_option("--runs", o.runs, "runs per workload; median, min and max are printed")->capture_default_str();
  app.add_option("--rate", o.rate, "workload C: messages per second")->capture_default_str();
  app.add_option("--duration", o.duration_s, "workload C: seconds")->capture_default_str();
  app.add_option("--raw-dir", o.raw_dir, "where the raw LMDB ceiling writes (use the daemon's filesystem)");
  app.add_option("--topic", o.topic, "A, B: publish to and drain this topic instead of a fresh one per run");
  app.add_option("--subscription", o.subscription,
                 "A: first create this durable subscription (start: earliest) on the topic, so the backlog "
                 "stays stored for it");
  CLI11_PARSE(app, argc, argv);
  auto want = [&](const char* w) { return ("," + o.workloads + ",").find(std::string(",") + w + ",") != std::string::npos; };

  std::printf("sluice-bench: %zu messages of %zu bytes, %d runs, socket %s\n", o.messages, o.size, o.runs,
              o.socket.c_str());
  if (want("raw")) {
    std::vector<double> v;
    for (int r = 0; r < o.runs; ++r) v.push_back(RawLmdb(o));
    std::printf("ceiling: raw LMDB appends, 256 per synced transaction\n");
    PrintStats("appends", "msg/s", v);
  }
  std::vector<std::string> backlog_topics;
  if (want("A") || want("B")) {
    std::vector<double> a;
    for (int r = 0; r < o.runs; ++r) {
      std::string topic = o.topic.empty() ? "bench-a-" + RunId() : o.topic;
      auto c = MustConnect(o, "bench-a");
      if (!o.subscription.empty()) {
        sluice::client::SubscribeOptions so;
        so.topic = topic;
        so.subscription = o.subscription;
        so.start = sluice::wire::StartKind::Earliest;
        so.credit = 0;
        auto holder = MustConnect(o, "bench-a-subscription");
        if (auto cid = holder->Subscribe(so); !cid.ok()) Fail("subscribe", cid.status());
        Check("close", holder->Close());
      }
      a.push_back(PublishPipelined(*c, topic, o.messages, o.size, o.inflight));
      backlog_topics.push_back(topic);
    }
    std::printf("A: durable publish, 1 producer, %zu in flight\n", o.inflight);
    PrintStats("publishes confirmed", "msg/s", a);
  }
  if (want("B")) {
    std::vector<double> b;
    for (const auto& topic : backlog_topics) {
      auto c = MustConnect(o, "bench-b");
      b.push_back(ConsumeAll(*c, topic, "drain", o.messages, o.prefetch));
    }
    std::printf("B: consume + ack of the backlog, prefetch %u\n", o.prefetch);
    PrintStats("messages consumed and acked", "msg/s", b);
  }
  if (want("C")) {
    std::vector<double> p50, p99, p999, max;
    for (int r = 0; r < o.runs; ++r) Latency(o, &p50, &p99, &p999, &max);
    std::printf("C: end-to-end latency at %.0f msg/s for %.0f s (publish call to consumer receipt)\n", o.rate,
                o.duration_s);
    PrintStats("p50", "us", p50);
    PrintStats("p99", "us", p99);
    PrintStats("p99.9", "us", p999);
    PrintStats("max", "us", max);
  }
  if (want("D")) {
    std::vector<double> rate, deliveries;
    for (int r = 0; r < o.runs; ++r) FanOut(o, &rate, &deliveries);
    std::printf("D: fan-out to three subscriptions\n");
    PrintStats("publishes confirmed", "msg/s", rate);
    PrintStats("deliveries", "msg/s", deliveries);
  }
  return 0;
}

// SPDX-License-Identifier: MIT
//
// pipeline-bench: the order pipeline (issue 5) measured end to end against a live sluiced that runs the
// order, inventory, notification and analytics plugins (bench/run-pipeline-bench.sh starts one). It
// starts nothing itself. --clients connections place orders with PlaceOrder Request frames on
// order.commands, as a storefront would, each keeping --pipeline requests in flight (default 1: a
// synchronous storefront, one connection per concurrent order; more is an asynchronous one that
// multiplexes its orders over few connections). The concurrency is clients x pipeline. The connections
// are driven by --threads sender threads (default 2), each waiting on its share of them at once (epoll), as a
// load generator like wrk does: a thread per connection would put its scheduling delays into the
// latency measured and take CPU from the daemon on the machine it measures.
// One more connection consumes order.events on its own durable subscription (--subscription, start
// "latest") and takes the arrival of each OrderConfirmed / OrderCancelled, matched by correlation id
// (the order id), as the moment the order reached its final state. Per run it prints orders placed/s,
// orders/s to a final state, the placement reply latency and the placement-to-CONFIRMED time (p50, p99,
// p99.9, max); with --maildir, also how long the notification plugin took to write every thank-you mail.
// Each run places --orders orders; the median, min and max over --runs runs are printed, as sluice-bench
// does.
//
// Threads: the sender threads and the watcher thread share only an atomic order counter and the table
// of placed orders waiting for their final event (under a mutex). Each Connection stays on its thread.
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <CLI/CLI.hpp>
#include <flatbuffers/flatbuffers.h>
#include <fmt/format.h>

#include "broker/client/client.h"
#include "orders_generated.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using sluice::client::Connection;

constexpr std::string_view kOrderConfirmed = "orders.OrderConfirmed";
constexpr std::string_view kOrderCancelled = "orders.OrderCancelled";

struct Options {
  std::string socket = "run/broker.sock";
  int clients = 16;
  int pipeline = 1;  // PlaceOrder requests in flight per client connection
  int threads = 2;   // sender threads the client connections are spread over
  size_t orders = 10000;
  int runs = 3;
  double rate = 0;  // orders/s over all clients; 0: each client places its next order at once
  std::string sku = "SKU-1";
  int64_t quantity = 1;
  std::string subscription = "pipeline-bench";
  std::string maildir;
  double settle_s = 120;
};

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

[[noreturn]] void Fail(const std::string& what, const sluice::Status& st) {
  std::fprintf(stderr, "pipeline-bench: %s: %s\n", what.c_str(), st.ToString().c_str());
  std::exit(1);
}

std::unique_ptr<Connection> MustConnect(const Options& o, const std::string& name) {
  sluice::client::ConnectOptions co;
  co.name = name;
  co.timeout = 30s;
  auto c = Connection::Connect(o.socket, co);
  if (!c.ok()) Fail("connect", c.status());
  return std::move(*c);
}

std::string PlaceOrderPayload(const Options& o, size_t n) {
  flatbuffers::FlatBufferBuilder fbb(256);
  auto email = fbb.CreateString(fmt::format("bench{}@example.com", n));
  auto sku = fbb.CreateString(o.sku);
  std::vector<flatbuffers::Offset<sluice::orders::LineItem>> items = {
      sluice::orders::CreateLineItem(fbb, sku, o.quantity)};
  auto lines = fbb.CreateVector(items);
  sluice::orders::FinishPlaceOrderBuffer(fbb, sluice::orders::CreatePlaceOrder(fbb, email, lines));
  return {reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize()};
}

// The order id of a PlaceOrderReply, or "" with `error` set. The payload is copied to aligned storage
// because the verifier checks FlatBuffers alignment.
std::string OrderIdOf(const sluice::client::ReplyMessage& r, std::string* error) {
  if (!r.error.empty()) {
    *error = r.error;
    return "";
  }
  std::vector<uint64_t> aligned((r.payload.size() + 7) / 8 + 1);
  std::memcpy(aligned.data(), r.payload.data(), r.payload.size());
  const auto* data = reinterpret_cast<const uint8_t*>(aligned.data());
  flatbuffers::Verifier v(data, r.payload.size());
  if (!v.VerifyBuffer<sluice::orders::PlaceOrderReply>(sluice::orders::PlaceOrderReplyIdentifier())) {
    *error = "reply is not a PlaceOrderReply";
    return "";
  }
  const auto* reply = flatbuffers::GetRoot<sluice::orders::PlaceOrderReply>(data);
  if (reply->error() != nullptr) {
    *error = fmt::format("{}: {}", reply->error()->field() ? reply->error()->field()->str() : "",
                         reply->error()->message() ? reply->error()->message()->str() : "");
    return "";
  }
  if (reply->order_id() == nullptr || reply->status() != sluice::orders::OrderStatus::PENDING) {
    *error = "reply without an order id or not PENDING";
    return "";
  }
  return reply->order_id()->str();
}

size_t CountFiles(const std::filesystem::path& dir) {
  std::error_code ec;
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator(dir, ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec)) {
    ++n;
  }
  return n;
}

double Pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

struct RunResult {
  double placed_per_s = 0;     // replies received / (last reply - start)
  double final_per_s = 0;      // final events / (last final event - start)
  double reply_p50 = 0, reply_p99 = 0, reply_p999 = 0, reply_max = 0;          // us
  double confirm_p50 = 0, confirm_p99 = 0, confirm_p999 = 0, confirm_max = 0;  // ms
  double mail_s = -1;          // start to the last thank-you mail in the Maildir; -1 not measured
  size_t placed = 0, confirmed = 0, cancelled = 0, errors = 0, unsettled = 0;
};

// Placed orders waiting for their final event, shared by the clients and the watcher.
struct Board {
  std::mutex mu;
  std::unordered_map<std::string, int64_t> waiting;      // order id -> placement start (ns)
  std::unordered_map<std::string, int64_t> early;        // final event seen before the reply was
  std::unordered_map<std::string, bool> early_confirmed;
  std::vector<double> confirm_ms;
  size_t confirmed = 0, cancelled = 0;
  int64_t last_final_ns = 0;

  void Final(int64_t placed_ns, int64_t at_ns, bool confirmed_event) {
    if (confirmed_event) {
      ++confirmed;
      confirm_ms.push_back(static_cast<double>(at_ns - placed_ns) / 1e6);
    } else {
      ++cancelled;
    }
    last_final_ns = std::max(last_final_ns, at_ns);
  }
};

RunResult Run(const Options& o, int run) {
  Board board;
  board.waiting.reserve(o.orders);
  // The watcher subscribes before the first order is placed, so it sees every final event of this run.
  auto watcher = MustConnect(o, "pipeline-bench-watcher");
  sluice::client::SubscribeOptions so;
  so.topic = "order.events";
  so.subscription = o.subscription;
  so.start = sluice::wire::StartKind::Latest;
  so.credit = 1024;
  so.types = {"orders.OrderConfirmed", "orders.OrderCancelled"};  // final events only, as a real watcher asks
  auto consumer = watcher->Subscribe(so);
  if (!consumer.ok()) Fail("subscribe to order.events", consumer.status());
  // Drain what earlier runs or other clients left in the subscription.
  for (;;) {
    std::vector<uint64_t> ids;
    while (ids.size() < 1024) {
      auto d = watcher->Receive(ids.empty() ? 200ms : 0ms);
      if (!d.ok()) break;
      ids.push_back(d->delivery_id);
    }
    if (ids.empty()) break;
    if (auto st = watcher->Ack(*consumer, ids); !st.ok()) Fail("ack order.events", st);
    if (auto st = watcher->AddCredit(*consumer, static_cast<uint32_t>(ids.size())); !st.ok()) Fail("credit", st);
  }

  std::vector<std::unique_ptr<Connection>> conns;
  for (int i = 0; i < o.clients; ++i) conns.push_back(MustConnect(o, fmt::format("pipeline-bench-{}", i)));
  std::size_t mails_before = o.maildir.empty() ? 0 : CountFiles(std::filesystem::path(o.maildir) / "new");

  std::atomic<size_t> next{0};
  std::atomic<size_t> errors{0};
  std::atomic<int> senders_left{o.threads};
  std::atomic<int64_t> last_reply_ns{0};
  std::vector<std::vector<double>> reply_us(static_cast<size_t>(o.clients));
  std::mutex error_mu;
  std::string first_error;
  const int64_t start_ns = NowNs();
  const auto start = Clock::now();

  std::thread watch([&] {
    std::vector<uint64_t> batch;
    const auto settle = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.settle_s));
    std::optional<Clock::time_point> deadline;  // --settle after the last placement
    for (;;) {
      {
        std::lock_guard lock(board.mu);
        if (senders_left.load() == 0 && board.waiting.empty()) break;
      }
      if (senders_left.load() == 0 && !deadline) deadline = Clock::now() + settle;
      if (deadline && Clock::now() > *deadline) break;
      auto d = watcher->Receive(50ms);
      if (!d.ok()) {
        if (d.status().code() != sluice::StatusCode::kTimeout) Fail("receive order.events", d.status());
      } else {
        int64_t at = NowNs();
        std::string_view type = d->type();
        bool confirmed = type == kOrderConfirmed;
        if (confirmed || type == kOrderCancelled) {
          std::string id(d->correlation_id());
          std::lock_guard lock(board.mu);
          auto it = board.waiting.find(id);
          if (it != board.waiting.end()) {
            board.Final(it->second, at, confirmed);
            board.waiting.erase(it);
          } else {
            board.early[id] = at;
            board.early_confirmed[id] = confirmed;
          }
        }
        batch.push_back(d->delivery_id);
      }
      if (batch.size() >= 256 || (!batch.empty() && !d.ok())) {
        if (auto st = watcher->Ack(*consumer, batch); !st.ok()) Fail("ack order.events", st);
        if (auto st = watcher->AddCredit(*consumer, static_cast<uint32_t>(batch.size())); !st.ok()) Fail("credit", st);
        batch.clear();
      }
    }
    if (!batch.empty()) (void)watcher->Ack(*consumer, batch);
    (void)watcher->Flush();
  });

  // One sender thread drives the connections c, c + threads, c + 2 threads, ...: it places the next order
  // on a connection with room for one more in flight (or waits until the next paced order is due), and
  // waits on all of its connections at once (epoll) for replies.
  auto drive = [&](int first) {
    struct Client {
      Connection* conn;
      std::vector<double>* lat;
      std::unordered_map<uint64_t, int64_t> in_flight;  // request id -> when it was sent (ns)
      bool broken = false;
      bool watching_output = false;  // registered for EPOLLOUT
    };
    std::vector<Client> clients;
    for (int c = first; c < o.clients; c += o.threads) {
      clients.push_back({conns[static_cast<size_t>(c)].get(), &reply_us[static_cast<size_t>(c)], {}});
    }
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) Fail("epoll_create1", sluice::Status(sluice::StatusCode::kUnavailable, std::strerror(errno)));
    std::deque<size_t> room;  // clients with fewer than --pipeline requests in flight
    for (size_t i = 0; i < clients.size(); ++i) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = i;
      if (::epoll_ctl(ep, EPOLL_CTL_ADD, clients[i].conn->fd(), &ev) != 0) {
        Fail("epoll_ctl", sluice::Status(sluice::StatusCode::kUnavailable, std::strerror(errno)));
      }
      for (int k = 0; k < o.pipeline; ++k) room.push_back(i);  // one entry per free slot
    }
    sluice::client::OutMessage m;
    m.topic = "order.commands";
    m.type = "orders.PlaceOrder";
    auto send_time = [&](size_t n) {
      return start + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(static_cast<double>(n) / o.rate));
    };
    auto failed = [&](const std::string& error) {
      errors.fetch_add(1);
      std::lock_guard lock(error_mu);
      if (first_error.empty()) first_error = error;
    };
    std::optional<size_t> due;  // an order waiting for its paced send time
    bool exhausted = false;
    size_t in_flight = 0;
    epoll_event events[64];
    // Output the socket did not take at once: EPOLLOUT until it has (level-triggered input stays as is).
    auto watch_output = [&](size_t i) {
      Client& cl = clients[i];
      const bool want = !cl.broken && cl.conn->has_queued_output();
      if (want == cl.watching_output) return;
      epoll_event ev{};
      ev.events = EPOLLIN | (want ? EPOLLOUT : 0);
      ev.data.u64 = i;
      (void)::epoll_ctl(ep, EPOLL_CTL_MOD, cl.conn->fd(), &ev);
      cl.watching_output = want;
    };
    for (;;) {
      while (!exhausted && !room.empty()) {
        Client& cl = clients[room.front()];
        if (cl.broken) {
          room.pop_front();
          continue;
        }
        size_t n = due ? *due : next.fetch_add(1);
        due.reset();
        if (n >= o.orders) {
          exhausted = true;
          break;
        }
        if (o.rate > 0 && Clock::now() < send_time(n)) {
          due = n;
          break;
        }
        const size_t i = room.front();
        room.pop_front();
        m.payload = PlaceOrderPayload(o, static_cast<size_t>(run) * o.orders + n);
        int64_t t0 = NowNs();
        auto id = cl.conn->RequestAsync(m, 30s);
        if (!id.ok()) {
          // Only a broken connection refuses: its other slots are dropped as they come up.
          failed(id.status().ToString());
          cl.broken = true;
          continue;
        }
        (void)cl.conn->WriteQueued();
        watch_output(i);
        cl.in_flight.emplace(*id, t0);
        ++in_flight;
      }
      if (exhausted && in_flight == 0) break;
      if (room.empty() && in_flight == 0) {
        // Every connection of this thread broke: what it has not placed, the other threads place.
        failed("every connection of a sender thread broke");
        break;
      }
      // Waits for replies, or until the next paced order is due.
      auto deadline = due ? send_time(*due) : Clock::now() + 1s;
      auto left = std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - Clock::now()).count());
      timespec wait{static_cast<time_t>(left / 1'000'000'000), static_cast<long>(left % 1'000'000'000)};
      int ready = ::epoll_pwait2(ep, events, 64, &wait, nullptr);
      if (ready < 0 && errno != EINTR) {
        Fail("epoll_pwait2", sluice::Status(sluice::StatusCode::kUnavailable, std::strerror(errno)));
      }
      for (int e = 0; e < ready; ++e) {
        size_t i = events[e].data.u64;
        Client& cl = clients[i];
        if (cl.broken) continue;
        // Writes what is left and reads what has arrived, without waiting (the deadline has passed).
        sluice::Status st = cl.conn->PollUntil(Clock::time_point::min());
        watch_output(i);
        const bool broken = !st.ok() && st.code() != sluice::StatusCode::kTimeout;
        while (auto answer = cl.conn->TakeReply()) {
          int64_t t1 = NowNs();
          auto sent = cl.in_flight.find(answer->request_id);
          if (sent == cl.in_flight.end()) continue;
          int64_t t0 = sent->second;
          cl.in_flight.erase(sent);
          --in_flight;
          room.push_back(i);
          std::string error;
          std::string id = answer->error.ok() ? OrderIdOf(answer->reply, &error) : "";
          if (!answer->error.ok()) error = answer->error.ToString();
          if (id.empty()) {
            failed(error);
            continue;
          }
          cl.lat->push_back(static_cast<double>(t1 - t0) / 1e3);
          int64_t prev = last_reply_ns.load();
          while (prev < t1 && !last_reply_ns.compare_exchange_weak(prev, t1)) {
          }
          std::lock_guard lock(board.mu);
          if (auto it = board.early.find(id); it != board.early.end()) {
            board.Final(t0, it->second, board.early_confirmed[id]);
            board.early.erase(it);
          } else {
            board.waiting.emplace(std::move(id), t0);
          }
        }
        if (broken) {
          // The replies that arrived before the break are counted above; the rest never will be.
          for (size_t k = 0; k < cl.in_flight.size(); ++k) failed(st.ToString());
          in_flight -= cl.in_flight.size();
          cl.in_flight.clear();
          cl.broken = true;
          (void)::epoll_ctl(ep, EPOLL_CTL_DEL, cl.conn->fd(), nullptr);
        }
      }
    }
    ::close(ep);
    senders_left.fetch_sub(1);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < o.threads; ++t) threads.emplace_back(drive, t);
  for (auto& t : threads) t.join();
  watch.join();

  RunResult r;
  std::vector<double> all_reply;
  for (auto& v : reply_us) all_reply.insert(all_reply.end(), v.begin(), v.end());
  r.placed = all_reply.size();
  r.errors = errors.load();
  if (!first_error.empty()) std::fprintf(stderr, "pipeline-bench: %zu placements failed; first: %s\n", r.errors,
                                         first_error.c_str());
  r.placed_per_s = static_cast<double>(r.placed) / (static_cast<double>(last_reply_ns.load() - start_ns) / 1e9);
  r.reply_p50 = Pct(all_reply, 0.50);
  r.reply_p99 = Pct(all_reply, 0.99);
  r.reply_p999 = Pct(all_reply, 0.999);
  r.reply_max = all_reply.empty() ? 0 : all_reply.back();
  r.confirmed = board.confirmed;
  r.cancelled = board.cancelled;
  r.unsettled = board.waiting.size();
  size_t finals = board.confirmed + board.cancelled;
  if (finals > 0) {
    r.final_per_s = static_cast<double>(finals) / (static_cast<double>(board.last_final_ns - start_ns) / 1e9);
  }
  r.confirm_p50 = Pct(board.confirm_ms, 0.50);
  r.confirm_p99 = Pct(board.confirm_ms, 0.99);
  r.confirm_p999 = Pct(board.confirm_ms, 0.999);
  r.confirm_max = board.confirm_ms.empty() ? 0 : board.confirm_ms.back();
  if (!o.maildir.empty()) {
    // One thank-you mail per order (a cancelled order adds its cancellation mail; confirmation mails
    // count when the plugin is configured to send them, so this waits for at least the thank-yous).
    auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.settle_s));
    size_t want = mails_before + r.placed;
    size_t have = 0;
    while ((have = CountFiles(std::filesystem::path(o.maildir) / "new")) < want && Clock::now() < deadline) {
      std::this_thread::sleep_for(100ms);
    }
    if (have >= want) {
      r.mail_s = std::chrono::duration<double>(Clock::now() - start).count();
    } else {
      std::fprintf(stderr, "pipeline-bench: only %zu of %zu mails in %s after %.0f s\n", have - mails_before,
                   r.placed, o.maildir.c_str(), o.settle_s);
    }
  }
  std::printf("  run %d: %zu placed (%zu failed), %.0f placed/s, %.0f final/s, %zu confirmed, %zu cancelled, "
              "%zu not final; reply p99 %.2f ms, confirm p99 %.1f ms",
              run + 1, r.placed, r.errors, r.placed_per_s, r.final_per_s, r.confirmed, r.cancelled, r.unsettled,
              r.reply_p99 / 1e3, r.confirm_p99);
  if (r.mail_s >= 0) std::printf(", mails done %.1f s (%.0f mails/s)", r.mail_s, static_cast<double>(r.placed) / r.mail_s);
  std::printf("\n");
  std::fflush(stdout);
  return r;
}

void PrintStats(const char* what, const char* unit, std::vector<double> v, int decimals = 0) {
  std::sort(v.begin(), v.end());
  std::printf("  %-34s median %12.*f %s   (min %.*f, max %.*f, %zu runs)\n", what, decimals, v[v.size() / 2], unit,
              decimals, v.front(), decimals, v.back(), v.size());
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"pipeline-bench: the order pipeline end to end against a running sluiced (see the file comment)",
               "pipeline-bench"};
  app.add_option("-s,--socket", o.socket, "broker socket of the daemon")->capture_default_str();
  app.add_option("-c,--clients", o.clients, "concurrent storefront connections")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app.add_option("-t,--threads", o.threads, "sender threads the client connections are spread over (at most --clients)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app.add_option("-p,--pipeline", o.pipeline, "PlaceOrder requests each client keeps in flight on its connection")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app.add_option("-n,--orders", o.orders, "orders per run")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--runs", o.runs, "runs; median, min and max are printed")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--rate", o.rate, "orders/s over all clients (0: as fast as the replies come)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e7));
  app.add_option("--sku", o.sku, "the SKU every order buys (the inventory needs stock for all of them)")
      ->capture_default_str();
  app.add_option("--quantity", o.quantity, "units per order")->capture_default_str();
  app.add_option("--subscription", o.subscription, "the bench's own durable subscription on order.events")
      ->capture_default_str();
  app.add_option("--maildir", o.maildir, "the notification plugin's Maildir: also wait for every thank-you mail");
  app.add_option("--settle", o.settle_s, "seconds to wait for final events and mails after the last placement")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  o.threads = std::min(o.threads, o.clients);

  std::printf("pipeline-bench: %zu orders per run, %d clients x %d in flight on %d threads, %s, %d runs, socket %s\n",
              o.orders, o.clients, o.pipeline, o.threads, o.rate > 0 ? fmt::format("paced at {:.0f} orders/s", o.rate).c_str() : "closed loop", o.runs,
              o.socket.c_str());
  std::fflush(stdout);
  std::vector<double> placed, finals, r50, r99, r999, rmax, c50, c99, c999, cmax, mail;
  bool complete = true;
  for (int i = 0; i < o.runs; ++i) {
    RunResult r = Run(o, i);
    complete = complete && r.errors == 0 && r.unsettled == 0 && r.cancelled == 0 && (o.maildir.empty() || r.mail_s >= 0);
    placed.push_back(r.placed_per_s);
    finals.push_back(r.final_per_s);
    r50.push_back(r.reply_p50 / 1e3);
    r99.push_back(r.reply_p99 / 1e3);
    r999.push_back(r.reply_p999 / 1e3);
    rmax.push_back(r.reply_max / 1e3);
    c50.push_back(r.confirm_p50);
    c99.push_back(r.confirm_p99);
    c999.push_back(r.confirm_p999);
    cmax.push_back(r.confirm_max);
    if (r.mail_s >= 0) mail.push_back(static_cast<double>(r.placed) / r.mail_s);
  }
  std::printf("throughput\n");
  PrintStats("orders placed (replies)", "orders/s", placed);
  PrintStats("orders to a final state", "orders/s", finals);
  if (!mail.empty()) PrintStats("thank-you mails in the Maildir", "mails/s", mail);
  std::printf("placement reply latency (Request sent to PENDING reply)\n");
  PrintStats("p50", "ms", r50, 2);
  PrintStats("p99", "ms", r99, 2);
  PrintStats("p99.9", "ms", r999, 2);
  PrintStats("max", "ms", rmax, 2);
  std::printf("placement to CONFIRMED (Request sent to OrderConfirmed received)\n");
  PrintStats("p50", "ms", c50, 1);
  PrintStats("p99", "ms", c99, 1);
  PrintStats("p99.9", "ms", c999, 1);
  PrintStats("max", "ms", cmax, 1);
  if (!complete) std::printf("WARNING: some orders failed, were cancelled, did not settle or were not mailed\n");
  // Its own CPU, so that run-pipeline-bench.sh can tell what the load generator cost the machine.
  rusage self{};
  getrusage(RUSAGE_SELF, &self);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  std::printf("pipeline-bench CPU: %.3f s (user %.3f s, system %.3f s)\n", seconds(self.ru_utime) + seconds(self.ru_stime),
              seconds(self.ru_utime), seconds(self.ru_stime));
  return complete ? 0 : 1;
}

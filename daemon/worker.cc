// SPDX-License-Identifier: MIT
#include "daemon/worker.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "broker/backend.h"
#include "broker/client/client.h"
#include "broker/fault_point.h"
#include "broker/store/keyspace_reader.h"
#include "broker/uuid.h"
#include "daemon/handler_run.h"
#include "daemon/log.h"
#include "daemon/plugin_loader.h"

namespace sluice {
namespace {

// How the log names a delivery: by its seq, or by its id for a request that was not stored (seq 0).
std::string Label(const client::Delivery& d) {
  return d.seq() != 0 ? fmt::format("message seq {}", d.seq()) : fmt::format("request {}", FormatUuid(d.id()));
}

// A run that recorded no read, wrote no key, published nothing and answers no request has no effect to
// commit, and no read of it can go stale (a scan that found nothing records no read, for a bundle too):
// its message is acked like any consumer's, with the lazily committed acks, instead of costing a bundle
// in the group commit. Notification's mails (outside effects) and the events a plugin ignores are such
// runs. A lost Ack (the worker or the daemon dies before it is written or committed) redelivers the
// message, which such a run handles again: an outside effect is repeated, as after any crash.
bool AckOnly(const client::Delivery& d, const client::BundleMessage& b) {
  return d.reply_token == 0 && b.reads.empty() && b.writes.empty() && b.publishes.empty() && !b.reply;
}

using namespace std::chrono_literals;
using nlohmann::json;

// Bundles sent and not yet answered. Enough to keep the broker's group commit busy; bounded so that a
// stalled broker cannot make the worker hold unbounded state.
constexpr size_t kMaxBundlesInFlight = 512;
// Runs one sync() may cover (plugin.h promises at most 256), and how long the first of them may wait
// for it: slow handlers (an SMTP send) must not hold their acks until a long pass ends.
constexpr size_t kMaxUnsynced = 256;
constexpr auto kMaxSyncDelay = 50ms;
// How long a finished run's Bundle or Ack may wait in the output while a pass goes on: long enough to
// leave in few writes when handlers are fast, short against any ack_wait.
constexpr auto kMaxOutputDelay = 2ms;
// After a run that took kMaxOutputDelay or more, output is written before every run for this long.
constexpr auto kSlowRunMemory = 1s;
// How long an idle worker waits for the socket before it looks at its stop flag again.
constexpr auto kIdlePoll = 100ms;
constexpr auto kStatsInterval = 1s;
// On SIGTERM: how long to wait for the answers to bundles already sent.
constexpr auto kDrainTimeout = 10s;
constexpr auto kConnectTimeout = 10s;

std::atomic<bool> g_stop{false};

extern "C" void OnStopSignal(int) { g_stop.store(true, std::memory_order_relaxed); }

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// `text` as one line of a table cell: control characters (a multi-line message) become spaces, and
// it is cut at most `max` bytes in, never inside a UTF-8 sequence.
std::string OneLine(std::string_view text, size_t max) {
  if (text.size() > max) {
    size_t cut = max;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
    text = text.substr(0, cut);
  }
  std::string out(text);
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return out;
}

LogLevel PluginLevel(int level) {
  if (level <= SLUICE_LOG_ERROR) return LogLevel::kError;
  if (level >= SLUICE_LOG_DEBUG) return LogLevel::kDebug;
  return static_cast<LogLevel>(level);
}

// Kills this process when one handle() (or init()) call runs past the timeout. The handler thread
// only stores two atomics per call; this thread looks at them a few times per timeout.
class Watchdog {
 public:
  explicit Watchdog(Duration timeout)
      : timeout_ns_(std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count()) {
    auto tick = std::clamp<Duration>(timeout / 10, Duration(5), Duration(100));
    thread_ = std::thread([this, tick] { Loop(tick); });
  }
  ~Watchdog() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  enum class Phase : uint32_t { kInit, kHandle, kSync };
  // For the log line: `n` is the message's seq (kHandle) or how many messages sync() covers (kSync).
  void Arm(Phase phase, uint64_t n) {
    phase_.store(phase, std::memory_order_relaxed);
    n_.store(n, std::memory_order_relaxed);
    since_ns_.store(SteadyNs(), std::memory_order_release);
  }
  void Disarm() { since_ns_.store(0, std::memory_order_release); }

 private:
  void Loop(Duration tick) {
    std::unique_lock lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, tick);
      int64_t since = since_ns_.load(std::memory_order_acquire);
      if (since == 0 || SteadyNs() - since <= timeout_ns_) continue;
      uint64_t n = n_.load(std::memory_order_relaxed);
      std::string what;
      switch (phase_.load(std::memory_order_relaxed)) {
        case Phase::kInit: what = "init()"; break;
        case Phase::kHandle:
          what = n != 0 ? fmt::format("handle() of message seq {}", n) : std::string("handle() of a request");
          break;
        case Phase::kSync: what = fmt::format("sync() of {} messages", n); break;
      }
      log::Error("{} ran longer than handler_timeout ({}); killing this worker, the messages it holds will be "
                 "redelivered",
                 what, FormatDuration(Duration(timeout_ns_ / 1000000)));
      ::kill(::getpid(), SIGKILL);
    }
  }

  const int64_t timeout_ns_;
  std::atomic<int64_t> since_ns_{0};
  std::atomic<Phase> phase_{Phase::kInit};
  std::atomic<uint64_t> n_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// JSON lines to the supervisor. Blocking writes of small lines; a supervisor that is gone is ignored
// (the broker socket tells the worker soon enough).
class StatusChannel {
 public:
  explicit StatusChannel(int fd) : fd_(fd) {}
  void Send(const json& event) {
    if (fd_ < 0) return;
    std::string line = event.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    const char* p = line.data();
    size_t left = line.size();
    while (left > 0) {
      ssize_t n = ::write(fd_, p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        fd_ = -1;
        return;
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
  }

 private:
  int fd_;
};

class ReaderSnapshot final : public KvSnapshot {
 public:
  explicit ReaderSnapshot(broker::store::KeyspaceReader* reader) : reader_(reader) {}
  Result<std::optional<Entry>> Get(std::string_view key) override {
    auto r = reader_->Get(key);
    if (!r.ok()) return r.status();
    if (!r->has_value()) return std::optional<Entry>();
    return std::optional<Entry>(Entry{(*r)->version, (*r)->value});
  }
  Status Scan(std::string_view prefix, const ScanFn& fn) override {
    return reader_->Scan(prefix, [&fn](std::string_view key, const broker::store::KeyspaceReader::Entry& e) {
      return fn(key, Entry{e.version, e.value});
    });
  }

 private:
  broker::store::KeyspaceReader* reader_;
};

class Worker {
 public:
  explicit Worker(const WorkerOptions& options)
      : options_(options),
        status_(options.status_fd),
        watchdog_(options.handler_timeout),
        suspects_(options.suspects.begin(), options.suspects.end()) {
    if (options.in_hand_fd >= 0) {
      void* page = ::mmap(nullptr, kInHandPageBytes, PROT_READ | PROT_WRITE, MAP_SHARED, options.in_hand_fd, 0);
      if (page != MAP_FAILED) in_hand_ = static_cast<InHandPage*>(page);
      ::close(options.in_hand_fd);
    }
  }
  ~Worker() {
    if (in_hand_ != nullptr) ::munmap(in_hand_, kInHandPageBytes);
  }

  int Run();

 private:
  // A delivery held by this worker, in arrival order.
  struct Held {
    client::Delivery delivery;
    uint64_t order = 0;
  };
  struct Sent {
    Held held;
    uint64_t version = 0;
  };
  // A run that returned SLUICE_OK, waiting for the plugin's sync() before its bundle is sent.
  struct Unsynced {
    Held held;
    client::BundleMessage bundle;
  };

  int Setup();
  void Loop();
  // Runs handle() for one delivery (HandleOne), writing the queued output first when runs have been
  // slow lately.
  void RunOne(Held held);
  void HandleOne(Held held);
  // Sends a run's bundle (its writes are in pending_ under the bundle's version already), or only an
  // Ack when the run had no effects (AckOnly).
  void SendBundle(Held held, const client::BundleMessage& bundle);
  void Acknowledge(const Held& held);
  // Writes the queued output once it was last written kMaxOutputDelay ago (so no frame has waited
  // longer): a pass must not hold the outcomes of the runs it has finished.
  void WriteIfDue();
  // Calls the plugin's sync() for the runs in unsynced_, then sends their bundles (or, when it
  // fails, retries their messages).
  void SyncAndSend();
  void OnAnswer(client::BundleAck answer);
  // The message is done with (acked, nacked or lost): its consumer may have one more.
  void Finished(const Held& held);
  void FlushCredit(bool all);
  void ReportStats(bool force);
  void Drain();
  uint64_t NextVersion();
  uint32_t PrefetchOf(uint64_t consumer_id) const;

  WorkerOptions options_;
  StatusChannel status_;
  Watchdog watchdog_;
  std::unique_ptr<LoadedPlugin> plugin_;
  void* state_ = nullptr;
  bool initialized_ = false;
  std::unique_ptr<broker::store::KeyspaceReader> reader_;
  std::unique_ptr<ReaderSnapshot> snapshot_;
  std::unique_ptr<client::Connection> conn_;
  std::filesystem::path plugin_data_dir_;
  RunHost host_;

  // sluice_plugin_init.set_subscription_types: valid only while init() runs, on the init it got.
  static int SetSubscriptionTypes(const sluice_plugin_init* init, size_t index, const char* const* types,
                                  size_t n_types);
  // The worker and the sluice_plugin_init whose init() is running (a worker process runs one plugin).
  static Worker* initializing_;
  static const sluice_plugin_init* initializing_init_;
  // The last error the plugin logged during init(), at most kMaxInitErrorBytes of it.
  static constexpr size_t kMaxInitErrorBytes = 400;
  std::string init_error_;

  std::unordered_map<uint64_t, size_t> subscription_of_;  // consumer id -> descriptor subscription
  std::vector<std::vector<std::string>> subscription_types_;  // by descriptor subscription, from init()
  std::unordered_map<uint64_t, uint32_t> credit_owed_;
  std::unordered_map<uint64_t, Sent> sent_;               // by bundle request id
  std::vector<Unsynced> unsynced_;                        // in run order; plugins with sync() only
  std::chrono::steady_clock::time_point written_at_;      // when the output was last written
  std::chrono::steady_clock::time_point last_slow_run_;   // when a run last took kMaxOutputDelay or more
  std::chrono::steady_clock::time_point unsynced_since_;  // when the first of unsynced_ was run
  std::map<uint64_t, Held> reruns_;                       // by arrival order
  // Messages that were in hand when an earlier worker died. One is run only when this worker holds
  // nothing else (no queued delivery, no unanswered bundle) and credit is withheld meanwhile, so a
  // crash on it cannot count against other messages.
  std::set<Uuid> suspects_;
  std::deque<Held> quarantine_;
  InHandPage* in_hand_ = nullptr;
  PendingWrites pending_;  // a bundle's writes are visible to later runs from its own run on
  uint64_t next_order_ = 1;
  uint64_t version_nonce_ = 0;
  uint64_t version_counter_ = 0;

  struct Counts {
    uint64_t handled = 0, retried = 0, rejected = 0, conflicts = 0, lease_lost = 0, refused = 0;
    friend bool operator==(const Counts&, const Counts&) = default;
  };
  Counts counts_;
  Counts reported_;
  size_t reported_in_flight_ = SIZE_MAX;
  std::chrono::steady_clock::time_point next_report_{};
};

Worker* Worker::initializing_ = nullptr;
const sluice_plugin_init* Worker::initializing_init_ = nullptr;

int Worker::SetSubscriptionTypes(const sluice_plugin_init* init, size_t index, const char* const* types,
                                 size_t n_types) {
  // Compared, never dereferenced: a plugin may call with an init it kept past init().
  Worker* self = init != nullptr && init == initializing_init_ ? initializing_ : nullptr;
  std::string problem;
  std::vector<std::string> names;
  if (self == nullptr) {
    problem = "called outside init()";
  } else if (index >= self->subscription_types_.size()) {
    problem = fmt::format("subscription index {} is out of range (the plugin declares {} subscription{})", index,
                          self->subscription_types_.size(), self->subscription_types_.size() == 1 ? "" : "s");
  } else if (n_types == 0 || types == nullptr) {
    problem = "no types given";
  } else {
    for (size_t i = 0; i < n_types && problem.empty(); ++i) {
      if (types[i] == nullptr) problem = fmt::format("type {} is NULL", i);
      else names.emplace_back(types[i], strnlen(types[i], broker::kMaxTypeBytes + 1));
    }
    if (problem.empty()) {
      if (Status s = broker::CheckSubscribeTypes(names); !s.ok()) problem = s.message();
    }
  }
  if (!problem.empty()) {
    log::Error("set_subscription_types refused: {}", problem);
    return -EINVAL;
  }
  self->subscription_types_[index] = std::move(names);
  return 0;
}

int Worker::Setup() {
  const std::string file = options_.plugin_path.string();
  auto loaded = LoadedPlugin::Load(options_.plugin_path);
  if (!loaded.ok()) {
    log::Error("{}", loaded.status().message());
    status_.Send({{"event", "refused"}, {"error", loaded.status().message()}});
    return kExitRefused;
  }
  plugin_ = std::move(*loaded);
  const PluginDescriptor& d = plugin_->descriptor();
  if (d.name != options_.name) {
    std::string error = fmt::format("{}: the plugin calls itself \"{}\" but is configured as \"{}\"", file,
                                    d.name, options_.name);
    log::Error("{}", error);
    status_.Send({{"event", "refused"}, {"error", error}});
    return kExitRefused;
  }
  json subs = json::array();
  for (const PluginSubscription& s : d.subscriptions) subs.push_back({{"topic", s.topic}, {"name", s.name}});
  status_.Send({{"event", "loaded"},
                {"name", d.name},
                {"version", d.version},
                {"abi", fmt::format("{}.{}", d.abi_major, d.abi_minor)},
                {"publishes", d.publishes},
                {"subscriptions", subs}});

  host_.plugin = d.name;
  host_.publishes = &d.publishes;
  host_.now_us = [] { return broker::SystemClock().NowUs(); };
  host_.log = [this](int level, std::string_view message) {
    LogLevel l = PluginLevel(level);
    if (l <= log::Level()) log::Write(l, message);
    // The reason a failing init() gives is usually its last error line: kept for the failure report.
    if (initializing_ == this && l == LogLevel::kError) init_error_ = OneLine(message, kMaxInitErrorBytes);
  };
  HandlerRun::SetDefaultHost(&host_);

  auto reader = broker::store::KeyspaceReader::Open(options_.data_dir / "store", d.name);
  if (!reader.ok()) {
    log::Error("cannot read the plugin keyspace: {}", reader.status().message());
    return kExitSetup;
  }
  reader_ = std::move(*reader);
  if (reader_->stale_readers_cleared() > 0) {
    log::Info("cleared {} stale reader slots left by killed workers", reader_->stale_readers_cleared());
  }
  snapshot_ = std::make_unique<ReaderSnapshot>(reader_.get());

  plugin_data_dir_ = options_.data_dir / "plugins" / d.name;
  std::error_code ec;
  std::filesystem::create_directories(plugin_data_dir_, ec);
  if (ec) {
    log::Error("cannot create the plugin's data directory {}: {}", plugin_data_dir_.string(), ec.message());
    return kExitSetup;
  }

  const sluice_plugin& cb = plugin_->callbacks();
  subscription_types_.assign(d.subscriptions.size(), {});
  if (cb.init != nullptr) {
    sluice_plugin_init init{};
    init.struct_size = sizeof init;
    init.set_subscription_types = &Worker::SetSubscriptionTypes;
    init.api = HandlerRun::Api();
    init.config_json = options_.config_json.c_str();
    std::string data_dir = plugin_data_dir_.string();
    init.data_dir = data_dir.c_str();
    init.instance = options_.instance;
    init.handler_timeout_ms = static_cast<uint32_t>(
        std::min<int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(options_.handler_timeout).count(),
                          UINT32_MAX));
    watchdog_.Arm(Watchdog::Phase::kInit, 0);
    initializing_ = this;
    initializing_init_ = &init;
    int rc = cb.init(&init, &state_);
    initializing_ = nullptr;
    initializing_init_ = nullptr;
    watchdog_.Disarm();
    if (rc != 0) {
      const char* name = rc < 0 ? std::strerror(-rc) : "not a negative errno";
      std::string error = init_error_.empty() ? fmt::format("init() failed: {} ({})", name, rc)
                                              : fmt::format("init() failed: {} ({}, {})", init_error_, name, rc);
      log::Error("{}", error);
      status_.Send({{"event", "error"}, {"error", error}});
      return kExitSetup;
    }
  }
  initialized_ = true;

  client::ConnectOptions co;
  co.name = fmt::format("plugin {}[{}] {}", d.name, options_.instance, d.version);
  co.timeout = kConnectTimeout;
  auto conn = client::Connection::FromFd(options_.broker_fd, co);
  if (!conn.ok()) {
    log::Error("cannot connect to the broker: {}", conn.status().message());
    return kExitSetup;
  }
  conn_ = std::move(*conn);
  for (size_t i = 0; i < d.subscriptions.size(); ++i) {
    const PluginSubscription& s = d.subscriptions[i];
    client::SubscribeOptions so;
    so.topic = s.topic;
    so.subscription = s.name;
    so.start = s.start == SLUICE_START_EARLIEST ? wire::StartKind::Earliest : wire::StartKind::Latest;
    so.ordering = s.ordering == SLUICE_ORDERING_KEY ? wire::Ordering::Key : wire::Ordering::None;
    so.max_deliveries = s.max_deliveries;
    so.ack_wait_ms = s.ack_wait_ms;
    so.credit = s.prefetch;
    so.max_crashes = options_.max_crashes;
    so.types = subscription_types_[i];
    auto consumer = conn_->Subscribe(so);
    if (!consumer.ok()) {
      log::Error("cannot subscribe to {}/{}: {}", s.topic, s.name, consumer.status().message());
      return kExitSetup;
    }
    subscription_of_[*consumer] = i;
  }
  std::random_device rd;
  version_nonce_ = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(SteadyNs());
  status_.Send({{"event", "ready"}});
  // The supervisor says "running" at notice when it reads "ready"; this adds the details for debugging.
  log::Debug("running {} {} from {} ({} subscription{})", d.name, d.version, file, d.subscriptions.size(),
             d.subscriptions.size() == 1 ? "" : "s");
  return 0;
}

uint64_t Worker::NextVersion() {
  // Unique per bundle: a random base per process plus a counter. A re-run gets a new version, so a
  // bundle that read a refused run's write can never pass the check against the re-run's.
  uint64_t v;
  do {
    v = version_nonce_ + ++version_counter_;
  } while (v == 0);
  return v;
}

uint32_t Worker::PrefetchOf(uint64_t consumer_id) const {
  auto it = subscription_of_.find(consumer_id);
  if (it == subscription_of_.end()) return 1;
  return plugin_->descriptor().subscriptions[it->second].prefetch;
}

void Worker::Finished(const Held& held) {
  uint64_t consumer = held.delivery.consumer_id;
  uint32_t& owed = credit_owed_[consumer];
  ++owed;
  // While a suspect waits to run alone, no new messages may arrive.
  if (!quarantine_.empty()) return;
  // Credit goes back in batches (a quarter of the prefetch), not one frame per message.
  if (owed >= std::max<uint32_t>(1, PrefetchOf(consumer) / 4)) {
    (void)conn_->AddCredit(consumer, owed);
    owed = 0;
  }
}

void Worker::FlushCredit(bool all) {
  if (!all || !quarantine_.empty()) return;
  for (auto& [consumer, owed] : credit_owed_) {
    if (owed == 0) continue;
    (void)conn_->AddCredit(consumer, owed);
    owed = 0;
  }
}

void Worker::RunOne(Held held) {
  auto started = std::chrono::steady_clock::now();
  // Output waits to leave in few writes (WriteIfDue), which must not mean waiting for a slow run: when
  // runs take long (an SMTP send), the outcomes of the runs before this one leave before it starts,
  // so no lease expires on a message that is already handled.
  if (started - last_slow_run_ < kSlowRunMemory) {
    (void)conn_->WriteQueued();
    written_at_ = started;
  }
  HandleOne(std::move(held));
  auto ended = std::chrono::steady_clock::now();
  if (ended - started >= kMaxOutputDelay) last_slow_run_ = ended;
}

void Worker::HandleOne(Held held) {
  const client::Delivery& d = held.delivery;
  const wire::Envelope& env = d.envelope();
  auto str = [](std::string_view s) { return sluice_str{s.data(), s.size()}; };

  sluice_message m{};
  Uuid id = d.id();
  for (int i = 0; i < 8; ++i) {
    m.id[i] = static_cast<uint8_t>(id.hi >> (56 - 8 * i));
    m.id[8 + i] = static_cast<uint8_t>(id.lo >> (56 - 8 * i));
  }
  m.topic = str(d.topic());
  m.key = str(d.key());
  m.type = str(d.type());
  m.correlation_id = str(d.correlation_id());
  m.causation_id = str(d.causation_id());
  m.publish_time_us = d.publish_time_us();
  m.seq = d.seq();
  m.delivery_count = d.delivery_count;
  m.is_request = d.reply_token != 0 ? 1 : 0;
  std::vector<sluice_header> headers;
  if (const auto* hs = env.headers(); hs != nullptr) {
    headers.reserve(hs->size());
    for (const wire::Header* h : *hs) {
      std::string_view value = h->value() ? h->value()->string_view() : std::string_view();
      headers.push_back({str(h->name()->string_view()), str(value)});
    }
  }
  m.headers = headers.data();
  m.n_headers = headers.size();
  std::string_view payload = d.payload();
  m.payload = {payload.data(), payload.size()};
  auto sub = subscription_of_.find(d.consumer_id);
  m.subscription = sub != subscription_of_.end()
                       ? plugin_->descriptor().subscriptions[sub->second].name.c_str()
                       : "";

  RunInput input;
  input.id = id;
  input.id_text = FormatUuid(id);
  input.correlation_id = std::string(d.correlation_id());
  input.reply_token = d.reply_token;

  Status begin = reader_->Begin();
  if (!begin.ok()) {
    log::Warning("{}: cannot read the keyspace, retrying later: {}", Label(d), begin.message());
    ++counts_.retried;
    (void)conn_->Nack(d.consumer_id, d.delivery_id, 0, false, "the worker cannot read the plugin keyspace");
    Finished(held);
    return;
  }
  HandlerRun run(host_, input, snapshot_.get(), &pending_);
  // Test-only fault points (broker/fault_point.h); one cached bool each when unset.
  fault::Hit(fault::Point::kWorkerBeforeHandle);
  if (in_hand_ != nullptr) {
    in_hand_->seq = m.seq;
    in_hand_->id_hi = id.hi;
    in_hand_->id_lo = id.lo;
    in_hand_->busy.store(kInHandHandle, std::memory_order_release);
  }
  watchdog_.Arm(Watchdog::Phase::kHandle, m.seq);
  sluice_result r = plugin_->callbacks().handle(state_, &m, run.context());
  watchdog_.Disarm();
  if (in_hand_ != nullptr) in_hand_->busy.store(0, std::memory_order_release);
  std::string reason = r.reason != nullptr ? std::string(r.reason, strnlen(r.reason, 4096)) : std::string();
  reader_->End();
  fault::Hit(fault::Point::kWorkerAfterHandle);

  // Read as an integer: a plugin may return any value, and loading an out-of-range one through the
  // enum type would be undefined behaviour.
  int raw_outcome = 0;
  static_assert(sizeof raw_outcome == sizeof r.outcome);
  std::memcpy(&raw_outcome, &r.outcome, sizeof raw_outcome);
  sluice_outcome outcome = SLUICE_RETRY;
  if (raw_outcome == SLUICE_OK || raw_outcome == SLUICE_RETRY || raw_outcome == SLUICE_REJECT) {
    outcome = static_cast<sluice_outcome>(raw_outcome);
  }
  if (!run.failure().ok()) {
    log::Warning("{}: {}; retrying it", Label(d), run.failure().message());
    outcome = SLUICE_RETRY;
    reason = run.failure().message();
    r.retry_after_ms = 0;
  } else if (raw_outcome != SLUICE_OK && raw_outcome != SLUICE_RETRY && raw_outcome != SLUICE_REJECT) {
    reason = fmt::format("handle() returned the unknown outcome {}", raw_outcome);
    log::Warning("{}: {}; retrying it", Label(d), reason);
    outcome = SLUICE_RETRY;
    r.retry_after_ms = 0;
  }

  switch (outcome) {
    case SLUICE_OK: {
      client::BundleMessage bundle = run.TakeBundle();
      bundle.consumer_id = d.consumer_id;
      bundle.delivery_id = d.delivery_id;
      bundle.version = NextVersion();
      pending_.Add(bundle.version, bundle.writes);
      if (plugin_->callbacks().sync != nullptr) {
        if (unsynced_.empty()) unsynced_since_ = std::chrono::steady_clock::now();
        unsynced_.push_back({std::move(held), std::move(bundle)});
        if (unsynced_.size() >= kMaxUnsynced || std::chrono::steady_clock::now() - unsynced_since_ >= kMaxSyncDelay) {
          SyncAndSend();
        }
        return;
      }
      SendBundle(std::move(held), bundle);
      return;
    }
    case SLUICE_RETRY:
      ++counts_.retried;
      (void)conn_->Nack(d.consumer_id, d.delivery_id, r.retry_after_ms, false, reason);
      Finished(held);
      return;
    default: {
      ++counts_.rejected;
      if (reason.empty()) reason = "rejected by the handler";
      // A rejected event goes to the dead-letter queue: worth a line. A rejected request is a client's
      // mistake, and the client gets the reason in its reply.
      if (d.reply_token == 0) log::Notice("{} rejected, dead-lettered: {}", Label(d), reason);
      (void)conn_->Nack(d.consumer_id, d.delivery_id, 0, true, reason);
      // The requester learns at once instead of waiting for its timeout.
      if (d.reply_token != 0) (void)conn_->Reply(d.reply_token, client::OutMessage{}, reason);
      Finished(held);
      return;
    }
  }
}

void Worker::SendBundle(Held held, const client::BundleMessage& bundle) {
  const client::Delivery& d = held.delivery;
  if (AckOnly(d, bundle)) {
    Acknowledge(held);
    return;
  }
  auto request = conn_->BundleAsync(bundle);
  if (!request.ok()) {
    pending_.Remove(bundle.version);
    if (conn_->closed()) return;  // the loop notices and exits
    // Too large for a frame: the effects can never be committed, so the message cannot succeed.
    std::string why = fmt::format("its effects cannot be sent: {}", request.status().message());
    log::Warning("{}: {}; dead-lettering it", Label(d), why);
    ++counts_.rejected;
    (void)conn_->Nack(d.consumer_id, d.delivery_id, 0, true, why);
    Finished(held);
    return;
  }
  sent_.emplace(*request, Sent{std::move(held), bundle.version});
  // BundleAsync may only have queued the frame: "sent" means on the socket.
  if (fault::Due(fault::Point::kWorkerAfterSend)) {
    (void)conn_->Flush();
    fault::Die();
  }
}

void Worker::Acknowledge(const Held& held) {
  const client::Delivery& d = held.delivery;
  const uint64_t id = d.delivery_id;
  (void)conn_->Ack(d.consumer_id, std::span<const uint64_t>(&id, 1));
  ++counts_.handled;
  // The Ack is queued ahead of any credit this returns: the broker sees the message settled first.
  Finished(held);
}

void Worker::WriteIfDue() {
  auto now = std::chrono::steady_clock::now();
  if (now - written_at_ < kMaxOutputDelay) return;
  (void)conn_->WriteQueued();
  written_at_ = now;
}

void Worker::SyncAndSend() {
  if (unsynced_.empty()) return;
  std::vector<Unsynced> batch;
  batch.swap(unsynced_);
  // A sync() that hangs is killed like a handle() that does; but no message is its suspect (the
  // supervisor reads kInHandSync), so a slow disk cannot make a whole batch poison.
  if (in_hand_ != nullptr) {
    in_hand_->seq = batch.size();
    in_hand_->busy.store(kInHandSync, std::memory_order_release);
  }
  watchdog_.Arm(Watchdog::Phase::kSync, batch.size());
  int rc = plugin_->callbacks().sync(state_);
  watchdog_.Disarm();
  if (in_hand_ != nullptr) in_hand_->busy.store(0, std::memory_order_release);
  if (rc == 0) {
    for (Unsynced& u : batch) SendBundle(std::move(u.held), u.bundle);
    return;
  }
  std::string why = rc < 0 ? fmt::format("sync() failed: {}", std::strerror(-rc))
                           : fmt::format("sync() returned {}", rc);
  log::Warning("{}; retrying the {} messages handled since the last sync", why, batch.size());
  for (Unsynced& u : batch) {
    const client::Delivery& d = u.held.delivery;
    pending_.Remove(u.bundle.version);
    ++counts_.retried;
    (void)conn_->Nack(d.consumer_id, d.delivery_id, 0, false, why);
    Finished(u.held);
  }
}

void Worker::OnAnswer(client::BundleAck answer) {
  auto it = sent_.find(answer.request_id);
  if (it == sent_.end()) return;
  Sent sent = std::move(it->second);
  sent_.erase(it);
  pending_.Remove(sent.version);
  const client::Delivery& d = sent.held.delivery;
  if (!answer.error.ok()) {
    ++counts_.refused;
    log::Warning("{}: the broker refused its bundle: {}", Label(d), answer.error.message());
    (void)conn_->Nack(d.consumer_id, d.delivery_id, 0, false,
                      fmt::format("bundle refused: {}", answer.error.message()));
    Finished(sent.held);
    return;
  }
  switch (answer.status) {
    case wire::BundleStatus::Committed:
      fault::Hit(fault::Point::kWorkerBeforeAck);
      ++counts_.handled;
      Finished(sent.held);
      return;
    case wire::BundleStatus::Conflict:
      ++counts_.conflicts;
      log::Debug("{}: bundle conflicted ({}); running it again", Label(d), answer.message);
      reruns_.emplace(sent.held.order, std::move(sent.held));
      return;
    case wire::BundleStatus::LeaseLost:
      ++counts_.lease_lost;
      log::Info("{}: lease lost before the commit ({}); dropped", Label(d), answer.message);
      Finished(sent.held);
      return;
    default:
      // Refused: not allowed as sent; a retry lets max_deliveries dead-letter it if it stays so.
      ++counts_.refused;
      log::Warning("{}: the broker refused its bundle: {}", Label(d), answer.message);
      (void)conn_->Nack(d.consumer_id, d.delivery_id, 0, false,
                        fmt::format("bundle refused: {}", answer.message));
      Finished(sent.held);
      return;
  }
}

void Worker::ReportStats(bool force) {
  auto now = std::chrono::steady_clock::now();
  if (!force && now < next_report_) return;
  size_t in_flight =
      conn_ ? conn_->deliveries_queued() + unsynced_.size() + sent_.size() + reruns_.size() + quarantine_.size()
            : 0;
  if (!force && counts_ == reported_ && in_flight == reported_in_flight_) return;
  next_report_ = now + kStatsInterval;
  reported_ = counts_;
  reported_in_flight_ = in_flight;
  status_.Send({{"event", "stats"},
                {"handled", counts_.handled},
                {"retried", counts_.retried},
                {"rejected", counts_.rejected},
                {"conflicts", counts_.conflicts},
                {"lease_lost", counts_.lease_lost},
                {"refused", counts_.refused},
                {"in_flight", in_flight}});
}

void Worker::Loop() {
  while (!g_stop.load(std::memory_order_relaxed)) {
    while (auto a = conn_->TakeBundleAck()) OnAnswer(std::move(*a));
    size_t ran = 0;
    while (!g_stop.load(std::memory_order_relaxed)) {
      if (!reruns_.empty()) {
        // Re-runs read committed state only: wait until every earlier bundle is answered.
        if (!sent_.empty() || !unsynced_.empty()) break;
        auto first = reruns_.begin();
        Held held = std::move(first->second);
        reruns_.erase(first);
        RunOne(std::move(held));
      } else if (conn_->deliveries_queued() > 0 && sent_.size() + unsynced_.size() < kMaxBundlesInFlight) {
        auto d = conn_->Receive(0ms);
        if (!d.ok()) break;
        Held held{std::move(*d), next_order_++};
        if (!suspects_.empty() && suspects_.count(held.delivery.id()) > 0) {
          log::Notice("{} was in hand when a worker died; it runs alone once the others are done",
                      Label(held.delivery));
          quarantine_.push_back(std::move(held));
          continue;
        }
        RunOne(std::move(held));
      } else if (!quarantine_.empty() && sent_.empty() && unsynced_.empty() && conn_->deliveries_queued() == 0) {
        // The Acks queued so far must reach the broker first: if the suspect kills this worker, only
        // the messages still held count the crash.
        if (!conn_->Flush().ok()) break;
        if (conn_->deliveries_queued() > 0) continue;  // the Flush read more: they go first
        Held held = std::move(quarantine_.front());
        quarantine_.pop_front();
        suspects_.erase(held.delivery.id());
        RunOne(std::move(held));
      } else {
        break;
      }
      if (++ran % 64 == 0) {
        while (auto a = conn_->TakeBundleAck()) OnAnswer(std::move(*a));
      }
      WriteIfDue();
    }
    // The plugin's sync() covers everything handled in this pass: one fsync for as many messages as
    // arrived together.
    SyncAndSend();
    FlushCredit(true);
    ReportStats(false);
    Status s = conn_->Poll(ran > 0 ? 0ms : std::chrono::duration_cast<std::chrono::milliseconds>(kIdlePoll));
    written_at_ = std::chrono::steady_clock::now();  // Poll wrote what was queued
    if (!s.ok() && s.code() != StatusCode::kTimeout) {
      log::Error("lost the broker connection: {}", s.message());
      return;
    }
  }
}

void Worker::Drain() {
  // The message in hand is finished (one thread); what remains is the answers to bundles already sent.
  auto deadline = std::chrono::steady_clock::now() + kDrainTimeout;
  while (!sent_.empty() && !conn_->closed() && std::chrono::steady_clock::now() < deadline) {
    Status s = conn_->Poll(100ms);
    if (!s.ok() && s.code() != StatusCode::kTimeout) break;
    while (auto a = conn_->TakeBundleAck()) {
      // A conflict is not re-run now: the message goes back to the subscription when we disconnect.
      OnAnswer(std::move(*a));
    }
  }
  if (!sent_.empty()) {
    log::Warning("stopping with {} bundles unanswered; their messages will be redelivered", sent_.size());
  }
  FlushCredit(true);
  ReportStats(true);
  (void)conn_->Close();
}

int Worker::Run() {
  int rc = Setup();
  if (rc == 0) {
    Loop();
    bool lost = conn_->closed();
    if (!lost) Drain();
    rc = lost && !g_stop.load() ? kExitSetup : 0;
  }
  if (initialized_ && plugin_->callbacks().shutdown != nullptr) plugin_->callbacks().shutdown(state_);
  HandlerRun::SetDefaultHost(nullptr);
  if (rc == 0) log::Info("stopped");
  return rc;
}

}  // namespace

int CheckPluginFile(const std::filesystem::path& path) {
  auto loaded = LoadedPlugin::Load(path);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().message().c_str());
    return 1;
  }
  const PluginDescriptor& d = (*loaded)->descriptor();
  std::string out = fmt::format("{}: plugin {} {} (ABI {}.{})\n", path.string(), d.name, d.version, d.abi_major,
                                d.abi_minor);
  for (const PluginSubscription& s : d.subscriptions) {
    out += fmt::format("  subscribes {}/{} (start {}, ordering {}, prefetch {})\n", s.topic, s.name,
                       s.start == SLUICE_START_EARLIEST ? "earliest" : "latest",
                       s.ordering == SLUICE_ORDERING_KEY ? "key" : "none", s.prefetch);
  }
  for (const std::string& t : d.publishes) out += fmt::format("  publishes {}\n", t);
  std::fputs(out.c_str(), stdout);
  return 0;
}

int RunWorker(const WorkerOptions& options) {
  fault::Init(fault::Process::kWorker);
  log::SetLevel(options.log_level);
  log::SetIdentity(fmt::format("{}[{}]", options.name, options.instance));
  // Die with the daemon: a worker must never outlive the broker it feeds.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  // What the plugin prints goes to the daemon's log with the rest.
  ::dup2(STDERR_FILENO, STDOUT_FILENO);
  ::signal(SIGPIPE, SIG_IGN);
  // The daemon decides when workers stop; a terminal's ^C reaches the whole process group.
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);

  Worker worker(options);
  return worker.Run();
}

}  // namespace sluice

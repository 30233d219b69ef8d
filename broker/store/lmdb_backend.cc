// SPDX-License-Identifier: MIT
#include "broker/store/lmdb_backend.h"

#include "broker/envelope.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "broker/store/ack_window.h"
#include "broker/store/format.h"
#include "broker/store/lmdb_env.h"
#include "broker/store/writer.h"

namespace sluice::broker {
// The implementation lives in store:: so its helper types cannot collide with other broker files in a
// unity build.
namespace store {
namespace {

// Messages a subscription holds in memory ahead of delivery (its window plus messages held behind a
// busy key). Bounds memory per subscription whatever the backlog in LMDB.
constexpr size_t kReadAhead = 2048;
// Messages one Pump() may read and ack because their type is filtered out, so a long run of them
// (a backlog of a million) is worked through over several loop iterations instead of blocking one.
constexpr size_t kMaxFilteredPerPump = 8192;
// Retention by age is checked at most this often (clock time).
constexpr int64_t kTrimIntervalUs = 1000000;

// A stored envelope as a FlatBuffer, or null when it does not verify. It is copied into `scratch`
// first: LMDB values are 2-byte aligned, a FlatBuffer wants 8.
const wire::Envelope* ReadStored(std::string_view envelope, std::string* scratch) {
  scratch->assign(envelope);
  auto env = ReadEnvelope(*scratch);
  return env.ok() ? *env : nullptr;
}

bool ValidName(std::string_view s) {
  if (s.empty() || s.size() > 200) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}


struct Topic;
struct Sub;

// A Request handed to a consumer without being stored (LmdbBackend::DeliverDirect). `done` is the
// publisher's callback: it runs when the request is settled, or is passed on when it is stored.
struct DirectRequest {
  PublishRequest request;
  PublishCallback done;
};

// A message waiting to be delivered (first delivery or again).
struct Pending {
  uint64_t seq = 0;        // 0 for a direct request
  uint32_t count = 1;      // the delivery_count this delivery carries
  uint32_t crashes = 0;    // consumers that crashed holding it (in memory only)
  bool from_dead = false;  // a redriven dead letter: the envelope lives in the dead DB
  std::string key;         // only with ordering = "key"
  std::shared_ptr<DirectRequest> direct;  // set for a direct request: its envelope lives here
};

// A direct request that went back to its subscription unsettled and is being stored: when Fill() reads
// it from the log it carries on from where it was, delivered again not before `not_before_us` with the
// count and crashes it had. With `dead_reason` it was dead-lettered by the commit that stored it, and
// Fill() only brings the loop's view up to date.
struct Adoption {
  Pending msg;
  int64_t not_before_us = 0;
  std::string dead_reason;
  std::string error;
};

struct InFlight {
  uint64_t delivery_id = 0;
  uint64_t consumer_id = 0;
  // A bundle for it is being committed: the lease is out of its subscription's list, so neither
  // expiry nor a detach can hand the message to someone else until the commit's outcome is known.
  bool committing = false;
  Pending msg;
  int64_t deadline_us = 0;
  Sub* sub = nullptr;
  // The subscription's leases in delivery order (so deadline order: ack_wait is per subscription).
  InFlight* prev = nullptr;
  InFlight* next = nullptr;
};

struct Consumer {
  uint64_t id = 0;
  Sub* sub = nullptr;
  ConsumerSink* sink = nullptr;
  uint64_t credit = 0;
  uint64_t in_flight = 0;
};

struct ParkInfo {
  uint64_t parked_at_seq = 0;
  uint64_t first_waiting = UINT64_MAX;  // the oldest message of the key passed over while parked
};

// A counter's rate over the last kRateWindowUs: RunTimers() samples the counter about once a second,
// and a query divides the growth since the oldest sample in the window by the time since it. So the
// rate is the same whoever asks and however often, and falls to 0 within the window once the counter
// stops (a rate worked out since the previous query stayed at its last value until the next one).
constexpr int64_t kRateSampleUs = 1'000'000;
constexpr int64_t kRateWindowUs = 10'000'000;

struct Rate {
  struct Point {
    int64_t at_us;
    uint64_t count;
  };
  std::deque<Point> samples;  // oldest first, at least kRateSampleUs apart

  void Record(uint64_t count, int64_t now_us) {
    // The clock is wall time: after it steps back, the samples from "the future" would hide the rate
    // until it caught up. Start over instead.
    if (!samples.empty() && now_us < samples.back().at_us) samples.clear();
    if (!samples.empty() && now_us - samples.back().at_us < kRateSampleUs) return;
    samples.push_back({now_us, count});
    while (samples.front().at_us < now_us - kRateWindowUs) samples.pop_front();
  }
  double Value(uint64_t count, int64_t now_us) const {
    for (const Point& s : samples) {  // the oldest sample inside the window
      if (s.at_us < now_us - kRateWindowUs) continue;
      int64_t dt = now_us - s.at_us;
      return dt > 0 ? static_cast<double>(count - s.count) * 1e6 / static_cast<double>(dt) : 0;
    }
    return 0;
  }
};

struct Topic {
  std::string name;
  TopicRecord rec;
  TopicConfig config;
  std::vector<Sub*> subs;
  uint64_t published = 0;
  Rate rate;
};

struct Sub {
  uint32_t id = 0;
  std::string name;
  Topic* topic = nullptr;
  SubRecord rec;
  AckWindow acks;
  uint64_t skipped = 0;
  uint64_t scan_seq = 1;  // the next log seq to read into the window

  std::deque<Pending> window;
  std::deque<Pending> front;                              // released by a key, or redriven: first
  std::multimap<std::pair<int64_t, uint64_t>, Pending> retry;  // (not_before, seq)
  std::unordered_map<std::string, uint64_t> key_owner;    // key -> the seq that may be in flight
  std::unordered_map<std::string, std::deque<Pending>> held;  // by seq, behind the key's owner
  size_t held_total = 0;
  std::unordered_map<std::string, ParkInfo> parked;
  std::unordered_map<uint64_t, uint32_t> counts;          // stored delivery counts, until read ahead
  std::map<Uuid, Adoption> adopt;                         // by message id, until Fill() reads it

  std::vector<uint64_t> consumers;
  size_t rr = 0;
  InFlight* lease_head = nullptr;
  InFlight* lease_tail = nullptr;
  uint64_t in_flight = 0;

  // Changes for the next kAck op.
  bool ack_dirty = false;
  std::vector<uint64_t> new_acks;
  std::vector<uint64_t> forget_counts;
  std::vector<uint64_t> dead_acked;

  uint64_t delivered = 0, acked = 0, redelivered = 0, dead_lettered = 0, filtered = 0;
  Rate ack_rate;
  // Envelope types its consumers want (SubscribeSpec::types), sorted; empty: every type. Fill() acks
  // a message of another type instead of reading it into the window; what was read before the types
  // last changed (seqs below recheck_below) DeliverTo() checks again.
  std::vector<std::string> types;
  uint64_t recheck_below = 0;
  size_t filter_budget = 0;  // messages this Pump() may still filter
  bool dirty = false;  // needs a pump

  bool key_ordered() const { return rec.ordering == static_cast<uint8_t>(OrderingMode::kKey); }
};

class LmdbBackend final : public Backend {
 public:
  LmdbBackend(uv_loop_t* loop, const StoreOptions& options, const Clock& clock)
      : loop_(loop), options_(options), clock_(clock) {}
  ~LmdbBackend() override;

  Status Open();

  void Publish(PublishRequest request, PublishCallback done) override;
  void Subscribe(const SubscribeSpec& spec, ConsumerSink* sink, SubscribeCallback done) override;
  void AddCredit(uint64_t consumer_id, uint32_t credit) override;
  Status Ack(uint64_t consumer_id, std::span<const uint64_t> delivery_ids) override;
  Status Nack(uint64_t consumer_id, uint64_t delivery_id, const NackOptions& options) override;
  void Detach(uint64_t consumer_id, bool crashed) override;
  void RunTimers() override;
  Result<std::vector<TopicInfo>> ListTopics() override;
  Result<std::vector<SubscriptionInfo>> ListSubscriptions() override;
  Result<std::vector<DeadLetter>> ListDeadLetters(std::string_view topic, std::string_view sub,
                                                   size_t limit) override;
  Result<uint64_t> Redrive(std::string_view topic, std::string_view sub,
                           std::span<const uint64_t> seqs) override;
  Result<uint64_t> Purge(std::string_view topic, std::string_view sub) override;
  Result<std::vector<ParkedKey>> ListParkedKeys(std::string_view topic, std::string_view sub) override;
  void Close(std::function<void()> done) override;
  void CommitBundle(BundleRequest request, BundleCallback done) override;
  Result<std::vector<StoredMessage>> Peek(std::string_view topic, uint64_t from_seq, size_t limit) override;
  Result<std::vector<StoredMessage>> Trace(std::string_view correlation_id, size_t limit) override;
  const StoreMetrics* metrics() const override { return &metrics_; }

 private:
  // Ends the loop's read transaction when the outermost entry point returns (so the writer may grow
  // the map between callbacks, and the loop never pins an old snapshot).
  class ReadScope {
   public:
    explicit ReadScope(LmdbBackend* b) : b_(b) { ++b_->read_depth_; }
    ~ReadScope() {
      if (--b_->read_depth_ == 0) b_->read_->End();
    }

   private:
    LmdbBackend* b_;
  };

  static void OnAsync(uv_async_t* handle);
  static void OnCheck(uv_check_t* handle);
  void ProcessWork();
  void CloseHandles();
  void ScheduleWork();
  void ApplyBatch(Batch& batch);
  void UpdateTopic(const TopicSnapshot& snap);
  Topic* EnsureTopic(uint32_t id, const std::string& name, const TopicRecord& rec);
  Sub* EnsureSub(Topic* topic, const std::string& name, const SubRecord& rec);
  Status LoadSub(Sub* sub);
  // Attaches a consumer; the subscription delivers `types` (sorted, unique) from now on.
  uint64_t AttachConsumer(Sub* sub, ConsumerSink* sink, uint32_t credit, const std::vector<std::string>& types);
  // Whether a stored message (its `messages` value) is of a type `sub` wants. An envelope without a
  // type has the empty type, which no subscription with types wants.
  bool Wanted(const Sub* sub, const MDB_val& stored);
  // Records the ack of `seq`, which no consumer held, with the broker as its consumer.
  void AckUnheld(Sub* sub, uint64_t seq);
  Sub* FindSub(std::string_view topic, std::string_view name);

  void Pump(Sub* sub);
  void Fill(Sub* sub);
  // Fill() found `seq` (stored value `stored`): true if it is a stored direct request, which is now
  // queued for retry or dead-lettered as its Adoption says.
  bool Adopt(Sub* sub, uint64_t seq, const MDB_val& stored);
  bool TakeNext(Sub* sub, int64_t now_us, Pending* out);
  bool DeliverTo(Consumer* c, Pending p, int64_t now_us);
  Consumer* NextConsumer(Sub* sub);
  void ReleaseKey(Sub* sub, const std::string& key, uint64_t seq);
  // The key has no message in flight: its oldest held message (if any) becomes the next to deliver.
  void PromoteHeld(Sub* sub, const std::string& key);
  void HoldOrPark(Sub* sub, Pending p);
  void Requeue(InFlight lease, int64_t not_before_us, std::string_view error, bool crashed);
  // Delivers `p` again, not before `not_before_us`.
  void Retry(Sub* sub, Pending p, int64_t not_before_us);
  void DeadLetterMsg(Sub* sub, const Pending& p, std::string reason, std::string error);
  // The subscription of `topic` if the topic is only a queue of requests (see DeliverDirect), else null.
  Sub* DirectQueue(const std::string& topic);
  // Hands a Request to a consumer at once if its topic allows it (see the definition).
  bool DeliverDirect(const std::shared_ptr<DirectRequest>& direct);
  // Queues a publish for the writer; the caller may add to the op it returns.
  WriteOp& EnqueuePublish(PublishRequest request, PublishCallback done);
  // Stores an unsettled direct request; `how` says what happens once Fill() reads it back.
  void StoreDirect(Sub* sub, Adoption how);
  void RescanKey(Sub* sub, const std::string& key, uint64_t from_seq);
  void ApplySkipPolicy(Sub* sub);
  void FlushAcks(Sub* sub);
  void Unlink(InFlight* f);
  InFlight TakeLease(std::unordered_map<uint64_t, InFlight>::iterator it);
  void LinkLease(InFlight* f);
  // Records the ack of a lease already taken out of leases_.
  void SettleAck(InFlight f);
  void FinishBundle(uint64_t delivery_id, WriteOp& op, const BundleCallback& done);
  int64_t BackoffUs(const Sub* sub, uint32_t count) const;
  uint64_t PendingCount(const Sub* sub) const;
  void Complete(std::function<void()> fn);
  // Close(), once no direct request's bundle is committing: stores the direct requests still out,
  // flushes the acks and asks the writer to commit what is queued and stop.
  void StopWriter();
  Status DeadEntries(Sub* sub, std::span<const uint64_t> seqs,
                     std::vector<std::pair<uint64_t, std::string>>* out);

  uv_loop_t* loop_;
  StoreOptions options_;
  const Clock& clock_;
  std::unique_ptr<Env> env_;
  std::unique_ptr<ReadTxn> read_;
  int read_depth_ = 0;
  StoreMetrics metrics_;  // before writer_: the writer thread observes into it until it stops
  std::unique_ptr<Writer> writer_;
  uv_async_t* async_ = nullptr;  // the writer's hand-backs (another thread)
  // Work the loop gives itself (a bundle to enqueue, a subscription to pump) runs in the check phase of
  // the same loop iteration, after its I/O callbacks; the idle handle, active while work is scheduled,
  // keeps that iteration's poll from blocking when the work was scheduled before it (by a timer).
  uv_check_t* check_ = nullptr;
  uv_idle_t* idle_ = nullptr;
  bool work_scheduled_ = false;
  bool closing_ = false;
  bool stop_requested_ = false;  // closing_, and the writer was asked to stop
  size_t deferred_publishes_ = 0;  // Publish() calls waiting for the loop's next pass (direct attempts)
  bool closed_ = false;
  std::function<void()> close_done_;

  std::vector<WriteOp> outbox_;
  std::vector<std::function<void()>> immediate_;
  std::vector<Batch> completed_;

  std::unordered_map<uint32_t, std::unique_ptr<Topic>> topics_;
  std::unordered_map<std::string, Topic*> topics_by_name_;
  std::unordered_map<uint32_t, std::unique_ptr<Sub>> subs_;
  std::map<std::pair<std::string, std::string>, Sub*, std::less<>> subs_by_name_;
  std::unordered_map<uint64_t, Consumer> consumers_;
  std::unordered_map<uint64_t, InFlight> leases_;
  std::unordered_set<Sub*> dirty_;
  uint64_t next_consumer_id_ = 1;
  uint64_t next_delivery_id_ = 1;
  int64_t last_trim_us_ = 0;
  std::string aligned_;  // Wanted(): an envelope copied out of LMDB to read it as a FlatBuffer
};


LmdbBackend::~LmdbBackend() {
  if (writer_) writer_->Stop();
  if (async_ != nullptr) {
    async_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(async_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
    async_ = nullptr;
  }
  CloseHandles();
  writer_.reset();
  read_.reset();
  env_.reset();
}

Status LmdbBackend::Open() {
  for (const TopicConfig& t : options_.topics) {
    if (!ValidName(t.name)) return InvalidArgument(fmt::format("invalid topic name '{}'", t.name));
  }
  for (const SubscriptionConfig& s : options_.subscriptions) {
    if (!ValidName(s.topic) || !ValidName(s.name)) {
      return InvalidArgument(fmt::format("invalid subscription '{}' on topic '{}'", s.name, s.topic));
    }
  }
  auto env = Env::Open(options_.data_dir, options_.broker);
  if (!env.ok()) return env.status();
  env_ = std::move(*env);
  read_ = std::make_unique<ReadTxn>(env_.get());

  async_ = new uv_async_t;
  int rc = uv_async_init(loop_, async_, &LmdbBackend::OnAsync);
  if (rc != 0) {
    delete async_;
    async_ = nullptr;
    return Internal(fmt::format("uv_async_init: {}", uv_strerror(rc)));
  }
  async_->data = this;
  check_ = new uv_check_t;
  idle_ = new uv_idle_t;
  uv_check_init(loop_, check_);
  uv_idle_init(loop_, idle_);
  check_->data = this;
  idle_->data = this;
  // libuv runs the check handle started last first: the ConnectionSets' (net/connection.cc), started
  // after this one, may already have flushed this iteration; what ProcessWork sends from here their
  // prepare handle writes before the next poll.
  uv_check_start(check_, &LmdbBackend::OnCheck);
  // Neither keeps the loop alive: the broker's sockets and the async handle do.
  uv_unref(reinterpret_cast<uv_handle_t*>(check_));
  uv_unref(reinterpret_cast<uv_handle_t*>(idle_));

  std::map<std::string, TopicConfig> configs;
  for (const TopicConfig& t : options_.topics) configs[t.name] = t;
  uv_async_t* async = async_;
  writer_ = std::make_unique<Writer>(env_.get(), options_.broker, std::move(configs),
                                     [async] { uv_async_send(async); }, &metrics_);
  SLUICE_RETURN_IF_ERROR(writer_->Load());

  std::vector<WriteOp> ops;
  const int64_t now = clock_.NowUs();
  for (const TopicConfig& t : options_.topics) {
    WriteOp op;
    op.kind = OpKind::kCreateTopic;
    op.now_us = now;
    op.publish.topic = t.name;
    ops.push_back(std::move(op));
  }
  for (const SubscriptionConfig& s : options_.subscriptions) {
    WriteOp op;
    op.kind = OpKind::kCreateSub;
    op.now_us = now;
    op.sub_config = s;
    op.from_config = true;
    ops.push_back(std::move(op));
  }
  std::vector<TopicSnapshot> snaps;
  if (!ops.empty()) SLUICE_RETURN_IF_ERROR(writer_->ApplyNow(&ops, &snaps));

  ReadScope scope(this);
  for (const auto& [id, t] : writer_->topics()) EnsureTopic(id, t.name, t.rec);
  for (const auto& [id, s] : writer_->subs()) {
    auto t = topics_.find(s.topic_id);
    if (t == topics_.end()) continue;
    Sub* sub = EnsureSub(t->second.get(), s.name, s.rec);
    if (sub == nullptr) return {StatusCode::kCorruption, fmt::format("cannot load subscription '{}'", s.name)};
  }
  writer_->Start();
  return Status::Ok();
}

void LmdbBackend::OnAsync(uv_async_t* handle) {
  auto* self = static_cast<LmdbBackend*>(handle->data);
  if (self != nullptr) self->ProcessWork();
}

void LmdbBackend::OnCheck(uv_check_t* handle) {
  auto* self = static_cast<LmdbBackend*>(handle->data);
  if (self != nullptr && self->work_scheduled_) self->ProcessWork();
}

void LmdbBackend::ScheduleWork() {
  if (work_scheduled_ || closed_ || idle_ == nullptr) return;
  work_scheduled_ = true;
  uv_idle_start(idle_, [](uv_idle_t*) {});
}

void LmdbBackend::CloseHandles() {
  for (uv_handle_t* h : {reinterpret_cast<uv_handle_t*>(check_), reinterpret_cast<uv_handle_t*>(idle_)}) {
    if (h == nullptr) continue;
    h->data = nullptr;
    uv_close(h, [](uv_handle_t* handle) {
      if (handle->type == UV_CHECK) {
        delete reinterpret_cast<uv_check_t*>(handle);
      } else {
        delete reinterpret_cast<uv_idle_t*>(handle);
      }
    });
  }
  check_ = nullptr;
  idle_ = nullptr;
}

void LmdbBackend::Complete(std::function<void()> fn) {
  immediate_.push_back(std::move(fn));
  ScheduleWork();
}

void LmdbBackend::ProcessWork() {
  ReadScope scope(this);
  work_scheduled_ = false;
  if (idle_ != nullptr) uv_idle_stop(idle_);
  std::vector<Batch> batches;
  writer_->TakeCompleted(&batches);
  for (Batch& b : batches) {
    ApplyBatch(b);
    writer_->Recycle(&b.ops);
  }
  if (!immediate_.empty()) {
    std::vector<std::function<void()>> fns;
    fns.swap(immediate_);
    for (auto& fn : fns) fn();
  }
  // One pass: a subscription dirtied again by its own pump (a sink that acks synchronously) waits for
  // the next wake-up instead of starving the loop.
  if (!dirty_.empty()) {
    std::vector<Sub*> subs(dirty_.begin(), dirty_.end());
    dirty_.clear();
    for (Sub* s : subs) {
      s->dirty = false;
      Pump(s);
    }
    if (!dirty_.empty()) ScheduleWork();
  }
  for (auto& [id, s] : subs_) FlushAcks(s.get());
  writer_->Enqueue(&outbox_);
  read_->End();

  if (closing_ && !stop_requested_) StopWriter();
  if (closing_ && !closed_ && writer_->stopped()) {
    writer_->Stop();
    batches.clear();
    writer_->TakeCompleted(&batches);
    closed_ = true;
    for (Batch& b : batches) ApplyBatch(b);
    while (!immediate_.empty()) {
      std::vector<std::function<void()>> fns;
      fns.swap(immediate_);
      for (auto& fn : fns) fn();
    }
    CloseHandles();
    uv_close(reinterpret_cast<uv_handle_t*>(async_), [](uv_handle_t* h) {
      auto* self = static_cast<LmdbBackend*>(h->data);
      delete reinterpret_cast<uv_async_t*>(h);
      if (self == nullptr) return;
      self->async_ = nullptr;
      std::function<void()> done = std::move(self->close_done_);
      if (done) done();
    });
  }
}

void LmdbBackend::ApplyBatch(Batch& batch) {
  for (const TopicSnapshot& snap : batch.topics) UpdateTopic(snap);
  for (WriteOp& op : batch.ops) {
    if (op.kind == OpKind::kPublish) {
      if (!op.publish_done) continue;
      if (op.status.ok()) {
        if (!op.publish_result.duplicate) {
          auto t = topics_.find(op.topic_id);
          if (t != topics_.end()) ++t->second->published;
        }
        op.publish_done(op.publish_result);
      } else {
        op.publish_done(op.status);
      }
    } else if (op.done) {
      op.done(op);
    }
  }
}

Topic* LmdbBackend::EnsureTopic(uint32_t id, const std::string& name, const TopicRecord& rec) {
  auto it = topics_.find(id);
  if (it != topics_.end()) return it->second.get();
  auto t = std::make_unique<Topic>();
  t->name = name;
  t->rec = rec;
  t->config.name = name;
  for (const TopicConfig& c : options_.topics) {
    if (c.name == name) t->config = c;
  }
  Topic* raw = t.get();
  topics_by_name_[name] = raw;
  topics_[id] = std::move(t);
  return raw;
}

void LmdbBackend::UpdateTopic(const TopicSnapshot& snap) {
  Topic* t = EnsureTopic(snap.rec.id, snap.name, snap.rec);
  uint64_t old_last = t->rec.last_seq;
  t->rec = snap.rec;
  for (Sub* s : t->subs) {
    // Messages below first_seq are gone. Only drop_oldest removes what a subscription has not acked;
    // that loss is counted as skipped, so it is visible.
    if (t->rec.first_seq > 1 && s->acks.floor() < t->rec.first_seq - 1) {
      s->skipped += s->acks.AckThrough(t->rec.first_seq - 1);
      s->ack_dirty = true;
    }
    if (t->rec.last_seq > old_last) {
      ApplySkipPolicy(s);
      if (!s->dirty) {
        s->dirty = true;
        dirty_.insert(s);
      }
    }
  }
}

Sub* LmdbBackend::EnsureSub(Topic* topic, const std::string& name, const SubRecord& rec) {
  auto it = subs_.find(rec.id);
  if (it != subs_.end()) return it->second.get();
  auto s = std::make_unique<Sub>();
  s->id = rec.id;
  s->name = name;
  s->topic = topic;
  s->rec = rec;
  s->acks.Reset(rec.floor);
  s->skipped = rec.skipped;
  s->scan_seq = rec.floor + 1;
  Sub* raw = s.get();
  if (!LoadSub(raw).ok()) return nullptr;
  topic->subs.push_back(raw);
  subs_by_name_[{topic->name, name}] = raw;
  subs_[rec.id] = std::move(s);
  return raw;
}

Status LmdbBackend::LoadSub(Sub* sub) {
  SLUICE_RETURN_IF_ERROR(read_->Begin());
  const store::Dbis& d = env_->dbi();
  MDB_txn* txn = read_->txn();
  MDB_cursor* cur = nullptr;
  MDB_val k, v;
  auto scan = [&](MDB_dbi dbi, const void* from, size_t from_len, auto&& fn) -> Status {
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0) return store::LmdbStatus(rc, "loading a subscription");
    k = MdbVal(from, from_len);
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      if (k.mv_size < 4 || store::GetBe32(static_cast<const char*>(k.mv_data)) != sub->id) break;
      fn(static_cast<const char*>(k.mv_data), k.mv_size, static_cast<const char*>(v.mv_data), v.mv_size);
    }
    mdb_cursor_close(cur);
    return Status::Ok();
  };
  SeqKey from_floor(sub->id, sub->acks.floor() + 1);
  SLUICE_RETURN_IF_ERROR(scan(d.acks, from_floor.bytes, 12, [&](const char* kp, size_t kn, const char*, size_t) {
    if (kn == 12) sub->acks.Ack(SeqKey::Seq(kp));
  }));
  SeqKey from_zero(sub->id, 0);
  SLUICE_RETURN_IF_ERROR(scan(d.counts, from_zero.bytes, 12, [&](const char* kp, size_t kn, const char* vp, size_t vn) {
    if (kn == 12 && vn == 4) sub->counts[SeqKey::Seq(kp)] = store::GetLe<uint32_t>(vp);
  }));
  std::string prefix = store::NameKey(sub->id, "");
  SLUICE_RETURN_IF_ERROR(scan(d.parked, prefix.data(), prefix.size(), [&](const char* kp, size_t kn, const char* vp, size_t vn) {
    if (vn == 8) sub->parked[std::string(kp + 4, kn - 4)] = ParkInfo{store::GetLe<uint64_t>(vp), UINT64_MAX};
  }));
  SLUICE_RETURN_IF_ERROR(scan(d.dead, from_zero.bytes, 12, [&](const char* kp, size_t kn, const char* vp, size_t vn) {
    DeadHeader h;
    if (kn != 12 || !h.Decode(vp, vn)) return;
    if (h.state == DeadHeader::kDead) {
      ++sub->dead_lettered;
      return;
    }
    Pending p;
    p.seq = SeqKey::Seq(kp);
    p.count = h.delivery_count + 1;
    p.from_dead = true;
    if (sub->key_ordered()) p.key.assign(h.Key(vp));
    sub->front.push_back(std::move(p));
  }));
  return Status::Ok();
}

Sub* LmdbBackend::FindSub(std::string_view topic, std::string_view name) {
  auto it = subs_by_name_.find(std::pair<std::string, std::string>(topic, name));
  return it == subs_by_name_.end() ? nullptr : it->second;
}

uint64_t LmdbBackend::AttachConsumer(Sub* sub, ConsumerSink* sink, uint32_t credit,
                                     const std::vector<std::string>& types) {
  // The newest consumer's types apply to the whole subscription: during a rolling upgrade of a plugin
  // that wants other types, the new version's take over (a refusal would stop it from starting).
  if (types != sub->types) {
    sub->types = types;
    // What was read ahead (the window, messages held behind a key, retries) passed the previous types.
    sub->recheck_below = sub->scan_seq;
  }
  uint64_t id = next_consumer_id_++;
  consumers_[id] = Consumer{id, sub, sink, credit, 0};
  sub->consumers.push_back(id);
  if (!sub->dirty) {
    sub->dirty = true;
    dirty_.insert(sub);
  }
  ScheduleWork();
  return id;
}

// ---- Publish and subscribe -------------------------------------------------------------------------

void LmdbBackend::Publish(PublishRequest request, PublishCallback done) {
  if (closing_) {
    Complete([done = std::move(done)] { done(Unavailable("the store is closing")); });
    return;
  }
  if (request.envelope.size() > options_.broker.max_message_bytes) {
    size_t n = request.envelope.size();
    Complete([this, done = std::move(done), n] {
      done(LimitExceeded(fmt::format("message of {} bytes exceeds max_message_bytes = {}", n,
                                     options_.broker.max_message_bytes)));
    });
    return;
  }
  if (!ValidName(request.topic)) {
    std::string name = request.topic;
    Complete([done = std::move(done), name] {
      done(InvalidArgument(fmt::format("invalid topic name '{}' (allowed: [A-Za-z0-9._-]{{1,200}})", name)));
    });
    return;
  }
  const bool may_go_direct = request.reply_token != 0 && !request.dedupe && DirectQueue(request.topic) != nullptr;
  if (may_go_direct || deferred_publishes_ > 0) {
    // A direct attempt runs on the loop's next pass, never inside Publish(): a consumer is never
    // called from inside the call that caused it (backend.h). Publishes that come meanwhile wait
    // behind it, so the store keeps the order in which they came if it ends up stored.
    ++deferred_publishes_;
    auto direct = std::make_shared<DirectRequest>(DirectRequest{std::move(request), std::move(done)});
    Complete([this, direct, may_go_direct] {
      --deferred_publishes_;
      if (stop_requested_) {
        direct->done(Unavailable("the store is closing"));
      } else if (!may_go_direct || closing_ || !DeliverDirect(direct)) {
        EnqueuePublish(std::move(direct->request), std::move(direct->done));
      }
    });
    return;
  }
  EnqueuePublish(std::move(request), std::move(done));
}

WriteOp& LmdbBackend::EnqueuePublish(PublishRequest request, PublishCallback done) {
  WriteOp& op = outbox_.emplace_back();
  op.kind = OpKind::kPublish;
  op.now_us = request.publish_time_us != 0 ? request.publish_time_us : clock_.NowUs();
  if (request.publish_time_us == 0) request.publish_time_us = op.now_us;
  op.publish = std::move(request);
  op.publish_done = std::move(done);
  ScheduleWork();
  return op;
}

// A Request that a consumer can take at once is handed over without being stored first. Its
// requester's confirmation is the Reply, which leaves only once the handler's bundle has committed (the
// effects are durable); storing the request before delivering it would put a second synced commit on
// every reply's path, and a store + delete of every request on the disk. If the daemon dies before the
// handler's commit, the requester loses its connection without a Reply and retries, as it would have
// to after any lost reply (the pipeline's PlaceOrder has an idempotency key for that).
//
// Only when the topic is nothing but a queue of requests: exactly one subscription, ordering "none"
// and no max_backlog, nothing of it that the loop knows to be waiting (a request still being stored may be overtaken:
// with ordering "none" nothing promises their order), no retention, no limits (a direct request
// would pass a limit that its stored copy then fails), and no publisher-chosen id (dedupe needs the
// stored index). A second subscription or a retention setting (audit, replay) makes every request
// stored, as any message is. A direct request that its consumer does not settle (nack, lease expiry,
// detach, crash, shutdown) is stored then (StoreDirect) and carries on like any stored message.
Sub* LmdbBackend::DirectQueue(const std::string& topic_name) {
  auto t = topics_by_name_.find(topic_name);
  if (t == topics_by_name_.end()) return nullptr;
  const Topic* topic = t->second;
  const TopicConfig& tc = topic->config;
  if (topic->subs.size() != 1 || tc.retention_max_age.count() > 0 || tc.retention_max_bytes > 0 ||
      tc.max_messages > 0 || tc.max_bytes > 0) {
    return nullptr;
  }
  Sub* sub = topic->subs.front();
  // With types, a request is stored first so that Fill() decides on its type like on any other.
  return sub->key_ordered() || sub->rec.max_backlog > 0 || !sub->types.empty() ? nullptr : sub;
}

bool LmdbBackend::DeliverDirect(const std::shared_ptr<DirectRequest>& direct) {
  Sub* sub = DirectQueue(direct->request.topic);
  if (sub == nullptr || sub->scan_seq <= sub->topic->rec.last_seq || !sub->window.empty() ||
      !sub->front.empty() || !sub->retry.empty()) {
    return false;
  }
  Consumer* c = NextConsumer(sub);
  if (c == nullptr) return false;
  Pending p;
  p.direct = direct;
  return DeliverTo(c, std::move(p), clock_.NowUs());
}

void LmdbBackend::StoreDirect(Sub* sub, Adoption how) {
  std::shared_ptr<DirectRequest> direct = std::move(how.msg.direct);
  const Uuid id = direct->request.id;
  const bool dead = !how.dead_reason.empty();
  auto stored = [this, sub_id = sub->id, id, dead, done = std::move(direct->done)](Result<PublishResult> r) {
    auto s = subs_.find(sub_id);
    if (s != subs_.end()) {
      Sub* owner = s->second.get();
      auto it = owner->adopt.find(id);
      if (r.ok() && dead && it != owner->adopt.end()) {
        // Committed as a dead letter: the loop's view follows now, not when Fill() gets to it.
        owner->adopt.erase(it);
        if (owner->acks.Ack(r->seq)) owner->new_acks.push_back(r->seq);
        owner->ack_dirty = true;
        ScheduleWork();
      } else if (!r.ok() && !dead && it != owner->adopt.end()) {
        // Not stored: the requester gets the error (the service answers its Request with it). A
        // dead letter keeps its entry: a failed flush may still have committed it.
        owner->adopt.erase(it);
      }
    }
    if (done) done(std::move(r));
  };
  // A copy of the request: a Delivery handed out for it may still point into its envelope.
  WriteOp& op = EnqueuePublish(direct->request, std::move(stored));
  op.now_us = clock_.NowUs();  // a dead letter's time is when it was dead-lettered
  if (dead) {
    op.sub_id = sub->id;
    op.count = how.msg.count;
    op.reason = how.dead_reason;
    op.error = how.error;
  }
  sub->adopt[id] = std::move(how);
}

void LmdbBackend::Subscribe(const SubscribeSpec& spec, ConsumerSink* sink, SubscribeCallback done) {
  const SubscriptionConfig& c = spec.sub;
  Status invalid;
  if (closing_) {
    invalid = Unavailable("the store is closing");
  } else if (!ValidName(c.topic)) {
    invalid = InvalidArgument(fmt::format("invalid topic name '{}'", c.topic));
  } else if (!ValidName(c.name)) {
    invalid = InvalidArgument(fmt::format("invalid subscription name '{}'", c.name));
  } else if (c.max_deliveries > 1000) {
    invalid = InvalidArgument(fmt::format("max_deliveries {} is out of range (1..1000)", c.max_deliveries));
  } else if (c.backoff.multiplier < 1.0) {
    invalid = InvalidArgument("backoff multiplier must be >= 1.0");
  } else {
    invalid = CheckSubscribeTypes(spec.types);
  }
  if (!invalid.ok()) {
    Complete([done = std::move(done), invalid] { done(invalid); });
    return;
  }
  uint32_t credit = spec.credit;
  std::vector<std::string> types = spec.types;
  std::sort(types.begin(), types.end());
  types.erase(std::unique(types.begin(), types.end()), types.end());
  if (Sub* s = FindSub(c.topic, c.name)) {
    Complete([done = std::move(done), r = AttachConsumer(s, sink, credit, types)] { done(r); });
    return;
  }
  WriteOp& op = outbox_.emplace_back();
  op.kind = OpKind::kCreateSub;
  op.now_us = clock_.NowUs();
  op.sub_config = c;
  op.done = [this, sink, credit, types = std::move(types), done = std::move(done)](WriteOp& o) {
    if (!o.status.ok()) {
      done(o.status);
      return;
    }
    auto t = topics_.find(o.topic_id);
    Sub* s = t == topics_.end() ? nullptr : EnsureSub(t->second.get(), o.sub_config.name, o.sub_record);
    if (s == nullptr) {
      done(Internal(fmt::format("subscription '{}' was created but cannot be loaded", o.sub_config.name)));
      return;
    }
    done(AttachConsumer(s, sink, credit, types));
  };
  ScheduleWork();
}

void LmdbBackend::AddCredit(uint64_t consumer_id, uint32_t credit) {
  auto it = consumers_.find(consumer_id);
  if (it == consumers_.end()) return;
  it->second.credit += credit;
  Sub* s = it->second.sub;
  if (!s->dirty) {
    s->dirty = true;
    dirty_.insert(s);
  }
  ScheduleWork();
}

// ---- Leases ----------------------------------------------------------------------------------------

void LmdbBackend::Unlink(InFlight* f) {
  Sub* s = f->sub;
  if (f->prev) f->prev->next = f->next; else s->lease_head = f->next;
  if (f->next) f->next->prev = f->prev; else s->lease_tail = f->prev;
  f->prev = f->next = nullptr;
}

void LmdbBackend::LinkLease(InFlight* f) {
  Sub* s = f->sub;
  f->next = nullptr;
  f->prev = s->lease_tail;
  if (s->lease_tail) s->lease_tail->next = f; else s->lease_head = f;
  s->lease_tail = f;
}

void LmdbBackend::SettleAck(InFlight f) {
  Sub* s = f.sub;
  ++s->acked;
  if (f.msg.direct) {
    // Never stored, so nothing to record; the publisher's callback runs later, never inside a call
    // that settles it.
    ++s->topic->published;
    std::shared_ptr<DirectRequest> direct = std::move(f.msg.direct);
    Complete([direct] {
      PublishResult r;
      r.id = direct->request.id;
      if (direct->done) direct->done(r);
    });
  } else if (f.msg.from_dead) {
    s->dead_acked.push_back(f.msg.seq);
    s->ack_dirty = true;
  } else {
    if (s->acks.Ack(f.msg.seq)) s->new_acks.push_back(f.msg.seq);
    if (f.msg.count > 1 || s->counts.count(f.msg.seq)) {
      s->counts.erase(f.msg.seq);
      s->forget_counts.push_back(f.msg.seq);
    }
    s->ack_dirty = true;
  }
  ReleaseKey(s, f.msg.key, f.msg.seq);
  if (!s->dirty) {
    s->dirty = true;
    dirty_.insert(s);
  }
}

void LmdbBackend::CommitBundle(BundleRequest request, BundleCallback done) {
  auto lost = [this, &done](std::string why) {
    Complete([done = std::move(done), why = std::move(why)] {
      BundleResult r;
      r.outcome = BundleOutcome::kLeaseLost;
      r.message = why;
      done(r);
    });
  };
  if (closing_) {
    Complete([done = std::move(done)] { done(Unavailable("the store is closing")); });
    return;
  }
  auto it = leases_.find(request.delivery_id);
  if (it == leases_.end() || it->second.consumer_id != request.consumer_id) {
    lost(fmt::format("delivery {} is not leased to consumer {} (expired or settled)", request.delivery_id,
                     request.consumer_id));
    return;
  }
  if (it->second.committing) {
    lost(fmt::format("delivery {} already has a bundle being committed", request.delivery_id));
    return;
  }
  InFlight& f = it->second;
  Unlink(&f);
  f.committing = true;
  WriteOp& op = outbox_.emplace_back();
  op.kind = OpKind::kBundle;
  op.now_us = clock_.NowUs();
  op.sub_id = f.sub->id;
  // A redriven dead letter is settled by deleting its dead-letter entry after the commit; a direct
  // request was never stored; a message skipped (on_full = "skip", drop_oldest) while its handler
  // ran is acked already. None of them has an ack for the bundle to write.
  op.seq = f.msg.from_dead || f.msg.direct || f.sub->acks.IsAcked(f.msg.seq) ? 0 : f.msg.seq;
  for (auto& p : request.publishes) {
    if (p.publish_time_us == 0) p.publish_time_us = op.now_us;
    // A stored input's bundle applies once by its ack, which the writer checks (Writer::ApplyBundle):
    // its publishes need no dedupe entries (two index writes each, and their expiry). A direct
    // request or a redriven dead letter has no ack to check, and keeps them.
    if (op.seq != 0) p.dedupe = false;
  }
  op.bundle = std::move(request);
  uint64_t did = f.delivery_id;
  op.done = [this, did, done = std::move(done)](WriteOp& o) { FinishBundle(did, o, done); };
  ScheduleWork();
}

void LmdbBackend::FinishBundle(uint64_t delivery_id, WriteOp& op, const BundleCallback& done) {
  auto it = leases_.find(delivery_id);
  if (it == leases_.end()) {
    done(Internal("a committing lease disappeared"));
    return;
  }
  InFlight f = TakeLease(it);
  if (op.status.ok() && op.bundle_result.outcome == BundleOutcome::kCommitted) {
    // Its publishes count as published, as a Publish frame's do (a re-run's repeats do not).
    const auto& published = op.bundle_result.published;
    for (size_t i = 0; i < published.size() && i < op.bundle.publishes.size(); ++i) {
      if (published[i].duplicate) continue;
      auto t = topics_by_name_.find(op.bundle.publishes[i].topic);
      if (t != topics_by_name_.end()) ++t->second->published;
    }
    SettleAck(std::move(f));
    ScheduleWork();
    done(op.bundle_result);
    return;
  }
  // Nothing was applied. A live consumer keeps the lease (it runs the handler again on a conflict);
  // the message of a consumer that went away meanwhile goes back to the subscription.
  bool alive = consumers_.count(f.consumer_id) > 0;
  int64_t now = clock_.NowUs();
  if (alive) {
    auto c = consumers_.find(f.consumer_id);
    ++c->second.in_flight;
    ++f.sub->in_flight;
    f.committing = false;
    f.deadline_us = now + static_cast<int64_t>(f.sub->rec.ack_wait_ms) * 1000;
    InFlight& back = leases_[delivery_id];
    back = std::move(f);
    LinkLease(&back);
  } else {
    Requeue(std::move(f), now, "the consumer detached while its bundle was committing", false);
  }
  ScheduleWork();
  if (!op.status.ok()) {
    done(op.status);
  } else {
    done(op.bundle_result);
  }
}

InFlight LmdbBackend::TakeLease(std::unordered_map<uint64_t, InFlight>::iterator it) {
  if (!it->second.committing) Unlink(&it->second);
  InFlight f = std::move(it->second);
  leases_.erase(it);
  auto c = consumers_.find(f.consumer_id);
  if (c != consumers_.end() && c->second.in_flight > 0) --c->second.in_flight;
  if (f.sub->in_flight > 0) --f.sub->in_flight;
  return f;
}

int64_t LmdbBackend::BackoffUs(const Sub* sub, uint32_t count) const {
  double ms = static_cast<double>(sub->rec.backoff_initial_ms) *
              std::pow(std::max(1.0, sub->rec.backoff_multiplier), static_cast<double>(count > 0 ? count - 1 : 0));
  ms = std::min(ms, static_cast<double>(sub->rec.backoff_max_ms));
  return static_cast<int64_t>(ms) * 1000;
}

Status LmdbBackend::Ack(uint64_t consumer_id, std::span<const uint64_t> delivery_ids) {
  if (consumers_.find(consumer_id) == consumers_.end()) {
    return NotFound(fmt::format("no consumer {}", consumer_id));
  }
  for (uint64_t did : delivery_ids) {
    auto it = leases_.find(did);
    // A lease whose bundle is committing is settled by the commit, not by a plain ack.
    if (it == leases_.end() || it->second.consumer_id != consumer_id || it->second.committing) continue;
    SettleAck(TakeLease(it));
  }
  ScheduleWork();
  return Status::Ok();
}

Status LmdbBackend::Nack(uint64_t consumer_id, uint64_t delivery_id, const NackOptions& options) {
  auto it = leases_.find(delivery_id);
  if (it == leases_.end() || it->second.consumer_id != consumer_id || it->second.committing) {
    return NotFound(fmt::format("delivery {} is not leased to consumer {} (expired or already settled)",
                                delivery_id, consumer_id));
  }
  InFlight f = TakeLease(it);
  Sub* s = f.sub;
  int64_t now = clock_.NowUs();
  if (options.reject) {
    DeadLetterMsg(s, f.msg, "rejected", options.error);
  } else if (f.msg.count >= s->rec.max_deliveries) {
    DeadLetterMsg(s, f.msg, fmt::format("max_deliveries ({}) reached", s->rec.max_deliveries), options.error);
  } else {
    int64_t delay = options.delay_us >= 0 ? options.delay_us : BackoffUs(s, f.msg.count);
    Pending p = std::move(f.msg);
    ++p.count;
    Retry(s, std::move(p), now + delay);
  }
  if (!s->dirty) {
    s->dirty = true;
    dirty_.insert(s);
  }
  ScheduleWork();
  return Status::Ok();
}

void LmdbBackend::Requeue(InFlight lease, int64_t not_before_us, std::string_view error, bool crashed) {
  Sub* s = lease.sub;
  if (crashed) ++lease.msg.crashes;
  if (crashed && lease.msg.crashes >= s->rec.max_crashes) {
    DeadLetterMsg(s, lease.msg,
                  fmt::format("poison: worker crashed {} times (max_crashes = {})", lease.msg.crashes,
                              s->rec.max_crashes),
                  std::string(error));
  } else if (lease.msg.count >= s->rec.max_deliveries) {
    DeadLetterMsg(s, lease.msg, fmt::format("max_deliveries ({}) reached", s->rec.max_deliveries),
                  std::string(error));
  } else {
    Pending p = std::move(lease.msg);
    ++p.count;
    Retry(s, std::move(p), not_before_us);
  }
  if (!s->dirty) {
    s->dirty = true;
    dirty_.insert(s);
  }
}

void LmdbBackend::Retry(Sub* sub, Pending p, int64_t not_before_us) {
  if (p.direct) {
    StoreDirect(sub, Adoption{std::move(p), not_before_us, {}, {}});
    return;
  }
  uint64_t seq = p.seq;
  sub->retry.emplace(std::make_pair(not_before_us, seq), std::move(p));
}

void LmdbBackend::Detach(uint64_t consumer_id, bool crashed) {
  auto c = consumers_.find(consumer_id);
  if (c == consumers_.end()) return;
  Sub* s = c->second.sub;
  int64_t now = clock_.NowUs();
  std::vector<uint64_t> ids;
  for (InFlight* f = s->lease_head; f != nullptr; f = f->next) {
    if (f->consumer_id == consumer_id) ids.push_back(f->delivery_id);
  }
  for (uint64_t id : ids) {
    Requeue(TakeLease(leases_.find(id)), now, crashed ? "the consumer crashed" : "the consumer detached",
            crashed);
  }
  s->consumers.erase(std::remove(s->consumers.begin(), s->consumers.end(), consumer_id), s->consumers.end());
  consumers_.erase(consumer_id);
  if (!s->dirty) {
    s->dirty = true;
    dirty_.insert(s);
  }
  ScheduleWork();
}

void LmdbBackend::RunTimers() {
  int64_t now = clock_.NowUs();
  for (auto& [id, t] : topics_) t->rate.Record(t->published, now);
  for (auto& [id, sp] : subs_) {
    Sub* s = sp.get();
    s->ack_rate.Record(s->acked + s->filtered, now);
    while (s->lease_head != nullptr && s->lease_head->deadline_us <= now) {
      Requeue(TakeLease(leases_.find(s->lease_head->delivery_id)), now, "lease expired (ack_wait)", false);
    }
    if (!s->retry.empty() && s->retry.begin()->first.first <= now && !s->dirty) {
      s->dirty = true;
      dirty_.insert(s);
    }
  }
  if (now - last_trim_us_ >= kTrimIntervalUs) {
    bool any = std::any_of(topics_.begin(), topics_.end(),
                           [](const auto& t) { return t.second->config.retention_max_age.count() > 0; });
    if (any) {
      last_trim_us_ = now;
      WriteOp& op = outbox_.emplace_back();
      op.kind = OpKind::kTrim;
      op.now_us = now;
    }
  }
  if (!dirty_.empty() || !outbox_.empty()) ScheduleWork();
}

// ---- Delivery --------------------------------------------------------------------------------------

void LmdbBackend::DeadLetterMsg(Sub* sub, const Pending& p, std::string reason, std::string error) {
  if (p.direct) {
    // A dead letter is a stored message: it is stored and dead-lettered in one commit.
    ++sub->dead_lettered;
    StoreDirect(sub, Adoption{p, 0, std::move(reason), std::move(error)});
    return;
  }
  WriteOp& op = outbox_.emplace_back();
  op.kind = OpKind::kDeadLetter;
  op.now_us = clock_.NowUs();
  op.sub_id = sub->id;
  op.seq = p.seq;
  op.count = p.count;
  op.reason = std::move(reason);
  op.error = std::move(error);
  op.key = p.key;
  op.from_dead = p.from_dead;
  op.park = sub->key_ordered() && !p.key.empty();
  if (!p.from_dead) {
    if (sub->acks.Ack(p.seq)) sub->new_acks.push_back(p.seq);
    sub->counts.erase(p.seq);
    sub->ack_dirty = true;
  }
  ++sub->dead_lettered;
  if (op.park) {
    auto owner = sub->key_owner.find(p.key);
    if (owner != sub->key_owner.end() && owner->second == p.seq) sub->key_owner.erase(owner);
    ParkInfo& info = sub->parked[p.key];
    info.parked_at_seq = p.seq;
    auto h = sub->held.find(p.key);
    if (h != sub->held.end()) {
      for (const Pending& w : h->second) info.first_waiting = std::min(info.first_waiting, w.seq);
      sub->held_total -= h->second.size();
      sub->held.erase(h);
    }
  } else {
    ReleaseKey(sub, p.key, p.seq);
  }
  ScheduleWork();
}

void LmdbBackend::ReleaseKey(Sub* sub, const std::string& key, uint64_t seq) {
  if (!sub->key_ordered() || key.empty()) return;
  auto it = sub->key_owner.find(key);
  if (it == sub->key_owner.end() || it->second != seq) return;
  sub->key_owner.erase(it);
  PromoteHeld(sub, key);
}

void LmdbBackend::PromoteHeld(Sub* sub, const std::string& key) {
  auto h = sub->held.find(key);
  if (h == sub->held.end() || h->second.empty()) return;
  Pending next = std::move(h->second.front());
  h->second.pop_front();
  --sub->held_total;
  if (h->second.empty()) sub->held.erase(h);
  sub->key_owner[key] = next.seq;
  sub->front.push_back(std::move(next));
}

void LmdbBackend::HoldOrPark(Sub* sub, Pending p) {
  auto pk = sub->parked.find(p.key);
  if (pk != sub->parked.end()) {
    pk->second.first_waiting = std::min(pk->second.first_waiting, p.seq);
    return;
  }
  auto& q = sub->held[p.key];
  auto pos = std::upper_bound(q.begin(), q.end(), p.seq, [](uint64_t s, const Pending& e) { return s < e.seq; });
  if (pos != q.begin() && std::prev(pos)->seq == p.seq) return;  // already held
  q.insert(pos, std::move(p));
  ++sub->held_total;
}

void LmdbBackend::Fill(Sub* sub) {
  Topic* t = sub->topic;
  if (sub->window.size() + sub->held_total >= kReadAhead) return;
  uint64_t start = std::max({sub->scan_seq, sub->acks.floor() + 1, t->rec.first_seq});
  sub->scan_seq = start;
  if (start > t->rec.last_seq) return;
  if (!read_->Begin().ok()) return;
  MDB_cursor* cur = nullptr;
  if (mdb_cursor_open(read_->txn(), env_->dbi().messages, &cur) != 0) return;
  SeqKey from(t->rec.id, start);
  MDB_val k = MdbVal(from.bytes, sizeof from.bytes), v;
  int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  bool reached_end = true;
  while (rc == 0) {
    if (k.mv_size != 12 || SeqKey::Id(static_cast<const char*>(k.mv_data)) != t->rec.id) break;
    uint64_t seq = SeqKey::Seq(static_cast<const char*>(k.mv_data));
    if (seq > t->rec.last_seq) break;
    if (sub->window.size() + sub->held_total >= kReadAhead) {
      reached_end = false;
      break;
    }
    if (sub->filter_budget == 0 && !sub->types.empty()) {
      reached_end = false;
      if (!sub->dirty) {  // the rest in the next pass
        sub->dirty = true;
        dirty_.insert(sub);
      }
      ScheduleWork();
      break;
    }
    sub->scan_seq = seq + 1;
    if (sub->acks.IsAcked(seq) || Adopt(sub, seq, v)) {
      // acked, or a stored direct request, queued as its Adoption says
    } else if (!sub->types.empty() && !Wanted(sub, v)) {
      AckUnheld(sub, seq);
      --sub->filter_budget;
    } else {
      Pending& p = sub->window.emplace_back();
      p.seq = seq;
      auto c = sub->counts.find(seq);
      p.count = c == sub->counts.end() ? 1 : c->second + 1;
      if (sub->key_ordered()) {
        MessageHeader h;
        if (h.Decode(static_cast<const char*>(v.mv_data), v.mv_size)) {
          p.key.assign(h.Key(static_cast<const char*>(v.mv_data)));
        }
      }
    }
    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  if (reached_end) sub->scan_seq = std::max(sub->scan_seq, t->rec.last_seq + 1);
}

bool LmdbBackend::Adopt(Sub* sub, uint64_t seq, const MDB_val& stored) {
  if (sub->adopt.empty()) return false;
  MessageHeader h;
  if (!h.Decode(static_cast<const char*>(stored.mv_data), stored.mv_size)) return false;
  auto it = sub->adopt.find(h.id);
  if (it == sub->adopt.end()) return false;
  Adoption how = std::move(it->second);
  sub->adopt.erase(it);
  how.msg.seq = seq;
  if (!how.dead_reason.empty()) {
    // Stored and dead-lettered in one commit (StoreDirect); only the loop's view is left to update.
    if (sub->acks.Ack(seq)) sub->new_acks.push_back(seq);
    sub->ack_dirty = true;
  } else {
    sub->retry.emplace(std::make_pair(how.not_before_us, seq), std::move(how.msg));
  }
  return true;
}

bool LmdbBackend::Wanted(const Sub* sub, const MDB_val& stored) {
  MessageHeader h;
  const char* p = static_cast<const char*>(stored.mv_data);
  if (!h.Decode(p, stored.mv_size)) return true;  // DeliverTo() skips what it cannot read
  const wire::Envelope* env = ReadStored(h.Envelope(p), &aligned_);
  if (env == nullptr) return true;  // the consumer's own check reports it
  std::string_view type = env->type() ? env->type()->string_view() : std::string_view();
  return std::binary_search(sub->types.begin(), sub->types.end(), type);
}

void LmdbBackend::AckUnheld(Sub* sub, uint64_t seq) {
  if (sub->acks.Ack(seq)) sub->new_acks.push_back(seq);
  if (sub->counts.erase(seq) > 0) sub->forget_counts.push_back(seq);  // delivered before, under other types
  sub->ack_dirty = true;
  ++sub->filtered;
}

bool LmdbBackend::TakeNext(Sub* sub, int64_t now_us, Pending* out) {
  for (;;) {
    if (!sub->retry.empty() && sub->retry.begin()->first.first <= now_us) {
      auto node = sub->retry.extract(sub->retry.begin());
      Pending p = std::move(node.mapped());
      if (!p.from_dead && sub->acks.IsAcked(p.seq)) {
        ReleaseKey(sub, p.key, p.seq);
        continue;
      }
      *out = std::move(p);
      return true;
    }
    bool from_window = false;
    Pending p;
    if (!sub->front.empty()) {
      p = std::move(sub->front.front());
      sub->front.pop_front();
    } else {
      if (sub->window.empty()) Fill(sub);
      if (sub->window.empty()) {
        // Fill() may have adopted a stored direct request into `retry`, due now.
        if (!sub->retry.empty() && sub->retry.begin()->first.first <= now_us) continue;
        return false;
      }
      p = std::move(sub->window.front());
      sub->window.pop_front();
      from_window = true;
    }
    if (!p.from_dead && sub->acks.IsAcked(p.seq)) {
      if (!from_window) ReleaseKey(sub, p.key, p.seq);
      continue;
    }
    if (sub->key_ordered() && !p.key.empty()) {
      if (sub->parked.count(p.key)) {
        HoldOrPark(sub, std::move(p));
        continue;
      }
      auto owner = sub->key_owner.find(p.key);
      if (owner != sub->key_owner.end() && owner->second != p.seq) {
        HoldOrPark(sub, std::move(p));
        continue;
      }
      sub->key_owner[p.key] = p.seq;
    }
    *out = std::move(p);
    return true;
  }
}

Consumer* LmdbBackend::NextConsumer(Sub* sub) {
  size_t n = sub->consumers.size();
  for (size_t i = 0; i < n; ++i) {
    size_t idx = (sub->rr + i) % n;
    auto it = consumers_.find(sub->consumers[idx]);
    if (it != consumers_.end() && it->second.credit > 0) {
      sub->rr = idx + 1;
      return &it->second;
    }
  }
  return nullptr;
}

bool LmdbBackend::DeliverTo(Consumer* c, Pending p, int64_t now_us) {
  Sub* sub = c->sub;
  std::string_view envelope;
  uint64_t reply_token = 0;
  MDB_val v;
  if (p.direct) {
    envelope = p.direct->request.envelope;  // the DirectRequest moves with p, its bytes stay put
    reply_token = p.direct->request.reply_token;
  } else if (!read_->Begin().ok()) {
    sub->front.push_front(std::move(p));
    return false;
  } else if (p.from_dead) {
    SeqKey key(sub->id, p.seq);
    MDB_val k = MdbVal(key.bytes, sizeof key.bytes);
    DeadHeader h;
    if (mdb_get(read_->txn(), env_->dbi().dead, &k, &v) == 0 &&
        h.Decode(static_cast<const char*>(v.mv_data), v.mv_size)) {
      envelope = h.Envelope(static_cast<const char*>(v.mv_data));
    }
  } else {
    SeqKey key(sub->topic->rec.id, p.seq);
    MDB_val k = MdbVal(key.bytes, sizeof key.bytes);
    MessageHeader h;
    if (mdb_get(read_->txn(), env_->dbi().messages, &k, &v) == 0 &&
        h.Decode(static_cast<const char*>(v.mv_data), v.mv_size)) {
      if (p.seq < sub->recheck_below && !sub->types.empty() && !Wanted(sub, v)) {
        ReleaseKey(sub, p.key, p.seq);
        AckUnheld(sub, p.seq);
        return false;
      }
      envelope = h.Envelope(static_cast<const char*>(v.mv_data));
      reply_token = h.reply_token;
    }
  }
  if (envelope.empty()) {
    // Gone (dropped by drop_oldest, or purged): nothing to deliver.
    ReleaseKey(sub, p.key, p.seq);
    return false;
  }
  uint64_t did = next_delivery_id_++;
  InFlight& f = leases_[did];
  f.delivery_id = did;
  f.consumer_id = c->id;
  f.deadline_us = now_us + sub->rec.ack_wait_ms * 1000;
  f.sub = sub;
  f.prev = sub->lease_tail;
  if (sub->lease_tail) sub->lease_tail->next = &f; else sub->lease_head = &f;
  sub->lease_tail = &f;
  --c->credit;
  ++c->in_flight;
  ++sub->in_flight;
  ++sub->delivered;
  if (p.count > 1) {
    ++sub->redelivered;
    if (!p.from_dead && !p.direct) {
      // Persisted only on redelivery: a first delivery costs no write.
      WriteOp& op = outbox_.emplace_back();
      op.kind = OpKind::kSetCount;
      op.sub_id = sub->id;
      op.seq = p.seq;
      op.count = p.count;
      sub->counts[p.seq] = p.count;
    }
  }
  Delivery d;
  d.consumer_id = c->id;
  d.delivery_id = did;
  d.delivery_count = p.count;
  d.seq = p.seq;
  d.envelope = envelope;
  d.reply_token = reply_token;
  f.msg = std::move(p);
  c->sink->Deliver(d);
  return true;
}

void LmdbBackend::Pump(Sub* sub) {
  if (sub->consumers.empty()) return;
  sub->filter_budget = kMaxFilteredPerPump;
  int64_t now = clock_.NowUs();
  for (;;) {
    Consumer* c = NextConsumer(sub);
    if (c == nullptr) break;
    Pending p;
    if (!TakeNext(sub, now, &p)) break;
    DeliverTo(c, std::move(p), now);
  }
}

uint64_t LmdbBackend::PendingCount(const Sub* sub) const {
  uint64_t last = sub->topic->rec.last_seq;
  uint64_t floor = std::min(last, sub->acks.floor());
  uint64_t n = last - floor;
  return n - std::min(n, sub->acks.acked_above());
}

void LmdbBackend::ApplySkipPolicy(Sub* sub) {
  if (sub->rec.max_backlog == 0 || sub->rec.on_full != static_cast<uint8_t>(BacklogFullPolicy::kSkip)) return;
  while (PendingCount(sub) > sub->rec.max_backlog) {
    sub->acks.Ack(sub->acks.floor() + 1);
    ++sub->skipped;
    sub->ack_dirty = true;
  }
}

void LmdbBackend::FlushAcks(Sub* sub) {
  if (!sub->ack_dirty) return;
  sub->ack_dirty = false;
  WriteOp& op = outbox_.emplace_back();
  op.kind = OpKind::kAck;
  op.now_us = clock_.NowUs();
  op.sub_id = sub->id;
  op.floor = sub->acks.floor();
  for (uint64_t seq : sub->new_acks) {
    if (seq > op.floor) op.seqs.push_back(seq);
  }
  sub->new_acks.clear();
  op.acked_above = sub->acks.acked_above();
  op.skipped = sub->skipped;
  op.forget_counts.swap(sub->forget_counts);
  if (!sub->dead_acked.empty()) {
    WriteOp& d = outbox_.emplace_back();
    d.kind = OpKind::kDeleteDead;
    d.sub_id = sub->id;
    d.seqs.swap(sub->dead_acked);
  }
}

void LmdbBackend::RescanKey(Sub* sub, const std::string& key, uint64_t from_seq) {
  Topic* t = sub->topic;
  if (from_seq != UINT64_MAX && read_->Begin().ok()) {
    MDB_cursor* cur = nullptr;
    if (mdb_cursor_open(read_->txn(), env_->dbi().messages, &cur) == 0) {
      SeqKey from(t->rec.id, from_seq);
      MDB_val k = MdbVal(from.bytes, sizeof from.bytes), v;
      for (int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
           rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 12 || SeqKey::Id(static_cast<const char*>(k.mv_data)) != t->rec.id) break;
        uint64_t seq = SeqKey::Seq(static_cast<const char*>(k.mv_data));
        if (seq >= sub->scan_seq) break;
        MessageHeader h;
        if (sub->acks.IsAcked(seq) || !h.Decode(static_cast<const char*>(v.mv_data), v.mv_size) ||
            h.Key(static_cast<const char*>(v.mv_data)) != key) {
          continue;
        }
        Pending p;
        p.seq = seq;
        auto c = sub->counts.find(seq);
        p.count = c == sub->counts.end() ? 1 : c->second + 1;
        p.key = key;
        HoldOrPark(sub, std::move(p));
      }
      mdb_cursor_close(cur);
    }
  }
  if (sub->key_owner.count(key) == 0) PromoteHeld(sub, key);
}

// ---- Admin -----------------------------------------------------------------------------------------

Result<std::vector<TopicInfo>> LmdbBackend::ListTopics() {
  int64_t now = clock_.NowUs();
  std::vector<TopicInfo> out;
  for (auto& [id, t] : topics_) {
    TopicInfo info;
    info.name = t->name;
    info.messages = t->rec.messages;
    info.bytes = t->rec.bytes;
    info.first_seq = t->rec.first_seq;
    info.last_seq = t->rec.last_seq;
    info.published = t->published;
    info.publish_rate = t->rate.Value(t->published, now);
    for (Sub* s : t->subs) info.subscriptions.push_back(s->name);
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(), [](const TopicInfo& a, const TopicInfo& b) { return a.name < b.name; });
  return out;
}

Result<std::vector<SubscriptionInfo>> LmdbBackend::ListSubscriptions() {
  ReadScope scope(this);
  int64_t now = clock_.NowUs();
  std::vector<SubscriptionInfo> out;
  for (auto& [key, s] : subs_by_name_) {
    SubscriptionInfo info;
    info.topic = s->topic->name;
    info.name = s->name;
    info.pending = PendingCount(s);
    info.in_flight = s->in_flight;
    info.dead_lettered = s->dead_lettered;
    info.skipped = s->skipped;
    info.parked_keys = s->parked.size();
    info.consumers = static_cast<uint32_t>(s->consumers.size());
    info.delivered = s->delivered;
    info.acked = s->acked;
    info.redelivered = s->redelivered;
    info.filtered = s->filtered;
    info.types = s->types;
    info.ack_rate = s->ack_rate.Value(s->acked + s->filtered, now);
    if (info.pending > 0 && read_->Begin().ok()) {
      SeqKey k0(s->topic->rec.id, s->acks.floor() + 1);
      MDB_val k = MdbVal(k0.bytes, sizeof k0.bytes), v;
      MessageHeader h;
      if (mdb_get(read_->txn(), env_->dbi().messages, &k, &v) == 0 &&
          h.Decode(static_cast<const char*>(v.mv_data), v.mv_size)) {
        info.oldest_unacked_age_us = std::max<int64_t>(0, now - h.publish_time_us);
      }
    }
    if (info.ack_rate > 0) {
      info.drain_eta_us = static_cast<int64_t>(static_cast<double>(info.pending) / info.ack_rate * 1e6);
    } else if (info.pending == 0) {
      info.drain_eta_us = 0;
    }
    out.push_back(std::move(info));
  }
  return out;
}

Status LmdbBackend::DeadEntries(Sub* sub, std::span<const uint64_t> seqs,
                                std::vector<std::pair<uint64_t, std::string>>* out) {
  SLUICE_RETURN_IF_ERROR(read_->Begin());
  MDB_cursor* cur = nullptr;
  int rc = mdb_cursor_open(read_->txn(), env_->dbi().dead, &cur);
  if (rc != 0) return store::LmdbStatus(rc, "reading dead letters");
  SeqKey from(sub->id, 0);
  MDB_val k = MdbVal(from.bytes, sizeof from.bytes), v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 12 || SeqKey::Id(static_cast<const char*>(k.mv_data)) != sub->id) break;
    uint64_t seq = SeqKey::Seq(static_cast<const char*>(k.mv_data));
    DeadHeader h;
    if (!h.Decode(static_cast<const char*>(v.mv_data), v.mv_size) || h.state != DeadHeader::kDead) continue;
    if (!seqs.empty() && std::find(seqs.begin(), seqs.end(), seq) == seqs.end()) continue;
    out->emplace_back(seq, std::string(h.Key(static_cast<const char*>(v.mv_data))));
  }
  mdb_cursor_close(cur);
  return Status::Ok();
}

Result<std::vector<DeadLetter>> LmdbBackend::ListDeadLetters(std::string_view topic, std::string_view sub,
                                                              size_t limit) {
  ReadScope scope(this);
  Sub* s = FindSub(topic, sub);
  if (s == nullptr) return NotFound(fmt::format("no subscription '{}' on topic '{}'", sub, topic));
  SLUICE_RETURN_IF_ERROR(read_->Begin());
  std::vector<DeadLetter> out;
  MDB_cursor* cur = nullptr;
  int rc = mdb_cursor_open(read_->txn(), env_->dbi().dead, &cur);
  if (rc != 0) return store::LmdbStatus(rc, "reading dead letters");
  SeqKey from(s->id, 0);
  MDB_val k = MdbVal(from.bytes, sizeof from.bytes), v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && (limit == 0 || out.size() < limit);
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 12 || SeqKey::Id(static_cast<const char*>(k.mv_data)) != s->id) break;
    const char* p = static_cast<const char*>(v.mv_data);
    DeadHeader h;
    if (!h.Decode(p, v.mv_size) || h.state != DeadHeader::kDead) continue;
    DeadLetter d;
    d.seq = SeqKey::Seq(static_cast<const char*>(k.mv_data));
    d.delivery_count = h.delivery_count;
    d.reason.assign(h.Reason(p));
    d.last_error.assign(h.Error(p));
    d.dead_lettered_at_us = h.dead_lettered_at_us;
    d.envelope.assign(h.Envelope(p));
    out.push_back(std::move(d));
  }
  mdb_cursor_close(cur);
  return out;
}

namespace {

// The correlation id of a stored envelope; the bytes come unaligned from LMDB, so they are copied.
std::string CorrelationOf(std::string_view envelope, std::string* scratch) {
  const wire::Envelope* env = ReadStored(envelope, scratch);
  if (env == nullptr || env->correlation_id() == nullptr) return {};
  return env->correlation_id()->str();
}

int64_t PublishTimeOf(const std::string& envelope) {
  auto env = ReadEnvelope(envelope);
  return env.ok() ? (*env)->publish_time_us() : 0;
}

}  // namespace

Result<std::vector<StoredMessage>> LmdbBackend::Peek(std::string_view topic, uint64_t from_seq, size_t limit) {
  ReadScope scope(this);
  const Topic* t = nullptr;
  for (const auto& [id, tp] : topics_) {
    if (tp->name == topic) t = tp.get();
  }
  if (t == nullptr) return NotFound(fmt::format("no topic '{}'", topic));
  SLUICE_RETURN_IF_ERROR(read_->Begin());
  std::vector<StoredMessage> out;
  MDB_cursor* cur = nullptr;
  int rc = mdb_cursor_open(read_->txn(), env_->dbi().messages, &cur);
  if (rc != 0) return store::LmdbStatus(rc, "peeking at a topic");
  SeqKey from(t->rec.id, from_seq);
  MDB_val k = MdbVal(from.bytes, sizeof from.bytes), v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && (limit == 0 || out.size() < limit);
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 12 || SeqKey::Id(static_cast<const char*>(k.mv_data)) != t->rec.id) break;
    MessageHeader h;
    const char* p = static_cast<const char*>(v.mv_data);
    if (!h.Decode(p, v.mv_size)) continue;
    out.push_back({t->name, SeqKey::Seq(static_cast<const char*>(k.mv_data)), std::string(h.Envelope(p)), false});
  }
  mdb_cursor_close(cur);
  return out;
}

Result<std::vector<StoredMessage>> LmdbBackend::Trace(std::string_view correlation_id, size_t limit) {
  ReadScope scope(this);
  SLUICE_RETURN_IF_ERROR(read_->Begin());
  std::vector<StoredMessage> out;
  std::string scratch;
  MDB_cursor* cur = nullptr;
  int rc = mdb_cursor_open(read_->txn(), env_->dbi().messages, &cur);
  if (rc != 0) return store::LmdbStatus(rc, "tracing");
  MDB_val k, v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 12) continue;
    MessageHeader h;
    const char* p = static_cast<const char*>(v.mv_data);
    if (!h.Decode(p, v.mv_size) || CorrelationOf(h.Envelope(p), &scratch) != correlation_id) continue;
    auto t = topics_.find(SeqKey::Id(static_cast<const char*>(k.mv_data)));
    out.push_back({t != topics_.end() ? t->second->name : std::string("?"),
                   SeqKey::Seq(static_cast<const char*>(k.mv_data)), scratch, false});
  }
  mdb_cursor_close(cur);
  rc = mdb_cursor_open(read_->txn(), env_->dbi().dead, &cur);
  if (rc != 0) return store::LmdbStatus(rc, "tracing dead letters");
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 12) continue;
    DeadHeader h;
    const char* p = static_cast<const char*>(v.mv_data);
    if (!h.Decode(p, v.mv_size) || h.state != DeadHeader::kDead ||
        CorrelationOf(h.Envelope(p), &scratch) != correlation_id) {
      continue;
    }
    auto sub = subs_.find(SeqKey::Id(static_cast<const char*>(k.mv_data)));
    out.push_back({sub != subs_.end() ? sub->second->topic->name : std::string("?"),
                   SeqKey::Seq(static_cast<const char*>(k.mv_data)), scratch, true,
                   sub != subs_.end() ? sub->second->name : std::string("?")});
  }
  mdb_cursor_close(cur);
  std::stable_sort(out.begin(), out.end(), [](const StoredMessage& a, const StoredMessage& b) {
    return PublishTimeOf(a.envelope) < PublishTimeOf(b.envelope);
  });
  if (limit > 0 && out.size() > limit) out.resize(limit);
  return out;
}

Result<uint64_t> LmdbBackend::Redrive(std::string_view topic, std::string_view sub,
                                      std::span<const uint64_t> seqs) {
  ReadScope scope(this);
  Sub* s = FindSub(topic, sub);
  if (s == nullptr) return NotFound(fmt::format("no subscription '{}' on topic '{}'", sub, topic));
  std::vector<std::pair<uint64_t, std::string>> entries;
  SLUICE_RETURN_IF_ERROR(DeadEntries(s, seqs, &entries));
  if (entries.empty()) return uint64_t{0};
  WriteOp& op = outbox_.emplace_back();
  op.kind = OpKind::kRedrive;
  op.sub_id = s->id;
  for (auto& [seq, key] : entries) {
    op.seqs.push_back(seq);
    Pending p;
    p.seq = seq;
    p.count = 1;
    p.from_dead = true;
    if (s->key_ordered()) p.key = key;
    auto pk = s->key_ordered() && !key.empty() ? s->parked.find(key) : s->parked.end();
    if (pk != s->parked.end() && pk->second.parked_at_seq == seq) {
      // The redriven message goes first, then the ones that waited behind it, in order.
      uint64_t first_waiting = pk->second.first_waiting;
      s->parked.erase(pk);
      op.keys.push_back(key);
      s->key_owner[key] = seq;
      s->front.push_back(std::move(p));
      RescanKey(s, key, first_waiting);
    } else {
      s->front.push_back(std::move(p));
    }
  }
  s->dead_lettered -= std::min<uint64_t>(s->dead_lettered, entries.size());
  if (!s->dirty) {
    s->dirty = true;
    dirty_.insert(s);
  }
  ScheduleWork();
  return static_cast<uint64_t>(entries.size());
}

Result<uint64_t> LmdbBackend::Purge(std::string_view topic, std::string_view sub) {
  ReadScope scope(this);
  Sub* s = FindSub(topic, sub);
  if (s == nullptr) return NotFound(fmt::format("no subscription '{}' on topic '{}'", sub, topic));
  std::vector<std::pair<uint64_t, std::string>> entries;
  SLUICE_RETURN_IF_ERROR(DeadEntries(s, {}, &entries));
  if (entries.empty()) return uint64_t{0};
  WriteOp& op = outbox_.emplace_back();
  op.kind = OpKind::kDeleteDead;
  op.sub_id = s->id;
  for (auto& [seq, key] : entries) {
    op.seqs.push_back(seq);
    auto pk = s->key_ordered() && !key.empty() ? s->parked.find(key) : s->parked.end();
    if (pk != s->parked.end() && pk->second.parked_at_seq == seq) {
      // The message that parked the key is gone for good: what waited behind it flows again.
      uint64_t first_waiting = pk->second.first_waiting;
      s->parked.erase(pk);
      op.keys.push_back(key);
      RescanKey(s, key, first_waiting);
    }
  }
  s->dead_lettered -= std::min<uint64_t>(s->dead_lettered, entries.size());
  if (!s->dirty) {
    s->dirty = true;
    dirty_.insert(s);
  }
  ScheduleWork();
  return static_cast<uint64_t>(entries.size());
}

Result<std::vector<ParkedKey>> LmdbBackend::ListParkedKeys(std::string_view topic, std::string_view sub) {
  ReadScope scope(this);
  Sub* s = FindSub(topic, sub);
  if (s == nullptr) return NotFound(fmt::format("no subscription '{}' on topic '{}'", sub, topic));
  std::vector<ParkedKey> out;
  if (s->parked.empty()) return out;
  std::unordered_map<std::string, size_t> index;
  uint64_t from = UINT64_MAX;
  for (auto& [key, info] : s->parked) {
    index[key] = out.size();
    out.push_back(ParkedKey{key, info.parked_at_seq, 0});
    from = std::min(from, info.parked_at_seq + 1);
  }
  // The backlog is counted from the log, not kept in memory: parked keys may hold back many messages.
  SLUICE_RETURN_IF_ERROR(read_->Begin());
  MDB_cursor* cur = nullptr;
  int rc = mdb_cursor_open(read_->txn(), env_->dbi().messages, &cur);
  if (rc != 0) return store::LmdbStatus(rc, "counting parked messages");
  SeqKey k0(s->topic->rec.id, from);
  MDB_val k = MdbVal(k0.bytes, sizeof k0.bytes), v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 12 || SeqKey::Id(static_cast<const char*>(k.mv_data)) != s->topic->rec.id) break;
    uint64_t seq = SeqKey::Seq(static_cast<const char*>(k.mv_data));
    if (seq > s->topic->rec.last_seq) break;
    MessageHeader h;
    if (s->acks.IsAcked(seq) || !h.Decode(static_cast<const char*>(v.mv_data), v.mv_size)) continue;
    auto it = index.find(std::string(h.Key(static_cast<const char*>(v.mv_data))));
    if (it != index.end() && seq > out[it->second].parked_at_seq) ++out[it->second].backlog;
  }
  mdb_cursor_close(cur);
  std::sort(out.begin(), out.end(), [](const ParkedKey& a, const ParkedKey& b) { return a.key < b.key; });
  return out;
}

void LmdbBackend::Close(std::function<void()> done) {
  if (closing_) {
    if (done) Complete(std::move(done));
    return;
  }
  closing_ = true;
  close_done_ = std::move(done);
  ScheduleWork();  // ProcessWork() stops the writer once no direct request's bundle is committing
}

void LmdbBackend::StopWriter() {
  for (const auto& [id, f] : leases_) {
    if (f.msg.direct && f.committing) return;  // its outcome decides whether it must be stored
  }
  stop_requested_ = true;
  // Direct requests still out are stored, to be delivered after the restart (their requesters are gone
  // by then; a requester retries).
  std::vector<uint64_t> direct;
  for (const auto& [id, f] : leases_) {
    if (f.msg.direct) direct.push_back(id);
  }
  for (uint64_t id : direct) {
    InFlight f = TakeLease(leases_.find(id));
    StoreDirect(f.sub, Adoption{std::move(f.msg), 0, {}, {}});
  }
  for (auto& [id, s] : subs_) FlushAcks(s.get());
  writer_->Enqueue(&outbox_);
  writer_->RequestStop();
}

}  // namespace
}  // namespace store

Result<std::unique_ptr<Backend>> OpenLmdbBackend(uv_loop_t* loop, const StoreOptions& options,
                                                 const Clock& clock) {
  auto backend = std::make_unique<store::LmdbBackend>(loop, options, clock);
  Status s = backend->Open();
  if (!s.ok()) return s;
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace sluice::broker

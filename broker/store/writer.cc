// SPDX-License-Identifier: MIT
#include "broker/store/writer.h"

#include "broker/store/keyspace_reader.h"

#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "broker/envelope.h"

namespace sluice::broker::store {
namespace {

// Expired dedupe entries deleted per commit: bounds the extra work one batch can take on.
constexpr int kDedupeExpiryPerBatch = 4096;


// LMDB failures inside an apply step abort the whole transaction; this carries them out.
struct TxnError {
  Status status;
};

void Check(int rc, std::string_view what) {
  if (rc != 0) throw TxnError{LmdbStatus(rc, what)};
}

// A bundle refused after it wrote into the transaction (Writer::ApplyBundle): apply the batch again.
struct BundleRefused {};

}  // namespace

Writer::Writer(Env* env, const BrokerConfig& config, std::map<std::string, TopicConfig> topic_configs,
               std::function<void()> notify, StoreMetrics* metrics)
    : env_(env),
      config_(config),
      topic_configs_(std::move(topic_configs)),
      notify_(std::move(notify)),
      metrics_(metrics) {}

Writer::~Writer() { Stop(); }

const TopicConfig& Writer::ConfigFor(const std::string& name) const {
  auto it = topic_configs_.find(name);
  return it == topic_configs_.end() ? default_topic_ : it->second;
}

Status Writer::Load() {
  topic_ids_.clear();
  topics_.clear();
  subs_.clear();
  sub_ids_.clear();
  MDB_txn* txn = nullptr;
  int rc = mdb_txn_begin(env_->env(), nullptr, MDB_RDONLY, &txn);
  if (rc != 0) return LmdbStatus(rc, "loading the store");
  const Dbis& d = env_->dbi();
  Status result = Status::Ok();
  MDB_cursor* cur = nullptr;
  MDB_val k, v;
  auto meta_u32 = [&](std::string_view name, uint32_t def) {
    MDB_val mk = MdbVal(name), mv;
    if (mdb_get(txn, d.meta, &mk, &mv) == 0 && mv.mv_size == 4) {
      return GetLe<uint32_t>(static_cast<const char*>(mv.mv_data));
    }
    return def;
  };
  next_topic_id_ = meta_u32(kMetaNextTopicId, 1);
  next_sub_id_ = meta_u32(kMetaNextSubId, 1);

  mdb_cursor_open(txn, d.topics, &cur);
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    WriterTopic t;
    t.name.assign(static_cast<const char*>(k.mv_data), k.mv_size);
    if (!t.rec.Decode(static_cast<const char*>(v.mv_data), v.mv_size)) {
      result = {StatusCode::kCorruption, fmt::format("topic record '{}' is malformed", t.name)};
      break;
    }
    t.config = ConfigFor(t.name);
    t.config.name = t.name;
    topic_ids_[t.name] = t.rec.id;
    next_topic_id_ = std::max(next_topic_id_, t.rec.id + 1);
    topics_[t.rec.id] = std::move(t);
  }
  mdb_cursor_close(cur);
  if (result.ok()) {
    mdb_cursor_open(txn, d.subs, &cur);
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      WriterSub s;
      const char* kp = static_cast<const char*>(k.mv_data);
      if (k.mv_size < 4 || !s.rec.Decode(static_cast<const char*>(v.mv_data), v.mv_size)) {
        result = {StatusCode::kCorruption, "a subscription record is malformed"};
        break;
      }
      s.topic_id = GetBe32(kp);
      s.name.assign(kp + 4, k.mv_size - 4);
      auto t = topics_.find(s.topic_id);
      if (t == topics_.end()) {
        result = {StatusCode::kCorruption,
                  fmt::format("subscription '{}' names topic id {} which does not exist", s.name,
                              s.topic_id)};
        break;
      }
      t->second.subs.push_back(s.rec.id);
      sub_ids_[std::string(kp, k.mv_size)] = s.rec.id;
      next_sub_id_ = std::max(next_sub_id_, s.rec.id + 1);
      subs_[s.rec.id] = std::move(s);
    }
    mdb_cursor_close(cur);
  }
  if (result.ok()) {
    // The acked-above counts feed the "block" backlog check.
    mdb_cursor_open(txn, d.acks, &cur);
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      if (k.mv_size != 12) continue;
      auto s = subs_.find(SeqKey::Id(static_cast<const char*>(k.mv_data)));
      if (s != subs_.end()) ++s->second.acked_above;
    }
    mdb_cursor_close(cur);
  }
  mdb_txn_abort(txn);
  return result;
}

void Writer::Start() {
  started_ = true;
  Preallocate(true);  // also shows the file's size before the first commit
  if (config_.durability == Durability::kSync) {
    // The last commit of a previous run may have left its meta page in the OS cache only (a crash of
    // the process): flush it before anything is answered from it.
    MDB_envinfo info;
    if (mdb_env_info(env_->env(), &info) == 0) last_txn_id_ = info.me_last_txnid;
    Status s = TimedSync();
    if (s.ok()) durable_txn_ = last_txn_id_; else sync_failed_ = s;
  }
  // Named, so top -H, perf and /proc/PID/task tell the writer's CPU from the event loop's.
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "sluiced-writer");
    Run();
  });
  if (config_.durability == Durability::kSync) {
    syncer_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "sluiced-syncer");
      RunSyncer();
    });
  }
}

void Writer::NoteQueued(const WriteOp& op) {
  if (op.kind != OpKind::kAck) {
    ++eager_queued_;
  } else if (queue_.empty()) {
    lazy_since_ = std::chrono::steady_clock::now();
  }
}

void Writer::Enqueue(std::vector<WriteOp>* ops) {
  if (ops->empty()) return;
  std::lock_guard lock(mu_);
  for (auto& op : *ops) {
    NoteQueued(op);
    queue_.push_back(std::move(op));
  }
  ops->clear();
  if (idle_) cv_.notify_one();
}

void Writer::Enqueue(WriteOp op) {
  std::lock_guard lock(mu_);
  NoteQueued(op);
  queue_.push_back(std::move(op));
  if (idle_) cv_.notify_one();
}

void Writer::TakeCompleted(std::vector<Batch>* out) {
  std::lock_guard lock(mu_);
  for (auto& b : completed_) out->push_back(std::move(b));
  completed_.clear();
}

void Writer::RequestStop() {
  std::lock_guard lock(mu_);
  stop_ = true;
  cv_.notify_one();
}

void Writer::Stop() {
  RequestStop();
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard lock(mu_);
    syncer_stop_ = true;
    syncer_cv_.notify_one();
  }
  if (syncer_.joinable()) syncer_.join();
}

Status Writer::TimedSync() {
  auto started = std::chrono::steady_clock::now();
  Status s = env_->Sync();
  if (metrics_ != nullptr) {
    metrics_->sync_seconds.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  }
  return s;
}

void Writer::HoldUntilDurable(Batch batch, size_t txn_id) {
  last_txn_id_ = std::max(last_txn_id_, txn_id);
  if (txn_id == 0 && held_.empty() && durable_txn_ >= last_txn_id_ && sync_failed_.ok()) {
    completed_.push_back(std::move(batch));  // nothing written and nothing unflushed before it
    return;
  }
  // A batch that wrote nothing (a duplicate publish, say) answers from what is stored: it completes
  // once the newest transaction is on disk.
  held_.push_back({std::move(batch), txn_id != 0 ? txn_id : last_txn_id_});
}

void Writer::ReleaseDurable(size_t txn_id, const Status& flushed) {
  // Linux reports a failed writeback once and marks the pages clean: after one failure no later flush
  // proves that earlier pages reached the disk.
  if (!flushed.ok() && sync_failed_.ok()) sync_failed_ = flushed;
  const Status& status = sync_failed_.ok() ? flushed : sync_failed_;
  if (status.ok()) durable_txn_ = std::max(durable_txn_, txn_id);
  bool any = false;
  while (!held_.empty() && held_.front().txn_id <= txn_id) {
    Batch& b = held_.front().batch;
    if (!status.ok()) {
      // Committed but not known to be on disk: a publisher may retry (with its id, deduped).
      for (auto& op : b.ops) {
        if (op.status.ok()) op.status = status;
      }
    }
    completed_.push_back(std::move(b));
    held_.pop_front();
    any = true;
  }
  if (any) notify_();
}

void Writer::RunSyncer() {
  std::unique_lock lock(mu_);
  for (;;) {
    // Flush when something waits for its meta page and the writer has nothing to carry it with.
    syncer_cv_.wait(lock, [&] { return syncer_stop_ || (!held_.empty() && eager_queued_ == 0 && !committing_); });
    if (syncer_stop_) return;
    const size_t target = last_txn_id_;  // its meta page was written before this flush starts
    lock.unlock();
    Status s = TimedSync();
    lock.lock();
    ReleaseDurable(target, s);
    if (RefillDue()) cv_.notify_one();  // the writer waits for that to refill the file's tail
  }
}

bool Writer::RefillDue() const {
  // Not while an op waits (lazy acks included), and not while a batch waits for the syncer: its flush
  // would carry the zeros (fdatasync writes every dirty page of the file).
  return refill_wanted_ && queue_.empty() && held_.empty() && !stop_;
}

void Writer::RefillWhileIdle(std::unique_lock<std::mutex>& lock) {
  while (RefillDue()) {
    lock.unlock();
    const bool wrote = Preallocate(true);
    lock.lock();
    if (!wrote) refill_wanted_ = false;
  }
}

bool Writer::Preallocate(bool idle) {
  Result<bool> wrote = env_->Preallocate(idle);
  if (metrics_ != nullptr) {
    if (!wrote.ok()) metrics_->preallocate_failures.fetch_add(1, std::memory_order_relaxed);
    metrics_->file_bytes.store(env_->file_size(), std::memory_order_relaxed);
  }
  return wrote.ok() && *wrote;
}

void Writer::Recycle(std::vector<WriteOp>* ops) {
  // A spike's batch is not kept: 4096 ops are about 4 MB.
  constexpr size_t kMaxSpareOps = 4096;
  if (ops->capacity() > kMaxSpareOps) return;
  ops->clear();
  std::lock_guard lock(mu_);
  if (ops->capacity() > spare_.capacity()) spare_.swap(*ops);
}

void Writer::Run() {
  using Clock = std::chrono::steady_clock;
  const bool pipelined = config_.durability == Durability::kSync;
  Clock::time_point last_sync = Clock::now();
  bool unsynced = false;
  std::unique_lock lock(mu_);
  for (;;) {
    const bool lazy_only = eager_queued_ == 0;
    const bool lazy_due = !queue_.empty() && (stop_ || Clock::now() - lazy_since_ >= kLazyAckDelay);
    if (lazy_only && !lazy_due) {
      if (unsynced && config_.durability == Durability::kBatch) {
        // Nothing new: the pending sync is due at last_sync + batch_interval at the latest, and
        // queued acks at lazy_since_ + kLazyAckDelay.
        Clock::time_point wake = last_sync + config_.batch_interval;
        if (!queue_.empty()) wake = std::min(wake, lazy_since_ + kLazyAckDelay);
        const size_t queued = queue_.size();  // a first ack sets a nearer deadline: wake up to take it
        idle_ = true;
        cv_.wait_until(lock, wake, [&] { return eager_queued_ > 0 || stop_ || queue_.size() != queued; });
        idle_ = false;
        if (eager_queued_ == 0 && (stop_ || Clock::now() - last_sync >= config_.batch_interval)) {
          lock.unlock();
          (void)TimedSync();
          lock.lock();
          last_sync = Clock::now();
          unsynced = false;
        }
        continue;
      }
      if (stop_ && queue_.empty()) break;
      idle_ = true;
      if (queue_.empty()) {
        cv_.wait(lock, [&] { return !queue_.empty() || stop_ || RefillDue(); });
      } else {
        cv_.wait_until(lock, lazy_since_ + kLazyAckDelay, [&] { return eager_queued_ > 0 || stop_; });
      }
      idle_ = false;
      RefillWhileIdle(lock);
      continue;
    }
    Batch batch;
    batch.ops.swap(queue_);
    queue_.swap(spare_);
    eager_queued_ = 0;
    committing_ = true;
    lock.unlock();
    const size_t txn_id = Commit(&batch);
    if (config_.durability == Durability::kBatch) {
      if (Clock::now() - last_sync >= config_.batch_interval) {
        (void)TimedSync();
        last_sync = Clock::now();
        unsynced = false;
      } else {
        unsynced = true;
      }
    }
    lock.lock();
    committing_ = false;
    if (pipelined && !commit_flush_error_.ok()) {
      // That flush also covered the meta pages of the commits still held, and Linux reports a failed
      // writeback once: the syncer's next flush would succeed without proving them on disk.
      ReleaseDurable(last_txn_id_, commit_flush_error_);
      commit_flush_error_ = Status::Ok();
    }
    if (!pipelined) {
      completed_.push_back(std::move(batch));
      notify_();
    } else {
      // The new messages are readable now: their topics go over for delivery first.
      Batch readable;
      readable.topics = std::move(batch.topics);
      batch.topics.clear();
      completed_.push_back(std::move(readable));
      // This commit's flush carried the meta pages of every transaction before it.
      if (txn_id != 0) ReleaseDurable(txn_id - 1, Status::Ok());
      HoldUntilDurable(std::move(batch), txn_id);
      notify_();
      if (eager_queued_ == 0) syncer_cv_.notify_one();
    }
    // After the hand-off, so that no delivery or ack waits for it: a tail nearly used up at once, the
    // rest of a refill once nothing waits (RefillWhileIdle, here or when the syncer has released).
    lock.unlock();
    Preallocate(false);
    lock.lock();
    refill_wanted_ = env_->preallocating();
    RefillWhileIdle(lock);
  }
  if (pipelined && !held_.empty()) {
    const size_t target = last_txn_id_;
    lock.unlock();
    Status s = TimedSync();
    lock.lock();
    ReleaseDurable(target, s);
  }
  lock.unlock();
  if (config_.durability != Durability::kSync) (void)env_->Sync();
  exited_ = true;
  notify_();
}

Status Writer::ApplyNow(std::vector<WriteOp>* ops, std::vector<TopicSnapshot>* topics) {
  Batch batch;
  batch.ops.swap(*ops);
  if (Commit(&batch) != 0 && config_.durability == Durability::kSync) {
    Status s = TimedSync();  // the meta page (MDB_NOMETASYNC)
    if (!s.ok()) return s;
  }
  batch.ops.swap(*ops);
  *topics = std::move(batch.topics);
  for (auto& op : *ops) {
    if (!op.status.ok()) return op.status;
  }
  return Status::Ok();
}

size_t Writer::Commit(Batch* batch) {
  bool refuse_publishes = false;
  // Each attempt after the first grew the map, started refusing publishes, or settled one more bundle
  // as refused: bounded.
  for (;;) {
    for (auto& op : batch->ops) {
      if (op.settled) continue;
      op.status = Status::Ok();
      op.bundle_result = {};
    }
    batch->topics.clear();
    MDB_txn* txn = nullptr;
    int rc = mdb_txn_begin(env_->env(), nullptr, 0, &txn);
    const size_t txn_id = rc == 0 ? mdb_txn_id(txn) : 0;
    Status s;
    bool refused_bundle = false;
    try {
      s = rc == 0 ? ApplyOps(txn, batch, refuse_publishes) : LmdbStatus(rc, "beginning a write");
    } catch (const BundleRefused&) {
      refused_bundle = true;
    }
    if (refused_bundle) {
      mdb_txn_abort(txn);
      s = Load();
      if (s.ok()) continue;
    } else if (s.ok()) {
      auto started = std::chrono::steady_clock::now();
      rc = mdb_txn_commit(txn);
      if (rc == 0) {
        if (metrics_ != nullptr) {
          metrics_->commit_seconds.Observe(
              std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
          metrics_->commit_batch_ops.Observe(static_cast<double>(batch->ops.size()));
        }
        // A transaction that changed nothing commits without writing (or flushing) anything.
        MDB_envinfo info;
        return mdb_env_info(env_->env(), &info) == 0 && info.me_last_txnid == txn_id ? txn_id : 0;
      }
      s = LmdbStatus(rc, "committing");
      // EIO from the commit's flush (the pages' own write would not fail so): see Run.
      if (rc == EIO) commit_flush_error_ = s;
    } else if (txn != nullptr) {
      mdb_txn_abort(txn);
    }
    // The transaction is gone: the in-memory counters must match the store again.
    Status reloaded = Load();
    if (s.code() == StatusCode::kStorageFull && reloaded.ok()) {
      if (env_->Grow()) continue;
      if (!refuse_publishes) {
        refuse_publishes = true;
        continue;
      }
    }
    for (auto& op : batch->ops) op.status = s;
    batch->topics.clear();
    return 0;
  }
}

bool Writer::NearFull() const {
  if (env_->map_size() < env_->max_map_size()) return false;  // it can still grow
  MDB_envinfo info;
  MDB_stat stat;
  if (mdb_env_info(env_->env(), &info) != 0 || mdb_env_stat(env_->env(), &stat) != 0) return false;
  const uint64_t pages = info.me_mapsize / stat.ms_psize;
  // 1/8 of the map, at least 32 pages (a commit of acks copies a few pages per database, and pages
  // freed by the last commit are not reusable yet), at most 64 MiB of 4 KiB pages.
  const uint64_t reserve = std::min(std::clamp<uint64_t>(pages / 8, 32, 16384), pages / 2);
  const uint64_t high_water = info.me_last_pgno + 1;
  if (high_water + reserve <= pages) return false;
  // Near the end of the file: count the pages LMDB can reuse (its freelist, database 0). LMDB allows
  // no cursor on the freelist in a write transaction, so read it in a short read-only one (MDB_NOTLS).
  uint64_t free_pages = 0;
  MDB_txn* rtxn = nullptr;
  MDB_cursor* cur = nullptr;
  if (mdb_txn_begin(env_->env(), nullptr, MDB_RDONLY, &rtxn) != 0) return false;
  if (mdb_cursor_open(rtxn, 0, &cur) == 0) {
    MDB_val k, v;
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      if (v.mv_size >= sizeof(size_t)) free_pages += GetLe<size_t>(static_cast<const char*>(v.mv_data));
    }
    mdb_cursor_close(cur);
  }
  mdb_txn_abort(rtxn);
  return high_water - std::min(high_water, free_pages) + reserve > pages;
}

Status Writer::ApplyOps(MDB_txn* txn, Batch* batch, bool refuse_publishes) {
  touched_topics_.clear();
  meta_dirty_ = false;
  // Publishes stop while a reserve of pages is left, so that acks (whose deletes need fresh pages
  // too: LMDB copies on write) can still commit and drain the store.
  if (!refuse_publishes &&
      std::any_of(batch->ops.begin(), batch->ops.end(), [](const WriteOp& op) { return op.kind == OpKind::kPublish; })) {
    refuse_publishes = NearFull();
  }
  try {
    for (auto& op : batch->ops) {
      batch_now_us_ = std::max(batch_now_us_, op.now_us);
      switch (op.kind) {
        case OpKind::kPublish:
          // A dead letter is never refused for space, whether it was stored before or comes with
          // its message (a direct request's).
          ApplyPublish(txn, &op, refuse_publishes && op.reason.empty());
          if (op.status.ok() && !op.reason.empty() && !op.publish_result.duplicate) {
            // A direct request dead-lettered before it was ever stored: stored and dead-lettered
            // (and acked, which is how a subscription knows a dead letter) in one transaction.
            op.seq = op.publish_result.seq;
            ApplyDeadLetter(txn, &op);
            SeqKey key(op.sub_id, op.seq);
            MDB_val k = MdbVal(key.bytes, sizeof key.bytes), empty{0, nullptr};
            Check(mdb_put(txn, env_->dbi().acks, &k, &empty, 0), "recording a dead letter's ack");
          }
          break;
        case OpKind::kCreateSub:
          ApplyCreateSub(txn, &op);
          break;
        case OpKind::kAck:
          ApplyAck(txn, &op);
          break;
        case OpKind::kSetCount: {
          SeqKey key(op.sub_id, op.seq);
          MDB_val k = MdbVal(key.bytes, sizeof key.bytes), v = MdbVal(&op.count, sizeof op.count);
          Check(mdb_put(txn, env_->dbi().counts, &k, &v, 0), "recording a delivery count");
          break;
        }
        case OpKind::kDeadLetter:
          ApplyDeadLetter(txn, &op);
          break;
        case OpKind::kRedrive:
          ApplyRedrive(txn, &op);
          break;
        case OpKind::kDeleteDead:
          ApplyDeleteDead(txn, &op);
          break;
        case OpKind::kCreateTopic: {
          auto t = FindOrCreateTopic(txn, op.publish.topic);
          if (!t.ok()) op.status = t.status();
          break;
        }
        case OpKind::kBundle:
          ApplyBundle(txn, &op, refuse_publishes);
          break;
        case OpKind::kTrim:
          for (auto& [id, t] : topics_) {
            if (t.config.retention_max_age.count() > 0) touched_topics_.push_back(id);
          }
          break;
      }
    }
    std::sort(touched_topics_.begin(), touched_topics_.end());
    touched_topics_.erase(std::unique(touched_topics_.begin(), touched_topics_.end()), touched_topics_.end());
    for (uint32_t id : touched_topics_) {
      auto it = topics_.find(id);
      if (it != topics_.end()) {
        Status s = Trim(txn, &it->second, batch_now_us_);
        if (!s.ok()) return s;
      }
    }
    SLUICE_RETURN_IF_ERROR(ExpireDedupe(txn, batch_now_us_));
    return FlushRecords(txn, batch);
  } catch (const TxnError& e) {
    return e.status;
  }
}

Status Writer::FlushRecords(MDB_txn* txn, Batch* batch) {
  const Dbis& d = env_->dbi();
  for (auto& [id, t] : topics_) {
    if (!t.dirty) continue;
    char buf[TopicRecord::kSize];
    t.rec.Encode(buf);
    MDB_val k = MdbVal(t.name), v = MdbVal(buf, sizeof buf);
    int rc = mdb_put(txn, d.topics, &k, &v, 0);
    if (rc != 0) return LmdbStatus(rc, "writing a topic record");
    t.dirty = false;
    batch->topics.push_back(TopicSnapshot{t.name, t.rec});
  }
  for (auto& [id, s] : subs_) {
    if (!s.dirty) continue;
    char buf[SubRecord::kSize];
    s.rec.Encode(buf);
    std::string key = NameKey(s.topic_id, s.name);
    MDB_val k = MdbVal(key), v = MdbVal(buf, sizeof buf);
    int rc = mdb_put(txn, d.subs, &k, &v, 0);
    if (rc != 0) return LmdbStatus(rc, "writing a subscription record");
    s.dirty = false;
  }
  if (meta_dirty_) {
    MDB_val k = MdbVal(kMetaNextTopicId), v = MdbVal(&next_topic_id_, 4);
    int rc = mdb_put(txn, d.meta, &k, &v, 0);
    if (rc == 0) {
      k = MdbVal(kMetaNextSubId);
      v = MdbVal(&next_sub_id_, 4);
      rc = mdb_put(txn, d.meta, &k, &v, 0);
    }
    if (rc != 0) return LmdbStatus(rc, "writing the id counters");
  }
  return Status::Ok();
}

Result<WriterTopic*> Writer::FindOrCreateTopic(MDB_txn*, const std::string& name) {
  auto it = topic_ids_.find(name);
  if (it != topic_ids_.end()) return &topics_[it->second];
  bool configured = topic_configs_.count(name) > 0;
  if (!configured && !config_.auto_create_topics) {
    return NotFound(fmt::format("topic '{}' does not exist and auto_create_topics is off", name));
  }
  WriterTopic t;
  t.name = name;
  t.rec.id = next_topic_id_++;
  t.config = ConfigFor(name);
  t.config.name = name;
  t.dirty = true;
  meta_dirty_ = true;
  uint32_t id = t.rec.id;
  topic_ids_[name] = id;
  auto [pos, inserted] = topics_.emplace(id, std::move(t));
  return &pos->second;
}

uint64_t Writer::MinFloor(const WriterTopic& topic) const {
  uint64_t m = UINT64_MAX;
  for (uint32_t sid : topic.subs) {
    auto it = subs_.find(sid);
    if (it != subs_.end()) m = std::min(m, it->second.rec.floor);
  }
  return m;
}

Status Writer::DeleteFirst(MDB_txn* txn, WriterTopic* t) {
  SeqKey key(t->rec.id, t->rec.first_seq);
  MDB_val k = MdbVal(key.bytes, sizeof key.bytes), v;
  int rc = mdb_get(txn, env_->dbi().messages, &k, &v);
  if (rc == 0) {
    MessageHeader h;
    if (!h.Decode(static_cast<const char*>(v.mv_data), v.mv_size)) {
      return {StatusCode::kCorruption, fmt::format("message {}/{} is malformed", t->name, t->rec.first_seq)};
    }
    rc = mdb_del(txn, env_->dbi().messages, &k, nullptr);
    if (rc != 0) return LmdbStatus(rc, "deleting a message");
    t->rec.messages -= std::min<uint64_t>(t->rec.messages, 1);
    t->rec.bytes -= std::min<uint64_t>(t->rec.bytes, h.env_len);
  } else if (rc != MDB_NOTFOUND) {
    return LmdbStatus(rc, "reading a message");
  }
  ++t->rec.first_seq;
  if (t->rec.messages == 0) t->rec.first_seq = t->rec.last_seq + 1;
  t->dirty = true;
  return Status::Ok();
}

Status Writer::Trim(MDB_txn* txn, WriterTopic* t, int64_t now_us) {
  if (t->subs.empty()) return Status::Ok();  // nobody has acked anything: keep for a future subscriber
  uint64_t min_floor = MinFloor(*t);
  const int64_t age_us = std::chrono::duration_cast<std::chrono::microseconds>(t->config.retention_max_age).count();
  const uint64_t keep_bytes = t->config.retention_max_bytes;
  while (t->rec.messages > 0 && t->rec.first_seq <= min_floor) {
    if (age_us > 0 || keep_bytes > 0) {
      bool keep = true;
      if (keep_bytes > 0 && t->rec.bytes > keep_bytes) keep = false;
      if (keep && age_us > 0) {
        SeqKey key(t->rec.id, t->rec.first_seq);
        MDB_val k = MdbVal(key.bytes, sizeof key.bytes), v;
        int rc = mdb_get(txn, env_->dbi().messages, &k, &v);
        if (rc == 0 && v.mv_size >= 8 &&
            GetLe<int64_t>(static_cast<const char*>(v.mv_data)) <= now_us - age_us) {
          keep = false;
        }
      }
      if (keep) break;
    }
    SLUICE_RETURN_IF_ERROR(DeleteFirst(txn, t));
  }
  return Status::Ok();
}

void Writer::ApplyPublish(MDB_txn* txn, WriteOp* op, bool refuse) {
  PublishRequest& req = op->publish;
  if (refuse) {
    op->status = {StatusCode::kStorageFull,
                  fmt::format("the store is full (max_map_size = {} bytes reached); publish refused "
                              "until consumers drain it",
                              env_->max_map_size())};
    return;
  }
  auto env = ReadEnvelope(req.envelope);
  if (!env.ok()) {
    op->status = env.status();
    return;
  }
  std::string_view key = (*env)->key() ? (*env)->key()->string_view() : std::string_view();
  auto topic_or = FindOrCreateTopic(txn, req.topic);
  if (!topic_or.ok()) {
    op->status = topic_or.status();
    return;
  }
  WriterTopic* t = *topic_or;
  op->topic_id = t->rec.id;
  const Dbis& d = env_->dbi();
  const int64_t window_us = std::chrono::duration_cast<std::chrono::microseconds>(config_.dedupe_window).count();
  DedupeKey dkey(t->rec.id, req.id);
  if (req.dedupe && window_us > 0) {
    MDB_val k = MdbVal(dkey.bytes, sizeof dkey.bytes), v;
    int rc = mdb_get(txn, d.dedupe, &k, &v);
    if (rc == 0 && v.mv_size == 16) {
      const char* p = static_cast<const char*>(v.mv_data);
      if (GetLe<int64_t>(p + 8) > op->now_us - window_us) {
        op->publish_result = PublishResult{GetLe<uint64_t>(p), req.id, true};
        return;
      }
    } else if (rc != MDB_NOTFOUND) {
      Check(rc, "reading the dedupe index");
    }
  }
  const uint64_t size = req.envelope.size();
  const TopicConfig& cfg = t->config;
  if (cfg.max_bytes > 0 && size > cfg.max_bytes) {
    op->status = LimitExceeded(fmt::format("message of {} bytes exceeds topic '{}' max_bytes = {}", size,
                                           t->name, cfg.max_bytes));
    return;
  }
  for (;;) {
    bool over_count = cfg.max_messages > 0 && t->rec.messages + 1 > cfg.max_messages;
    bool over_bytes = cfg.max_bytes > 0 && t->rec.bytes + size > cfg.max_bytes;
    if (!(over_count || over_bytes) || t->rec.messages == 0) break;
    // Messages kept only by retention go first; then the policy decides about unacked ones.
    bool retained = !t->subs.empty() && t->rec.first_seq <= MinFloor(*t);
    if (retained || cfg.on_full == TopicFullPolicy::kDropOldest) {
      Status s = DeleteFirst(txn, t);
      if (!s.ok()) throw TxnError{s};
      continue;
    }
    op->status = over_count
                     ? LimitExceeded(fmt::format("topic '{}' is full: max_messages = {}", t->name, cfg.max_messages))
                     : LimitExceeded(fmt::format("topic '{}' is full: max_bytes = {}", t->name, cfg.max_bytes));
    return;
  }
  for (uint32_t sid : t->subs) {
    const WriterSub& s = subs_[sid];
    if (s.rec.max_backlog == 0 || s.rec.on_full != static_cast<uint8_t>(BacklogFullPolicy::kBlock)) continue;
    uint64_t backlog = t->rec.last_seq - std::min(t->rec.last_seq, s.rec.floor);
    backlog -= std::min(backlog, s.acked_above);
    if (backlog >= s.rec.max_backlog) {
      op->status = LimitExceeded(fmt::format("subscription '{}' of topic '{}' has reached max_backlog = {}",
                                             s.name, t->name, s.rec.max_backlog));
      return;
    }
  }
  const uint64_t seq = t->rec.last_seq + 1;
  if (!SetEnvelopeSeq(&req.envelope, seq)) {
    op->status = InvalidArgument("envelope has no seq field (build it with BuildStoredEnvelope)");
    return;
  }
  MessageHeader h;
  h.publish_time_us = req.publish_time_us;
  h.id = req.id;
  h.key_len = static_cast<uint32_t>(key.size());
  h.env_len = static_cast<uint32_t>(size);
  h.reply_token = req.reply_token;
  SeqKey mkey(t->rec.id, seq);
  MDB_val k = MdbVal(mkey.bytes, sizeof mkey.bytes);
  MDB_val v{MessageHeader::kSize + key.size() + size, nullptr};
  // MDB_APPEND skips the page search; it refuses (MDB_KEYEXIST) when a later topic id holds messages.
  int rc = mdb_put(txn, d.messages, &k, &v, MDB_APPEND | MDB_RESERVE);
  if (rc == MDB_KEYEXIST) {
    v.mv_size = MessageHeader::kSize + key.size() + size;
    rc = mdb_put(txn, d.messages, &k, &v, MDB_RESERVE);
  }
  Check(rc, "appending a message");
  char* p = static_cast<char*>(v.mv_data);
  h.Encode(p);
  // An empty key's data() may be null, which memcpy must not get even for zero bytes.
  if (!key.empty()) std::memcpy(p + MessageHeader::kSize, key.data(), key.size());
  std::memcpy(p + MessageHeader::kSize + key.size(), req.envelope.data(), size);
  t->rec.last_seq = seq;
  if (t->rec.messages == 0) t->rec.first_seq = seq;
  ++t->rec.messages;
  t->rec.bytes += size;
  t->dirty = true;
  if (req.dedupe && window_us > 0) {
    char dv[16];
    PutLe(dv, seq);
    PutLe(dv + 8, op->now_us);
    MDB_val dk = MdbVal(dkey.bytes, sizeof dkey.bytes), dval = MdbVal(dv, sizeof dv);
    Check(mdb_put(txn, d.dedupe, &dk, &dval, 0), "writing the dedupe index");
    DedupeTimeKey tkey(op->now_us, t->rec.id, req.id);
    MDB_val tk = MdbVal(tkey.bytes, sizeof tkey.bytes), empty{0, nullptr};
    Check(mdb_put(txn, d.dedupe_time, &tk, &empty, 0), "writing the dedupe index");
  }
  op->publish_result = PublishResult{seq, req.id, false};
}

// A bundle writes into the batch's transaction itself, not into a nested one. A nested transaction
// would undo a refused bundle on its own, but before changing a page its parent already dirtied it
// copies it, and its commit merges its dirty list into the parent's: with the tail pages of four or
// five databases touched by every bundle, that was a third of the writer's time (bench/README.md, "The
// order pipeline"). Instead, a conflict is found before anything is written, the publishes come
// before the key writes (so a refused first publish leaves nothing to undo), and a publish refused
// after another one settles the bundle as refused and throws BundleRefused: Commit aborts the
// transaction and applies the batch again, without it. A refusal costs that only for a bundle of
// several publishes; a full store (refuse_publishes) refuses every bundle at its first.
void Writer::ApplyBundle(MDB_txn* txn, WriteOp* op, bool refuse_publishes) {
  if (op->settled) return;
  BundleRequest& b = op->bundle;
  const Dbis& d = env_->dbi();
  if (op->seq != 0 && InputAcked(txn, op->sub_id, op->seq)) {
    // The ack commits with the effects, so an input acked already had its bundle applied. The loop's
    // leases keep a second one from coming here (and a bundle whose input was skipped while its
    // handler ran comes with seq 0); this check keeps a stored input's effects to one apply in the
    // store itself, its publishes having no dedupe entries.
    op->bundle_result.outcome = BundleOutcome::kLeaseLost;
    op->bundle_result.message =
        fmt::format("its input (seq {}) is acked already, by an earlier bundle: nothing applied", op->seq);
    return;
  }
  for (const PublishRequest& p : b.publishes) {
    auto t = FindOrCreateTopic(txn, p.topic);
    if (!t.ok()) {
      op->status = t.status();
      return;
    }
  }
  for (const KvReadCheck& r : b.reads) {
    std::string key = KeyspaceKey(b.keyspace, r.key);
    MDB_val k = MdbVal(key.data(), key.size()), v;
    int rc = mdb_get(txn, d.kv, &k, &v);
    uint64_t now_version = 0;
    if (rc == 0 && v.mv_size >= 8) now_version = GetBe64(static_cast<const char*>(v.mv_data));
    else if (rc != MDB_NOTFOUND) Check(rc, "reading a plugin key");
    if (now_version != r.version) {
      op->bundle_result.outcome = BundleOutcome::kConflict;
      op->bundle_result.message = fmt::format("key '{}' changed since it was read (version {} -> {})",
                                              r.key, r.version, now_version);
      return;
    }
  }
  op->bundle_result.published.clear();
  for (size_t i = 0; i < b.publishes.size(); ++i) {
    PublishRequest& p = b.publishes[i];
    WriteOp sub;
    sub.kind = OpKind::kPublish;
    sub.now_us = op->now_us;
    sub.publish = std::move(p);
    // Back into the bundle however this ends (MDB_MAP_FULL throws, a refusal throws): the batch is
    // applied again, and the loop counts each topic's publishes by the request.
    struct Restore {
      PublishRequest& to;
      PublishRequest& from;
      ~Restore() { to = std::move(from); }
    } restore{p, sub.publish};
    ApplyPublish(txn, &sub, refuse_publishes);
    if (!sub.status.ok()) {
      op->status = sub.status.WithContext(fmt::format("bundle publish to '{}'", sub.publish.topic));
      op->bundle_result.published.clear();
      // The first publish refused: the bundle wrote nothing yet (what a publish frees to make room,
      // it frees for the next publish as well), so the batch goes on.
      if (i == 0) return;
      op->settled = true;
      throw BundleRefused{};
    }
    op->bundle_result.published.push_back(sub.publish_result);
  }
  std::string value;
  for (const KvMutation& w : b.writes) {
    std::string key = KeyspaceKey(b.keyspace, w.key);
    MDB_val k = MdbVal(key.data(), key.size());
    if (w.erase) {
      int rc = mdb_del(txn, d.kv, &k, nullptr);
      if (rc != MDB_NOTFOUND) Check(rc, "deleting a plugin key");
      continue;
    }
    value.resize(8 + w.value.size());
    PutBe64(value.data(), b.version);
    if (!w.value.empty()) std::memcpy(value.data() + 8, w.value.data(), w.value.size());
    MDB_val v = MdbVal(value.data(), value.size());
    Check(mdb_put(txn, d.kv, &k, &v, 0), "writing a plugin key");
  }
  // InputAcked() above found the input above its floor and not acked.
  if (op->seq != 0 && subs_.count(op->sub_id) > 0) {
    SeqKey key(op->sub_id, op->seq);
    MDB_val k = MdbVal(key.bytes, sizeof key.bytes), empty{0, nullptr};
    Check(mdb_put(txn, d.acks, &k, &empty, 0), "recording a bundle's ack");
  }
  op->bundle_result.outcome = BundleOutcome::kCommitted;
}

bool Writer::InputAcked(MDB_txn* txn, uint32_t sub_id, uint64_t seq) {
  auto s = subs_.find(sub_id);
  if (s == subs_.end()) return false;
  if (seq <= s->second.rec.floor) return true;
  SeqKey key(sub_id, seq);
  MDB_val k = MdbVal(key.bytes, sizeof key.bytes), v;
  int rc = mdb_get(txn, env_->dbi().acks, &k, &v);
  if (rc != MDB_NOTFOUND) Check(rc, "reading a bundle input's ack");
  return rc == 0;
}

Status Writer::ExpireDedupe(MDB_txn* txn, int64_t now_us) {
  const int64_t window_us = std::chrono::duration_cast<std::chrono::microseconds>(config_.dedupe_window).count();
  if (window_us <= 0) return Status::Ok();
  const Dbis& d = env_->dbi();
  MDB_cursor* cur = nullptr;
  int rc = mdb_cursor_open(txn, d.dedupe_time, &cur);
  if (rc != 0) return LmdbStatus(rc, "expiring the dedupe index");
  MDB_val k, v;
  int n = 0;
  Status result = Status::Ok();
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && n < kDedupeExpiryPerBatch; ++n) {
    if (k.mv_size != 28) break;
    const char* p = static_cast<const char*>(k.mv_data);
    int64_t t = static_cast<int64_t>(GetBe64(p));
    if (t > now_us - window_us) break;
    // The index entry may have been rewritten by a later publish of the same id; keep that one.
    MDB_val ik{20, const_cast<char*>(p + 8)}, iv;
    if (mdb_get(txn, d.dedupe, &ik, &iv) == 0 && iv.mv_size == 16 &&
        GetLe<int64_t>(static_cast<const char*>(iv.mv_data) + 8) == t) {
      rc = mdb_del(txn, d.dedupe, &ik, nullptr);
      if (rc != 0) {
        result = LmdbStatus(rc, "expiring the dedupe index");
        break;
      }
    }
    rc = mdb_cursor_del(cur, 0);
    if (rc != 0) {
      result = LmdbStatus(rc, "expiring the dedupe index");
      break;
    }
    rc = mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT);
  }
  mdb_cursor_close(cur);
  return result;
}

void Writer::SetOptions(const SubscriptionConfig& c, SubRecord* r) {
  r->ordering = static_cast<uint8_t>(c.ordering);
  r->on_full = static_cast<uint8_t>(c.on_full);
  r->max_deliveries = c.max_deliveries > 0 ? c.max_deliveries : config_.default_max_deliveries;
  r->ack_wait_ms = c.ack_wait.count() > 0 ? c.ack_wait.count() : config_.default_ack_wait.count();
  r->backoff_initial_ms = c.backoff.initial.count();
  r->backoff_multiplier = c.backoff.multiplier;
  r->backoff_max_ms = c.backoff.max.count();
  r->max_backlog = c.max_backlog;
  r->max_crashes = c.max_crashes > 0 ? c.max_crashes : 3;
}

void Writer::ApplyCreateSub(MDB_txn* txn, WriteOp* op) {
  const SubscriptionConfig& c = op->sub_config;
  auto topic_or = FindOrCreateTopic(txn, c.topic);
  if (!topic_or.ok()) {
    op->status = topic_or.status();
    return;
  }
  WriterTopic* t = *topic_or;
  op->topic_id = t->rec.id;
  std::string key = NameKey(t->rec.id, c.name);
  auto found = sub_ids_.find(key);
  if (found != sub_ids_.end()) {
    WriterSub& existing = subs_[found->second];
    if (op->from_config) {
      SetOptions(c, &existing.rec);
      existing.dirty = true;
    }
    op->sub_record = existing.rec;
    return;
  }
  WriterSub s;
  s.name = c.name;
  s.topic_id = t->rec.id;
  SubRecord& r = s.rec;
  r.id = next_sub_id_++;
  SetOptions(c, &r);
  r.created_us = op->now_us;
  const uint64_t before_first = t->rec.first_seq - 1;
  switch (c.start) {
    case StartPointKind::kLatest:
      r.floor = t->rec.last_seq;
      break;
    case StartPointKind::kEarliest:
      r.floor = before_first;
      break;
    case StartPointKind::kSequence:
      r.floor = std::max(before_first, c.start_seq > 0 ? c.start_seq - 1 : 0);
      break;
    case StartPointKind::kTime: {
      // Publish times grow with seq (one loop clock assigns them), so binary search the stored range.
      uint64_t lo = t->rec.first_seq, hi = t->rec.last_seq + 1;
      while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        SeqKey mk(t->rec.id, mid);
        MDB_val k = MdbVal(mk.bytes, sizeof mk.bytes), v;
        int rc = mdb_get(txn, env_->dbi().messages, &k, &v);
        if (rc != 0 && rc != MDB_NOTFOUND) Check(rc, "finding the start time");
        int64_t ts = rc == 0 && v.mv_size >= 8 ? GetLe<int64_t>(static_cast<const char*>(v.mv_data)) : 0;
        if (ts < c.start_time_us) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
      r.floor = lo - 1;
      break;
    }
  }
  s.dirty = true;
  meta_dirty_ = true;
  t->subs.push_back(r.id);
  sub_ids_[key] = r.id;
  op->sub_record = r;
  subs_[r.id] = std::move(s);
}

void Writer::ApplyAck(MDB_txn* txn, WriteOp* op) {
  auto it = subs_.find(op->sub_id);
  if (it == subs_.end()) return;
  WriterSub& s = it->second;
  const Dbis& d = env_->dbi();
  MDB_val empty{0, nullptr};
  for (uint64_t seq : op->seqs) {
    if (seq <= op->floor) continue;
    SeqKey key(op->sub_id, seq);
    MDB_val k = MdbVal(key.bytes, sizeof key.bytes);
    Check(mdb_put(txn, d.acks, &k, &empty, 0), "recording an ack");
  }
  if (op->floor > s.rec.floor) {
    // Acks at or below the new floor are implied by it; drop their entries.
    MDB_cursor* cur = nullptr;
    Check(mdb_cursor_open(txn, d.acks, &cur), "advancing a cursor");
    SeqKey from(op->sub_id, s.rec.floor + 1);
    MDB_val k = MdbVal(from.bytes, sizeof from.bytes), v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size == 12) {
      const char* p = static_cast<const char*>(k.mv_data);
      if (SeqKey::Id(p) != op->sub_id || SeqKey::Seq(p) > op->floor) break;
      rc = mdb_cursor_del(cur, 0);
      if (rc != 0) break;
      rc = mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT);
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND && rc != EINVAL) Check(rc, "advancing a cursor");
    s.rec.floor = op->floor;
  }
  s.rec.skipped = op->skipped;
  s.acked_above = op->acked_above;
  s.dirty = true;
  for (uint64_t seq : op->forget_counts) {
    SeqKey key(op->sub_id, seq);
    MDB_val k = MdbVal(key.bytes, sizeof key.bytes);
    int rc = mdb_del(txn, d.counts, &k, nullptr);
    if (rc != MDB_NOTFOUND) Check(rc, "forgetting a delivery count");
  }
  touched_topics_.push_back(s.topic_id);
}

void Writer::ApplyDeadLetter(MDB_txn* txn, WriteOp* op) {
  auto it = subs_.find(op->sub_id);
  if (it == subs_.end()) return;
  const Dbis& d = env_->dbi();
  SeqKey key(op->sub_id, op->seq);
  MDB_val k = MdbVal(key.bytes, sizeof key.bytes), v;
  std::string envelope;
  if (op->from_dead) {
    int rc = mdb_get(txn, d.dead, &k, &v);
    if (rc == MDB_NOTFOUND) return;
    Check(rc, "reading a dead letter");
    DeadHeader old;
    const char* p = static_cast<const char*>(v.mv_data);
    if (!old.Decode(p, v.mv_size)) return;
    envelope.assign(old.Envelope(p));
  } else {
    SeqKey mkey(it->second.topic_id, op->seq);
    MDB_val mk = MdbVal(mkey.bytes, sizeof mkey.bytes), mv;
    int rc = mdb_get(txn, d.messages, &mk, &mv);
    if (rc != MDB_NOTFOUND) Check(rc, "reading a message to dead-letter");
    MessageHeader h;
    if (rc == 0 && h.Decode(static_cast<const char*>(mv.mv_data), mv.mv_size)) {
      envelope.assign(static_cast<const char*>(mv.mv_data) + MessageHeader::kSize + h.key_len, h.env_len);
    }
  }
  DeadHeader h;
  h.state = DeadHeader::kDead;
  h.delivery_count = op->count;
  h.dead_lettered_at_us = op->now_us;
  h.reason_len = static_cast<uint32_t>(op->reason.size());
  h.error_len = static_cast<uint32_t>(op->error.size());
  h.key_len = static_cast<uint32_t>(op->key.size());
  h.env_len = static_cast<uint32_t>(envelope.size());
  std::string value(DeadHeader::kSize, '\0');
  h.Encode(value.data());
  value += op->reason;
  value += op->error;
  value += op->key;
  value += envelope;
  v = MdbVal(value);
  Check(mdb_put(txn, d.dead, &k, &v, 0), "writing a dead letter");
  int rc = mdb_del(txn, d.counts, &k, nullptr);
  if (rc != MDB_NOTFOUND) Check(rc, "forgetting a delivery count");
  if (op->park) {
    std::string pk = NameKey(op->sub_id, op->key);
    MDB_val pkv = MdbVal(pk), pv = MdbVal(&op->seq, 8);
    Check(mdb_put(txn, d.parked, &pkv, &pv, 0), "parking a key");
  }
}

Status Writer::Unpark(MDB_txn* txn, uint32_t sub_id, const std::vector<std::string>& keys) {
  for (const std::string& key : keys) {
    std::string pk = NameKey(sub_id, key);
    MDB_val k = MdbVal(pk);
    int rc = mdb_del(txn, env_->dbi().parked, &k, nullptr);
    if (rc != 0 && rc != MDB_NOTFOUND) return LmdbStatus(rc, "releasing a parked key");
  }
  return Status::Ok();
}

void Writer::ApplyRedrive(MDB_txn* txn, WriteOp* op) {
  const Dbis& d = env_->dbi();
  for (uint64_t seq : op->seqs) {
    SeqKey key(op->sub_id, seq);
    MDB_val k = MdbVal(key.bytes, sizeof key.bytes), v;
    int rc = mdb_get(txn, d.dead, &k, &v);
    if (rc == MDB_NOTFOUND) continue;
    Check(rc, "reading a dead letter");
    std::string value(static_cast<const char*>(v.mv_data), v.mv_size);
    DeadHeader h;
    if (!h.Decode(value.data(), value.size())) continue;
    h.state = DeadHeader::kRedriven;
    h.Encode(value.data());
    v = MdbVal(value);
    Check(mdb_put(txn, d.dead, &k, &v, 0), "redriving a dead letter");
  }
  Status s = Unpark(txn, op->sub_id, op->keys);
  if (!s.ok()) throw TxnError{s};
}

void Writer::ApplyDeleteDead(MDB_txn* txn, WriteOp* op) {
  for (uint64_t seq : op->seqs) {
    SeqKey key(op->sub_id, seq);
    MDB_val k = MdbVal(key.bytes, sizeof key.bytes);
    int rc = mdb_del(txn, env_->dbi().dead, &k, nullptr);
    if (rc != MDB_NOTFOUND) Check(rc, "deleting a dead letter");
  }
  Status s = Unpark(txn, op->sub_id, op->keys);
  if (!s.ok()) throw TxnError{s};
}

}  // namespace sluice::broker::store

// SPDX-License-Identifier: MIT
//
// Writer: the store's group commit. One thread owns every LMDB write transaction. The loop thread
// Enqueue()s WriteOps; the writer takes everything queued while its previous commit ran, applies it in
// one transaction, commits (with the fsync the durability setting asks for), and hands the whole batch
// back through `notify` (a uv_async_send), after which the loop calls TakeCompleted() and runs the
// completions. Ops of one batch apply in the order they were enqueued.
//
// The writer keeps the authoritative counters of every topic (first/last seq, messages, bytes) and the
// cursor of every subscription as last reported by the loop, so it can enforce topic limits and
// "block" backlogs at publish time and delete messages once every subscription is past them.
//
// With durability "sync" the environment runs with MDB_NOMETASYNC, which makes a commit one flush (its
// data pages) instead of two, and takes the second off the writer's path: the meta page a commit writes
// reaches the disk with the next commit's flush, or with the syncer thread's flush when no other op is
// waiting, whichever ends first. A batch is therefore handed back twice: first its topic snapshots, as
// soon as its transaction is committed and readable (new messages may be delivered), then its ops, in
// commit order, once its meta page is flushed (PublishAcks, bundle results). Only a power failure
// between the two can take back a delivered message, and its publisher never got a PublishAck for it. Acks are lazy: a batch of nothing but acks waits up to
// kLazyAckDelay for other work to ride along with, because a lost ack costs a redelivery, not data.
//
// Failure modes: an op that breaks a rule (topic full, unknown topic, bad envelope) fails alone with its
// own Status. MDB_MAP_FULL first grows the map up to max_map_size and retries the batch; at the limit
// the batch is retried without its publishes (kStorageFull for them) so acks and cursors still commit;
// if even that fails, every op of the batch gets the error. Threading: Enqueue/TakeCompleted/Stop from
// the loop thread; everything else on the writer thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "broker/backend.h"
#include "broker/options.h"
#include "broker/status.h"
#include "broker/store/format.h"
#include "broker/store/lmdb_env.h"

namespace sluice::broker::store {

enum class OpKind : uint8_t {
  kPublish,      // with `reason` set: then dead-letter it in sub_id (count, reason, error), at once
  kCreateSub,    // creates (or finds) the subscription `sub_config`
  kAck,          // sub_id's new cursor: floor, seqs acked above it, skipped, counts to forget
  kSetCount,     // sub_id, seq, count: a redelivery
  kDeadLetter,   // sub_id, seq, count, reason, error, key; park the key when `park`
  kRedrive,      // sub_id, seqs: dead -> redriven; keys: unpark
  kDeleteDead,   // sub_id, seqs: forget dead-letter entries (acked after redrive, or purged); keys: unpark
  kTrim,         // retention by age: delete what every subscription acked and retention lets go
  kCreateTopic,  // publish.topic: a configured topic, created at start-up
  kBundle,       // a plugin handler's effects + the ack of (sub_id, seq), all or nothing
};

struct WriteOp {
  OpKind kind = OpKind::kPublish;
  int64_t now_us = 0;

  PublishRequest publish;
  PublishCallback publish_done;
  PublishResult publish_result;

  SubscriptionConfig sub_config;
  SubRecord sub_record;             // kCreateSub result
  uint32_t topic_id = 0;            // kPublish / kCreateSub result

  uint32_t sub_id = 0;
  uint64_t floor = 0;
  uint64_t skipped = 0;
  uint64_t acked_above = 0;
  uint64_t seq = 0;
  uint32_t count = 0;
  bool park = false;
  bool from_dead = false;
  bool from_config = false;         // kCreateSub: the config's options replace the stored ones
  std::vector<uint64_t> seqs;
  std::vector<uint64_t> forget_counts;
  std::vector<std::string> keys;
  std::string reason;
  std::string error;
  std::string key;

  BundleRequest bundle;             // kBundle
  BundleResult bundle_result;
  bool settled = false;             // kBundle refused in an earlier attempt at its batch: not applied again

  Status status;
  std::function<void(WriteOp&)> done;  // runs on the loop thread after the commit (not for publishes)
};

// A topic's counters as of a commit, for the loop's view.
struct TopicSnapshot {
  std::string name;
  TopicRecord rec;
};

struct Batch {
  std::vector<WriteOp> ops;
  std::vector<TopicSnapshot> topics;  // every topic this batch changed
};

// What the writer loads at start-up and the loop reuses to build its own view.
struct WriterTopic {
  std::string name;
  TopicRecord rec;
  TopicConfig config;
  std::vector<uint32_t> subs;
  bool dirty = false;
};

struct WriterSub {
  std::string name;
  uint32_t topic_id = 0;
  SubRecord rec;
  uint64_t acked_above = 0;
  bool dirty = false;
};

class Writer {
 public:
  static constexpr std::chrono::milliseconds kLazyAckDelay{2};

  // `topic_configs` are the configured topics (by name); others get defaults.
  // `metrics` (may be null) outlives the writer.
  Writer(Env* env, const BrokerConfig& config, std::map<std::string, TopicConfig> topic_configs,
         std::function<void()> notify, StoreMetrics* metrics = nullptr);
  ~Writer();

  // Loads topics and subscriptions from the store. Called once before Start().
  Status Load();
  // Applies `ops` synchronously on the calling thread (start-up: configured subscriptions). Only
  // before Start().
  Status ApplyNow(std::vector<WriteOp>* ops, std::vector<TopicSnapshot>* topics);
  void Start();
  void Enqueue(std::vector<WriteOp>* ops);
  void Enqueue(WriteOp op);
  // Moves out every batch completed so far.
  void TakeCompleted(std::vector<Batch>* out);
  // Gives a completed batch's ops vector back (emptied here) so the next queue reuses its memory:
  // growing a fresh queue op by op re-faulted and moved hundreds of WriteOps per commit.
  void Recycle(std::vector<WriteOp>* ops);
  // Asks the thread to commit what is queued, sync and exit; `notify` runs once it has (stopped()).
  void RequestStop();
  // RequestStop() and join. Idempotent.
  void Stop();
  bool stopped() const { return exited_.load(); }

  const std::unordered_map<uint32_t, WriterTopic>& topics() const { return topics_; }
  const std::unordered_map<uint32_t, WriterSub>& subs() const { return subs_; }
  const TopicConfig& ConfigFor(const std::string& name) const;

 private:
  void Run();
  // env_->Sync(), timed into metrics_.
  Status TimedSync();
  // env_->Preallocate(idle), counted into metrics_; whether it wrote.
  bool Preallocate(bool idle);
  // Whether the file's tail wants refilling and nothing waits for the writer or the syncer (under mu_).
  bool RefillDue() const;
  // Refills in idle steps while RefillDue(); `lock` holds mu_ and is released around each step.
  void RefillWhileIdle(std::unique_lock<std::mutex>& lock);
  // Applies and commits the batch. Returns the id of the transaction that reached the store (with
  // "sync": whose data pages are on disk), or 0 when the batch failed or wrote nothing.
  size_t Commit(Batch* batch);
  // "sync": hands a committed batch's ops back once the meta page of `txn_id` is flushed (under mu_).
  void HoldUntilDurable(Batch batch, size_t txn_id);
  // Every held batch up to `txn_id` is durable (or, with an error, not known to be): hand it back.
  void ReleaseDurable(size_t txn_id, const Status& status);
  void RunSyncer();
  // Counts an op into eager_queued_ / lazy_since_ (under mu_).
  void NoteQueued(const WriteOp& op);
  Status ApplyOps(MDB_txn* txn, Batch* batch, bool refuse_publishes);
  // True when the map is at max_map_size and fewer than a reserve of pages is free.
  bool NearFull() const;
  void ApplyPublish(MDB_txn* txn, WriteOp* op, bool refuse);
  void ApplyCreateSub(MDB_txn* txn, WriteOp* op);
  void SetOptions(const SubscriptionConfig& c, SubRecord* r);
  void ApplyAck(MDB_txn* txn, WriteOp* op);
  void ApplyDeadLetter(MDB_txn* txn, WriteOp* op);
  void ApplyRedrive(MDB_txn* txn, WriteOp* op);
  void ApplyDeleteDead(MDB_txn* txn, WriteOp* op);
  void ApplyBundle(MDB_txn* txn, WriteOp* op, bool refuse_publishes);
  // Whether `seq` of subscription `sub_id` is acked in the store (or in this transaction).
  bool InputAcked(MDB_txn* txn, uint32_t sub_id, uint64_t seq);
  Status Trim(MDB_txn* txn, WriterTopic* topic, int64_t now_us);
  Status DeleteFirst(MDB_txn* txn, WriterTopic* topic);
  Status ExpireDedupe(MDB_txn* txn, int64_t now_us);
  Status Unpark(MDB_txn* txn, uint32_t sub_id, const std::vector<std::string>& keys);
  Result<WriterTopic*> FindOrCreateTopic(MDB_txn* txn, const std::string& name);
  uint64_t MinFloor(const WriterTopic& topic) const;
  Status FlushRecords(MDB_txn* txn, Batch* batch);

  Env* env_;
  BrokerConfig config_;
  std::map<std::string, TopicConfig> topic_configs_;
  TopicConfig default_topic_;
  std::function<void()> notify_;
  StoreMetrics* metrics_;

  // Writer-thread state (loop thread reads it only before Start()).
  std::unordered_map<std::string, uint32_t> topic_ids_;
  std::unordered_map<uint32_t, WriterTopic> topics_;
  std::unordered_map<uint32_t, WriterSub> subs_;
  std::unordered_map<std::string, uint32_t> sub_ids_;  // NameKey(topic id, name) -> sub id
  uint32_t next_topic_id_ = 1;
  uint32_t next_sub_id_ = 1;
  bool meta_dirty_ = false;
  int64_t batch_now_us_ = 0;
  std::vector<uint32_t> touched_topics_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<WriteOp> queue_;
  size_t eager_queued_ = 0;                             // ops in queue_ that are not lazy acks
  std::chrono::steady_clock::time_point lazy_since_{};  // when the oldest queued lazy ack came
  bool idle_ = false;
  bool stop_ = false;
  struct Held {
    Batch batch;
    size_t txn_id = 0;
  };
  std::deque<Held> held_;     // committed, meta page not yet known flushed; commit order
  size_t last_txn_id_ = 0;    // the newest committed transaction
  size_t durable_txn_ = 0;    // every transaction up to this one is known to be on disk
  bool committing_ = false;   // the writer is in Commit(): its flush will carry the held meta pages
  Status sync_failed_;        // a failed flush: later flushes prove nothing about earlier pages
  Status commit_flush_error_;  // the writer's last Commit failed in its flush (writer thread only)
  bool syncer_stop_ = false;
  bool refill_wanted_ = false;  // a commit grew the store: RefillWhileIdle has work until a step writes nothing
  std::condition_variable syncer_cv_;
  std::thread syncer_;
  std::vector<Batch> completed_;
  std::vector<WriteOp> spare_;  // empty, with the capacity of a recycled batch: the next queue_
  std::thread thread_;
  std::atomic<bool> exited_{false};
  bool started_ = false;
};

}  // namespace sluice::broker::store

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
// Failure modes: an op that breaks a rule (topic full, unknown topic, bad envelope) fails alone with its
// own Status. MDB_MAP_FULL first grows the map up to max_map_size and retries the batch; at the limit
// the batch is retried without its publishes (kStorageFull for them) so acks and cursors still commit;
// if even that fails, every op of the batch gets the error. Threading: Enqueue/TakeCompleted/Stop from
// the loop thread; everything else on the writer thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
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
  kPublish,
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
  void TimedSync();
  void Commit(Batch* batch);
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
  bool idle_ = false;
  bool stop_ = false;
  std::vector<Batch> completed_;
  std::thread thread_;
  std::atomic<bool> exited_{false};
  bool started_ = false;
};

}  // namespace sluice::broker::store

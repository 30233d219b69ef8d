// SPDX-License-Identifier: MIT
//
// The store's group commit (broker/store/writer.h) as its one caller, LmdbBackend, sees it: WriteOps go
// in with Enqueue(), batches come back through `notify` and TakeCompleted(). With durability "sync" a
// batch comes back twice, its topic snapshots first (its messages are readable) and its ops once its
// meta page is flushed; "batch" and "none" hand each batch back once. Acks are lazy: alone they wait a
// little for other work, and they ride along with it. Waits are bounded; nothing here sleeps.
#include <dlfcn.h>
#include <lmdb.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "broker/envelope.h"
#include "broker/store/format.h"
#include "broker/store/keyspace_reader.h"
#include "broker/store/lmdb_env.h"
#include "broker/store/writer.h"
#include "broker/uuid.h"

// fdatasync as LMDB and the writer see it: this test binary's own definition comes first in the
// dynamic lookup. Armed for one descriptor, it holds the first flush until the test lets it go and
// fails the second with EIO; every other flush is the real one.
namespace flush_hook {
std::mutex mu;
std::condition_variable cv;
int fd = -1;
int calls = 0;
bool released = false;
}  // namespace flush_hook

extern "C" int fdatasync(int fd) {
  static const auto real = reinterpret_cast<int (*)(int)>(dlsym(RTLD_NEXT, "fdatasync"));
  {
    std::unique_lock lock(flush_hook::mu);
    if (fd == flush_hook::fd) {
      const int call = ++flush_hook::calls;
      flush_hook::cv.notify_all();
      if (call == 1) {
        flush_hook::cv.wait(lock, [] { return flush_hook::released; });
      } else if (call == 2) {
        errno = EIO;
        return -1;
      }
    }
  }
  return real(fd);
}

namespace sluice::broker::store {
namespace {

using namespace std::chrono_literals;

// Generous: the machine may be busy with other builds; a healthy writer answers in milliseconds.
constexpr auto kDeadline = 10s;
constexpr char kTopic[] = "orders";

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/sluice-writer-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

int64_t NowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// As LmdbBackend::Publish gets it: the client's envelope rebuilt by BuildStoredEnvelope.
WriteOp PublishOp(const std::string& topic, const std::string& payload) {
  EnvelopeFields f;
  f.topic = topic;
  f.type = "test.Message";
  f.payload = payload;
  std::string client;
  BuildEnvelope(f, &client);
  WriteOp op;
  op.kind = OpKind::kPublish;
  op.now_us = NowUs();
  op.publish.topic = topic;
  op.publish.publish_time_us = op.now_us;
  op.publish.id = NewUuidV7(op.now_us / 1000);
  auto in = ReadEnvelope(client);
  if (in.ok()) BuildStoredEnvelope(**in, op.publish.id, op.now_us, "writer-test", &op.publish.envelope);
  return op;
}

WriteOp CreateSubOp(const std::string& topic, const std::string& name) {
  WriteOp op;
  op.kind = OpKind::kCreateSub;
  op.now_us = NowUs();
  op.sub_config.topic = topic;
  op.sub_config.name = name;
  op.sub_config.start = StartPointKind::kEarliest;
  return op;
}

// As LmdbBackend::FlushAcks builds it: the new floor and the seqs acked above it.
WriteOp AckOp(uint32_t sub_id, uint64_t floor, std::vector<uint64_t> above) {
  WriteOp op;
  op.kind = OpKind::kAck;
  op.now_us = NowUs();
  op.sub_id = sub_id;
  op.floor = floor;
  op.acked_above = above.size();
  op.seqs = std::move(above);
  return op;
}

std::string PayloadOf(const std::string& envelope) {
  auto env = ReadEnvelope(envelope);
  if (!env.ok() || (*env)->payload() == nullptr) return "<unreadable>";
  return std::string(reinterpret_cast<const char*>((*env)->payload()->data()), (*env)->payload()->size());
}

struct StoredMessage {
  uint64_t seq = 0;  // as written into the envelope
  std::string payload;
};

// Reads a message the way the loop does: a fresh read-only transaction of its own.
std::optional<StoredMessage> ReadMessage(Env* env, uint32_t topic_id, uint64_t seq) {
  ReadTxn read(env);
  if (!read.Begin().ok()) return std::nullopt;
  SeqKey key(topic_id, seq);
  MDB_val k = MdbVal(key.bytes, sizeof key.bytes), v;
  if (mdb_get(read.txn(), env->dbi().messages, &k, &v) != 0) return std::nullopt;
  const char* p = static_cast<const char*>(v.mv_data);
  MessageHeader h;
  if (!h.Decode(p, v.mv_size)) return std::nullopt;
  std::string envelope(h.Envelope(p));  // a copy: FlatBuffers need the alignment LMDB values lack
  auto parsed = ReadEnvelope(envelope);
  if (!parsed.ok()) return std::nullopt;
  return StoredMessage{(*parsed)->seq(), PayloadOf(envelope)};
}

// Where an op came back: the index of its Batch in the order TakeCompleted handed them out.
struct Returned {
  size_t batch = 0;
  const WriteOp* op = nullptr;
};

class WriterTest : public ::testing::Test {
 protected:
  ~WriterTest() override {
    if (writer_) writer_->Stop();
  }

  void OpenEnv(Durability durability) {
    config_.durability = durability;
    auto env = Env::Open(dir_.path(), config_);
    ASSERT_TRUE(env.ok()) << env.status().ToString();
    env_ = std::move(*env);
  }

  // Opens the env and a loaded writer; Start() is left to the test (ApplyNow must come before it).
  void OpenWriter(Durability durability) {
    OpenEnv(durability);
    if (env_ == nullptr) return;
    writer_ = std::make_unique<Writer>(env_.get(), config_, std::map<std::string, TopicConfig>{}, [this] {
      // Runs on the writer (or syncer) thread with the writer's lock held: count and signal only.
      std::lock_guard lock(notify_mu_);
      ++notifications_;
      notify_cv_.notify_all();
    });
    Status s = writer_->Load();
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  void StartWriter(Durability durability) {
    OpenWriter(durability);
    if (writer_ != nullptr) writer_->Start();
  }

  // Moves what the writer completed into batches_; `on_new` sees each new batch as it arrives.
  void Drain(const std::function<void(const Batch&)>& on_new = {}) {
    std::vector<Batch> got;
    writer_->TakeCompleted(&got);
    for (Batch& b : got) {
      batches_.push_back(std::move(b));
      if (on_new) on_new(batches_.back());
    }
  }

  // Drains until `done()` holds or the deadline passes; woken by `notify`, never by a sleep.
  bool WaitUntil(const std::function<bool()>& done, const std::function<void(const Batch&)>& on_new = {}) {
    const auto deadline = std::chrono::steady_clock::now() + kDeadline;
    for (;;) {
      uint64_t seen;
      {
        std::lock_guard lock(notify_mu_);
        seen = notifications_;
      }
      Drain(on_new);
      if (done()) return true;
      std::unique_lock lock(notify_mu_);
      if (!notify_cv_.wait_until(lock, deadline, [&] { return notifications_ != seen; })) {
        lock.unlock();
        Drain(on_new);
        return done();
      }
    }
  }

  // Enqueues `count` publishes to `topic` in calls of `per_call` ops; returns their ids in order.
  std::vector<Uuid> EnqueuePublishes(const std::string& topic, int count, int per_call) {
    std::vector<Uuid> ids;
    std::vector<WriteOp> ops;
    for (int i = 0; i < count; ++i) {
      ops.push_back(PublishOp(topic, "m" + std::to_string(ids.size())));
      ids.push_back(ops.back().publish.id);
      if (static_cast<int>(ops.size()) == per_call || i + 1 == count) writer_->Enqueue(&ops);
    }
    return ids;
  }

  std::vector<Returned> ReturnedOps(OpKind kind) const {
    std::vector<Returned> out;
    for (size_t b = 0; b < batches_.size(); ++b) {
      for (const WriteOp& op : batches_[b].ops) {
        if (op.kind == kind) out.push_back({b, &op});
      }
    }
    return out;
  }

  size_t CountReturned(OpKind kind) const { return ReturnedOps(kind).size(); }

  std::optional<Returned> FindPublish(const Uuid& id) const {
    for (const Returned& r : ReturnedOps(OpKind::kPublish)) {
      if (r.op->publish.id == id) return r;
    }
    return std::nullopt;
  }

  // The first batch carrying a snapshot of `topic` that covers `seq` (the message is readable).
  std::optional<size_t> FirstSnapshotCovering(const std::string& topic, uint64_t seq) const {
    for (size_t b = 0; b < batches_.size(); ++b) {
      for (const TopicSnapshot& t : batches_[b].topics) {
        if (t.name == topic && t.rec.last_seq >= seq) return b;
      }
    }
    return std::nullopt;
  }

  // Every publish in `ids` came back exactly once, OK, in enqueue order, with seqs first_seq.. in order.
  void ExpectPublishesInOrder(const std::vector<Uuid>& ids, uint64_t first_seq) const {
    std::map<Uuid, size_t> index;
    for (size_t i = 0; i < ids.size(); ++i) index[ids[i]] = i;
    std::vector<size_t> order;
    for (const Returned& r : ReturnedOps(OpKind::kPublish)) {
      auto it = index.find(r.op->publish.id);
      if (it == index.end()) continue;
      EXPECT_TRUE(r.op->status.ok()) << "publish " << it->second << ": " << r.op->status.ToString();
      EXPECT_EQ(r.op->publish_result.seq, first_seq + it->second) << "publish " << it->second;
      EXPECT_FALSE(r.op->publish_result.duplicate) << "publish " << it->second;
      order.push_back(it->second);
    }
    std::vector<size_t> expected(ids.size());
    for (size_t i = 0; i < expected.size(); ++i) expected[i] = i;
    EXPECT_EQ(order, expected) << "publishes came back missing, twice or out of enqueue order";
  }

  // Opens a second writer on the env (not started) and loads what the store holds.
  std::unique_ptr<Writer> LoadedCopy() {
    auto w = std::make_unique<Writer>(env_.get(), config_, std::map<std::string, TopicConfig>{}, [] {});
    Status s = w->Load();
    EXPECT_TRUE(s.ok()) << s.ToString();
    return w;
  }

  static const WriterTopic* FindTopic(const Writer& w, const std::string& name) {
    for (const auto& [id, t] : w.topics()) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }

  // Creates subscription "s1" on kTopic and publishes `count` messages, all committed; returns its id.
  uint32_t SubscribeAndPublish(int count) {
    std::vector<WriteOp> ops;
    ops.push_back(CreateSubOp(kTopic, "s1"));
    writer_->Enqueue(&ops);
    std::vector<Uuid> ids = EnqueuePublishes(kTopic, count, count);
    EXPECT_TRUE(WaitUntil([&] { return CountReturned(OpKind::kCreateSub) == 1 &&
                                       CountReturned(OpKind::kPublish) == ids.size(); }));
    auto created = ReturnedOps(OpKind::kCreateSub);
    if (created.empty()) return 0;
    EXPECT_TRUE(created[0].op->status.ok()) << created[0].op->status.ToString();
    EXPECT_NE(created[0].op->sub_record.id, 0u);
    return created[0].op->sub_record.id;
  }

  TempDir dir_;
  BrokerConfig config_;
  std::unique_ptr<Env> env_;
  std::unique_ptr<Writer> writer_;
  std::vector<Batch> batches_;

  std::mutex notify_mu_;
  std::condition_variable notify_cv_;
  uint64_t notifications_ = 0;
};

class WriterDurabilityTest : public WriterTest, public ::testing::WithParamInterface<Durability> {};

std::string DurabilityName(const ::testing::TestParamInfo<Durability>& info) {
  switch (info.param) {
    case Durability::kSync: return "Sync";
    case Durability::kBatch: return "Batch";
    case Durability::kNone: return "None";
  }
  return "Unknown";
}

// ---- durability "sync": readable first, acknowledged once flushed ----------------------------------

TEST_F(WriterTest, SyncHandsBackTopicsBeforeOpsAndOpsInEnqueueOrder) {
  StartWriter(Durability::kSync);
  ASSERT_NE(writer_, nullptr);
  constexpr int kCount = 50;
  std::vector<Uuid> ids = EnqueuePublishes(kTopic, kCount, 7);
  ASSERT_TRUE(WaitUntil([&] { return CountReturned(OpKind::kPublish) >= kCount; }))
      << CountReturned(OpKind::kPublish) << " of " << kCount << " publishes came back";
  writer_->Stop();
  Drain();
  EXPECT_TRUE(writer_->stopped());

  ExpectPublishesInOrder(ids, 1);
  EXPECT_EQ(CountReturned(OpKind::kPublish), static_cast<size_t>(kCount));
  for (size_t b = 0; b < batches_.size(); ++b) {
    // Each commit comes back in two halves: snapshots (readable), then ops (durable).
    EXPECT_TRUE(batches_[b].ops.empty() || batches_[b].topics.empty()) << "batch " << b << " was not split";
  }
  for (const Returned& r : ReturnedOps(OpKind::kPublish)) {
    auto readable = FirstSnapshotCovering(kTopic, r.op->publish_result.seq);
    ASSERT_TRUE(readable.has_value()) << "no topic snapshot covers seq " << r.op->publish_result.seq;
    EXPECT_LE(*readable, r.batch) << "seq " << r.op->publish_result.seq
                                  << " was acknowledged before its topic snapshot went out";
  }
}

TEST_F(WriterTest, SyncHandedBackMessagesAreReadableAndSurviveReopen) {
  StartWriter(Durability::kSync);
  ASSERT_NE(writer_, nullptr);
  constexpr int kCount = 50;
  std::vector<Uuid> ids = EnqueuePublishes(kTopic, kCount, 10);
  size_t checked_publishes = 0, checked_snapshots = 0;
  // Checked as each batch arrives, with a fresh read transaction, as the loop would read.
  auto check = [&](const Batch& b) {
    for (const TopicSnapshot& t : b.topics) {
      if (t.rec.messages == 0) continue;
      auto m = ReadMessage(env_.get(), t.rec.id, t.rec.last_seq);
      EXPECT_TRUE(m.has_value()) << "snapshot of seq " << t.rec.last_seq << " came before the message is readable";
      ++checked_snapshots;
    }
    for (const WriteOp& op : b.ops) {
      if (op.kind != OpKind::kPublish || !op.status.ok()) continue;
      auto m = ReadMessage(env_.get(), op.topic_id, op.publish_result.seq);
      ASSERT_TRUE(m.has_value()) << "seq " << op.publish_result.seq << " was acknowledged but is not readable";
      EXPECT_EQ(m->seq, op.publish_result.seq);
      EXPECT_EQ(m->payload, "m" + std::to_string(op.publish_result.seq - 1));
      ++checked_publishes;
    }
  };
  ASSERT_TRUE(WaitUntil([&] { return CountReturned(OpKind::kPublish) >= kCount; }, check));
  EXPECT_EQ(checked_publishes, static_cast<size_t>(kCount));
  EXPECT_GT(checked_snapshots, 0u);
  ExpectPublishesInOrder(ids, 1);
  const uint32_t topic_id = ReturnedOps(OpKind::kPublish).front().op->topic_id;

  writer_->Stop();
  writer_.reset();
  env_.reset();
  OpenEnv(Durability::kSync);
  ASSERT_NE(env_, nullptr);
  for (uint64_t seq = 1; seq <= kCount; ++seq) {
    auto m = ReadMessage(env_.get(), topic_id, seq);
    ASSERT_TRUE(m.has_value()) << "seq " << seq << " is gone after reopening";
    EXPECT_EQ(m->seq, seq);
    EXPECT_EQ(m->payload, "m" + std::to_string(seq - 1));
  }
  auto loaded = LoadedCopy();
  const WriterTopic* t = FindTopic(*loaded, kTopic);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->rec.last_seq, static_cast<uint64_t>(kCount));
  EXPECT_EQ(t->rec.messages, static_cast<uint64_t>(kCount));
}

// The writer keeps data.mdb preallocated as the store grows. A commit that leaves between an eighth and
// a half of the file's tail is not followed by a refill at once (the busy rule); the writer refills it
// once idle, when the syncer has released the batch. Without that, the tail would stay short.
TEST_F(WriterTest, AnIdleWriterRefillsTheStoreFilesTail) {
  StartWriter(Durability::kSync);
  ASSERT_NE(writer_, nullptr);
  const auto path = dir_.path() / "store" / "data.mdb";
  auto used = [&] {
    MDB_envinfo info;
    MDB_stat stat;
    EXPECT_EQ(mdb_env_info(env_->env(), &info), 0);
    EXPECT_EQ(mdb_env_stat(env_->env(), &stat), 0);
    return (info.me_last_pgno + 1) * stat.ms_psize;
  };
  // Open preallocated 1 MiB (a quarter of a small store is less). 9 messages of 64 KiB in one batch
  // take about 620 KiB of it: more than half, less than seven eighths.
  ASSERT_EQ(std::filesystem::file_size(path), used() + (1 << 20));
  std::vector<WriteOp> ops;
  for (int i = 0; i < 9; ++i) ops.push_back(PublishOp(kTopic, std::string(64 << 10, 'x')));
  writer_->Enqueue(&ops);
  ASSERT_TRUE(WaitUntil([&] { return CountReturned(OpKind::kPublish) >= 9; }));
  const uint64_t full = used() + (1 << 20);
  // Bounded: the refill is four 256 KiB steps, each written and flushed.
  const auto deadline = std::chrono::steady_clock::now() + kDeadline;
  while (std::filesystem::file_size(path) < full && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(std::filesystem::file_size(path), full) << "used " << used();
  writer_->Stop();
  EXPECT_EQ(env_->file_size(), full);
}

// A commit whose flush fails (EIO) may have lost the meta pages of the commits held before it, and
// Linux reports a failed writeback only once: the syncer's next flush would succeed. So those held
// batches must come back failed, not durable.
TEST_F(WriterTest, AFailedCommitFlushFailsTheBatchesHeldBeforeIt) {
  config_.preallocate = 0;  // no flushes of its own in between
  StartWriter(Durability::kSync);
  ASSERT_NE(writer_, nullptr);
  mdb_filehandle_t lmdb_fd;
  ASSERT_EQ(mdb_env_get_fd(env_->env(), &lmdb_fd), 0);
  {
    std::lock_guard lock(flush_hook::mu);
    flush_hook::fd = lmdb_fd;
    flush_hook::calls = 0;
    flush_hook::released = false;
  }
  // A commits; its flush is held while B is queued, so that A's meta page waits for B's flush.
  std::vector<Uuid> a = EnqueuePublishes(kTopic, 1, 1);
  {
    std::unique_lock lock(flush_hook::mu);
    ASSERT_TRUE(flush_hook::cv.wait_for(lock, kDeadline, [] { return flush_hook::calls >= 1; }));
  }
  std::vector<Uuid> b = EnqueuePublishes(kTopic, 1, 1);
  {
    std::lock_guard lock(flush_hook::mu);
    flush_hook::released = true;
    flush_hook::cv.notify_all();
  }
  const bool returned = WaitUntil([&] { return CountReturned(OpKind::kPublish) >= 2; });
  {
    std::lock_guard lock(flush_hook::mu);
    flush_hook::fd = -1;
  }
  ASSERT_TRUE(returned);
  auto first = FindPublish(a[0]);
  auto second = FindPublish(b[0]);
  ASSERT_TRUE(first && second);
  EXPECT_FALSE(second->op->status.ok());
  EXPECT_FALSE(first->op->status.ok()) << "A was answered as durable after a flush that may have lost it";
  EXPECT_NE(first->op->status.message().find("Input/output error"), std::string::npos)
      << first->op->status.ToString();
}

// ---- durability "batch" and "none": one hand-back per batch -------------------------------------------

class WriterUnsplitTest : public WriterDurabilityTest {};

TEST_P(WriterUnsplitTest, EachBatchComesBackOnceWithTopicsAndOps) {
  StartWriter(GetParam());
  ASSERT_NE(writer_, nullptr);
  constexpr int kCount = 50;
  std::vector<Uuid> ids = EnqueuePublishes(kTopic, kCount, 7);
  ASSERT_TRUE(WaitUntil([&] { return CountReturned(OpKind::kPublish) >= kCount; }));
  writer_->Stop();
  Drain();

  ExpectPublishesInOrder(ids, 1);
  EXPECT_EQ(CountReturned(OpKind::kPublish), static_cast<size_t>(kCount));
  for (size_t b = 0; b < batches_.size(); ++b) {
    const Batch& batch = batches_[b];
    EXPECT_FALSE(batch.ops.empty()) << "batch " << b << " came back without its ops";
    uint64_t last_seq = 0;
    for (const WriteOp& op : batch.ops) last_seq = std::max(last_seq, op.publish_result.seq);
    const TopicSnapshot* snap = nullptr;
    for (const TopicSnapshot& t : batch.topics) {
      if (t.name == kTopic) snap = &t;
    }
    ASSERT_NE(snap, nullptr) << "batch " << b << " came back without its topic snapshot";
    EXPECT_EQ(snap->rec.last_seq, last_seq) << "batch " << b;
  }
}

INSTANTIATE_TEST_SUITE_P(Durabilities, WriterUnsplitTest, ::testing::Values(Durability::kBatch, Durability::kNone),
                         DurabilityName);

// ---- lazy acks -----------------------------------------------------------------------------------------

TEST_P(WriterDurabilityTest, LoneAckIsCommittedAndStored) {
  StartWriter(GetParam());
  ASSERT_NE(writer_, nullptr);
  const uint32_t sub = SubscribeAndPublish(5);
  ASSERT_NE(sub, 0u);
  const size_t batches_before = batches_.size();

  writer_->Enqueue(AckOp(sub, 3, {5}));
  ASSERT_TRUE(WaitUntil([&] { return CountReturned(OpKind::kAck) == 1; })) << "a lone ack was never committed";
  const Returned ack = ReturnedOps(OpKind::kAck).front();
  EXPECT_TRUE(ack.op->status.ok()) << ack.op->status.ToString();
  EXPECT_GE(ack.batch, batches_before);
  EXPECT_EQ(batches_[ack.batch].ops.size(), 1u);

  writer_->Stop();
  ASSERT_EQ(writer_->subs().count(sub), 1u);
  EXPECT_EQ(writer_->subs().at(sub).rec.floor, 3u);
  EXPECT_EQ(writer_->subs().at(sub).acked_above, 1u);
  auto loaded = LoadedCopy();
  ASSERT_EQ(loaded->subs().count(sub), 1u);
  EXPECT_EQ(loaded->subs().at(sub).rec.floor, 3u) << "the ack's floor did not reach the store";
  EXPECT_EQ(loaded->subs().at(sub).acked_above, 1u) << "the ack of seq 5 did not reach the store";
}

// ---- bundles: all or nothing, each on its own, in one batch ------------------------------------------

WriteOp BundleOp(std::vector<KvReadCheck> reads, std::vector<KvMutation> writes,
                 std::vector<std::pair<std::string, std::string>> publishes) {
  WriteOp op;
  op.kind = OpKind::kBundle;
  op.now_us = NowUs();
  op.bundle.keyspace = "plugin";
  op.bundle.version = 7;
  op.bundle.reads = std::move(reads);
  op.bundle.writes = std::move(writes);
  for (const auto& [topic, payload] : publishes) op.bundle.publishes.push_back(PublishOp(topic, payload).publish);
  return op;
}

// The value of the plugin key `key` as stored (after its 8-byte version), or nullopt when absent.
std::optional<std::string> StoredKey(Env* env, const std::string& key) {
  ReadTxn read(env);
  if (!read.Begin().ok()) return std::nullopt;
  std::string k = KeyspaceKey("plugin", key);
  MDB_val mk = MdbVal(k), v;
  if (mdb_get(read.txn(), env->dbi().kv, &mk, &v) != 0 || v.mv_size < 8) return std::nullopt;
  return std::string(static_cast<const char*>(v.mv_data) + 8, v.mv_size - 8);
}

// A bundle shares its batch's transaction: one whose publish is refused after it wrote a key and
// published must leave nothing behind (no key, no message, no seq used), and the ops around it commit.
TEST_F(WriterTest, ARefusedBundleLeavesNoTraceAndTheRestOfItsBatchCommits) {
  config_.durability = Durability::kSync;
  OpenEnv(Durability::kSync);
  ASSERT_NE(env_, nullptr);
  TopicConfig small;
  small.max_messages = 1;  // on_full "reject", and no subscription to let a message go
  Writer writer(env_.get(), config_, {{"small", small}}, [] {});
  ASSERT_TRUE(writer.Load().ok());
  std::vector<TopicSnapshot> topics;
  std::vector<WriteOp> fill;
  fill.push_back(PublishOp("small", "fills it"));
  ASSERT_TRUE(writer.ApplyNow(&fill, &topics).ok());

  std::vector<WriteOp> ops;
  ops.push_back(PublishOp(kTopic, "before"));
  ops.push_back(BundleOp({}, {{"a", "refused", false}}, {{kTopic, "refused 1"}, {"small", "refused 2"}}));
  ops.push_back(BundleOp({{"k", 0}}, {{"b", "kept", false}}, {{kTopic, "kept"}}));
  ops.push_back(BundleOp({{"a", 0}}, {{"c", "kept too", false}}, {}));     // "a" was never written
  ops.push_back(BundleOp({{"b", 0}}, {{"d", "conflicted", false}}, {}));  // "b" was, just before
  ops.push_back(BundleOp({}, {{"e", "refused at once", false}}, {{"small", "refused 3"}}));
  (void)writer.ApplyNow(&ops, &topics);
  ASSERT_EQ(ops.size(), 6u);

  EXPECT_TRUE(ops[0].status.ok()) << ops[0].status.ToString();
  EXPECT_EQ(ops[0].publish_result.seq, 1u);
  EXPECT_EQ(ops[1].status.code(), StatusCode::kLimitExceeded) << ops[1].status.ToString();
  EXPECT_NE(ops[1].status.message().find("bundle publish to 'small'"), std::string::npos)
      << ops[1].status.ToString();
  ASSERT_TRUE(ops[2].status.ok()) << ops[2].status.ToString();
  EXPECT_EQ(ops[2].bundle_result.outcome, BundleOutcome::kCommitted);
  ASSERT_EQ(ops[2].bundle_result.published.size(), 1u);
  EXPECT_EQ(ops[2].bundle_result.published[0].seq, 2u) << "the refused bundle's publish kept its seq";
  EXPECT_TRUE(ops[3].status.ok()) << ops[3].status.ToString();
  EXPECT_EQ(ops[3].bundle_result.outcome, BundleOutcome::kCommitted);
  EXPECT_TRUE(ops[4].status.ok()) << ops[4].status.ToString();
  EXPECT_EQ(ops[4].bundle_result.outcome, BundleOutcome::kConflict);
  EXPECT_NE(ops[4].bundle_result.message.find("key 'b' changed"), std::string::npos)
      << ops[4].bundle_result.message;
  EXPECT_EQ(ops[5].status.code(), StatusCode::kLimitExceeded) << ops[5].status.ToString();
  // The refused bundle's publishes are back in it, whole, for the loop to count.
  ASSERT_EQ(ops[1].bundle.publishes.size(), 2u);
  EXPECT_EQ(PayloadOf(ops[1].bundle.publishes[1].envelope), "refused 2");

  EXPECT_EQ(StoredKey(env_.get(), "a"), std::nullopt);
  EXPECT_EQ(StoredKey(env_.get(), "b"), "kept");
  EXPECT_EQ(StoredKey(env_.get(), "c"), "kept too");
  EXPECT_EQ(StoredKey(env_.get(), "d"), std::nullopt);
  EXPECT_EQ(StoredKey(env_.get(), "e"), std::nullopt);
  auto copy = LoadedCopy();
  const WriterTopic* orders = FindTopic(*copy, kTopic);
  ASSERT_NE(orders, nullptr);
  EXPECT_EQ(orders->rec.last_seq, 2u);
  EXPECT_EQ(orders->rec.messages, 2u);
  ASSERT_NE(FindTopic(*copy, "small"), nullptr);
  EXPECT_EQ(FindTopic(*copy, "small")->rec.messages, 1u);
  ASSERT_NE(orders->rec.id, 0u);
  auto second = ReadMessage(env_.get(), orders->rec.id, 2);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->payload, "kept");
  EXPECT_EQ(ReadMessage(env_.get(), orders->rec.id, 3), std::nullopt);
}

// A bundle acks its stored input in its own transaction; one for an input acked already (applied
// before) applies nothing: no second message, no key overwritten, whether the ack is a row of `acks`
// or under the floor. Its publishes have no dedupe entries, so the ack is all that keeps them to one.
TEST_F(WriterTest, ABundleWhoseInputIsAckedAlreadyAppliesNothingAgain) {
  OpenWriter(Durability::kSync);
  ASSERT_NE(writer_, nullptr);
  std::vector<TopicSnapshot> topics;
  std::vector<WriteOp> setup;
  setup.push_back(CreateSubOp(kTopic, "s1"));
  setup.push_back(PublishOp(kTopic, "input"));
  ASSERT_TRUE(writer_->ApplyNow(&setup, &topics).ok());
  const uint32_t sub = setup[0].sub_record.id;
  ASSERT_NE(sub, 0u);
  auto bundle = [&](const std::string& value) {
    WriteOp op = BundleOp({}, {{"k", value, false}}, {{"out", "effect"}});
    op.sub_id = sub;
    op.seq = 1;
    op.bundle.publishes[0].dedupe = false;  // as LmdbBackend sends a stored input's
    return op;
  };
  std::vector<WriteOp> first;
  first.push_back(bundle("first"));
  ASSERT_TRUE(writer_->ApplyNow(&first, &topics).ok());
  ASSERT_EQ(first[0].bundle_result.published.size(), 1u);
  std::vector<WriteOp> again;
  again.push_back(bundle("again"));
  ASSERT_TRUE(writer_->ApplyNow(&again, &topics).ok()) << again[0].status.ToString();
  EXPECT_EQ(again[0].bundle_result.outcome, BundleOutcome::kLeaseLost);
  EXPECT_TRUE(again[0].bundle_result.published.empty());
  EXPECT_NE(again[0].bundle_result.message.find("its input (seq 1) is acked already"), std::string::npos)
      << again[0].bundle_result.message;
  std::vector<WriteOp> under_floor;
  under_floor.push_back(AckOp(sub, 1, {}));
  under_floor.push_back(bundle("under the floor"));
  ASSERT_TRUE(writer_->ApplyNow(&under_floor, &topics).ok());
  EXPECT_EQ(under_floor[1].bundle_result.outcome, BundleOutcome::kLeaseLost);
  EXPECT_EQ(StoredKey(env_.get(), "k"), "first");
  auto copy = LoadedCopy();
  const WriterTopic* out = FindTopic(*copy, "out");
  ASSERT_NE(out, nullptr);
  EXPECT_EQ(out->rec.messages, 1u) << "the effect was published twice";
}

// A duplicate publish writes nothing: its commit is empty, and under "sync" it must still come back
// only after the transaction it answers from, with the original's seq (the path of a publisher that
// retries after a lost PublishAck).
TEST_F(WriterTest, SyncDuplicatePublishComesBackWithTheOriginalSeq) {
  StartWriter(Durability::kSync);
  ASSERT_NE(writer_, nullptr);
  WriteOp first = PublishOp(kTopic, "once");
  first.publish.dedupe = true;
  WriteOp again = first;
  WriteOp later = first;
  writer_->Enqueue(std::move(first));
  writer_->Enqueue(std::move(again));  // possibly in the same batch, possibly an empty commit behind it
  ASSERT_TRUE(WaitUntil([&] { return CountReturned(OpKind::kPublish) == 2; }));
  writer_->Enqueue(std::move(later));  // an empty commit with nothing held
  ASSERT_TRUE(WaitUntil([&] { return CountReturned(OpKind::kPublish) == 3; }));
  writer_->Stop();
  Drain();
  auto publishes = ReturnedOps(OpKind::kPublish);
  ASSERT_EQ(publishes.size(), 3u);
  for (const Returned& r : publishes) ASSERT_TRUE(r.op->status.ok()) << r.op->status.ToString();
  EXPECT_FALSE(publishes[0].op->publish_result.duplicate);
  EXPECT_TRUE(publishes[1].op->publish_result.duplicate);
  EXPECT_TRUE(publishes[2].op->publish_result.duplicate);
  EXPECT_EQ(publishes[1].op->publish_result.seq, publishes[0].op->publish_result.seq);
  EXPECT_EQ(publishes[2].op->publish_result.seq, publishes[0].op->publish_result.seq);
  EXPECT_EQ(writer_->topics().begin()->second.rec.messages, 1u) << "the duplicate was stored again";
}

// Durability "batch" owes a sync after a commit (at the latest batch_interval after the last one); a
// lone ack must not wait for it, only for kLazyAckDelay.
TEST_F(WriterTest, BatchLoneAckDoesNotWaitForThePendingSync) {
  config_.batch_interval = std::chrono::hours(1);  // far beyond the wait below
  StartWriter(Durability::kBatch);
  ASSERT_NE(writer_, nullptr);
  const uint32_t sub = SubscribeAndPublish(2);  // committed, its sync still pending
  ASSERT_NE(sub, 0u);
  writer_->Enqueue(AckOp(sub, 2, {}));
  EXPECT_TRUE(WaitUntil([&] { return CountReturned(OpKind::kAck) == 1; }))
      << "a lone ack waited for the batch sync instead of kLazyAckDelay";
  writer_->Stop();
  Drain();
  auto acks = ReturnedOps(OpKind::kAck);
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_TRUE(acks[0].op->status.ok()) << acks[0].op->status.ToString();
}

TEST_P(WriterDurabilityTest, AckRidesAlongWithAPublish) {
  StartWriter(GetParam());
  ASSERT_NE(writer_, nullptr);
  const uint32_t sub = SubscribeAndPublish(1);
  ASSERT_NE(sub, 0u);

  // Enqueued together: one batch.
  std::vector<WriteOp> together;
  together.push_back(AckOp(sub, 1, {}));
  together.push_back(PublishOp(kTopic, "with-ack"));
  const Uuid with_ack = together.back().publish.id;
  writer_->Enqueue(&together);
  ASSERT_TRUE(WaitUntil([&] { return CountReturned(OpKind::kAck) == 1 && FindPublish(with_ack).has_value(); }));
  Returned first_ack = ReturnedOps(OpKind::kAck)[0];
  EXPECT_TRUE(first_ack.op->status.ok()) << first_ack.op->status.ToString();
  EXPECT_EQ(first_ack.batch, FindPublish(with_ack)->batch) << "an ack enqueued with a publish was committed apart";

  // Enqueued just before a publish while the writer is busy: it must not be committed alone. A write
  // transaction of this thread holds LMDB's writer lock, so the writer thread stays in its commit (of
  // `busy`, or of whatever it took) until both are queued.
  MDB_txn* hold = nullptr;
  ASSERT_EQ(mdb_txn_begin(env_->env(), nullptr, 0, &hold), 0);
  writer_->Enqueue(PublishOp(kTopic, "busy"));
  writer_->Enqueue(AckOp(sub, 2, {}));
  writer_->Enqueue(PublishOp(kTopic, "after-ack"));
  mdb_txn_abort(hold);
  ASSERT_TRUE(WaitUntil([&] { return CountReturned(OpKind::kAck) == 2 && CountReturned(OpKind::kPublish) == 4; }));
  Returned second_ack = ReturnedOps(OpKind::kAck)[1];
  EXPECT_TRUE(second_ack.op->status.ok()) << second_ack.op->status.ToString();
  const auto& ops = batches_[second_ack.batch].ops;
  EXPECT_TRUE(std::any_of(ops.begin(), ops.end(), [](const WriteOp& op) { return op.kind == OpKind::kPublish; }))
      << "an ack enqueued between two publishes was committed alone";

  writer_->Stop();
  auto loaded = LoadedCopy();
  ASSERT_EQ(loaded->subs().count(sub), 1u);
  EXPECT_EQ(loaded->subs().at(sub).rec.floor, 2u);
}

// ---- Stop() loses nothing that was queued ----------------------------------------------------------------

TEST_P(WriterDurabilityTest, StopCommitsEverythingQueued) {
  OpenWriter(GetParam());
  ASSERT_NE(writer_, nullptr);
  // The subscription exists before Start(), as configured ones do.
  std::vector<WriteOp> setup;
  setup.push_back(CreateSubOp(kTopic, "s1"));
  std::vector<TopicSnapshot> snapshots;
  Status s = writer_->ApplyNow(&setup, &snapshots);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const uint32_t sub = setup[0].sub_record.id;
  ASSERT_NE(sub, 0u);
  writer_->Start();

  constexpr int kCount = 30;
  std::vector<Uuid> ids = EnqueuePublishes(kTopic, kCount, 10);
  writer_->Enqueue(AckOp(sub, 2, {4}));
  writer_->Stop();
  EXPECT_TRUE(writer_->stopped());
  Drain();

  ExpectPublishesInOrder(ids, 1);
  auto acks = ReturnedOps(OpKind::kAck);
  ASSERT_EQ(acks.size(), 1u) << "the queued ack was lost by Stop()";
  EXPECT_TRUE(acks[0].op->status.ok()) << acks[0].op->status.ToString();
  auto loaded = LoadedCopy();
  const WriterTopic* t = FindTopic(*loaded, kTopic);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->rec.last_seq, static_cast<uint64_t>(kCount));
  ASSERT_EQ(loaded->subs().count(sub), 1u);
  EXPECT_EQ(loaded->subs().at(sub).rec.floor, 2u);
  EXPECT_EQ(loaded->subs().at(sub).acked_above, 1u);
}

TEST_P(WriterDurabilityTest, StopCommitsALoneLazyAck) {
  StartWriter(GetParam());
  ASSERT_NE(writer_, nullptr);
  const uint32_t sub = SubscribeAndPublish(3);
  ASSERT_NE(sub, 0u);
  // Stop() right away: the ack is still waiting for company (or just committed), and must not be lost.
  writer_->Enqueue(AckOp(sub, 3, {}));
  writer_->Stop();
  Drain();
  auto acks = ReturnedOps(OpKind::kAck);
  ASSERT_EQ(acks.size(), 1u) << "a lazy ack queued at Stop() was lost";
  EXPECT_TRUE(acks[0].op->status.ok()) << acks[0].op->status.ToString();
  auto loaded = LoadedCopy();
  ASSERT_EQ(loaded->subs().count(sub), 1u);
  EXPECT_EQ(loaded->subs().at(sub).rec.floor, 3u);
}

INSTANTIATE_TEST_SUITE_P(Durabilities, WriterDurabilityTest,
                         ::testing::Values(Durability::kSync, Durability::kBatch, Durability::kNone), DurabilityName);

}  // namespace
}  // namespace sluice::broker::store

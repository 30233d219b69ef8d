// SPDX-License-Identifier: MIT
//
// Store-level tests (broker/store/): key encoding order, value headers, the ack window, the format
// version check, the preallocated file tail and LMDB error mapping. Semantics are tested against the Backend interface in
// backend_semantics_test.cc.
#include <lmdb.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <csignal>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>

#include <gtest/gtest.h>

#include "broker/store/ack_window.h"
#include "broker/store/format.h"
#include "broker/store/lmdb_env.h"

namespace sluice::broker::store {
namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/sluice-store-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

TEST(StoreFormatTest, SeqKeysSortNumerically) {
  // LMDB compares keys with memcmp: big-endian keys must order by (id, seq).
  std::vector<std::pair<uint32_t, uint64_t>> v = {{1, 255}, {1, 256}, {1, 1}, {2, 0}, {1, 1ull << 40}, {0, ~0ull}};
  std::sort(v.begin(), v.end());
  for (size_t i = 1; i < v.size(); ++i) {
    SeqKey a(v[i - 1].first, v[i - 1].second), b(v[i].first, v[i].second);
    EXPECT_LT(std::memcmp(a.bytes, b.bytes, sizeof a.bytes), 0) << i;
    EXPECT_EQ(SeqKey::Id(b.bytes), v[i].first);
    EXPECT_EQ(SeqKey::Seq(b.bytes), v[i].second);
  }
}

TEST(StoreFormatTest, DedupeTimeKeysSortByTime) {
  DedupeTimeKey a(1000, 9, Uuid{9, 9}), b(1001, 1, Uuid{0, 0}), c(70000, 0, Uuid{0, 0});
  EXPECT_LT(std::memcmp(a.bytes, b.bytes, sizeof a.bytes), 0);
  EXPECT_LT(std::memcmp(b.bytes, c.bytes, sizeof b.bytes), 0);
}

TEST(StoreFormatTest, NameKeysGroupBySubscription) {
  EXPECT_LT(NameKey(1, "zzz"), NameKey(2, ""));
  EXPECT_LT(NameKey(1, "a"), NameKey(1, "b"));
  EXPECT_EQ(NameKey(0x01020304, "k").substr(0, 4), std::string("\x01\x02\x03\x04", 4));
}

TEST(StoreFormatTest, MessageHeaderRoundTripsAndChecksLengths) {
  MessageHeader h;
  h.publish_time_us = -5;
  h.id = Uuid{3, 4};
  h.key_len = 2;
  h.env_len = 3;
  h.reply_token = 99;
  std::string v(MessageHeader::kSize, '\0');
  h.Encode(v.data());
  v += "kkEEE";
  MessageHeader d;
  ASSERT_TRUE(d.Decode(v.data(), v.size()));
  EXPECT_EQ(d.publish_time_us, -5);
  EXPECT_EQ(d.id, (Uuid{3, 4}));
  EXPECT_EQ(d.reply_token, 99u);
  EXPECT_EQ(d.Key(v.data()), "kk");
  EXPECT_EQ(d.Envelope(v.data()), "EEE");
  EXPECT_FALSE(d.Decode(v.data(), v.size() - 1));
  EXPECT_FALSE(d.Decode(v.data(), 10));
}

TEST(StoreFormatTest, DeadHeaderRoundTrips) {
  DeadHeader h;
  h.state = DeadHeader::kRedriven;
  h.delivery_count = 5;
  h.dead_lettered_at_us = 77;
  h.reason_len = 1;
  h.error_len = 2;
  h.key_len = 3;
  h.env_len = 4;
  std::string v(DeadHeader::kSize, '\0');
  h.Encode(v.data());
  v += "REEKKKVVVV";
  DeadHeader d;
  ASSERT_TRUE(d.Decode(v.data(), v.size()));
  EXPECT_EQ(d.state, DeadHeader::kRedriven);
  EXPECT_EQ(d.Reason(v.data()), "R");
  EXPECT_EQ(d.Error(v.data()), "EE");
  EXPECT_EQ(d.Key(v.data()), "KKK");
  EXPECT_EQ(d.Envelope(v.data()), "VVVV");
}

TEST(AckWindowTest, InOrderAcksAdvanceTheFloor) {
  AckWindow w(10);
  EXPECT_TRUE(w.IsAcked(10));
  EXPECT_FALSE(w.IsAcked(11));
  for (uint64_t s = 11; s <= 1000; ++s) EXPECT_TRUE(w.Ack(s));
  EXPECT_EQ(w.floor(), 1000u);
  EXPECT_EQ(w.acked_above(), 0u);
  EXPECT_FALSE(w.Ack(500));
}

TEST(AckWindowTest, GapsHoldTheFloorUntilFilled) {
  AckWindow w(0);
  EXPECT_TRUE(w.Ack(3));
  EXPECT_TRUE(w.Ack(200));
  EXPECT_FALSE(w.Ack(3));
  EXPECT_EQ(w.floor(), 0u);
  EXPECT_EQ(w.acked_above(), 2u);
  EXPECT_TRUE(w.Ack(1));
  EXPECT_EQ(w.floor(), 1u);
  EXPECT_TRUE(w.Ack(2));
  EXPECT_EQ(w.floor(), 3u);
  EXPECT_EQ(w.acked_above(), 1u);
  EXPECT_TRUE(w.IsAcked(200));
  EXPECT_FALSE(w.IsAcked(199));
}

TEST(AckWindowTest, RandomOrderMatchesAReferenceSet) {
  std::mt19937_64 rng(7);
  std::vector<uint64_t> seqs(5000);
  for (size_t i = 0; i < seqs.size(); ++i) seqs[i] = i + 1;
  std::shuffle(seqs.begin(), seqs.end(), rng);
  AckWindow w(0);
  std::set<uint64_t> acked;
  for (uint64_t s : seqs) {
    w.Ack(s);
    acked.insert(s);
    uint64_t floor = 0;
    while (acked.count(floor + 1)) ++floor;
    ASSERT_EQ(w.floor(), floor);
    ASSERT_EQ(w.acked_above(), acked.size() - floor);
  }
  EXPECT_EQ(w.floor(), 5000u);
}

TEST(AckWindowTest, AckThroughCountsOnlyNewlyAcked) {
  AckWindow w(0);
  w.Ack(5);
  w.Ack(70);
  w.Ack(130);
  EXPECT_EQ(w.AckThrough(100), 98u);  // 1..100 minus 5 and 70
  EXPECT_EQ(w.floor(), 100u);
  EXPECT_EQ(w.acked_above(), 1u);
  EXPECT_TRUE(w.Ack(101));
  EXPECT_EQ(w.AckThrough(129), 28u);
  EXPECT_EQ(w.floor(), 130u);
  EXPECT_EQ(w.acked_above(), 0u);
  EXPECT_EQ(w.AckThrough(50), 0u);
}

TEST(LmdbStatusTest, MapsErrors) {
  EXPECT_TRUE(LmdbStatus(MDB_SUCCESS, "x").ok());
  EXPECT_EQ(LmdbStatus(MDB_MAP_FULL, "put").code(), StatusCode::kStorageFull);
  EXPECT_EQ(LmdbStatus(ENOSPC, "put").code(), StatusCode::kStorageFull);
  EXPECT_EQ(LmdbStatus(MDB_NOTFOUND, "get").code(), StatusCode::kNotFound);
  EXPECT_EQ(LmdbStatus(MDB_CORRUPTED, "get").code(), StatusCode::kCorruption);
  Status io = LmdbStatus(EIO, "committing");
  EXPECT_EQ(io.code(), StatusCode::kIoError);
  EXPECT_NE(io.message().find("committing"), std::string::npos);
}

TEST(EnvTest, RecordsFormatVersionAndRefusesNewer) {
  TempDir dir;
  BrokerConfig config;
  config.map_size = 1 << 20;
  {
    auto env = Env::Open(dir.path(), config);
    ASSERT_TRUE(env.ok()) << env.status().ToString();
    MDB_txn* txn;
    ASSERT_EQ(mdb_txn_begin((*env)->env(), nullptr, MDB_RDONLY, &txn), 0);
    MDB_val k{kMetaFormatVersion.size(), const_cast<char*>(kMetaFormatVersion.data())}, v;
    ASSERT_EQ(mdb_get(txn, (*env)->dbi().meta, &k, &v), 0);
    ASSERT_EQ(v.mv_size, 4u);
    EXPECT_EQ(GetLe<uint32_t>(static_cast<const char*>(v.mv_data)), kFormatVersion);
    mdb_txn_abort(txn);
    // Pretend a future sluice wrote it.
    ASSERT_EQ(mdb_txn_begin((*env)->env(), nullptr, 0, &txn), 0);
    uint32_t future = kFormatVersion + 1;
    MDB_val fv{4, &future};
    ASSERT_EQ(mdb_put(txn, (*env)->dbi().meta, &k, &fv, 0), 0);
    ASSERT_EQ(mdb_txn_commit(txn), 0);
  }
  auto env = Env::Open(dir.path(), config);
  ASSERT_FALSE(env.ok());
  EXPECT_EQ(env.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(env.status().message().find("format version 2"), std::string::npos) << env.status().message();
}

TEST(EnvTest, GrowStopsAtMaxMapSize) {
  TempDir dir;
  BrokerConfig config;
  config.map_size = 1 << 20;
  config.max_map_size = 3 << 20;
  auto env = Env::Open(dir.path(), config);
  ASSERT_TRUE(env.ok());
  EXPECT_TRUE((*env)->Grow());
  EXPECT_EQ((*env)->map_size(), 2u << 20);
  EXPECT_TRUE((*env)->Grow());
  EXPECT_EQ((*env)->map_size(), 3u << 20);
  EXPECT_FALSE((*env)->Grow());
}

TEST(EnvTest, DataDirThatIsAFileIsAnIoError) {
  TempDir dir;
  std::filesystem::path file = dir.path() / "not-a-dir";
  FILE* f = fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fclose(f);
  BrokerConfig config;
  auto env = Env::Open(file, config);
  ASSERT_FALSE(env.ok());
  EXPECT_EQ(env.status().code(), StatusCode::kIoError);
  EXPECT_NE(env.status().message().find("not-a-dir"), std::string::npos) << env.status().message();
}

// Commits `mib` values of 1 MiB each under new keys (overflow pages: `mib` MiB more of the file used).
void PutMebibytes(Env& env, int mib, int first_key = 0) {
  MDB_txn* txn = nullptr;
  ASSERT_EQ(mdb_txn_begin(env.env(), nullptr, 0, &txn), 0);
  std::string value(1 << 20, 'v');
  for (int i = first_key; i < first_key + mib; ++i) {
    std::string key = "k" + std::to_string(i);
    MDB_val k = MdbVal(key), v = MdbVal(value);
    ASSERT_EQ(mdb_put(txn, env.dbi().kv, &k, &v, 0), 0);
  }
  ASSERT_EQ(mdb_txn_commit(txn), 0);
}

// The values PutMebibytes wrote under keys 0 .. mib-1 are all there, unchanged.
void ExpectMebibytes(Env& env, int mib) {
  MDB_txn* txn = nullptr;
  ASSERT_EQ(mdb_txn_begin(env.env(), nullptr, MDB_RDONLY, &txn), 0);
  const std::string value(1 << 20, 'v');
  for (int i = 0; i < mib; ++i) {
    std::string key = "k" + std::to_string(i);
    MDB_val k = MdbVal(key), v;
    ASSERT_EQ(mdb_get(txn, env.dbi().kv, &k, &v), 0) << key;
    EXPECT_EQ(std::string_view(static_cast<const char*>(v.mv_data), v.mv_size), value) << key;
  }
  mdb_txn_abort(txn);
}

uint64_t UsedBytes(Env& env) {
  MDB_envinfo info;
  MDB_stat stat;
  EXPECT_EQ(mdb_env_info(env.env(), &info), 0);
  EXPECT_EQ(mdb_env_stat(env.env(), &stat), 0);
  return (info.me_last_pgno + 1) * stat.ms_psize;
}

struct FileExtent {
  uint64_t size = 0;
  uint64_t allocated = 0;  // bytes of disk blocks: a sparse file has fewer than its size
};
FileExtent DataFile(const std::filesystem::path& data_dir) {
  struct stat st {};
  EXPECT_EQ(stat((data_dir / "store" / "data.mdb").c_str(), &st), 0);
  return {static_cast<uint64_t>(st.st_size), static_cast<uint64_t>(st.st_blocks) * 512};
}

// Whether written zeros take disk blocks here (ext4, XFS, tmpfs do; a compressing file system may not).
bool ZerosTakeBlocks(const std::filesystem::path& dir) {
  struct statfs fs {};
  if (statfs(dir.c_str(), &fs) != 0) return false;
  return fs.f_type == 0xEF53 /* ext2/3/4 */ || fs.f_type == 0x58465342 /* XFS */ || fs.f_type == 0x01021994 /* tmpfs */;
}

// The store under `dir` opened with the default config (preallocate 32 MiB), or null after a failure.
std::unique_ptr<Env> OpenDefault(const std::filesystem::path& dir) {
  auto env = Env::Open(dir, BrokerConfig());
  EXPECT_TRUE(env.ok()) << env.status().ToString();
  return env.ok() ? std::move(*env) : nullptr;
}

// Calls Preallocate(idle) until it writes nothing more, as an idle writer does.
void PreallocateFully(Env& env) {
  for (int i = 0; i < 1024; ++i) {
    Result<bool> wrote = env.Preallocate(true);
    ASSERT_TRUE(wrote.ok()) << wrote.status().ToString();
    if (!*wrote) return;
  }
  FAIL() << "Preallocate kept writing";
}

TEST(EnvTest, PreallocationKeepsAllocatedZerosAheadOfTheLastPage) {
  TempDir dir;  // preallocate 32 MiB: ahead by a quarter of what is used, 1 MiB at least
  std::unique_ptr<Env> env = OpenDefault(dir.path());
  ASSERT_NE(env, nullptr);
  Env& e = *env;
  EXPECT_EQ(DataFile(dir.path()).size, UsedBytes(e) + (1 << 20));
  EXPECT_EQ(e.file_size(), DataFile(dir.path()).size);

  PutMebibytes(e, 16);  // LMDB extends the file past the first MiB ahead
  const uint64_t used = UsedBytes(e);
  PreallocateFully(e);
  ExpectMebibytes(e, 16);
  FileExtent file = DataFile(dir.path());
  EXPECT_EQ(file.size, used + used / 4);
  if (ZerosTakeBlocks(dir.path())) EXPECT_GE(file.allocated, file.size) << "the tail must be written, not a hole";
  // The tail is zeros, and LMDB reads its data as before.
  std::ifstream in(dir.path() / "store" / "data.mdb", std::ios::binary);
  in.seekg(static_cast<std::streamoff>(used));
  std::string tail(file.size - used, 'x');
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  EXPECT_EQ(tail.find_first_not_of('\0'), std::string::npos);
  env.reset();  // close, then reopen on the longer file
  std::unique_ptr<Env> reopened = OpenDefault(dir.path());
  ASSERT_NE(reopened, nullptr);
  EXPECT_GE(reopened->map_size(), file.size);
  ExpectMebibytes(*reopened, 16);
}

// The tail is extended again only once half of it is used, and then to its full length.
TEST(EnvTest, PreallocationRefillsFromHalfTheTail) {
  TempDir dir;
  std::unique_ptr<Env> env = OpenDefault(dir.path());
  ASSERT_NE(env, nullptr);
  Env& e = *env;
  PutMebibytes(e, 32);
  PreallocateFully(e);
  const uint64_t used = UsedBytes(e);
  const uint64_t tail = e.file_size() - used;
  ASSERT_EQ(tail, std::min<uint64_t>(32 << 20, used / 4));
  // Less than half the tail used: nothing is written.
  PutMebibytes(e, static_cast<int>(tail / 2 >> 20) - 1, 100);
  ASSERT_TRUE(e.Preallocate(true).ok());
  EXPECT_EQ(DataFile(dir.path()).size, used + tail);
  // More than half: a busy writer leaves it for an idle moment, which refills it to a quarter of the data.
  PutMebibytes(e, 2, 200);
  Result<bool> busy = e.Preallocate(false);
  ASSERT_TRUE(busy.ok());
  EXPECT_FALSE(*busy);
  PreallocateFully(e);
  uint64_t now_used = UsedBytes(e);
  EXPECT_EQ(DataFile(dir.path()).size, now_used + now_used / 4);
  // Less than an eighth left: even a busy writer extends it, by at least 1 MiB.
  const uint64_t before = e.file_size();
  PutMebibytes(e, static_cast<int>((before - now_used) >> 20), 300);
  ASSERT_LT(e.file_size() - std::min(e.file_size(), UsedBytes(e)), (UsedBytes(e) / 4) / 8 + 1);
  busy = e.Preallocate(false);
  ASSERT_TRUE(busy.ok());
  EXPECT_TRUE(*busy);
  EXPECT_GE(DataFile(dir.path()).size, UsedBytes(e) + (1 << 20));
}

TEST(EnvTest, PreallocationStopsAtTheMapAndIsOffAtZeroAndWithoutSync) {
  TempDir small;
  BrokerConfig config;
  config.map_size = 1 << 20;
  config.max_map_size = 1 << 20;
  auto env = Env::Open(small.path(), config);
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  PreallocateFully(**env);
  EXPECT_EQ(DataFile(small.path()).size, 1u << 20);

  TempDir off;
  config = BrokerConfig();
  config.preallocate = 0;
  env = Env::Open(off.path(), config);
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  PutMebibytes(**env, 4);
  PreallocateFully(**env);
  EXPECT_EQ(DataFile(off.path()).size, UsedBytes(**env));
  EXPECT_EQ((*env)->file_size(), UsedBytes(**env));  // still reported, for the metric

  // Only "sync" preallocates: the others flush on their own schedule.
  TempDir batch;
  config = BrokerConfig();
  config.durability = Durability::kBatch;
  env = Env::Open(batch.path(), config);
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  PreallocateFully(**env);
  EXPECT_EQ(DataFile(batch.path()).size, UsedBytes(**env));
}

// A write ahead that fails (here the file size limit; a full disk alike) is reported, leaves the store
// usable, and is not tried again for 10 s.
TEST(EnvTest, AFailedPreallocationIsReportedAndNotRetriedAtOnce) {
  TempDir dir;
  std::unique_ptr<Env> env = OpenDefault(dir.path());
  ASSERT_NE(env, nullptr);
  Env& e = *env;
  PutMebibytes(e, 8);  // past the preallocated MiB: LMDB extended the file itself
  const uint64_t size = DataFile(dir.path()).size;
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  rlimit limit = old;
  limit.rlim_cur = size;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  Result<bool> failed = e.Preallocate(true);
  Result<bool> backing_off = e.Preallocate(true);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  signal(SIGXFSZ, old_handler);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("preallocating"), std::string::npos) << failed.status().ToString();
  EXPECT_NE(failed.status().message().find("data.mdb"), std::string::npos) << failed.status().ToString();
  ASSERT_TRUE(backing_off.ok());
  EXPECT_FALSE(*backing_off);
  EXPECT_EQ(DataFile(dir.path()).size, size);
  EXPECT_EQ(e.file_size(), size);
  PutMebibytes(e, 1, 100);  // the store still takes writes
  ExpectMebibytes(e, 8);
}

}  // namespace
}  // namespace sluice::broker::store

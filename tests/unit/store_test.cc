// SPDX-License-Identifier: MIT
//
// Store-level tests (broker/store/): key encoding order, value headers, the ack window, the format
// version check and LMDB error mapping. Semantics are tested against the Backend interface in
// backend_semantics_test.cc.
#include <lmdb.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
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

}  // namespace
}  // namespace sluice::broker::store

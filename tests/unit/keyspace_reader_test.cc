// SPDX-License-Identifier: MIT
//
// Tests of KeyspaceReader (broker/store/keyspace_reader.h): it reads one plugin's keys in the layout
// of STORE_FORMAT.md ("Plugin keyspaces") from an environment another process writes, keeps a snapshot
// until End(), follows the writer growing the map, treats a missing "kv" database as empty, and clears
// the reader slot a killed reader left behind. The writer is a forked child with its own LMDB handle
// (LMDB forbids opening one environment twice in a process). Single-threaded.
#include "broker/store/keyspace_reader.h"

#include <lmdb.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "broker/store/format.h"

namespace sluice::broker::store {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;

struct Put {
  std::string keyspace;
  std::string key;
  uint64_t version;
  std::string value;  // a value shorter than the version header when `raw`
  bool raw = false;
};

// Runs `fn` in a child process and returns its exit code.
int InChild(const std::function<int()>& fn) {
  pid_t pid = fork();
  if (pid == 0) _exit(fn());
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

// Writes `puts` into the environment at `dir` from a child process, the way the broker lays them out.
int Write(const fs::path& dir, const std::vector<Put>& puts, size_t map_size = 1 << 20, bool create_kv = true) {
  return InChild([&]() -> int {
    MDB_env* env = nullptr;
    if (mdb_env_create(&env) != 0) return 1;
    mdb_env_set_maxdbs(env, kMaxDbs);
    mdb_env_set_mapsize(env, map_size);
    if (mdb_env_open(env, dir.c_str(), 0, 0640) != 0) return 2;
    MDB_txn* txn = nullptr;
    if (mdb_txn_begin(env, nullptr, 0, &txn) != 0) return 3;
    MDB_dbi meta;
    if (mdb_dbi_open(txn, kDbMeta, MDB_CREATE, &meta) != 0) return 4;
    if (create_kv) {
      MDB_dbi kv;
      if (mdb_dbi_open(txn, kDbKv, MDB_CREATE, &kv) != 0) return 5;
      for (const Put& p : puts) {
        std::string k = KeyspaceKey(p.keyspace, p.key);
        std::string v = p.raw ? p.value : std::string(8, '\0') + p.value;
        if (!p.raw) PutBe64(v.data(), p.version);
        MDB_val key{k.size(), k.data()}, val{v.size(), v.data()};
        if (mdb_put(txn, kv, &key, &val, 0) != 0) return 6;
      }
    }
    if (mdb_txn_commit(txn) != 0) return 7;
    mdb_env_close(env);
    return 0;
  });
}

// The reader slots in use, as mdb_reader_list() shows them, seen from a child process.
int ReaderSlots(const fs::path& dir) {
  return InChild([&dir]() -> int {
    MDB_env* env = nullptr;
    if (mdb_env_create(&env) != 0) return 90;
    mdb_env_set_maxdbs(env, kMaxDbs);
    if (mdb_env_open(env, dir.c_str(), MDB_RDONLY | MDB_NOTLS, 0640) != 0) return 91;
    int lines = 0;
    mdb_reader_list(
        env,
        [](const char* msg, void* ctx) -> int {
          // One header line, then one line per slot; "(no active readers)" when none.
          if (std::string_view(msg).find("pid") == std::string_view::npos &&
              std::string_view(msg).find("no active") == std::string_view::npos) {
            ++*static_cast<int*>(ctx);
          }
          return 0;
        },
        &lines);
    mdb_env_close(env);
    return lines;
  });
}

class KeyspaceReaderTest : public ::testing::Test {
 protected:
  KeyspaceReaderTest() {
    std::string pattern = (fs::temp_directory_path() / "sluice-keyspace-test-XXXXXX").string();
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  ~KeyspaceReaderTest() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::unique_ptr<KeyspaceReader> Open(const std::string& keyspace) {
    auto r = KeyspaceReader::Open(dir_, keyspace);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(*r) : nullptr;
  }

  std::string Get(KeyspaceReader& r, std::string_view key) {
    auto e = r.Get(key);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    if (!e.ok() || !e->has_value()) return "(absent)";
    return std::string((*e)->value) + "@" + std::to_string((*e)->version);
  }

  fs::path dir_;
};

TEST_F(KeyspaceReaderTest, ReadsOneKeyspaceInTheStoreLayout) {
  ASSERT_EQ(Write(dir_, {{"alpha", "a", 7, "A"},
                         {"alpha", "b/1", 8, "B1"},
                         {"alpha", "b/2", 9, std::string("B\0two", 5)},
                         {"alpha2", "b/3", 10, "other keyspace, longer name"},
                         {"beta", "a", 11, "beta's"}}),
            0);
  auto r = Open("alpha");
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(r->Begin().ok());
  EXPECT_EQ(Get(*r, "a"), "A@7");
  EXPECT_EQ(Get(*r, "b/2"), std::string("B\0two", 5) + "@9");
  EXPECT_EQ(Get(*r, "b/3"), "(absent)");
  std::vector<std::string> seen;
  auto collect = [&seen](std::string_view key, const KeyspaceReader::Entry& e) {
    seen.push_back(std::string(key) + "=" + std::string(e.value) + "@" + std::to_string(e.version));
    return true;
  };
  ASSERT_TRUE(r->Scan("", collect).ok());
  EXPECT_THAT(seen, ElementsAre("a=A@7", "b/1=B1@8", std::string("b/2=B\0two@9", 11)));
  seen.clear();
  ASSERT_TRUE(r->Scan("b/", collect).ok());
  EXPECT_EQ(seen.size(), 2u);
  seen.clear();
  ASSERT_TRUE(r->Scan("b/", [&seen](std::string_view key, const KeyspaceReader::Entry&) {
                  seen.emplace_back(key);
                  return false;
                }).ok());
  EXPECT_THAT(seen, ElementsAre("b/1"));
  r->End();
  EXPECT_EQ(r->Get("a").status().code(), StatusCode::kInternal);  // no snapshot
}

TEST_F(KeyspaceReaderTest, ASnapshotHoldsUntilEndAndFollowsAGrowingMap) {
  ASSERT_EQ(Write(dir_, {{"p", "k", 1, "old"}}), 0);
  auto r = Open("p");
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(r->Begin().ok());
  EXPECT_EQ(Get(*r, "k"), "old@1");
  // Another process commits a new value and grows the map far beyond the reader's.
  std::vector<Put> many = {{"p", "k", 2, "new"}};
  for (int i = 0; i < 300; ++i) many.push_back({"p", "fill/" + std::to_string(i), 3, std::string(8000, 'x')});
  ASSERT_EQ(Write(dir_, many, 32 << 20), 0);
  EXPECT_EQ(Get(*r, "k"), "old@1");  // the snapshot is unchanged
  r->End();
  ASSERT_TRUE(r->Begin().ok()) << "the reader must adopt the grown map";
  EXPECT_EQ(Get(*r, "k"), "new@2");
  EXPECT_EQ(Get(*r, "fill/299"), std::string(8000, 'x') + "@3");
  r->End();
}

TEST_F(KeyspaceReaderTest, AMissingKvDatabaseIsAnEmptyKeyspaceUntilCreated) {
  ASSERT_EQ(Write(dir_, {}, 1 << 20, /*create_kv=*/false), 0);
  auto r = Open("p");
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(r->Begin().ok());
  EXPECT_EQ(Get(*r, "k"), "(absent)");
  int calls = 0;
  ASSERT_TRUE(r->Scan("", [&calls](std::string_view, const KeyspaceReader::Entry&) { return ++calls > 0; }).ok());
  EXPECT_EQ(calls, 0);
  r->End();
  ASSERT_EQ(Write(dir_, {{"p", "k", 5, "v"}}), 0);
  ASSERT_TRUE(r->Begin().ok());
  EXPECT_EQ(Get(*r, "k"), "v@5");
  r->End();
}

TEST_F(KeyspaceReaderTest, AValueWithoutItsVersionIsCorruption) {
  ASSERT_EQ(Write(dir_, {{"p", "k", 0, "short", /*raw=*/true}}), 0);
  auto r = Open("p");
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(r->Begin().ok());
  auto e = r->Get("k");
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(e.status().message(), ::testing::HasSubstr("shorter than its version"));
  EXPECT_EQ(r->Scan("", [](std::string_view, const KeyspaceReader::Entry&) { return true; }).code(),
            StatusCode::kCorruption);
}

TEST_F(KeyspaceReaderTest, ClearsTheSlotOfAReaderKilledInATransaction) {
  ASSERT_EQ(Write(dir_, {{"p", "k", 1, "v"}}), 0);
  // A process that keeps the environment open, as the broker does (the last process to open an
  // environment alone resets its reader table, which would hide the stale slot).
  int hold[2], ready[2];
  ASSERT_EQ(pipe(hold), 0);
  ASSERT_EQ(pipe(ready), 0);
  pid_t holder = fork();
  if (holder == 0) {
    close(hold[1]);
    close(ready[0]);
    auto r = KeyspaceReader::Open(dir_, "p");
    // Only once the holder has the environment open may the next reader die in it: otherwise the
    // holder would be the first opener and reset the reader table itself.
    char one = 1;
    (void)!write(ready[1], &one, 1);
    char c;
    ssize_t n = read(hold[0], &c, 1);
    _exit(r.ok() && n == 0 ? 0 : 1);
  }
  close(hold[0]);
  close(ready[1]);
  char opened = 0;
  ASSERT_EQ(read(ready[0], &opened, 1), 1);
  close(ready[0]);
  ASSERT_EQ(InChild([this]() -> int {
              auto r = KeyspaceReader::Open(dir_, "p");
              if (!r.ok() || !(*r)->Begin().ok()) return 1;
              _exit(0);  // dies inside the transaction, as a killed worker does
            }),
            0);
  // The stale slot is there (listed by a plain LMDB handle, which does not check)...
  EXPECT_EQ(ReaderSlots(dir_), 1);
  // ... until a worker opens the keyspace.
  ASSERT_EQ(InChild([this]() -> int { return KeyspaceReader::Open(dir_, "p").ok() ? 0 : 1; }), 0);
  EXPECT_EQ(ReaderSlots(dir_), 0);
  close(hold[1]);
  int status = 0;
  waitpid(holder, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST_F(KeyspaceReaderTest, AMissingStoreIsNotFound) {
  auto r = KeyspaceReader::Open(dir_ / "nothing", "p");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(r.status().message(), (dir_ / "nothing").string() + ": no sluice store here (data.mdb is missing)");
}

}  // namespace
}  // namespace sluice::broker::store

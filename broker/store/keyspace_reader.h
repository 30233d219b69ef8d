// SPDX-License-Identifier: MIT
//
// KeyspaceReader: read-only access to one plugin's keyspace in the broker's LMDB environment, from
// another process (a plugin worker reads its keys directly instead of asking the broker over the
// socket). The layout is fixed by the store (STORE_FORMAT.md, "Plugin keyspaces"): named database
// "kv"; key = keyspace name, one NUL byte, user key; value = the 8-byte big-endian version of the
// bundle that wrote it, then the user value. This module is the only code outside the store that
// knows that layout.
//
// Snapshots: Begin() starts a read transaction and every Get/Scan until End() sees that one committed
// state. The environment is opened with MDB_RDONLY | MDB_NOTLS and one transaction handle is reset and
// renewed, so a snapshot costs no allocation.
//
// Failure modes: the store does not exist (kNotFound naming the path), an LMDB error (LmdbStatus), a
// value shorter than its version header (kCorruption). A "kv" database that the broker has not created
// yet reads as an empty keyspace. When the broker grows the map, the next Begin() adopts the new size.
//
// Library caveats relied on: LMDB allows any number of processes to read an environment while one
// writes, provided each can write the lock file (same user) and none opens the environment twice in
// one process. A reader killed inside a transaction leaves a stale slot in the lock file that pins old
// pages; Open() clears such slots (mdb_reader_check), so a restarted worker cleans up after the one it
// replaces.
//
// Thread-compatible: one thread at a time.
#pragma once

#include <lmdb.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "broker/status.h"

namespace sluice::broker::store {

inline constexpr const char* kDbKv = "kv";

// keyspace + NUL + key: the LMDB key of a plugin's key.
std::string KeyspaceKey(std::string_view keyspace, std::string_view key);

class KeyspaceReader {
 public:
  struct Entry {
    uint64_t version = 0;    // of the bundle that wrote it; never 0 for a present key
    std::string_view value;  // valid until End() or the next Begin()
  };
  using ScanFn = std::function<bool(std::string_view key, const Entry& entry)>;

  // Opens `store_dir` (the broker's <data_dir>/store) read-only for the keyspace `keyspace`.
  static Result<std::unique_ptr<KeyspaceReader>> Open(const std::filesystem::path& store_dir,
                                                       std::string keyspace);
  ~KeyspaceReader();
  KeyspaceReader(const KeyspaceReader&) = delete;
  KeyspaceReader& operator=(const KeyspaceReader&) = delete;

  // Starts a snapshot; a no-op when one is active.
  Status Begin();
  // Ends the snapshot (no-op when none is active). Entries read in it become invalid.
  void End();
  bool active() const { return active_; }

  // The committed value of `key` in the snapshot; nullopt when absent. Needs an active snapshot.
  Result<std::optional<Entry>> Get(std::string_view key);
  // Calls fn for each key starting with `prefix` in key order (keys without the keyspace prefix),
  // until fn returns false. Needs an active snapshot.
  Status Scan(std::string_view prefix, const ScanFn& fn);

  // Stale reader slots cleared when opening, as LMDB counts them (for the log; LMDB may clear slots
  // while counting 0 when it recovers its reader mutex from a dead owner).
  int stale_readers_cleared() const { return stale_readers_cleared_; }

 private:
  KeyspaceReader() = default;
  Status DecodeEntry(const MDB_val& value, Entry* entry) const;

  MDB_env* env_ = nullptr;
  MDB_txn* txn_ = nullptr;
  std::optional<MDB_dbi> dbi_;  // empty until the broker has created "kv"
  bool active_ = false;
  std::string keyspace_;
  std::string prefix_;          // keyspace + NUL
  std::string scratch_;         // the LMDB key of the last Get
  std::filesystem::path path_;
  int stale_readers_cleared_ = 0;
};

}  // namespace sluice::broker::store

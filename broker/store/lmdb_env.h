// SPDX-License-Identifier: MIT
//
// The LMDB environment of the store: opening `<data_dir>/store/` with its named databases, checking the
// recorded format version, growing the map, and the one function that maps LMDB error codes to a
// Status. Env is shared by the writer thread (one write transaction at a time) and the loop thread
// (short read-only transactions, MDB_NOTLS). Growing the map requires that no transaction of this
// process is active (an LMDB rule), so every read transaction holds `resize_mutex()` shared for its
// whole life and Grow() takes it exclusively.
//
// Failure modes: the directory cannot be created or opened (kIoError naming the path), the store was
// written by a newer sluice (kInvalidArgument naming both versions), a record is malformed
// (kCorruption), the map or the disk is full (kStorageFull).
#pragma once

#include <lmdb.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <shared_mutex>
#include <string>
#include <string_view>

#include "broker/options.h"
#include "broker/status.h"

namespace sluice::broker::store {

// The one place LMDB return codes become a Status: MDB_MAP_FULL and ENOSPC are kStorageFull,
// MDB_NOTFOUND kNotFound, MDB_CORRUPTED/MDB_PAGE_NOTFOUND/MDB_INVALID/MDB_VERSION_MISMATCH kCorruption,
// everything else kIoError with mdb_strerror(). `what` says what was being done.
Status LmdbStatus(int rc, std::string_view what);

// An MDB_val over bytes LMDB only reads (keys, values to copy in).
inline MDB_val MdbVal(const void* p, size_t n) { return MDB_val{n, const_cast<void*>(p)}; }
inline MDB_val MdbVal(std::string_view s) { return MdbVal(s.data(), s.size()); }

struct Dbis {
  MDB_dbi meta = 0, topics = 0, messages = 0, subs = 0, acks = 0, counts = 0, dead = 0, parked = 0,
          dedupe = 0, dedupe_time = 0, kv = 0;
};

class Env {
 public:
  // Opens (creating when missing) the store under `data_dir`/store with `config`'s map size and
  // durability. The map starts at max(config.map_size, the current file size).
  static Result<std::unique_ptr<Env>> Open(const std::filesystem::path& data_dir,
                                           const BrokerConfig& config);
  ~Env();
  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;

  MDB_env* env() const { return env_; }
  const Dbis& dbi() const { return dbi_; }
  std::shared_mutex& resize_mutex() { return resize_mutex_; }
  uint64_t map_size() const { return map_size_; }
  uint64_t max_map_size() const { return max_map_size_; }
  const std::filesystem::path& path() const { return path_; }

  // Doubles the map (at most to max_map_size). Only the writer calls this, with no write transaction
  // open; it waits for the loop's read transaction to end. Returns false when already at the limit.
  bool Grow();

  // Flushes buffers to disk (durability "batch"/"none", and Close).
  Status Sync();

  // With durability "sync", keeps data.mdb allocated and zero-filled ahead of LMDB's last page, by a
  // quarter of what is used, at least 1 MiB and at most `preallocate` (rounded up to 1 MiB), never past
  // the map. A commit that writes past the end of the file makes its flush write the inode too (the
  // size and the new extents: on ext4 an inode write, or with a journal a journal commit); inside the
  // file the flush writes data pages only. The tail is refilled once half of it is used: `idle` (the
  // writer has nothing to commit and the syncer nothing to flush; see Writer::RefillDue), by a step of
  // kIdleStep that is flushed here, so that neither a commit's flush nor the syncer's carries it; busy,
  // only when less than an eighth is left, by more than the growth since the last call, left to the
  // next commit's flush. A failed write (ENOSPC) or flush is truncated away, the next try waits 10 s,
  // and LMDB's own writes extend the file as before. Only the writer calls this, with no write
  // transaction open (or Open, before there is a writer). Returns whether it wrote, or the error.
  Result<bool> Preallocate(bool idle);
  bool preallocating() const { return preallocate_ > 0; }
  static constexpr uint64_t kIdleStep = 256 << 10;
  // data.mdb's size as of the last Preallocate() or Open (preallocated or not).
  uint64_t file_size() const { return file_end_; }

 private:
  Env() = default;

  MDB_env* env_ = nullptr;
  Dbis dbi_;
  std::shared_mutex resize_mutex_;
  uint64_t map_size_ = 0;
  uint64_t max_map_size_ = 0;
  std::filesystem::path path_;
  uint64_t preallocate_ = 0;
  int prealloc_fd_ = -1;  // data.mdb, opened for preallocation only
  uint64_t page_size_ = 0;
  uint64_t file_end_ = 0;  // data.mdb's size (at least: LMDB's commits may have made it longer)
  uint64_t last_used_ = 0;  // LMDB's end of data at the last call
  bool refilling_ = false;
  std::chrono::steady_clock::time_point preallocate_after_{};  // after a failed write
};

// A read-only transaction on the loop thread, reset (not freed) between uses. Begin() takes the resize
// lock shared; End() releases it. Not reentrant: callers nest with a depth count (ReadScope).
class ReadTxn {
 public:
  explicit ReadTxn(Env* env) : env_(env) {}
  ~ReadTxn();
  Status Begin();
  void End();
  MDB_txn* txn() const { return txn_; }
  bool active() const { return active_; }

 private:
  Env* env_;
  MDB_txn* txn_ = nullptr;
  bool active_ = false;
};

}  // namespace sluice::broker::store

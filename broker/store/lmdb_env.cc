// SPDX-License-Identifier: MIT
#include "broker/store/lmdb_env.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <mutex>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include "broker/store/format.h"
#include "broker/store/keyspace_reader.h"

namespace sluice::broker::store {

Status LmdbStatus(int rc, std::string_view what) {
  switch (rc) {
    case MDB_SUCCESS:
      return Status::Ok();
    case MDB_MAP_FULL:
      return {StatusCode::kStorageFull, fmt::format("{}: the store's map is full (max_map_size reached)",
                                                    what)};
    case ENOSPC:
      return {StatusCode::kStorageFull, fmt::format("{}: no space left on the device", what)};
    case MDB_NOTFOUND:
      return NotFound(fmt::format("{}: not found", what));
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
      return {StatusCode::kCorruption, fmt::format("{}: {}", what, mdb_strerror(rc))};
    default:
      return IoError(fmt::format("{}: {}", what, mdb_strerror(rc)));
  }
}

namespace {

Status PutMetaU32(MDB_txn* txn, MDB_dbi dbi, std::string_view name, uint32_t v) {
  MDB_val k{name.size(), const_cast<char*>(name.data())};
  MDB_val d{sizeof v, &v};
  return LmdbStatus(mdb_put(txn, dbi, &k, &d, 0), fmt::format("writing meta '{}'", name));
}

}  // namespace

Result<std::unique_ptr<Env>> Env::Open(const std::filesystem::path& data_dir, const BrokerConfig& config) {
  std::unique_ptr<Env> e(new Env());
  e->path_ = data_dir / "store";
  std::error_code ec;
  std::filesystem::create_directories(e->path_, ec);
  if (ec) return IoError(fmt::format("creating {}: {}", e->path_.string(), ec.message()));

  int rc = mdb_env_create(&e->env_);
  if (rc != 0) return LmdbStatus(rc, "mdb_env_create");
  mdb_env_set_maxdbs(e->env_, kMaxDbs);
  e->max_map_size_ = std::max(config.max_map_size, config.map_size);
  uint64_t initial = std::min(config.map_size, e->max_map_size_);
  // An existing file larger than the configured start is kept at its size: LMDB cannot shrink it.
  std::filesystem::path data_file = e->path_ / "data.mdb";
  uint64_t file_size = std::filesystem::exists(data_file, ec) ? std::filesystem::file_size(data_file, ec) : 0;
  if (ec) file_size = 0;
  e->map_size_ = std::max(initial, file_size);
  rc = mdb_env_set_mapsize(e->env_, e->map_size_);
  if (rc != 0) return LmdbStatus(rc, "mdb_env_set_mapsize");

  // MDB_NOTLS: read transactions are not tied to a thread (the loop resets and renews one).
  unsigned flags = MDB_NOTLS;
  // "sync": a commit flushes its data pages; the writer flushes the meta page with the next commit or
  // on its own (see Writer). Integrity holds either way; only the last commit waits for that flush.
  flags |= config.durability == Durability::kSync ? MDB_NOMETASYNC : MDB_NOSYNC;
  rc = mdb_env_open(e->env_, e->path_.c_str(), flags, 0640);
  if (rc != 0) return LmdbStatus(rc, fmt::format("opening LMDB environment {}", e->path_.string()));
  MDB_envinfo info;
  if (mdb_env_info(e->env_, &info) == 0) e->map_size_ = info.me_mapsize;

  MDB_txn* txn = nullptr;
  rc = mdb_txn_begin(e->env_, nullptr, 0, &txn);
  if (rc != 0) return LmdbStatus(rc, "beginning the open transaction");
  auto fail = [&](Status s) -> Status {
    mdb_txn_abort(txn);
    return s;
  };
  struct {
    const char* name;
    MDB_dbi* dbi;
  } dbs[] = {
      {kDbMeta, &e->dbi_.meta},       {kDbTopics, &e->dbi_.topics}, {kDbMessages, &e->dbi_.messages},
      {kDbSubs, &e->dbi_.subs},       {kDbAcks, &e->dbi_.acks},     {kDbCounts, &e->dbi_.counts},
      {kDbDead, &e->dbi_.dead},       {kDbParked, &e->dbi_.parked}, {kDbDedupe, &e->dbi_.dedupe},
      {kDbDedupeTime, &e->dbi_.dedupe_time}, {kDbKv, &e->dbi_.kv},
  };
  for (auto& d : dbs) {
    rc = mdb_dbi_open(txn, d.name, MDB_CREATE, d.dbi);
    if (rc != 0) return fail(LmdbStatus(rc, fmt::format("opening database '{}'", d.name)));
  }
  MDB_val k{kMetaFormatVersion.size(), const_cast<char*>(kMetaFormatVersion.data())};
  MDB_val v;
  rc = mdb_get(txn, e->dbi_.meta, &k, &v);
  if (rc == MDB_NOTFOUND) {
    Status s = PutMetaU32(txn, e->dbi_.meta, kMetaFormatVersion, kFormatVersion);
    if (!s.ok()) return fail(s);
  } else if (rc != 0) {
    return fail(LmdbStatus(rc, "reading the format version"));
  } else {
    if (v.mv_size != sizeof(uint32_t)) {
      return fail({StatusCode::kCorruption,
                   fmt::format("{}: the format version record is malformed", e->path_.string())});
    }
    uint32_t version = GetLe<uint32_t>(static_cast<const char*>(v.mv_data));
    if (version > kFormatVersion) {
      return fail(InvalidArgument(fmt::format(
          "{}: the store has format version {}, this sluiced reads up to version {}; "
          "run a newer sluiced or restore an older backup",
          e->path_.string(), version, kFormatVersion)));
    }
  }
  rc = mdb_txn_commit(txn);
  if (rc != 0) return LmdbStatus(rc, "committing the open transaction");
  MDB_stat db_stat;
  struct stat st {};
  if (mdb_env_stat(e->env_, &db_stat) == 0 && ::stat(data_file.c_str(), &st) == 0) {
    e->page_size_ = db_stat.ms_psize;
    e->file_end_ = static_cast<uint64_t>(st.st_size);
    // Only "sync" flushes at every commit; the others flush on their own schedule, which the idle
    // steps' fdatasync would break. Its own descriptor: an fsync on LMDB's would take a writeback
    // error from LMDB's next flush on kernels before 4.13.
    if (config.preallocate > 0 && config.durability == Durability::kSync) {
      e->prealloc_fd_ = open(data_file.c_str(), O_WRONLY | O_CLOEXEC);
    }
    if (e->prealloc_fd_ >= 0) e->preallocate_ = config.preallocate;
  }
  // The first tail at once; a failure here is counted at the writer's first try, which is not held back.
  for (Result<bool> wrote = e->Preallocate(true); wrote.ok() && *wrote;) wrote = e->Preallocate(true);
  e->preallocate_after_ = {};
  return e;
}

Result<bool> Env::Preallocate(bool idle) {
  MDB_envinfo info;
  if (mdb_env_info(env_, &info) != 0) return false;
  const uint64_t used = (info.me_last_pgno + 1) * page_size_;
  // LMDB's commits extend the file themselves when they outgrow the tail; they never write past
  // `used`, so nothing below it may be written here.
  file_end_ = std::max(file_end_, used);
  const uint64_t growth = used - std::min(used, last_used_);
  last_used_ = used;
  if (preallocate_ == 0 || std::chrono::steady_clock::now() < preallocate_after_) return false;
  const uint64_t ahead = std::min(std::max<uint64_t>(preallocate_, 1 << 20), std::max<uint64_t>(1 << 20, used / 4));
  // Refill from half, so that the file grows in a few runs now and then, not a little after every
  // commit; when idle, in small steps flushed here, so that no commit's flush carries them. Busy, only
  // a tail nearly used up is extended, by more than the growth since the last call (the next commit's
  // flush writes the zeros and the new size).
  if (!refilling_ && file_end_ >= used + ahead / 2) return false;
  if (!idle && file_end_ >= used + ahead / 8) return false;
  const uint64_t full = std::min(used + ahead, map_size_);
  const uint64_t step = idle ? kIdleStep : std::max<uint64_t>(1 << 20, 2 * growth);
  const uint64_t target = std::min(full, file_end_ + step);
  refilling_ = target < full;
  if (target <= file_end_) return false;
  static const std::vector<char> kZeros(1 << 20, 0);
  const uint64_t start = file_end_;
  auto fail = [&](int err) -> Result<bool> {
    // Give back what this step took (on a full disk, other files need it); `start` >= `used`.
    if (ftruncate(prealloc_fd_, static_cast<off_t>(start)) == 0) file_end_ = start;
    refilling_ = false;
    preallocate_after_ = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    return LmdbStatus(err, fmt::format("preallocating {}", (path_ / "data.mdb").string()));
  };
  while (file_end_ < target) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kZeros.size(), target - file_end_));
    ssize_t written = pwrite(prealloc_fd_, kZeros.data(), n, static_cast<off_t>(file_end_));
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) return fail(written < 0 ? errno : EIO);
    file_end_ += static_cast<uint64_t>(written);
  }
  if (idle && fdatasync(prealloc_fd_) != 0) return fail(errno);
  return true;
}

Env::~Env() {
  if (prealloc_fd_ >= 0) close(prealloc_fd_);
  if (env_ != nullptr) mdb_env_close(env_);
}

bool Env::Grow() {
  if (map_size_ >= max_map_size_) return false;
  uint64_t next = std::min(max_map_size_, map_size_ * 2);
  std::unique_lock lock(resize_mutex_);
  if (mdb_env_set_mapsize(env_, next) != 0) return false;
  MDB_envinfo info;
  map_size_ = mdb_env_info(env_, &info) == 0 ? info.me_mapsize : next;
  return true;
}

Status Env::Sync() { return LmdbStatus(mdb_env_sync(env_, 1), "syncing the store"); }

ReadTxn::~ReadTxn() {
  End();
  if (txn_ != nullptr) mdb_txn_abort(txn_);
}

Status ReadTxn::Begin() {
  if (active_) return Status::Ok();
  env_->resize_mutex().lock_shared();
  int rc = txn_ == nullptr ? mdb_txn_begin(env_->env(), nullptr, MDB_RDONLY, &txn_) : mdb_txn_renew(txn_);
  if (rc != 0) {
    env_->resize_mutex().unlock_shared();
    if (txn_ != nullptr) {
      mdb_txn_abort(txn_);
      txn_ = nullptr;
    }
    return LmdbStatus(rc, "beginning a read transaction");
  }
  active_ = true;
  return Status::Ok();
}

void ReadTxn::End() {
  if (!active_) return;
  mdb_txn_reset(txn_);
  active_ = false;
  env_->resize_mutex().unlock_shared();
}

}  // namespace sluice::broker::store

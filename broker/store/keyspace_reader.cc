// SPDX-License-Identifier: MIT
#include "broker/store/keyspace_reader.h"

#include <fmt/format.h>

#include "broker/store/format.h"
#include "broker/store/lmdb_env.h"

namespace sluice::broker::store {

std::string KeyspaceKey(std::string_view keyspace, std::string_view key) {
  std::string k;
  k.reserve(keyspace.size() + 1 + key.size());
  k.append(keyspace);
  k.push_back('\0');
  k.append(key);
  return k;
}

Result<std::unique_ptr<KeyspaceReader>> KeyspaceReader::Open(const std::filesystem::path& store_dir,
                                                             std::string keyspace) {
  std::error_code ec;
  if (!std::filesystem::exists(store_dir / "data.mdb", ec)) {
    return NotFound(fmt::format("{}: no sluice store here (data.mdb is missing)", store_dir.string()));
  }
  std::unique_ptr<KeyspaceReader> r(new KeyspaceReader());
  r->path_ = store_dir;
  r->keyspace_ = std::move(keyspace);
  r->prefix_ = KeyspaceKey(r->keyspace_, "");
  int rc = mdb_env_create(&r->env_);
  if (rc != 0) return LmdbStatus(rc, "mdb_env_create");
  mdb_env_set_maxdbs(r->env_, kMaxDbs);
  rc = mdb_env_open(r->env_, store_dir.c_str(), MDB_RDONLY | MDB_NOTLS, 0640);
  if (rc != 0) {
    return LmdbStatus(rc, fmt::format("opening the store {} read-only", store_dir.string()));
  }
  int dead = 0;
  if (mdb_reader_check(r->env_, &dead) == 0) r->stale_readers_cleared_ = dead;
  return r;
}

KeyspaceReader::~KeyspaceReader() {
  if (txn_ != nullptr) mdb_txn_abort(txn_);
  if (env_ != nullptr) mdb_env_close(env_);
}

Status KeyspaceReader::Begin() {
  if (active_) return Status::Ok();
  if (!dbi_) {
    // A handle opened in a read transaction survives only that transaction's commit.
    MDB_txn* t = nullptr;
    int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &t);
    if (rc == MDB_MAP_RESIZED) {
      mdb_env_set_mapsize(env_, 0);
      rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &t);
    }
    if (rc != 0) return LmdbStatus(rc, "beginning a read transaction on the plugin keyspace");
    MDB_dbi dbi = 0;
    rc = mdb_dbi_open(t, kDbKv, 0, &dbi);
    if (rc == 0) {
      rc = mdb_txn_commit(t);
      if (rc != 0) return LmdbStatus(rc, "opening the keyspace database");
      dbi_ = dbi;
    } else {
      mdb_txn_abort(t);
      if (rc != MDB_NOTFOUND) return LmdbStatus(rc, "opening the keyspace database");
    }
  }
  int rc = txn_ == nullptr ? mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn_) : mdb_txn_renew(txn_);
  if (rc == MDB_MAP_RESIZED) {
    // The broker grew the map: adopt its size (allowed now, no transaction of ours is active).
    if (txn_ != nullptr) mdb_txn_abort(txn_);
    txn_ = nullptr;
    mdb_env_set_mapsize(env_, 0);
    rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn_);
  }
  if (rc != 0) {
    if (txn_ != nullptr) mdb_txn_abort(txn_);
    txn_ = nullptr;
    return LmdbStatus(rc, "beginning a read transaction on the plugin keyspace");
  }
  active_ = true;
  return Status::Ok();
}

void KeyspaceReader::End() {
  if (!active_) return;
  mdb_txn_reset(txn_);
  active_ = false;
}

Status KeyspaceReader::DecodeEntry(const MDB_val& value, Entry* entry) const {
  if (value.mv_size < 8) {
    return {StatusCode::kCorruption,
            fmt::format("{}: a value of keyspace '{}' is {} bytes, shorter than its version",
                        path_.string(), keyspace_, value.mv_size)};
  }
  const char* p = static_cast<const char*>(value.mv_data);
  entry->version = GetBe64(p);
  entry->value = std::string_view(p + 8, value.mv_size - 8);
  return Status::Ok();
}

Result<std::optional<KeyspaceReader::Entry>> KeyspaceReader::Get(std::string_view key) {
  if (!active_) return Internal("KeyspaceReader::Get outside a snapshot");
  if (!dbi_) return std::optional<Entry>();
  scratch_.assign(prefix_);
  scratch_.append(key);
  MDB_val k{scratch_.size(), scratch_.data()};
  MDB_val v;
  int rc = mdb_get(txn_, *dbi_, &k, &v);
  if (rc == MDB_NOTFOUND) return std::optional<Entry>();
  if (rc != 0) return LmdbStatus(rc, "reading the plugin keyspace");
  Entry e;
  SLUICE_RETURN_IF_ERROR(DecodeEntry(v, &e));
  return std::optional<Entry>(e);
}

Status KeyspaceReader::Scan(std::string_view prefix, const ScanFn& fn) {
  if (!active_) return Internal("KeyspaceReader::Scan outside a snapshot");
  if (!dbi_) return Status::Ok();
  MDB_cursor* cursor = nullptr;
  int rc = mdb_cursor_open(txn_, *dbi_, &cursor);
  if (rc != 0) return LmdbStatus(rc, "opening a cursor on the plugin keyspace");
  std::string start = prefix_ + std::string(prefix);
  MDB_val k{start.size(), start.data()};
  MDB_val v;
  Status status;
  for (rc = mdb_cursor_get(cursor, &k, &v, MDB_SET_RANGE); rc == 0;
       rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)) {
    std::string_view key(static_cast<const char*>(k.mv_data), k.mv_size);
    if (!key.starts_with(start)) break;
    Entry e;
    status = DecodeEntry(v, &e);
    if (!status.ok()) break;
    if (!fn(key.substr(prefix_.size()), e)) break;
  }
  mdb_cursor_close(cursor);
  if (!status.ok()) return status;
  if (rc != 0 && rc != MDB_NOTFOUND) return LmdbStatus(rc, "scanning the plugin keyspace");
  return Status::Ok();
}

}  // namespace sluice::broker::store

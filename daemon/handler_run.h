// SPDX-License-Identifier: MIT
//
// HandlerRun: one call of a plugin's handle() as the host sees it. It implements the host API of
// sluice/plugin.h (the sluice_context behind the pointer the plugin gets) and records the run's effects
// as a bundle: kv_put/kv_delete become writes, publish/reply become envelopes, and every key read from
// committed or pending state is recorded with the version seen, so the broker can refuse the bundle if
// another instance changed one of them in between (DESIGN.md, "Plugins").
//
// What a read sees, in order: this run's own writes; then PendingWrites, the writes of this worker's
// earlier bundles that the broker has not answered yet (so a pipelined run reads what the previous one
// wrote, and if that one is refused, this one is refused too because it read a version that never got
// committed); then the committed state of the KvSnapshot. kv_scan merges the three. Scans record the
// version of every key they return, but not the absence of keys: a key another instance inserts into a
// scanned range does not make the bundle conflict.
//
// Publish ids are DeriveUuid(input id, "<plugin>/publish/<n>") for the n-th publish (from 0), so a re-run
// after a conflict or a crash publishes the same ids and the broker's dedupe drops repeats. The causation id is
// the input's id; the correlation id is the plugin's or, when empty, the input's.
//
// Failure modes: a call with bad arguments returns a negative errno to the plugin (-EINVAL, -E2BIG,
// -EPERM for an undeclared topic, -ENOENT for an absent key); a failure to read the store returns -EIO
// to the plugin and is kept in failure(), and the host then retries the message instead of committing.
//
// Thread-compatible: one run at a time, on the thread that calls handle().
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "broker/client/client.h"
#include "broker/status.h"
#include "broker/uuid.h"
#include "sluice/plugin.h"

namespace sluice {
class HandlerRun;
}

// The opaque context of plugin.h: what the plugin's ctx pointer points to during one handle() call.
struct sluice_context {
  sluice::HandlerRun* run = nullptr;
};

namespace sluice {

inline constexpr size_t kMaxPluginKeyBytes = 400;
inline constexpr size_t kMaxPluginValueBytes = 1u << 20;

// The committed state a run reads: the worker's read-only view of the store, or a map in tests. Values
// stay valid until the run ends.
class KvSnapshot {
 public:
  struct Entry {
    uint64_t version = 0;
    std::string_view value;
  };
  using ScanFn = std::function<bool(std::string_view key, const Entry& entry)>;
  virtual ~KvSnapshot() = default;
  virtual Result<std::optional<Entry>> Get(std::string_view key) = 0;
  virtual Status Scan(std::string_view prefix, const ScanFn& fn) = 0;
};

// Writes of bundles run and not answered yet, newest first per key. A bundle is known by its version
// (unique per bundle). Each entry belongs to the bundle that wrote the key last; Remove(version) drops
// only the entries that bundle still owns.
class PendingWrites {
 public:
  struct Entry {
    uint64_t version = 0;  // the bundle's version
    bool erased = false;
    std::string value;
  };

  void Add(uint64_t version, const std::vector<client::KvWriteRecord>& writes);
  void Remove(uint64_t version);
  const Entry* Find(std::string_view key) const;
  // Entries whose key starts with `prefix`, in key order.
  template <typename Fn>
  void ForEachWithPrefix(std::string_view prefix, Fn fn) const {
    for (auto it = entries_.lower_bound(prefix);
         it != entries_.end() && std::string_view(it->first).starts_with(prefix); ++it) {
      fn(it->first, it->second);
    }
  }
  size_t size() const { return entries_.size(); }

 private:
  std::map<std::string, Entry, std::less<>> entries_;
  std::unordered_map<uint64_t, std::vector<std::string>> keys_by_version_;
};

// The input of a run, as the host received it.
struct RunInput {
  Uuid id;
  std::string id_text;           // FormatUuid(id): the causation id of what the run publishes
  std::string correlation_id;
  uint64_t reply_token = 0;      // non-zero: a Request; reply() is allowed once
};

// Host services a run needs besides the state: the clock and the log.
struct RunHost {
  std::string_view plugin;                        // the keyspace, for messages
  const std::vector<std::string>* publishes = nullptr;  // the topics the descriptor declared
  std::function<int64_t()> now_us;
  std::function<void(int level, std::string_view message)> log;
};

class HandlerRun {
 public:
  HandlerRun(const RunHost& host, const RunInput& input, KvSnapshot* snapshot, const PendingWrites* pending);
  ~HandlerRun();
  HandlerRun(const HandlerRun&) = delete;
  HandlerRun& operator=(const HandlerRun&) = delete;

  // The context and the API table to hand to handle() and init().
  sluice_context* context() { return &context_; }
  static const sluice_host_api* Api();
  // What log() and now_us() use when called with a NULL context (from init() or shutdown()). The host
  // must outlive every such call.
  static void SetDefaultHost(const RunHost* host);

  // The first failure of the host itself during the run (the store could not be read); OK otherwise.
  const Status& failure() const { return failure_; }

  // The recorded effects as a bundle (consumer, delivery and version are the caller's to set). Leaves
  // the run empty.
  client::BundleMessage TakeBundle();

  // For the host API functions (plugin.h); each returns 0 or a negative errno.
  int KvGet(sluice_bytes key, sluice_bytes* value);
  int KvPut(sluice_bytes key, sluice_bytes value);
  int KvDelete(sluice_bytes key);
  int KvScan(sluice_bytes prefix, size_t limit, sluice_scan_fn fn, void* user);
  int Publish(const sluice_out_message* message);
  int Reply(const sluice_out_message* message);
  int64_t NowUs() const { return host_.now_us(); }
  void Log(int level, const char* message) const;

 private:
  void RecordRead(std::string_view key, uint64_t version);
  int Fail(Status status);
  client::OutMessage ToOut(const sluice_out_message& m, Uuid id) const;

  RunHost host_;
  RunInput input_;
  KvSnapshot* snapshot_;
  const PendingWrites* pending_;
  sluice_context context_;
  Status failure_;
  // Own writes: nullopt = deleted.
  std::map<std::string, std::optional<std::string>, std::less<>> writes_;
  std::map<std::string, uint64_t, std::less<>> reads_;
  std::vector<client::OutMessage> publishes_;
  std::optional<client::OutMessage> reply_;
  std::string scratch_;  // a kv_get value that must outlive the call
};

}  // namespace sluice

// SPDX-License-Identifier: MIT
//
// FakeHost: an in-process stand-in for a sluiced worker, to unit-test a plugin .so without a daemon.
// It dlopens the plugin (RTLD_NOW | RTLD_LOCAL), checks its descriptor, calls init with a config and a
// data dir, and runs handle() on messages the test builds. It implements sluice_host_api over an
// in-memory keyspace with the worker's bundle semantics: reads see committed state plus the handler's
// own writes; SLUICE_OK commits the writes, publishes and reply together; RETRY and REJECT discard
// them. Published ids are derived from the input id as the real host derives them, so a re-run of a
// message republishes the same ids. The clock is set by the test.
//
// What it does not model: other instances racing on the same keys, the broker's dedupe and delivery
// (a test redelivers by handling the same message again), handler timeouts and crashes (Handle with
// Commit::kCrashBeforeCommit runs the handler and then drops its effects, as a worker killed before its
// bundle committed would).
//
// Threading: one FakeHost is used on one thread; the host API callbacks find it through a
// thread-local pointer set around each call into the plugin.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "broker/status.h"
#include "broker/uuid.h"
#include "sluice/plugin.h"

namespace sluice::testing {

// A message delivered to the plugin. Empty fields take defaults (see each).
struct InMessage {
  std::string topic;
  std::string type;
  std::string payload;
  std::string key;
  std::string correlation_id;
  std::string causation_id;
  bool is_request = false;
  std::string subscription;  // empty: the descriptor's subscription on `topic`
  std::optional<Uuid> id;    // empty: the host's next id (UUIDv7-shaped, deterministic)
  uint32_t delivery_count = 1;
  int64_t publish_time_us = 0;  // 0: the host clock
  uint64_t seq = 0;
  std::vector<std::pair<std::string, std::string>> headers;
};

// A message the plugin published or replied with.
struct OutMessage {
  Uuid id;
  std::string topic;  // empty for a reply
  std::string key;
  std::string type;
  std::string correlation_id;
  std::string causation_id;
  std::string payload;
  std::vector<std::pair<std::string, std::string>> headers;
};

// What one handle() call did. `published`, `reply` and `writes` are the committed effects: empty when
// the bundle was discarded (RETRY, REJECT, or Commit::kCrashBeforeCommit); `attempted_*` counts what
// the handler did before that.
struct Outcome {
  Uuid input_id;
  sluice_outcome outcome = SLUICE_OK;
  uint32_t retry_after_ms = 0;
  std::string reason;
  bool committed = false;
  std::vector<OutMessage> published;
  std::optional<OutMessage> reply;
  std::map<std::string, std::optional<std::string>> writes;  // nullopt: a delete
  size_t attempted_publishes = 0;
  size_t attempted_writes = 0;

  bool ok() const { return outcome == SLUICE_OK; }
};

struct LogLine {
  int level;
  std::string message;
};

enum class Commit {
  kNormal,             // on SLUICE_OK: sync() (when the plugin has one), then commit
  kCrashBeforeCommit,  // run the handler and sync(), then drop its effects whatever it returned
  kCrashBeforeSync,    // run the handler, then drop its effects without calling sync()
};

class FakeHost {
 public:
  // Loads the plugin at `path` and calls its init with `config_json` and `data_dir` (created by the
  // host when empty, and removed with it). Fails with the dlopen/descriptor problem or init's code.
  static Result<std::unique_ptr<FakeHost>> Load(const std::string& path, std::string config_json = "{}",
                                                std::string data_dir = "");
  ~FakeHost();
  FakeHost(const FakeHost&) = delete;
  FakeHost& operator=(const FakeHost&) = delete;

  // Runs handle() once on `in` and applies the bundle rules above.
  Outcome Handle(const InMessage& in, Commit commit = Commit::kNormal);

  // shutdown() then init() again with the same config, keyspace and data dir: a worker restart.
  Status Restart();

  const sluice_plugin& descriptor() const { return *descriptor_; }
  const std::string& data_dir() const { return data_dir_; }

  // The committed keyspace; a test may seed or inspect it between calls.
  std::map<std::string, std::string>& kv() { return kv_; }
  std::optional<std::string> Committed(std::string_view key) const;

  // Every committed publish, in order.
  const std::vector<OutMessage>& published() const { return published_; }
  std::vector<OutMessage> PublishedOn(std::string_view topic) const;

  // What init() asked for with set_subscription_types, by subscription index (absent: every type).
  const std::map<size_t, std::vector<std::string>>& subscription_types() const { return subscription_types_; }

  const std::vector<LogLine>& logs() const { return logs_; }
  bool Logged(std::string_view needle) const;

  int64_t now_us() const { return now_us_; }
  void set_now_us(int64_t us) { now_us_ = us; }
  void Advance(int64_t us) { now_us_ += us; }

  // A fresh input id: UUIDv7-shaped from the clock's millisecond and a counter.
  Uuid NextId();

  // Host API entry points (the C callbacks forward here); public for the .cc's trampolines only.
  struct Bundle;
  int KvGet(Bundle* b, std::string_view key, sluice_bytes* value);
  int KvPut(Bundle* b, std::string_view key, std::string_view value);
  int KvDelete(Bundle* b, std::string_view key);
  int KvScan(Bundle* b, std::string_view prefix, size_t limit, sluice_scan_fn fn, void* user);
  int Publish(Bundle* b, const sluice_out_message* m, bool reply);
  void Log(int level, const char* message);
  int SetSubscriptionTypes(size_t index, const char* const* types, size_t n_types);

 private:
  FakeHost() = default;
  Status CallInit();

  void* handle_ = nullptr;  // dlopen handle
  const sluice_plugin* descriptor_ = nullptr;
  void* state_ = nullptr;
  bool initialized_ = false;
  std::string path_;
  std::string config_json_;
  std::string data_dir_;
  bool owns_data_dir_ = false;
  std::map<std::string, std::string> kv_;
  std::vector<OutMessage> published_;
  std::vector<LogLine> logs_;
  std::map<size_t, std::vector<std::string>> subscription_types_;
  bool in_init_ = false;
  int64_t now_us_ = 1'750'000'000'000'000;  // 2025-06-15, a fixed start
  uint64_t next_id_ = 0;
};

}  // namespace sluice::testing

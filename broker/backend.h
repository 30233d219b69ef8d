// SPDX-License-Identifier: MIT
//
// Backend: the narrow interface between the protocol layer (connections, frames) and a message store.
// The embedded LMDB store (broker/store/) implements it; a NATS JetStream backend can implement the same
// semantics, and the semantic tests (tests/unit/backend_semantics_test.cc) are written against it.
//
// Threading: every method is called on the event loop thread that the backend was created with, and
// every callback (PublishCallback, ConsumerSink, ...) is invoked on that same thread, never from inside
// the call that caused it (so a caller may hold state across the call). A backend may run its own
// threads (the LMDB store runs one writer thread for group commit) but hides them.
//
// Time: the backend reads time only from the Clock it was given, so tests drive leases, backoff and
// retention with a fake clock and call RunTimers() instead of sleeping.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "broker/status.h"
#include "broker/uuid.h"
#include "broker/histogram.h"
#include "broker/options.h"

namespace sluice::broker {

class Clock {
 public:
  virtual ~Clock() = default;
  // Microseconds since the Unix epoch.
  virtual int64_t NowUs() const = 0;
};

// The real clock (CLOCK_REALTIME).
const Clock& SystemClock();

struct PublishRequest {
  std::string topic;
  // The canonical Envelope FlatBuffer, built by BuildStoredEnvelope() (broker/envelope.h): it carries
  // id and publish_time, and has a seq field present that the store fills in when it appends.
  std::string envelope;
  Uuid id;
  bool dedupe = false;      // the publisher chose the id: repeats within dedupe_window are not stored
  int64_t publish_time_us = 0;
  // Non-zero when the message is a Request: stored with the message and handed back in
  // Delivery::reply_token, so the consumer's Reply can be routed to the requester.
  uint64_t reply_token = 0;
};

struct PublishResult {
  uint64_t seq = 0;
  Uuid id;
  bool duplicate = false;   // a repeat within the dedupe window; seq is the original's
};

using PublishCallback = std::function<void(Result<PublishResult>)>;

struct Delivery {
  uint64_t consumer_id = 0;
  uint64_t delivery_id = 0;   // the lease; unique per backend instance
  uint32_t delivery_count = 1;
  uint64_t seq = 0;
  std::string_view envelope;  // the stored Envelope FlatBuffer; valid only during the Deliver() call
  uint64_t reply_token = 0;
};

// Where a consumer's messages go. Implemented by the protocol layer (one per subscribed connection).
class ConsumerSink {
 public:
  virtual ~ConsumerSink() = default;
  // A message for this consumer; the backend has already charged one unit of its credit.
  virtual void Deliver(const Delivery& delivery) = 0;
};

struct SubscribeSpec {
  SubscriptionConfig sub;   // topic, name, start point, ordering, max_deliveries, ack_wait, backoff, ...
  uint32_t credit = 0;      // initial credit (prefetch)
  // Deliver only messages of these envelope types (empty: every type); the subscription acks the
  // others as it reads them. The types belong to the subscription: the newest consumer's apply to all
  // of its consumers. At most kMaxSubscribeTypes, each 1..kMaxTypeBytes bytes.
  std::vector<std::string> types;
};
inline constexpr size_t kMaxSubscribeTypes = 32;
inline constexpr size_t kMaxTypeBytes = 256;

// Ok, or kInvalidArgument naming what makes `types` unfit for SubscribeSpec::types.
inline Status CheckSubscribeTypes(const std::vector<std::string>& types) {
  if (types.size() > kMaxSubscribeTypes) {
    return Status(StatusCode::kInvalidArgument, std::to_string(types.size()) + " types to subscribe to; at most " +
                                                    std::to_string(kMaxSubscribeTypes));
  }
  for (size_t i = 0; i < types.size(); ++i) {
    if (types[i].empty() || types[i].size() > kMaxTypeBytes) {
      return Status(StatusCode::kInvalidArgument, "type " + std::to_string(i) + " to subscribe to is " +
                                                      std::to_string(types[i].size()) + " bytes; a type is 1.." +
                                                      std::to_string(kMaxTypeBytes) + " bytes");
    }
  }
  return Status::Ok();
}

using SubscribeCallback = std::function<void(Result<uint64_t /*consumer_id*/>)>;

struct NackOptions {
  int64_t delay_us = -1;    // < 0: the subscription's backoff for this delivery count
  bool reject = false;      // dead-letter now
  std::string error;        // kept with the message; shown in the dead-letter queue
};

struct TopicInfo {
  std::string name;
  uint64_t messages = 0;
  uint64_t bytes = 0;
  uint64_t first_seq = 0;
  uint64_t last_seq = 0;
  uint64_t published = 0;         // since the daemon started
  double publish_rate = 0;        // messages/s over the last 10 s
  std::vector<std::string> subscriptions;
};

struct SubscriptionInfo {
  std::string topic;
  std::string name;
  uint64_t pending = 0;           // published after the cursor and not yet acked
  uint64_t in_flight = 0;
  uint64_t dead_lettered = 0;
  uint64_t skipped = 0;           // dropped by on_full = "skip"
  uint64_t parked_keys = 0;
  uint32_t consumers = 0;
  uint64_t delivered = 0;
  uint64_t acked = 0;
  uint64_t redelivered = 0;
  uint64_t filtered = 0;          // acked unread: not of `types` (since the daemon started)
  std::vector<std::string> types; // what its consumers asked for (SubscribeSpec); empty: every type
  double ack_rate = 0;            // messages/s over the last 10 s
  int64_t oldest_unacked_age_us = 0;
  int64_t drain_eta_us = -1;      // estimated time to drain at ack_rate; -1 unknown
};

struct DeadLetter {
  uint64_t seq = 0;
  uint32_t delivery_count = 0;
  std::string reason;             // "max_deliveries (5) reached", "rejected", "poison: ..."
  std::string last_error;
  int64_t dead_lettered_at_us = 0;
  std::string envelope;           // the stored Envelope FlatBuffer
};

struct StoredMessage {
  std::string topic;
  uint64_t seq = 0;
  std::string envelope;           // the stored Envelope FlatBuffer
  bool dead_lettered = false;     // read from a dead-letter queue
  std::string subscription;       // whose dead-letter queue, when dead_lettered
};

struct ParkedKey {
  std::string key;
  uint64_t parked_at_seq = 0;     // the dead-lettered message that parked it
  uint64_t backlog = 0;           // messages with this key waiting behind it
};

// A plugin handler's effects, committed with the ack of its input in one transaction (DESIGN.md,
// "Plugins"). Keys live in the keyspace named after the plugin; their stored version is the `version`
// of the last bundle that wrote them (0 = absent).
struct KvReadCheck {
  std::string key;
  uint64_t version = 0;
};

struct KvMutation {
  std::string key;
  std::string value;
  bool erase = false;
};

struct BundleRequest {
  uint64_t consumer_id = 0;
  uint64_t delivery_id = 0;                // the input; acked by the commit
  std::string keyspace;                    // the plugin's name
  uint64_t version = 0;                    // stamped on every written key; non-zero
  std::vector<KvReadCheck> reads;
  std::vector<KvMutation> writes;
  // dedupe = true: a re-run's repeats are not stored twice. LmdbBackend clears it for a stored input
  // that is not acked yet, whose ack (written with the effects, checked by the writer) keeps the
  // bundle to one apply.
  std::vector<PublishRequest> publishes;
};

enum class BundleOutcome {
  kCommitted,
  kConflict,    // a read key's version changed: nothing was applied; run the handler again
  kLeaseLost,   // the input is not leased to this consumer any more (or is acked already): nothing was applied
  kOutcomeCount,
};

struct BundleResult {
  BundleOutcome outcome = BundleOutcome::kCommitted;
  std::string message;                     // which key conflicted, ...
  std::vector<PublishResult> published;    // one per publish, when committed
};

using BundleCallback = std::function<void(Result<BundleResult>)>;

// What a backend measures about its storage, for `sluicectl metrics`. Updated by the backend's own
// threads; read from any thread (Histogram is thread-safe).
struct StoreMetrics {
  Histogram commit_batch_ops{Histogram::SizeBounds()};     // operations per group commit
  Histogram commit_seconds{Histogram::LatencyBounds()};    // one commit (with its fsync when "sync")
  Histogram sync_seconds{Histogram::LatencyBounds()};      // explicit syncs ("batch" durability)
  std::atomic<uint64_t> file_bytes{0};                     // the store file's size, preallocation included
  std::atomic<uint64_t> preallocate_failures{0};           // failed writes ahead of the store (ENOSPC)
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual void Publish(PublishRequest request, PublishCallback done) = 0;

  // Attaches a consumer to the subscription, creating the subscription when it does not exist.
  virtual void Subscribe(const SubscribeSpec& spec, ConsumerSink* sink, SubscribeCallback done) = 0;
  virtual void AddCredit(uint64_t consumer_id, uint32_t credit) = 0;
  virtual Status Ack(uint64_t consumer_id, std::span<const uint64_t> delivery_ids) = 0;
  virtual Status Nack(uint64_t consumer_id, uint64_t delivery_id, const NackOptions& options) = 0;
  // The consumer is gone (disconnect): its in-flight messages become available again. When `crashed`,
  // each of them also counts a crash (poison detection).
  virtual void Detach(uint64_t consumer_id, bool crashed) = 0;

  // Commits a plugin handler's bundle: checks the input's lease and the read versions, then applies
  // the writes, the publishes and the ack in one transaction. A storage failure is the Status; a
  // conflict or a lost lease is an outcome (nothing applied, the lease stays as it was).
  // A backend without plugin support answers kUnavailable.
  virtual void CommitBundle(BundleRequest request, BundleCallback done) {
    (void)request;
    done(Unavailable("this backend cannot commit plugin bundles"));
  }

  // Leases, scheduled redeliveries and retention that are due at the clock's now.
  virtual void RunTimers() = 0;

  virtual Result<std::vector<TopicInfo>> ListTopics() = 0;
  virtual Result<std::vector<SubscriptionInfo>> ListSubscriptions() = 0;
  virtual Result<std::vector<DeadLetter>> ListDeadLetters(std::string_view topic, std::string_view sub,
                                                           size_t limit) = 0;
  // Moves dead letters back to the subscription (all when `seqs` is empty) and releases their keys.
  virtual Result<uint64_t> Redrive(std::string_view topic, std::string_view sub,
                                   std::span<const uint64_t> seqs) = 0;
  virtual Result<uint64_t> Purge(std::string_view topic, std::string_view sub) = 0;
  virtual Result<std::vector<ParkedKey>> ListParkedKeys(std::string_view topic, std::string_view sub) = 0;
  // Up to `limit` stored messages of `topic` from sequence `from_seq` on, without consuming them.
  virtual Result<std::vector<StoredMessage>> Peek(std::string_view topic, uint64_t from_seq, size_t limit) = 0;
  // Every stored message (dead letters included) whose correlation id is `correlation_id`, in publish
  // time order, at most `limit`. Reads the whole store: an operator's tool, not a hot path.
  virtual Result<std::vector<StoredMessage>> Trace(std::string_view correlation_id, size_t limit) = 0;

  // nullptr when the backend measures nothing.
  virtual const StoreMetrics* metrics() const { return nullptr; }

  // Flushes everything committed so far and stops background threads; `done` runs on the loop.
  virtual void Close(std::function<void()> done) = 0;
};

}  // namespace sluice::broker

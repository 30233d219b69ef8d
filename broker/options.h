// SPDX-License-Identifier: MIT
//
// The broker's typed options: what the daemon's config loader (daemon/config.cc) produces for the
// broker and what the Backend and store consume. Plain values, no behaviour beyond memberwise ==; defaults
// here are the documented defaults (sluice.toml(5)).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace sluice {

enum class Durability { kSync, kBatch, kNone };
enum class TopicFullPolicy { kReject, kDropOldest };
enum class BacklogFullPolicy { kBlock, kSkip };
enum class StartPointKind { kLatest, kEarliest, kSequence, kTime };
enum class OrderingMode { kNone, kKey };

using Duration = std::chrono::milliseconds;

struct BrokerConfig {
  Durability durability = Durability::kSync;
  Duration batch_interval = Duration(10);      // durability = "batch": longest time between fsyncs
  uint64_t map_size = 64ull << 20;             // initial LMDB map size
  uint64_t max_map_size = 8ull << 30;          // the map grows up to this, then publishes are refused
  uint64_t preallocate = 32ull << 20;          // zero-filled file kept ahead of the last page (Env); 0 = off
  bool auto_create_topics = true;
  Duration dedupe_window = std::chrono::minutes(2);
  uint64_t max_message_bytes = 1 << 20;        // largest envelope accepted by Publish
  // Defaults for subscriptions created by a Subscribe frame without an explicit value.
  uint32_t default_max_deliveries = 5;
  Duration default_ack_wait = std::chrono::seconds(30);

  friend bool operator==(const BrokerConfig&, const BrokerConfig&) = default;
};

struct TopicConfig {
  std::string name;                            // required; [A-Za-z0-9._-]{1,200}
  uint64_t max_messages = 0;                   // 0 = unlimited
  uint64_t max_bytes = 0;                      // 0 = unlimited
  TopicFullPolicy on_full = TopicFullPolicy::kReject;
  Duration retention_max_age = Duration(0);    // keep acked messages this long for replay; 0 = don't
  uint64_t retention_max_bytes = 0;            // ... or up to this many bytes; 0 = don't

  friend bool operator==(const TopicConfig&, const TopicConfig&) = default;
};

struct BackoffConfig {
  Duration initial = std::chrono::seconds(1);
  double multiplier = 2.0;                     // >= 1.0
  Duration max = std::chrono::minutes(5);

  friend bool operator==(const BackoffConfig&, const BackoffConfig&) = default;
};

struct SubscriptionConfig {
  std::string topic;                           // required
  std::string name;                            // required
  StartPointKind start = StartPointKind::kLatest;
  uint64_t start_seq = 0;                      // start = "seq:N"
  int64_t start_time_us = 0;                   // start = an RFC 3339 time
  OrderingMode ordering = OrderingMode::kNone;
  uint32_t max_deliveries = 5;                 // 1 .. 1000
  Duration ack_wait = std::chrono::seconds(30);
  BackoffConfig backoff;
  uint32_t max_crashes = 3;                    // a message held by this many crashed workers is poison
  uint64_t max_backlog = 0;                    // 0 = unlimited
  BacklogFullPolicy on_full = BacklogFullPolicy::kBlock;

  friend bool operator==(const SubscriptionConfig&, const SubscriptionConfig&) = default;
};

}  // namespace sluice

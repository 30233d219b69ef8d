// SPDX-License-Identifier: MIT
//
// The on-disk layout of the LMDB store (broker/STORE_FORMAT.md is the prose reference): the format
// version, the names of the named databases, the big-endian key encodings (so LMDB's byte order is
// numeric order and cursors walk a topic or a subscription in sequence order) and the fixed headers of
// the values. Values are little-endian and read with memcpy, because LMDB only guarantees 2-byte
// alignment for the data it returns. Pure functions; thread-safe.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "broker/uuid.h"

namespace sluice::broker::store {

static_assert(std::endian::native == std::endian::little, "the store's value layout is little-endian");

// Version 1 is the layout below. Open refuses a store whose recorded version is higher.
inline constexpr uint32_t kFormatVersion = 1;

// Named databases (mdb_dbi_open names).
inline constexpr const char* kDbMeta = "meta";           // ascii name -> value
inline constexpr const char* kDbTopics = "topics";       // topic name -> TopicRecord
inline constexpr const char* kDbMessages = "messages";   // topic id u32 + seq u64 -> MessageHeader...
inline constexpr const char* kDbSubs = "subs";           // topic id u32 + sub name -> SubRecord
inline constexpr const char* kDbAcks = "acks";           // sub id u32 + seq u64 -> (empty)
inline constexpr const char* kDbCounts = "counts";       // sub id u32 + seq u64 -> u32 deliveries so far
inline constexpr const char* kDbDead = "dead";           // sub id u32 + seq u64 -> DeadHeader...
inline constexpr const char* kDbParked = "parked";       // sub id u32 + key bytes -> u64 parked_at_seq
inline constexpr const char* kDbDedupe = "dedupe";       // topic id u32 + uuid 16 -> u64 seq, i64 time
inline constexpr const char* kDbDedupeTime = "dedupe_time";  // time u64 + topic id u32 + uuid 16 -> ()
// Plugin keyspaces ("kv"): kDbKv and the key layout are in broker/store/keyspace_reader.h.
inline constexpr int kMaxDbs = 16;                       // room for plugin keyspaces' own DBs later

inline constexpr std::string_view kMetaFormatVersion = "format_version";  // u32
inline constexpr std::string_view kMetaNextTopicId = "next_topic_id";     // u32
inline constexpr std::string_view kMetaNextSubId = "next_sub_id";         // u32

inline void PutBe32(char* p, uint32_t v) {
  v = __builtin_bswap32(v);
  std::memcpy(p, &v, 4);
}
inline void PutBe64(char* p, uint64_t v) {
  v = __builtin_bswap64(v);
  std::memcpy(p, &v, 8);
}
inline uint32_t GetBe32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}
inline uint64_t GetBe64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}
template <typename T>
inline T GetLe(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void PutLe(char* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

// id u32 + seq u64, big-endian: the key of messages (by topic id) and of acks/counts/dead (by sub id).
struct SeqKey {
  char bytes[12];
  SeqKey(uint32_t id, uint64_t seq) {
    PutBe32(bytes, id);
    PutBe64(bytes + 4, seq);
  }
  static uint32_t Id(const char* p) { return GetBe32(p); }
  static uint64_t Seq(const char* p) { return GetBe64(p + 4); }
};

// id u32 + name bytes: subs (by topic id) and parked (by sub id).
inline std::string NameKey(uint32_t id, std::string_view name) {
  std::string k(4 + name.size(), '\0');
  PutBe32(k.data(), id);
  std::memcpy(k.data() + 4, name.data(), name.size());
  return k;
}

struct DedupeKey {
  char bytes[20];
  DedupeKey(uint32_t topic_id, const Uuid& id) {
    PutBe32(bytes, topic_id);
    PutBe64(bytes + 4, id.hi);
    PutBe64(bytes + 12, id.lo);
  }
};

struct DedupeTimeKey {
  char bytes[28];
  DedupeTimeKey(int64_t time_us, uint32_t topic_id, const Uuid& id) {
    PutBe64(bytes, static_cast<uint64_t>(time_us));
    PutBe32(bytes + 8, topic_id);
    PutBe64(bytes + 12, id.hi);
    PutBe64(bytes + 20, id.lo);
  }
};

// A message value: this header, then key_len bytes of the ordering key, then env_len bytes of the
// canonical Envelope FlatBuffer (whose seq field equals the key's seq).
struct MessageHeader {
  static constexpr size_t kSize = 40;
  int64_t publish_time_us = 0;
  Uuid id;
  uint32_t key_len = 0;
  uint32_t env_len = 0;
  uint64_t reply_token = 0;  // non-zero for a Request: handed back in Delivery::reply_token

  void Encode(char* p) const {
    PutLe(p, publish_time_us);
    PutLe(p + 8, id.hi);
    PutLe(p + 16, id.lo);
    PutLe(p + 24, key_len);
    PutLe(p + 28, env_len);
    PutLe(p + 32, reply_token);
  }
  // False when `size` cannot hold the header and the lengths it claims.
  bool Decode(const char* p, size_t size) {
    if (size < kSize) return false;
    publish_time_us = GetLe<int64_t>(p);
    id.hi = GetLe<uint64_t>(p + 8);
    id.lo = GetLe<uint64_t>(p + 16);
    key_len = GetLe<uint32_t>(p + 24);
    env_len = GetLe<uint32_t>(p + 28);
    reply_token = GetLe<uint64_t>(p + 32);
    return kSize + uint64_t{key_len} + env_len == size;
  }
  std::string_view Key(const char* p) const { return {p + kSize, key_len}; }
  std::string_view Envelope(const char* p) const { return {p + kSize + key_len, env_len}; }
};

// A topic record: counters of what is stored, rewritten by each commit that changes them.
struct TopicRecord {
  static constexpr size_t kSize = 36;
  uint32_t id = 0;
  uint64_t first_seq = 1;    // the oldest stored message; last_seq + 1 when empty
  uint64_t last_seq = 0;     // the last assigned sequence; never reused
  uint64_t messages = 0;
  uint64_t bytes = 0;        // sum of env_len of stored messages

  void Encode(char* p) const {
    PutLe(p, id);
    PutLe(p + 4, first_seq);
    PutLe(p + 12, last_seq);
    PutLe(p + 20, messages);
    PutLe(p + 28, bytes);
  }
  bool Decode(const char* p, size_t size) {
    if (size < kSize) return false;
    id = GetLe<uint32_t>(p);
    first_seq = GetLe<uint64_t>(p + 4);
    last_seq = GetLe<uint64_t>(p + 12);
    messages = GetLe<uint64_t>(p + 20);
    bytes = GetLe<uint64_t>(p + 28);
    return true;
  }
};

// A subscription record: its options as created and its cursor. Invariant: every seq <= floor is
// acked (or dead-lettered, or skipped); acked seqs above it are the `acks` entries of this sub id.
struct SubRecord {
  static constexpr size_t kSize = 80;
  uint32_t id = 0;
  uint64_t floor = 0;
  uint64_t skipped = 0;
  uint8_t ordering = 0;        // OrderingMode
  uint8_t on_full = 0;         // BacklogFullPolicy
  uint32_t max_deliveries = 5;
  int64_t ack_wait_ms = 30000;
  int64_t backoff_initial_ms = 1000;
  double backoff_multiplier = 2.0;
  int64_t backoff_max_ms = 300000;
  uint64_t max_backlog = 0;
  int64_t created_us = 0;
  uint32_t max_crashes = 3;

  void Encode(char* p) const {
    PutLe(p, id);
    PutLe(p + 4, floor);
    PutLe(p + 12, skipped);
    PutLe(p + 20, ordering);
    PutLe(p + 21, on_full);
    p[22] = p[23] = 0;
    PutLe(p + 24, max_deliveries);
    PutLe(p + 28, ack_wait_ms);
    PutLe(p + 36, backoff_initial_ms);
    PutLe(p + 44, backoff_multiplier);
    PutLe(p + 52, backoff_max_ms);
    PutLe(p + 60, max_backlog);
    PutLe(p + 68, created_us);
    PutLe(p + 76, max_crashes);
  }
  bool Decode(const char* p, size_t size) {
    if (size < kSize) return false;
    id = GetLe<uint32_t>(p);
    floor = GetLe<uint64_t>(p + 4);
    skipped = GetLe<uint64_t>(p + 12);
    ordering = GetLe<uint8_t>(p + 20);
    on_full = GetLe<uint8_t>(p + 21);
    max_deliveries = GetLe<uint32_t>(p + 24);
    ack_wait_ms = GetLe<int64_t>(p + 28);
    backoff_initial_ms = GetLe<int64_t>(p + 36);
    backoff_multiplier = GetLe<double>(p + 44);
    backoff_max_ms = GetLe<int64_t>(p + 52);
    max_backlog = GetLe<uint64_t>(p + 60);
    created_us = GetLe<int64_t>(p + 68);
    max_crashes = GetLe<uint32_t>(p + 76);
    return true;
  }
};

// A dead-letter value: this header, then reason, last error, ordering key and the envelope. A
// redriven entry stays here (state kRedriven) until the redelivered message is acked.
struct DeadHeader {
  static constexpr size_t kSize = 32;
  static constexpr uint8_t kDead = 0;
  static constexpr uint8_t kRedriven = 1;
  uint8_t state = kDead;
  uint32_t delivery_count = 0;
  int64_t dead_lettered_at_us = 0;
  uint32_t reason_len = 0;
  uint32_t error_len = 0;
  uint32_t key_len = 0;
  uint32_t env_len = 0;

  void Encode(char* p) const {
    p[0] = static_cast<char>(state);
    p[1] = p[2] = p[3] = 0;
    PutLe(p + 4, delivery_count);
    PutLe(p + 8, dead_lettered_at_us);
    PutLe(p + 16, reason_len);
    PutLe(p + 20, error_len);
    PutLe(p + 24, key_len);
    PutLe(p + 28, env_len);
  }
  bool Decode(const char* p, size_t size) {
    if (size < kSize) return false;
    state = static_cast<uint8_t>(p[0]);
    delivery_count = GetLe<uint32_t>(p + 4);
    dead_lettered_at_us = GetLe<int64_t>(p + 8);
    reason_len = GetLe<uint32_t>(p + 16);
    error_len = GetLe<uint32_t>(p + 20);
    key_len = GetLe<uint32_t>(p + 24);
    env_len = GetLe<uint32_t>(p + 28);
    return kSize + uint64_t{reason_len} + error_len + key_len + env_len == size;
  }
  std::string_view Reason(const char* p) const { return {p + kSize, reason_len}; }
  std::string_view Error(const char* p) const { return {p + kSize + reason_len, error_len}; }
  std::string_view Key(const char* p) const { return {p + kSize + reason_len + error_len, key_len}; }
  std::string_view Envelope(const char* p) const {
    return {p + kSize + reason_len + error_len + key_len, env_len};
  }
};

}  // namespace sluice::broker::store

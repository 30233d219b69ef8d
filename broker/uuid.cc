// SPDX-License-Identifier: MIT
#include "broker/uuid.h"

#include <chrono>
#include <random>

#include <fmt/format.h>

namespace sluice {
namespace {

std::mt19937_64& Rng() {
  // A single random_device() call yields only 32 bits: with it, two threads or processes share a
  // random stream (and so mint equal ids within a millisecond) once a few ten thousand have started.
  thread_local std::mt19937_64 rng = [] {
    std::random_device rd;
    std::seed_seq seed{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seed);
  }();
  return rng;
}

// 64-bit FNV-1a: turns DeriveUuid's label into the key of its permutation. Not cryptographic; ids only
// need to be stable and unlikely to collide within one system.
uint64_t Fnv1a(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

}  // namespace

Uuid NewUuidV7(int64_t now_unix_ms) {
  uint64_t rand_a = Rng()();
  uint64_t rand_b = Rng()();
  Uuid id;
  id.hi = (static_cast<uint64_t>(now_unix_ms) << 16) | (0x7ull << 12) | (rand_a & 0x0fffull);
  id.lo = (0x2ull << 62) | (rand_b & 0x3fffffffffffffffull);
  return id;
}

Uuid NewUuidV7() {
  auto now = std::chrono::system_clock::now().time_since_epoch();
  return NewUuidV7(std::chrono::duration_cast<std::chrono::milliseconds>(now).count());
}

Uuid DeriveUuid(const Uuid& parent, std::string_view label) {
  // The parent's top 48 bits (a UUIDv7's millisecond timestamp) are kept, so derived ids sort by the
  // time of the message at the root of their chain. The dedupe index is keyed by id: time-ordered ids
  // land on its last pages (and expire from its first), where random ones dirtied a random page each,
  // which made that index most of a bundle commit's disk writes.
  //
  // The other 74 bits come from three Feistel rounds keyed by the label over the whole parent: every
  // one of them depends on both halves of the parent and on the label. (Hashing each half separately
  // and mixing in the other by XOR made the result a function of hi ^ lo alone for an empty label.)
  uint64_t key = Fnv1a(label);
  uint64_t hi = parent.hi;
  uint64_t lo = parent.lo;
  lo ^= Mix(hi ^ key);
  hi ^= Mix(lo ^ key ^ 0x9e3779b97f4a7c15ull);
  lo ^= Mix(hi ^ key ^ 0x3c6ef372fe94f82aull);
  Uuid id;
  id.hi = (parent.hi & ~0xffffull) | (0x8ull << 12) | (hi & 0x0fffull);
  id.lo = (lo & 0x3fffffffffffffffull) | (0x2ull << 62);
  return id;
}

std::string FormatUuid(const Uuid& id) {
  return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", id.hi >> 32, (id.hi >> 16) & 0xffff,
                     id.hi & 0xffff, id.lo >> 48, id.lo & 0xffffffffffffull);
}

std::optional<Uuid> ParseUuid(std::string_view text) {
  if (text.size() != 36) return std::nullopt;
  Uuid id;
  int nibbles = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return std::nullopt;
      continue;
    }
    uint64_t v;
    if (c >= '0' && c <= '9') v = static_cast<uint64_t>(c - '0');
    else if (c >= 'a' && c <= 'f') v = static_cast<uint64_t>(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v = static_cast<uint64_t>(c - 'A' + 10);
    else return std::nullopt;
    uint64_t& half = nibbles < 16 ? id.hi : id.lo;
    half = (half << 4) | v;
    ++nibbles;
  }
  return id;
}

}  // namespace sluice

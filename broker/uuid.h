// SPDX-License-Identifier: MIT
//
// 128-bit identifiers. Message ids are UUIDv7 (RFC 9562): a 48-bit Unix millisecond timestamp, then
// random bits, so ids sort roughly by creation time. DeriveUuid() makes the id of a message caused by
// another one deterministic (a handler that runs twice publishes the same ids, and dedupe drops the
// repeat). Thread-safe: NewUuidV7() uses a per-thread generator.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sluice {

struct Uuid {
  uint64_t hi = 0;
  uint64_t lo = 0;

  bool IsNil() const { return hi == 0 && lo == 0; }
  friend bool operator==(const Uuid&, const Uuid&) = default;
  friend auto operator<=>(const Uuid&, const Uuid&) = default;
};

Uuid NewUuidV7(int64_t now_unix_ms);
Uuid NewUuidV7();
// A UUIDv8 (name-based, stable) from a parent id and a label: same inputs, same id. It keeps the
// parent's 48-bit timestamp, so ids derived from UUIDv7s sort by time too.
Uuid DeriveUuid(const Uuid& parent, std::string_view label);

// "0192f1e4-8c3a-7b2e-9f00-1a2b3c4d5e6f"
std::string FormatUuid(const Uuid& id);
std::optional<Uuid> ParseUuid(std::string_view text);

}  // namespace sluice

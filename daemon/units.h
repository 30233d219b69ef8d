// SPDX-License-Identifier: MIT
//
// The human units of the config file: sizes ("64MiB"), durations ("1h30m") and RFC 3339 timestamps
// ("2026-01-02T03:04:05Z"), parsed into integers and printed back in their shortest exact form, so that
// Parse(Format(x)) == x for every value a parser accepts. The parsers never round: a value that cannot
// be held exactly (a fraction of a byte, a duration finer than 1 ms, a time finer than 1 us) is an
// error, as is a negative value or one that overflows 64 bits. An error is a kInvalidArgument Status
// whose message starts with the quoted input: "\"12XB\": unknown size unit \"XB\" (use B, KiB, ...)".
//
// Thread-safe: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "broker/options.h"
#include "broker/status.h"

namespace sluice {

// "64MiB", "4 KiB", "1GB", "512" (bytes). Binary (KiB, MiB, GiB, TiB) and decimal (kB, MB, GB, TB)
// suffixes; case-sensitive as written here, plus "B". Leading and trailing blanks and blanks between
// the number and the unit are allowed. Rejects negatives, fractions, overflow.
Result<uint64_t> ParseSize(std::string_view text);

// "30s", "2m", "150ms", "1h", "1h30m", "1.5s", "0"; units us, ms, s, m, h, d. A bare number is
// accepted only for "0". Components add up ("1h 30m"); a decimal fraction is allowed when the result
// is a whole number of milliseconds. Rejects negatives and overflow.
Result<Duration> ParseDuration(std::string_view text);

// Inverses for printing. FormatSize: the shortest exact form, a unit winning a tie (67108864 ->
// "64MiB", 1024 -> "1KiB", 1536 -> "1536", 0 -> "0"). FormatDuration: components largest first (90 s
// -> "1m30s", 1500 ms -> "1s500ms", 0 -> "0"); a negative duration gets a leading "-", which
// ParseDuration refuses: config values are never negative.
std::string FormatSize(uint64_t bytes);
std::string FormatDuration(Duration d);

// An RFC 3339 date-time with a zone: "2026-01-02T03:04:05Z", "2026-01-02t03:04:05.25+02:00",
// "2026-01-02 03:04:05Z". The instant must lie in the years 0000..9999 in UTC; no leap second, at
// most microsecond precision. Returns microseconds since the Unix epoch (negative before 1970).
Result<int64_t> ParseTimestamp(std::string_view text);
// The inverse, always in UTC: "2026-01-02T03:04:05Z", "2026-01-02T03:04:05.250000Z". Times outside
// the years 0000..9999 are clamped to them.
std::string FormatTimestamp(int64_t unix_us);

}  // namespace sluice

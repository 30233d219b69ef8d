// SPDX-License-Identifier: MIT
//
// Parsers and printers for sizes, durations and timestamps (units.h). All arithmetic is in integers
// with explicit overflow checks (__builtin_*_overflow, which GCC and Clang both provide), so no input
// can wrap around into a small, plausible value. Thread-safe: no state.
#include "daemon/units.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <limits>
#include <numeric>

namespace sluice {
namespace {

struct Unit {
  std::string_view name;
  uint64_t factor;
};

// Binary units come first: FormatSize prefers them when two forms are equally short.
constexpr std::array<Unit, 9> kSizeUnits = {{
    {"KiB", 1ull << 10},
    {"MiB", 1ull << 20},
    {"GiB", 1ull << 30},
    {"TiB", 1ull << 40},
    {"kB", 1000ull},
    {"MB", 1000ull * 1000},
    {"GB", 1000ull * 1000 * 1000},
    {"TB", 1000ull * 1000 * 1000 * 1000},
    {"B", 1},
}};
constexpr std::string_view kSizeUnitList = "B, KiB, MiB, GiB, TiB, kB, MB, GB, TB";

// Factors in microseconds, largest first (the order FormatDuration prints components in).
constexpr int64_t kUsPerMs = 1000;
constexpr std::array<Unit, 6> kDurationUnits = {{
    {"d", 86400ull * 1000 * 1000},
    {"h", 3600ull * 1000 * 1000},
    {"m", 60ull * 1000 * 1000},
    {"s", 1000ull * 1000},
    {"ms", 1000},
    {"us", 1},
}};
constexpr std::string_view kDurationUnitList = "us, ms, s, m, h, d";

bool IsBlank(char c) {
  return c == ' ' || c == '\t';
}
bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}
bool IsUnitChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsBlank(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsBlank(s.back())) s.remove_suffix(1);
  return s;
}

void SkipBlanks(std::string_view& s) {
  while (!s.empty() && IsBlank(s.front())) s.remove_prefix(1);
}

// Consumes a run of digits into `out`; false on overflow. Leaves `s` after the digits.
bool ConsumeDigits(std::string_view& s, uint64_t& out, size_t& count) {
  out = 0;
  count = 0;
  bool overflow = false;
  while (!s.empty() && IsDigit(s.front())) {
    if (__builtin_mul_overflow(out, 10u, &out) ||
        __builtin_add_overflow(out, static_cast<uint64_t>(s.front() - '0'), &out)) {
      overflow = true;
    }
    s.remove_prefix(1);
    ++count;
  }
  return !overflow;
}

std::string_view ConsumeUnit(std::string_view& s) {
  size_t n = 0;
  while (n < s.size() && IsUnitChar(s[n])) ++n;
  std::string_view unit = s.substr(0, n);
  s.remove_prefix(n);
  return unit;
}

Status Bad(std::string_view input, std::string_view problem) {
  return InvalidArgument(fmt::format("\"{}\": {}", input, problem));
}

}  // namespace

Result<uint64_t> ParseSize(std::string_view text) {
  std::string_view s = Trim(text);
  if (s.empty()) return Bad(text, "empty size (write e.g. \"64MiB\" or a number of bytes)");
  if (s.front() == '-') return Bad(text, "negative size");
  if (!IsDigit(s.front())) return Bad(text, "not a size (write e.g. \"64MiB\" or a number of bytes)");
  uint64_t number = 0;
  size_t digits = 0;
  if (!ConsumeDigits(s, number, digits)) return Bad(text, "too large (more than 64 bits)");
  if (!s.empty() && (s.front() == '.' || s.front() == ',')) {
    return Bad(text, "fractions are not allowed (use a smaller unit, e.g. \"1536MiB\" for 1.5GiB)");
  }
  SkipBlanks(s);
  std::string_view unit = ConsumeUnit(s);
  if (!s.empty()) return Bad(text, "not a size (write e.g. \"64MiB\" or a number of bytes)");
  uint64_t factor = 1;
  if (!unit.empty()) {
    factor = 0;
    for (const Unit& u : kSizeUnits) {
      if (u.name == unit) factor = u.factor;
    }
    if (factor == 0) {
      return Bad(text, fmt::format("unknown size unit \"{}\" (use {})", unit, kSizeUnitList));
    }
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(number, factor, &bytes)) return Bad(text, "too large (more than 64 bits)");
  return bytes;
}

Result<Duration> ParseDuration(std::string_view text) {
  std::string_view s = Trim(text);
  if (s.empty()) return Bad(text, "empty duration (write e.g. \"30s\")");
  if (s.front() == '-') return Bad(text, "negative duration");
  int64_t total_us = 0;
  bool first = true;
  while (!s.empty()) {
    if (!IsDigit(s.front())) {
      if (first) return Bad(text, "not a duration (write e.g. \"30s\", \"150ms\" or \"1h30m\")");
      return Bad(text, fmt::format("unexpected \"{}\" (write e.g. \"1h30m\")", s));
    }
    uint64_t whole = 0;
    size_t whole_digits = 0;
    if (!ConsumeDigits(s, whole, whole_digits)) return Bad(text, "too large");
    uint64_t frac = 0;
    size_t frac_digits = 0;
    if (!s.empty() && s.front() == '.') {
      s.remove_prefix(1);
      size_t n = 0;
      while (n < s.size() && IsDigit(s[n])) ++n;
      if (n == 0) return Bad(text, "a digit must follow the decimal point");
      std::string_view frac_text = s.substr(0, n);
      s.remove_prefix(n);
      while (!frac_text.empty() && frac_text.back() == '0') frac_text.remove_suffix(1);
      // Every unit is below 10^11 us, so 11 or more significant fraction digits can never land on a
      // whole microsecond; stopping at 18 also keeps 10^digits within 64 bits.
      if (frac_text.size() > 18) return Bad(text, "finer than the 1ms resolution");
      if (!ConsumeDigits(frac_text, frac, frac_digits)) return Bad(text, "finer than the 1ms resolution");
    }
    SkipBlanks(s);
    std::string_view unit = ConsumeUnit(s);
    SkipBlanks(s);
    if (unit.empty()) {
      if (first && s.empty() && whole == 0 && frac == 0) return Duration(0);
      return Bad(text, fmt::format("missing unit (use {})", kDurationUnitList));
    }
    const Unit* found = nullptr;
    for (const Unit& u : kDurationUnits) {
      if (u.name == unit) found = &u;
    }
    if (found == nullptr) {
      return Bad(text, fmt::format("unknown duration unit \"{}\" (use {})", unit, kDurationUnitList));
    }
    const int64_t factor = static_cast<int64_t>(found->factor);
    int64_t part = 0;
    if (whole > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(static_cast<int64_t>(whole), factor, &part)) {
      return Bad(text, "too large");
    }
    if (frac_digits > 0) {
      int64_t scale = 1;
      for (size_t i = 0; i < frac_digits; ++i) scale *= 10;
      // frac / scale * factor must be a whole number of microseconds; reduce by the common divisor
      // first so that the product stays below `factor` and cannot overflow.
      const int64_t g = std::gcd(scale, factor);
      const int64_t denominator = scale / g;
      if (static_cast<int64_t>(frac) % denominator != 0) return Bad(text, "finer than the 1ms resolution");
      part += static_cast<int64_t>(frac) / denominator * (factor / g);
    }
    if (__builtin_add_overflow(total_us, part, &total_us)) return Bad(text, "too large");
    first = false;
  }
  if (total_us % kUsPerMs != 0) return Bad(text, "finer than the 1ms resolution");
  return Duration(total_us / kUsPerMs);
}

std::string FormatSize(uint64_t bytes) {
  std::string best = fmt::format("{}", bytes);
  if (bytes == 0) return best;
  bool best_has_unit = false;
  for (const Unit& u : kSizeUnits) {
    if (u.factor == 1 || bytes % u.factor != 0) continue;
    std::string candidate = fmt::format("{}{}", bytes / u.factor, u.name);
    // On a tie a unit reads better than a bare number ("1KiB", not "1024").
    if (candidate.size() < best.size() || (candidate.size() == best.size() && !best_has_unit)) {
      best = std::move(candidate);
      best_has_unit = true;
    }
  }
  return best;
}

std::string FormatDuration(Duration d) {
  int64_t ms = d.count();
  if (ms == 0) return "0";
  std::string out;
  // Work in unsigned so that the most negative value has a magnitude too.
  uint64_t rest = static_cast<uint64_t>(ms);
  if (ms < 0) {
    out = "-";
    rest = 0 - rest;
  }
  for (const Unit& u : kDurationUnits) {
    if (u.factor < static_cast<uint64_t>(kUsPerMs)) break;
    const uint64_t unit_ms = u.factor / kUsPerMs;
    if (rest >= unit_ms) {
      out += fmt::format("{}{}", rest / unit_ms, u.name);
      rest %= unit_ms;
    }
  }
  return out;
}

// ---- RFC 3339 ----

namespace {

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

void CivilFromDays(int64_t z, int64_t& y, unsigned& m, unsigned& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = static_cast<int64_t>(yoe) + era * 400 + (m <= 2);
}

unsigned DaysInMonth(int64_t y, unsigned m) {
  static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : kDays[m - 1];
}

// Reads exactly `n` digits.
bool Fixed(std::string_view& s, size_t n, unsigned& out) {
  if (s.size() < n) return false;
  out = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!IsDigit(s[i])) return false;
    out = out * 10 + static_cast<unsigned>(s[i] - '0');
  }
  s.remove_prefix(n);
  return true;
}

bool Expect(std::string_view& s, char c) {
  if (s.empty() || s.front() != c) return false;
  s.remove_prefix(1);
  return true;
}

constexpr int64_t kUsPerSecond = 1000 * 1000;
constexpr int64_t kSecondsPerDay = 86400;
constexpr int64_t kMinTimestampUs = -62167219200LL * kUsPerSecond;           // 0000-01-01T00:00:00Z
constexpr int64_t kMaxTimestampUs = 253402300799LL * kUsPerSecond + 999999;  // 9999-12-31T23:59:59.999999Z

}  // namespace

Result<int64_t> ParseTimestamp(std::string_view text) {
  constexpr std::string_view kShape = "not an RFC 3339 time (write e.g. \"2026-01-02T03:04:05Z\")";
  std::string_view s = text;
  unsigned year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (!Fixed(s, 4, year) || !Expect(s, '-') || !Fixed(s, 2, month) || !Expect(s, '-') || !Fixed(s, 2, day)) {
    return Bad(text, kShape);
  }
  if (s.empty() || (s.front() != 'T' && s.front() != 't' && s.front() != ' ')) return Bad(text, kShape);
  s.remove_prefix(1);
  if (!Fixed(s, 2, hour) || !Expect(s, ':') || !Fixed(s, 2, minute) || !Expect(s, ':') ||
      !Fixed(s, 2, second)) {
    return Bad(text, kShape);
  }
  int64_t micros = 0;
  if (Expect(s, '.')) {
    size_t n = 0;
    bool sub_micro = false;
    while (!s.empty() && IsDigit(s.front())) {
      const int digit = s.front() - '0';
      if (n < 6) {
        micros = micros * 10 + digit;
      } else if (digit != 0) {
        sub_micro = true;
      }
      ++n;
      s.remove_prefix(1);
    }
    if (n == 0) return Bad(text, kShape);
    if (sub_micro) return Bad(text, "finer than the 1us resolution");
    for (; n < 6; ++n) micros *= 10;
  }
  int64_t offset_seconds = 0;
  if (s.empty()) {
    return Bad(text, "missing time zone (end with \"Z\" for UTC or an offset such as \"+02:00\")");
  }
  if (s.front() == 'Z' || s.front() == 'z') {
    s.remove_prefix(1);
  } else if (s.front() == '+' || s.front() == '-') {
    const int sign = s.front() == '-' ? -1 : 1;
    s.remove_prefix(1);
    unsigned oh = 0, om = 0;
    if (!Fixed(s, 2, oh) || !Expect(s, ':') || !Fixed(s, 2, om)) return Bad(text, kShape);
    if (oh > 23 || om > 59) return Bad(text, "time zone offset out of range");
    offset_seconds = sign * static_cast<int64_t>(oh * 3600 + om * 60);
  } else {
    return Bad(text, kShape);
  }
  if (!s.empty()) return Bad(text, kShape);
  if (month < 1 || month > 12 || day < 1 || day > DaysInMonth(year, month)) {
    return Bad(text, "no such date");
  }
  if (hour > 23 || minute > 59) return Bad(text, "no such time");
  if (second > 59) return Bad(text, "no such time (leap seconds are not supported)");
  const int64_t seconds =
      DaysFromCivil(year, month, day) * kSecondsPerDay + hour * 3600 + minute * 60 + second - offset_seconds;
  const int64_t us = seconds * kUsPerSecond + micros;
  // An offset can push the instant out of the years FormatTimestamp can print.
  if (us < kMinTimestampUs || us > kMaxTimestampUs) return Bad(text, "outside the years 0000..9999 in UTC");
  return us;
}

std::string FormatTimestamp(int64_t unix_us) {
  unix_us = std::clamp(unix_us, kMinTimestampUs, kMaxTimestampUs);
  int64_t seconds = unix_us / kUsPerSecond;
  int64_t micros = unix_us % kUsPerSecond;
  if (micros < 0) {
    micros += kUsPerSecond;
    --seconds;
  }
  int64_t days = seconds / kSecondsPerDay;
  int64_t sod = seconds % kSecondsPerDay;
  if (sod < 0) {
    sod += kSecondsPerDay;
    --days;
  }
  int64_t y = 0;
  unsigned m = 0, d = 0;
  CivilFromDays(days, y, m, d);
  std::string out =
      fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", y, m, d, sod / 3600, sod / 60 % 60, sod % 60);
  if (micros != 0) out += fmt::format(".{:06}", micros);
  out += 'Z';
  return out;
}

}  // namespace sluice

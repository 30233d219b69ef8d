// SPDX-License-Identifier: MIT
//
// Tests of the size, duration and timestamp parsers and printers (daemon/units.h): accepted forms,
// every class of rejected input with its message, overflow at the 64-bit edges, and that printing
// and parsing are inverses. Single-threaded.
#include "daemon/units.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>

namespace sluice {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using ::testing::HasSubstr;
using ::testing::StartsWith;

uint64_t Size(std::string_view text) {
  Result<uint64_t> r = ParseSize(text);
  EXPECT_TRUE(r.ok()) << text << ": " << r.status().ToString();
  return r.ok() ? *r : 0;
}

std::string SizeError(std::string_view text) {
  Result<uint64_t> r = ParseSize(text);
  EXPECT_FALSE(r.ok()) << text << " parsed as " << (r.ok() ? *r : 0);
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  return r.status().message();
}

Duration Dur(std::string_view text) {
  Result<Duration> r = ParseDuration(text);
  EXPECT_TRUE(r.ok()) << text << ": " << r.status().ToString();
  return r.ok() ? *r : Duration(-1);
}

std::string DurError(std::string_view text) {
  Result<Duration> r = ParseDuration(text);
  EXPECT_FALSE(r.ok()) << text << " parsed as " << (r.ok() ? r->count() : 0) << "ms";
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  return r.status().message();
}

TEST(ParseSizeTest, AcceptsBytesAndEveryUnit) {
  EXPECT_EQ(Size("0"), 0u);
  EXPECT_EQ(Size("512"), 512u);
  EXPECT_EQ(Size("512B"), 512u);
  EXPECT_EQ(Size("4KiB"), 4096u);
  EXPECT_EQ(Size("64MiB"), 64ull << 20);
  EXPECT_EQ(Size("2GiB"), 2ull << 30);
  EXPECT_EQ(Size("3TiB"), 3ull << 40);
  EXPECT_EQ(Size("1kB"), 1000u);
  EXPECT_EQ(Size("5MB"), 5000000u);
  EXPECT_EQ(Size("1GB"), 1000000000u);
  EXPECT_EQ(Size("2TB"), 2000000000000u);
  EXPECT_EQ(Size("007KiB"), 7u * 1024);
}

TEST(ParseSizeTest, AllowsBlanksAroundAndBeforeTheUnit) {
  EXPECT_EQ(Size("4 KiB"), 4096u);
  EXPECT_EQ(Size("  4\tKiB \t"), 4096u);
  EXPECT_EQ(Size(" 17 "), 17u);
}

TEST(ParseSizeTest, UnitsAreCaseSensitive) {
  EXPECT_EQ(SizeError("12XB"),
            "\"12XB\": unknown size unit \"XB\" (use B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)");
  EXPECT_THAT(SizeError("1kib"), HasSubstr("unknown size unit \"kib\""));
  EXPECT_THAT(SizeError("1KB"), HasSubstr("unknown size unit \"KB\""));
  EXPECT_THAT(SizeError("1mb"), HasSubstr("unknown size unit \"mb\""));
}

TEST(ParseSizeTest, RejectsNegativesFractionsAndJunk) {
  EXPECT_EQ(SizeError("-5MiB"), "\"-5MiB\": negative size");
  EXPECT_THAT(SizeError("1.5GiB"), AllOf(StartsWith("\"1.5GiB\": "), HasSubstr("fractions are not allowed")));
  EXPECT_THAT(SizeError("1,5GiB"), HasSubstr("fractions are not allowed"));
  EXPECT_THAT(SizeError(""), HasSubstr("empty size"));
  EXPECT_THAT(SizeError("   "), HasSubstr("empty size"));
  EXPECT_THAT(SizeError("MiB"), HasSubstr("not a size"));
  EXPECT_THAT(SizeError("+5"), HasSubstr("not a size"));
  EXPECT_THAT(SizeError("5 MiB x"), HasSubstr("not a size"));
  EXPECT_THAT(SizeError("5MiB5"), HasSubstr("not a size"));
  EXPECT_THAT(SizeError("1e6"), HasSubstr("not a size"));
}

TEST(ParseSizeTest, DetectsOverflow) {
  EXPECT_EQ(Size("18446744073709551615"), std::numeric_limits<uint64_t>::max());
  EXPECT_THAT(SizeError("18446744073709551616"), HasSubstr("too large"));
  EXPECT_THAT(SizeError("99999999999999999999999B"), HasSubstr("too large"));
  EXPECT_EQ(Size("16777215TiB"), 16777215ull << 40);
  EXPECT_THAT(SizeError("16777216TiB"), HasSubstr("too large"));
  EXPECT_THAT(SizeError("18446744073709552kB"), HasSubstr("too large"));
}

TEST(FormatSizeTest, PrintsTheShortestExactForm) {
  EXPECT_EQ(FormatSize(0), "0");
  EXPECT_EQ(FormatSize(512), "512");
  EXPECT_EQ(FormatSize(1024), "1KiB");  // a unit wins a tie with the bare number
  EXPECT_EQ(FormatSize(1536), "1536");
  EXPECT_EQ(FormatSize(64ull << 20), "64MiB");
  EXPECT_EQ(FormatSize(8ull << 30), "8GiB");
  EXPECT_EQ(FormatSize(1ull << 40), "1TiB");
  EXPECT_EQ(FormatSize(1000), "1kB");
  EXPECT_EQ(FormatSize(5000000), "5MB");
  EXPECT_EQ(FormatSize(1024000), "1024kB");  // shorter than 1000KiB
  EXPECT_EQ(FormatSize(1ull << 50), "1024TiB");
  EXPECT_EQ(FormatSize(4096000000000ull), "4096GB");
}

TEST(FormatSizeTest, RoundTrips) {
  const uint64_t values[] = {0,
                             1,
                             999,
                             1000,
                             1023,
                             1024,
                             1025,
                             1536,
                             1000000,
                             1048576,
                             123456789,
                             1ull << 40,
                             3ull << 41,
                             999ull << 40,
                             1000000000000000,
                             std::numeric_limits<uint64_t>::max(),
                             std::numeric_limits<uint64_t>::max() - 1023};
  for (uint64_t v : values) EXPECT_EQ(Size(FormatSize(v)), v) << FormatSize(v);
}

TEST(ParseDurationTest, AcceptsEveryUnit) {
  EXPECT_EQ(Dur("0"), Duration(0));
  EXPECT_EQ(Dur("0s"), Duration(0));
  EXPECT_EQ(Dur("1000us"), milliseconds(1));
  EXPECT_EQ(Dur("150ms"), milliseconds(150));
  EXPECT_EQ(Dur("30s"), seconds(30));
  EXPECT_EQ(Dur("2m"), minutes(2));
  EXPECT_EQ(Dur("1h"), hours(1));
  EXPECT_EQ(Dur("7d"), hours(7 * 24));
}

TEST(ParseDurationTest, AddsComponents) {
  EXPECT_EQ(Dur("1h30m"), minutes(90));
  EXPECT_EQ(Dur("1h 30m"), minutes(90));
  EXPECT_EQ(Dur("1m30s500ms"), milliseconds(90500));
  EXPECT_EQ(Dur("30m1h"), minutes(90));  // order is not enforced; the sum is what counts
  EXPECT_EQ(Dur("500us500us"), milliseconds(1));
}

TEST(ParseDurationTest, AllowsBlanks) {
  EXPECT_EQ(Dur(" 30s "), seconds(30));
  EXPECT_EQ(Dur("30 s"), seconds(30));
  EXPECT_EQ(Dur("\t1h\t30m\t"), minutes(90));
}

TEST(ParseDurationTest, AcceptsExactFractions) {
  EXPECT_EQ(Dur("1.5s"), milliseconds(1500));
  EXPECT_EQ(Dur("0.5h"), minutes(30));
  EXPECT_EQ(Dur("2.000s"), seconds(2));
  EXPECT_EQ(Dur("0.001s"), milliseconds(1));
  EXPECT_EQ(Dur("1.0000000000000000000000s"), seconds(1));  // trailing zeros are no precision
  EXPECT_THAT(DurError("0.0001s"), HasSubstr("finer than the 1ms resolution"));
  EXPECT_THAT(DurError("1500us"), HasSubstr("finer than the 1ms resolution"));
  EXPECT_THAT(DurError("1.5ms"), HasSubstr("finer than the 1ms resolution"));
  EXPECT_THAT(DurError("0.1234567890123456789d"), HasSubstr("finer than the 1ms resolution"));
  EXPECT_THAT(DurError("1.s"), HasSubstr("a digit must follow the decimal point"));
  EXPECT_THAT(DurError(".5s"), HasSubstr("not a duration"));
}

TEST(ParseDurationTest, RejectsNegativesAndMissingOrUnknownUnits) {
  EXPECT_EQ(DurError("-5s"), "\"-5s\": negative duration");
  EXPECT_EQ(DurError("30"), "\"30\": missing unit (use us, ms, s, m, h, d)");
  EXPECT_THAT(DurError("1h30"), HasSubstr("missing unit"));
  EXPECT_EQ(DurError("5x"), "\"5x\": unknown duration unit \"x\" (use us, ms, s, m, h, d)");
  EXPECT_THAT(DurError("5S"), HasSubstr("unknown duration unit \"S\""));
  EXPECT_THAT(DurError("5sec"), HasSubstr("unknown duration unit \"sec\""));
  EXPECT_THAT(DurError(""), HasSubstr("empty duration"));
  EXPECT_THAT(DurError("s"), HasSubstr("not a duration"));
  EXPECT_THAT(DurError("1h-5m"), HasSubstr("unexpected \"-5m\""));
  EXPECT_THAT(DurError("0 5s"), HasSubstr("missing unit"));
}

TEST(ParseDurationTest, DetectsOverflow) {
  // 2^63 us is about 106751991.2 days.
  EXPECT_EQ(Dur("106751991d"), hours(106751991LL * 24));
  EXPECT_THAT(DurError("106751992d"), HasSubstr("too large"));
  EXPECT_THAT(DurError("9223372036854775807s"), HasSubstr("too large"));
  EXPECT_THAT(DurError("99999999999999999999ms"), HasSubstr("too large"));
  EXPECT_THAT(DurError("106751991d106751991d"), HasSubstr("too large"));
}

TEST(FormatDurationTest, PrintsComponentsLargestFirst) {
  EXPECT_EQ(FormatDuration(Duration(0)), "0");
  EXPECT_EQ(FormatDuration(milliseconds(150)), "150ms");
  EXPECT_EQ(FormatDuration(seconds(90)), "1m30s");
  EXPECT_EQ(FormatDuration(milliseconds(1500)), "1s500ms");
  EXPECT_EQ(FormatDuration(hours(24)), "1d");
  EXPECT_EQ(FormatDuration(hours(25) + milliseconds(1)), "1d1h1ms");
  EXPECT_EQ(FormatDuration(-seconds(5)), "-5s");
  EXPECT_EQ(FormatDuration(Duration::min()), "-106751991167d7h12m55s808ms");
}

TEST(FormatDurationTest, RoundTrips) {
  const Duration values[] = {Duration(0),
                             milliseconds(1),
                             milliseconds(999),
                             seconds(1),
                             seconds(59),
                             seconds(61),
                             minutes(90),
                             hours(23),
                             hours(24 * 400),
                             milliseconds(86400001),
                             hours(106751991LL * 24)};
  for (Duration v : values) EXPECT_EQ(Dur(FormatDuration(v)), v) << FormatDuration(v);
}

TEST(ParseTimestampTest, AcceptsRfc3339) {
  auto us = [](std::string_view text) {
    Result<int64_t> r = ParseTimestamp(text);
    EXPECT_TRUE(r.ok()) << text << ": " << r.status().ToString();
    return r.ok() ? *r : -1;
  };
  EXPECT_EQ(us("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(us("2026-01-02T03:04:05Z"), 1767323045LL * 1000000);
  EXPECT_EQ(us("2026-01-02t03:04:05z"), 1767323045LL * 1000000);
  EXPECT_EQ(us("2026-01-02 03:04:05Z"), 1767323045LL * 1000000);
  EXPECT_EQ(us("2026-01-02T05:04:05+02:00"), 1767323045LL * 1000000);
  EXPECT_EQ(us("2026-01-01T22:34:05-04:30"), 1767323045LL * 1000000);
  EXPECT_EQ(us("2026-01-02T03:04:05.25Z"), 1767323045LL * 1000000 + 250000);
  EXPECT_EQ(us("2026-01-02T03:04:05.000001000Z"), 1767323045LL * 1000000 + 1);
  EXPECT_EQ(us("1969-12-31T23:59:59Z"), -1000000);
  EXPECT_EQ(us("2024-02-29T00:00:00Z"), 1709164800LL * 1000000);
}

TEST(ParseTimestampTest, RejectsWhatIsNotAnInstant) {
  auto error = [](std::string_view text) {
    Result<int64_t> r = ParseTimestamp(text);
    EXPECT_FALSE(r.ok()) << text;
    return r.ok() ? std::string() : r.status().message();
  };
  EXPECT_THAT(error("2026-01-02T03:04:05"), HasSubstr("missing time zone"));
  EXPECT_THAT(error("2026-01-02"), HasSubstr("not an RFC 3339 time"));
  EXPECT_THAT(error("2026-1-2T03:04:05Z"), HasSubstr("not an RFC 3339 time"));
  EXPECT_THAT(error("2026-01-02T03:04:05Zjunk"), HasSubstr("not an RFC 3339 time"));
  EXPECT_THAT(error("2025-02-29T00:00:00Z"), HasSubstr("no such date"));
  EXPECT_THAT(error("2026-13-01T00:00:00Z"), HasSubstr("no such date"));
  EXPECT_THAT(error("2026-01-01T24:00:00Z"), HasSubstr("no such time"));
  EXPECT_THAT(error("2026-12-31T23:59:60Z"), HasSubstr("leap seconds"));
  EXPECT_THAT(error("2026-01-01T00:00:00.0000001Z"), HasSubstr("finer than the 1us resolution"));
  EXPECT_THAT(error("2026-01-01T00:00:00+24:00"), HasSubstr("offset out of range"));
  EXPECT_THAT(error("0000-01-01T00:00:00+01:00"), HasSubstr("outside the years 0000..9999 in UTC"));
  EXPECT_THAT(error("9999-12-31T23:59:59-00:01"), HasSubstr("outside the years 0000..9999 in UTC"));
}

TEST(FormatTimestampTest, RoundTripsInUtc) {
  EXPECT_EQ(FormatTimestamp(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(FormatTimestamp(1767323045LL * 1000000), "2026-01-02T03:04:05Z");
  EXPECT_EQ(FormatTimestamp(1767323045LL * 1000000 + 250000), "2026-01-02T03:04:05.250000Z");
  EXPECT_EQ(FormatTimestamp(-1), "1969-12-31T23:59:59.999999Z");
  const int64_t values[] = {
      0, 1, -1, 951782400LL * 1000000, -62167219200LL * 1000000, 253402300799LL * 1000000 + 999999};
  for (int64_t v : values) {
    Result<int64_t> back = ParseTimestamp(FormatTimestamp(v));
    ASSERT_TRUE(back.ok()) << FormatTimestamp(v) << ": " << back.status().ToString();
    EXPECT_EQ(*back, v) << FormatTimestamp(v);
  }
}

}  // namespace
}  // namespace sluice

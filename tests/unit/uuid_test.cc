// SPDX-License-Identifier: MIT
//
// Tests of broker/uuid.h: UUIDv7 layout (RFC 9562 version and variant bits, the millisecond timestamp
// in the top 48 bits), ordering by time, text round trips, and DeriveUuid's stable, distinct ids.
// Times are passed in, never read from a clock. Single-threaded apart from the per-thread test.
#include "broker/uuid.h"

#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace sluice {
namespace {

constexpr int64_t kT0 = 1700000000000;  // 2023-11-14T22:13:20Z in Unix milliseconds

int Version(const Uuid& id) { return static_cast<int>((id.hi >> 12) & 0xf); }
int Variant(const Uuid& id) { return static_cast<int>(id.lo >> 62); }

TEST(Uuid, V7VersionVariantAndTimestamp) {
  for (int64_t t : {int64_t{0}, kT0, (int64_t{1} << 48) - 1}) {
    Uuid id = NewUuidV7(t);
    EXPECT_EQ(Version(id), 7);
    EXPECT_EQ(Variant(id), 0b10);
    EXPECT_EQ(static_cast<int64_t>(id.hi >> 16), t);
    EXPECT_FALSE(id.IsNil());
  }
  // The text form shows the version as the first digit of the third group.
  EXPECT_EQ(FormatUuid(NewUuidV7(kT0))[14], '7');
}

TEST(Uuid, V7SortsByTime) {
  Uuid previous = NewUuidV7(kT0);
  for (int64_t t = kT0 + 1; t < kT0 + 1000; ++t) {
    Uuid id = NewUuidV7(t);
    EXPECT_LT(previous, id) << t;
    EXPECT_LT(FormatUuid(previous), FormatUuid(id)) << "the text form sorts the same way";
    previous = id;
  }
}

TEST(Uuid, V7SameMillisecondIsUnique) {
  std::set<Uuid> seen;
  for (int i = 0; i < 10000; ++i) {
    Uuid id = NewUuidV7(kT0);
    EXPECT_TRUE(seen.insert(id).second) << FormatUuid(id);
    EXPECT_EQ(static_cast<int64_t>(id.hi >> 16), kT0);
  }
}

TEST(Uuid, V7ThreadsDrawDifferentStreams) {
  // Each thread seeds its own generator; two threads must not produce the same sequence.
  std::vector<Uuid> a, b;
  std::thread ta([&] { for (int i = 0; i < 8; ++i) a.push_back(NewUuidV7(kT0)); });
  std::thread tb([&] { for (int i = 0; i < 8; ++i) b.push_back(NewUuidV7(kT0)); });
  ta.join();
  tb.join();
  EXPECT_NE(a, b);
}

TEST(Uuid, V7FromClockIsRecent) {
  Uuid id = NewUuidV7();
  EXPECT_EQ(Version(id), 7);
  EXPECT_GT(static_cast<int64_t>(id.hi >> 16), kT0);
}

TEST(Uuid, FormatIsCanonical) {
  Uuid id{0x0192f1e48c3a7b2eull, 0x9f001a2b3c4d5e6full};
  EXPECT_EQ(FormatUuid(id), "0192f1e4-8c3a-7b2e-9f00-1a2b3c4d5e6f");
  EXPECT_EQ(FormatUuid(Uuid{}), "00000000-0000-0000-0000-000000000000");
  EXPECT_EQ(FormatUuid(Uuid{~0ull, ~0ull}), "ffffffff-ffff-ffff-ffff-ffffffffffff");
}

TEST(Uuid, ParseRoundTrip) {
  for (int64_t t = kT0; t < kT0 + 200; ++t) {
    Uuid id = NewUuidV7(t);
    auto parsed = ParseUuid(FormatUuid(id));
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(*parsed, id);
  }
  auto upper = ParseUuid("0192F1E4-8C3A-7B2E-9F00-1A2B3C4D5E6F");
  ASSERT_TRUE(upper.has_value());
  EXPECT_EQ(*upper, (Uuid{0x0192f1e48c3a7b2eull, 0x9f001a2b3c4d5e6full}));
}

TEST(Uuid, ParseRejectsMalformed) {
  for (const char* bad : {
           "",
           "0192f1e4-8c3a-7b2e-9f00-1a2b3c4d5e6",     // too short
           "0192f1e4-8c3a-7b2e-9f00-1a2b3c4d5e6f0",   // too long
           "0192f1e4x8c3a-7b2e-9f00-1a2b3c4d5e6f",    // separator
           "0192f1e48c3a7b2e9f001a2b3c4d5e6f----",    // separators misplaced
           "0192f1e4-8c3a-7b2e-9f00-1a2b3c4d5e6g",    // not hex
           "{192f1e4-8c3a-7b2e-9f00-1a2b3c4d5e6f",
           "0192f1e4-8c3a-7b2e-9f00-1a2b3c4d5e 6",
       }) {
    EXPECT_FALSE(ParseUuid(bad).has_value()) << bad;
  }
}

TEST(Uuid, DeriveIsStableAndVersion8) {
  Uuid parent{0x0192f1e48c3a7b2eull, 0x9f001a2b3c4d5e6full};
  Uuid a = DeriveUuid(parent, "inventory.reserved");
  Uuid b = DeriveUuid(parent, "inventory.reserved");
  EXPECT_EQ(a, b);
  EXPECT_EQ(Version(a), 8);
  EXPECT_EQ(Variant(a), 0b10);
  EXPECT_NE(a, parent);
  // Stable across builds and releases too: ids derived by an older sluiced must match after an upgrade
  // for dedupe to drop a re-run's repeat. Changing these values is a storage format change.
  EXPECT_EQ(FormatUuid(a), "0192f1e4-8c3a-86c5-b3ab-113c88746244");
  EXPECT_EQ(FormatUuid(DeriveUuid(Uuid{}, "")), "00000000-0000-8f6c-9883-f9186206a115");
}

TEST(Uuid, DeriveKeepsTheParentsTimestampSoDerivedIdsSortByTime) {
  // The dedupe index is keyed by id: ids that sort by time are appended to it, not spread over it.
  Uuid parent = NewUuidV7(kT0);
  Uuid derived = DeriveUuid(parent, "order/publish/0");
  EXPECT_EQ(derived.hi >> 16, parent.hi >> 16);
  EXPECT_EQ(DeriveUuid(derived, "inventory/publish/0").hi >> 16, parent.hi >> 16) << "down a chain too";
  Uuid previous;
  for (int64_t t = kT0; t < kT0 + 100; ++t) {
    Uuid d = DeriveUuid(NewUuidV7(t), "reply");
    EXPECT_LT(previous, d);
    previous = d;
  }
  // Parents of one millisecond still get distinct ids: the other bits depend on the whole parent.
  std::set<Uuid> seen;
  for (int i = 0; i < 10000; ++i) EXPECT_TRUE(seen.insert(DeriveUuid(NewUuidV7(kT0), "x")).second);
  EXPECT_NE(DeriveUuid(Uuid{parent.hi, 1}, ""), DeriveUuid(Uuid{parent.hi ^ 1, 0}, ""));
}

TEST(Uuid, DeriveDistinctLabels) {
  Uuid parent = NewUuidV7(kT0);
  std::set<Uuid> seen;
  for (int i = 0; i < 1000; ++i) {
    EXPECT_TRUE(seen.insert(DeriveUuid(parent, "out-" + std::to_string(i))).second) << i;
  }
  EXPECT_TRUE(seen.insert(DeriveUuid(parent, "")).second);
  EXPECT_NE(DeriveUuid(parent, "ab"), DeriveUuid(parent, "ba"));
}

TEST(Uuid, DeriveDistinctParents) {
  std::set<Uuid> seen;
  for (int64_t t = kT0; t < kT0 + 1000; ++t) {
    Uuid derived = DeriveUuid(NewUuidV7(t), "reply");
    EXPECT_TRUE(seen.insert(derived).second);
    EXPECT_EQ(Version(derived), 8);
  }
}

TEST(Uuid, DeriveDependsOnBothHalvesNotTheirXor) {
  // Parents whose halves XOR to the same value (here: swapped halves) must still derive different ids,
  // with any label including the empty one.
  Uuid p{0x0192f1e48c3a7b2eull, 0x9f001a2b3c4d5e6full};
  Uuid swapped{p.lo, p.hi};
  for (const char* label : {"", "x", "reply"}) {
    EXPECT_NE(DeriveUuid(p, label), DeriveUuid(swapped, label)) << '"' << label << '"';
    EXPECT_NE(DeriveUuid(Uuid{1, 0}, label), DeriveUuid(Uuid{0, 1}, label)) << '"' << label << '"';
  }
  // Flipping one bit of either half changes both halves of the result.
  Uuid base = DeriveUuid(p, "x");
  for (int bit = 0; bit < 64; bit += 7) {
    Uuid hi_flip = DeriveUuid(Uuid{p.hi ^ (1ull << bit), p.lo}, "x");
    Uuid lo_flip = DeriveUuid(Uuid{p.hi, p.lo ^ (1ull << bit)}, "x");
    EXPECT_NE(hi_flip.hi, base.hi);
    EXPECT_NE(hi_flip.lo, base.lo);
    EXPECT_NE(lo_flip.hi, base.hi);
    EXPECT_NE(lo_flip.lo, base.lo);
  }
}

TEST(Uuid, NilAndOrdering) {
  EXPECT_TRUE(Uuid{}.IsNil());
  EXPECT_FALSE((Uuid{0, 1}).IsNil());
  EXPECT_LT((Uuid{0, ~0ull}), (Uuid{1, 0}));
}

}  // namespace
}  // namespace sluice

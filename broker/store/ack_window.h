// SPDX-License-Identifier: MIT
//
// AckWindow: which sequences of one subscription are acked, as a floor (every seq <= floor is acked)
// plus a bitmap of the acked seqs above it. The bitmap spans only floor+1 .. the highest acked seq,
// so memory is one bit per message between the oldest unacked message and the newest ack (125 KiB for
// a million), never one node per message. Thread-compatible.
#pragma once

#include <cstdint>
#include <deque>

namespace sluice::broker::store {

class AckWindow {
 public:
  explicit AckWindow(uint64_t floor = 0) { Reset(floor); }

  void Reset(uint64_t floor);

  uint64_t floor() const { return floor_; }
  // Acked seqs above the floor.
  uint64_t acked_above() const { return acked_above_; }
  bool IsAcked(uint64_t seq) const;

  // Marks `seq` acked; returns false when it already was. Advances the floor over any run it completes.
  bool Ack(uint64_t seq);
  // Marks everything <= `seq` acked; returns how many of those were not acked before.
  uint64_t AckThrough(uint64_t seq);

 private:
  bool Bit(uint64_t seq) const;
  void Advance();

  uint64_t floor_ = 0;
  uint64_t base_ = 0;  // Invariant: base_ % 64 == 0, base_ <= floor_ + 1; bit i of words_[w] is base_+64w+i.
  uint64_t acked_above_ = 0;
  std::deque<uint64_t> words_;
};

}  // namespace sluice::broker::store

// SPDX-License-Identifier: MIT
#include "broker/store/ack_window.h"

#include <bit>

namespace sluice::broker::store {

void AckWindow::Reset(uint64_t floor) {
  floor_ = floor;
  base_ = (floor + 1) & ~uint64_t{63};
  acked_above_ = 0;
  words_.clear();
}

bool AckWindow::Bit(uint64_t seq) const {
  uint64_t off = seq - base_;
  uint64_t w = off / 64;
  if (w >= words_.size()) return false;
  return (words_[w] >> (off % 64)) & 1;
}

bool AckWindow::IsAcked(uint64_t seq) const { return seq <= floor_ || Bit(seq); }

bool AckWindow::Ack(uint64_t seq) {
  if (IsAcked(seq)) return false;
  uint64_t off = seq - base_;
  uint64_t w = off / 64;
  if (w >= words_.size()) words_.resize(w + 1, 0);
  words_[w] |= uint64_t{1} << (off % 64);
  ++acked_above_;
  Advance();
  return true;
}

void AckWindow::Advance() {
  while (acked_above_ > 0 && Bit(floor_ + 1)) {
    // Whole words of ones are skipped at once: in-order acking is the common case.
    uint64_t off = floor_ + 1 - base_;
    if (off % 64 == 0 && words_[off / 64] == ~uint64_t{0}) {
      floor_ += 64;
      acked_above_ -= 64;
    } else {
      ++floor_;
      --acked_above_;
    }
    while (!words_.empty() && base_ + 64 <= floor_ + 1) {
      words_.pop_front();
      base_ += 64;
    }
  }
  if (acked_above_ == 0) {
    words_.clear();
    base_ = (floor_ + 1) & ~uint64_t{63};
  }
}

uint64_t AckWindow::AckThrough(uint64_t seq) {
  if (seq <= floor_) return 0;
  uint64_t newly = 0;
  // Count the seqs in (floor_, seq] that were not acked, word by word.
  for (uint64_t s = floor_ + 1; s <= seq;) {
    uint64_t off = s - base_;
    uint64_t w = off / 64;
    uint64_t bit = off % 64;
    uint64_t span = std::min<uint64_t>(64 - bit, seq - s + 1);
    uint64_t word = w < words_.size() ? words_[w] : 0;
    uint64_t mask = span == 64 ? ~uint64_t{0} : ((uint64_t{1} << span) - 1) << bit;
    uint64_t set = static_cast<uint64_t>(std::popcount(word & mask));
    newly += span - set;
    acked_above_ -= set;
    s += span;
  }
  floor_ = seq;
  while (!words_.empty() && base_ + 64 <= floor_ + 1) {
    words_.pop_front();
    base_ += 64;
  }
  if (words_.empty()) base_ = (floor_ + 1) & ~uint64_t{63};
  Advance();
  return newly;
}

}  // namespace sluice::broker::store

// SPDX-License-Identifier: MIT
//
// Histogram: cumulative-bucket counts of a value (a latency in seconds, a batch size), the shape
// Prometheus expects. Fixed bucket bounds chosen at construction; Observe() is a few comparisons and
// no allocation. Thread-safe: counts are relaxed atomics, so the store's writer thread may observe while
// the loop thread renders; a render may see a sample in `count` but not yet in `sum` (harmless).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace sluice {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds)
      : bounds_(std::move(bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
    for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
  }

  void Observe(double v) {
    size_t i = 0;
    while (i < bounds_.size() && v > bounds_[i]) ++i;
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    // Sums in micro-units keep the atomic integral: 1e-6 resolution for seconds, exact for sizes.
    sum_micro_.fetch_add(static_cast<uint64_t>(v * 1e6), std::memory_order_relaxed);
  }

  const std::vector<double>& bounds() const { return bounds_; }
  // Samples <= bounds()[i] (cumulative), for i < bounds().size().
  uint64_t CumulativeCount(size_t i) const {
    uint64_t n = 0;
    for (size_t j = 0; j <= i; ++j) n += buckets_[j].load(std::memory_order_relaxed);
    return n;
  }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const { return static_cast<double>(sum_micro_.load(std::memory_order_relaxed)) / 1e6; }

  // Latencies from 50 µs to 5 s.
  static std::vector<double> LatencyBounds() {
    return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
  }
  // Batch sizes from 1 to 16384.
  static std::vector<double> SizeBounds() { return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384}; }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // the last one is +Inf
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_micro_{0};
};

}  // namespace sluice

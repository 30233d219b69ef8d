// SPDX-License-Identifier: MIT
//
// RestartPolicy: when the supervisor restarts a plugin's crashed worker, and when it gives up. Each
// instance backs off on its own: restart_backoff_initial after its first crash, doubling with each
// further one up to restart_backoff_max, and starting over once a worker has run for restart_window
// (it was healthy). The plugin as a whole fails when max_restarts crashes of any of its instances fall
// within one restart_window; then nothing restarts until Reset() (`sluicectl plugin restart NAME`).
// Pure logic over times the caller passes in, so tests need no clock.
//
// Thread-compatible.
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_map>

#include "broker/options.h"

namespace sluice {

struct RestartSettings {
  Duration backoff_initial = std::chrono::milliseconds(100);
  Duration backoff_max = std::chrono::seconds(30);
  uint32_t max_restarts = 5;
  Duration window = std::chrono::seconds(60);
};

class RestartPolicy {
 public:
  explicit RestartPolicy(RestartSettings settings = {}) : settings_(settings) {}

  struct Decision {
    bool failed = false;         // max_restarts crashes within the window: do not restart
    Duration delay{0};           // otherwise: restart after this long
    uint32_t crashes_in_window = 0;
  };
  // Instance `instance` crashed at `now_ms` (any monotonic milliseconds) after running `ran_for`.
  Decision OnCrash(uint32_t instance, int64_t now_ms, Duration ran_for);
  // Forgets every crash (an operator restart) and applies new settings.
  void Reset(RestartSettings settings);
  void Reset() { Reset(settings_); }
  const RestartSettings& settings() const { return settings_; }

 private:
  RestartSettings settings_;
  std::deque<int64_t> crashes_ms_;                      // within the window, oldest first
  std::unordered_map<uint32_t, uint32_t> consecutive_;  // per instance, since it last ran healthy
};

}  // namespace sluice

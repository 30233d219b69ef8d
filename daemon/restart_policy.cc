// SPDX-License-Identifier: MIT
#include "daemon/restart_policy.h"

#include <algorithm>

namespace sluice {

RestartPolicy::Decision RestartPolicy::OnCrash(uint32_t instance, int64_t now_ms, Duration ran_for) {
  Decision d;
  const int64_t window_ms = settings_.window.count();
  crashes_ms_.push_back(now_ms);
  while (!crashes_ms_.empty() && crashes_ms_.front() <= now_ms - window_ms) crashes_ms_.pop_front();
  d.crashes_in_window = static_cast<uint32_t>(crashes_ms_.size());
  if (crashes_ms_.size() >= settings_.max_restarts) {
    d.failed = true;
    return d;
  }
  uint32_t& n = consecutive_[instance];
  if (ran_for >= settings_.window) n = 0;
  // initial * 2^n without overflow: stop doubling once past the cap.
  Duration delay = settings_.backoff_initial;
  for (uint32_t i = 0; i < n && delay < settings_.backoff_max; ++i) delay *= 2;
  d.delay = std::min(delay, settings_.backoff_max);
  ++n;
  return d;
}

void RestartPolicy::Reset(RestartSettings settings) {
  settings_ = settings;
  crashes_ms_.clear();
  consecutive_.clear();
}

}  // namespace sluice

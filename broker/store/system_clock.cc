// SPDX-License-Identifier: MIT
//
// SystemClock() (declared in broker/backend.h): CLOCK_REALTIME in microseconds. Thread-safe.
#include <time.h>

#include "broker/backend.h"

namespace sluice::broker {
namespace {

class RealClock final : public Clock {
 public:
  int64_t NowUs() const override {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
  }
};

}  // namespace

const Clock& SystemClock() {
  static const RealClock clock;
  return clock;
}

}  // namespace sluice::broker

// SPDX-License-Identifier: MIT
//
// Tests of RestartPolicy (daemon/restart_policy.h): exponential backoff per instance with a cap, the
// reset after a healthy run, and the plugin failing after max_restarts crashes within the window.
// Times are passed in; no clock. Single-threaded.
#include "daemon/restart_policy.h"

#include <gtest/gtest.h>

namespace sluice {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

RestartSettings Settings() {
  RestartSettings s;
  s.backoff_initial = milliseconds(100);
  s.backoff_max = milliseconds(1000);
  s.max_restarts = 6;
  s.window = seconds(60);
  return s;
}

TEST(RestartPolicyTest, BacksOffExponentiallyUpToTheCap) {
  RestartPolicy p(Settings());
  int64_t now = 1'000'000;
  std::vector<int64_t> delays;
  for (int i = 0; i < 5; ++i) {
    auto d = p.OnCrash(0, now, milliseconds(10));
    ASSERT_FALSE(d.failed) << i;
    delays.push_back(d.delay.count());
    now += 1;
  }
  EXPECT_EQ(delays, (std::vector<int64_t>{100, 200, 400, 800, 1000}));
}

TEST(RestartPolicyTest, InstancesBackOffIndependentlyButFailTogether) {
  RestartPolicy p(Settings());
  EXPECT_EQ(p.OnCrash(0, 0, milliseconds(1)).delay, milliseconds(100));
  EXPECT_EQ(p.OnCrash(0, 1, milliseconds(1)).delay, milliseconds(200));
  EXPECT_EQ(p.OnCrash(1, 2, milliseconds(1)).delay, milliseconds(100));
  EXPECT_EQ(p.OnCrash(1, 3, milliseconds(1)).delay, milliseconds(200));
  auto fifth = p.OnCrash(2, 4, milliseconds(1));
  EXPECT_FALSE(fifth.failed);
  EXPECT_EQ(fifth.crashes_in_window, 5u);
  auto sixth = p.OnCrash(2, 5, milliseconds(1));
  EXPECT_TRUE(sixth.failed);
  EXPECT_EQ(sixth.crashes_in_window, 6u);
}

TEST(RestartPolicyTest, CrashesOutsideTheWindowAreForgotten) {
  RestartPolicy p(Settings());
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(p.OnCrash(0, i * 1000, milliseconds(1)).failed);
  // 60 s after the first crash it has left the window: still five within it.
  auto d = p.OnCrash(0, 60'000, milliseconds(1));
  EXPECT_FALSE(d.failed);
  EXPECT_EQ(d.crashes_in_window, 5u);
  EXPECT_TRUE(p.OnCrash(0, 60'001, milliseconds(1)).failed);
}

TEST(RestartPolicyTest, AHealthyRunResetsTheBackoff) {
  RestartPolicy p(Settings());
  EXPECT_EQ(p.OnCrash(0, 0, milliseconds(1)).delay, milliseconds(100));
  EXPECT_EQ(p.OnCrash(0, 1, milliseconds(1)).delay, milliseconds(200));
  EXPECT_EQ(p.OnCrash(0, 2, milliseconds(1)).delay, milliseconds(400));
  // Ran for a whole window before crashing: back to the initial delay.
  EXPECT_EQ(p.OnCrash(0, 100'000, seconds(60)).delay, milliseconds(100));
  EXPECT_EQ(p.OnCrash(0, 100'001, milliseconds(1)).delay, milliseconds(200));
}

TEST(RestartPolicyTest, ResetForgetsEverything) {
  RestartSettings s = Settings();
  s.max_restarts = 2;
  RestartPolicy p(s);
  EXPECT_FALSE(p.OnCrash(0, 0, milliseconds(1)).failed);
  EXPECT_TRUE(p.OnCrash(0, 1, milliseconds(1)).failed);
  p.Reset();
  auto d = p.OnCrash(0, 2, milliseconds(1));
  EXPECT_FALSE(d.failed);
  EXPECT_EQ(d.delay, milliseconds(100));
  s.backoff_initial = milliseconds(7);
  p.Reset(s);
  EXPECT_EQ(p.OnCrash(0, 3, milliseconds(1)).delay, milliseconds(7));
}

TEST(RestartPolicyTest, MaxRestartsOfOneFailsAtTheFirstCrash) {
  RestartSettings s = Settings();
  s.max_restarts = 1;
  RestartPolicy p(s);
  EXPECT_TRUE(p.OnCrash(0, 0, milliseconds(1)).failed);
}

}  // namespace
}  // namespace sluice

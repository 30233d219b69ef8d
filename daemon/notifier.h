// SPDX-License-Identifier: MIT
//
// Notifier: the systemd notify protocol (sd_notify via libsystemd) when NOTIFY_SOCKET is set: READY=1
// once listening, STATUS= lines, RELOADING=1, STOPPING=1, and WATCHDOG=1 every half of WATCHDOG_USEC
// from a loop timer (so a stuck loop stops the pings and systemd restarts us). Without NOTIFY_SOCKET,
// or when built without libsystemd, every call does nothing. Loop thread only.
#pragma once

#include <uv.h>

#include <string_view>

namespace sluice {

class Notifier {
 public:
  explicit Notifier(uv_loop_t* loop);
  ~Notifier();
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  void Ready(std::string_view status);
  void Status(std::string_view status);
  void Reloading();
  void Stopping();
  bool enabled() const { return enabled_; }

 private:
  static void OnWatchdog(uv_timer_t* t);
  void Send(std::string_view state);

  bool enabled_ = false;
  uv_timer_t* watchdog_ = nullptr;
};

}  // namespace sluice

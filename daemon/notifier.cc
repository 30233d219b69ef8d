// SPDX-License-Identifier: MIT
#include "daemon/notifier.h"

#include <cstdlib>
#include <string>

#ifdef SLUICE_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace sluice {

Notifier::Notifier(uv_loop_t* loop) {
#ifdef SLUICE_HAVE_SYSTEMD
  const char* socket = std::getenv("NOTIFY_SOCKET");
  enabled_ = socket != nullptr && *socket != '\0';
  uint64_t usec = 0;
  if (enabled_ && sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    watchdog_ = new uv_timer_t;
    uv_timer_init(loop, watchdog_);
    watchdog_->data = this;
    uint64_t half_ms = usec / 2000 > 0 ? usec / 2000 : 1;
    uv_timer_start(watchdog_, OnWatchdog, half_ms, half_ms);
    // The watchdog must not keep a stopping loop alive.
    uv_unref(reinterpret_cast<uv_handle_t*>(watchdog_));
  }
#else
  (void)loop;
#endif
}

Notifier::~Notifier() {
  if (watchdog_) {
    uv_timer_stop(watchdog_);
    uv_close(reinterpret_cast<uv_handle_t*>(watchdog_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  }
}

void Notifier::Send(std::string_view state) {
#ifdef SLUICE_HAVE_SYSTEMD
  if (!enabled_) return;
  std::string s(state);
  sd_notify(0, s.c_str());
#else
  (void)state;
#endif
}

void Notifier::Ready(std::string_view status) { Send("READY=1\nSTATUS=" + std::string(status)); }
void Notifier::Status(std::string_view status) { Send("STATUS=" + std::string(status)); }
void Notifier::Reloading() { Send("RELOADING=1"); }
void Notifier::Stopping() { Send("STOPPING=1"); }

void Notifier::OnWatchdog(uv_timer_t* t) { static_cast<Notifier*>(t->data)->Send("WATCHDOG=1"); }

}  // namespace sluice

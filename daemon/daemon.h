// SPDX-License-Identifier: MIT
//
// Daemon: sluiced's run mode. Startup goes config → lock the data dir → open the store → listen on the
// broker and admin sockets → start the plugin workers (Supervisor) → READY; then the libuv loop runs
// until SIGTERM/SIGINT. Shutdown stops accepting, stops the plugin workers (each finishes the message in
// hand; SIGKILL after daemon.shutdown_timeout), waits (up to daemon.shutdown_timeout) for publishes and
// bundles in flight to be committed and acknowledged, closes the connections, flushes and closes the store, removes the socket files and the
// lock, and returns 0. SIGHUP re-reads the configuration: the new one is built and checked beside the
// old and swapped in only when valid; what changed is logged, and keys that need a restart are named.
//
// Single-threaded: everything here runs on the loop thread (the store's writer thread is hidden inside
// the backend).
#pragma once

#include <uv.h>

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "daemon/admin.h"
#include "daemon/config.h"

namespace sluice {

class LockFile;
class MetricsHttpServer;
class Notifier;
class Supervisor;
namespace broker {
class BrokerService;
}
namespace net {
class UnixListener;
}

class Daemon : public AdminHost {
 public:
  // `config_path` is re-read on reload; `config` is what was loaded from it.
  Daemon(std::filesystem::path config_path, Config config);
  ~Daemon() override;

  // Runs until stopped; returns the process exit code.
  int Run();

  // AdminHost
  nlohmann::json StatusInfo() override;
  broker::Backend& backend() override { return *backend_; }
  Result<nlohmann::json> Reload() override;
  Result<nlohmann::json> Plugins() override;
  std::string MetricsText() override;
  Status PluginAction(std::string_view action, std::string_view name) override;

 private:
  Status Start();
  void BeginShutdown(const char* why);
  void FinishShutdown();
  static void OnSignal(uv_signal_t* handle, int signum);
  static void OnDrainTimer(uv_timer_t* timer);
  static void OnClosingTimer(uv_timer_t* timer);
  void CloseStore();
  static void OnBackendTimer(uv_timer_t* timer);

  std::filesystem::path config_path_;
  Config config_;
  uv_loop_t loop_;
  std::unique_ptr<LockFile> lock_;
  std::unique_ptr<Notifier> notifier_;
  std::unique_ptr<broker::Backend> backend_;
  std::unique_ptr<broker::BrokerService> service_;
  std::unique_ptr<AdminServer> admin_;
  std::unique_ptr<Supervisor> supervisor_;
  std::unique_ptr<net::UnixListener> broker_listener_;
  std::unique_ptr<net::UnixListener> admin_listener_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;  // [metrics] listen; null when off
  uint64_t backend_ticks_ = 0;
  uv_signal_t sigterm_, sigint_, sighup_;
  uv_timer_t drain_timer_;
  uv_timer_t backend_timer_;
  int64_t started_us_ = 0;
  int64_t shutdown_deadline_us_ = 0;
  bool stopping_ = false;
  int exit_code_ = 0;
};

}  // namespace sluice

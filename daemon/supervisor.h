// SPDX-License-Identifier: MIT
//
// Supervisor: runs the configured plugins, each as `instances` worker processes (`sluiced --worker`,
// daemon/worker.h), on the daemon's loop. For each worker it creates a socket pair: the worker inherits
// one end as fd 3; the daemon keeps the other and hands it to the broker (BrokerService::AttachPlugin)
// with the plugin's identity once the worker has reported a descriptor that checked out, so the broker
// knows which topics that connection may publish to. The worker's stderr (its log lines) and a status
// pipe (fd 4: JSON events, see worker.h) are read here; log lines are logged again through the daemon's
// log ("<6>sluiced: order[0]: ...").
//
// Restarts: a worker that exits on its own is restarted after a backoff (RestartPolicy); max_restarts
// crashes within restart_window mark the plugin failed, and so does a refused descriptor (exit 78), at
// once: nothing restarts a failed plugin but Restart(). When a worker dies by a signal or a failure
// status, the broker is told it crashed (BrokerService::PluginExited), so the messages it held count a
// crash each (poison detection); a worker the supervisor stopped, or one that exited 0 or 75 (setup
// failed before taking messages), is not a crash. A worker's failure never touches another worker,
// another plugin or the broker.
//
// Stopping: a worker gets SIGTERM (it finishes the message in hand, waits for its bundles and exits) and
// SIGKILL after `stop_timeout`. Unload keeps the plugin listed as "stopped"; a reload (Reconcile) starts
// plugins new to the configuration, stops removed ones and restarts those whose settings changed, but
// does not restart a plugin an operator unloaded.
//
// Loop thread only. Every handle is closed once StopAll() has finished; destroy the supervisor only
// after the loop has run the close callbacks.
#pragma once

#include <uv.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "broker/status.h"
#include "daemon/config.h"

namespace sluice {

namespace broker {
class BrokerService;
}

struct SupervisorOptions {
  std::string executable;           // sluiced itself, re-executed with --worker
  std::filesystem::path data_dir;   // the daemon's data_dir (the store and plugins' files)
  LogLevel log_level = LogLevel::kInfo;
  Duration stop_timeout = std::chrono::seconds(10);  // SIGTERM to SIGKILL
};

class Supervisor {
 public:
  Supervisor(uv_loop_t* loop, broker::BrokerService* service, SupervisorOptions options);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Lists every plugin of the configuration and starts the enabled ones.
  void Start(const std::vector<PluginConfig>& plugins);
  // Applies a reloaded configuration (see the file comment). Returns what it did:
  // {"started": [...], "stopped": [...], "restarted": [...]}.
  nlohmann::json Reconcile(const std::vector<PluginConfig>& plugins);
  // Starts a plugin that is not running (with `config`, as just read). kAlreadyExists when it runs,
  // kInvalidArgument when it is disabled.
  Status Load(const PluginConfig& config);
  // Stops every worker of a plugin; it stays listed as stopped. kNotFound for an unknown plugin.
  Status Unload(std::string_view name);
  // Stops the plugin's workers and starts them again, clearing a failed state and the crash history.
  Status Restart(std::string_view name);
  // {"plugins": [{name, path, version, state, enabled, instances, running, pids, restarts, last_error,
  //   in_flight, handled, retried, rejected, conflicts, workers: [{instance, pid, state, restarts,
  //   starts_us, last_exit, ...}]}]}
  nlohmann::json Info() const;

  // Stops every worker; `done` runs once all have exited and every handle is closing. No restarts
  // happen afterwards.
  void StopAll(std::function<void()> done);
  // Applies to workers started from now on.
  void set_log_level(LogLevel level) { options_.log_level = level; }
  void set_stop_timeout(Duration timeout) { options_.stop_timeout = timeout; }

  struct Plugin;
  struct Worker;

 private:
  Plugin* Find(std::string_view name) const;
  Plugin* Add(const PluginConfig& config);
  void StartPlugin(Plugin& p);
  void StopPlugin(Plugin& p, bool then_start);
  void Spawn(Worker& w);
  void StopWorker(Worker& w);
  // A worker could not be started: counts as a crash of its slot (backoff, or the failed state).
  void StartFailed(Plugin& p, Worker& w, const std::string& error);
  void ScheduleRestart(Worker& w, Duration delay);
  void OnExited(Worker& w, int64_t exit_status, int term_signal);
  void OnStatusLine(Worker& w, std::string_view line);
  void OnLogLine(Worker& w, std::string_view line);
  void Attach(Worker& w, const nlohmann::json& loaded);
  void MarkFailed(Plugin& p, std::string reason);
  void CheckStopped();
  void ReapRemoved();
  void CloseWorkerHandles(Worker& w);
  void CloseTimer(Worker& w);
  void Retire(std::unique_ptr<Worker> w);

  static void OnProcessExit(uv_process_t* process, int64_t exit_status, int term_signal);
  static void OnTimer(uv_timer_t* timer);
  static void OnAlloc(uv_handle_t* handle, size_t suggested, uv_buf_t* buf);
  static void OnErrRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void OnStatusRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);

  uv_loop_t* loop_;
  broker::BrokerService* service_;
  SupervisorOptions options_;
  // Plugins leaving the configuration stay here (removing) until their workers have exited.
  std::vector<std::unique_ptr<Plugin>> plugins_;
  bool stopping_all_ = false;
  std::function<void()> stop_done_;
};

}  // namespace sluice

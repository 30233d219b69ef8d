// SPDX-License-Identifier: MIT
#include "daemon/daemon.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "broker/net/listener.h"
#include "broker/service.h"
#include "broker/store/lmdb_backend.h"
#include "daemon/lock_file.h"
#include "daemon/metrics.h"
#include "daemon/log.h"
#include "daemon/notifier.h"
#include "daemon/supervisor.h"
#include "sluice_build_config.h"

namespace sluice {
namespace {

constexpr uint64_t kDrainPollMs = 10;
// At shutdown, how long closing connections may take before the store closes anyway.
constexpr int64_t kCloseWaitMs = 2000;
// Leases, backoff and retention are checked this often; finer than any ack_wait allowed (>= 100 ms).
constexpr uint64_t kBackendTimerMs = 20;

int64_t NowUs() { return broker::SystemClock().NowUs(); }

broker::ServiceOptions ServiceOptionsFor(const Config& c) {
  broker::ServiceOptions o;
  o.max_frame_bytes = c.daemon.max_frame_bytes;
  o.max_message_bytes = c.broker.max_message_bytes;
  o.max_connections = c.daemon.max_connections;
  o.default_max_deliveries = c.broker.default_max_deliveries;
  o.default_ack_wait = c.broker.default_ack_wait;
  o.server_version = SLUICE_VERSION;
  return o;
}

}  // namespace

Daemon::Daemon(std::filesystem::path config_path, Config config)
    : config_path_(std::move(config_path)), config_(std::move(config)) {
  uv_loop_init(&loop_);
}

Daemon::~Daemon() {
  // Every handle was closed by FinishShutdown (or never opened); run once more to release them.
  uv_run(&loop_, UV_RUN_DEFAULT);
  // After the loop ran their handles' close callbacks (a connection's close callback calls into the
  // service), then once more for the handles these destructors close.
  service_.reset();
  admin_.reset();
  supervisor_.reset();
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

Status Daemon::Start() {
  log::SetLevel(config_.daemon.log_level);
  auto lock = LockFile::Acquire(config_.daemon.data_dir);
  if (!lock.ok()) return lock.status();
  lock_ = std::move(*lock);

  // Before anything that a failure would have to unwind: the address is checked here.
  if (!config_.metrics.listen.empty()) {
    auto http = MetricsHttpServer::Start(config_.metrics.listen);
    if (!http.ok()) return http.status();
    metrics_http_ = std::move(*http);
    log::Notice("serving metrics on http://{}/metrics", config_.metrics.listen);
  }

  broker::StoreOptions store;
  store.data_dir = config_.daemon.data_dir;
  store.broker = config_.broker;
  store.topics = config_.topics;
  store.subscriptions = config_.subscriptions;
  auto backend = broker::OpenLmdbBackend(&loop_, store, broker::SystemClock());
  if (!backend.ok()) return backend.status().WithContext("cannot open the store");
  backend_ = std::move(*backend);

  service_ = std::make_unique<broker::BrokerService>(&loop_, backend_.get(), broker::SystemClock(),
                                                     ServiceOptionsFor(config_));
  admin_ = std::make_unique<AdminServer>(&loop_, this, config_.daemon.max_frame_bytes,
                                         config_.daemon.admin_group, SLUICE_VERSION);
  auto mode = static_cast<mode_t>(config_.daemon.socket_mode);
  auto bl = net::UnixListener::Listen(&loop_, config_.daemon.broker_socket, mode,
                                      [this](uv_pipe_t* c) { service_->Accept(c); });
  if (!bl.ok()) return bl.status();
  broker_listener_ = std::move(*bl);
  auto al = net::UnixListener::Listen(&loop_, config_.daemon.admin_socket, mode,
                                      [this](uv_pipe_t* c) { admin_->Accept(c); });
  if (!al.ok()) return al.status();
  admin_listener_ = std::move(*al);

  uv_signal_init(&loop_, &sigterm_);
  uv_signal_init(&loop_, &sigint_);
  uv_signal_init(&loop_, &sighup_);
  sigterm_.data = sigint_.data = sighup_.data = this;
  uv_signal_start(&sigterm_, OnSignal, SIGTERM);
  uv_signal_start(&sigint_, OnSignal, SIGINT);
  uv_signal_start(&sighup_, OnSignal, SIGHUP);
  uv_timer_init(&loop_, &drain_timer_);
  drain_timer_.data = this;
  uv_timer_init(&loop_, &backend_timer_);
  backend_timer_.data = this;
  uv_timer_start(&backend_timer_, OnBackendTimer, kBackendTimerMs, kBackendTimerMs);
  return Status::Ok();
}

std::string Daemon::MetricsText() {
  MetricsSources sources;
  sources.backend = backend_.get();
  sources.service = service_.get();
  if (supervisor_) sources.plugins = supervisor_->Info()["plugins"];
  return RenderMetrics(sources);
}

int Daemon::Run() {
  // A peer that disconnects mid-write must cost us an EPIPE, not the process.
  signal(SIGPIPE, SIG_IGN);
  started_us_ = NowUs();
  notifier_ = std::make_unique<Notifier>(&loop_);
  Status st = Start();
  if (!st.ok()) {
    log::Error("{}", st.message());
    // Release what was opened (in reverse order) before reporting failure.
    admin_listener_.reset();
    broker_listener_.reset();
    admin_.reset();
    service_.reset();
    if (backend_) {
      backend_->Close([] {});
      uv_run(&loop_, UV_RUN_DEFAULT);
      backend_.reset();
    }
    notifier_.reset();
    lock_.reset();
    return 1;
  }
  SupervisorOptions so;
  char exe[4096];
  size_t exe_size = sizeof exe;
  so.executable = uv_exepath(exe, &exe_size) == 0 ? std::string(exe, exe_size) : "/proc/self/exe";
  so.data_dir = config_.daemon.data_dir;
  so.log_level = config_.daemon.log_level;
  so.stop_timeout = config_.daemon.shutdown_timeout;
  supervisor_ = std::make_unique<Supervisor>(&loop_, service_.get(), so);
  supervisor_->Start(config_.plugins);
  std::string ready = fmt::format("listening on {} (admin {})", config_.daemon.broker_socket.string(),
                                  config_.daemon.admin_socket.string());
  log::Notice("sluiced {} {}, data in {}", SLUICE_VERSION, ready, config_.daemon.data_dir.string());
  notifier_->Ready(ready);
  uv_run(&loop_, UV_RUN_DEFAULT);
  return exit_code_;
}

void Daemon::OnSignal(uv_signal_t* handle, int signum) {
  auto* self = static_cast<Daemon*>(handle->data);
  if (signum == SIGHUP) {
    (void)self->Reload();  // logs its outcome
    return;
  }
  self->BeginShutdown(signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

void Daemon::BeginShutdown(const char* why) {
  if (stopping_) return;
  stopping_ = true;
  log::Notice("{}: stopping; draining publishes in flight", why);
  notifier_->Stopping();
  // Stop accepting first: the socket files disappear, so clients see the daemon going away.
  broker_listener_->Close();
  admin_listener_->Close();
  // Plugin workers go first: each finishes the message in hand and its bundles commit while the broker
  // still runs. Then the drain below waits for what is still in flight.
  supervisor_->StopAll([this] {
    shutdown_deadline_us_ = NowUs() + config_.daemon.shutdown_timeout.count() * 1000;
    uv_timer_start(&drain_timer_, OnDrainTimer, 0, kDrainPollMs);
  });
}

void Daemon::OnDrainTimer(uv_timer_t* timer) {
  auto* self = static_cast<Daemon*>(timer->data);
  size_t in_flight = self->service_->in_flight_publishes();
  if (in_flight > 0 && NowUs() < self->shutdown_deadline_us_) return;
  if (in_flight > 0) {
    log::Warning("shutdown_timeout reached with {} publishes uncommitted; their publishers get no ack",
                 in_flight);
  }
  uv_timer_stop(timer);
  self->FinishShutdown();
}

void Daemon::FinishShutdown() {
  service_->CloseAll();
  admin_->CloseAll();
  uv_timer_stop(&backend_timer_);
  // Connections close asynchronously (after writing what they still hold) and detach their consumers
  // from the backend when they do: the store closes once they are gone, or after kCloseWaitMs.
  shutdown_deadline_us_ = NowUs() + kCloseWaitMs * 1000;
  uv_timer_start(&drain_timer_, OnClosingTimer, 0, kDrainPollMs);
}

void Daemon::OnClosingTimer(uv_timer_t* timer) {
  auto* self = static_cast<Daemon*>(timer->data);
  if (self->service_->connection_count() + self->admin_->connection_count() > 0 &&
      NowUs() < self->shutdown_deadline_us_) {
    return;
  }
  uv_timer_stop(timer);
  self->CloseStore();
}

void Daemon::CloseStore() {
  metrics_http_.reset();
  backend_->Close([this] {
    uv_close(reinterpret_cast<uv_handle_t*>(&sigterm_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sigint_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sighup_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&drain_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&backend_timer_), nullptr);
    notifier_.reset();
    log::Notice("stopped");
    lock_.reset();
  });
}

void Daemon::OnBackendTimer(uv_timer_t* timer) {
  auto* self = static_cast<Daemon*>(timer->data);
  self->backend_->RunTimers();
  // The HTTP listener's thread serves the text rendered here, refreshed once a second.
  if (self->metrics_http_ && self->backend_ticks_++ % (1000 / kBackendTimerMs) == 0) {
    self->metrics_http_->SetText(self->MetricsText());
  }
}

nlohmann::json Daemon::StatusInfo() {
  int64_t now = NowUs();
  const auto& stats = service_->stats();
  return {{"version", SLUICE_VERSION},
          {"pid", getpid()},
          {"uptime_s", static_cast<double>(now - started_us_) / 1e6},
          {"config", config_path_.string()},
          {"data_dir", config_.daemon.data_dir.string()},
          {"broker_socket", config_.daemon.broker_socket.string()},
          {"admin_socket", config_.daemon.admin_socket.string()},
          {"durability", config_.broker.durability == Durability::kSync    ? "sync"
                         : config_.broker.durability == Durability::kBatch ? "batch"
                                                                           : "none"},
          {"connections", service_->connection_count()},
          {"admin_connections", admin_->connection_count()},
          {"connections_total", stats.connections_total},
          {"protocol_errors", stats.protocol_errors},
          {"publishes", stats.publishes},
          {"requests", stats.requests}};
}

Result<nlohmann::json> Daemon::Reload() {
  notifier_->Reloading();
  auto fresh = LoadConfig(config_path_, /*allow_missing=*/false);
  if (!fresh.ok()) {
    // Logged here for SIGHUP and `sluicectl reload` alike; the latter also shows it to its caller.
    log::Error("reload failed, keeping the running configuration: {}", fresh.status().message());
    notifier_->Ready("reload failed; running with the previous configuration");
    return fresh.status();
  }
  auto changes = DiffConfig(config_, *fresh);
  nlohmann::json applied = nlohmann::json::array();
  nlohmann::json restart = nlohmann::json::array();
  for (const auto& c : changes) {
    // An empty value (an unset string key) shows as "" rather than as nothing.
    auto shown = [](const std::string& v) { return v.empty() ? std::string("\"\"") : v; };
    std::string line = fmt::format("{}: {} -> {}", c.key, shown(c.old_value), shown(c.new_value));
    if (c.needs_restart) {
      log::Warning("reload: {} (needs a restart; the running value stays)", line);
      restart.push_back(line);
    } else {
      log::Notice("reload: {}", line);
      applied.push_back(line);
    }
  }
  if (changes.empty()) log::Notice("reload: configuration unchanged");
  // Keys that need a restart keep their running values, so the running state stays consistent.
  Config next = *fresh;
  next.daemon.data_dir = config_.daemon.data_dir;
  next.daemon.broker_socket = config_.daemon.broker_socket;
  next.daemon.admin_socket = config_.daemon.admin_socket;
  next.daemon.socket_mode = config_.daemon.socket_mode;
  next.broker.map_size = config_.broker.map_size;
  next.broker.durability = config_.broker.durability;
  // The store was opened with these; it keeps them until the next start.
  next.broker.batch_interval = config_.broker.batch_interval;
  next.broker.max_map_size = config_.broker.max_map_size;
  next.broker.auto_create_topics = config_.broker.auto_create_topics;
  next.broker.dedupe_window = config_.broker.dedupe_window;
  next.metrics.listen = config_.metrics.listen;
  next.topics = config_.topics;
  next.subscriptions = config_.subscriptions;
  config_ = std::move(next);
  log::SetLevel(config_.daemon.log_level);
  service_->set_options(ServiceOptionsFor(config_));
  admin_->set_admin_group(config_.daemon.admin_group);
  supervisor_->set_log_level(config_.daemon.log_level);
  supervisor_->set_stop_timeout(config_.daemon.shutdown_timeout);
  nlohmann::json plugins = supervisor_->Reconcile(config_.plugins);
  notifier_->Ready("configuration reloaded");
  return nlohmann::json{{"applied", applied}, {"needs_restart", restart}, {"plugins", plugins}};
}

Result<nlohmann::json> Daemon::Plugins() { return supervisor_->Info(); }

Status Daemon::PluginAction(std::string_view action, std::string_view name) {
  if (action == "unload") return supervisor_->Unload(name);
  if (action == "restart") return supervisor_->Restart(name);
  if (action != "load") return InvalidArgument(fmt::format("unknown plugin action \"{}\"", action));
  // load: the plugin's current definition, from the configuration and drop-ins as they are now.
  auto fresh = LoadConfig(config_path_, /*allow_missing=*/false);
  if (!fresh.ok()) return fresh.status().WithContext("cannot read the configuration");
  for (const PluginConfig& p : fresh->plugins) {
    if (p.name != name) continue;
    SLUICE_RETURN_IF_ERROR(supervisor_->Load(p));
    // Keep the running configuration in step, so a later reload sees this plugin as known.
    auto it = std::find_if(config_.plugins.begin(), config_.plugins.end(),
                           [&](const PluginConfig& c) { return c.name == name; });
    if (it != config_.plugins.end()) {
      *it = p;
    } else {
      config_.plugins.push_back(p);
    }
    return Status::Ok();
  }
  return NotFound(fmt::format("no [[plugin]] named {} in {} or its drop-ins", name, config_path_.string()));
}

}  // namespace sluice

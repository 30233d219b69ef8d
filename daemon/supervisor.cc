// SPDX-License-Identifier: MIT
#include "daemon/supervisor.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <optional>

#include <fmt/format.h>

#include "broker/backend.h"
#include "broker/service.h"
#include "daemon/log.h"
#include "daemon/restart_policy.h"
#include "daemon/worker.h"

extern char** environ;

namespace sluice {
namespace {

using nlohmann::json;

// Longer log lines from a worker are cut into pieces of this size.
constexpr size_t kMaxLineBytes = 16u << 10;
// Start times kept per worker for `sluicectl plugins --json` (restart backoff is visible in them).
constexpr size_t kStartHistory = 16;
// Messages in hand at a worker's death, remembered per plugin and passed to new workers.
constexpr size_t kMaxSuspects = 16;

}  // namespace

// Types of Supervisor::Worker's fields: not in the anonymous namespace, since Worker has external
// linkage (a unity build would otherwise warn).
namespace supervisor_detail {

enum class WorkerState { kIdle, kStarting, kRunning, kBackoff, kStopping };

struct Counts {
  uint64_t handled = 0, retried = 0, rejected = 0, conflicts = 0, lease_lost = 0, refused = 0;
  void Add(const Counts& o) {
    handled += o.handled;
    retried += o.retried;
    rejected += o.rejected;
    conflicts += o.conflicts;
    lease_lost += o.lease_lost;
    refused += o.refused;
  }
};

}  // namespace supervisor_detail

using supervisor_detail::Counts;
using supervisor_detail::WorkerState;

namespace {

const char* StateName(WorkerState s) {
  switch (s) {
    case WorkerState::kIdle: return "stopped";
    case WorkerState::kStarting: return "starting";
    case WorkerState::kRunning: return "running";
    case WorkerState::kBackoff: return "backoff";
    case WorkerState::kStopping: return "stopping";
  }
  return "unknown";
}

RestartSettings SettingsOf(const PluginConfig& c) {
  RestartSettings s;
  s.backoff_initial = c.restart_backoff_initial;
  s.backoff_max = c.restart_backoff_max;
  s.max_restarts = c.max_restarts;
  s.window = c.restart_window;
  return s;
}

}  // namespace

struct Supervisor::Worker {
  Supervisor* sup = nullptr;
  Plugin* plugin = nullptr;  // nullptr once retired (its handles are still closing)
  uint32_t index = 0;
  std::string ident;         // "order[0]", for log lines
  WorkerState state = WorkerState::kIdle;
  uv_process_t* process = nullptr;  // from spawn until the exit callback
  uv_pipe_t* err = nullptr;         // until EOF
  uv_pipe_t* status = nullptr;      // until EOF
  uv_timer_t* timer = nullptr;      // restart backoff, or the SIGKILL after a SIGTERM
  bool timer_kills = false;
  int live_handles = 0;
  int broker_fd = -1;               // the daemon's end of the socket pair until attached
  uint64_t conn_id = 0;
  bool attached = false;
  int pid = 0;
  bool stop_requested = false;
  uint64_t started_ms = 0;          // uv_now() at spawn
  std::deque<int64_t> starts_us;
  uint32_t restarts = 0;
  std::string last_exit;
  std::string error;                // the latest "error"/"refused" event of this worker
  std::string err_buf, status_buf;
  InHandPage* in_hand = nullptr;    // shared with the running process (worker.h)
  Counts base;                      // of earlier processes of this instance
  Counts cur;                       // of the running process (its latest stats event)
  uint64_t in_flight = 0;

  bool alive() const { return process != nullptr; }
};

struct Supervisor::Plugin {
  PluginConfig config;
  std::string version;
  std::vector<std::unique_ptr<Worker>> workers;
  RestartPolicy policy;
  bool failed = false;
  bool unloaded = false;          // stopped by an operator (or disabled): a reload does not start it
  bool removing = false;          // gone from the configuration: removed once stopped
  bool start_when_stopped = false;
  std::optional<PluginConfig> next_config;  // applied when the workers have stopped
  std::string last_error;
  uint32_t restarts = 0;
  std::deque<std::string> suspects;  // ids of messages in hand when a worker died, newest last

  bool AnyAlive() const {
    return std::any_of(workers.begin(), workers.end(), [](const auto& w) { return w->alive(); });
  }
};

Supervisor::Supervisor(uv_loop_t* loop, broker::BrokerService* service, SupervisorOptions options)
    : loop_(loop), service_(service), options_(std::move(options)) {}

Supervisor::~Supervisor() {
  // StopAll() closed every handle and the loop ran their callbacks; what is left here is memory only.
  for (auto& p : plugins_) {
    for (auto& w : p->workers) w->sup = nullptr;
  }
}

Supervisor::Plugin* Supervisor::Find(std::string_view name) const {
  for (const auto& p : plugins_) {
    if (p->config.name == name) return p.get();
  }
  return nullptr;
}

Supervisor::Plugin* Supervisor::Add(const PluginConfig& config) {
  auto p = std::make_unique<Plugin>();
  p->config = config;
  p->policy.Reset(SettingsOf(config));
  p->unloaded = !config.enabled;
  plugins_.push_back(std::move(p));
  return plugins_.back().get();
}

void Supervisor::Start(const std::vector<PluginConfig>& plugins) {
  for (const PluginConfig& c : plugins) {
    Plugin* p = Add(c);
    if (c.enabled) StartPlugin(*p);
  }
}

void Supervisor::StartPlugin(Plugin& p) {
  if (stopping_all_) return;
  p.unloaded = false;
  // Instances beyond the configured count are retired; missing ones are created.
  while (p.workers.size() > p.config.instances) {
    std::unique_ptr<Worker> w = std::move(p.workers.back());
    p.workers.pop_back();
    Retire(std::move(w));
  }
  for (uint32_t i = static_cast<uint32_t>(p.workers.size()); i < p.config.instances; ++i) {
    auto w = std::make_unique<Worker>();
    w->sup = this;
    w->plugin = &p;
    w->index = i;
    w->ident = fmt::format("{}[{}]", p.config.name, i);
    w->timer = new uv_timer_t;
    uv_timer_init(loop_, w->timer);
    w->timer->data = w.get();
    ++w->live_handles;
    p.workers.push_back(std::move(w));
  }
  for (auto& w : p.workers) {
    if (!w->alive() && w->state != WorkerState::kBackoff) Spawn(*w);
  }
}

void Supervisor::Spawn(Worker& w) {
  Plugin& p = *w.plugin;
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    std::string error = fmt::format("cannot create a socket pair: {}", std::strerror(errno));
    log::Error("{}: {}", w.ident, error);
    p.last_error = error;
    StartFailed(p, w, error);
    return;
  }
  // The in-hand page: a failure to make one only costs the crash diagnosis, not the worker.
  int in_hand_fd = ::memfd_create("sluice-in-hand", MFD_CLOEXEC);
  if (in_hand_fd >= 0 && ::ftruncate(in_hand_fd, kInHandPageBytes) == 0) {
    void* page = ::mmap(nullptr, kInHandPageBytes, PROT_READ | PROT_WRITE, MAP_SHARED, in_hand_fd, 0);
    w.in_hand = page == MAP_FAILED ? nullptr : static_cast<InHandPage*>(page);
  }
  if (w.in_hand == nullptr && in_hand_fd >= 0) {
    ::close(in_hand_fd);
    in_hand_fd = -1;
  }
  std::vector<std::string> args = {
      options_.executable,
      "--worker",
      "--fd",
      "3",
      "--status-fd",
      "4",
      "--plugin",
      p.config.path.string(),
      "--name",
      p.config.name,
      "--instance",
      std::to_string(w.index),
      "--data-dir",
      options_.data_dir.string(),
      "--handler-timeout-ms",
      std::to_string(p.config.handler_timeout.count()),
      "--max-crashes",
      std::to_string(p.config.max_crashes),
      "--log-level",
      std::to_string(static_cast<int>(options_.log_level)),
  };
  if (in_hand_fd >= 0) {
    args.push_back("--in-hand-fd");
    args.push_back("5");
  }
  for (const std::string& s : p.suspects) {
    args.push_back("--suspect");
    args.push_back(s);
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The daemon's environment plus the plugin's config (not in argv: every user can read that).
  std::vector<std::string> env_strings;
  const std::string config_prefix = std::string(kPluginConfigEnv) + "=";
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (!std::string_view(*e).starts_with(config_prefix)) env_strings.emplace_back(*e);
  }
  env_strings.push_back(config_prefix + p.config.config_json);
  std::vector<char*> envp;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  w.err = new uv_pipe_t;
  uv_pipe_init(loop_, w.err, 0);
  w.err->data = &w;
  ++w.live_handles;
  w.status = new uv_pipe_t;
  uv_pipe_init(loop_, w.status, 0);
  w.status->data = &w;
  ++w.live_handles;

  uv_stdio_container_t stdio[6];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_IGNORE;
  stdio[2].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[2].data.stream = reinterpret_cast<uv_stream_t*>(w.err);
  stdio[3].flags = UV_INHERIT_FD;
  stdio[3].data.fd = sv[1];
  stdio[4].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[4].data.stream = reinterpret_cast<uv_stream_t*>(w.status);
  stdio[5].flags = in_hand_fd >= 0 ? UV_INHERIT_FD : UV_IGNORE;
  stdio[5].data.fd = in_hand_fd;

  uv_process_options_t opts{};
  opts.file = options_.executable.c_str();
  opts.args = argv.data();
  opts.env = envp.data();
  opts.exit_cb = OnProcessExit;
  opts.stdio = stdio;
  opts.stdio_count = in_hand_fd >= 0 ? 6 : 5;

  w.process = new uv_process_t;
  w.process->data = &w;
  ++w.live_handles;
  int rc = uv_spawn(loop_, w.process, &opts);
  ::close(sv[1]);
  if (in_hand_fd >= 0) ::close(in_hand_fd);
  w.started_ms = uv_now(loop_);
  w.starts_us.push_back(broker::SystemClock().NowUs());
  if (w.starts_us.size() > kStartHistory) w.starts_us.pop_front();
  w.error.clear();
  if (rc != 0) {
    ::close(sv[0]);
    if (w.in_hand != nullptr) ::munmap(w.in_hand, kInHandPageBytes);
    w.in_hand = nullptr;
    std::string error = fmt::format("cannot start {}: {}", options_.executable, uv_strerror(rc));
    log::Error("{}: {}", w.ident, error);
    // The handles were initialized, so they are closed like any other.
    uv_close(reinterpret_cast<uv_handle_t*>(w.process), [](uv_handle_t* h) {
      auto* worker = static_cast<Worker*>(h->data);
      delete reinterpret_cast<uv_process_t*>(h);
      if (--worker->live_handles == 0 && worker->plugin == nullptr) delete worker;
    });
    w.process = nullptr;
    CloseWorkerHandles(w);
    p.last_error = error;
    StartFailed(p, w, error);
    return;
  }
  w.pid = w.process->pid;
  w.broker_fd = sv[0];
  w.state = WorkerState::kStarting;
  w.stop_requested = false;
  w.cur = Counts();
  w.in_flight = 0;
  uv_read_start(reinterpret_cast<uv_stream_t*>(w.err), OnAlloc, OnErrRead);
  uv_read_start(reinterpret_cast<uv_stream_t*>(w.status), OnAlloc, OnStatusRead);
  log::Info("{}: started worker pid {} for {}", w.ident, w.pid, p.config.path.string());
}

void Supervisor::CloseWorkerHandles(Worker& w) {
  auto close_pipe = [](uv_pipe_t*& pipe) {
    if (pipe == nullptr) return;
    uv_pipe_t* h = pipe;
    pipe = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(h), [](uv_handle_t* handle) {
      auto* worker = static_cast<Worker*>(handle->data);
      delete reinterpret_cast<uv_pipe_t*>(handle);
      if (--worker->live_handles == 0 && worker->plugin == nullptr) delete worker;
    });
  };
  if (!w.err_buf.empty()) OnLogLine(w, w.err_buf);
  w.err_buf.clear();
  close_pipe(w.err);
  close_pipe(w.status);
  // The timer and the process handle are closed by their owners: the timer when the worker is
  // retired, the process handle in its exit callback.
}

void Supervisor::CloseTimer(Worker& w) {
  if (w.timer == nullptr) return;
  uv_timer_stop(w.timer);
  uv_close(reinterpret_cast<uv_handle_t*>(w.timer), [](uv_handle_t* h) {
    auto* worker = static_cast<Worker*>(h->data);
    delete reinterpret_cast<uv_timer_t*>(h);
    if (--worker->live_handles == 0 && worker->plugin == nullptr) delete worker;
  });
  w.timer = nullptr;
}

void Supervisor::Retire(std::unique_ptr<Worker> w) {
  // Only a worker without a process is retired; its handles may still be closing, and the last close
  // callback deletes it.
  CloseWorkerHandles(*w);
  CloseTimer(*w);
  w->plugin = nullptr;
  Worker* raw = w.release();
  if (raw->live_handles == 0) delete raw;
}

void Supervisor::StartFailed(Plugin& p, Worker& w, const std::string& error) {
  auto d = p.policy.OnCrash(w.index, static_cast<int64_t>(uv_now(loop_)), Duration(0));
  if (d.failed) {
    MarkFailed(p, error);
  } else {
    ScheduleRestart(w, d.delay);
  }
}

void Supervisor::ScheduleRestart(Worker& w, Duration delay) {
  w.state = WorkerState::kBackoff;
  w.timer_kills = false;
  ++w.restarts;
  if (w.plugin != nullptr) ++w.plugin->restarts;
  log::Notice("{}: restarting in {}", w.ident, FormatDuration(delay));
  uv_timer_start(w.timer, OnTimer, static_cast<uint64_t>(delay.count()), 0);
}

void Supervisor::StopWorker(Worker& w) {
  if (w.alive()) {
    if (w.stop_requested) return;
    w.stop_requested = true;
    w.state = WorkerState::kStopping;
    uv_process_kill(w.process, SIGTERM);
    w.timer_kills = true;
    uv_timer_start(w.timer, OnTimer, static_cast<uint64_t>(options_.stop_timeout.count()), 0);
  } else if (w.state == WorkerState::kBackoff) {
    uv_timer_stop(w.timer);
    w.state = WorkerState::kIdle;
  }
}

void Supervisor::StopPlugin(Plugin& p, bool then_start) {
  p.start_when_stopped = then_start;
  for (auto& w : p.workers) StopWorker(*w);
  CheckStopped();
}

void Supervisor::OnTimer(uv_timer_t* timer) {
  auto* w = static_cast<Worker*>(timer->data);
  Supervisor* self = w->sup;
  if (self == nullptr || w->plugin == nullptr) return;
  if (w->timer_kills) {
    w->timer_kills = false;
    if (w->alive()) {
      log::Warning("{}: did not stop within {}; killing pid {}", w->ident,
                   FormatDuration(self->options_.stop_timeout), w->pid);
      uv_process_kill(w->process, SIGKILL);
    }
    return;
  }
  if (w->state != WorkerState::kBackoff) return;
  w->state = WorkerState::kIdle;
  if (self->stopping_all_ || w->plugin->failed || w->plugin->unloaded) return;
  self->Spawn(*w);
}

void Supervisor::OnProcessExit(uv_process_t* process, int64_t exit_status, int term_signal) {
  auto* w = static_cast<Worker*>(process->data);
  w->process = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(process), [](uv_handle_t* h) {
    auto* worker = static_cast<Worker*>(h->data);
    delete reinterpret_cast<uv_process_t*>(h);
    if (--worker->live_handles == 0 && worker->plugin == nullptr) delete worker;
  });
  if (w->sup != nullptr) w->sup->OnExited(*w, exit_status, term_signal);
}

void Supervisor::OnExited(Worker& w, int64_t exit_status, int term_signal) {
  const int pid = w.pid;
  w.pid = 0;
  if (w.timer_kills) {
    uv_timer_stop(w.timer);
    w.timer_kills = false;
  }
  const bool requested = w.stop_requested || stopping_all_;
  w.stop_requested = false;
  std::string how = term_signal != 0
                        ? fmt::format("was killed by signal {} ({})", term_signal, strsignal(term_signal))
                        : fmt::format("exited with status {}", exit_status);
  // A handler crash, a watchdog kill or a plugin's own exit(): the messages it held are suspects.
  // Exits 75 (setup failed) and 78 (refused) happen before any message is taken.
  bool crashed = !requested && (term_signal != 0 || (exit_status != 0 && exit_status != kExitSetup &&
                                                    exit_status != kExitRefused));
  std::string in_hand;
  if (w.in_hand != nullptr) {
    uint32_t busy = w.in_hand->busy.load(std::memory_order_acquire);
    if (busy == kInHandHandle) {
      std::string id = FormatUuid(Uuid{w.in_hand->id_hi, w.in_hand->id_lo});
      in_hand = fmt::format(" in handle() of message seq {} (id {})", w.in_hand->seq, id);
      if (crashed && w.plugin != nullptr) {
        auto& suspects = w.plugin->suspects;
        if (std::find(suspects.begin(), suspects.end(), id) == suspects.end()) suspects.push_back(id);
        if (suspects.size() > kMaxSuspects) suspects.pop_front();
      }
    } else if (busy == kInHandSync) {
      // No message is to blame for a sync() that crashed or hung (a slow disk, a full one): their crash
      // counts stay as they are, or one bad minute would make a whole batch poison. Restarts still back
      // off and count against max_restarts.
      in_hand = fmt::format(" in sync() of {} messages", w.in_hand->seq);
      crashed = false;
    }
    ::munmap(w.in_hand, kInHandPageBytes);
    w.in_hand = nullptr;
  }
  if (w.attached) {
    service_->PluginExited(w.conn_id, crashed);
  } else if (w.broker_fd >= 0) {
    ::close(w.broker_fd);
  }
  w.attached = false;
  w.conn_id = 0;
  w.broker_fd = -1;
  w.base.Add(w.cur);
  w.cur = Counts();
  w.in_flight = 0;
  how += in_hand;
  w.last_exit = fmt::format("pid {} {}", pid, how);

  Plugin* p = w.plugin;
  if (p == nullptr) return;
  if (requested) {
    w.state = WorkerState::kIdle;
    log::Info("{}: worker pid {} stopped ({})", w.ident, pid, how);
    CheckStopped();
    return;
  }
  w.state = WorkerState::kIdle;
  if (term_signal == 0 && exit_status == kExitRefused) {
    MarkFailed(*p, w.error.empty() ? fmt::format("{}: worker pid {} {}", w.ident, pid, how) : w.error);
    return;
  }
  std::string why = w.error.empty() ? fmt::format("worker pid {} {}", pid, how)
                                     : fmt::format("worker pid {} {}: {}", pid, how, w.error);
  log::Warning("{}: {}", w.ident, why);
  p->last_error = fmt::format("{}: {}", w.ident, why);
  if (p->failed || p->unloaded) return;
  Duration ran_for(static_cast<int64_t>(uv_now(loop_) - w.started_ms));
  auto d = p->policy.OnCrash(w.index, static_cast<int64_t>(uv_now(loop_)), ran_for);
  if (d.failed) {
    MarkFailed(*p, fmt::format("{} crashes within restart_window ({}), the last: {}: {}", d.crashes_in_window,
                               FormatDuration(p->config.restart_window), w.ident, why));
    return;
  }
  ScheduleRestart(w, d.delay);
}

void Supervisor::MarkFailed(Plugin& p, std::string reason) {
  p.failed = true;
  p.last_error = std::move(reason);
  log::Error("plugin {} failed: {}; it is not restarted until `sluicectl plugin restart {}`", p.config.name,
             p.last_error, p.config.name);
  for (auto& w : p.workers) {
    if (w->state == WorkerState::kBackoff) {
      uv_timer_stop(w->timer);
      w->state = WorkerState::kIdle;
    }
  }
}

void Supervisor::CheckStopped() {
  for (auto& p : plugins_) {
    if (p->AnyAlive()) continue;
    if (p->start_when_stopped && !p->removing && !stopping_all_) {
      p->start_when_stopped = false;
      if (p->next_config) {
        p->config = *p->next_config;
        p->next_config.reset();
      }
      StartPlugin(*p);
    }
  }
  ReapRemoved();
  if (!stopping_all_) return;
  for (const auto& p : plugins_) {
    if (p->AnyAlive()) return;
  }
  // Every worker has exited: release the handles that are still open, then report.
  for (auto& p : plugins_) {
    for (auto& w : p->workers) {
      CloseWorkerHandles(*w);
      CloseTimer(*w);
    }
  }
  if (stop_done_) {
    auto done = std::move(stop_done_);
    stop_done_ = nullptr;
    done();
  }
}

void Supervisor::ReapRemoved() {
  // A plugin gone from the configuration leaves once its workers have exited. Workers whose pipes
  // or timer are still closing delete themselves in the last close callback.
  for (auto it = plugins_.begin(); it != plugins_.end();) {
    Plugin& p = **it;
    if (!p.removing || p.AnyAlive() || stopping_all_) {
      ++it;
      continue;
    }
    for (auto& w : p.workers) Retire(std::move(w));
    log::Notice("plugin {} removed", p.config.name);
    it = plugins_.erase(it);
  }
}

// ---- Reading the worker's pipes ----

void Supervisor::OnAlloc(uv_handle_t* /*handle*/, size_t /*suggested*/, uv_buf_t* buf) {
  // Reads are delivered one at a time on the loop thread, so one buffer serves every pipe.
  static char buffer[64 << 10];
  buf->base = buffer;
  buf->len = sizeof buffer;
}

namespace {

// Splits complete lines off `pending` (after appending `data`), calling fn for each; a line longer
// than kMaxLineBytes is cut.
template <typename Fn>
void TakeLines(std::string& pending, std::string_view data, Fn fn) {
  pending.append(data);
  size_t start = 0;
  for (;;) {
    size_t nl = pending.find('\n', start);
    if (nl == std::string::npos) {
      if (pending.size() - start >= kMaxLineBytes) {
        fn(std::string_view(pending).substr(start, kMaxLineBytes));
        start += kMaxLineBytes;
        continue;
      }
      break;
    }
    fn(std::string_view(pending).substr(start, nl - start));
    start = nl + 1;
  }
  pending.erase(0, start);
}

}  // namespace

void Supervisor::OnErrRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* w = static_cast<Worker*>(stream->data);
  if (nread > 0) {
    TakeLines(w->err_buf, std::string_view(buf->base, static_cast<size_t>(nread)),
              [w](std::string_view line) {
                if (w->sup != nullptr) w->sup->OnLogLine(*w, line);
              });
    return;
  }
  if (nread == 0) return;
  if (!w->err_buf.empty() && w->sup != nullptr) w->sup->OnLogLine(*w, w->err_buf);
  w->err_buf.clear();
  uv_pipe_t* pipe = w->err;
  w->err = nullptr;
  if (pipe != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(pipe), [](uv_handle_t* h) {
      auto* worker = static_cast<Worker*>(h->data);
      delete reinterpret_cast<uv_pipe_t*>(h);
      if (--worker->live_handles == 0 && worker->plugin == nullptr) delete worker;
    });
  }
}

void Supervisor::OnStatusRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* w = static_cast<Worker*>(stream->data);
  if (nread > 0) {
    TakeLines(w->status_buf, std::string_view(buf->base, static_cast<size_t>(nread)),
              [w](std::string_view line) {
                if (w->sup != nullptr && w->plugin != nullptr) w->sup->OnStatusLine(*w, line);
              });
    return;
  }
  if (nread == 0) return;
  w->status_buf.clear();
  uv_pipe_t* pipe = w->status;
  w->status = nullptr;
  if (pipe != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(pipe), [](uv_handle_t* h) {
      auto* worker = static_cast<Worker*>(h->data);
      delete reinterpret_cast<uv_pipe_t*>(h);
      if (--worker->live_handles == 0 && worker->plugin == nullptr) delete worker;
    });
  }
}

void Supervisor::OnLogLine(Worker& w, std::string_view line) {
  // The worker writes "<N>order[0]: text"; anything else (a plugin writing to stderr itself) is
  // logged at info level under the worker's name.
  if (line.size() >= 3 && line[0] == '<' && line[2] == '>' && line[1] >= '0' && line[1] <= '7') {
    LogLevel level = static_cast<LogLevel>(std::clamp(line[1] - '0', 3, 7));
    if (level <= log::Level()) log::Write(level, line.substr(3));
    return;
  }
  if (line.empty()) return;
  if (LogLevel::kInfo <= log::Level()) log::Write(LogLevel::kInfo, fmt::format("{}: {}", w.ident, line));
}

void Supervisor::OnStatusLine(Worker& w, std::string_view line) {
  json event = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (event.is_discarded() || !event.is_object()) {
    log::Warning("{}: ignoring a malformed status line from the worker", w.ident);
    return;
  }
  const std::string kind = event.value("event", "");
  Plugin& p = *w.plugin;
  if (kind == "loaded") {
    p.version = event.value("version", "");
    Attach(w, event);
  } else if (kind == "ready") {
    if (w.state == WorkerState::kStarting) w.state = WorkerState::kRunning;
    log::Notice("{}: running {} {} (pid {})", w.ident, p.config.name, p.version, w.pid);
  } else if (kind == "refused" || kind == "error") {
    w.error = event.value("error", "");
    p.last_error = w.error;
  } else if (kind == "stats") {
    w.cur.handled = event.value("handled", uint64_t{0});
    w.cur.retried = event.value("retried", uint64_t{0});
    w.cur.rejected = event.value("rejected", uint64_t{0});
    w.cur.conflicts = event.value("conflicts", uint64_t{0});
    w.cur.lease_lost = event.value("lease_lost", uint64_t{0});
    w.cur.refused = event.value("refused", uint64_t{0});
    w.in_flight = event.value("in_flight", uint64_t{0});
  }
}

void Supervisor::Attach(Worker& w, const json& loaded) {
  if (w.broker_fd < 0 || w.attached) return;
  broker::PluginIdentity id;
  id.name = w.plugin->config.name;  // the worker refused a descriptor with another name
  id.instance = w.index;
  if (const auto it = loaded.find("publishes"); it != loaded.end() && it->is_array()) {
    for (const auto& t : *it) {
      if (t.is_string()) id.publishes.push_back(t.get<std::string>());
    }
  }
  auto* pipe = new uv_pipe_t;
  uv_pipe_init(loop_, pipe, 0);
  int rc = uv_pipe_open(pipe, w.broker_fd);
  if (rc != 0) {
    log::Error("{}: cannot use the broker socket: {}; stopping the worker", w.ident, uv_strerror(rc));
    uv_close(reinterpret_cast<uv_handle_t*>(pipe), [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
    ::close(w.broker_fd);
    w.broker_fd = -1;
    if (w.alive()) uv_process_kill(w.process, SIGTERM);
    return;
  }
  w.broker_fd = -1;
  w.conn_id = service_->AttachPlugin(pipe, std::move(id));
  w.attached = true;
}

// ---- Operator actions ----

Status Supervisor::Load(const PluginConfig& config) {
  if (stopping_all_) return Unavailable("the daemon is stopping");
  if (!config.enabled) {
    return InvalidArgument(
        fmt::format("plugin {} is disabled in the configuration (enabled = false)", config.name));
  }
  Plugin* p = Find(config.name);
  if (p != nullptr && !p->removing) {
    if (std::any_of(p->workers.begin(), p->workers.end(),
                    [](const auto& w) { return w->state == WorkerState::kStopping; })) {
      return Unavailable(fmt::format("plugin {} is still stopping; try again when it is stopped", config.name));
    }
    if (p->AnyAlive() || std::any_of(p->workers.begin(), p->workers.end(), [](const auto& w) {
          return w->state == WorkerState::kBackoff;
        })) {
      return Status(StatusCode::kAlreadyExists, fmt::format("plugin {} is already running", config.name));
    }
    p->config = config;
    p->failed = false;
    p->last_error.clear();
    p->policy.Reset(SettingsOf(config));
    StartPlugin(*p);
    return Status::Ok();
  }
  if (p != nullptr) {
    return Unavailable(fmt::format("plugin {} is still stopping after its removal; try again", config.name));
  }
  StartPlugin(*Add(config));
  log::Notice("plugin {} loaded from {}", config.name, config.path.string());
  return Status::Ok();
}

Status Supervisor::Unload(std::string_view name) {
  Plugin* p = Find(name);
  if (p == nullptr || p->removing) return NotFound(fmt::format("no plugin named {}", name));
  p->unloaded = true;
  p->next_config.reset();
  StopPlugin(*p, /*then_start=*/false);
  log::Notice("plugin {} unloaded", name);
  return Status::Ok();
}

Status Supervisor::Restart(std::string_view name) {
  if (stopping_all_) return Unavailable("the daemon is stopping");
  Plugin* p = Find(name);
  if (p == nullptr || p->removing) return NotFound(fmt::format("no plugin named {}", name));
  if (!p->config.enabled) {
    return InvalidArgument(fmt::format("plugin {} is disabled in the configuration (enabled = false)", name));
  }
  p->failed = false;
  p->last_error.clear();
  p->unloaded = false;
  p->policy.Reset(SettingsOf(p->config));
  log::Notice("plugin {}: restarting", name);
  StopPlugin(*p, /*then_start=*/true);
  return Status::Ok();
}

json Supervisor::Reconcile(const std::vector<PluginConfig>& plugins) {
  json started = json::array(), stopped = json::array(), restarted = json::array();
  for (const PluginConfig& c : plugins) {
    Plugin* p = Find(c.name);
    if (p == nullptr || p->removing) {
      if (p != nullptr) continue;  // the old one is still stopping; a later reload or load starts it
      Plugin* added = Add(c);
      if (c.enabled) {
        StartPlugin(*added);
        started.push_back(c.name);
      }
      continue;
    }
    if (p->config == c) continue;
    const bool was_enabled = p->config.enabled;
    if (!c.enabled) {
      p->config = c;
      p->unloaded = true;
      StopPlugin(*p, false);
      if (was_enabled) stopped.push_back(c.name);
      continue;
    }
    if (p->unloaded && was_enabled) {
      p->config = c;  // unloaded by an operator: takes the new settings when loaded again
      continue;
    }
    p->policy.Reset(SettingsOf(c));
    p->failed = false;
    p->last_error.clear();  // the new settings start afresh, as a load or restart does
    if (!was_enabled || !p->AnyAlive()) {
      p->config = c;
      StartPlugin(*p);
      started.push_back(c.name);
    } else {
      p->next_config = c;
      StopPlugin(*p, /*then_start=*/true);
      restarted.push_back(c.name);
    }
  }
  for (auto& p : plugins_) {
    bool listed = std::any_of(plugins.begin(), plugins.end(),
                              [&p](const PluginConfig& c) { return c.name == p->config.name; });
    if (listed || p->removing) continue;
    p->removing = true;
    p->unloaded = true;
    stopped.push_back(p->config.name);
    StopPlugin(*p, false);
  }
  CheckStopped();
  return {{"started", started}, {"stopped", stopped}, {"restarted", restarted}};
}

void Supervisor::StopAll(std::function<void()> done) {
  stopping_all_ = true;
  stop_done_ = std::move(done);
  for (auto& p : plugins_) {
    for (auto& w : p->workers) StopWorker(*w);
  }
  CheckStopped();
}

json Supervisor::Info() const {
  json out = json::array();
  for (const auto& pp : plugins_) {
    const Plugin& p = *pp;
    Counts total;
    uint64_t in_flight = 0;
    json pids = json::array();
    json workers = json::array();
    bool any_starting = false, any_backoff = false, any_stopping = false, any_running = false;
    uint32_t running = 0;
    for (const auto& w : p.workers) {
      Counts c = w->base;
      c.Add(w->cur);
      total.Add(c);
      in_flight += w->in_flight;
      if (w->alive()) pids.push_back(w->pid);
      if (w->state == WorkerState::kRunning) ++running;
      any_starting |= w->state == WorkerState::kStarting;
      any_backoff |= w->state == WorkerState::kBackoff;
      any_stopping |= w->state == WorkerState::kStopping;
      any_running |= w->state == WorkerState::kRunning;
      workers.push_back({{"instance", w->index},
                         {"pid", w->alive() ? w->pid : 0},
                         {"state", StateName(w->state)},
                         {"restarts", w->restarts},
                         {"starts_us", json(w->starts_us)},
                         {"last_exit", w->last_exit},
                         {"handled", c.handled},
                         {"in_flight", w->in_flight}});
    }
    std::string state = p.failed         ? "failed"
                        : any_stopping   ? "stopping"
                        : any_backoff    ? "backoff"
                        : any_starting   ? "starting"
                        : any_running    ? "running"
                        : p.config.enabled ? "stopped"
                                           : "disabled";
    out.push_back({{"name", p.config.name},
                   {"path", p.config.path.string()},
                   {"version", p.version},
                   {"state", state},
                   {"enabled", p.config.enabled},
                   {"instances", p.config.instances},
                   {"running", running},
                   {"pids", pids},
                   {"restarts", p.restarts},
                   {"last_error", p.last_error},
                   {"in_flight", in_flight},
                   {"handled", total.handled},
                   {"retried", total.retried},
                   {"rejected", total.rejected},
                   {"conflicts", total.conflicts},
                   {"lease_lost", total.lease_lost},
                   {"workers", workers}});
  }
  return {{"plugins", out}};
}

}  // namespace sluice

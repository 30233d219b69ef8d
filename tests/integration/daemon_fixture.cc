// SPDX-License-Identifier: MIT
#include <gtest/gtest.h>

#include "tests/integration/daemon_fixture.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>

namespace sluice::testing {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string SluicedPath() { return Env("SLUICED"); }

bool WaitUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

nlohmann::json CtlJson(const DaemonProcess& d, std::vector<std::string> args) {
  args.insert(args.begin(), "--json");
  CommandResult r = d.Ctl(args);
  if (r.exit_code != 0) return nlohmann::json{{"error", r.err}, {"exit", r.exit_code}};
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  return j.is_discarded() ? nlohmann::json{{"error", "not JSON: " + r.out}} : j;
}

double MetricValue(const std::string& text, const std::string& series) {
  size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

nlohmann::json Plugin(const DaemonProcess& d, const std::string& name) {
  for (const auto& p : CtlJson(d, {"plugins"}).value("plugins", nlohmann::json::array())) {
    if (p.value("name", "") == name) return p;
  }
  return nlohmann::json::object();
}

nlohmann::json Subscription(const DaemonProcess& d, const std::string& topic, const std::string& name) {
  for (const auto& s : CtlJson(d, {"subs"}).value("subscriptions", nlohmann::json::array())) {
    if (s.value("topic", "") == topic && s.value("name", "") == name) return s;
  }
  return nlohmann::json::object();
}
std::string SluicectlPath() { return Env("SLUICECTL"); }

CommandResult RunCommand(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                         std::chrono::milliseconds timeout) {
  CommandResult result;
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) return result;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0 && std::chrono::steady_clock::now() < deadline) {
    if (poll(fds, 2, 100) <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
      char buf[4096];
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? result.out : result.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  int status = 0;
  if (open_fds > 0) kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "sluice-test-XXXXXX").string();
  char* p = mkdtemp(tmpl.data());
  path_ = p ? std::filesystem::path(p) : std::filesystem::path();
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!path_.empty() && Env("SLUICE_KEEP_TEST_DIRS").empty()) std::filesystem::remove_all(path_, ec);
}

DaemonProcess::DaemonProcess(std::string extra_config) { WriteConfig(extra_config); }

void DaemonProcess::WriteConfig(const std::string& extra_config) {
  std::ofstream out(config_path());
  // Relative paths resolve against the config file's directory.
  out << "[daemon]\n"
         "data_dir = \"data\"\n"
         "broker_socket = \"broker.sock\"\n"
         "admin_socket = \"admin.sock\"\n"
         "log_level = \"debug\"\n"
      << extra_config;
}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) Kill();
}

::testing::AssertionResult DaemonProcess::Start(std::chrono::milliseconds timeout,
                                                const std::map<std::string, std::string>& env) {
  if (SluicedPath().empty()) return ::testing::AssertionFailure() << "SLUICED is not set";
  auto log_path = dir() / "sluiced.log";
  pid_ = fork();
  if (pid_ == 0) {
    int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::string bin = SluicedPath();
    std::string cfg = config_path().string();
    execl(bin.c_str(), bin.c_str(), "--config", cfg.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return ::testing::AssertionFailure() << "sluiced exited during startup: " << Log();
    }
    client::ConnectOptions opts;
    opts.timeout = std::chrono::milliseconds(500);
    auto conn = client::Connection::Connect(admin_socket(), opts);
    if (conn.ok() && (*conn)->Admin("ping").ok()) return ::testing::AssertionSuccess();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return ::testing::AssertionFailure() << "sluiced did not answer within the timeout: " << Log();
}

int DaemonProcess::Stop(int sig, std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  kill(pid_, sig);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Kill();
  return -1;
}

void DaemonProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

bool DaemonProcess::Running() {
  if (pid_ <= 0) return false;
  int status;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

Result<std::unique_ptr<client::Connection>> DaemonProcess::Connect(const std::string& name) const {
  client::ConnectOptions opts;
  opts.name = name;
  return client::Connection::Connect(broker_socket(), opts);
}

CommandResult DaemonProcess::Ctl(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {SluicectlPath(), "--socket", admin_socket().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv);
}

std::string DaemonProcess::Log() const { return ReadFile(dir() / "sluiced.log"); }

}  // namespace sluice::testing

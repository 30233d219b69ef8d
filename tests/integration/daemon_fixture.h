// SPDX-License-Identifier: MIT
//
// DaemonProcess: the real sluiced, started by a test in a fresh temporary directory with its own config
// (sockets and data inside it), and always stopped by the test: the destructor sends SIGKILL if the
// test did not stop it. Binary paths come from the environment meson sets (SLUICED, SLUICECTL).
// Waits are bounded polls (never a bare sleep for a fixed time). Not thread-safe; one per test.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "broker/client/client.h"

namespace sluice::testing {

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs a program to completion with the given arguments and extra environment; captures its output.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env = {},
                         std::chrono::milliseconds timeout = std::chrono::seconds(30));

class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

class DaemonProcess {
 public:
  // Creates the directory layout and writes `extra_config` after the generated [daemon] section
  // (it may add [broker], [[topic]], ... tables).
  explicit DaemonProcess(std::string extra_config = "");
  ~DaemonProcess();

  // Starts sluiced and waits until its admin socket answers a ping (up to `timeout`).
  ::testing::AssertionResult Start(std::chrono::milliseconds timeout = std::chrono::seconds(20),
                                   const std::map<std::string, std::string>& env = {});
  // Sends `sig` and waits for the exit (up to `timeout`); returns the exit status as from waitpid.
  int Stop(int sig = 15, std::chrono::milliseconds timeout = std::chrono::seconds(20));
  void Kill();  // SIGKILL, waits
  bool Running();
  pid_t pid() const { return pid_; }

  Result<std::unique_ptr<client::Connection>> Connect(const std::string& name = "test") const;
  CommandResult Ctl(const std::vector<std::string>& args) const;
  // The daemon's stderr so far.
  std::string Log() const;

  const std::filesystem::path& dir() const { return dir_.path(); }
  std::filesystem::path config_path() const { return dir_.path() / "sluice.toml"; }
  std::filesystem::path broker_socket() const { return dir_.path() / "broker.sock"; }
  std::filesystem::path admin_socket() const { return dir_.path() / "admin.sock"; }
  std::filesystem::path data_dir() const { return dir_.path() / "data"; }
  void WriteConfig(const std::string& extra_config);

 private:
  TempDir dir_;
  pid_t pid_ = -1;
};

// Polls `done` every 20 ms until it holds or `timeout` passes; returns its last answer.
bool WaitUntil(const std::function<bool()>& done,
               std::chrono::milliseconds timeout = std::chrono::seconds(20));
// `sluicectl --json ARGS` parsed; {"error": ..., "exit": N} when it fails or prints no JSON.
nlohmann::json CtlJson(const DaemonProcess& d, std::vector<std::string> args);
// One plugin's entry of `sluicectl plugins`; {} when it is not listed.
nlohmann::json Plugin(const DaemonProcess& d, const std::string& name);
// One subscription's entry of `sluicectl subs`; {} when it is not listed.
nlohmann::json Subscription(const DaemonProcess& d, const std::string& topic, const std::string& name);
// The value of one sample line ("name{labels} value") of a Prometheus text, or -1 when the series is
// absent.
double MetricValue(const std::string& text, const std::string& series);

std::string SluicedPath();
std::string SluicectlPath();

}  // namespace sluice::testing

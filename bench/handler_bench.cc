// SPDX-License-Identifier: MIT
//
// handler-bench: plugin handler throughput with exactly-once effects. It starts its own sluiced in a
// temporary directory, preloads --messages messages into the topic "bench_in" (message keys spread over
// --keys values, so competing workers rarely race on one key), then loads the "bench" test plugin
// (tests/plugins/mock/ok.cc built with MOCK_BENCH: per message it reads the key "k/<message key>",
// writes it back plus one and publishes one message, all committed as one bundle with the ack) with 1
// and then 2 workers, and reports handled messages/s: the rate of acks on the plugin's subscription
// between 10% and 90% of the backlog, sampled with the admin `subs` command. Each run checks that the
// counters of the keyspace add up to exactly the messages handled.
//
// Single-threaded; the daemon and its workers are separate processes.
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "broker/client/client.h"
#include "broker/store/keyspace_reader.h"

#ifndef SLUICE_BENCH_SLUICED
#define SLUICE_BENCH_SLUICED ""
#endif
#ifndef SLUICE_BENCH_PLUGIN
#define SLUICE_BENCH_PLUGIN ""
#endif

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using sluice::client::Connection;

struct Options {
  std::string sluiced = SLUICE_BENCH_SLUICED;
  std::string plugin = SLUICE_BENCH_PLUGIN;
  size_t messages = 200000;
  size_t keys = 1000;
  size_t size = 100;
  std::string durability = "sync";
  std::vector<int> workers = {1, 2};
};

class Daemon {
 public:
  Daemon(const Options& o, int instances) {
    std::string tmpl = (fs::temp_directory_path() / "sluice-handler-bench-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    std::ofstream(dir_ / "sluice.toml") << fmt::format(
        "[daemon]\ndata_dir = \"data\"\nbroker_socket = \"broker.sock\"\nadmin_socket = \"admin.sock\"\n"
        "log_level = \"notice\"\n[broker]\ndurability = \"{}\"\nmap_size = \"1GiB\"\n"
        "[[subscription]]\ntopic = \"bench_in\"\nname = \"bench\"\nstart = \"earliest\"\n",
        o.durability);
    fs::create_directories(dir_ / "plugins.d");
    plugin_toml_ =
        fmt::format("[[plugin]]\nname = \"bench\"\npath = \"{}\"\ninstances = {}\n", o.plugin, instances);
    pid_ = fork();
    if (pid_ == 0) {
      std::string log = (dir_ / "sluiced.log").string();
      FILE* f = std::freopen(log.c_str(), "w", stderr);
      (void)f;
      std::string cfg = (dir_ / "sluice.toml").string();
      execl(o.sluiced.c_str(), o.sluiced.c_str(), "--config", cfg.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~Daemon() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status;
      waitpid(pid_, &status, 0);
    }
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::unique_ptr<Connection> Connect(const char* socket) {
    for (int i = 0; i < 500; ++i) {
      auto c = Connection::Connect(dir_ / socket);
      if (c.ok()) return std::move(*c);
      std::this_thread::sleep_for(20ms);
    }
    return nullptr;
  }
  void WritePluginDropIn() { std::ofstream(dir_ / "plugins.d" / "bench.toml") << plugin_toml_; }
  const fs::path& dir() const { return dir_; }

 private:
  fs::path dir_;
  std::string plugin_toml_;
  pid_t pid_ = -1;
};

// Acked messages of bench_in/bench, from the admin `subs` command.
int64_t Acked(Connection& admin) {
  auto r = admin.Admin("subs");
  if (!r.ok()) return -1;
  for (const auto& s : (*r)["subscriptions"]) {
    if (s.value("topic", "") == "bench_in" && s.value("name", "") == "bench") return s.value("acked", int64_t{0});
  }
  return 0;
}

bool Run(const Options& o, int workers) {
  Daemon d(o, workers);
  auto broker = d.Connect("broker.sock");
  auto admin = d.Connect("admin.sock");
  if (!broker || !admin) {
    std::fprintf(stderr, "handler-bench: sluiced did not start (see its log)\n");
    return false;
  }
  // Preload the backlog, pipelined.
  std::string payload(o.size, 'x');
  for (size_t i = 0; i < o.messages; ++i) {
    sluice::client::OutMessage m;
    m.topic = "bench_in";
    m.key = fmt::format("{}", i % o.keys);
    m.payload = payload;
    if (!broker->PublishAsync(m).ok()) return false;
    while (broker->async_publishes_outstanding() > 1024) {
      if (!broker->WaitPublishAck(10s).ok()) return false;
    }
  }
  while (broker->async_publishes_outstanding() > 0) {
    if (!broker->WaitPublishAck(10s).ok()) return false;
  }

  d.WritePluginDropIn();
  auto loaded = admin->Admin("plugin.load", {{"name", "bench"}});
  if (!loaded.ok()) {
    std::fprintf(stderr, "handler-bench: plugin.load: %s\n", loaded.status().message().c_str());
    return false;
  }
  const int64_t total = static_cast<int64_t>(o.messages);
  const int64_t lo = total / 10, hi = total * 9 / 10;
  Clock::time_point t_lo{}, t_hi{};
  int64_t a_lo = 0, a_hi = 0;
  auto deadline = Clock::now() + 600s;
  for (;;) {
    int64_t a = Acked(*admin);
    auto now = Clock::now();
    if (a < 0 || now > deadline) {
      std::fprintf(stderr, "handler-bench: stalled at %lld of %lld\n", static_cast<long long>(a),
                   static_cast<long long>(total));
      return false;
    }
    if (t_lo == Clock::time_point{} && a >= lo) {
      t_lo = now;
      a_lo = a;
    }
    if (a >= hi) {
      t_hi = now;
      a_hi = a;
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  double seconds = std::chrono::duration<double>(t_hi - t_lo).count();
  double rate = seconds > 0 ? static_cast<double>(a_hi - a_lo) / seconds : 0;
  // Wait for the rest, then check the effects: the key counters add up to the messages handled.
  while (Acked(*admin) < total && Clock::now() < deadline) std::this_thread::sleep_for(20ms);
  int64_t sum = 0;
  auto reader = sluice::broker::store::KeyspaceReader::Open(d.dir() / "data" / "store", "bench");
  if (reader.ok() && (*reader)->Begin().ok()) {
    (void)(*reader)->Scan("k/", [&sum](std::string_view, const sluice::broker::store::KeyspaceReader::Entry& e) {
      sum += std::stoll(std::string(e.value));
      return true;
    });
    (*reader)->End();
  }
  auto plugins = admin->Admin("plugins");
  int64_t conflicts = 0;
  if (plugins.ok()) {
    for (const auto& p : (*plugins)["plugins"]) conflicts += p.value("conflicts", int64_t{0});
  }
  std::string effects = sum == total ? "exact" : fmt::format("WRONG ({} of {})", sum, total);
  std::printf("%d worker%s: %.0f handled/s (%zu messages, durability %s, %lld conflicts re-run), effects %s\n",
              workers, workers == 1 ? " " : "s", rate, o.messages, o.durability.c_str(),
              static_cast<long long>(conflicts), effects.c_str());
  return sum == total;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"handler-bench: plugin handler throughput with exactly-once effects (see the file comment)",
               "handler-bench"};
  app.add_option("--sluiced", o.sluiced, "the sluiced executable")->capture_default_str();
  app.add_option("--plugin", o.plugin, "the bench plugin (tests/plugins/mock/bench.so)")->capture_default_str();
  app.add_option("-n,--messages", o.messages, "backlog handled per run")->capture_default_str();
  app.add_option("--keys", o.keys, "distinct message keys")->capture_default_str();
  app.add_option("--size", o.size, "payload bytes")->capture_default_str();
  app.add_option("--durability", o.durability, "sync, batch or none")->capture_default_str();
  app.add_option("-w,--workers", o.workers, "worker counts to measure")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (o.sluiced.empty() || o.plugin.empty()) {
    std::fprintf(stderr, "handler-bench: --sluiced and --plugin are needed (built without tests)\n");
    return 2;
  }
  bool ok = true;
  for (int w : o.workers) ok = Run(o, w) && ok;
  return ok ? 0 : 1;
}

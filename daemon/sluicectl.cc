// SPDX-License-Identifier: MIT
//
// sluicectl: the admin CLI. Most subcommands are one admin call on the daemon's admin socket (found
// from --socket, or the config's daemon.admin_socket); the order pipeline commands and `publish` go to
// the broker socket as any client would (--broker-socket, or daemon.broker_socket). Output is a human
// table, or JSON with --json. Exit codes (ctl_output.h): 0 ok, 1 the operation failed, 2 usage error,
// 3 the daemon is unreachable.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "broker/client/client.h"
#include "daemon/config.h"
#include "daemon/ctl_output.h"
#include "daemon/ctl_pipeline.h"
#include "sluice_build_config.h"

namespace {

using nlohmann::json;

using sluice::ctl::kExitFailed;
using sluice::ctl::kExitOk;
using sluice::ctl::kExitUnreachable;
using sluice::ctl::kExitUsage;
using sluice::ctl::PrintTable;
std::string Str(const json& j) { return sluice::ctl::Cell(j); }
std::string FormatDuration(double seconds) { return sluice::ctl::HumanSeconds(seconds); }
struct Globals {
  std::string config_path = std::string(SLUICE_SYSCONFDIR) + "/sluice.toml";
  bool config_given = false;  // --config named a file: it must exist
  std::string socket;
  std::string broker_socket;
  bool json_output = false;
  int timeout_ms = 10000;
};

class Ctl {
 public:
  explicit Ctl(Globals g) : g_(std::move(g)) {}

  // Resolves a socket path: the option wins, then the config file's daemon.* key. Empty on error
  // (reported).
  static std::string SocketPath(const Globals& g, bool admin) {
    const std::string& given = admin ? g.socket : g.broker_socket;
    if (!given.empty()) return given;
    auto daemon = sluice::LoadDaemonSection(g.config_path, /*allow_missing=*/!g.config_given);
    if (!daemon.ok()) {
      std::fprintf(stderr, "sluicectl: %s\n", daemon.status().message().c_str());
      return {};
    }
    return (admin ? daemon->admin_socket : daemon->broker_socket).string();
  }

  int Connect() {
    std::string socket = SocketPath(g_, /*admin=*/true);
    if (socket.empty()) return kExitUsage;
    sluice::client::ConnectOptions opts;
    opts.name = "sluicectl " SLUICE_VERSION;
    opts.timeout = std::chrono::milliseconds(g_.timeout_ms);
    auto conn = sluice::client::Connection::Connect(socket, opts);
    if (!conn.ok()) {
      std::fprintf(stderr, "sluicectl: %s\n", conn.status().message().c_str());
      return conn.status().code() == sluice::StatusCode::kPermissionDenied ? kExitFailed : kExitUnreachable;
    }
    conn_ = std::move(*conn);
    return kExitOk;
  }

  // Runs one admin command; on success calls `human` (unless --json) with the result.
  int Call(const std::string& command, const json& args, const std::function<void(const json&)>& human) {
    if (int rc = Connect(); rc != kExitOk) return rc;
    auto r = conn_->Admin(command, args, std::chrono::milliseconds(g_.timeout_ms));
    if (!r.ok()) {
      std::fprintf(stderr, "sluicectl: %s: %s\n", command.c_str(), r.status().message().c_str());
      // A broken connection means the daemon went away; anything else is the command's own failure.
      if (conn_->closed()) return kExitUnreachable;
      if (r.status().code() == sluice::StatusCode::kInvalidArgument) return kExitUsage;
      return kExitFailed;
    }
    if (g_.json_output) {
      std::puts(r->dump(2, ' ', false, json::error_handler_t::replace).c_str());
    } else {
      human(*r);
    }
    result_ = std::move(*r);
    return kExitOk;
  }
  // The answer of the last successful Call().
  const json& result() const { return result_; }

  // After `plugin load` or `plugin restart`: waits (within --timeout) until the plugin's workers run
  // or it has failed, so the exit status says whether it started, not only that the daemon took the
  // command. A plugin in backoff has failed to start at least once: that is reported at once. After
  // `plugin unload`: waits until its workers have exited, so that a load right after it finds the
  // plugin stopped, not "already running".
  int WaitState(const std::string& name, bool running) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(g_.timeout_ms);
    for (;;) {
      auto r = conn_->Admin("plugins", json::object(), std::chrono::milliseconds(g_.timeout_ms));
      if (!r.ok()) {
        std::fprintf(stderr, "sluicectl: plugins: %s\n", r.status().message().c_str());
        return conn_->closed() ? kExitUnreachable : kExitFailed;
      }
      json entry;
      for (const auto& p : r->value("plugins", json::array())) {
        if (p.value("name", "") == name) entry = p;
      }
      const std::string state = entry.value("state", "");
      const std::string error = entry.value("last_error", "");
      // Stopped means no worker process left (a failed plugin may still have workers that run; a plugin
      // removed from the configuration meanwhile has none).
      const bool gone = entry.value("pids", json::array()).empty() && state != "stopping";
      if (running ? state == "running" : gone) {
        if (!g_.json_output) {
          std::printf("%s: %s (%d/%d workers)\n", name.c_str(), state.c_str(), entry.value("running", 0),
                      entry.value("instances", 0));
        }
        return kExitOk;
      }
      if (running && (state == "failed" || state == "backoff" || entry.is_null())) {
        std::fprintf(stderr, "sluicectl: plugin %s did not start (%s): %s\n", name.c_str(),
                     entry.is_null() ? "not configured" : state.c_str(), error.empty() ? "-" : error.c_str());
        return kExitFailed;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        std::fprintf(stderr, "sluicectl: plugin %s is still %s after %d ms\n", name.c_str(), state.c_str(),
                     g_.timeout_ms);
        return kExitFailed;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

 private:
  Globals g_;
  std::unique_ptr<sluice::client::Connection> conn_;
  json result_;
};

void HumanStatus(const json& s) {
  std::printf("sluiced %s (pid %s), up %s\n", Str(s.value("version", json())).c_str(),
              Str(s.value("pid", json())).c_str(), FormatDuration(s.value("uptime_s", 0.0)).c_str());
  std::printf("  config:        %s\n", Str(s.value("config", json())).c_str());
  std::printf("  data dir:      %s (durability %s)\n", Str(s.value("data_dir", json())).c_str(),
              Str(s.value("durability", json())).c_str());
  std::printf("  broker socket: %s\n", Str(s.value("broker_socket", json())).c_str());
  std::printf("  admin socket:  %s\n", Str(s.value("admin_socket", json())).c_str());
  std::printf("  connections:   %s broker, %s admin (%s since start, %s closed for protocol errors)\n",
              Str(s.value("connections", json())).c_str(), Str(s.value("admin_connections", json())).c_str(),
              Str(s.value("connections_total", json())).c_str(), Str(s.value("protocol_errors", json())).c_str());
}

void HumanTopics(const json& r) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& t : r.value("topics", json::array())) {
    // Nothing stored, no range to show (the JSON keeps first_seq = last_seq + 1, as the store does).
    const bool empty = t.value("messages", 0) == 0;
    rows.push_back({Str(t["name"]), Str(t["messages"]), Str(t["bytes"]), empty ? "-" : Str(t["first_seq"]),
                    empty ? "-" : Str(t["last_seq"]), Str(t["publish_rate"]),
                    std::to_string(t.value("subscriptions", json::array()).size())});
  }
  PrintTable({"TOPIC", "MESSAGES", "BYTES", "FIRST", "LAST", "PUB/S", "SUBS"}, rows);
}

void HumanSubs(const json& r) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : r.value("subscriptions", json::array())) {
    double eta = s.value("drain_eta_us", -1.0);
    rows.push_back({Str(s["topic"]), Str(s["name"]), Str(s["pending"]), Str(s["in_flight"]),
                    Str(s["dead_lettered"]), Str(s["parked_keys"]), Str(s["skipped"]), Str(s["filtered"]),
                    Str(s["consumers"]), Str(s["ack_rate"]), eta < 0 ? "-" : FormatDuration(eta / 1e6)});
  }
  PrintTable({"TOPIC", "SUBSCRIPTION", "PENDING", "IN-FLIGHT", "DLQ", "PARKED", "SKIPPED", "FILTERED", "CONSUMERS",
              "ACK/S", "DRAIN"},
             rows);
}

// `with_envelope`: dlq peek, whose columns include the envelope's, also when there are no rows.
void HumanDeadLetters(const json& r, bool with_envelope) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : r.value("dead_letters", json::array())) {
    std::vector<std::string> row = {Str(d["seq"]), Str(d["delivery_count"]), Str(d["reason"]),
                                    Str(d["last_error"])};
    if (with_envelope) {
      const json e = d.value("envelope", json::object());
      row.push_back(Str(e.value("key", json(""))));
      row.push_back(Str(e.value("type", json(""))));
      row.push_back(Str(e.value("correlation_id", json(""))));
    }
    rows.push_back(std::move(row));
  }
  if (with_envelope) {
    PrintTable({"SEQ", "DELIVERIES", "REASON", "LAST ERROR", "KEY", "TYPE", "CORRELATION"}, rows);
  } else {
    PrintTable({"SEQ", "DELIVERIES", "REASON", "LAST ERROR"}, rows);
  }
}

void HumanPlugins(const json& r) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& p : r.value("plugins", json::array())) {
    std::string pids;
    for (const auto& pid : p.value("pids", json::array())) pids += (pids.empty() ? "" : ",") + Str(pid);
    rows.push_back({Str(p["name"]), Str(p.value("version", json(""))), Str(p["state"]),
                    fmt::format("{}/{}", Str(p.value("running", json(0))), Str(p["instances"])),
                    pids.empty() ? "-" : pids, Str(p["restarts"]), Str(p["in_flight"]), Str(p["handled"]),
                    Str(p.value("last_error", json("")))});
  }
  PrintTable({"PLUGIN", "VERSION", "STATE", "RUNNING", "PIDS", "RESTARTS", "IN-FLIGHT", "HANDLED", "LAST ERROR"},
             rows);
}

std::string TimeOfDay(int64_t us) {
  std::time_t secs = static_cast<std::time_t>(us / 1000000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:02}:{:02}:{:02}.{:03}", tm.tm_hour, tm.tm_min, tm.tm_sec, (us / 1000) % 1000);
}

// Stored messages (peek, trace) as a table.
void HumanMessages(const json& r) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : r.value("messages", json::array())) {
    rows.push_back({TimeOfDay(m.value("publish_time_us", int64_t{0})), Str(m["topic"]), Str(m["seq"]),
                    Str(m.value("source", json(""))), Str(m.value("type", json(""))), Str(m.value("key", json(""))),
                    Str(m.value("payload_bytes", json(0))),
                    m.value("dead_lettered", false) ? "dead-lettered in " + m.value("subscription", std::string("?"))
                                                    : std::string()});
  }
  PrintTable({"TIME (UTC)", "TOPIC", "SEQ", "SOURCE", "TYPE", "KEY", "BYTES", ""}, rows);
}

void HumanParked(const json& r) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& k : r.value("parked_keys", json::array())) {
    rows.push_back({Str(k["key"]), Str(k["parked_at_seq"]), Str(k["backlog"])});
  }
  PrintTable({"KEY", "PARKED AT SEQ", "BACKLOG"}, rows);
}

// `publish TOPIC`: the payload from standard input, confirmed by the broker.
int Publish(const Globals& g, const std::string& topic, const std::string& key, const std::string& type,
            const std::string& correlation) {
  std::string socket = Ctl::SocketPath(g, /*admin=*/false);
  if (socket.empty()) return kExitUsage;
  sluice::client::ConnectOptions opts;
  opts.name = "sluicectl " SLUICE_VERSION;
  opts.timeout = std::chrono::milliseconds(g.timeout_ms);
  auto conn = sluice::client::Connection::Connect(socket, opts);
  if (!conn.ok()) {
    std::fprintf(stderr, "sluicectl: %s\n", conn.status().message().c_str());
    return kExitUnreachable;
  }
  sluice::client::OutMessage m;
  m.topic = topic;
  m.key = key;
  m.type = type;
  m.correlation_id = correlation;
  m.payload.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  auto ack = (*conn)->Publish(m);
  if (!ack.ok()) {
    std::fprintf(stderr, "sluicectl: publish to %s: %s\n", topic.c_str(), ack.status().message().c_str());
    return (*conn)->closed() ? kExitUnreachable : kExitFailed;
  }
  json j = {{"topic", topic}, {"seq", ack->seq}, {"id", sluice::FormatUuid(ack->id)}, {"duplicate", ack->duplicate}};
  if (g.json_output) {
    std::puts(j.dump(2).c_str());
  } else {
    std::printf("%s seq %llu id %s%s\n", topic.c_str(), static_cast<unsigned long long>(ack->seq),
                sluice::FormatUuid(ack->id).c_str(), ack->duplicate ? " (duplicate)" : "");
  }
  return kExitOk;
}

// `bench ARGS...`: runs sluice-bench (installed beside sluicectl, or bench/ in a build tree) against the
// daemon's broker socket. Returns only when it cannot be started.
int Bench(const Globals& g, const std::vector<std::string>& extra) {
  std::string socket = Ctl::SocketPath(g, /*admin=*/false);
  if (socket.empty()) return kExitUsage;
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  std::string dir = n > 0 ? std::string(self, static_cast<size_t>(n)) : std::string();
  dir = dir.substr(0, dir.rfind('/') + 1);
  std::vector<std::string> candidates = {dir + "sluice-bench", dir + "../bench/sluice-bench"};
  for (const auto& bin : candidates) {
    if (access(bin.c_str(), X_OK) != 0) continue;
    std::vector<std::string> args = {bin, "--socket", socket};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
  }
  std::fprintf(stderr, "sluicectl: bench: sluice-bench is not installed beside sluicectl\n");
  return kExitFailed;
}

// After a parse that found no (sub)command where one is required: what is missing, with the commands
// that were expected ("unknown command 'order frob' (one of: list, place, show)", "'order' needs a
// command (one of: ...)"). Nothing when the missing command is not the problem.
std::optional<std::string> MissingCommand(CLI::App& app) {
  CLI::App* deepest = &app;
  std::string path;
  for (;;) {
    auto parsed = deepest->get_subcommands();
    if (parsed.empty()) break;
    deepest = parsed.front();
    path += (path.empty() ? "" : " ") + deepest->get_name();
  }
  std::vector<std::string> names;
  for (const CLI::App* sub : deepest->get_subcommands([](const CLI::App*) { return true; })) {
    names.push_back(sub->get_name());
  }
  if (names.empty()) return std::nullopt;
  std::sort(names.begin(), names.end());
  std::vector<std::string> left = app.remaining(true);
  // A mistyped option comes first, with its value as a word of its own: name the option.
  if (!left.empty() && left.front().starts_with("-")) return fmt::format("unknown option '{}'", left.front());
  auto word = std::find_if(left.begin(), left.end(), [](const std::string& a) { return !a.starts_with("-"); });
  if (word != left.end()) {
    return fmt::format("unknown command '{}{}{}' (one of: {})", path, path.empty() ? "" : " ", *word,
                       fmt::join(names, ", "));
  }
  if (path.empty()) return fmt::format("a command is required (one of: {})", fmt::join(names, ", "));
  return fmt::format("'{}' needs a command (one of: {})", path, fmt::join(names, ", "));
}

}  // namespace

int main(int argc, char** argv) {
  Globals g;
  CLI::App app{"sluicectl: administer a running sluiced over its admin socket (see sluicectl(1))", "sluicectl"};
  // Usage errors name the program like every other error it prints.
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return fmt::format("sluicectl: {}\nRun 'sluicectl --help' for the commands and options.\n", e.what());
  });
  app.require_subcommand(1);
  // Global options may also follow the command: `sluicectl status --json`.
  app.fallthrough();
  app.add_option("-c,--config", g.config_path, "configuration file to find the admin socket in")
      ->capture_default_str();
  app.add_option("-s,--socket", g.socket, "admin socket path (overrides the configuration)");
  app.add_option("-b,--broker-socket", g.broker_socket,
                 "broker socket path for order, stock, analytics and publish (overrides the configuration)");
  app.add_flag("-j,--json", g.json_output, "print the result as JSON");
  app.add_option("--timeout", g.timeout_ms, "milliseconds to wait for the daemon")->capture_default_str();
  app.set_version_flag("-V,--version", std::string("sluicectl ") + SLUICE_VERSION, "print the version and exit");

  std::function<int()> action;
  auto simple = [&](const char* name, const char* help, const char* command,
                    std::function<void(const json&)> human) {
    app.add_subcommand(name, help)->callback([&, command, human] {
      action = [&, command, human] { return Ctl(g).Call(command, json::object(), human); };
    });
  };
  simple("ping", "check that the daemon answers", "ping", [](const json&) { std::puts("pong"); });
  simple("status", "version, uptime, sockets, data directory and connections", "status", HumanStatus);
  simple("topics", "list topics with message counts, sizes and rates", "topics", HumanTopics);
  simple("subs", "list subscriptions with pending, in-flight and dead-letter counts", "subs", HumanSubs);
  simple("reload", "re-read the configuration (as SIGHUP) and show what changed", "reload", [](const json& r) {
    for (const auto& l : r.value("applied", json::array())) std::printf("applied: %s\n", Str(l).c_str());
    for (const auto& l : r.value("needs_restart", json::array())) {
      std::printf("needs a restart: %s\n", Str(l).c_str());
    }
    const json plugins = r.value("plugins", json::object());
    for (const char* what : {"started", "stopped", "restarted"}) {
      for (const auto& name : plugins.value(what, json::array())) std::printf("plugin %s: %s\n", what, Str(name).c_str());
    }
    if (r.value("applied", json::array()).empty() && r.value("needs_restart", json::array()).empty()) {
      std::puts("configuration unchanged");
    }
  });

  simple("metrics", "print every metric in the Prometheus text format", "metrics",
         [](const json& r) { std::fputs(r.value("text", std::string()).c_str(), stdout); });
  simple("plugins", "list plugins with state, workers, restarts, in-flight and handled counts", "plugins",
         HumanPlugins);
  auto* plugin = app.add_subcommand("plugin", "load, unload or restart one plugin in the running daemon");
  plugin->require_subcommand(1);
  static std::string plugin_name;
  auto plugin_cmd = [&](const char* name, const char* help, const char* command, const char* done) {
    auto* c = plugin->add_subcommand(name, help);
    c->add_option("name", plugin_name, "the plugin's name, as in its [[plugin]] table")->required();
    const bool running = std::string_view(name) != "unload";
    c->callback([&, command, done, running] {
      action = [&, command, done, running] {
        Ctl ctl(g);
        int rc = ctl.Call(command, {{"name", plugin_name}},
                          [done](const json&) { std::printf("%s: %s\n", plugin_name.c_str(), done); });
        return rc == kExitOk ? ctl.WaitState(plugin_name, running) : rc;
      };
    });
  };
  plugin_cmd("load", "re-read the configuration and plugins.d/, then start the plugin", "plugin.load", "loaded");
  plugin_cmd("unload", "stop the plugin's workers; their messages return to the subscription", "plugin.unload",
             "unloaded");
  plugin_cmd("restart", "stop and start the plugin's workers, clearing a failed state", "plugin.restart",
             "restarting");

  auto* dlq = app.add_subcommand("dlq", "inspect and repair a subscription's dead-letter queue");
  dlq->require_subcommand(1);
  struct DlqArgs {
    std::string topic, sub;
    std::vector<uint64_t> seqs;
    size_t limit = 100;
  };
  static DlqArgs da;
  auto dlq_cmd = [&](const char* name, const char* help, const char* command,
                     std::function<void(const json&)> human, bool with_seqs, bool with_limit) {
    auto* c = dlq->add_subcommand(name, help);
    c->add_option("topic", da.topic, "topic of the subscription")->required();
    c->add_option("subscription", da.sub, "subscription name")->required();
    if (with_seqs) c->add_option("--seq", da.seqs, "only these sequence numbers (repeatable)");
    if (with_limit) c->add_option("-n,--limit", da.limit, "at most this many entries")->capture_default_str();
    c->callback([&, command, human] {
      action = [&, command, human] {
        json args = {{"topic", da.topic}, {"subscription", da.sub}, {"limit", da.limit}};
        if (!da.seqs.empty()) args["seqs"] = da.seqs;
        return Ctl(g).Call(command, args, human);
      };
    });
  };
  dlq_cmd("list", "list dead letters with reason and last error", "dlq.list",
          [](const json& r) { HumanDeadLetters(r, false); }, false, true);
  dlq_cmd("peek", "dead letters with their envelopes", "dlq.peek",
          [](const json& r) { HumanDeadLetters(r, true); }, false, true);
  dlq_cmd("redrive", "move dead letters back to the subscription (all, or --seq)", "dlq.redrive",
          [](const json& r) { std::printf("redriven: %s\n", Str(r.value("redriven", json(0))).c_str()); }, true,
          false);
  dlq_cmd("parked", "keys parked by a dead letter (ordering = \"key\") with their backlog", "parked",
          HumanParked, false, false);
  dlq_cmd("purge", "delete the dead letters of the subscription", "dlq.purge",
          [](const json& r) { std::printf("purged: %s\n", Str(r.value("purged", json(0))).c_str()); }, false,
          false);

  auto broker = [&] {
    return sluice::ctl::BrokerTarget{Ctl::SocketPath(g, /*admin=*/false), g.timeout_ms, g.json_output};
  };
  // The pipeline commands resolve the broker socket when they run; a bad config reports itself there.
  auto needs_socket = [](const sluice::ctl::BrokerTarget& t) { return !t.socket.empty(); };

  static std::string arg_topic, arg_key, arg_type, arg_corr, arg_id, arg_email, arg_idem, arg_status, arg_sku;
  static std::vector<std::string> arg_items;
  static uint64_t arg_from = 0;
  static size_t arg_n = 10;
  static uint32_t arg_limit = 0, arg_minutes = 10;
  static int64_t arg_qty = 0;

  auto* peek = app.add_subcommand("peek", "show stored messages of a topic without consuming them");
  peek->add_option("topic", arg_topic, "the topic")->required();
  peek->add_option("-n,--count", arg_n, "at most this many messages")->capture_default_str();
  peek->add_option("--from", arg_from, "start at this sequence number (default: the oldest stored)");
  peek->callback([&] {
    action = [&] {
      return Ctl(g).Call("peek", {{"topic", arg_topic}, {"from_seq", arg_from}, {"limit", arg_n}}, HumanMessages);
    };
  });
  auto* trace = app.add_subcommand("trace", "the story of one correlation id (an order id): every stored "
                                            "message of it, across topics, in time order");
  trace->add_option("id", arg_id, "the correlation id")->required();
  trace->callback([&] {
    action = [&] {
      Ctl ctl(g);
      int rc = ctl.Call("trace", {{"correlation_id", arg_id}}, [](const json& r) {
        if (!r.value("messages", json::array()).empty()) HumanMessages(r);
      });
      if (rc != kExitOk || !ctl.result().value("messages", json::array()).empty()) return rc;
      // As grep does: nothing found is status 1, so a script can tell.
      std::fprintf(stderr, "sluicectl: no stored message has correlation id %s (acked messages stay only as long as "
                           "their topic's retention)\n", arg_id.c_str());
      return kExitFailed;
    };
  });
  auto* publish = app.add_subcommand("publish", "publish standard input as one message to TOPIC and wait for "
                                                "the broker's confirmation");
  publish->add_option("topic", arg_topic, "the topic")->required();
  publish->add_option("--key", arg_key, "the message key (ordering)");
  publish->add_option("--type", arg_type, "the payload type name");
  publish->add_option("--correlation-id", arg_corr, "the correlation id");
  publish->callback([&] { action = [&] { return Publish(g, arg_topic, arg_key, arg_type, arg_corr); }; });

  auto* order = app.add_subcommand("order", "place and look up orders (requests to the order plugin)");
  order->require_subcommand(1);
  auto* place = order->add_subcommand("place", "place an order; prints its id and PENDING at once");
  place->add_option("--email", arg_email, "the customer's address")->required();
  place->add_option("--item", arg_items, "SKU:QTY or SKU:QTY:PRICE_CENTS (repeatable)")->required();
  place->add_option("--idempotency-key", arg_idem, "a repeat with the same key returns the first order");
  place->callback([&] {
    action = [&] {
      auto t = broker();
      return needs_socket(t) ? sluice::ctl::PlaceOrder(t, arg_email, arg_items, arg_idem) : kExitUsage;
    };
  });
  auto* show = order->add_subcommand("show", "one order with its status, items and total");
  show->add_option("id", arg_id, "the order id")->required();
  show->callback([&] {
    action = [&] {
      auto t = broker();
      return needs_socket(t) ? sluice::ctl::ShowOrder(t, arg_id) : kExitUsage;
    };
  });
  auto* list = order->add_subcommand("list", "orders, optionally of one status");
  list->add_option("--status", arg_status, "pending, confirmed or cancelled");
  list->add_option("--limit", arg_limit, "at most this many (0: all)")->capture_default_str();
  list->callback([&] {
    action = [&] {
      auto t = broker();
      return needs_socket(t) ? sluice::ctl::ListOrders(t, arg_status, arg_limit) : kExitUsage;
    };
  });

  auto* stock = app.add_subcommand("stock", "show or set stock (requests to the inventory plugin)");
  stock->require_subcommand(1);
  auto* stock_show = stock->add_subcommand("show", "stock per SKU: available and reserved");
  stock_show->add_option("sku", arg_sku, "one SKU (default: all)");
  stock_show->callback([&] {
    action = [&] {
      auto t = broker();
      return needs_socket(t) ? sluice::ctl::ShowStock(t, arg_sku) : kExitUsage;
    };
  });
  auto* stock_set = stock->add_subcommand("set", "set the available quantity of a SKU");
  stock_set->add_option("sku", arg_sku, "the SKU")->required();
  stock_set->add_option("quantity", arg_qty, "units available")->required();
  stock_set->callback([&] {
    action = [&] {
      auto t = broker();
      return needs_socket(t) ? sluice::ctl::SetStock(t, arg_sku, arg_qty) : kExitUsage;
    };
  });

  auto* analytics = app.add_subcommand("analytics", "order counts, revenue and units per SKU, orders per minute "
                                                    "(a request to the analytics plugin)");
  analytics->add_option("--minutes", arg_minutes, "per-minute counts for this many minutes")->capture_default_str();
  analytics->callback([&] {
    action = [&] {
      auto t = broker();
      return needs_socket(t) ? sluice::ctl::Analytics(t, arg_minutes) : kExitUsage;
    };
  });

  static std::vector<std::string> bench_args;
  auto* bench = app.add_subcommand("bench", "measure the running daemon with sluice-bench (workloads raw, A, B, "
                                            "C, D; the arguments after -- go to sluice-bench, see its --help)");
  bench->add_option("args", bench_args, "arguments for sluice-bench, e.g. -- --workloads A,B --runs 3");
  bench->callback([&] { action = [&] { return Bench(g, bench_args); }; });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (dynamic_cast<const CLI::RequiredError*>(&e) != nullptr) {
      if (std::optional<std::string> missing = MissingCommand(app)) {
        std::fprintf(stderr, "sluicectl: %s\nRun 'sluicectl --help' for the commands and options.\n",
                     missing->c_str());
        return kExitUsage;
      }
    }
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  g.config_given = app.count("--config") > 0;
  return action ? action() : kExitUsage;
}

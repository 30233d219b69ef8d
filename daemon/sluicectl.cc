// SPDX-License-Identifier: MIT
//
// sluicectl: the admin CLI. Each subcommand is one admin call on the daemon's admin socket (found from
// --socket, or the config's daemon.admin_socket); output is a human table, or the raw JSON result with
// --json. Exit codes: 0 ok, 1 the operation failed, 2 usage error, 3 the daemon is unreachable.
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "broker/client/client.h"
#include "daemon/config.h"
#include "sluice_build_config.h"

namespace {

using nlohmann::json;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;

struct Globals {
  std::string config_path = std::string(SLUICE_SYSCONFDIR) + "/sluice.toml";
  std::string socket;
  bool json_output = false;
  int timeout_ms = 10000;
};

std::string FormatDuration(double seconds) {
  auto s = static_cast<uint64_t>(seconds);
  if (s < 60) return fmt::format("{:.1f}s", seconds);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  return fmt::format("{}d{:02}h", s / 86400, (s % 86400) / 3600);
}

// Prints rows as left-aligned columns under a header.
void PrintTable(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size() && i < width.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  auto line = [&](const std::vector<std::string>& r) {
    std::string out;
    for (size_t i = 0; i < r.size(); ++i) {
      out += r[i];
      if (i + 1 < r.size()) out += std::string(width[i] - r[i].size() + 2, ' ');
    }
    std::puts(out.c_str());
  };
  line(header);
  for (const auto& r : rows) line(r);
}

std::string Str(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_number_float()) return fmt::format("{:.1f}", j.get<double>());
  return j.dump();
}

class Ctl {
 public:
  explicit Ctl(Globals g) : g_(std::move(g)) {}

  // Resolves the admin socket: --socket wins, then the config file's daemon.admin_socket.
  int Connect() {
    std::string socket = g_.socket;
    if (socket.empty()) {
      auto config = sluice::LoadConfig(g_.config_path, /*allow_missing=*/true);
      if (!config.ok()) {
        std::fprintf(stderr, "sluicectl: %s\n", config.status().message().c_str());
        return kExitUsage;
      }
      socket = config->daemon.admin_socket.string();
    }
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
    return kExitOk;
  }

 private:
  Globals g_;
  std::unique_ptr<sluice::client::Connection> conn_;
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
    rows.push_back({Str(t["name"]), Str(t["messages"]), Str(t["bytes"]), Str(t["first_seq"]), Str(t["last_seq"]),
                    Str(t["publish_rate"]), std::to_string(t.value("subscriptions", json::array()).size())});
  }
  PrintTable({"TOPIC", "MESSAGES", "BYTES", "FIRST", "LAST", "PUB/S", "SUBS"}, rows);
}

void HumanSubs(const json& r) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : r.value("subscriptions", json::array())) {
    double eta = s.value("drain_eta_us", -1.0);
    rows.push_back({Str(s["topic"]), Str(s["name"]), Str(s["pending"]), Str(s["in_flight"]),
                    Str(s["dead_lettered"]), Str(s["parked_keys"]), Str(s["skipped"]), Str(s["consumers"]),
                    Str(s["ack_rate"]), eta < 0 ? "-" : FormatDuration(eta / 1e6)});
  }
  PrintTable({"TOPIC", "SUBSCRIPTION", "PENDING", "IN-FLIGHT", "DLQ", "PARKED", "SKIPPED", "CONSUMERS", "ACK/S",
              "DRAIN"},
             rows);
}

void HumanDeadLetters(const json& r) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : r.value("dead_letters", json::array())) {
    std::vector<std::string> row = {Str(d["seq"]), Str(d["delivery_count"]), Str(d["reason"]),
                                    Str(d["last_error"])};
    if (d.contains("envelope")) {
      const auto& e = d["envelope"];
      row.push_back(Str(e.value("key", json(""))));
      row.push_back(Str(e.value("type", json(""))));
      row.push_back(Str(e.value("correlation_id", json(""))));
    }
    rows.push_back(std::move(row));
  }
  if (!rows.empty() && rows[0].size() > 4) {
    PrintTable({"SEQ", "DELIVERIES", "REASON", "LAST ERROR", "KEY", "TYPE", "CORRELATION"}, rows);
  } else {
    PrintTable({"SEQ", "DELIVERIES", "REASON", "LAST ERROR"}, rows);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Globals g;
  CLI::App app{"sluicectl: administer a running sluiced over its admin socket (see sluicectl(1))", "sluicectl"};
  app.require_subcommand(1);
  app.add_option("-c,--config", g.config_path, "configuration file to find the admin socket in")
      ->capture_default_str();
  app.add_option("-s,--socket", g.socket, "admin socket path (overrides the configuration)");
  app.add_flag("-j,--json", g.json_output, "print the result as JSON");
  app.add_option("--timeout", g.timeout_ms, "milliseconds to wait for the daemon")->capture_default_str();

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
    if (r.value("applied", json::array()).empty() && r.value("needs_restart", json::array()).empty()) {
      std::puts("configuration unchanged");
    }
  });

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
  dlq_cmd("list", "list dead letters with reason and last error", "dlq.list", HumanDeadLetters, false, true);
  dlq_cmd("peek", "dead letters with their envelopes", "dlq.peek", HumanDeadLetters, false, true);
  dlq_cmd("redrive", "move dead letters back to the subscription (all, or --seq)", "dlq.redrive",
          [](const json& r) { std::printf("redriven: %s\n", Str(r.value("redriven", json(0))).c_str()); }, true,
          false);
  dlq_cmd("purge", "delete the dead letters of the subscription", "dlq.purge",
          [](const json& r) { std::printf("purged: %s\n", Str(r.value("purged", json(0))).c_str()); }, false,
          false);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  return action ? action() : kExitUsage;
}

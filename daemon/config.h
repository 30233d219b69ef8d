// SPDX-License-Identifier: MIT
//
// The daemon's configuration: a typed Config built from TOML (toml++) in one place, config.cc. No toml++
// type leaks out of it. Loading reads the main file, then every `*.toml` in the `conf.d/` folder beside
// it in name order; a drop-in's scalar replaces the main file's value, and its `[[topic]]`,
// `[[subscription]]` and `[[plugin]]` entries are appended. Last come the plugin drop-ins, every
// `*.toml` in the `plugins.d/` folder beside the main file, in name order, which may hold only
// `[[plugin]]` tables (one file per plugin is the intended use: dropping it in and running
// `sluicectl plugin load NAME` or sending SIGHUP adds the plugin). Every key has a default (see
// etc/sluice.toml and sluice.toml(5)). An unknown key, a wrong type or an out-of-range value is an
// error whose message names the file, the line and the key:
//   /etc/sluice/conf.d/10-x.toml:7: broker.durability: expected one of "sync", "batch", "none", got "fast"
// Keys of [[topic]] and [[subscription]] entries are named without an index ("topic.name"); the line
// tells the entries apart. A syntax error is "FILE:LINE:COL: syntax error: ...". All value errors of all
// files are reported at once, one per line of the Status message, in file and line order. A relative
// path is resolved against the folder of the file that sets it (made absolute), so a Config holds
// absolute paths only, whatever the daemon's working folder is later.
//
// Thread-compatible: a Config is a plain value; the daemon swaps a whole new one in on reload.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "broker/options.h"
#include "broker/status.h"
#include "daemon/units.h"
#include "sluice_build_config.h"

namespace sluice {

enum class LogLevel { kError = 3, kWarning = 4, kNotice = 5, kInfo = 6, kDebug = 7 };

struct DaemonConfig {
  std::filesystem::path data_dir = "/var/lib/sluice";
  std::filesystem::path broker_socket = "/run/sluice/broker.sock";
  std::filesystem::path admin_socket = "/run/sluice/admin.sock";
  uint32_t socket_mode = 0660;         // permission bits of both socket files
  std::string admin_group;             // empty: only root and the daemon's user may administer
  LogLevel log_level = LogLevel::kInfo;
  uint64_t max_frame_bytes = 4 << 20;  // "4MiB"; 1 KiB .. 1 GiB
  uint32_t max_connections = 1024;     // 1 .. 65536
  Duration shutdown_timeout = std::chrono::seconds(10);  // drain limit on SIGTERM
  // Where a [[plugin]] without `path` is looked for: <plugin_dir>/<name>.so.
  std::filesystem::path plugin_dir = SLUICE_PLUGINDIR;

  friend bool operator==(const DaemonConfig&, const DaemonConfig&) = default;
};

// [metrics]: the optional Prometheus HTTP listener (`sluicectl metrics` works without it).
struct MetricsConfig {
  std::string listen;  // "127.0.0.1:9464" or "[::1]:9464"; empty: no listener (the default)

  friend bool operator==(const MetricsConfig&, const MetricsConfig&) = default;
};

// One [[plugin]] table: a plugin the supervisor runs in `instances` worker processes.
struct PluginConfig {
  std::string name;                     // required; [a-z0-9_-]{1,64}, equal to the descriptor's name
  std::filesystem::path path;           // the loader fills in <daemon.plugin_dir>/<name>.so when unset
  uint32_t instances = 1;               // 1 .. 64 competing workers
  bool enabled = true;                  // false: listed, but not started
  Duration handler_timeout = std::chrono::seconds(30);  // one handle() call longer than this: killed
  Duration restart_backoff_initial = std::chrono::milliseconds(100);  // first restart delay, doubling
  Duration restart_backoff_max = std::chrono::seconds(30);            // ... up to this
  uint32_t max_restarts = 5;            // this many crashes within restart_window: the plugin fails
  Duration restart_window = std::chrono::seconds(60);
  uint32_t max_crashes = 3;             // per message: held by this many crashed workers, it is poison
  std::string config_json = "{}";       // the `config` table as a JSON object, handed to init()

  friend bool operator==(const PluginConfig&, const PluginConfig&) = default;
};

struct Config {
  // Where it was loaded from: the main file and the drop-ins in the order applied.
  std::vector<std::filesystem::path> sources;

  DaemonConfig daemon;
  BrokerConfig broker;
  MetricsConfig metrics;
  std::vector<TopicConfig> topics;
  std::vector<SubscriptionConfig> subscriptions;
  std::vector<PluginConfig> plugins;

  friend bool operator==(const Config&, const Config&) = default;
};

// Loads `path`, the drop-ins of the `conf.d/` folder beside it, then those of `plugins.d/` (hidden files
// and names not ending in ".toml" are skipped; anything but [[plugin]] in a plugins.d file is an error). A file that cannot be read fails at once: "FILE: cannot read: <strerror>", code
// kNotFound for a missing file. A missing main file is an error unless `allow_missing` (then the
// defaults apply, plus any drop-ins). Invalid contents are kInvalidArgument.
Result<Config> LoadConfig(const std::filesystem::path& path, bool allow_missing = false);
// Only the [daemon] section, for sluicectl: a mistake elsewhere (the very edit an operator is about
// to `sluicectl reload`) must not keep it from finding the daemon's sockets. Fails only when a socket
// path may not have loaded (an error in daemon.admin_socket, daemon.broker_socket or the [daemon]
// table itself, or a syntax error).
Result<DaemonConfig> LoadDaemonSection(const std::filesystem::path& path, bool allow_missing = false);

// Parses TOML text as if it were the file `name` (no drop-ins). For tests and the fuzzer.
Result<Config> ParseConfig(std::string_view toml_text, std::string_view name);

// The effective configuration as TOML, every key present, sizes and durations in their human form, with
// a "# from FILE" comment per source: what `sluiced --check-config` prints. ParseConfig of it gives back
// an equal Config (bar `sources`).
std::string FormatConfig(const Config& config);

// What differs between two configs, one line per key ("broker.durability: sync -> batch"), each marked
// whether it applies at once or needs a restart (daemon.data_dir, .broker_socket, .admin_socket,
// .socket_mode, broker.map_size, broker.durability). Entries are matched by name: a changed key is
// "topic[orders].max_bytes" or "subscription[orders/inventory].ack_wait"; an added or removed entry
// is "topic[orders]" with values "absent" and "present". `sources` is not compared.
struct ConfigChange {
  std::string key;
  std::string old_value;
  std::string new_value;
  bool needs_restart = false;
};
std::vector<ConfigChange> DiffConfig(const Config& before, const Config& after);

// Every key the loader accepts, in the order FormatConfig prints them: "daemon.data_dir", ...,
// "topic.name", "subscription.ack_wait", "plugin.config". Entries of [[topic]], [[subscription]] and
// [[plugin]] are named without an index, exactly as error messages name them. For tests that check docs and examples against the code.
std::vector<std::string> KnownConfigKeys();

// ParseSize, ParseDuration, FormatSize and FormatDuration are declared in daemon/units.h.

std::string_view LogLevelName(LogLevel level);

// metrics.listen as a socket address: "HOST:PORT" with an IPv4 literal, or "[IPv6]:PORT". Nothing
// when it is neither (the config loader refuses such a value; the metrics server binds what this gives).
std::optional<sockaddr_storage> ParseListenAddress(std::string_view listen);

}  // namespace sluice

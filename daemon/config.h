// SPDX-License-Identifier: MIT
//
// The daemon's configuration: a typed Config built from TOML (toml++) in one place, config.cc. No toml++
// type leaks out of it. Loading reads the main file, then every `*.toml` in the `conf.d/` folder beside
// it in name order; a drop-in's scalar replaces the main file's value, and its `[[topic]]`,
// `[[subscription]]` and `[[plugin]]` entries are appended. Every key has a default (see
// etc/sluice.toml and sluice.toml(5)). An unknown key, a wrong type or an out-of-range value is an
// error whose message names the file, the line and the key:
//   /etc/sluice/conf.d/10-x.toml:7: broker.durability: expected one of "sync", "batch", "none", got "fast"
//
// Thread-compatible: a Config is a plain value; the daemon swaps a whole new one in on reload.
#pragma once

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
};

struct Config {
  // Where it was loaded from: the main file and the drop-ins in the order applied.
  std::vector<std::filesystem::path> sources;

  DaemonConfig daemon;
  BrokerConfig broker;
  std::vector<TopicConfig> topics;
  std::vector<SubscriptionConfig> subscriptions;
};

// Loads `path` and the drop-ins of the `conf.d/` folder beside it. A missing main file is an error
// unless `allow_missing` (then the defaults apply, plus any drop-ins).
Result<Config> LoadConfig(const std::filesystem::path& path, bool allow_missing = false);

// Parses TOML text as if it were the file `name` (no drop-ins). For tests and the fuzzer.
Result<Config> ParseConfig(std::string_view toml_text, std::string_view name);

// The effective configuration as TOML, every key present: what `sluiced --check-config` prints.
std::string FormatConfig(const Config& config);

// What differs between two configs, one line per key ("broker.durability: sync -> batch"), each marked
// whether it applies at once or needs a restart.
struct ConfigChange {
  std::string key;
  std::string old_value;
  std::string new_value;
  bool needs_restart = false;
};
std::vector<ConfigChange> DiffConfig(const Config& before, const Config& after);

// "64MiB", "4 KiB", "1GB", "512" (bytes). Binary (KiB, MiB, GiB, TiB) and decimal (kB, MB, GB, TB)
// suffixes; case-sensitive as written here, plus "B". Rejects negatives, fractions, overflow.
Result<uint64_t> ParseSize(std::string_view text);
// "30s", "2m", "150ms", "1h", "1h30m", "0"; units us, ms, s, m, h, d. Rejects negatives and overflow.
Result<Duration> ParseDuration(std::string_view text);
// Inverses for printing: the shortest exact form ("64MiB", "90s" -> "1m30s").
std::string FormatSize(uint64_t bytes);
std::string FormatDuration(Duration d);

std::string_view LogLevelName(LogLevel level);

}  // namespace sluice

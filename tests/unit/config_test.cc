// SPDX-License-Identifier: MIT
//
// Tests of the config loader (daemon/config.h): every class of error names its file, line and key;
// drop-ins merge in name order; relative paths follow their file; FormatConfig round-trips; DiffConfig
// flags the keys that need a restart; the shipped example configs parse and document every key.
// Temporary files live in a fresh mkdtemp() folder per test. Single-threaded.
#include "daemon/config.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <nlohmann/json.hpp>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

#ifndef SLUICE_SOURCE_DIR
#error "SLUICE_SOURCE_DIR must name the source tree (tests/unit/meson.build defines it)"
#endif

namespace sluice {
namespace {

namespace fs = std::filesystem;
using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

Config Parse(std::string_view text, std::string_view name = "sluice.toml") {
  Result<Config> r = ParseConfig(text, name);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : Config();
}

// The error message of a config that must fail.
std::string Error(std::string_view text, std::string_view name = "sluice.toml") {
  Result<Config> r = ParseConfig(text, name);
  EXPECT_FALSE(r.ok()) << "accepted:\n" << text;
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  return r.status().message();
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "sluice-config-test-XXXXXX").string();
    const char* made = mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

  fs::path Write(const fs::path& relative, std::string_view text) const {
    const fs::path file = path_ / relative;
    fs::create_directories(file.parent_path());
    std::ofstream(file) << text;
    return file;
  }

 private:
  fs::path path_;
};

std::string ReadSourceFile(std::string_view relative) {
  std::ifstream in(fs::path(SLUICE_SOURCE_DIR) / relative);
  EXPECT_TRUE(in.good()) << relative;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// ---- Values ----

TEST(ConfigTest, EmptyFileGivesTheDefaults) {
  Config expected;
  expected.sources = {"sluice.toml"};
  EXPECT_EQ(Parse(""), expected);
  EXPECT_EQ(Parse("# nothing but a comment\n"), expected);
}

TEST(ConfigTest, ReadsEveryKey) {
  const Config c = Parse(R"(
[daemon]
data_dir = "/srv/sluice"
broker_socket = "/tmp/b.sock"
admin_socket = "/tmp/a.sock"
socket_mode = 0o600
admin_group = "sluice-admin"
log_level = "debug"
max_frame_bytes = "8MiB"
max_connections = 10
shutdown_timeout = "1m30s"

[broker]
durability = "batch"
batch_interval = "50ms"
map_size = "1GiB"
max_map_size = "2GiB"
auto_create_topics = false
dedupe_window = "10m"
max_message_bytes = 65536
default_max_deliveries = 9
default_ack_wait = "1h"

[[topic]]
name = "orders"
max_messages = 1000
max_bytes = "10MB"
on_full = "drop_oldest"
retention_max_age = "7d"
retention_max_bytes = "1GiB"

[[subscription]]
topic = "orders"
name = "inventory"
start = "seq:42"
ordering = "key"
max_deliveries = 3
ack_wait = "100ms"
backoff_initial = "250ms"
backoff_max = "1m"
backoff_multiplier = 1.5
max_backlog = 500
on_full = "skip"
)");
  EXPECT_EQ(c.daemon.data_dir, "/srv/sluice");
  EXPECT_EQ(c.daemon.broker_socket, "/tmp/b.sock");
  EXPECT_EQ(c.daemon.admin_socket, "/tmp/a.sock");
  EXPECT_EQ(c.daemon.socket_mode, 0600u);
  EXPECT_EQ(c.daemon.admin_group, "sluice-admin");
  EXPECT_EQ(c.daemon.log_level, LogLevel::kDebug);
  EXPECT_EQ(c.daemon.max_frame_bytes, 8u << 20);
  EXPECT_EQ(c.daemon.max_connections, 10u);
  EXPECT_EQ(c.daemon.shutdown_timeout, seconds(90));
  EXPECT_EQ(c.broker.durability, Durability::kBatch);
  EXPECT_EQ(c.broker.batch_interval, milliseconds(50));
  EXPECT_EQ(c.broker.map_size, 1ull << 30);
  EXPECT_EQ(c.broker.max_map_size, 2ull << 30);
  EXPECT_FALSE(c.broker.auto_create_topics);
  EXPECT_EQ(c.broker.dedupe_window, minutes(10));
  EXPECT_EQ(c.broker.max_message_bytes, 65536u);
  EXPECT_EQ(c.broker.default_max_deliveries, 9u);
  EXPECT_EQ(c.broker.default_ack_wait, hours(1));
  ASSERT_EQ(c.topics.size(), 1u);
  EXPECT_EQ(c.topics[0].name, "orders");
  EXPECT_EQ(c.topics[0].max_messages, 1000u);
  EXPECT_EQ(c.topics[0].max_bytes, 10000000u);
  EXPECT_EQ(c.topics[0].on_full, TopicFullPolicy::kDropOldest);
  EXPECT_EQ(c.topics[0].retention_max_age, hours(7 * 24));
  EXPECT_EQ(c.topics[0].retention_max_bytes, 1ull << 30);
  ASSERT_EQ(c.subscriptions.size(), 1u);
  const SubscriptionConfig& s = c.subscriptions[0];
  EXPECT_EQ(s.topic, "orders");
  EXPECT_EQ(s.name, "inventory");
  EXPECT_EQ(s.start, StartPointKind::kSequence);
  EXPECT_EQ(s.start_seq, 42u);
  EXPECT_EQ(s.ordering, OrderingMode::kKey);
  EXPECT_EQ(s.max_deliveries, 3u);
  EXPECT_EQ(s.ack_wait, milliseconds(100));
  EXPECT_EQ(s.backoff.initial, milliseconds(250));
  EXPECT_EQ(s.backoff.max, minutes(1));
  EXPECT_EQ(s.backoff.multiplier, 1.5);
  EXPECT_EQ(s.max_backlog, 500u);
  EXPECT_EQ(s.on_full, BacklogFullPolicy::kSkip);
}

TEST(ConfigTest, ReadsEveryPluginKey) {
  const Config c = Parse(R"(
[daemon]
plugin_dir = "/opt/sluice/plugins"
[[subscription]]
topic = "orders"
name = "mail"
max_crashes = 7
[[plugin]]
name = "order"
path = "lib/order-2.so"
instances = 4
enabled = false
handler_timeout = "2s"
restart_backoff_initial = "250ms"
restart_backoff_max = "1m"
max_restarts = 9
restart_window = "5m"
max_crashes = 2
config = { relay = "smtp://localhost:25", retries = 3, ratio = 0.5, tls = true, to = ["a", "b"], nested = { x = 1 } }
[[plugin]]
name = "inventory"
)",
                         "/etc/sluice/sluice.toml");
  EXPECT_EQ(c.daemon.plugin_dir, "/opt/sluice/plugins");
  ASSERT_EQ(c.subscriptions.size(), 1u);
  EXPECT_EQ(c.subscriptions[0].max_crashes, 7u);
  ASSERT_EQ(c.plugins.size(), 2u);
  const PluginConfig& p = c.plugins[0];
  EXPECT_EQ(p.name, "order");
  EXPECT_EQ(p.path, "/etc/sluice/lib/order-2.so");  // relative to the file
  EXPECT_EQ(p.instances, 4u);
  EXPECT_FALSE(p.enabled);
  EXPECT_EQ(p.handler_timeout, seconds(2));
  EXPECT_EQ(p.restart_backoff_initial, milliseconds(250));
  EXPECT_EQ(p.restart_backoff_max, minutes(1));
  EXPECT_EQ(p.max_restarts, 9u);
  EXPECT_EQ(p.restart_window, minutes(5));
  EXPECT_EQ(p.max_crashes, 2u);
  EXPECT_EQ(nlohmann::json::parse(p.config_json),
            nlohmann::json::parse(R"({"relay":"smtp://localhost:25","retries":3,"ratio":0.5,"tls":true,)"
                                  R"("to":["a","b"],"nested":{"x":1}})"));
  // Defaults, and the path from daemon.plugin_dir.
  const PluginConfig& q = c.plugins[1];
  EXPECT_EQ(q.path, "/opt/sluice/plugins/inventory.so");
  EXPECT_EQ(q.instances, 1u);
  EXPECT_TRUE(q.enabled);
  EXPECT_EQ(q.handler_timeout, seconds(30));
  EXPECT_EQ(q.restart_backoff_initial, milliseconds(100));
  EXPECT_EQ(q.restart_backoff_max, seconds(30));
  EXPECT_EQ(q.max_restarts, 5u);
  EXPECT_EQ(q.restart_window, seconds(60));
  EXPECT_EQ(q.max_crashes, 3u);
  EXPECT_EQ(q.config_json, "{}");
  // Without plugin_dir the build's plugin folder is the default.
  EXPECT_EQ(Parse("[[plugin]]\nname = \"x\"\n").plugins[0].path, fs::path(SLUICE_PLUGINDIR) / "x.so");
}

TEST(ConfigErrorTest, PluginEntries) {
  EXPECT_EQ(Error("[[plugin]]\nname = \"Order\"\n"),
            "sluice.toml:2: plugin.name: \"Order\" is not a valid plugin name (1 to 64 characters of a-z 0-9 _ -)");
  EXPECT_EQ(Error("[[plugin]]\npath = \"/x.so\"\n"), "sluice.toml:1: plugin.name: missing (every [[plugin]] needs one)");
  EXPECT_EQ(Error("[[plugin]]\nname = \"a\"\ninstances = 65\n"),
            "sluice.toml:3: plugin.instances: 65 is out of range (1..64)");
  EXPECT_EQ(Error("[[plugin]]\nname = \"a\"\nconfig = 5\n"),
            "sluice.toml:3: plugin.config: expected a table such as { relay = \"smtp://localhost\" }, got an integer");
  EXPECT_EQ(Error("[[plugin]]\nname = \"a\"\nconfig = { x = nan }\n"),
            "sluice.toml:3: plugin.config: inf and nan have no JSON form");
  EXPECT_EQ(Error("[[plugin]]\nname = \"a\"\nrestart_backoff_initial = \"1m\"\nrestart_backoff_max = \"1s\"\n"),
            "sluice.toml:4: plugin.restart_backoff_max: 1s is shorter than restart_backoff_initial (1m)");
  EXPECT_EQ(Error("[[plugin]]\nname = \"a\"\n[[plugin]]\nname = \"a\"\n"),
            "sluice.toml:3: plugin.name: duplicate plugin \"a\" (first defined at sluice.toml:1)");
  EXPECT_EQ(Error("[[subscription]]\ntopic = \"t\"\nname = \"s\"\nmax_crashes = 0\n"),
            "sluice.toml:4: subscription.max_crashes: 0 is out of range (1..1000)");
}

// sluicectl finds the daemon through a file the operator may be editing: a mistake outside [daemon]
// must not keep `sluicectl reload` from reaching the daemon (which then refuses the file itself).
TEST(LoadConfigTest, TheDaemonSectionLoadsDespiteMistakesElsewhere) {
  TempDir dir;
  const fs::path main = dir.Write("sluice.toml",
                                  "[daemon]\nadmin_socket = \"a.sock\"\nlog_levle = \"debug\"\n"
                                  "[broker]\ndurability = \"fast\"\n");
  dir.Write("conf.d/x.toml", "[[plugin]]\nname = \"Bad Name\"\n");
  ASSERT_FALSE(LoadConfig(main).ok());
  Result<DaemonConfig> d = LoadDaemonSection(main);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->admin_socket, dir.path() / "a.sock");
  // A bad socket path is the one mistake that counts.
  dir.Write("sluice.toml", "[daemon]\nadmin_socket = 5\n");
  d = LoadDaemonSection(main);
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(d.status().message(), HasSubstr("daemon.admin_socket"));
  // A syntax error may hide any key: no guess then.
  dir.Write("sluice.toml", "[daemon]\nadmin_socket = \"a.sock\"\n[broker\n");
  EXPECT_FALSE(LoadDaemonSection(main).ok());
}

TEST(LoadConfigTest, PluginDropInsComeLastAndHoldOnlyPlugins) {
  TempDir dir;
  const fs::path main = dir.Write("sluice.toml", "[[plugin]]\nname = \"order\"\n");
  const fs::path conf = dir.Write("conf.d/10-a.toml", "[daemon]\nplugin_dir = \"/p\"\n");
  const fs::path b = dir.Write("plugins.d/20-notification.toml", "[[plugin]]\nname = \"notification\"\n");
  const fs::path a = dir.Write("plugins.d/10-analytics.toml",
                               "[[plugin]]\nname = \"analytics\"\nconfig = { window = \"1h\" }\n");
  dir.Write("plugins.d/analytics.toml.disabled", "not toml");
  Result<Config> r = LoadConfig(main);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_THAT(r->sources, ElementsAre(main, conf, a, b));
  ASSERT_EQ(r->plugins.size(), 3u);
  EXPECT_EQ(r->plugins[0].name, "order");
  EXPECT_EQ(r->plugins[1].name, "analytics");
  EXPECT_EQ(r->plugins[1].path, "/p/analytics.so");
  EXPECT_EQ(r->plugins[1].config_json, "{\"window\":\"1h\"}");
  EXPECT_EQ(r->plugins[2].name, "notification");

  dir.Write("plugins.d/30-bad.toml", "[[plugin]]\nname = \"x\"\n[broker]\ndurability = \"none\"\n");
  r = LoadConfig(main);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), (dir.path() / "plugins.d/30-bad.toml").string() +
                                      ":3: broker: a plugins.d file holds only [[plugin]] tables (put this in "
                                      "conf.d/)");
  dir.Write("plugins.d/30-bad.toml", "[[plugin]]\nname = \"order\"\n");
  r = LoadConfig(main);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), (dir.path() / "plugins.d/30-bad.toml").string() +
                                      ":1: plugin.name: duplicate plugin \"order\" (first defined at " +
                                      main.string() + ":1)");
}

TEST(ConfigTest, ReadsEveryStartPoint) {
  auto start = [](std::string_view value) {
    Config c = Parse(fmt::format("[[subscription]]\ntopic = \"t\"\nname = \"s\"\nstart = {}\n", value));
    return c.subscriptions.empty() ? SubscriptionConfig() : c.subscriptions[0];
  };
  EXPECT_EQ(start("\"latest\"").start, StartPointKind::kLatest);
  EXPECT_EQ(start("\"earliest\"").start, StartPointKind::kEarliest);
  EXPECT_EQ(start("\"seq:18446744073709551615\"").start_seq, 18446744073709551615u);
  SubscriptionConfig at_time = start("\"2026-01-02T03:04:05Z\"");
  EXPECT_EQ(at_time.start, StartPointKind::kTime);
  EXPECT_EQ(at_time.start_time_us, 1767323045LL * 1000000);
  // A TOML date-time literal means the same instant.
  EXPECT_EQ(start("2026-01-02T05:04:05.5+02:00").start_time_us, 1767323045LL * 1000000 + 500000);

  const std::string head = "[[subscription]]\ntopic = \"t\"\nname = \"s\"\n";
  EXPECT_THAT(Error(head + "start = 2026-01-02T03:04:05\n"),
              AllOf(StartsWith("sluice.toml:4: subscription.start: "), HasSubstr("needs a zone")));
  EXPECT_THAT(Error(head + "start = \"seq:\"\n"), HasSubstr("expected a sequence number"));
  EXPECT_THAT(Error(head + "start = \"seq:18446744073709551616\"\n"), HasSubstr("sequence number too large"));
  EXPECT_THAT(Error(head + "start = \"2026-02-30T00:00:00Z\"\n"), HasSubstr("no such date"));
  EXPECT_THAT(Error(head + "start = \"first\"\n"),
              HasSubstr("expected \"latest\", \"earliest\", \"seq:N\" or an RFC 3339 time, got \"first\""));
  EXPECT_THAT(Error(head + "start = 5\n"), HasSubstr("got an integer"));
}

TEST(ConfigTest, SizesMayBePlainIntegers) {
  EXPECT_EQ(Parse("[broker]\nmap_size = 2097152\n").broker.map_size, 2u << 20);
  EXPECT_EQ(Parse("[broker]\nmap_size = \"2 MiB\"\n").broker.map_size, 2u << 20);
  EXPECT_EQ(Error("[broker]\nmap_size = -1\n"), "sluice.toml:2: broker.map_size: -1: negative size");
  EXPECT_EQ(
      Error("[broker]\nmap_size = 1.5\n"),
      "sluice.toml:2: broker.map_size: expected a size such as \"64MiB\" or a number of bytes, got a float");
}

TEST(ConfigTest, MultiplierTakesIntegersAndRefusesNan) {
  const std::string head = "[[subscription]]\ntopic = \"t\"\nname = \"s\"\n";
  EXPECT_EQ(Parse(head + "backoff_multiplier = 3\n").subscriptions.at(0).backoff.multiplier, 3.0);
  EXPECT_THAT(Error(head + "backoff_multiplier = nan\n"), HasSubstr("nan is out of range (1.0..100.0)"));
  EXPECT_THAT(Error(head + "backoff_multiplier = 0.5\n"),
              HasSubstr("sluice.toml:4: subscription.backoff_multiplier: 0.5 is out of range (1.0..100.0)"));
}

// ---- Errors: each names file, line and key ----

TEST(ConfigErrorTest, UnknownKey) {
  EXPECT_EQ(Error("# comment\n[daemon]\ncolour = \"blue\"\n"), "sluice.toml:3: daemon.colour: unknown key");
  EXPECT_EQ(Error("[daemon]\nlog_levle = \"info\"\n"),
            "sluice.toml:2: daemon.log_levle: unknown key (did you mean \"log_level\"?)");
  EXPECT_EQ(Error("[[topic]]\nname = \"t\"\nretention = \"1d\"\n"),
            "sluice.toml:3: topic.retention: unknown key");
  EXPECT_EQ(Error("data_dir = \"/x\"\n"), "sluice.toml:1: data_dir: unknown key");
  EXPECT_EQ(Error("\n[telemetry]\nport = 9100\n"), "sluice.toml:2: telemetry: unknown section");
}

TEST(ConfigErrorTest, WrongType) {
  EXPECT_EQ(Error("[daemon]\n\n\nmax_connections = \"many\"\n"),
            "sluice.toml:4: daemon.max_connections: expected an integer, got a string");
  EXPECT_EQ(Error("[daemon]\ndata_dir = 5\n"),
            "sluice.toml:2: daemon.data_dir: expected a path string, got an integer");
  EXPECT_EQ(Error("[broker]\nauto_create_topics = \"yes\"\n"),
            "sluice.toml:2: broker.auto_create_topics: expected true or false, got a string");
  EXPECT_EQ(Error("daemon = 5\n"), "sluice.toml:1: daemon: expected a table ([daemon]), got an integer");
  EXPECT_EQ(Error("[topic]\nname = \"t\"\n"),
            "sluice.toml:1: topic: expected an array of tables ([[topic]]), got a table");
  EXPECT_EQ(Error("topic = [1]\n"), "sluice.toml:1: topic: expected a table ([[topic]]), got an integer");
}

// metrics.listen is checked when the file is loaded (so --check-config and reload refuse it), not
// first when the listener starts.
TEST(ConfigErrorTest, MetricsListenMustBeAnIpAddressAndPort) {
  for (const char* bad : {"localhost", "localhost:9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999",
                          "127.0.0.1:+80", "127.0.0.1:80x", "[::1]9464", "::1:9464", "2001:db8::1:8080", ":9464"}) {
    EXPECT_EQ(Error(fmt::format("[metrics]\nlisten = \"{}\"\n", bad)),
              fmt::format("sluice.toml:2: metrics.listen: \"{}\" is not HOST:PORT with an IP address and a port "
                          "of 0..65535 (\"127.0.0.1:9464\", \"[::1]:9464\"; no host names)",
                          bad))
        << bad;
  }
  for (const char* good : {"127.0.0.1:9464", "0.0.0.0:0", "[::1]:9464", "[::]:65535", ""}) {
    auto c = ParseConfig(fmt::format("[metrics]\nlisten = \"{}\"\n", good), "sluice.toml");
    ASSERT_TRUE(c.ok()) << good << ": " << c.status().ToString();
    EXPECT_EQ(c->metrics.listen, good);
  }
  auto v6 = ParseListenAddress("[::1]:9464");
  ASSERT_TRUE(v6.has_value());
  EXPECT_EQ(v6->ss_family, AF_INET6);
  EXPECT_EQ(ntohs(reinterpret_cast<const sockaddr_in6*>(&*v6)->sin6_port), 9464);
  auto v4 = ParseListenAddress("127.0.0.1:80");
  ASSERT_TRUE(v4.has_value());
  EXPECT_EQ(v4->ss_family, AF_INET);
  EXPECT_EQ(ntohs(reinterpret_cast<const sockaddr_in*>(&*v4)->sin_port), 80);
}

TEST(ConfigErrorTest, OutOfRange) {
  EXPECT_EQ(Error("[daemon]\n\n\n\nmax_connections = 0\n"),
            "sluice.toml:5: daemon.max_connections: 0 is out of range (1..65536)");
  EXPECT_EQ(Error("[daemon]\nsocket_mode = 0o1000\n"),
            "sluice.toml:2: daemon.socket_mode: 512 (0o1000) is out of range (0o0..0o777; write octal as 0o660)");
  // A mode written the shell's way is decimal in TOML: the error shows the number as written.
  EXPECT_EQ(Error("[daemon]\nsocket_mode = 999\n"),
            "sluice.toml:2: daemon.socket_mode: 999 (0o1747) is out of range (0o0..0o777; write octal as 0o660)");
  EXPECT_EQ(Error("[daemon]\nmax_frame_bytes = \"2GiB\"\n"),
            "sluice.toml:2: daemon.max_frame_bytes: 2GiB is out of range (1KiB..1GiB)");
  EXPECT_EQ(Error("[broker]\nmap_size = \"512KiB\"\n"),
            "sluice.toml:2: broker.map_size: 512KiB is out of range (>= 1MiB)");
  EXPECT_EQ(Error("[broker]\nbatch_interval = \"0\"\n"),
            "sluice.toml:2: broker.batch_interval: 0 is out of range (1ms..10s)");
  EXPECT_EQ(Error("[[subscription]]\ntopic = \"t\"\nname = \"s\"\nack_wait = \"2d\"\n"),
            "sluice.toml:4: subscription.ack_wait: 2d is out of range (100ms..1d)");
  EXPECT_EQ(Error("[[topic]]\nname = \"t\"\nmax_messages = -1\n"),
            "sluice.toml:3: topic.max_messages: -1 is out of range (>= 0)");
}

TEST(ConfigErrorTest, BadEnum) {
  EXPECT_EQ(Error("[broker]\ndurability = \"fast\"\n"),
            "sluice.toml:2: broker.durability: expected one of \"sync\", \"batch\", \"none\", got \"fast\"");
  EXPECT_EQ(Error("[daemon]\nlog_level = 7\n"),
            "sluice.toml:2: daemon.log_level: expected one of \"error\", \"warning\", \"notice\", \"info\", "
            "\"debug\", got an integer");
}

TEST(ConfigErrorTest, BadSize) {
  EXPECT_EQ(
      Error("[broker]\nmap_size = \"12XB\"\n"),
      "sluice.toml:2: broker.map_size: \"12XB\": unknown size unit \"XB\" (use B, KiB, MiB, GiB, TiB, kB, "
      "MB, GB, TB)");
  EXPECT_THAT(Error("[broker]\nmax_map_size = \"1.5GiB\"\n"),
              StartsWith("sluice.toml:2: broker.max_map_size: \"1.5GiB\": fractions are not allowed"));
}

TEST(ConfigErrorTest, BadDuration) {
  EXPECT_EQ(Error("[daemon]\nshutdown_timeout = \"-5s\"\n"),
            "sluice.toml:2: daemon.shutdown_timeout: \"-5s\": negative duration");
  EXPECT_THAT(
      Error("[daemon]\nshutdown_timeout = 30\n"),
      AllOf(StartsWith("sluice.toml:2: daemon.shutdown_timeout: expected a duration string, got an integer"),
            HasSubstr("\"30s\"")));
  EXPECT_THAT(
      Error("[broker]\ndedupe_window = \"2 minutes\"\n"),
      StartsWith("sluice.toml:2: broker.dedupe_window: \"2 minutes\": unknown duration unit \"minutes\""));
}

TEST(ConfigErrorTest, BadNames) {
  EXPECT_EQ(
      Error("[[topic]]\nname = \"a b\"\n"),
      "sluice.toml:2: topic.name: \"a b\" is not a valid name (1 to 200 characters of A-Z a-z 0-9 . _ -)");
  EXPECT_THAT(Error("[[topic]]\nname = \"" + std::string(201, 'x') + "\"\n"),
              HasSubstr("is not a valid name"));
  EXPECT_EQ(Parse("[[topic]]\nname = \"" + std::string(200, 'x') + "\"\n").topics.size(), 1u);
  EXPECT_EQ(Error("[[subscription]]\ntopic = \"t\"\nname = \"\"\n"),
            "sluice.toml:3: subscription.name: \"\" is not a valid name (1 to 200 characters of A-Z a-z 0-9 "
            ". _ -)");
}

TEST(ConfigErrorTest, MissingRequiredKey) {
  EXPECT_EQ(Error("\n[[topic]]\nmax_messages = 5\n"),
            "sluice.toml:2: topic.name: missing (every [[topic]] needs one)");
  EXPECT_EQ(Error("[[subscription]]\ntopic = \"t\"\n"),
            "sluice.toml:1: subscription.name: missing (every [[subscription]] needs one)");
}

TEST(ConfigErrorTest, SyntaxError) {
  const std::string message = Error("[daemon]\nlog_level = \"info\nx = 1\n", "/etc/sluice/sluice.toml");
  EXPECT_THAT(message, StartsWith("/etc/sluice/sluice.toml:2:"));
  EXPECT_THAT(message, HasSubstr(": syntax error: "));
  EXPECT_THAT(Error("[daemon]\n[daemon]\n"), StartsWith("sluice.toml:2:"));
  EXPECT_THAT(Error("a = 1\na = 2\n"), AllOf(StartsWith("sluice.toml:2:"), HasSubstr("syntax error")));
}

TEST(ConfigErrorTest, DuplicateTopicNamesBothPlaces) {
  EXPECT_EQ(Error("[[topic]]\nname = \"orders\"\n\n[[topic]]\nname = \"orders\"\n", "a.toml"),
            "a.toml:4: topic.name: duplicate topic \"orders\" (first defined at a.toml:1)");
  EXPECT_EQ(
      Error("[[subscription]]\ntopic = \"o\"\nname = \"s\"\n[[subscription]]\ntopic = \"o\"\nname = \"s\"\n"),
      "sluice.toml:4: subscription.name: duplicate subscription \"s\" of topic \"o\" (first defined at "
      "sluice.toml:1)");
  // The same name on another topic is a different subscription.
  EXPECT_EQ(
      Parse("[[subscription]]\ntopic = \"o\"\nname = \"s\"\n[[subscription]]\ntopic = \"p\"\nname = \"s\"\n")
          .subscriptions.size(),
      2u);
}

TEST(ConfigErrorTest, ContradictingKeysAreReportedWhereTheLaterOneIsSet) {
  EXPECT_EQ(Error("[broker]\nmax_map_size = \"1GiB\"\nmap_size = \"2GiB\"\n"),
            "sluice.toml:3: broker.map_size: 2GiB is larger than broker.max_map_size (1GiB)");
  EXPECT_EQ(Error("[broker]\nmap_size = \"2GiB\"\nmax_map_size = \"1GiB\"\n"),
            "sluice.toml:3: broker.max_map_size: 1GiB is smaller than broker.map_size (2GiB)");
  // Only one is set: the error is at that one.
  EXPECT_EQ(Error("[broker]\nmax_map_size = \"32MiB\"\n"),
            "sluice.toml:2: broker.max_map_size: 32MiB is smaller than broker.map_size (64MiB)");
  EXPECT_THAT(
      Error("[daemon]\nmax_frame_bytes = \"1MiB\"\n"),
      StartsWith(
          "sluice.toml:2: daemon.max_frame_bytes: 1MiB must be larger than broker.max_message_bytes (1MiB)"));
  EXPECT_THAT(Error("[broker]\nmax_message_bytes = \"8MiB\"\n"),
              StartsWith("sluice.toml:2: broker.max_message_bytes: 8MiB must be smaller than "
                         "daemon.max_frame_bytes (4MiB)"));
  EXPECT_EQ(
      Error(
          "[[subscription]]\ntopic = \"t\"\nname = \"s\"\nbackoff_max = \"1s\"\nbackoff_initial = \"2s\"\n"),
      "sluice.toml:5: subscription.backoff_initial: 2s is longer than backoff_max (1s)");
}

TEST(ConfigErrorTest, ReportsEveryErrorInLineOrder) {
  const std::string message = Error("[daemon]\nzeta = 1\nalpha = 2\nmax_connections = 0\n");
  EXPECT_EQ(message,
            "sluice.toml:2: daemon.zeta: unknown key\n"
            "sluice.toml:3: daemon.alpha: unknown key\n"
            "sluice.toml:4: daemon.max_connections: 0 is out of range (1..65536)");
  std::string many = "[daemon]\n";
  for (int i = 0; i < 30; ++i) many += fmt::format("k{} = 1\n", i);
  EXPECT_THAT(Error(many), HasSubstr("\n(10 more errors not shown)"));
}

// ---- Files ----

TEST(LoadConfigTest, MissingFile) {
  TempDir dir;
  const fs::path file = dir.path() / "sluice.toml";
  Result<Config> r = LoadConfig(file);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(r.status().message(), file.string() + ": cannot read: No such file or directory");

  Result<Config> defaults = LoadConfig(file, /*allow_missing=*/true);
  ASSERT_TRUE(defaults.ok()) << defaults.status().ToString();
  EXPECT_EQ(*defaults, Config());

  // allow_missing forgives absence only, not an unreadable file.
  fs::create_directory(file);
  Result<Config> directory = LoadConfig(file, /*allow_missing=*/true);
  ASSERT_FALSE(directory.ok());
  EXPECT_THAT(directory.status().message(), StartsWith(file.string() + ": cannot read: "));
}

TEST(LoadConfigTest, DropInsApplyInNameOrder) {
  TempDir dir;
  const fs::path main = dir.Write("sluice.toml", R"([daemon]
log_level = "warning"
max_connections = 7
[broker]
durability = "batch"
[[topic]]
name = "orders"
)");
  // Written out of order on purpose: the directory order must not matter.
  const fs::path b =
      dir.Write("conf.d/20-b.toml", "[daemon]\nlog_level = \"debug\"\n[[topic]]\nname = \"payments\"\n");
  const fs::path a = dir.Write("conf.d/10-a.toml",
                               "[daemon]\nlog_level = \"error\"\nmax_connections = 9\n"
                               "[[subscription]]\ntopic = \"orders\"\nname = \"mail\"\n");
  dir.Write("conf.d/30-c.toml.disabled", "this is not toml");
  dir.Write("conf.d/.05-hidden.toml", "this is not toml either");
  fs::create_directory(dir.path() / "conf.d" / "40-dir.toml");

  Result<Config> r = LoadConfig(main);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_THAT(r->sources, ElementsAre(main, a, b));
  EXPECT_EQ(r->daemon.log_level, LogLevel::kDebug);  // 20-b wins over 10-a wins over the main file
  EXPECT_EQ(r->daemon.max_connections, 9u);
  EXPECT_EQ(r->broker.durability, Durability::kBatch);  // untouched by the drop-ins
  ASSERT_EQ(r->topics.size(), 2u);
  EXPECT_EQ(r->topics[0].name, "orders");
  EXPECT_EQ(r->topics[1].name, "payments");
  ASSERT_EQ(r->subscriptions.size(), 1u);
  EXPECT_EQ(r->subscriptions[0].name, "mail");
}

TEST(LoadConfigTest, ErrorsPointIntoTheDropIn) {
  TempDir dir;
  const fs::path main = dir.Write("sluice.toml", "[[topic]]\nname = \"orders\"\n");
  const fs::path x = dir.Write("conf.d/10-x.toml", "# a drop-in\n\n\n\n\n[broker]\ndurability = \"fast\"\n");
  Result<Config> r = LoadConfig(main);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(
      r.status().message(),
      x.string() + ":7: broker.durability: expected one of \"sync\", \"batch\", \"none\", got \"fast\"");

  dir.Write("conf.d/10-x.toml", "\n[[topic]]\nname = \"orders\"\n");
  r = LoadConfig(main);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(
      r.status().message(),
      x.string() + ":2: topic.name: duplicate topic \"orders\" (first defined at " + main.string() + ":1)");

  // A drop-in can break a constraint with a value from the main file; the error is at the drop-in.
  dir.Write("sluice.toml", "[broker]\nmap_size = \"1GiB\"\n");
  dir.Write("conf.d/10-x.toml", "[broker]\nmax_map_size = \"512MiB\"\n");
  r = LoadConfig(main);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            x.string() + ":2: broker.max_map_size: 512MiB is smaller than broker.map_size (1GiB)");

  dir.Write("conf.d/10-x.toml", "[broker\n");
  r = LoadConfig(main);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), StartsWith(x.string() + ":1:"));
  EXPECT_THAT(r.status().message(), HasSubstr("syntax error"));
}

TEST(LoadConfigTest, DropInsApplyWithoutAMainFileWhenAllowed) {
  TempDir dir;
  dir.Write("conf.d/10-a.toml", "[daemon]\nmax_connections = 3\n");
  Result<Config> r = LoadConfig(dir.path() / "sluice.toml", /*allow_missing=*/true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->daemon.max_connections, 3u);
  EXPECT_EQ(r->sources.size(), 1u);
}

TEST(LoadConfigTest, RelativePathsFollowTheirFile) {
  TempDir dir;
  const fs::path main = dir.Write("run/sluice.toml",
                                  "[daemon]\ndata_dir = \"data\"\nbroker_socket = \"../sockets/b.sock\"\n"
                                  "admin_socket = \"/abs/a.sock\"\n");
  dir.Write("run/conf.d/10-a.toml", "[daemon]\nadmin_socket = \"a.sock\"\n");
  Result<Config> r = LoadConfig(main);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const fs::path run = fs::absolute(dir.path() / "run").lexically_normal();
  EXPECT_EQ(r->daemon.data_dir, run / "data");
  EXPECT_EQ(r->daemon.broker_socket, (run / "../sockets/b.sock").lexically_normal());
  EXPECT_EQ(r->daemon.admin_socket, run / "conf.d" / "a.sock");

  // ParseConfig treats its name the same way; the result is absolute whatever the working folder.
  EXPECT_EQ(Parse("[daemon]\ndata_dir = \"data\"\n", "/etc/sluice/sluice.toml").daemon.data_dir,
            "/etc/sluice/data");
  const fs::path here = Parse("[daemon]\ndata_dir = \"data\"\n", "sluice.toml").daemon.data_dir;
  EXPECT_TRUE(here.is_absolute()) << here;
  EXPECT_EQ(here, fs::current_path() / "data");
}

// ---- FormatConfig, DiffConfig, KnownConfigKeys ----

Config NonDefaultConfig() {
  Config c;
  c.sources = {"sluice.toml"};
  c.daemon.data_dir = "/srv/sluice data/\"quoted\"\\";
  c.daemon.socket_mode = 0640;
  c.daemon.admin_group = "ops\tteam";
  c.daemon.log_level = LogLevel::kNotice;
  c.daemon.max_frame_bytes = 1536 * 1024 + 7;
  c.daemon.shutdown_timeout = milliseconds(90500);
  c.broker.durability = Durability::kNone;
  c.broker.auto_create_topics = false;
  c.broker.max_map_size = 1000000000000;
  c.topics.push_back(
      {.name = "orders", .max_messages = 5, .max_bytes = 3000, .on_full = TopicFullPolicy::kDropOldest});
  c.topics.push_back({.name = "b.2_-", .retention_max_age = hours(48)});
  SubscriptionConfig s;
  s.topic = "orders";
  s.name = "inventory";
  s.start = StartPointKind::kTime;
  s.start_time_us = 1767323045LL * 1000000 + 17;
  s.backoff.multiplier = 1.1;
  s.ordering = OrderingMode::kKey;
  c.subscriptions.push_back(s);
  s.name = "mail";
  s.start = StartPointKind::kSequence;
  s.start_time_us = 0;
  s.start_seq = 99;
  s.backoff.multiplier = 100;
  s.max_crashes = 9;
  c.subscriptions.push_back(s);
  c.daemon.plugin_dir = "/opt/plugins";
  PluginConfig p;
  p.name = "order";
  p.path = "/opt/plugins/order.so";
  c.plugins.push_back(p);
  p.name = "an-alytics_2";
  p.path = "/elsewhere/a \"b\".so";
  p.instances = 64;
  p.enabled = false;
  p.handler_timeout = milliseconds(1500);
  p.restart_backoff_initial = seconds(1);
  p.restart_backoff_max = hours(1);
  p.max_restarts = 1;
  p.restart_window = minutes(10);
  p.max_crashes = 1000;
  p.config_json = R"({"a":{"b":[1,-2.5,"x\ny",true,{}]},"key with space":"\"q\"","t":[]})";
  c.plugins.push_back(p);
  return c;
}

TEST(FormatConfigTest, RoundTrips) {
  for (const Config& original : {Config(), NonDefaultConfig()}) {
    const std::string text = FormatConfig(original);
    Result<Config> back = ParseConfig(text, "sluice.toml");
    ASSERT_TRUE(back.ok()) << back.status().ToString() << "\n" << text;
    Config expected = original;
    expected.sources = {"sluice.toml"};
    EXPECT_EQ(*back, expected) << text;
    EXPECT_EQ(FormatConfig(*back), FormatConfig(expected));
  }
}

TEST(FormatConfigTest, PrintsEveryKeyInHumanUnitsWithSources) {
  Config c = NonDefaultConfig();
  c.sources = {"/etc/sluice/sluice.toml", "/etc/sluice/conf.d/10-x.toml"};
  const std::string text = FormatConfig(c);
  EXPECT_THAT(text, HasSubstr("# from /etc/sluice/sluice.toml\n# from /etc/sluice/conf.d/10-x.toml\n"));
  EXPECT_THAT(text, HasSubstr("\n[daemon]\n"));
  EXPECT_THAT(text, HasSubstr("\nsocket_mode = 0o640\n"));
  EXPECT_THAT(text, HasSubstr("\nmax_map_size = \"1TB\"\n"));
  EXPECT_THAT(text, HasSubstr("\nmap_size = \"64MiB\"\n"));
  EXPECT_THAT(text, HasSubstr("\nshutdown_timeout = \"1m30s500ms\"\n"));
  EXPECT_THAT(text, HasSubstr("\nbackoff_multiplier = 100.0\n"));
  EXPECT_THAT(text, HasSubstr("\nstart = \"2026-01-02T03:04:05.000017Z\"\n"));
  EXPECT_THAT(text, HasSubstr("\nadmin_group = \"ops\\tteam\"\n"));
  // Every known key appears once per section or entry.
  for (const std::string& key : KnownConfigKeys()) {
    const std::string leaf = key.substr(key.find('.') + 1);
    EXPECT_THAT(text, HasSubstr("\n" + leaf + " = ")) << key;
  }
  EXPECT_THAT(FormatConfig(Config()), HasSubstr("# from built-in defaults\n"));
}

TEST(DiffConfigTest, ListsChangesAndFlagsRestarts) {
  const Config before = NonDefaultConfig();
  EXPECT_TRUE(DiffConfig(before, before).empty());

  Config after = before;
  after.daemon.log_level = LogLevel::kDebug;
  after.broker.durability = Durability::kSync;
  after.broker.map_size = 128ull << 20;
  after.daemon.data_dir = "/elsewhere";
  after.topics[0].max_bytes = 0;
  after.topics.erase(after.topics.begin() + 1);
  after.topics.push_back({.name = "new"});
  after.subscriptions[1].ack_wait = seconds(5);
  after.sources = {"other.toml"};  // where a config came from is not a setting

  std::vector<std::string> lines;
  for (const ConfigChange& c : DiffConfig(before, after)) {
    lines.push_back(
        fmt::format("{}: {} -> {}{}", c.key, c.old_value, c.new_value, c.needs_restart ? " (restart)" : ""));
  }
  EXPECT_THAT(lines,
              ElementsAre("daemon.data_dir: /srv/sluice data/\"quoted\"\\ -> /elsewhere (restart)",
                          "daemon.log_level: notice -> debug", "broker.durability: none -> sync (restart)",
                          "broker.map_size: 64MiB -> 128MiB (restart)",
                          "topic[orders].max_bytes: 3kB -> 0 (restart)", "topic[new]: absent -> present (restart)",
                          "topic[b.2_-]: present -> absent (restart)",
                          "subscription[orders/mail].ack_wait: 30s -> 5s (restart)"));
}

// Topics and subscriptions live in the open store, plugins in the supervisor: adding or removing a
// [[plugin]] is applied by a reload, adding or removing a [[topic]] or [[subscription]] is not.
TEST(DiffConfigTest, AddedPluginIsAppliedAddedSubscriptionNeedsARestart) {
  Config before;
  const Config after = Parse(R"(
[[subscription]]
topic = "orders"
name = "mail"
[[plugin]]
name = "order"
path = "/x/order.so"
)");
  before.sources = after.sources;
  std::map<std::string, bool> restart;
  for (const ConfigChange& c : DiffConfig(before, after)) restart[c.key] = c.needs_restart;
  EXPECT_EQ(restart, (std::map<std::string, bool>{{"subscription[orders/mail]", true}, {"plugin[order]", false}}));
}

TEST(DiffConfigTest, RestartKeysAreExactlyTheDocumentedOnes) {
  // Changing every scalar key at once, then collecting which ones ask for a restart.
  Config before;
  const Config after = Parse(R"(
[daemon]
data_dir = "/a"
broker_socket = "/b"
admin_socket = "/c"
socket_mode = 0o600
admin_group = "g"
log_level = "debug"
max_frame_bytes = "8MiB"
max_connections = 5
shutdown_timeout = "1s"
[broker]
durability = "none"
batch_interval = "1s"
map_size = "128MiB"
max_map_size = "1GiB"
auto_create_topics = false
dedupe_window = "1m"
max_message_bytes = "2MiB"
default_max_deliveries = 2
default_ack_wait = "1s"
)");
  before.sources = after.sources;
  std::set<std::string> restart;
  std::set<std::string> all;
  for (const ConfigChange& c : DiffConfig(before, after)) {
    all.insert(c.key);
    if (c.needs_restart) restart.insert(c.key);
  }
  EXPECT_EQ(all.size(), 18u);
  // Those the open store (or a listening socket) was set up with.
  EXPECT_EQ(restart, (std::set<std::string>{"daemon.data_dir", "daemon.broker_socket", "daemon.admin_socket",
                                            "daemon.socket_mode", "broker.map_size", "broker.durability",
                                            "broker.batch_interval", "broker.max_map_size",
                                            "broker.auto_create_topics", "broker.dedupe_window"}));
}

TEST(KnownConfigKeysTest, ListsEverySectionOnce) {
  const std::vector<std::string> keys = KnownConfigKeys();
  const std::set<std::string> unique(keys.begin(), keys.end());
  EXPECT_EQ(unique.size(), keys.size());
  EXPECT_EQ(keys.size(), 10u + 10u + 1u + 6u + 12u + 11u);
  for (const char* key :
       {"daemon.data_dir", "daemon.shutdown_timeout", "broker.durability", "broker.default_ack_wait",
        "topic.name", "topic.retention_max_bytes", "subscription.topic", "subscription.start",
        "subscription.backoff_multiplier", "subscription.on_full", "subscription.max_crashes",
        "daemon.plugin_dir", "plugin.name", "plugin.config", "plugin.restart_window"}) {
    EXPECT_TRUE(unique.contains(key)) << key;
  }
}

TEST(LogLevelNameTest, NamesEveryLevel) {
  EXPECT_EQ(LogLevelName(LogLevel::kError), "error");
  EXPECT_EQ(LogLevelName(LogLevel::kWarning), "warning");
  EXPECT_EQ(LogLevelName(LogLevel::kNotice), "notice");
  EXPECT_EQ(LogLevelName(LogLevel::kInfo), "info");
  EXPECT_EQ(LogLevelName(LogLevel::kDebug), "debug");
}

// ---- The shipped files ----

// etc/sluice.toml with its commented-out examples ("#[[topic]]", "#name = ...") switched on; prose
// comments ("# ...", "## ...") stay comments.
std::string UncommentExamples(const std::string& text) {
  std::istringstream in(text);
  std::string out;
  for (std::string line; std::getline(in, line);) {
    if (line.size() > 1 && line[0] == '#' && line[1] != ' ') line.erase(0, 1);
    out += line + '\n';
  }
  return out;
}

TEST(ShippedConfigTest, DefaultConfigIsTheBuiltInDefaults) {
  const std::string text = ReadSourceFile("etc/sluice.toml");
  Config shipped = Parse(text, "/etc/sluice/sluice.toml");
  shipped.sources.clear();
  EXPECT_EQ(shipped, Config()) << "etc/sluice.toml and the defaults in config.h/options.h disagree";
}

TEST(ShippedConfigTest, DefaultConfigDocumentsEveryKey) {
  const std::string text = UncommentExamples(ReadSourceFile("etc/sluice.toml"));
  const Config examples = Parse(text, "/etc/sluice/sluice.toml");
  EXPECT_EQ(examples.topics.size(), 1u);
  EXPECT_EQ(examples.subscriptions.size(), 1u);
  EXPECT_EQ(examples.plugins.size(), 1u);
  // Each key is set in its own section: scan the sections the way TOML does.
  std::set<std::string> present;
  std::istringstream in(text);
  std::string section;
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("[[")) {
      section = line.substr(2, line.find("]]") - 2);
    } else if (line.starts_with("[")) {
      section = line.substr(1, line.find(']') - 1);
    } else if (const size_t eq = line.find(" = "); eq != std::string::npos && !line.starts_with("#")) {
      present.insert(section + "." + line.substr(0, eq));
    }
  }
  for (const std::string& key : KnownConfigKeys())
    EXPECT_TRUE(present.contains(key)) << key << " is not in etc/sluice.toml";
  for (const std::string& key : present) {
    const std::vector<std::string> known = KnownConfigKeys();
    EXPECT_NE(std::find(known.begin(), known.end(), key), known.end())
        << key << " in etc/sluice.toml is unknown";
  }
}

TEST(ShippedConfigTest, LocalDemoConfigKeepsEverythingBesideIt) {
  const fs::path file = fs::path(SLUICE_SOURCE_DIR) / "etc" / "sluice.local.toml";
  const Config c = Parse(ReadSourceFile("etc/sluice.local.toml"), file.string());
  const fs::path dir = fs::absolute(file.parent_path()).lexically_normal();
  EXPECT_EQ(c.daemon.data_dir, dir / "data");
  EXPECT_EQ(c.daemon.broker_socket, dir / "broker.sock");
  EXPECT_EQ(c.daemon.admin_socket, dir / "admin.sock");
  EXPECT_EQ(c.daemon.log_level, LogLevel::kInfo);
  EXPECT_EQ(c.daemon.plugin_dir, dir / "plugins");
  ASSERT_EQ(c.topics.size(), 2u);
  EXPECT_EQ(c.topics[0].name, "order.events");
  ASSERT_EQ(c.plugins.size(), 3u);
  EXPECT_EQ(c.plugins[0].name, "order");
}

}  // namespace
}  // namespace sluice

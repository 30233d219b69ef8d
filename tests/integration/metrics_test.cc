// SPDX-License-Identifier: MIT
//
// Metrics as an operator scrapes them: the real sluiced with its HTTP listener on loopback, traffic
// sent by the test, and the documented series read back over HTTP and through `sluicectl metrics`.
// Also the admin socket's credential check: a uid that is not allowed is refused by name.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/integration/daemon_fixture.h"

namespace sluice::testing {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

// A loopback port nobody listens on right now.
uint16_t FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// One HTTP/1.0 request on loopback; the whole response (status line, headers, body).
std::string Http(uint16_t port, const std::string& method, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return "";
  }
  std::string req = fmt::format("{} {} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", method, path);
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "";
  }
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

TEST(MetricsTest, HttpScrapeShowsTheTrafficSent) {
  uint16_t port = FreePort();
  DaemonProcess d(fmt::format("[metrics]\nlisten = \"127.0.0.1:{}\"\n", port));
  ASSERT_TRUE(d.Start());
  auto pub = d.Connect("metrics-publisher");
  ASSERT_TRUE(pub.ok());
  auto con = d.Connect("metrics-consumer");
  ASSERT_TRUE(con.ok());
  client::SubscribeOptions so;
  so.topic = "metered";
  so.subscription = "reader";
  so.start = wire::StartKind::Earliest;
  auto cid = (*con)->Subscribe(so);
  ASSERT_TRUE(cid.ok()) << cid.status().ToString();
  client::OutMessage m;
  m.topic = "metered";
  m.payload = "0123456789";
  for (int i = 0; i < 7; ++i) ASSERT_TRUE((*pub)->Publish(m).ok());
  // Acknowledge five of them: two stay pending.
  for (int i = 0; i < 5; ++i) {
    auto del = (*con)->Receive(5s);
    ASSERT_TRUE(del.ok()) << del.status().ToString();
    uint64_t id = del->delivery_id;
    ASSERT_TRUE((*con)->Ack(*cid, std::span<const uint64_t>(&id, 1)).ok());
  }
  ASSERT_TRUE((*con)->Flush().ok());

  const std::string sub = "topic=\"metered\",subscription=\"reader\"";
  std::string body;
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    body = Http(port, "GET", "/metrics");
    if (MetricValue(body, "sluice_subscription_acked_total{" + sub + "}") == 5) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_THAT(body.substr(0, body.find("\r\n")), HasSubstr(" 200 "));
  EXPECT_THAT(body, HasSubstr("text/plain; version=0.0.4"));
  EXPECT_EQ(MetricValue(body, "sluice_topic_published_total{topic=\"metered\"}"), 7);
  EXPECT_EQ(MetricValue(body, "sluice_subscription_acked_total{" + sub + "}"), 5);
  EXPECT_EQ(MetricValue(body, "sluice_subscription_delivered_total{" + sub + "}"), 7);
  EXPECT_EQ(MetricValue(body, "sluice_subscription_in_flight{" + sub + "}"), 2);
  EXPECT_GE(MetricValue(body, "sluice_publish_ack_seconds_count"), 7);
  EXPECT_GE(MetricValue(body, "sluice_commit_seconds_count"), 1);
  // The store file is preallocated (broker.preallocate, default 32MiB: 1MiB ahead of a small store).
  EXPECT_GE(MetricValue(body, "sluice_store_file_bytes"), 1 << 20);
  EXPECT_EQ(MetricValue(body, "sluice_store_preallocate_failures_total"), 0);
  EXPECT_GT(MetricValue(body, "process_resident_memory_bytes"), 0);
  EXPECT_GT(MetricValue(body, "process_open_fds"), 0);
  EXPECT_THAT(body, HasSubstr("# TYPE sluice_publish_ack_seconds histogram"));
  EXPECT_THAT(body, HasSubstr("sluice_commit_batch_ops_bucket{le=\"+Inf\"}"));

  // Only GET /metrics is served.
  EXPECT_THAT(Http(port, "GET", "/other"), HasSubstr("404"));
  EXPECT_THAT(Http(port, "POST", "/metrics"), HasSubstr("405"));

  // sluicectl prints the same series, current to the call.
  CommandResult ctl = d.Ctl({"metrics"});
  ASSERT_EQ(ctl.exit_code, 0) << ctl.err;
  EXPECT_EQ(MetricValue("\n" + ctl.out, "sluice_topic_published_total{topic=\"metered\"}"), 7);
  EXPECT_EQ(WEXITSTATUS(d.Stop()), 0);
}

// A bad address is a config error: --check-config refuses it as the daemon does, naming file and line.
TEST(MetricsTest, BadListenAddressStopsTheDaemonWithItsName) {
  DaemonProcess d("[metrics]\nlisten = \"localhost\"\n");
  for (bool check_only : {true, false}) {
    std::vector<std::string> args = {SluicedPath(), "--config", d.config_path().string()};
    if (check_only) args.push_back("--check-config");
    auto r = RunCommand(args);
    EXPECT_EQ(r.exit_code, 1) << check_only;
    EXPECT_THAT(r.err, HasSubstr(d.config_path().string() + ":"));
    EXPECT_THAT(r.err, HasSubstr("metrics.listen: \"localhost\" is not HOST:PORT"));
  }
}

// SO_PEERCRED: a uid that is neither root, the daemon's user nor in admin_group is refused by name,
// even when the socket file's mode would let it connect.
TEST(AdminAccessTest, UidNotAllowedIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to act as another uid";
  DaemonProcess d("socket_mode = 0o666\n");
  // The test directory is private (mkdtemp): let the other uid reach the socket inside it.
  std::filesystem::permissions(d.dir(), std::filesystem::perms(0755));
  ASSERT_TRUE(d.Start());
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  pid_t child = fork();
  if (child == 0) {
    close(pipefd[0]);
    // nobody (65534)
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(2);
    client::ConnectOptions opts;
    opts.timeout = 5s;
    auto conn = client::Connection::Connect(d.admin_socket(), opts);
    std::string msg = conn.ok() ? (*conn)->Admin("ping").status().ToString() : conn.status().ToString();
    (void)!write(pipefd[1], msg.data(), msg.size());
    _exit(0);
  }
  close(pipefd[1]);
  std::string got;
  char buf[512];
  for (ssize_t n; (n = read(pipefd[0], buf, sizeof buf)) > 0;) got.append(buf, static_cast<size_t>(n));
  close(pipefd[0]);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_EQ(WEXITSTATUS(status), 0);
  EXPECT_THAT(got, HasSubstr("uid 65534 may not use the admin socket")) << d.Log();
  // Root still may.
  EXPECT_EQ(d.Ctl({"ping"}).exit_code, 0);
}

}  // namespace
}  // namespace sluice::testing

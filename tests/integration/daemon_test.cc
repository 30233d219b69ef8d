// SPDX-License-Identifier: MIT
//
// The daemon as an operator sees it: the real sluiced in a temporary directory, driven through the
// client library, sluicectl and signals.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/integration/daemon_fixture.h"

namespace sluice::testing {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

client::OutMessage Msg(std::string topic, std::string payload) {
  client::OutMessage m;
  m.topic = std::move(topic);
  m.payload = std::move(payload);
  return m;
}

TEST(DaemonTest, AnswersClientAndSluicectl) {
  DaemonProcess d;
  ASSERT_TRUE(d.Start());
  auto conn = d.Connect();
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  EXPECT_EQ((*conn)->server_protocol_version(), 1u);

  auto ping = d.Ctl({"ping"});
  EXPECT_EQ(ping.exit_code, 0) << ping.err;
  EXPECT_THAT(ping.out, HasSubstr("pong"));

  auto status = d.Ctl({"--json", "status"});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  auto j = nlohmann::json::parse(status.out);
  EXPECT_EQ(j["data_dir"], d.data_dir().string());
  EXPECT_EQ(j["broker_socket"], d.broker_socket().string());
  EXPECT_GE(j["connections"].get<int>(), 1);

  auto human = d.Ctl({"status"});
  EXPECT_EQ(human.exit_code, 0);
  EXPECT_THAT(human.out, HasSubstr(d.admin_socket().string()));

  // Socket files carry the default mode 0660.
  struct stat st;
  ASSERT_EQ(stat(d.broker_socket().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  EXPECT_EQ(WEXITSTATUS(d.Stop()), 0);
}

TEST(DaemonTest, PublishSubscribeAckRoundTrip) {
  DaemonProcess d;
  ASSERT_TRUE(d.Start());
  auto pub = d.Connect("publisher");
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  auto sub = d.Connect("consumer");
  ASSERT_TRUE(sub.ok());
  client::SubscribeOptions so;
  so.topic = "greetings";
  so.subscription = "reader";
  so.start = wire::StartKind::Earliest;
  auto consumer = (*sub)->Subscribe(so);
  ASSERT_TRUE(consumer.ok()) << consumer.status().ToString();

  auto ack = (*pub)->Publish(Msg("greetings", "hello"));
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_EQ(ack->seq, 1u);

  auto delivery = (*sub)->Receive(5s);
  ASSERT_TRUE(delivery.ok()) << delivery.status().ToString();
  EXPECT_EQ(delivery->payload(), "hello");
  EXPECT_EQ(delivery->seq(), 1u);
  EXPECT_EQ(delivery->delivery_count, 1u);
  uint64_t id = delivery->delivery_id;
  EXPECT_TRUE((*sub)->Ack(*consumer, std::span<const uint64_t>(&id, 1)).ok());
  EXPECT_EQ(WEXITSTATUS(d.Stop()), 0);
}

// A request that times out says why when the cause is plain: nothing subscribes to its topic.
TEST(DaemonTest, ARequestNobodyCanAnswerTimesOutNamingItsTopic) {
  DaemonProcess d;
  ASSERT_TRUE(d.Start());
  auto c = d.Connect("requester");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto answer = (*c)->Request(Msg("nobody.commands", "question"), 300ms);
  ASSERT_FALSE(answer.ok());
  EXPECT_EQ(answer.status().code(), StatusCode::kTimeout);
  EXPECT_THAT(answer.status().message(), HasSubstr("no subscription reads topic 'nobody.commands'"));

  // With a subscription whose consumer does not answer, the message says no more than it knows.
  auto sub = d.Connect("silent");
  ASSERT_TRUE(sub.ok());
  client::SubscribeOptions so;
  so.topic = "silent.commands";
  so.subscription = "server";
  ASSERT_TRUE((*sub)->Subscribe(so).ok());
  answer = (*c)->Request(Msg("silent.commands", "question"), 300ms);
  ASSERT_FALSE(answer.ok());
  EXPECT_EQ(answer.status().code(), StatusCode::kTimeout);
  EXPECT_EQ(answer.status().message(), "no reply to the request within its timeout");
  // Timed out, both count in the request latency histogram, at 300 ms or a little more.
  CommandResult metrics = d.Ctl({"metrics"});
  ASSERT_EQ(metrics.exit_code, 0) << metrics.err;
  EXPECT_EQ(MetricValue("\n" + metrics.out, "sluice_request_seconds_count"), 2);
  EXPECT_EQ(MetricValue("\n" + metrics.out, "sluice_request_seconds_bucket{le=\"0.25\"}"), 0);
  EXPECT_EQ(WEXITSTATUS(d.Stop()), 0);
}

TEST(DaemonTest, DlqRedriveReportsSeqsThatAreNotDeadLetters) {
  DaemonProcess d;
  ASSERT_TRUE(d.Start());
  auto c = d.Connect("consumer");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  client::SubscribeOptions so;
  so.topic = "jobs";
  so.subscription = "worker";
  so.start = wire::StartKind::Earliest;
  auto consumer = (*c)->Subscribe(so);
  ASSERT_TRUE(consumer.ok()) << consumer.status().ToString();
  ASSERT_TRUE((*c)->Publish(Msg("jobs", "bad")).ok());
  auto delivery = (*c)->Receive(5s);
  ASSERT_TRUE(delivery.ok()) << delivery.status().ToString();
  ASSERT_TRUE((*c)->Nack(*consumer, delivery->delivery_id, 0, /*reject=*/true, "cannot parse").ok());
  ASSERT_TRUE((*c)->Flush().ok());
  for (int i = 0; i < 100 && CtlJson(d, {"dlq", "list", "jobs", "worker"}).value("dead_letters", nlohmann::json::array()).empty();
       ++i) {
    std::this_thread::sleep_for(20ms);
  }

  CommandResult missing = d.Ctl({"dlq", "redrive", "jobs", "worker", "--seq", "1", "--seq", "7"});
  EXPECT_EQ(missing.exit_code, 1) << missing.out << missing.err;
  EXPECT_NE(missing.err.find("1 of the 2 seqs given are not dead letters of jobs/worker (1 redriven)"),
            std::string::npos)
      << missing.err;
  auto again = (*c)->Receive(5s);
  ASSERT_TRUE(again.ok()) << "seq 1 was redriven all the same: " << again.status().ToString();
  EXPECT_EQ(again->seq(), 1u);
  CommandResult none = d.Ctl({"dlq", "redrive", "jobs", "worker", "--seq", "1"});
  EXPECT_EQ(none.exit_code, 1) << "not a dead letter any more";
  CommandResult all = d.Ctl({"dlq", "redrive", "jobs", "worker"});
  EXPECT_EQ(all.exit_code, 0) << "redriving all of an empty queue is not an error: " << all.err;
  EXPECT_EQ(WEXITSTATUS(d.Stop()), 0);
}

TEST(DaemonTest, TopicsShowNoRangeForATopicThatStoresNothing) {
  DaemonProcess d("[[topic]]\nname = \"idle\"\n");
  ASSERT_TRUE(d.Start());
  CommandResult r = d.Ctl({"topics"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::ContainsRegex("idle +0 +0 +- +- ")) << r.out;
  EXPECT_EQ(WEXITSTATUS(d.Stop()), 0);
}

TEST(DaemonTest, GarbageFrameClosesOnlyItsConnection) {
  DaemonProcess d;
  ASSERT_TRUE(d.Start());
  auto good = d.Connect("good");
  ASSERT_TRUE(good.ok());
  auto bad = d.Connect("bad");
  ASSERT_TRUE(bad.ok());

  // A length prefix of 16 bytes followed by bytes that are not a sluice Frame.
  std::string garbage("\x10\x00\x00\x00", 4);
  garbage += "this is no frame";
  ASSERT_TRUE((*bad)->SendRaw(garbage).ok());
  auto after = (*bad)->Publish(Msg("t", "x"));
  ASSERT_FALSE(after.ok());
  EXPECT_THAT(after.status().message(), HasSubstr("sluice"));

  auto ack = (*good)->Publish(Msg("t", "still fine"));
  EXPECT_TRUE(ack.ok()) << ack.status().ToString();
  auto status = d.Ctl({"--json", "status"});
  ASSERT_EQ(status.exit_code, 0);
  EXPECT_EQ(nlohmann::json::parse(status.out)["protocol_errors"], 1);
  EXPECT_TRUE(d.Running());
}

TEST(DaemonTest, OversizedFrameIsRefusedByName) {
  DaemonProcess d("max_frame_bytes = \"64KiB\"\n[broker]\nmax_message_bytes = \"32KiB\"\n");
  ASSERT_TRUE(d.Start());
  auto conn = d.Connect();
  ASSERT_TRUE(conn.ok());
  std::string huge("\x00\x00\x10\x00", 4);  // announces 1 MiB
  ASSERT_TRUE((*conn)->SendRaw(huge).ok());
  auto after = (*conn)->Publish(Msg("t", "x"));
  ASSERT_FALSE(after.ok());
  EXPECT_THAT(after.status().message(), HasSubstr("exceeds max_frame_bytes"));
  EXPECT_TRUE(d.Running());
}

TEST(DaemonTest, UnsupportedProtocolVersionIsRefused) {
  DaemonProcess d;
  ASSERT_TRUE(d.Start());
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, d.broker_socket().c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  flatbuffers::FlatBufferBuilder fbb;
  auto hello = wire::CreateHello(fbb, 99, fbb.CreateString("time traveller"), 1 << 20);
  wire::FinishFrame(fbb, wire::Body::Hello, hello.Union());
  ASSERT_EQ(write(fd, fbb.GetBufferPointer(), fbb.GetSize()), static_cast<ssize_t>(fbb.GetSize()));
  wire::FrameDecoder decoder(1 << 20);
  const wire::Frame* frame = nullptr;
  Status error;
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (std::chrono::steady_clock::now() < deadline) {
    auto tail = decoder.WritableTail(4096);
    ssize_t n = read(fd, tail.data(), tail.size());
    if (n <= 0) break;
    decoder.Commit(static_cast<size_t>(n));
    if (decoder.Next(&frame, &error) == wire::FrameDecoder::Outcome::kFrame) break;
  }
  close(fd);
  ASSERT_NE(frame, nullptr);
  ASSERT_EQ(frame->body_type(), wire::Body::Error);
  EXPECT_EQ(frame->body_as_Error()->code(), wire::ErrorCode::UnsupportedVersion);
  EXPECT_THAT(frame->body_as_Error()->message()->str(), HasSubstr("protocol version 99 is not supported"));
}

TEST(DaemonTest, SighupReloadsAndReportsChanges) {
  DaemonProcess d;
  ASSERT_TRUE(d.Start());
  // One key that applies at once and one that needs a restart.
  std::ofstream(d.config_path(), std::ios::app) << "max_connections = 7\nsocket_mode = 0o600\n";
  kill(d.pid(), SIGHUP);
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline && d.Log().find("socket_mode") == std::string::npos) {
    std::this_thread::sleep_for(20ms);
  }
  std::string log = d.Log();
  EXPECT_THAT(log, HasSubstr("daemon.max_connections"));
  EXPECT_THAT(log, HasSubstr("daemon.socket_mode"));
  EXPECT_THAT(log, HasSubstr("needs a restart"));
  EXPECT_TRUE(d.Running());

  // A broken config is refused and the daemon keeps running on the old one.
  std::ofstream(d.config_path(), std::ios::app) << "no_such_key = 1\nother_bad_key = 2\n";
  auto reload = d.Ctl({"reload"});
  EXPECT_EQ(reload.exit_code, 1);
  EXPECT_THAT(reload.err, HasSubstr("no_such_key"));
  EXPECT_EQ(d.Ctl({"ping"}).exit_code, 0);
  // The daemon logs the refusal too, every line with its priority.
  log = d.Log();
  EXPECT_THAT(log, HasSubstr("reload failed, keeping the running configuration"));
  std::istringstream lines(log);
  int bad_lines = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.find("other_bad_key") == std::string::npos) continue;
    ++bad_lines;
    EXPECT_TRUE(line.starts_with("<3>")) << line;
  }
  EXPECT_GE(bad_lines, 1);
  // sluicectl finds the daemon through the very file being edited, broken or not.
  auto via_config = RunCommand({SluicectlPath(), "--config", d.config_path().string(), "reload"});
  EXPECT_EQ(via_config.exit_code, 1) << via_config.err;
  EXPECT_THAT(via_config.err, HasSubstr("other_bad_key"));
}

// A key that was unset shows as "" in the reload's report, not as nothing.
TEST(DaemonTest, ReloadShowsAnUnsetValueAsEmptyQuotes) {
  DaemonProcess d;
  ASSERT_TRUE(d.Start());
  std::ofstream(d.config_path(), std::ios::app) << "[metrics]\nlisten = \"127.0.0.1:0\"\n";
  CommandResult r = d.Ctl({"reload"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("metrics.listen: \"\" -> 127.0.0.1:0"));
  EXPECT_EQ(d.Stop(), 0);
}

TEST(DaemonTest, SigtermDrainsExitsZeroAndRemovesSockets) {
  DaemonProcess d;
  ASSERT_TRUE(d.Start());
  auto conn = d.Connect();
  ASSERT_TRUE(conn.ok());
  // Publishes in flight when the signal lands are committed and acknowledged before the exit.
  std::vector<uint64_t> sent;
  for (int i = 0; i < 200; ++i) {
    auto id = (*conn)->PublishAsync(Msg("drain", "m"));
    ASSERT_TRUE(id.ok());
  }
  ASSERT_TRUE((*conn)->Flush().ok());
  kill(d.pid(), SIGTERM);
  int acked = 0;
  for (int i = 0; i < 200; ++i) {
    if ((*conn)->WaitPublishAck(5s).ok()) ++acked;
  }
  EXPECT_EQ(acked, 200);
  int status = d.Stop(SIGTERM);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_FALSE(std::filesystem::exists(d.broker_socket()));
  EXPECT_FALSE(std::filesystem::exists(d.admin_socket()));
  EXPECT_THAT(d.Log(), HasSubstr("stopped"));
}

TEST(DaemonTest, SecondDaemonOnSameDataDirIsRefused) {
  DaemonProcess d;
  ASSERT_TRUE(d.Start());
  auto r = RunCommand({SluicedPath(), "--config", d.config_path().string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr(fmt::format("in use by another sluiced (pid {})", d.pid())));
  // The first one is untouched: its sockets still answer.
  EXPECT_EQ(d.Ctl({"ping"}).exit_code, 0);
}

TEST(DaemonTest, StaleSocketFileIsReplaced) {
  DaemonProcess d;
  ASSERT_TRUE(d.Start());
  d.Kill();  // leaves both socket files behind
  ASSERT_TRUE(std::filesystem::exists(d.broker_socket()));
  ASSERT_TRUE(d.Start());
  EXPECT_EQ(d.Ctl({"ping"}).exit_code, 0);
}

TEST(DaemonTest, SluicectlWithoutDaemonExitsThree) {
  TempDir dir;
  auto r = RunCommand({SluicectlPath(), "--socket", (dir.path() / "none.sock").string(), "status"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.err, HasSubstr("is sluiced running?"));
}

TEST(DaemonTest, SluicectlUsageErrorsExitTwoAndNameTheProgram) {
  auto r = RunCommand({SluicectlPath(), "dlq", "redrive", "only-a-topic"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err.rfind("sluicectl: ", 0), 0u) << r.err;
  EXPECT_THAT(r.err, HasSubstr("sluicectl --help"));
}

// A mistyped or missing command is named, with the commands that would do.
TEST(DaemonTest, SluicectlNamesAnUnknownOrMissingCommand) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const Case cases[] = {
      {{"frobnicate"}, "sluicectl: unknown command 'frobnicate' (one of: analytics, bench, dlq, metrics, order,"},
      {{"--json", "order", "frob", "x"}, "sluicectl: unknown command 'order frob' (one of: list, place, show)\n"},
      {{"order"}, "sluicectl: 'order' needs a command (one of: list, place, show)\n"},
      {{}, "sluicectl: a command is required (one of: analytics,"},
      {{"--tiemout", "5"}, "sluicectl: unknown option '--tiemout'\n"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {SluicectlPath()};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    auto r = RunCommand(argv);
    EXPECT_EQ(r.exit_code, 2) << c.message;
    EXPECT_EQ(r.err.rfind(c.message, 0), 0u) << r.err;
  }
  // A missing option of a known command keeps its own message.
  auto r = RunCommand({SluicectlPath(), "order", "place"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--email is required"));
  auto version = RunCommand({SluicectlPath(), "--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_EQ(version.out.rfind("sluicectl ", 0), 0u) << version.out;
}

TEST(DaemonTest, BadConfigDoesNotStart) {
  DaemonProcess d("[broker]\ndurability = \"fast\"\n");
  auto r = RunCommand({SluicedPath(), "--config", d.config_path().string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("sluice.toml:7"));
  EXPECT_THAT(r.err, HasSubstr("broker.durability"));
  auto check = RunCommand({SluicedPath(), "--check-config", "--config", d.config_path().string()});
  EXPECT_EQ(check.exit_code, 1);
}

TEST(DaemonTest, CheckConfigPrintsEffectiveConfig) {
  DaemonProcess d;
  auto r = RunCommand({SluicedPath(), "--check-config", "--config", d.config_path().string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("durability = \"sync\""));
  EXPECT_THAT(r.out, HasSubstr(d.data_dir().string()));
}

// systemd's notify protocol: READY=1 once listening, STOPPING=1 on SIGTERM.
TEST(DaemonTest, SpeaksSdNotify) {
  TempDir dir;
  auto path = dir.path() / "notify.sock";
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  DaemonProcess d;
  ASSERT_TRUE(d.Start(20s, {{"NOTIFY_SOCKET", path.string()}, {"WATCHDOG_USEC", "200000"}}));
  auto read_all = [&](std::chrono::milliseconds wait, const std::string& want) {
    std::string got;
    auto deadline = std::chrono::steady_clock::now() + wait;
    while (std::chrono::steady_clock::now() < deadline && got.find(want) == std::string::npos) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      char buf[1024];
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n > 0) got.append(buf, static_cast<size_t>(n)).push_back('\n');
    }
    return got;
  };
  EXPECT_THAT(read_all(5s, "READY=1"), HasSubstr("READY=1"));
  EXPECT_THAT(read_all(5s, "WATCHDOG=1"), HasSubstr("WATCHDOG=1"));
  kill(d.pid(), SIGTERM);
  EXPECT_THAT(read_all(5s, "STOPPING=1"), HasSubstr("STOPPING=1"));
  EXPECT_EQ(WEXITSTATUS(d.Stop()), 0);
  close(fd);
}

}  // namespace
}  // namespace sluice::testing

// SPDX-License-Identifier: MIT
// net::Connection's close paths over a real socket pair: a clean close writes what is queued first, an
// abort does not, and a write that fails (the peer is gone) always ends the connection, also when a
// clean close was waiting for that write.
#include "broker/net/connection.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace sluice::net {
namespace {

using namespace std::chrono_literals;

struct RecordingHandler : FrameHandler {
  void OnFrame(Connection&, const wire::Frame&) override {}
  void OnClosed(Connection&, const Status& reason) override { closed = reason; }
  std::optional<Status> closed;
};

class ConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A write to a closed peer must come back as EPIPE, as in the daemon, not kill the test.
    std::signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop_);
    // As in the daemon, other handles keep the loop alive; a closing connection alone does not.
    uv_idle_init(&loop_, &keep_alive_);
    uv_idle_start(&keep_alive_, [](uv_idle_t*) {});
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds_), 0);
    set_.emplace(&loop_);
    auto* pipe = new uv_pipe_t;
    uv_pipe_init(&loop_, pipe, 0);
    ASSERT_EQ(uv_pipe_open(pipe, fds_[0]), 0);
    conn_ = set_->Add(pipe, 1 << 20, &handler_);
  }

  void TearDown() override {
    conn_.reset();
    if (fds_[1] >= 0) ::close(fds_[1]);
    set_->CloseAll(Status::Ok());
    RunUntil([&] { return set_->size() == 0; });
    set_.reset();
    uv_close(reinterpret_cast<uv_handle_t*>(&keep_alive_), nullptr);
    uv_run(&loop_, UV_RUN_NOWAIT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  // Runs the loop until `done` or `limit`; true if `done`.
  template <typename Pred>
  bool RunUntil(Pred done, std::chrono::milliseconds limit = 5s) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      uv_run(&loop_, UV_RUN_NOWAIT);
      std::this_thread::sleep_for(1ms);
    }
    return true;
  }

  void ClosePeer() {
    ::close(fds_[1]);
    fds_[1] = -1;
  }

  // Reads from the peer until end-of-file (bounded).
  std::string DrainPeer() {
    std::string got;
    char buf[65536];
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      ssize_t n = ::recv(fds_[1], buf, sizeof buf, MSG_DONTWAIT);
      if (n == 0) break;
      if (n > 0) got.append(buf, static_cast<size_t>(n));
    }
    return got;
  }

  // More than a socket pair's buffers hold, so part of it stays in a uv_write.
  static std::vector<uint8_t> Big() { return std::vector<uint8_t>(8u << 20, 'x'); }

  uv_loop_t loop_;
  uv_idle_t keep_alive_;
  int fds_[2] = {-1, -1};
  std::optional<ConnectionSet> set_;
  RecordingHandler handler_;
  std::shared_ptr<Connection> conn_;
};

TEST_F(ConnectionTest, ACleanCloseWritesWhatIsQueuedThenEnds) {
  const std::string data = "queued before the close";
  conn_->Send(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  conn_->Close(Status::Ok());
  EXPECT_EQ(DrainPeer(), data);
  ASSERT_TRUE(RunUntil([&] { return handler_.closed.has_value(); }));
  EXPECT_TRUE(handler_.closed->ok()) << handler_.closed->message();
}

TEST_F(ConnectionTest, AnAbortDropsWhatIsQueuedAndEndsAtOnce) {
  const std::string data = "never sent";
  conn_->Send(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  conn_->Abort(Unavailable("the peer is gone"));
  EXPECT_EQ(DrainPeer(), "");
  ASSERT_TRUE(RunUntil([&] { return handler_.closed.has_value(); }));
  EXPECT_EQ(handler_.closed->message(), "the peer is gone");
}

TEST_F(ConnectionTest, AnAbortCutsShortACleanCloseThatIsStillWriting) {
  auto big = Big();
  conn_->Send(big.data(), big.size());
  conn_->Close(Status::Ok());
  // The flush has started and is stuck on a peer that does not read.
  RunUntil([] { return false; }, 20ms);
  ASSERT_FALSE(handler_.closed.has_value());
  conn_->Abort(Unavailable("the peer is gone"));
  ASSERT_TRUE(RunUntil([&] { return handler_.closed.has_value(); }));
  EXPECT_EQ(handler_.closed->message(), "the peer is gone");
}

TEST_F(ConnectionTest, DroppingTheOutputOfAPeerThatExitedStillReadsItsEndOfFile) {
  auto big = Big();
  conn_->Send(big.data(), big.size());
  RunUntil([] { return false; }, 20ms);
  ClosePeer();
  conn_->DropOutput();
  ASSERT_TRUE(RunUntil([&] { return handler_.closed.has_value(); }));
  EXPECT_EQ(conn_->QueuedBytes(), 0u);
}

// The daemon used to keep such a connection (and a dead plugin worker's leases) forever: the failed
// write was ignored because a close was already under way.
TEST_F(ConnectionTest, AWriteThatFailsDuringACleanCloseStillEndsTheConnection) {
  auto big = Big();
  conn_->Send(big.data(), big.size());
  conn_->Close(Status::Ok());
  RunUntil([] { return false; }, 20ms);
  ASSERT_FALSE(handler_.closed.has_value());
  ClosePeer();
  ASSERT_TRUE(RunUntil([&] { return handler_.closed.has_value(); }))
      << "the connection never closed after its write failed";
  EXPECT_NE(handler_.closed->message().find("write failed"), std::string::npos)
      << handler_.closed->message();
}

TEST_F(ConnectionTest, AFirstWriteThatFailsDuringACleanCloseStillEndsTheConnection) {
  ClosePeer();
  const std::string data = "to nobody";
  conn_->Send(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  conn_->Close(Status::Ok());
  ASSERT_TRUE(RunUntil([&] { return handler_.closed.has_value(); }))
      << "the connection never closed after its write failed";
  EXPECT_NE(handler_.closed->message().find("write failed"), std::string::npos)
      << handler_.closed->message();
}

}  // namespace
}  // namespace sluice::net

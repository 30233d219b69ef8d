// SPDX-License-Identifier: MIT
//
// Tests of the client library (broker/client/client.h) against a scripted fake server: a Unix listener
// in a temporary directory whose accepted connection is driven by a script on its own thread, reading
// frames with the real FrameDecoder and answering with hand-built frames. Each test's server thread is
// joined before the test ends; every wait on either side is bounded (the server gives up after 3 s).
#include "broker/client/client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace sluice::client {
namespace {

using namespace std::chrono_literals;
using wire::Body;
using wire::ErrorCode;

constexpr int kServerWaitMs = 3000;

std::string Bytes(const flatbuffers::FlatBufferBuilder& fbb) {
  return {reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize()};
}

std::string HelloFrame(uint32_t max_frame_bytes = 0, std::string_view version = "sluiced 9.9.9") {
  flatbuffers::FlatBufferBuilder fbb;
  auto v = fbb.CreateString(version.data(), version.size());
  auto hello = wire::CreateHello(fbb, wire::kProtocolVersion, 0, max_frame_bytes, v);
  wire::FinishFrame(fbb, Body::Hello, hello.Union());
  return Bytes(fbb);
}

std::string PublishAckFrame(uint64_t request_id, uint64_t seq, Uuid id = {}, bool dup = false) {
  flatbuffers::FlatBufferBuilder fbb;
  wire::Uuid wid(id.hi, id.lo);
  wire::FinishFrame(fbb, Body::PublishAck,
                    wire::CreatePublishAck(fbb, request_id, seq, &wid, dup).Union());
  return Bytes(fbb);
}

std::string ErrorFrame(uint64_t request_id, ErrorCode code, std::string_view message, bool fatal) {
  flatbuffers::FlatBufferBuilder fbb;
  wire::BuildError(fbb, request_id, code, message, fatal);
  return Bytes(fbb);
}

std::string SubscribeOkFrame(uint64_t request_id, uint64_t consumer_id) {
  flatbuffers::FlatBufferBuilder fbb;
  wire::FinishFrame(fbb, Body::SubscribeOk,
                    wire::CreateSubscribeOk(fbb, request_id, consumer_id).Union());
  return Bytes(fbb);
}

std::string AdminResponseFrame(uint64_t request_id, int code, std::string_view message,
                               std::string_view result_json) {
  flatbuffers::FlatBufferBuilder fbb;
  auto m = fbb.CreateString(message.data(), message.size());
  auto r = fbb.CreateString(result_json.data(), result_json.size());
  wire::FinishFrame(fbb, Body::AdminResponse,
                    wire::CreateAdminResponse(fbb, request_id, code, m, r).Union());
  return Bytes(fbb);
}

flatbuffers::Offset<wire::Envelope> BuildEnvelope(flatbuffers::FlatBufferBuilder& fbb,
                                                  std::string_view topic, std::string_view payload,
                                                  uint64_t seq) {
  auto t = fbb.CreateString(topic.data(), topic.size());
  auto k = fbb.CreateString("order-1");
  auto ty = fbb.CreateString("orders.OrderCreated");
  auto hn = fbb.CreateString("trace");
  auto hv = fbb.CreateString("abc");
  std::vector<flatbuffers::Offset<wire::Header>> hs{wire::CreateHeader(fbb, hn, hv)};
  auto headers = fbb.CreateVector(hs);
  fbb.ForceVectorAlignment(payload.size(), 1, 8);
  auto p = fbb.CreateVector(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  wire::Uuid id(0x0123, 0x4567);
  return wire::CreateEnvelope(fbb, &id, t, k, ty, 0, 0, 1700000000000000, headers, p, seq);
}

std::string DeliverFrame(uint64_t consumer_id, uint64_t delivery_id, std::string_view payload,
                         uint64_t reply_token = 0) {
  flatbuffers::FlatBufferBuilder env_fbb;
  env_fbb.Finish(BuildEnvelope(env_fbb, "orders", payload, 42));
  flatbuffers::FlatBufferBuilder fbb;
  auto nested = wire::CreateNestedEnvelope(
      fbb, {reinterpret_cast<const char*>(env_fbb.GetBufferPointer()), env_fbb.GetSize()});
  wire::FinishFrame(
      fbb, Body::Deliver,
      wire::CreateDeliver(fbb, consumer_id, delivery_id, 1, nested, reply_token).Union());
  return Bytes(fbb);
}

std::string ReplyFrame(uint64_t request_id, std::string_view payload, std::string_view error = {}) {
  flatbuffers::FlatBufferBuilder fbb;
  auto env = BuildEnvelope(fbb, "", payload, 0);
  auto e = error.empty() ? flatbuffers::Offset<flatbuffers::String>()
                         : fbb.CreateString(error.data(), error.size());
  wire::FinishFrame(fbb, Body::Reply, wire::CreateReply(fbb, request_id, 0, env, e).Union());
  return Bytes(fbb);
}

std::string_view View(const flatbuffers::String* s) {
  return s == nullptr ? std::string_view() : std::string_view(s->data(), s->size());
}

// The server side of one accepted connection, used only by the server thread.
class Peer {
 public:
  explicit Peer(int fd) : fd_(fd), decoder_(wire::kDefaultMaxFrameBytes) {}
  ~Peer() { Close(); }

  // The next frame from the client, valid until the next call; nullptr at EOF, on a decoder error or
  // after kServerWaitMs.
  const wire::Frame* Next() {
    for (;;) {
      const wire::Frame* frame = nullptr;
      Status error;
      auto outcome = decoder_.Next(&frame, &error);
      if (outcome == wire::FrameDecoder::Outcome::kFrame) return frame;
      if (outcome == wire::FrameDecoder::Outcome::kError) {
        ADD_FAILURE() << "client sent a bad frame: " << error.message();
        return nullptr;
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, kServerWaitMs) != 1) {
        ADD_FAILURE() << "fake server: no data from the client within " << kServerWaitMs << " ms";
        return nullptr;
      }
      auto tail = decoder_.WritableTail(64 << 10);
      ssize_t n = ::recv(fd_, tail.data(), tail.size(), 0);
      if (n <= 0) return nullptr;
      decoder_.Commit(static_cast<size_t>(n));
    }
  }

  // The next frame, which must be of type `body`.
  const wire::Frame* Expect(Body body) {
    const wire::Frame* frame = Next();
    EXPECT_NE(frame, nullptr) << "expected " << wire::BodyName(body);
    if (frame == nullptr) return nullptr;
    EXPECT_EQ(frame->body_type(), body) << "got " << wire::BodyName(frame->body_type());
    return frame->body_type() == body ? frame : nullptr;
  }

  // Reads the client's Hello and answers with the server's.
  void Handshake(uint32_t max_frame_bytes = 0) {
    const wire::Frame* f = Expect(Body::Hello);
    if (f == nullptr) return;
    EXPECT_EQ(f->body_as_Hello()->protocol_version(), wire::kProtocolVersion);
    Send(HelloFrame(max_frame_bytes));
  }

  void Send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) {
        ADD_FAILURE() << "fake server: send failed: " << std::strerror(errno);
        return;
      }
      bytes.remove_prefix(static_cast<size_t>(n));
    }
  }

  // One send() per byte, so the client sees frames arrive in every possible split.
  void SendByteByByte(std::string_view bytes) {
    for (char c : bytes) Send(std::string_view(&c, 1));
  }

  // True when the client closes its end within kServerWaitMs (frames before the close are skipped).
  bool WaitForEof() {
    while (Next() != nullptr) {
    }
    char c;
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, kServerWaitMs) == 1 && ::recv(fd_, &c, 1, 0) == 0;
  }

  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
  wire::FrameDecoder decoder_;
};

// A Unix listener in a fresh temporary directory; Serve() runs a script for one accepted connection.
class FakeServer {
 public:
  FakeServer() {
    char dir[] = "/tmp/sluice-client-test-XXXXXX";
    EXPECT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ / "broker.sock";
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(listen_fd_, 4), 0);
  }

  ~FakeServer() {
    Join();
    ::close(listen_fd_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  void Serve(std::function<void(Peer&)> script) {
    thread_ = std::thread([this, script = std::move(script)] {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, kServerWaitMs) != 1) {
        ADD_FAILURE() << "fake server: nobody connected";
        return;
      }
      Peer peer(::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC));
      script(peer);
    });
  }

  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  const std::filesystem::path& path() const { return path_; }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
  std::filesystem::path path_;
  int listen_fd_ = -1;
  std::thread thread_;
};

std::unique_ptr<Connection> MustConnect(const FakeServer& server, ConnectOptions options = {}) {
  auto conn = Connection::Connect(server.path(), options);
  EXPECT_TRUE(conn.ok()) << conn.status().ToString();
  return conn.ok() ? std::move(conn.value()) : nullptr;
}

OutMessage Message(std::string payload) {
  OutMessage m;
  m.topic = "orders";
  m.payload = std::move(payload);
  return m;
}

// --- connect and Hello ------------------------------------------------------------------------------

TEST(ClientConnect, MissingSocketSaysWhatToCheck) {
  FakeServer server;
  auto path = server.dir() / "admin.sock";
  auto conn = Connection::Connect(path);
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(conn.status().message(), "cannot connect to " + path.string() +
                                         ": No such file or directory (is sluiced running?)");
}

TEST(ClientConnect, StaleSocketFileIsRefused) {
  FakeServer server;
  auto path = server.dir() / "stale.sock";
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);  // never listens
  auto conn = Connection::Connect(path);
  ::close(fd);
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(conn.status().message(),
            "cannot connect to " + path.string() + ": Connection refused (is sluiced running?)");
}

TEST(ClientConnect, RejectsBadOptionsAndPaths) {
  ConnectOptions small;
  small.max_frame_bytes = 100;
  auto a = Connection::Connect("/tmp/whatever.sock", small);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(a.status().message().find("max_frame_bytes 100"), std::string::npos);

  auto b = Connection::Connect("/tmp/" + std::string(200, 'x'));
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kInvalidArgument);
}

TEST(ClientConnect, HelloExchange) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    const wire::Frame* f = peer.Expect(Body::Hello);
    ASSERT_NE(f, nullptr);
    const auto* hello = f->body_as_Hello();
    EXPECT_EQ(hello->protocol_version(), wire::kProtocolVersion);
    EXPECT_EQ(View(hello->name()), "client-test");
    EXPECT_EQ(hello->max_frame_bytes(), 65536u);
    peer.Send(HelloFrame(1 << 20, "sluiced 0.1.0"));
    EXPECT_TRUE(peer.WaitForEof());
  });
  ConnectOptions options;
  options.name = "client-test";
  options.max_frame_bytes = 65536;
  auto conn = MustConnect(server, options);
  ASSERT_NE(conn, nullptr);
  EXPECT_EQ(conn->server_version(), "sluiced 0.1.0");
  EXPECT_EQ(conn->server_protocol_version(), wire::kProtocolVersion);
  EXPECT_EQ(conn->send_limit(), 1u << 20);
  EXPECT_FALSE(conn->closed());
  EXPECT_GE(conn->fd(), 0);
  conn.reset();
}

TEST(ClientConnect, UnsupportedVersionIsTheStatus) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    ASSERT_NE(peer.Expect(Body::Hello), nullptr);
    peer.Send(ErrorFrame(0, ErrorCode::UnsupportedVersion,
                         "protocol version 1 is not supported (this sluiced speaks 2)", true));
    peer.Close();
  });
  auto conn = Connection::Connect(server.path());
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), StatusCode::kProtocol);
  EXPECT_EQ(conn.status().message(), "protocol version 1 is not supported (this sluiced speaks 2)");
}

TEST(ClientConnect, NoHelloTimesOut) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    ASSERT_NE(peer.Expect(Body::Hello), nullptr);
    EXPECT_TRUE(peer.WaitForEof());  // the client gives up and closes
  });
  ConnectOptions options;
  options.timeout = 50ms;
  auto start = std::chrono::steady_clock::now();
  auto conn = Connection::Connect(server.path(), options);
  ASSERT_FALSE(conn.ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
  EXPECT_EQ(conn.status().code(), StatusCode::kTimeout);
  EXPECT_EQ(conn.status().message(),
            "no Hello from sluiced at " + server.path().string() + " within 50 ms");
}

TEST(ClientConnect, FrameBeforeHelloIsAProtocolError) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    ASSERT_NE(peer.Expect(Body::Hello), nullptr);
    peer.Send(PublishAckFrame(1, 1));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = Connection::Connect(server.path());
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), StatusCode::kProtocol);
  EXPECT_EQ(conn.status().message(), "sluiced sent a PublishAck frame before its Hello");
}

// --- publish ----------------------------------------------------------------------------------------

TEST(ClientPublish, SendsTheEnvelopeAndReturnsTheAck) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    const wire::Frame* f = peer.Expect(Body::Publish);
    ASSERT_NE(f, nullptr);
    const auto* pub = f->body_as_Publish();
    const auto* env = pub->envelope();
    EXPECT_EQ(View(env->topic()), "orders");
    EXPECT_EQ(View(env->key()), "order-7");
    EXPECT_EQ(View(env->type()), "orders.OrderCreated");
    EXPECT_EQ(View(env->correlation_id()), "order-7");
    EXPECT_EQ(env->causation_id(), nullptr);  // empty strings stay out of the envelope
    ASSERT_NE(env->id(), nullptr);
    EXPECT_EQ(env->id()->hi(), 7u);
    EXPECT_EQ(env->id()->lo(), 8u);
    ASSERT_NE(env->headers(), nullptr);
    ASSERT_EQ(env->headers()->size(), 1u);
    EXPECT_EQ(View(env->headers()->Get(0)->name()), "trace");
    EXPECT_EQ(View(env->headers()->Get(0)->value()), "t-1");
    ASSERT_NE(env->payload(), nullptr);
    EXPECT_EQ(std::string_view(reinterpret_cast<const char*>(env->payload()->data()),
                               env->payload()->size()),
              "hello payload");
    // The payload is a FlatBuffer the broker stores and a consumer reads in place.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(env->payload()->data()) % 8, 0u);
    peer.Send(PublishAckFrame(pub->request_id(), 41, Uuid{7, 8}, true));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  OutMessage m = Message("hello payload");
  m.key = "order-7";
  m.type = "orders.OrderCreated";
  m.correlation_id = "order-7";
  m.headers = {{"trace", "t-1"}};
  m.id = Uuid{7, 8};
  auto ack = conn->Publish(m);
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_EQ(ack->seq, 41u);
  EXPECT_EQ(ack->id, (Uuid{7, 8}));
  EXPECT_TRUE(ack->duplicate);
  EXPECT_NE(ack->request_id, 0u);
  conn.reset();
}

TEST(ClientPublish, DeliverBeforeTheAckIsKeptForReceive) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    const wire::Frame* f = peer.Expect(Body::Publish);
    ASSERT_NE(f, nullptr);
    uint64_t id = f->body_as_Publish()->request_id();
    peer.Send(DeliverFrame(3, 100, "delivered payload") + PublishAckFrame(id, 5));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  auto ack = conn->Publish(Message("x"));
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_EQ(ack->seq, 5u);

  auto d = conn->Receive(0ms);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->consumer_id, 3u);
  EXPECT_EQ(d->delivery_id, 100u);
  EXPECT_EQ(d->delivery_count, 1u);
  EXPECT_EQ(d->reply_token, 0u);
  EXPECT_EQ(d->topic(), "orders");
  EXPECT_EQ(d->key(), "order-1");
  EXPECT_EQ(d->type(), "orders.OrderCreated");
  EXPECT_EQ(d->payload(), "delivered payload");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(d->payload().data()) % 8, 0u);
  EXPECT_EQ(d->seq(), 42u);
  EXPECT_EQ(d->id(), (Uuid{0x0123, 0x4567}));
  EXPECT_EQ(d->publish_time_us(), 1700000000000000);
  EXPECT_EQ(d->header("trace"), std::optional<std::string_view>("abc"));
  EXPECT_EQ(d->header("nope"), std::nullopt);
  // The delivery owns its bytes: it stays readable after more reads and after a move.
  Delivery moved = std::move(d.value());
  EXPECT_EQ(moved.payload(), "delivered payload");

  auto none = conn->Receive(0ms);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kTimeout);
  conn.reset();
}

TEST(ClientPublish, PipelinedAcksArriveInOrderWithErrorsInPlace) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    std::vector<uint64_t> ids;
    for (int i = 0; i < 3; ++i) {
      const wire::Frame* f = peer.Expect(Body::Publish);
      ASSERT_NE(f, nullptr);
      ids.push_back(f->body_as_Publish()->request_id());
    }
    peer.Send(PublishAckFrame(ids[0], 10) +
              ErrorFrame(ids[1], ErrorCode::LimitExceeded, "topic 'orders' is full", false) +
              PublishAckFrame(ids[2], 11));
    const wire::Frame* f = peer.Expect(Body::Publish);
    ASSERT_NE(f, nullptr);
    peer.Send(PublishAckFrame(f->body_as_Publish()->request_id(), 12));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) {
    auto id = conn->PublishAsync(Message("m" + std::to_string(i)));
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    ids.push_back(*id);
  }
  EXPECT_EQ(conn->async_publishes_outstanding(), 3u);
  auto a = conn->WaitPublishAck(3s);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->request_id, ids[0]);
  EXPECT_EQ(a->seq, 10u);
  auto b = conn->WaitPublishAck(3s);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kLimitExceeded);
  EXPECT_EQ(b.status().message(), "topic 'orders' is full");
  EXPECT_EQ(conn->last_async_request_id(), ids[1]);
  auto c = conn->WaitPublishAck(3s);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->seq, 11u);
  EXPECT_EQ(conn->last_async_request_id(), ids[2]);

  auto none = conn->WaitPublishAck(3s);  // nothing outstanding: no wait at all
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kInvalidArgument);

  // An error for one request leaves the connection usable.
  auto d = conn->Publish(Message("after"));
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->seq, 12u);
  EXPECT_FALSE(conn->closed());
  conn.reset();
}

TEST(ClientPublish, ErrorForASyncPublishIsItsStatus) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    const wire::Frame* f = peer.Expect(Body::Publish);
    ASSERT_NE(f, nullptr);
    peer.Send(ErrorFrame(f->body_as_Publish()->request_id(), ErrorCode::InvalidArgument,
                         "topic name '' is empty", false));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  auto ack = conn->Publish(OutMessage{});
  ASSERT_FALSE(ack.ok());
  EXPECT_EQ(ack.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ack.status().message(), "topic name '' is empty");
  EXPECT_FALSE(conn->closed());
  conn.reset();
}

TEST(ClientPublish, ManyPipelinedPublishesStreamOut) {
  constexpr int kCount = 256;
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    for (int i = 0; i < kCount; ++i) {
      const wire::Frame* f = peer.Expect(Body::Publish);
      ASSERT_NE(f, nullptr);
      uint64_t id = f->body_as_Publish()->request_id();
      peer.Send(PublishAckFrame(id, 1000 + id));
    }
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  std::vector<uint64_t> ids;
  for (int i = 0; i < kCount; ++i) {
    auto id = conn->PublishAsync(Message(std::string(1000, static_cast<char>('a' + i % 26))));
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    ids.push_back(*id);
  }
  for (int i = 0; i < kCount; ++i) {
    auto ack = conn->WaitPublishAck(3s);
    ASSERT_TRUE(ack.ok()) << ack.status().ToString();
    EXPECT_EQ(ack->request_id, ids[i]);
    EXPECT_EQ(ack->seq, 1000 + ids[i]);
  }
  EXPECT_EQ(conn->async_publishes_outstanding(), 0u);
  conn.reset();
}

// The server writes 2 MiB of deliveries before it reads anything while the client writes 2 MiB of
// publishes: the client must keep reading while its output waits, or both sides block forever.
TEST(ClientPublish, WritingKeepsReadingSoNeitherSideDeadlocks) {
  constexpr int kCount = 512;
  const std::string payload(4096, 'p');
  FakeServer server;
  server.Serve([&payload](Peer& peer) {
    peer.Handshake();
    std::string batch;
    for (int i = 0; i < kCount; ++i) batch += DeliverFrame(1, i + 1, payload);
    peer.Send(batch);
    for (int i = 0; i < kCount; ++i) {
      const wire::Frame* f = peer.Expect(Body::Publish);
      ASSERT_NE(f, nullptr);
      peer.Send(PublishAckFrame(f->body_as_Publish()->request_id(), i + 1));
    }
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  for (int i = 0; i < kCount; ++i) {
    auto id = conn->PublishAsync(Message(payload));
    ASSERT_TRUE(id.ok()) << id.status().ToString();
  }
  for (int i = 0; i < kCount; ++i) {
    auto ack = conn->WaitPublishAck(3s);
    ASSERT_TRUE(ack.ok()) << ack.status().ToString();
    EXPECT_EQ(ack->seq, static_cast<uint64_t>(i + 1));
  }
  for (int i = 0; i < kCount; ++i) {
    auto d = conn->Receive(3s);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    EXPECT_EQ(d->delivery_id, static_cast<uint64_t>(i + 1));
    EXPECT_EQ(d->payload().size(), payload.size());
  }
  conn.reset();
}

TEST(ClientPublish, OversizedFrameIsRefusedLocally) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake(/*max_frame_bytes=*/2048);
    const wire::Frame* f = peer.Expect(Body::Publish);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->body_as_Publish()->envelope()->payload()->size(), 100u);
    peer.Send(PublishAckFrame(f->body_as_Publish()->request_id(), 1));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  EXPECT_EQ(conn->send_limit(), 2048u);
  auto big = conn->Publish(Message(std::string(4000, 'x')));
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(big.status().message().find("exceeds max_frame_bytes (2048)"), std::string::npos)
      << big.status().message();
  auto async = conn->PublishAsync(Message(std::string(4000, 'x')));
  EXPECT_EQ(async.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(conn->async_publishes_outstanding(), 0u);
  // Nothing was sent: the connection goes on.
  auto small = conn->Publish(Message(std::string(100, 'y')));
  ASSERT_TRUE(small.ok()) << small.status().ToString();
  conn.reset();
}

TEST(ClientPublish, SyncPublishTimesOutAndDropsTheLateAck) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    const wire::Frame* f = peer.Expect(Body::Publish);
    ASSERT_NE(f, nullptr);
    uint64_t late = f->body_as_Publish()->request_id();
    f = peer.Expect(Body::Publish);
    ASSERT_NE(f, nullptr);
    // The first ack comes after its call gave up; it must not be taken for the second.
    peer.Send(PublishAckFrame(late, 1) + PublishAckFrame(f->body_as_Publish()->request_id(), 2));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  conn->set_timeout(50ms);
  auto first = conn->Publish(Message("1"));
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(first.status().code(), StatusCode::kTimeout);
  EXPECT_NE(first.status().message().find("no PublishAck from sluiced for request"),
            std::string::npos)
      << first.status().message();
  auto second = conn->Publish(Message("2"));
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->seq, 2u);
  conn.reset();
}

// --- broken connections -----------------------------------------------------------------------------

TEST(ClientBroken, FatalErrorFailsPendingAndLaterCalls) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    ASSERT_NE(peer.Expect(Body::Publish), nullptr);
    peer.Send(DeliverFrame(1, 1, "before the error") +
              ErrorFrame(0, ErrorCode::Malformed, "frame failed FlatBuffers verification", true));
    peer.Close();
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  auto ack = conn->Publish(Message("x"));
  ASSERT_FALSE(ack.ok());
  EXPECT_EQ(ack.status().code(), StatusCode::kProtocol);
  EXPECT_EQ(ack.status().message(), "frame failed FlatBuffers verification");
  EXPECT_TRUE(conn->closed());
  EXPECT_EQ(conn->fd(), -1);
  // What arrived before the error is still handed out, then the error.
  auto d = conn->Receive(0ms);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->payload(), "before the error");
  auto again = conn->Receive(1s);
  EXPECT_EQ(again.status().message(), "frame failed FlatBuffers verification");
  EXPECT_EQ(conn->Admin("status").status().message(), "frame failed FlatBuffers verification");
  EXPECT_EQ(conn->PublishAsync(Message("y")).status().code(), StatusCode::kProtocol);
  EXPECT_EQ(conn->Ack(1, std::vector<uint64_t>{1}).code(), StatusCode::kProtocol);
}

TEST(ClientBroken, FatalErrorIsReadEvenWhenTheWriteFails) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    peer.Send(ErrorFrame(0, ErrorCode::LimitExceeded, "too many connections", true));
    peer.Close();
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  server.Join();  // the server has closed: the next write fails with EPIPE
  Status s = conn->SendRaw("garbage that nobody reads");
  EXPECT_EQ(s.code(), StatusCode::kLimitExceeded);
  EXPECT_EQ(s.message(), "too many connections");
}

TEST(ClientBroken, PeerCloseIsUnavailable) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    ASSERT_NE(peer.Expect(Body::Publish), nullptr);
    peer.Close();
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  auto ack = conn->Publish(Message("x"));
  ASSERT_FALSE(ack.ok());
  EXPECT_EQ(ack.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(ack.status().message(), "connection closed by sluiced");
  EXPECT_TRUE(conn->closed());
  EXPECT_EQ(conn->Flush().message(), "connection closed by sluiced");
}

TEST(ClientBroken, PeerCloseNamesTheLastErrorAndStrayErrorsAreKept) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    const wire::Frame* f = peer.Expect(Body::Ack);
    ASSERT_NE(f, nullptr);
    f = peer.Expect(Body::Publish);
    ASSERT_NE(f, nullptr);
    peer.Send(ErrorFrame(0, ErrorCode::NotFound, "no consumer 9 on this connection", false) +
              PublishAckFrame(f->body_as_Publish()->request_id(), 1));
    ASSERT_NE(peer.Expect(Body::Publish), nullptr);
    peer.Close();
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  EXPECT_EQ(conn->TakeError(), std::nullopt);
  uint64_t ids[] = {1};
  ASSERT_TRUE(conn->Ack(9, ids).ok());
  ASSERT_TRUE(conn->Publish(Message("x")).ok());
  auto stray = conn->TakeError();
  ASSERT_TRUE(stray.has_value());
  EXPECT_EQ(stray->code(), StatusCode::kNotFound);
  EXPECT_EQ(stray->message(), "no consumer 9 on this connection");
  EXPECT_EQ(conn->TakeError(), std::nullopt);
  auto ack = conn->Publish(Message("y"));
  ASSERT_FALSE(ack.ok());
  EXPECT_EQ(ack.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(ack.status().message(),
            "connection closed by sluiced (last error: no consumer 9 on this connection)");
}

TEST(ClientBroken, OversizedIncomingFrameBreaksTheConnection) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    peer.Send(DeliverFrame(1, 1, std::string(2000, 'z')));
    EXPECT_TRUE(peer.WaitForEof());
  });
  ConnectOptions options;
  options.max_frame_bytes = 1024;
  auto conn = MustConnect(server, options);
  ASSERT_NE(conn, nullptr);
  auto d = conn->Receive(3s);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kProtocol);
  EXPECT_NE(d.status().message().find("exceeds max_frame_bytes (1024)"), std::string::npos)
      << d.status().message();
  EXPECT_TRUE(conn->closed());
}

TEST(ClientBroken, ClientOnlyFrameFromServerIsAProtocolError) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    flatbuffers::FlatBufferBuilder fbb;
    wire::FinishFrame(fbb, Body::Credit, wire::CreateCredit(fbb, 1, 1).Union());
    peer.Send(Bytes(fbb));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  auto d = conn->Receive(3s);
  EXPECT_EQ(d.status().code(), StatusCode::kProtocol);
  EXPECT_EQ(d.status().message(), "sluiced sent a Credit frame, which only clients send");
}

// --- reading split frames ---------------------------------------------------------------------------

TEST(ClientRead, FramesSplitAnywhereAreReassembled) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    ASSERT_NE(peer.Expect(Body::Hello), nullptr);
    std::string deliver = DeliverFrame(2, 7, "slow");
    // Hello and the first bytes of a Deliver in one write: the client holds a partial frame.
    peer.Send(HelloFrame() + deliver.substr(0, 10));
    ASSERT_NE(peer.Expect(Body::Credit), nullptr);  // the client's go-ahead
    peer.SendByteByByte(deliver.substr(10));
    const wire::Frame* f = peer.Expect(Body::Publish);
    ASSERT_NE(f, nullptr);
    peer.SendByteByByte(DeliverFrame(2, 8, "between") +
                        PublishAckFrame(f->body_as_Publish()->request_id(), 77));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  auto partial = conn->Receive(20ms);
  ASSERT_FALSE(partial.ok());
  EXPECT_EQ(partial.status().code(), StatusCode::kTimeout);
  EXPECT_EQ(partial.status().message(), "no delivery within 20 ms");
  ASSERT_TRUE(conn->AddCredit(2, 1).ok());
  auto d = conn->Receive(3s);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->delivery_id, 7u);
  EXPECT_EQ(d->payload(), "slow");
  auto ack = conn->Publish(Message("x"));
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_EQ(ack->seq, 77u);
  auto between = conn->Receive(0ms);
  ASSERT_TRUE(between.ok()) << between.status().ToString();
  EXPECT_EQ(between->payload(), "between");
  conn.reset();
}

// --- subscribe, ack, nack, credit -------------------------------------------------------------------

TEST(ClientConsume, SubscribeAndFireAndForgetFrames) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    const wire::Frame* f = peer.Expect(Body::Subscribe);
    ASSERT_NE(f, nullptr);
    const auto* sub = f->body_as_Subscribe();
    EXPECT_EQ(View(sub->topic()), "orders");
    EXPECT_EQ(View(sub->subscription()), "inventory");
    EXPECT_EQ(sub->start(), wire::StartKind::Sequence);
    EXPECT_EQ(sub->start_seq(), 17u);
    EXPECT_EQ(sub->ordering(), wire::Ordering::Key);
    EXPECT_EQ(sub->max_deliveries(), 3u);
    EXPECT_EQ(sub->ack_wait_ms(), 1500u);
    EXPECT_EQ(sub->credit(), 8u);
    EXPECT_EQ(sub->max_crashes(), 4u);
    peer.Send(SubscribeOkFrame(sub->request_id(), 55));

    f = peer.Expect(Body::Ack);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->body_as_Ack()->consumer_id(), 55u);
    ASSERT_EQ(f->body_as_Ack()->delivery_ids()->size(), 3u);
    EXPECT_EQ(f->body_as_Ack()->delivery_ids()->Get(2), 3u);
    f = peer.Expect(Body::Nack);
    ASSERT_NE(f, nullptr);
    const auto* nack = f->body_as_Nack();
    EXPECT_EQ(nack->consumer_id(), 55u);
    EXPECT_EQ(nack->delivery_id(), 4u);
    EXPECT_EQ(nack->delay_ms(), 250u);
    EXPECT_TRUE(nack->reject());
    EXPECT_EQ(View(nack->error()), "bad order");
    f = peer.Expect(Body::Credit);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->body_as_Credit()->consumer_id(), 55u);
    EXPECT_EQ(f->body_as_Credit()->credit(), 16u);
    f = peer.Expect(Body::Ack);  // sent by Close() before the socket closes
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->body_as_Ack()->delivery_ids()->Get(0), 5u);
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  SubscribeOptions options;
  options.topic = "orders";
  options.subscription = "inventory";
  options.start = wire::StartKind::Sequence;
  options.start_seq = 17;
  options.ordering = wire::Ordering::Key;
  options.max_deliveries = 3;
  options.ack_wait_ms = 1500;
  options.credit = 8;
  options.max_crashes = 4;
  auto consumer = conn->Subscribe(options);
  ASSERT_TRUE(consumer.ok()) << consumer.status().ToString();
  EXPECT_EQ(*consumer, 55u);
  std::vector<uint64_t> ids{1, 2, 3};
  ASSERT_TRUE(conn->Ack(55, ids).ok());
  ASSERT_TRUE(conn->Ack(55, {}).ok());  // nothing to ack: no frame
  ASSERT_TRUE(conn->Nack(55, 4, 250, true, "bad order").ok());
  ASSERT_TRUE(conn->AddCredit(55, 16).ok());
  ASSERT_TRUE(conn->Flush().ok());
  std::vector<uint64_t> last{5};
  ASSERT_TRUE(conn->Ack(55, last).ok());
  ASSERT_TRUE(conn->Close().ok());
  EXPECT_TRUE(conn->closed());
  EXPECT_EQ(conn->Ack(55, last).code(), StatusCode::kUnavailable);
}

TEST(ClientConsume, DestructorSendsWhatIsQueued) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    const wire::Frame* f = peer.Expect(Body::Ack);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->body_as_Ack()->consumer_id(), 4u);
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  std::vector<uint64_t> ids{9};
  ASSERT_TRUE(conn->Ack(4, ids).ok());
  conn.reset();
}

TEST(ClientConsume, ReceiveTimesOut) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  auto start = std::chrono::steady_clock::now();
  auto d = conn->Receive(50ms);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kTimeout);
  EXPECT_EQ(d.status().message(), "no delivery within 50 ms");
  conn.reset();
}

// --- request / reply --------------------------------------------------------------------------------

TEST(ClientRequest, ReplyErrorAndLateReply) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    const wire::Frame* f = peer.Expect(Body::Request);
    ASSERT_NE(f, nullptr);
    const auto* req = f->body_as_Request();
    EXPECT_EQ(View(req->envelope()->topic()), "inventory.check");
    EXPECT_EQ(req->timeout_ms(), 3000u);
    peer.Send(ReplyFrame(req->request_id(), "in stock"));

    f = peer.Expect(Body::Request);
    ASSERT_NE(f, nullptr);
    peer.Send(ReplyFrame(f->body_as_Request()->request_id(), "", "unknown SKU"));

    f = peer.Expect(Body::Request);  // this one times out on the client
    ASSERT_NE(f, nullptr);
    uint64_t late = f->body_as_Request()->request_id();
    EXPECT_EQ(f->body_as_Request()->timeout_ms(), 20u);
    f = peer.Expect(Body::Request);
    ASSERT_NE(f, nullptr);
    peer.Send(ReplyFrame(late, "late") + ReplyFrame(f->body_as_Request()->request_id(), "fresh"));

    f = peer.Expect(Body::Request);
    ASSERT_NE(f, nullptr);
    peer.Send(ErrorFrame(f->body_as_Request()->request_id(), ErrorCode::Timeout,
                         "no reply from a consumer of 'inventory.check' within 3000 ms", false));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  OutMessage m;
  m.topic = "inventory.check";
  m.payload = "SKU-1";
  auto r = conn->Request(m, 3s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->payload, "in stock");
  EXPECT_EQ(r->type, "orders.OrderCreated");
  EXPECT_TRUE(r->error.empty());
  ASSERT_EQ(r->headers.size(), 1u);
  EXPECT_EQ(r->headers[0].second, "abc");

  auto failed = conn->Request(m, 3s);
  ASSERT_TRUE(failed.ok()) << failed.status().ToString();
  EXPECT_EQ(failed->error, "unknown SKU");

  auto timed_out = conn->Request(m, 20ms);
  ASSERT_FALSE(timed_out.ok());
  EXPECT_EQ(timed_out.status().code(), StatusCode::kTimeout);
  auto fresh = conn->Request(m, 3s);
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  EXPECT_EQ(fresh->payload, "fresh");

  auto server_timeout = conn->Request(m, 3s);
  ASSERT_FALSE(server_timeout.ok());
  EXPECT_EQ(server_timeout.status().code(), StatusCode::kTimeout);
  EXPECT_EQ(server_timeout.status().message(),
            "no reply from a consumer of 'inventory.check' within 3000 ms");
  conn.reset();
}

TEST(ClientRequest, PipelinedRequestsAreAnsweredInArrivalOrder) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    std::vector<uint64_t> ids;
    for (int i = 0; i < 3; ++i) {
      const wire::Frame* f = peer.Expect(Body::Request);
      ASSERT_NE(f, nullptr);
      EXPECT_EQ(f->body_as_Request()->timeout_ms(), 2000u);
      ids.push_back(f->body_as_Request()->request_id());
    }
    // Out of order, one of them failed by the server.
    peer.Send(ReplyFrame(ids[2], "third") +
              ErrorFrame(ids[0], ErrorCode::Timeout, "no reply to the request within its timeout", false) +
              ReplyFrame(ids[1], "", "unknown SKU"));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  OutMessage m;
  m.topic = "inventory.check";
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) {
    auto id = conn->RequestAsync(m, 2s);
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    ids.push_back(*id);
  }
  EXPECT_EQ(conn->requests_outstanding(), 3u);
  EXPECT_FALSE(conn->TakeReply().has_value());  // nothing has arrived yet
  std::vector<RequestAnswer> answers;
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (answers.size() < 3 && std::chrono::steady_clock::now() < deadline) {
    Status s = conn->PollUntil(std::chrono::steady_clock::now() + 100ms);
    ASSERT_TRUE(s.ok() || s.code() == StatusCode::kTimeout) << s.ToString();
    while (auto a = conn->TakeReply()) answers.push_back(std::move(*a));
  }
  ASSERT_EQ(answers.size(), 3u);
  EXPECT_EQ(answers[0].request_id, ids[2]);
  EXPECT_TRUE(answers[0].error.ok());
  EXPECT_EQ(answers[0].reply.payload, "third");
  EXPECT_EQ(answers[1].request_id, ids[0]);
  EXPECT_EQ(answers[1].error.code(), StatusCode::kTimeout);
  EXPECT_EQ(answers[2].request_id, ids[1]);
  EXPECT_TRUE(answers[2].error.ok());
  EXPECT_EQ(answers[2].reply.error, "unknown SKU");
  EXPECT_EQ(conn->requests_outstanding(), 0u);
  conn.reset();
}

TEST(ClientRequest, ResponderRepliesWithTheToken) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    peer.Send(DeliverFrame(1, 1, "question", /*reply_token=*/99));
    const wire::Frame* f = peer.Expect(Body::Reply);
    ASSERT_NE(f, nullptr);
    const auto* reply = f->body_as_Reply();
    EXPECT_EQ(reply->reply_token(), 99u);
    EXPECT_EQ(reply->request_id(), 0u);
    EXPECT_EQ(reply->error(), nullptr);
    ASSERT_NE(reply->envelope(), nullptr);
    EXPECT_EQ(View(reply->envelope()->type()), "inventory.Answer");
    f = peer.Expect(Body::Reply);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(View(f->body_as_Reply()->error()), "cannot answer");
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  auto d = conn->Receive(3s);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->reply_token, 99u);
  OutMessage answer;
  answer.type = "inventory.Answer";
  answer.payload = "42";
  ASSERT_TRUE(conn->Reply(d->reply_token, answer).ok());
  ASSERT_TRUE(conn->Reply(d->reply_token, OutMessage{}, "cannot answer").ok());
  ASSERT_TRUE(conn->Flush().ok());
  conn.reset();
}

// --- admin ------------------------------------------------------------------------------------------

TEST(ClientAdmin, ResultsAndErrorCodes) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    const wire::Frame* f = peer.Expect(Body::AdminRequest);
    ASSERT_NE(f, nullptr);
    const auto* req = f->body_as_AdminRequest();
    EXPECT_EQ(View(req->command()), "status");
    EXPECT_EQ(nlohmann::json::parse(View(req->args_json())), nlohmann::json({{"verbose", true}}));
    peer.Send(AdminResponseFrame(req->request_id(), 0, "",
                                 R"({"version":"0.1.0","connections":3})"));
    f = peer.Expect(Body::AdminRequest);
    ASSERT_NE(f, nullptr);
    peer.Send(AdminResponseFrame(f->body_as_AdminRequest()->request_id(), 3,
                                 "unknown command 'frobnicate'", ""));
    f = peer.Expect(Body::AdminRequest);
    ASSERT_NE(f, nullptr);
    peer.Send(AdminResponseFrame(f->body_as_AdminRequest()->request_id(), 2,
                                 "missing argument 'name'", ""));
    f = peer.Expect(Body::AdminRequest);
    ASSERT_NE(f, nullptr);
    peer.Send(AdminResponseFrame(f->body_as_AdminRequest()->request_id(), 0, "", ""));
    f = peer.Expect(Body::AdminRequest);
    ASSERT_NE(f, nullptr);
    peer.Send(AdminResponseFrame(f->body_as_AdminRequest()->request_id(), 0, "", "{not json"));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  auto status = conn->Admin("status", {{"verbose", true}});
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  EXPECT_EQ((*status)["version"], "0.1.0");
  EXPECT_EQ((*status)["connections"], 3);

  auto unknown = conn->Admin("frobnicate");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(unknown.status().message(), "unknown command 'frobnicate'");

  auto bad = conn->Admin("topic.create");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "missing argument 'name'");

  auto empty = conn->Admin("ping");
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_EQ(*empty, nlohmann::json::object());

  auto garbled = conn->Admin("status");
  EXPECT_EQ(garbled.status().code(), StatusCode::kProtocol);
  conn.reset();
}

TEST(ClientAdmin, TimesOut) {
  FakeServer server;
  server.Serve([](Peer& peer) {
    peer.Handshake();
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  auto r = conn->Admin("status", nlohmann::json::object(), 30ms);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kTimeout);
  EXPECT_NE(r.status().message().find("no AdminResponse from sluiced"), std::string::npos);
  conn.reset();
}

TEST(ClientRaw, SendRawWritesTheBytesAsGiven) {
  FakeServer server;
  std::string received;
  server.Serve([&received](Peer& peer) {
    peer.Handshake();
    // The bytes arrive unchanged: a frame sent raw decodes as that frame.
    const wire::Frame* f = peer.Next();
    if (f != nullptr) received = wire::BodyName(f->body_type());
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = MustConnect(server);
  ASSERT_NE(conn, nullptr);
  ASSERT_TRUE(conn->SendRaw(PublishAckFrame(1, 1)).ok());
  conn.reset();
  server.Join();
  EXPECT_EQ(received, "PublishAck");
}

// --- plugin workers: a socket pair and bundles -------------------------------------------------------

std::string BundleAckFrame(uint64_t request_id, wire::BundleStatus status, std::string_view message) {
  flatbuffers::FlatBufferBuilder fbb;
  auto m = fbb.CreateString(message.data(), message.size());
  wire::FinishFrame(fbb, Body::BundleAck, wire::CreateBundleAck(fbb, request_id, status, m).Union());
  return Bytes(fbb);
}

std::string_view VecView(const flatbuffers::Vector<uint8_t>* v) {
  return v == nullptr ? std::string_view()
                      : std::string_view(reinterpret_cast<const char*>(v->data()), v->size());
}

TEST(ClientFromFd, HelloOverASocketPairThenPipelinedBundles) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  std::thread server([fd = sv[0]] {
    Peer peer(fd);
    peer.Handshake();
    const wire::Frame* f = peer.Expect(Body::Bundle);
    ASSERT_NE(f, nullptr);
    const auto* b = f->body_as_Bundle();
    EXPECT_EQ(b->consumer_id(), 7u);
    EXPECT_EQ(b->delivery_id(), 8u);
    EXPECT_EQ(b->version(), 99u);
    ASSERT_NE(b->reads(), nullptr);
    ASSERT_EQ(b->reads()->size(), 2u);
    EXPECT_EQ(VecView(b->reads()->Get(0)->key()), "a");
    EXPECT_EQ(b->reads()->Get(0)->version(), 5u);
    EXPECT_EQ(b->reads()->Get(1)->version(), 0u);
    ASSERT_NE(b->writes(), nullptr);
    ASSERT_EQ(b->writes()->size(), 2u);
    EXPECT_EQ(VecView(b->writes()->Get(0)->key()), "a");
    EXPECT_EQ(VecView(b->writes()->Get(0)->value()), std::string("v\0w", 3));
    EXPECT_FALSE(b->writes()->Get(0)->delete_());
    EXPECT_TRUE(b->writes()->Get(1)->delete_());
    ASSERT_NE(b->publishes(), nullptr);
    ASSERT_EQ(b->publishes()->size(), 1u);
    const wire::Envelope* e = b->publishes()->Get(0);
    EXPECT_EQ(View(e->topic()), "out");
    EXPECT_EQ(View(e->causation_id()), "cause");
    ASSERT_NE(e->id(), nullptr);
    EXPECT_EQ(e->id()->lo(), 2u);
    EXPECT_EQ(b->reply_token(), 12u);
    ASSERT_NE(b->reply(), nullptr);
    EXPECT_EQ(VecView(b->reply()->payload()), "answer");
    uint64_t first = b->request_id();
    f = peer.Expect(Body::Bundle);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->body_as_Bundle()->reads(), nullptr);  // empty lists are left out
    peer.Send(BundleAckFrame(first, wire::BundleStatus::Committed, ""));
    EXPECT_TRUE(peer.WaitForEof());
  });

  ConnectOptions options;
  options.name = "plugin test[0]";
  auto conn = Connection::FromFd(sv[1], options);
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  EXPECT_EQ((*conn)->server_version(), "sluiced 9.9.9");
  EXPECT_FALSE((*conn)->TakeBundleAck().has_value());

  BundleMessage bundle;
  bundle.consumer_id = 7;
  bundle.delivery_id = 8;
  bundle.version = 99;
  bundle.reads = {{"a", 5}, {"b", 0}};
  bundle.writes = {{"a", std::string("v\0w", 3), false}, {"c", "", true}};
  OutMessage out;
  out.topic = "out";
  out.causation_id = "cause";
  out.id = Uuid{1, 2};
  bundle.publishes.push_back(out);
  bundle.reply_token = 12;
  OutMessage reply;
  reply.payload = "answer";
  bundle.reply = reply;
  auto first = (*conn)->BundleAsync(bundle);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto second = (*conn)->BundleAsync(BundleMessage{.consumer_id = 7, .delivery_id = 9, .version = 100});
  ASSERT_TRUE(second.ok());
  EXPECT_EQ((*conn)->bundles_outstanding(), 2u);

  std::optional<BundleAck> ack;
  auto deadline = std::chrono::steady_clock::now() + 3s;
  while (!ack && std::chrono::steady_clock::now() < deadline) {
    Status s = (*conn)->Poll(100ms);
    ASSERT_TRUE(s.ok() || s.code() == StatusCode::kTimeout) << s.ToString();
    ack = (*conn)->TakeBundleAck();
  }
  ASSERT_TRUE(ack.has_value());
  EXPECT_EQ(ack->request_id, *first);
  EXPECT_TRUE(ack->error.ok());
  EXPECT_EQ(ack->status, wire::BundleStatus::Committed);
  EXPECT_EQ((*conn)->bundles_outstanding(), 1u);
  (*conn).reset();
  server.join();
}

TEST(ClientFromFd, AnswersComeBackInArrivalOrder) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  std::thread server([fd = sv[0]] {
    Peer peer(fd);
    peer.Handshake();
    const wire::Frame* f = peer.Expect(Body::Bundle);
    ASSERT_NE(f, nullptr);
    uint64_t first = f->body_as_Bundle()->request_id();
    f = peer.Expect(Body::Bundle);
    ASSERT_NE(f, nullptr);
    uint64_t second = f->body_as_Bundle()->request_id();
    peer.Send(BundleAckFrame(first, wire::BundleStatus::Conflict, "key a changed"));
    peer.Send(ErrorFrame(second, ErrorCode::PermissionDenied, "not a plugin connection", false));
    EXPECT_TRUE(peer.WaitForEof());
  });
  auto conn = Connection::FromFd(sv[1]);
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  auto first = (*conn)->BundleAsync(BundleMessage{.consumer_id = 1, .delivery_id = 1, .version = 1});
  auto second = (*conn)->BundleAsync(BundleMessage{.consumer_id = 1, .delivery_id = 2, .version = 2});
  ASSERT_TRUE(first.ok() && second.ok());
  std::vector<BundleAck> acks;
  auto deadline = std::chrono::steady_clock::now() + 3s;
  while (acks.size() < 2 && std::chrono::steady_clock::now() < deadline) {
    Status s = (*conn)->Poll(100ms);
    ASSERT_TRUE(s.ok() || s.code() == StatusCode::kTimeout) << s.ToString();
    while (auto a = (*conn)->TakeBundleAck()) acks.push_back(std::move(*a));
  }
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[0].request_id, *first);
  EXPECT_TRUE(acks[0].error.ok());
  EXPECT_EQ(acks[0].status, wire::BundleStatus::Conflict);
  EXPECT_EQ(acks[0].message, "key a changed");
  EXPECT_EQ(acks[1].request_id, *second);
  EXPECT_EQ(acks[1].error.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(acks[1].error.message(), "not a plugin connection");
  EXPECT_EQ((*conn)->bundles_outstanding(), 0u);
  EXPECT_FALSE((*conn)->closed());
  // Nothing more comes: Poll times out.
  EXPECT_EQ((*conn)->Poll(20ms).code(), StatusCode::kTimeout);
  (*conn).reset();
  server.join();
}

TEST(ClientFromFd, RefusesABadFdAndClosesItOnAFailedHello) {
  auto bad = Connection::FromFd(-1);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);

  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ::close(sv[0]);  // nobody at the other end
  ConnectOptions options;
  options.timeout = 200ms;
  auto conn = Connection::FromFd(sv[1], options);
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), StatusCode::kUnavailable) << conn.status().ToString();
  // The fd was taken over and closed.
  EXPECT_EQ(::fcntl(sv[1], F_GETFD), -1);
}

}  // namespace
}  // namespace sluice::client

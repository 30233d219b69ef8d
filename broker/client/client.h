// SPDX-License-Identifier: MIT
//
// The C++ client library: one Connection is one Unix stream socket to sluiced (broker or admin socket)
// speaking the wire protocol of broker/wire/protocol.fbs. Calls are synchronous and built on poll():
// a call that waits (Publish, WaitPublishAck, Subscribe, Receive, Request, Admin, Flush) blocks at most
// its timeout and never starts a thread. Frames arrive interleaved (a Deliver between two PublishAcks,
// a Reply while waiting for an ack), so whatever arrives while one call waits is kept for the call that
// wants it: deliveries in a queue, acks of asynchronous publishes in arrival order, and the answers of
// the waiting request by request_id. An answer that arrives after its call timed out is dropped.
//
// Output is buffered: PublishAsync, RequestAsync, BundleAsync, Ack, Nack, AddCredit and Reply only queue their
// frame; the queue is written by the next call that waits, by Flush() or WriteQueued(), or as soon as it passes 64 KiB,
// so pipelined frames leave in few large writes. While writing, the connection keeps reading, so a peer that writes to us
// before it reads can never deadlock it.
//
// Failure modes, each a Status:
//   - connect: "cannot connect to PATH: strerror (is sluiced running?)" (kUnavailable for a missing
//     socket or no listener), kPermissionDenied, kTimeout when no Hello comes in time;
//   - a server Error for one request is that call's status (StatusFor(code, message));
//   - a fatal server Error, a frame from the server that fails the decoder (kProtocol), or the server
//     closing the socket ("connection closed by sluiced", kUnavailable) breaks the connection: every
//     pending and later call returns that status, after the deliveries and acks received before it;
//   - a frame larger than the server accepts is refused locally (kInvalidArgument naming the limit) and
//     the connection stays usable;
//   - waits return kTimeout.
//
// Thread-compatible: a Connection may move between threads, but only one thread may use it at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "broker/status.h"
#include "broker/uuid.h"
#include "broker/wire/codec.h"

namespace sluice::client {

struct ConnectOptions {
  std::string name = "sluice-client";              // sent in Hello; shows up in `sluicectl status`
  std::chrono::milliseconds timeout{5000};         // connect + Hello; also Publish and Subscribe waits
  size_t max_frame_bytes = wire::kDefaultMaxFrameBytes;  // the largest frame we accept (>= 1 KiB)
};

// A message to publish, to send as a Request, or to answer with. Empty strings are left out of the
// envelope (the protocol treats an absent string as empty). `payload` is normally a FlatBuffer of
// `type`; it is placed 8-byte aligned so the receiver can read it in place.
struct OutMessage {
  std::string topic;
  std::string key;
  std::string type;
  std::string correlation_id;
  std::string causation_id;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string payload;
  std::optional<Uuid> id;  // absent: the broker assigns a UUIDv7
};

struct PublishAck {
  uint64_t request_id = 0;
  uint64_t seq = 0;
  Uuid id;
  bool duplicate = false;  // the id was seen within the dedupe window; seq is the original's
};

struct SubscribeOptions {
  std::string topic;
  std::string subscription;
  wire::StartKind start = wire::StartKind::Latest;
  uint64_t start_seq = 0;
  int64_t start_time_us = 0;
  wire::Ordering ordering = wire::Ordering::None;
  uint32_t max_deliveries = 0;  // 0 = server default
  uint32_t ack_wait_ms = 0;     // 0 = server default
  uint32_t credit = 64;         // initial credit; the caller tops it up with AddCredit()
  uint32_t max_crashes = 0;     // 0 = server default; plugin workers pass their [[plugin]] max_crashes
  // Only these envelope types are delivered; the subscription acks the others (empty: every type).
  // The newest consumer's types apply to the whole subscription.
  std::vector<std::string> types;
};

// One Deliver frame. Owns a copy of the envelope bytes (8-byte aligned, already verified by the frame
// decoder), so it stays valid however long the caller keeps it. Move-only.
class Delivery {
 public:
  Delivery(Delivery&&) noexcept = default;
  Delivery& operator=(Delivery&&) noexcept = default;
  Delivery(const Delivery&) = delete;
  Delivery& operator=(const Delivery&) = delete;

  uint64_t consumer_id = 0;
  uint64_t delivery_id = 0;    // ack or nack by this id
  uint32_t delivery_count = 0; // 1 on the first delivery
  uint64_t reply_token = 0;    // non-zero for a Request: answer with Connection::Reply

  // Valid while this Delivery lives (not after it has been moved from).
  const wire::Envelope& envelope() const;
  std::string_view envelope_bytes() const;

  Uuid id() const;
  uint64_t seq() const;
  int64_t publish_time_us() const;
  std::string_view topic() const;
  std::string_view key() const;
  std::string_view type() const;
  std::string_view correlation_id() const;
  std::string_view causation_id() const;
  std::string_view payload() const;
  // The value of the first header named `name`; nullopt when there is none.
  std::optional<std::string_view> header(std::string_view name) const;

 private:
  friend class Connection;
  Delivery() = default;

  std::unique_ptr<uint64_t[]> storage_;  // uint64_t gives the 8-byte alignment FlatBuffers needs
  size_t size_ = 0;
};

// A plugin handler's effects (protocol.fbs, Bundle): the writes to its keyspace with the versions of the
// keys it read, its publishes (each with its derived id set) and its reply, committed by the broker
// together with the ack of delivery `delivery_id`. Only a plugin worker's connection may send one.
struct KvReadRecord {
  std::string key;
  uint64_t version = 0;  // 0: the key was absent
};
struct KvWriteRecord {
  std::string key;
  std::string value;
  bool erase = false;
};
struct BundleMessage {
  uint64_t consumer_id = 0;
  uint64_t delivery_id = 0;
  uint64_t version = 0;  // stamped on every written key; unique per bundle, non-zero
  std::vector<KvReadRecord> reads;
  std::vector<KvWriteRecord> writes;
  std::vector<OutMessage> publishes;
  uint64_t reply_token = 0;  // the input's Deliver.reply_token; 0: no reply
  std::optional<OutMessage> reply;
  std::string reply_error;
};

// The answer to one BundleAsync(): the broker's BundleAck, or (error not OK) its Error frame for the
// request, e.g. kPermissionDenied on a connection that is not a plugin worker's.
struct BundleAck {
  uint64_t request_id = 0;
  Status error;
  wire::BundleStatus status = wire::BundleStatus::Committed;
  std::string message;
};

// The answer to a Request. `error` non-empty means the responder failed the request; the other
// fields then hold whatever envelope it sent along (often nothing).
struct ReplyMessage {
  std::string error;
  std::string topic;
  std::string key;
  std::string type;
  std::string correlation_id;
  std::string causation_id;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string payload;
  Uuid id;
  uint64_t seq = 0;
  int64_t publish_time_us = 0;
};

// The answer to one RequestAsync(): the Reply, or (error not OK) the server's Error for the request,
// e.g. kTimeout when no reply came within the request's timeout or kUnavailable with no consumer.
struct RequestAnswer {
  uint64_t request_id = 0;
  Status error;
  ReplyMessage reply;
};

class Connection {
 public:
  // Connects to `socket` and runs the Hello exchange within options.timeout. A server Error during
  // Hello (e.g. UnsupportedVersion) is returned as the status, with the server's message.
  static Result<std::unique_ptr<Connection>> Connect(const std::filesystem::path& socket,
                                                     const ConnectOptions& options = {});
  // The same over a socket that is already connected, such as the end of a socket pair a plugin worker
  // inherits from sluiced. Takes ownership of `fd` (closed on failure too), makes it non-blocking and
  // close-on-exec, and runs the Hello exchange.
  static Result<std::unique_ptr<Connection>> FromFd(int fd, const ConnectOptions& options = {});

  // Writes what is still queued if the socket takes it without waiting, then closes the socket.
  // Use Close() to be sure queued frames (an Ack) went out.
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  const std::string& server_version() const { return server_version_; }
  uint32_t server_protocol_version() const { return server_protocol_version_; }
  // The wait of Publish, Subscribe and Flush (initially ConnectOptions::timeout).
  void set_timeout(std::chrono::milliseconds timeout) { options_.timeout = timeout; }
  // The largest frame body the server accepts (its Hello's max_frame_bytes, or ours when it names
  // none); larger outgoing frames are refused locally.
  size_t send_limit() const { return send_limit_; }

  // Publishes and waits (options.timeout) for the PublishAck, or the Error for this request.
  Result<PublishAck> Publish(const OutMessage& message);
  // Queues a Publish and returns its request_id; collect the outcome with WaitPublishAck().
  Result<uint64_t> PublishAsync(const OutMessage& message);
  // The outcome of the next asynchronous publish to be answered, in arrival order: its ack, or the
  // server's Error for it as the status (last_async_request_id() names the request either way).
  // Returns kInvalidArgument at once when no asynchronous publish is outstanding.
  Result<PublishAck> WaitPublishAck(std::chrono::milliseconds timeout);
  uint64_t last_async_request_id() const { return last_async_request_id_; }
  // Asynchronous publishes sent and not yet returned by WaitPublishAck().
  size_t async_publishes_outstanding() const { return async_outstanding_ + async_done_.size(); }

  // Creates or joins the subscription and returns the consumer_id (waits options.timeout).
  Result<uint64_t> Subscribe(const SubscribeOptions& options);
  // The next delivery, waiting up to `timeout` (0 = only what has arrived; kTimeout when none).
  Result<Delivery> Receive(std::chrono::milliseconds timeout);

  // Fire-and-forget frames (queued; see the file comment). The server answers a bad one with a
  // non-fatal Error, kept for TakeError().
  Status Ack(uint64_t consumer_id, std::span<const uint64_t> delivery_ids);
  Status Nack(uint64_t consumer_id, uint64_t delivery_id, uint32_t delay_ms, bool reject,
              std::string_view error);
  Status AddCredit(uint64_t consumer_id, uint32_t credit);

  // Sends `message` as a Request and waits for the Reply: the server is told `timeout`, and this waits
  // a little longer (kRequestTimeoutGrace) so that the server's own timeout Error, which says more (no
  // subscription on the topic, say), comes first. A Reply carrying an error is returned as a
  // ReplyMessage with `error` set; the server's Error frame (no consumer, timeout) is returned as the
  // status.
  Result<ReplyMessage> Request(const OutMessage& message, std::chrono::milliseconds timeout);
  static constexpr std::chrono::milliseconds kRequestTimeoutGrace{500};
  // Answers a Deliver that carried `reply_token`. A non-empty `error` fails the request.
  Status Reply(uint64_t reply_token, const OutMessage& reply, std::string_view error = {});
  // Pipelined requests: queues a Request (the server is told `timeout` and answers with a kTimeout
  // Error when no reply comes within it) and returns its request_id. Collect the answers with
  // TakeReply() after Poll()/PollUntil() or any other call that waits. When the connection breaks,
  // Poll() returns its status and the requests still outstanding get no answer.
  Result<uint64_t> RequestAsync(const OutMessage& message, std::chrono::milliseconds timeout);
  // The next answered asynchronous request, in arrival order; nullopt when none has been answered yet.
  std::optional<RequestAnswer> TakeReply();
  // Asynchronous requests sent and not yet returned by TakeReply().
  size_t requests_outstanding() const { return requests_outstanding_ + replies_done_.size(); }

  // Plugin workers: queues a Bundle and returns its request_id. Bundles pipeline; collect the answers
  // with TakeBundleAck() after Poll() or any other call that waits.
  Result<uint64_t> BundleAsync(const BundleMessage& bundle);
  // The next answered bundle, in arrival order; nullopt when none has been answered yet.
  std::optional<BundleAck> TakeBundleAck();
  // Bundles sent and not yet returned by TakeBundleAck().
  size_t bundles_outstanding() const { return bundles_outstanding_ + bundles_done_.size(); }

  // Writes what is queued and waits up to `timeout` for frames to arrive, which are queued for the calls
  // that take them (Receive, TakeBundleAck, ...). OK after a read, kTimeout when nothing came, the
  // broken status once broken. Lets a caller wait for "whatever comes next" in one place.
  Status Poll(std::chrono::milliseconds timeout);
  // Poll() with an absolute deadline, not rounded up to a whole millisecond (a paced sender wakes on
  // time, within the kernel's timer slack).
  Status PollUntil(std::chrono::steady_clock::time_point deadline);
  // Deliveries received and not yet taken by Receive().
  size_t deliveries_queued() const { return deliveries_.size(); }

  // An admin command (admin socket only). AdminResponse.code != 0 becomes a Status with the response's
  // message: 2 (bad arguments) kInvalidArgument, 3 (unknown command) kNotFound, others (1: the
  // operation failed) kUnavailable.
  Result<nlohmann::json> Admin(std::string_view command,
                               const nlohmann::json& args = nlohmann::json::object(),
                               std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Non-fatal Errors that named no pending request (an Ack for an unknown consumer), oldest first;
  // the oldest ones are dropped beyond 64. nullopt when there is none.
  std::optional<Status> TakeError();

  // Tests: queues raw bytes and writes them like Flush().
  Status SendRaw(std::string_view bytes);
  // Writes every queued frame, waiting up to options.timeout.
  Status Flush();
  // Writes as much of the queued output as the socket takes now, without waiting for the rest.
  Status WriteQueued();
  // Whether queued output is still waiting for the socket (after WriteQueued() met a full buffer).
  bool has_queued_output() const { return out_begin_ < out_.size(); }
  // Flushes, then closes the socket. Later calls return kUnavailable.
  Status Close();

  int fd() const { return fd_; }
  // True once the connection is broken (server Error, peer close, Close()).
  bool closed() const { return !broken_.ok(); }

 private:
  using Clock = std::chrono::steady_clock;
  enum class Pending { kPublish, kPublishAsync, kSubscribe, kRequest, kRequestAsync, kAdmin, kBundle };
  struct AdminAnswer {
    int code = 0;
    std::string message;
    std::string result_json;
  };
  // What came back for one synchronous request; `status` is not OK when an Error frame answered it.
  struct Answer {
    Status status;
    PublishAck ack;
    uint64_t consumer_id = 0;
    ReplyMessage reply;
    AdminAnswer admin;
    BundleAck bundle;
  };

  Connection(int fd, const ConnectOptions& options);

  // `peer` names the other end in the timeout message (a socket path, "fd 3").
  Status RunHello(const std::string& peer);
  // Checks the frame built in fbb_ against send_limit_ and appends it to the output queue (first
  // waiting for the queue to drain when it is very long). `what` names the frame in errors.
  Status QueueBuiltFrame(const char* what);
  flatbuffers::Offset<wire::Envelope> BuildEnvelope(const OutMessage& message);
  // Waits until `deadline` for the answer to `request_id` (its frame is already queued); `answer`
  // and `timeout` word the kTimeout message.
  Result<Answer> Call(uint64_t request_id, Pending kind, Clock::time_point deadline,
                      std::string_view answer, std::chrono::milliseconds timeout);
  // Writes without waiting once enough output is queued. Returns the connection's state.
  Status MaybeWrite();

  // Writes queued output and reads what has arrived, waiting until `deadline` for progress. With
  // `until_flushed`, returns once the output queue is empty; otherwise once one read happened.
  // Returns kTimeout at the deadline, and the broken status once broken.
  Status Pump(Clock::time_point deadline, bool until_flushed);
  // One non-blocking write of the queue. Returns false when the socket would block or broke.
  bool TryWrite();
  // Reads once into the decoder and dispatches every complete frame. `until_eof`: the peer is known to
  // have closed, so running out of data also ends the connection.
  void ReadAndDispatch(bool until_eof);
  void Dispatch(const wire::Frame& frame);
  bool Expect(uint64_t request_id, std::initializer_list<Pending> kinds, wire::Body body);
  void Complete(uint64_t request_id, Answer answer);
  Status ClosedStatus() const;
  // Enters the broken state for good: closes the socket and drops queued output.
  void Break(Status status);

  Clock::time_point DeadlineAfter(std::chrono::milliseconds timeout) const;
  // Builds and queues a Request frame (Request and RequestAsync).
  Status QueueRequest(uint64_t request_id, const OutMessage& message, std::chrono::milliseconds timeout);
  uint64_t NextRequestId() { return next_request_id_++; }

  int fd_;
  ConnectOptions options_;
  size_t send_limit_;
  std::string server_version_;
  uint32_t server_protocol_version_ = 0;
  uint32_t server_max_frame_bytes_ = 0;
  bool hello_done_ = false;

  wire::FrameDecoder decoder_;
  flatbuffers::FlatBufferBuilder fbb_;
  std::vector<flatbuffers::Offset<wire::Header>> header_offsets_;  // reused by BuildEnvelope
  std::string out_;          // queued output; [out_begin_, size) is unwritten
  size_t out_begin_ = 0;

  uint64_t next_request_id_ = 1;
  std::unordered_map<uint64_t, Pending> pending_;
  std::unordered_map<uint64_t, Answer> answers_;
  size_t async_outstanding_ = 0;  // pending_ entries of kind kPublishAsync
  // Answered asynchronous publishes in arrival order: (request_id, ack or error).
  std::deque<std::pair<uint64_t, Result<PublishAck>>> async_done_;
  uint64_t last_async_request_id_ = 0;
  size_t bundles_outstanding_ = 0;  // pending_ entries of kind kBundle
  std::deque<BundleAck> bundles_done_;
  size_t requests_outstanding_ = 0;  // pending_ entries of kind kRequestAsync
  std::deque<RequestAnswer> replies_done_;
  std::deque<Delivery> deliveries_;
  std::deque<Status> stray_errors_;
  std::string last_error_message_;  // of the latest non-fatal Error frame, for the close message
  Status broken_;  // Invariant: once not OK it stays so, and fd_ is closed.
};

}  // namespace sluice::client

// SPDX-License-Identifier: MIT
//
// Connection: one accepted Unix stream socket on the event loop, speaking size-prefixed frames. It reads
// into a FrameDecoder (which verifies every frame before anyone sees it) and hands each frame to its
// FrameHandler; it writes frames through an output buffer that is flushed once per loop iteration, so
// a batch of PublishAcks leaves in one write. A decoding failure sends one fatal Error frame naming the
// problem and closes this connection only.
//
// Backpressure: when the bytes queued for the peer exceed the high watermark, the connection stops
// reading from the peer until they drain below the low watermark, and tells the handler (which stops
// pushing deliveries), so a client that does not read cannot make the daemon buffer without bound.
//
// Lifetime: owned by a shared_ptr (the ConnectionSet); Close() is asynchronous and the handler's
// OnClosed runs once, after which the object is released. Callbacks that outlive the connection hold a
// weak_ptr. Loop thread only.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "broker/status.h"
#include "broker/wire/codec.h"

namespace sluice::net {

class Connection;
class ConnectionSet;

class FrameHandler {
 public:
  virtual ~FrameHandler() = default;
  virtual void OnFrame(Connection& conn, const wire::Frame& frame) = 0;
  // Output drained below the low watermark after a pause (or not paused at all any more).
  virtual void OnWritable(Connection& /*conn*/) {}
  // The connection is gone: `reason` is OK for a clean close by either side.
  virtual void OnClosed(Connection& conn, const Status& reason) = 0;
};

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  static constexpr size_t kHighWatermark = 8u << 20;
  static constexpr size_t kLowWatermark = 2u << 20;

  // Takes ownership of an accepted, initialized pipe handle.
  Connection(uint64_t id, uv_pipe_t* pipe, size_t max_frame_bytes, ConnectionSet* set);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  void Start(FrameHandler* handler);

  uint64_t id() const { return id_; }
  const PeerCredentials& peer() const { return peer_; }
  bool closing() const { return closing_; }
  // The handle is being released; nothing more is sent or received.
  bool closed() const { return self_while_closing_ != nullptr || pipe_ == nullptr; }
  bool congested() const { return QueuedBytes() >= kHighWatermark; }
  size_t QueuedBytes() const;

  // Queues one complete size-prefixed frame (as built by wire::FinishFrame).
  void Send(const uint8_t* data, size_t size);
  void Send(const flatbuffers::FlatBufferBuilder& fbb) { Send(fbb.GetBufferPointer(), fbb.GetSize()); }
  // Sends an Error frame; when `fatal`, closes after it is written.
  void SendError(uint64_t request_id, wire::ErrorCode code, std::string_view message, bool fatal);

  // Stops reading, writes what is queued, then closes. Idempotent.
  void Close(const Status& reason);
  // Closes now, dropping what is queued: nothing more can reach the peer (a write failed). Also cuts
  // short a Close that is still writing.
  void Abort(const Status& reason);
  // The peer's process is known to have exited: drops what is queued for it, but still reads what it
  // wrote before it went, up to its end-of-file, which closes the connection.
  void DropOutput();

  void set_max_frame_bytes(size_t n) { decoder_.set_max_frame_bytes(n); }

  // Writes out everything queued. Called once per loop iteration by the owning set.
  void Flush();
  bool has_pending_output() const { return !out_.empty(); }

 private:
  struct WriteRequest;
  static void OnAlloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void OnRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void OnWrite(uv_write_t* req, int status);
  static void OnHandleClosed(uv_handle_t* h);
  void ProcessFrames();
  void FinishClose();
  void UpdateReading();

  uint64_t id_;
  uv_pipe_t* pipe_;
  ConnectionSet* set_;
  FrameHandler* handler_ = nullptr;
  wire::FrameDecoder decoder_;
  PeerCredentials peer_;
  std::vector<char> out_;          // frames queued since the last Flush
  size_t in_write_bytes_ = 0;      // handed to uv_write, not yet completed
  bool reading_ = false;
  bool paused_ = false;            // stopped reading because of congestion
  bool closing_ = false;
  bool close_after_flush_ = false;
  Status close_reason_;
  // Keeps this object alive until libuv has released the handle.
  std::shared_ptr<Connection> self_while_closing_;
};

// The live connections of one listener, and the once-per-iteration flush of their output.
class ConnectionSet {
 public:
  explicit ConnectionSet(uv_loop_t* loop);
  ~ConnectionSet();

  std::shared_ptr<Connection> Add(uv_pipe_t* pipe, size_t max_frame_bytes, FrameHandler* handler);
  void Remove(uint64_t id);
  std::shared_ptr<Connection> Find(uint64_t id) const;
  size_t size() const { return conns_.size(); }
  // Asks every connection to close; OnClosed follows for each.
  void CloseAll(const Status& reason);
  // Marks a connection as having output; the check handle flushes it after this iteration's callbacks.
  void MarkDirty(Connection* conn);

 private:
  static void OnCheck(uv_check_t* check);
  static void OnPrepare(uv_prepare_t* prepare);
  void FlushDirty();

  uv_loop_t* loop_;
  // Output is flushed after the poll phase (for frames produced by I/O callbacks) and before it (for
  // frames produced by timers), so nothing waits in a buffer while the loop sleeps.
  uv_check_t* check_;
  uv_prepare_t* prepare_;
  std::unordered_map<uint64_t, std::shared_ptr<Connection>> conns_;
  std::vector<std::weak_ptr<Connection>> dirty_;
  uint64_t next_id_ = 1;
};

}  // namespace sluice::net

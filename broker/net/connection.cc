// SPDX-License-Identifier: MIT
#include "broker/net/connection.h"

#include <sys/socket.h>

#include <cstring>

#include <fmt/format.h>

namespace sluice::net {

// A uv_write in flight and the bytes it writes; freed in OnWrite.
struct Connection::WriteRequest {
  uv_write_t req;
  std::vector<char> data;
  Connection* conn;
};

namespace {

constexpr size_t kReadChunk = 64 * 1024;

}  // namespace

Connection::Connection(uint64_t id, uv_pipe_t* pipe, size_t max_frame_bytes, ConnectionSet* set)
    : id_(id), pipe_(pipe), set_(set), decoder_(max_frame_bytes) {
  pipe_->data = this;
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(pipe_), &fd) == 0) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
      peer_ = {cred.pid, cred.uid, cred.gid};
    }
  }
}

Connection::~Connection() = default;

void Connection::Start(FrameHandler* handler) {
  handler_ = handler;
  UpdateReading();
}

size_t Connection::QueuedBytes() const { return out_.size() + in_write_bytes_; }

void Connection::UpdateReading() {
  bool want = !closing_ && !paused_;
  if (want && !reading_) {
    uv_read_start(reinterpret_cast<uv_stream_t*>(pipe_), OnAlloc, OnRead);
    reading_ = true;
  } else if (!want && reading_) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(pipe_));
    reading_ = false;
  }
}

void Connection::OnAlloc(uv_handle_t* h, size_t /*suggested*/, uv_buf_t* buf) {
  auto* self = static_cast<Connection*>(h->data);
  auto tail = self->decoder_.WritableTail(kReadChunk);
  buf->base = tail.data();
  buf->len = tail.size();
}

void Connection::OnRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* /*buf*/) {
  auto* self = static_cast<Connection*>(s->data);
  if (nread > 0) {
    self->decoder_.Commit(static_cast<size_t>(nread));
    // The handler may close us while we process; keep the object alive until we return.
    auto keep = self->shared_from_this();
    self->ProcessFrames();
  } else if (nread == UV_EOF) {
    self->Close(Status::Ok());
  } else if (nread < 0) {
    self->Close(Unavailable(fmt::format("read failed: {}", uv_strerror(static_cast<int>(nread)))));
  }
}

void Connection::ProcessFrames() {
  while (!closing_) {
    const wire::Frame* frame = nullptr;
    Status error;
    auto outcome = decoder_.Next(&frame, &error);
    if (outcome == wire::FrameDecoder::Outcome::kNeedMore) break;
    if (outcome == wire::FrameDecoder::Outcome::kError) {
      bool too_large = error.message().find("exceeds max_frame_bytes") != std::string::npos;
      SendError(0, too_large ? wire::ErrorCode::FrameTooLarge : wire::ErrorCode::Malformed,
                error.message(), /*fatal=*/true);
      close_reason_ = error;
      break;
    }
    handler_->OnFrame(*this, *frame);
    if (congested() && !paused_) {
      paused_ = true;
      UpdateReading();
    }
    // A paused connection keeps already-buffered frames for when it resumes.
    if (paused_) break;
  }
}

void Connection::Send(const uint8_t* data, size_t size) {
  if (closing_ && !close_after_flush_) return;
  bool was_empty = out_.empty();
  out_.insert(out_.end(), reinterpret_cast<const char*>(data), reinterpret_cast<const char*>(data) + size);
  if (was_empty) set_->MarkDirty(this);
}

void Connection::SendError(uint64_t request_id, wire::ErrorCode code, std::string_view message,
                           bool fatal) {
  flatbuffers::FlatBufferBuilder fbb(256);
  wire::BuildError(fbb, request_id, code, message, fatal);
  Send(fbb);
  if (fatal) {
    close_after_flush_ = true;
    closing_ = true;
    UpdateReading();
  }
}

void Connection::Flush() {
  if (out_.empty()) {
    if (close_after_flush_ && in_write_bytes_ == 0) FinishClose();
    return;
  }
  auto* stream = reinterpret_cast<uv_stream_t*>(pipe_);
  size_t offset = 0;
  // Most flushes fit in the socket buffer: write directly and queue only the remainder.
  if (in_write_bytes_ == 0) {
    uv_buf_t b = uv_buf_init(out_.data(), static_cast<unsigned>(out_.size()));
    int n = uv_try_write(stream, &b, 1);
    if (n > 0) offset = static_cast<size_t>(n);
    else if (n < 0 && n != UV_EAGAIN) {
      Abort(Unavailable(fmt::format("write failed: {}", uv_strerror(n))));
      return;
    }
  }
  if (offset < out_.size()) {
    auto* wr = new WriteRequest;
    wr->conn = this;
    wr->data.assign(out_.begin() + static_cast<ptrdiff_t>(offset), out_.end());
    wr->req.data = wr;
    uv_buf_t b = uv_buf_init(wr->data.data(), static_cast<unsigned>(wr->data.size()));
    in_write_bytes_ += wr->data.size();
    int rc = uv_write(&wr->req, stream, &b, 1, OnWrite);
    if (rc != 0) {
      in_write_bytes_ -= wr->data.size();
      delete wr;
      Abort(Unavailable(fmt::format("write failed: {}", uv_strerror(rc))));
      return;
    }
  }
  out_.clear();
  if (out_.capacity() > (1u << 20)) out_.shrink_to_fit();
  if (close_after_flush_ && in_write_bytes_ == 0) FinishClose();
}

void Connection::OnWrite(uv_write_t* req, int status) {
  auto* wr = static_cast<WriteRequest*>(req->data);
  Connection* self = wr->conn;
  self->in_write_bytes_ -= wr->data.size();
  delete wr;
  if (status < 0) {
    // UV_ECANCELED: the handle closed while the write was queued; Abort does nothing then.
    self->Abort(Unavailable(fmt::format("write failed: {}", uv_strerror(status))));
    return;
  }
  if (self->close_after_flush_ && self->in_write_bytes_ == 0 && self->out_.empty()) {
    self->FinishClose();
    return;
  }
  if (self->paused_ && self->QueuedBytes() <= kLowWatermark && !self->closing_) {
    self->paused_ = false;
    self->UpdateReading();
    auto keep = self->shared_from_this();
    if (self->handler_) self->handler_->OnWritable(*self);
    // Frames that arrived before the pause are still in the decoder.
    self->ProcessFrames();
  }
}

void Connection::Close(const Status& reason) {
  if (closing_ && !close_after_flush_) return;
  if (close_reason_.ok()) close_reason_ = reason;
  closing_ = true;
  UpdateReading();
  if (reason.ok() && (!out_.empty() || in_write_bytes_ > 0)) {
    // A clean close lets queued frames (a final Error, pending acks) reach the peer first.
    close_after_flush_ = true;
    set_->MarkDirty(this);
    return;
  }
  FinishClose();
}

void Connection::Abort(const Status& reason) {
  if (closed()) return;
  // Also ends a close that was waiting for its output to drain: that output can no longer leave.
  out_.clear();
  if (close_reason_.ok()) close_reason_ = reason;
  FinishClose();
}

void Connection::DropOutput() {
  out_.clear();
  // A write already handed to libuv cannot be taken back; it fails (EPIPE) and aborts.
  if (paused_ && QueuedBytes() <= kLowWatermark && !closing_) {
    paused_ = false;
    UpdateReading();
  }
  if (closing_ && close_after_flush_ && in_write_bytes_ == 0) FinishClose();
}

void Connection::FinishClose() {
  close_after_flush_ = false;
  closing_ = true;
  if (self_while_closing_ || pipe_ == nullptr) return;
  self_while_closing_ = shared_from_this();
  uv_close(reinterpret_cast<uv_handle_t*>(pipe_), OnHandleClosed);
}

void Connection::OnHandleClosed(uv_handle_t* h) {
  auto* self = static_cast<Connection*>(h->data);
  auto keep = std::move(self->self_while_closing_);
  delete reinterpret_cast<uv_pipe_t*>(h);
  self->pipe_ = nullptr;
  if (self->handler_) self->handler_->OnClosed(*self, self->close_reason_);
  self->set_->Remove(self->id_);
}

ConnectionSet::ConnectionSet(uv_loop_t* loop)
    : loop_(loop), check_(new uv_check_t), prepare_(new uv_prepare_t) {
  uv_check_init(loop_, check_);
  check_->data = this;
  uv_check_start(check_, OnCheck);
  uv_prepare_init(loop_, prepare_);
  prepare_->data = this;
  uv_prepare_start(prepare_, OnPrepare);
  // These handles alone must not keep the loop alive.
  uv_unref(reinterpret_cast<uv_handle_t*>(check_));
  uv_unref(reinterpret_cast<uv_handle_t*>(prepare_));
}

ConnectionSet::~ConnectionSet() {
  uv_check_stop(check_);
  uv_close(reinterpret_cast<uv_handle_t*>(check_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_check_t*>(h); });
  uv_prepare_stop(prepare_);
  uv_close(reinterpret_cast<uv_handle_t*>(prepare_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_prepare_t*>(h); });
}

std::shared_ptr<Connection> ConnectionSet::Add(uv_pipe_t* pipe, size_t max_frame_bytes,
                                               FrameHandler* handler) {
  auto conn = std::make_shared<Connection>(next_id_++, pipe, max_frame_bytes, this);
  conns_.emplace(conn->id(), conn);
  conn->Start(handler);
  return conn;
}

void ConnectionSet::Remove(uint64_t id) { conns_.erase(id); }

std::shared_ptr<Connection> ConnectionSet::Find(uint64_t id) const {
  auto it = conns_.find(id);
  return it == conns_.end() ? nullptr : it->second;
}

void ConnectionSet::CloseAll(const Status& reason) {
  std::vector<std::shared_ptr<Connection>> all;
  all.reserve(conns_.size());
  for (auto& [id, conn] : conns_) all.push_back(conn);
  for (auto& conn : all) conn->Close(reason);
}

void ConnectionSet::MarkDirty(Connection* conn) { dirty_.push_back(conn->weak_from_this()); }

void ConnectionSet::OnCheck(uv_check_t* check) { static_cast<ConnectionSet*>(check->data)->FlushDirty(); }

void ConnectionSet::OnPrepare(uv_prepare_t* prepare) {
  static_cast<ConnectionSet*>(prepare->data)->FlushDirty();
}

void ConnectionSet::FlushDirty() {
  // Flushing may mark connections dirty again (a close after flush): swap first.
  std::vector<std::weak_ptr<Connection>> dirty;
  dirty.swap(dirty_);
  for (auto& weak : dirty) {
    if (auto conn = weak.lock()) {
      if (!conn->closed()) conn->Flush();
    }
  }
}

}  // namespace sluice::net

// SPDX-License-Identifier: MIT
#include "broker/wire/codec.h"

#include <cstring>

#include <fmt/format.h>

namespace sluice::wire {
namespace {

// Nesting in protocol.fbs is at most Frame > Body > Envelope > [Header] > Header: 8 leaves headroom
// and bounds the verifier's recursion on hostile input.
constexpr flatbuffers::uoffset_t kMaxDepth = 16;
// Bounds the verifier's work on a frame crafted to hold millions of tiny tables.
constexpr flatbuffers::uoffset_t kMaxTables = 100000;

uint32_t ReadLength(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return flatbuffers::EndianScalar(v);
}

}  // namespace

Result<const Frame*> VerifyFrame(const uint8_t* data, size_t size, size_t max_frame_bytes) {
  if (size > max_frame_bytes) {
    return ProtocolError(
        fmt::format("frame of {} bytes exceeds max_frame_bytes ({})", size, max_frame_bytes));
  }
  if (size < 8) return ProtocolError(fmt::format("frame of {} bytes is too short", size));
  if (!flatbuffers::BufferHasIdentifier(data, FrameIdentifier())) {
    return ProtocolError("frame does not carry the sluice identifier \"SLF1\"");
  }
  flatbuffers::Verifier verifier(data, size, kMaxDepth, kMaxTables);
  if (!VerifyFrameBuffer(verifier)) {
    return ProtocolError("frame failed FlatBuffers verification (not a valid sluice Frame)");
  }
  const Frame* frame = GetFrame(data);
  if (frame->body_type() == Body::NONE || frame->body_type() > Body::MAX) {
    return ProtocolError(fmt::format("frame has unknown body type {}",
                                     static_cast<int>(frame->body_type())));
  }
  return frame;
}

FrameDecoder::FrameDecoder(size_t max_frame_bytes) : max_frame_bytes_(max_frame_bytes) {}

std::span<char> FrameDecoder::WritableTail(size_t min_size) {
  if (buf_.size() - end_ < min_size) {
    Compact();
    if (buf_.size() - end_ < min_size) buf_.resize(end_ + min_size);
  }
  return {buf_.data() + end_, buf_.size() - end_};
}

void FrameDecoder::Commit(size_t n) { end_ += n; }

void FrameDecoder::Append(std::string_view bytes) {
  auto tail = WritableTail(bytes.size());
  std::memcpy(tail.data(), bytes.data(), bytes.size());
  Commit(bytes.size());
}

void FrameDecoder::Compact() {
  if (begin_ == 0) return;
  std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
  end_ -= begin_;
  begin_ = 0;
}

FrameDecoder::Outcome FrameDecoder::Next(const Frame** frame, Status* error) {
  if (!failed_.ok()) {
    *error = failed_;
    return Outcome::kError;
  }
  size_t avail = end_ - begin_;
  if (avail < kLengthPrefixBytes) {
    if (avail == 0) begin_ = end_ = 0;
    return Outcome::kNeedMore;
  }
  uint32_t len = ReadLength(buf_.data() + begin_);
  // Checked before waiting for the body, so a hostile length never makes us buffer it.
  if (len > max_frame_bytes_) {
    failed_ = ProtocolError(
        fmt::format("frame of {} bytes exceeds max_frame_bytes ({})", len, max_frame_bytes_));
    *error = failed_;
    return Outcome::kError;
  }
  if (avail - kLengthPrefixBytes < len) return Outcome::kNeedMore;
  // FlatBuffers needs its buffer aligned to the largest scalar it holds (8 bytes).
  const char* body = buf_.data() + begin_ + kLengthPrefixBytes;
  if (reinterpret_cast<uintptr_t>(body) % 8 != 0) {
    if (buf_.size() < 8 + avail) buf_.resize(8 + avail);
    // Put the prefix at an offset such that the body that follows it is 8-aligned.
    size_t base = (8 - reinterpret_cast<uintptr_t>(buf_.data()) % 8) % 8;
    size_t shift = (base + 4) % 8;
    std::memmove(buf_.data() + shift, buf_.data() + begin_, avail);
    begin_ = shift;
    end_ = begin_ + avail;
    body = buf_.data() + begin_ + kLengthPrefixBytes;
  }
  auto verified = VerifyFrame(reinterpret_cast<const uint8_t*>(body), len, max_frame_bytes_);
  if (!verified.ok()) {
    failed_ = verified.status();
    *error = failed_;
    return Outcome::kError;
  }
  *frame = *verified;
  last_frame_bytes_ = kLengthPrefixBytes + len;
  begin_ += last_frame_bytes_;
  return Outcome::kFrame;
}

std::string_view BodyName(Body type) {
  if (type == Body::NONE || type > Body::MAX) return "unknown";
  return EnumNameBody(type);
}

void FinishFrame(flatbuffers::FlatBufferBuilder& fbb, Body type, flatbuffers::Offset<void> body) {
  auto frame = CreateFrame(fbb, type, body);
  FinishSizePrefixedFrameBuffer(fbb, frame);
}

void BuildError(flatbuffers::FlatBufferBuilder& fbb, uint64_t request_id, ErrorCode code,
                std::string_view message, bool fatal) {
  auto msg = fbb.CreateString(message.data(), message.size());
  auto err = CreateError(fbb, request_id, code, msg, fatal);
  FinishFrame(fbb, Body::Error, err.Union());
}

ErrorCode ErrorCodeFor(const Status& status) {
  switch (status.code()) {
    case StatusCode::kOk: return ErrorCode::Ok;
    case StatusCode::kInvalidArgument:
    case StatusCode::kAlreadyExists: return ErrorCode::InvalidArgument;
    case StatusCode::kNotFound: return ErrorCode::NotFound;
    case StatusCode::kLimitExceeded: return ErrorCode::LimitExceeded;
    case StatusCode::kStorageFull: return ErrorCode::StorageFull;
    case StatusCode::kUnavailable:
    case StatusCode::kConflict: return ErrorCode::Unavailable;
    case StatusCode::kPermissionDenied: return ErrorCode::PermissionDenied;
    case StatusCode::kTimeout: return ErrorCode::Timeout;
    case StatusCode::kProtocol: return ErrorCode::Malformed;
    default: return ErrorCode::Internal;
  }
}

Status StatusFor(ErrorCode code, std::string_view message) {
  std::string m(message);
  switch (code) {
    case ErrorCode::Ok: return Status::Ok();
    case ErrorCode::InvalidArgument: return InvalidArgument(m);
    case ErrorCode::NotFound: return NotFound(m);
    case ErrorCode::LimitExceeded: return LimitExceeded(m);
    case ErrorCode::StorageFull: return Status(StatusCode::kStorageFull, m);
    case ErrorCode::Unavailable: return Unavailable(m);
    case ErrorCode::PermissionDenied: return Status(StatusCode::kPermissionDenied, m);
    case ErrorCode::Timeout: return Status(StatusCode::kTimeout, m);
    case ErrorCode::Malformed:
    case ErrorCode::FrameTooLarge:
    case ErrorCode::UnsupportedVersion:
    case ErrorCode::HelloRequired: return ProtocolError(m);
    default: return Internal(m);
  }
}

}  // namespace sluice::wire

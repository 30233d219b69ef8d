// SPDX-License-Identifier: MIT
#include "broker/wire/codec.h"

#include <algorithm>
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
  // The verifier checks alignment relative to the start of what it is given; that only proves the
  // accessors' loads are aligned if the buffer itself sits on an 8-byte boundary.
  if (reinterpret_cast<uintptr_t>(data) % 8 != 0) {
    return Internal("VerifyFrame called on a buffer that is not 8-byte aligned");
  }
  if (size < kLengthPrefixBytes) {
    return ProtocolError(fmt::format("frame of {} bytes has no length prefix", size));
  }
  size_t len = ReadLength(reinterpret_cast<const char*>(data));
  if (len != size - kLengthPrefixBytes) {
    return ProtocolError(fmt::format("frame length prefix says {} bytes but {} follow", len,
                                     size - kLengthPrefixBytes));
  }
  // FlatBuffers cannot address 2 GiB or more, whatever the configuration allows.
  size_t limit = std::min<size_t>(max_frame_bytes, FLATBUFFERS_MAX_BUFFER_SIZE - 2 * kLengthPrefixBytes);
  if (len > limit) {
    return ProtocolError(fmt::format("frame of {} bytes exceeds max_frame_bytes ({})", len, limit));
  }
  if (len < 8) return ProtocolError(fmt::format("frame of {} bytes is too short", len));
  if (!SizePrefixedFrameBufferHasIdentifier(data)) {
    return ProtocolError("frame does not carry the sluice identifier \"SLF1\"");
  }
  // A size-prefixed FlatBuffer is aligned from its length prefix, not from the body after it, so the
  // verifier must see the prefix too.
  flatbuffers::Verifier verifier(data, size, kMaxDepth, kMaxTables);
  if (!VerifySizePrefixedFrameBuffer(verifier)) {
    return ProtocolError("frame failed FlatBuffers verification (not a valid sluice Frame)");
  }
  const Frame* frame = GetSizePrefixedFrame(data);
  if (frame->body_type() == Body::NONE || frame->body_type() > Body::MAX) {
    return ProtocolError(fmt::format("frame has unknown body type {}",
                                     static_cast<int>(frame->body_type())));
  }
  // The nested verifier checks the envelope's alignment relative to the envelope's own first byte; its
  // Uuid struct and 64-bit fields are only safe to read if that byte is itself 8-byte aligned.
  if (const Deliver* deliver = frame->body_as_Deliver();
      deliver != nullptr && reinterpret_cast<uintptr_t>(deliver->envelope()->data()) % 8 != 0) {
    return ProtocolError("Deliver envelope is not 8-byte aligned in the frame");
  }
  // FlatBuffers 2.0's verifier checks a vector's length field for 4-byte alignment, not its elements
  // for their own: a [ulong] must be checked here before its elements can be read (found by fuzzing).
  if (const Ack* ack = frame->body_as_Ack();
      ack != nullptr && ack->delivery_ids() != nullptr &&
      reinterpret_cast<uintptr_t>(ack->delivery_ids()->data()) % alignof(uint64_t) != 0) {
    return ProtocolError("Ack delivery_ids is not 8-byte aligned in the frame");
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
  // memcpy from or to a null pointer is undefined even for zero bytes.
  if (bytes.empty()) return;
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
  // FlatBuffers aligns a size-prefixed buffer from its length prefix: the prefix must start on an
  // 8-byte boundary (the largest scalar in protocol.fbs). A peer may send frames whose sizes are not
  // multiples of 8, so move the unread bytes down to an aligned offset when needed.
  if (reinterpret_cast<uintptr_t>(buf_.data() + begin_) % 8 != 0) {
    if (buf_.size() < 8 + avail) buf_.resize(8 + avail);
    size_t base = (8 - reinterpret_cast<uintptr_t>(buf_.data()) % 8) % 8;
    std::memmove(buf_.data() + base, buf_.data() + begin_, avail);
    begin_ = base;
    end_ = begin_ + avail;
  }
  auto verified = VerifyFrame(reinterpret_cast<const uint8_t*>(buf_.data() + begin_),
                              kLengthPrefixBytes + len, max_frame_bytes_);
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

flatbuffers::Offset<flatbuffers::Vector<uint8_t>> CreateNestedEnvelope(
    flatbuffers::FlatBufferBuilder& fbb, std::string_view envelope) {
  fbb.ForceVectorAlignment(envelope.size(), sizeof(uint8_t), 8);
  return fbb.CreateVector(reinterpret_cast<const uint8_t*>(envelope.data()), envelope.size());
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

Status CheckClientHello(const Hello& hello) {
  if (hello.protocol_version() != kProtocolVersion) {
    return ProtocolError(fmt::format("protocol version {} is not supported (this server speaks version {})",
                                     hello.protocol_version(), kProtocolVersion));
  }
  return Status::Ok();
}

void BuildServerHello(flatbuffers::FlatBufferBuilder& fbb, size_t max_frame_bytes,
                      std::string_view server_version) {
  auto name = fbb.CreateString("sluiced");
  auto version = fbb.CreateString(server_version.data(), server_version.size());
  auto hello = CreateHello(fbb, kProtocolVersion, name, static_cast<uint32_t>(max_frame_bytes), version);
  FinishFrame(fbb, Body::Hello, hello.Union());
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

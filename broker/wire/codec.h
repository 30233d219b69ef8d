// SPDX-License-Identifier: MIT
//
// The frame codec: the only place that turns bytes from a socket into a protocol Frame. A frame on the
// wire is a 32-bit little-endian length followed by that many bytes of a FlatBuffer with identifier
// "SLF1" and root Frame (protocol.fbs). Nothing reads a frame before FrameDecoder has checked its length
// against max_frame_bytes and run the FlatBuffers verifier over it.
//
// Failure modes, each a Status of code kProtocol whose message names the problem:
//   - a length above max_frame_bytes ("frame of N bytes exceeds max_frame_bytes (M)"),
//   - a zero or too-short length, a wrong file identifier, a buffer the verifier rejects,
//   - a Frame whose body is missing or of an unknown type,
//   - a Deliver whose nested envelope is not 8-byte aligned (build it with CreateNestedEnvelope()).
// After an error the decoder stays failed: the connection is to be closed.
//
// Thread-compatible: one decoder per connection, used by one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "broker/status.h"
#include "broker/wire/protocol_generated.h"

namespace sluice::wire {

inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr size_t kLengthPrefixBytes = 4;
inline constexpr size_t kMinMaxFrameBytes = 1024;
// Frames of this many bytes are always accepted regardless of configuration: Hello and Error fit.
inline constexpr size_t kDefaultMaxFrameBytes = 4u << 20;

// Checks one whole frame as it arrived, length prefix included (`size` = 4 + body): the prefix matches
// `size`, the body fits max_frame_bytes, identifier, verifier, known body type, and a Deliver's nested
// envelope starts 8-byte aligned. `data` must be 8-byte aligned: FlatBuffers aligns a size-prefixed
// buffer from its prefix, so only then are the verified fields aligned in memory too.
Result<const Frame*> VerifyFrame(const uint8_t* data, size_t size, size_t max_frame_bytes);

class FrameDecoder {
 public:
  explicit FrameDecoder(size_t max_frame_bytes);

  FrameDecoder(const FrameDecoder&) = delete;
  FrameDecoder& operator=(const FrameDecoder&) = delete;

  // Space to read socket bytes into (at least `min_size` bytes); then Commit() how many arrived.
  std::span<char> WritableTail(size_t min_size);
  void Commit(size_t n);
  // Convenience for callers that already hold the bytes.
  void Append(std::string_view bytes);

  enum class Outcome { kFrame, kNeedMore, kError };
  // Takes the next complete frame. On kFrame, *frame points into the decoder's buffer and stays valid
  // until the next call to any non-const method. On kError, *error says why (and stays so).
  Outcome Next(const Frame** frame, Status* error);

  // The size of the frame just returned by Next(), length prefix included.
  size_t last_frame_bytes() const { return last_frame_bytes_; }
  size_t buffered_bytes() const { return end_ - begin_; }
  size_t max_frame_bytes() const { return max_frame_bytes_; }
  void set_max_frame_bytes(size_t n) { max_frame_bytes_ = n; }

 private:
  void Compact();

  size_t max_frame_bytes_;
  std::vector<char> buf_;
  size_t begin_ = 0;  // Invariant: begin_ <= end_ <= buf_.size(); [begin_, end_) is unread data.
  size_t end_ = 0;
  size_t last_frame_bytes_ = 0;
  Status failed_;
};

// The name of a body type as written in protocol.fbs ("Publish"); "unknown" for others.
std::string_view BodyName(Body type);

// Copies a stored Envelope FlatBuffer into `fbb` as the value of Deliver.envelope. The bytes are placed
// 8-byte aligned, which VerifyFrame() requires so the nested buffer's 64-bit fields can be read.
flatbuffers::Offset<flatbuffers::Vector<uint8_t>> CreateNestedEnvelope(
    flatbuffers::FlatBufferBuilder& fbb, std::string_view envelope);

// Finishes `fbb` as a size-prefixed Frame holding `body` of type `type`. The bytes to send are then
// fbb.GetBufferPointer() / fbb.GetSize().
void FinishFrame(flatbuffers::FlatBufferBuilder& fbb, Body type, flatbuffers::Offset<void> body);

// Builds a complete Error frame.
void BuildError(flatbuffers::FlatBufferBuilder& fbb, uint64_t request_id, ErrorCode code,
                std::string_view message, bool fatal);

// The server's side of the handshake: checks the client's Hello (protocol version) and builds the
// answer. A version mismatch is a Status naming both versions, to be sent as a fatal
// UnsupportedVersion Error.
Status CheckClientHello(const Hello& hello);
void BuildServerHello(flatbuffers::FlatBufferBuilder& fbb, size_t max_frame_bytes,
                      std::string_view server_version);

// The wire error code for a Status.
ErrorCode ErrorCodeFor(const Status& status);
// The Status for a wire error (for clients).
Status StatusFor(ErrorCode code, std::string_view message);

}  // namespace sluice::wire

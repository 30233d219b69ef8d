// SPDX-License-Identifier: MIT
//
// libFuzzer target for the frame codec (broker/wire/codec.h). The input is a 2-byte header and then a
// byte stream as a peer would send it:
//   byte 0   seeds the chunk sizes the stream is fed in (through WritableTail/Commit, as the connection
//            does, or Append), so frames get split at every point and land at every buffer offset;
//   byte 1   picks max_frame_bytes (low 2 bits: 1 KiB, 4 KiB, 64 KiB or the 4 MiB default);
//   the rest is the stream.
// Every frame the decoder returns is walked field by field, the nested Deliver envelope included, so
// ASan and UBSan see any read the verifier did not cover; and checked against properties of the codec
// (the same bytes verify again on their own, a failed decoder stays failed). Single-threaded, as
// libFuzzer calls it.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "broker/wire/codec.h"

namespace sluice::wire {
namespace {

// Keeps the compiler from dropping the reads the walk exists for.
volatile uint64_t g_sink;

[[noreturn]] void Fail(const char* what) {
  // A property of the codec does not hold: crash so libFuzzer keeps the input.
  std::fprintf(stderr, "frame_fuzz: %s\n", what);
  std::abort();
}

uint64_t Mixed(uint64_t h, uint64_t v) { return (h ^ v) * 0x100000001b3ull; }

uint64_t Walk(const flatbuffers::String* s) {
  if (s == nullptr) return 1;
  uint64_t h = s->size();
  for (char c : std::string_view(s->c_str(), s->size())) h = Mixed(h, static_cast<uint8_t>(c));
  // Strings are NUL-terminated in FlatBuffers; the verifier checks that byte too.
  return Mixed(h, static_cast<uint8_t>(s->c_str()[s->size()]));
}

template <typename T>
uint64_t Walk(const flatbuffers::Vector<T>* v) {
  if (v == nullptr) return 2;
  uint64_t h = v->size();
  for (T x : *v) h = Mixed(h, static_cast<uint64_t>(x));
  return h;
}

uint64_t Walk(const Uuid* id) {
  if (id == nullptr) return 3;
  return Mixed(id->hi(), id->lo());
}

uint64_t Walk(const Envelope* e) {
  if (e == nullptr) return 4;
  uint64_t h = Walk(e->id());
  h = Mixed(h, Walk(e->topic()));
  h = Mixed(h, Walk(e->key()));
  h = Mixed(h, Walk(e->type()));
  h = Mixed(h, Walk(e->correlation_id()));
  h = Mixed(h, Walk(e->causation_id()));
  h = Mixed(h, static_cast<uint64_t>(e->publish_time_us()));
  if (const auto* headers = e->headers()) {
    for (const Header* header : *headers) {
      // `name` is required: the verifier guarantees it is there.
      if (header->name() == nullptr) Fail("Header.name missing after verification");
      h = Mixed(h, Walk(header->name()));
      h = Mixed(h, Walk(header->value()));
    }
  }
  h = Mixed(h, Walk(e->payload()));
  return Mixed(h, e->seq());
}

uint64_t WalkBody(const Frame* frame) {
  switch (frame->body_type()) {
    case Body::Hello: {
      const Hello* b = frame->body_as_Hello();
      return Mixed(Mixed(b->protocol_version(), Walk(b->name())),
                   Mixed(b->max_frame_bytes(), Walk(b->server_version())));
    }
    case Body::Publish: {
      const Publish* b = frame->body_as_Publish();
      if (b->envelope() == nullptr) Fail("Publish.envelope missing after verification");
      return Mixed(b->request_id(), Walk(b->envelope()));
    }
    case Body::PublishAck: {
      const PublishAck* b = frame->body_as_PublishAck();
      return Mixed(Mixed(b->request_id(), b->seq()), Mixed(Walk(b->id()), b->duplicate()));
    }
    case Body::Subscribe: {
      const Subscribe* b = frame->body_as_Subscribe();
      if (b->topic() == nullptr || b->subscription() == nullptr) {
        Fail("Subscribe required field missing after verification");
      }
      uint64_t h = Mixed(b->request_id(), Walk(b->topic()));
      h = Mixed(h, Walk(b->subscription()));
      // Enum values from the wire may be out of range: the name lookups must cope.
      h = Mixed(h, std::strlen(EnumNameStartKind(b->start())));
      h = Mixed(h, std::strlen(EnumNameOrdering(b->ordering())));
      h = Mixed(h, b->start_seq() ^ static_cast<uint64_t>(b->start_time_us()));
      return Mixed(h, b->max_deliveries() + b->ack_wait_ms() + b->credit());
    }
    case Body::SubscribeOk: {
      const SubscribeOk* b = frame->body_as_SubscribeOk();
      return Mixed(b->request_id(), b->consumer_id());
    }
    case Body::Deliver: {
      const Deliver* b = frame->body_as_Deliver();
      if (b->envelope() == nullptr) Fail("Deliver.envelope missing after verification");
      uint64_t h = Mixed(Mixed(b->consumer_id(), b->delivery_id()), b->delivery_count());
      h = Mixed(h, Walk(b->envelope()));
      h = Mixed(h, Walk(b->envelope_nested_root()));
      return Mixed(h, b->reply_token());
    }
    case Body::Ack: {
      const Ack* b = frame->body_as_Ack();
      return Mixed(b->consumer_id(), Walk(b->delivery_ids()));
    }
    case Body::Nack: {
      const Nack* b = frame->body_as_Nack();
      uint64_t h = Mixed(Mixed(b->consumer_id(), b->delivery_id()), b->delay_ms());
      return Mixed(Mixed(h, b->reject()), Walk(b->error()));
    }
    case Body::Credit: {
      const Credit* b = frame->body_as_Credit();
      return Mixed(b->consumer_id(), b->credit());
    }
    case Body::Request: {
      const Request* b = frame->body_as_Request();
      if (b->envelope() == nullptr) Fail("Request.envelope missing after verification");
      return Mixed(Mixed(b->request_id(), b->timeout_ms()), Walk(b->envelope()));
    }
    case Body::Reply: {
      const Reply* b = frame->body_as_Reply();
      uint64_t h = Mixed(b->request_id(), b->reply_token());
      return Mixed(Mixed(h, Walk(b->envelope())), Walk(b->error()));
    }
    case Body::Error: {
      const Error* b = frame->body_as_Error();
      uint64_t h = Mixed(b->request_id(), std::strlen(EnumNameErrorCode(b->code())));
      h = Mixed(h, StatusFor(b->code(), "x").ok());
      return Mixed(Mixed(h, Walk(b->message())), b->fatal());
    }
    case Body::AdminRequest: {
      const AdminRequest* b = frame->body_as_AdminRequest();
      if (b->command() == nullptr) Fail("AdminRequest.command missing after verification");
      return Mixed(Mixed(b->request_id(), Walk(b->command())), Walk(b->args_json()));
    }
    case Body::AdminResponse: {
      const AdminResponse* b = frame->body_as_AdminResponse();
      uint64_t h = Mixed(b->request_id(), static_cast<uint32_t>(b->code()));
      return Mixed(Mixed(h, Walk(b->message())), Walk(b->result_json()));
    }
    case Body::Bundle: {
      const Bundle* b = frame->body_as_Bundle();
      uint64_t h = Mixed(Mixed(b->request_id(), b->consumer_id()), Mixed(b->delivery_id(), b->version()));
      if (b->reads()) {
        for (const KvRead* r : *b->reads()) h = Mixed(h, Mixed(Walk(r->key()), r->version()));
      }
      if (b->writes()) {
        for (const KvWrite* w : *b->writes()) h = Mixed(h, Mixed(Walk(w->key()), Walk(w->value())));
      }
      if (b->publishes()) {
        for (const Envelope* e : *b->publishes()) h = Mixed(h, Walk(e));
      }
      if (b->reply()) h = Mixed(h, Walk(b->reply()));
      return Mixed(Mixed(h, Walk(b->reply_error())), b->reply_token());
    }
    case Body::BundleAck: {
      const BundleAck* b = frame->body_as_BundleAck();
      return Mixed(Mixed(b->request_id(), static_cast<uint64_t>(b->status())), Walk(b->message()));
    }
    case Body::NONE:
      break;
  }
  Fail("decoder returned a frame of unknown body type");
}

// The frame's bytes, copied alone into 8-aligned storage, must verify again: what the decoder accepts
// does not depend on what came before it or where it sat in the buffer.
void CheckVerifiesAlone(const uint8_t* bytes, size_t size, size_t max_frame_bytes) {
  std::vector<uint64_t> storage((size + 7) / 8);
  std::memcpy(storage.data(), bytes, size);
  auto again = VerifyFrame(reinterpret_cast<const uint8_t*>(storage.data()), size, max_frame_bytes);
  if (!again.ok()) Fail("a decoded frame fails VerifyFrame on its own");
  if (BodyName((*again)->body_type()) == "unknown") Fail("a verified frame has an unknown body");
}

constexpr size_t kMaxFrameChoices[] = {kMinMaxFrameBytes, 4096, 65536, kDefaultMaxFrameBytes};

}  // namespace
}  // namespace sluice::wire

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::wire;  // NOLINT
  if (size < 2) return 0;
  uint32_t rng = data[0] * 2654435761u + 1;
  size_t max_frame_bytes = kMaxFrameChoices[data[1] & 3];
  const uint8_t* stream = data + 2;
  size_t stream_size = size - 2;

  FrameDecoder decoder(max_frame_bytes);
  size_t fed = 0;
  size_t consumed = 0;  // stream offset of the next frame the decoder will return
  bool failed = false;
  sluice::Status first_error;
  while (fed < stream_size && !failed) {
    rng = rng * 1103515245u + 12345u;
    // Mostly small chunks, now and then a large one, as reads from a socket.
    size_t want = (rng >> 16) % 8 == 0 ? 1 + (rng >> 8) % 4096 : 1 + (rng >> 16) % 64;
    size_t n = std::min(want, stream_size - fed);
    if ((rng >> 28) & 1) {
      decoder.Append(std::string_view(reinterpret_cast<const char*>(stream + fed), n));
    } else {
      auto tail = decoder.WritableTail(n);
      if (tail.size() < n) Fail("WritableTail returned less than asked");
      std::memcpy(tail.data(), stream + fed, n);
      decoder.Commit(n);
    }
    fed += n;
    for (;;) {
      const Frame* frame = nullptr;
      sluice::Status error;
      auto outcome = decoder.Next(&frame, &error);
      if (outcome == FrameDecoder::Outcome::kNeedMore) break;
      if (outcome == FrameDecoder::Outcome::kError) {
        if (error.ok() || error.message().empty()) Fail("error outcome without a message");
        failed = true;
        first_error = error;
        break;
      }
      g_sink = g_sink + WalkBody(frame);
      size_t frame_bytes = decoder.last_frame_bytes();
      if (frame_bytes < kLengthPrefixBytes + 8 || consumed + frame_bytes > fed) {
        Fail("last_frame_bytes out of range");
      }
      CheckVerifiesAlone(stream + consumed, frame_bytes, max_frame_bytes);
      consumed += frame_bytes;
    }
  }
  if (failed) {
    // Once failed, always failed, whatever arrives next.
    static constexpr char kMore[] = "\x08\x00\x00\x00\x00\x00\x00\x00SLF1";
    decoder.Append(std::string_view(kMore, sizeof kMore - 1));
    const Frame* frame = nullptr;
    sluice::Status error;
    if (decoder.Next(&frame, &error) != FrameDecoder::Outcome::kError ||
        error.message() != first_error.message()) {
      Fail("decoder did not stay failed");
    }
  } else if (decoder.buffered_bytes() != fed - consumed) {
    Fail("buffered_bytes does not match the unread stream");
  }
  return 0;
}

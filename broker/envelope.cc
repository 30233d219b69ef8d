// SPDX-License-Identifier: MIT
#include "broker/envelope.h"

#include <cstring>
#include <optional>

namespace sluice::broker {
namespace {

// Envelope > [Header] > Header is the deepest path; the table cap bounds work on hostile input.
constexpr flatbuffers::uoffset_t kMaxDepth = 8;
constexpr flatbuffers::uoffset_t kMaxTables = 100000;

flatbuffers::FlatBufferBuilder& Builder() {
  thread_local flatbuffers::FlatBufferBuilder fbb(1024);
  fbb.Clear();
  // Scalars equal to their default (seq = 0) are normally left out; the store needs seq present.
  fbb.ForceDefaults(true);
  return fbb;
}

flatbuffers::Offset<flatbuffers::String> Str(flatbuffers::FlatBufferBuilder& fbb,
                                             const flatbuffers::String* s) {
  return s ? fbb.CreateString(s->data(), s->size()) : 0;
}

flatbuffers::Offset<flatbuffers::String> Str(flatbuffers::FlatBufferBuilder& fbb, std::string_view s) {
  return fbb.CreateString(s.data(), s.size());
}

void Finish(flatbuffers::FlatBufferBuilder& fbb, std::string* out) {
  out->assign(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize());
  // A large payload would otherwise stay allocated in this thread's builder forever.
  if (fbb.GetSize() > (1u << 20)) fbb.Reset();
}

// Copies `in` into `fbb` with the given id and publish time: the one copy routine behind
// BuildStoredEnvelope and CopyEnvelope.
flatbuffers::Offset<wire::Envelope> CopyInto(flatbuffers::FlatBufferBuilder& fbb, const wire::Envelope& in,
                                             const wire::Uuid* id, int64_t publish_time_us,
                                             std::optional<std::string_view> source) {
  auto topic = Str(fbb, in.topic());
  auto key = Str(fbb, in.key());
  auto type = Str(fbb, in.type());
  auto correlation = Str(fbb, in.correlation_id());
  auto causation = Str(fbb, in.causation_id());
  auto src = source ? Str(fbb, *source) : Str(fbb, in.source());
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::Header>>> headers = 0;
  if (in.headers() != nullptr) {
    std::vector<flatbuffers::Offset<wire::Header>> hs;
    hs.reserve(in.headers()->size());
    for (const wire::Header* h : *in.headers()) {
      if (h == nullptr || h->name() == nullptr) continue;
      hs.push_back(wire::CreateHeader(fbb, Str(fbb, h->name()), Str(fbb, h->value())));
    }
    headers = fbb.CreateVector(hs);
  }
  flatbuffers::Offset<flatbuffers::Vector<uint8_t>> payload = 0;
  if (in.payload() != nullptr) payload = fbb.CreateVector(in.payload()->data(), in.payload()->size());
  wire::EnvelopeBuilder b(fbb);
  if (id != nullptr) b.add_id(id);
  b.add_topic(topic);
  b.add_key(key);
  b.add_type(type);
  b.add_correlation_id(correlation);
  b.add_causation_id(causation);
  b.add_publish_time_us(publish_time_us);
  b.add_headers(headers);
  b.add_payload(payload);
  b.add_seq(in.seq());
  b.add_source(src);
  return b.Finish();
}

}  // namespace

void BuildStoredEnvelope(const wire::Envelope& in, Uuid id, int64_t publish_time_us, std::string_view source,
                         std::string* out) {
  auto& fbb = Builder();
  wire::Uuid wid = ToWire(id);
  fbb.Finish(CopyInto(fbb, in, &wid, publish_time_us, source));
  Finish(fbb, out);
}

flatbuffers::Offset<wire::Envelope> CopyEnvelope(flatbuffers::FlatBufferBuilder& fbb, const wire::Envelope& in) {
  return CopyInto(fbb, in, in.id(), in.publish_time_us(), std::nullopt);
}

void BuildEnvelope(const EnvelopeFields& f, std::string* out) {
  auto& fbb = Builder();
  auto topic = Str(fbb, f.topic);
  auto key = Str(fbb, f.key);
  auto type = Str(fbb, f.type);
  auto correlation = Str(fbb, f.correlation_id);
  auto causation = Str(fbb, f.causation_id);
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::Header>>> headers = 0;
  if (!f.headers.empty()) {
    std::vector<flatbuffers::Offset<wire::Header>> hs;
    hs.reserve(f.headers.size());
    for (const auto& [name, value] : f.headers) {
      hs.push_back(wire::CreateHeader(fbb, Str(fbb, name), Str(fbb, value)));
    }
    headers = fbb.CreateVector(hs);
  }
  auto payload = fbb.CreateVector(reinterpret_cast<const uint8_t*>(f.payload.data()), f.payload.size());
  wire::Uuid wid = f.id ? ToWire(*f.id) : wire::Uuid();
  wire::EnvelopeBuilder b(fbb);
  if (f.id) b.add_id(&wid);
  b.add_topic(topic);
  b.add_key(key);
  b.add_type(type);
  b.add_correlation_id(correlation);
  b.add_causation_id(causation);
  b.add_publish_time_us(f.publish_time_us);
  b.add_headers(headers);
  b.add_payload(payload);
  b.add_seq(f.seq);
  fbb.Finish(b.Finish());
  Finish(fbb, out);
}

Result<const wire::Envelope*> ReadEnvelope(std::string_view bytes) {
  if (reinterpret_cast<uintptr_t>(bytes.data()) % 8 != 0) {
    return Internal("ReadEnvelope called on a buffer that is not 8-byte aligned");
  }
  flatbuffers::Verifier verifier(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                 kMaxDepth, kMaxTables);
  if (!verifier.VerifyBuffer<wire::Envelope>(nullptr)) {
    return InvalidArgument("envelope failed FlatBuffers verification");
  }
  return flatbuffers::GetRoot<wire::Envelope>(bytes.data());
}

bool SetEnvelopeSeq(std::string* bytes, uint64_t seq) {
  if (bytes->size() < 8 || reinterpret_cast<uintptr_t>(bytes->data()) % 8 != 0) return false;
  // The generated code has no mutators (flatc runs without --gen-mutable); Table::SetField is what
  // mutate_seq() would call. It fails when the field is absent from the buffer.
  auto* env = flatbuffers::GetMutableRoot<flatbuffers::Table>(bytes->data());
  return env->SetField<uint64_t>(wire::Envelope::VT_SEQ, seq, 0);
}

}  // namespace sluice::broker

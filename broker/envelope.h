// SPDX-License-Identifier: MIT
//
// The stored envelope: the one canonical Envelope FlatBuffer (protocol.fbs, root Envelope, no file
// identifier) that the broker stores and delivers byte for byte. It is built once at publish time with
// every field present, including `seq` (forced present even when 0) so the store can set the sequence in
// place with Envelope::mutate_seq() instead of rebuilding the buffer. Builders here never fail; readers
// verify first. Thread-safe: the builders use a per-thread FlatBufferBuilder.
//
// Caveat the callers rely on: a FlatBuffer is only safe to read at an 8-byte aligned address. Values
// read straight out of LMDB are not (they are 2-byte aligned), so copy such bytes into a std::string
// (heap storage is aligned) before calling ReadEnvelope() or SetEnvelopeSeq().
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "broker/status.h"
#include "broker/uuid.h"
#include "broker/wire/protocol_generated.h"

namespace sluice::broker {

// Copies every field of `in` into the canonical form, with `id`, `publish_time_us` and `source` set
// and `seq` present (0). The result replaces *out.
void BuildStoredEnvelope(const wire::Envelope& in, Uuid id, int64_t publish_time_us, std::string_view source,
                         std::string* out);

// Copies every field of `in` as it is (id, time and seq included) into `fbb`, e.g. to forward a Reply.
flatbuffers::Offset<wire::Envelope> CopyEnvelope(flatbuffers::FlatBufferBuilder& fbb, const wire::Envelope& in);

// Plain fields of an envelope, for tests and the client library.
struct EnvelopeFields {
  std::string topic;
  std::string key;
  std::string type;
  std::string correlation_id;
  std::string causation_id;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string payload;
  std::optional<Uuid> id;        // absent: the id field is left out (the broker assigns one)
  int64_t publish_time_us = 0;
  uint64_t seq = 0;
};

// Builds an Envelope from plain fields in the same canonical layout (seq always present).
void BuildEnvelope(const EnvelopeFields& fields, std::string* out);

// Verifies `bytes` as an Envelope (which must start 8-byte aligned) and returns its root, valid as long
// as `bytes` is. kInvalidArgument when the buffer is not a valid Envelope.
Result<const wire::Envelope*> ReadEnvelope(std::string_view bytes);

// Sets seq in place in a canonical envelope. Returns false when the buffer has no seq field (it was
// not built here) or is not 8-byte aligned; the buffer is then unchanged.
bool SetEnvelopeSeq(std::string* bytes, uint64_t seq);

inline Uuid FromWire(const wire::Uuid* id) { return id ? Uuid{id->hi(), id->lo()} : Uuid{}; }
inline wire::Uuid ToWire(const Uuid& id) { return wire::Uuid(id.hi, id.lo); }

}  // namespace sluice::broker

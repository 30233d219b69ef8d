// SPDX-License-Identifier: MIT
//
// Tests of the frame codec (broker/wire/codec.h): every body type round-trips through FrameDecoder
// however the bytes arrive and wherever they land in its buffer, and each kind of bad input is refused
// with its own message, before anything reads it. Single-threaded.
#include "broker/wire/codec.h"

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fuzz/frame_samples.h"

namespace sluice::wire {
namespace {

using ::testing::HasSubstr;
using namespace samples;  // NOLINT: the sample constants are the vocabulary of these tests

constexpr size_t kMax = 64 * 1024;

std::string Str(const flatbuffers::String* s) { return s == nullptr ? "<null>" : s->str(); }

bool IsAligned(const void* p, size_t align) { return reinterpret_cast<uintptr_t>(p) % align == 0; }

void ExpectUuid(const Uuid* id) {
  ASSERT_NE(id, nullptr);
  // A misaligned struct would be undefined behaviour to read: the decoder must not hand one out.
  EXPECT_TRUE(IsAligned(id, alignof(Uuid)));
  EXPECT_EQ(id->hi(), kIdHi);
  EXPECT_EQ(id->lo(), kIdLo);
}

void ExpectEnvelope(const Envelope* e) {
  ASSERT_NE(e, nullptr);
  ExpectUuid(e->id());
  EXPECT_EQ(Str(e->topic()), kTopic);
  EXPECT_EQ(Str(e->key()), kKey);
  EXPECT_EQ(Str(e->type()), kType);
  EXPECT_EQ(Str(e->correlation_id()), kKey);
  EXPECT_EQ(Str(e->causation_id()), kCausationId);
  EXPECT_EQ(e->publish_time_us(), kPublishTimeUs);
  ASSERT_NE(e->headers(), nullptr);
  ASSERT_EQ(e->headers()->size(), 2u);
  EXPECT_EQ(Str(e->headers()->Get(0)->name()), "traceparent");
  EXPECT_EQ(Str(e->headers()->Get(0)->value()), "00-abc-01");
  EXPECT_EQ(Str(e->headers()->Get(1)->name()), "no-value");
  EXPECT_EQ(e->headers()->Get(1)->value(), nullptr);
  ASSERT_NE(e->payload(), nullptr);
  EXPECT_EQ(std::vector<uint8_t>(e->payload()->begin(), e->payload()->end()),
            std::vector<uint8_t>(std::begin(kPayload), std::end(kPayload)));
  EXPECT_EQ(e->seq(), kSeq);
}

// Checks every field of a frame made by SampleFrame(type).
void ExpectSample(const Frame* frame, Body type) {
  ASSERT_NE(frame, nullptr);
  ASSERT_EQ(frame->body_type(), type) << BodyName(frame->body_type());
  switch (type) {
    case Body::Hello: {
      auto* b = frame->body_as_Hello();
      EXPECT_EQ(b->protocol_version(), kProtocolVersion);
      EXPECT_EQ(Str(b->name()), "sluicectl 0.1.0");
      EXPECT_EQ(b->max_frame_bytes(), 65536u);
      EXPECT_EQ(Str(b->server_version()), "sluiced 0.1.0");
      break;
    }
    case Body::Publish: {
      auto* b = frame->body_as_Publish();
      EXPECT_EQ(b->request_id(), kRequestId);
      ExpectEnvelope(b->envelope());
      break;
    }
    case Body::PublishAck: {
      auto* b = frame->body_as_PublishAck();
      EXPECT_EQ(b->request_id(), kRequestId);
      EXPECT_EQ(b->seq(), kSeq);
      ExpectUuid(b->id());
      EXPECT_TRUE(b->duplicate());
      break;
    }
    case Body::Subscribe: {
      auto* b = frame->body_as_Subscribe();
      EXPECT_EQ(b->request_id(), kRequestId);
      EXPECT_EQ(Str(b->topic()), "orders");
      EXPECT_EQ(Str(b->subscription()), "inventory");
      EXPECT_EQ(b->start(), StartKind::Time);
      EXPECT_EQ(b->start_seq(), kSeq);
      EXPECT_EQ(b->start_time_us(), kPublishTimeUs);
      EXPECT_EQ(b->ordering(), Ordering::Key);
      EXPECT_EQ(b->max_deliveries(), 5u);
      EXPECT_EQ(b->ack_wait_ms(), 30000u);
      EXPECT_EQ(b->credit(), 64u);
      break;
    }
    case Body::SubscribeOk: {
      auto* b = frame->body_as_SubscribeOk();
      EXPECT_EQ(b->request_id(), kRequestId);
      EXPECT_EQ(b->consumer_id(), kConsumerId);
      break;
    }
    case Body::Deliver: {
      auto* b = frame->body_as_Deliver();
      EXPECT_EQ(b->consumer_id(), kConsumerId);
      EXPECT_EQ(b->delivery_id(), kDeliveryId);
      EXPECT_EQ(b->delivery_count(), 3u);
      EXPECT_EQ(b->reply_token(), kReplyToken);
      EXPECT_TRUE(IsAligned(b->envelope()->data(), 8));
      std::string stored = StoredEnvelope();
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(b->envelope()->data()),
                            b->envelope()->size()),
                stored);
      ExpectEnvelope(b->envelope_nested_root());
      break;
    }
    case Body::Ack: {
      auto* b = frame->body_as_Ack();
      EXPECT_EQ(b->consumer_id(), kConsumerId);
      ASSERT_NE(b->delivery_ids(), nullptr);
      EXPECT_EQ(std::vector<uint64_t>(b->delivery_ids()->begin(), b->delivery_ids()->end()),
                (std::vector<uint64_t>{kDeliveryId, kDeliveryId + 1, kDeliveryId + 2}));
      break;
    }
    case Body::Nack: {
      auto* b = frame->body_as_Nack();
      EXPECT_EQ(b->consumer_id(), kConsumerId);
      EXPECT_EQ(b->delivery_id(), kDeliveryId);
      EXPECT_EQ(b->delay_ms(), 1500u);
      EXPECT_TRUE(b->reject());
      EXPECT_EQ(Str(b->error()), "out of stock");
      break;
    }
    case Body::Credit: {
      auto* b = frame->body_as_Credit();
      EXPECT_EQ(b->consumer_id(), kConsumerId);
      EXPECT_EQ(b->credit(), 32u);
      break;
    }
    case Body::Request: {
      auto* b = frame->body_as_Request();
      EXPECT_EQ(b->request_id(), kRequestId);
      EXPECT_EQ(b->timeout_ms(), 2500u);
      ExpectEnvelope(b->envelope());
      break;
    }
    case Body::Reply: {
      auto* b = frame->body_as_Reply();
      EXPECT_EQ(b->request_id(), kRequestId);
      EXPECT_EQ(b->reply_token(), kReplyToken);
      EXPECT_EQ(Str(b->error()), "handler failed");
      ExpectEnvelope(b->envelope());
      break;
    }
    case Body::Error: {
      auto* b = frame->body_as_Error();
      EXPECT_EQ(b->request_id(), kRequestId);
      EXPECT_EQ(b->code(), ErrorCode::LimitExceeded);
      EXPECT_EQ(Str(b->message()), "topic 'orders' is full");
      EXPECT_TRUE(b->fatal());
      break;
    }
    case Body::AdminRequest: {
      auto* b = frame->body_as_AdminRequest();
      EXPECT_EQ(b->request_id(), kRequestId);
      EXPECT_EQ(Str(b->command()), "status");
      EXPECT_EQ(Str(b->args_json()), R"({"verbose":true})");
      break;
    }
    case Body::AdminResponse: {
      auto* b = frame->body_as_AdminResponse();
      EXPECT_EQ(b->request_id(), kRequestId);
      EXPECT_EQ(b->code(), 2);
      EXPECT_EQ(Str(b->message()), "bad arguments");
      EXPECT_EQ(Str(b->result_json()), R"({"uptime_s":7})");
      break;
    }
    case Body::Bundle: {
      auto* b = frame->body_as_Bundle();
      EXPECT_EQ(b->request_id(), kRequestId);
      EXPECT_EQ(b->consumer_id(), kConsumerId);
      EXPECT_EQ(b->delivery_id(), kDeliveryId);
      EXPECT_EQ(b->version(), 9u);
      ASSERT_EQ(b->reads()->size(), 1u);
      EXPECT_EQ(b->reads()->Get(0)->version(), 7u);
      ASSERT_EQ(b->writes()->size(), 1u);
      EXPECT_EQ(b->writes()->Get(0)->value()->size(), 2u);
      ASSERT_EQ(b->publishes()->size(), 1u);
      ExpectEnvelope(b->publishes()->Get(0));
      ExpectEnvelope(b->reply());
      EXPECT_EQ(b->reply_token(), kReplyToken);
      break;
    }
    case Body::BundleAck: {
      auto* b = frame->body_as_BundleAck();
      EXPECT_EQ(b->request_id(), kRequestId);
      EXPECT_EQ(b->status(), BundleStatus::Conflict);
      EXPECT_EQ(Str(b->message()), "key 'stock' changed");
      break;
    }
    case Body::NONE:
      ADD_FAILURE() << "no sample of Body::NONE";
      break;
  }
}

// Appends `extra` zero bytes to a frame's body and fixes its length prefix. The result is still a valid
// frame (the verifier ignores bytes nothing points to), but its size is no longer a multiple of 8, so
// the frame after it starts misaligned in the decoder's buffer.
std::string Padded(std::string frame, size_t extra) {
  frame.append(extra, '\0');
  uint32_t len = static_cast<uint32_t>(frame.size() - kLengthPrefixBytes);
  uint8_t le[4] = {static_cast<uint8_t>(len), static_cast<uint8_t>(len >> 8),
                   static_cast<uint8_t>(len >> 16), static_cast<uint8_t>(len >> 24)};
  std::memcpy(frame.data(), le, sizeof le);
  return frame;
}

std::string Prefix(uint32_t len) {
  return std::string{static_cast<char>(len & 0xff), static_cast<char>((len >> 8) & 0xff),
                     static_cast<char>((len >> 16) & 0xff), static_cast<char>(len >> 24)};
}

// Feeds `bytes` to a fresh decoder and returns the error it reports; fails the test on any frame.
Status DecodeError(std::string_view bytes, size_t max_frame_bytes = kMax) {
  FrameDecoder d(max_frame_bytes);
  d.Append(bytes);
  const Frame* frame = nullptr;
  Status error;
  auto outcome = d.Next(&frame, &error);
  EXPECT_EQ(outcome, FrameDecoder::Outcome::kError);
  return error;
}

class CodecRoundTrip : public ::testing::TestWithParam<Body> {};

TEST_P(CodecRoundTrip, WholeFrame) {
  std::string bytes = SampleFrame(GetParam());
  FrameDecoder d(kMax);
  d.Append(bytes);
  const Frame* frame = nullptr;
  Status error;
  ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kFrame) << error.ToString();
  ExpectSample(frame, GetParam());
  EXPECT_EQ(d.last_frame_bytes(), bytes.size());
  EXPECT_EQ(d.buffered_bytes(), 0u);
  EXPECT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kNeedMore);
}

TEST_P(CodecRoundTrip, ByteByByte) {
  std::string bytes = SampleFrame(GetParam());
  FrameDecoder d(kMax);
  const Frame* frame = nullptr;
  Status error;
  for (size_t i = 0; i + 1 < bytes.size(); ++i) {
    d.Append(bytes.substr(i, 1));
    ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kNeedMore) << "after byte " << i;
  }
  d.Append(bytes.substr(bytes.size() - 1));
  ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kFrame) << error.ToString();
  ExpectSample(frame, GetParam());
}

TEST_P(CodecRoundTrip, TruncatedNeverYieldsAFrame) {
  std::string bytes = SampleFrame(GetParam());
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    FrameDecoder d(kMax);
    d.Append(bytes.substr(0, cut));
    const Frame* frame = nullptr;
    Status error;
    ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kNeedMore) << "cut at " << cut;
    EXPECT_EQ(frame, nullptr);
    d.Append(bytes.substr(cut));
    ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kFrame) << error.ToString();
    ExpectSample(frame, GetParam());
  }
}

TEST_P(CodecRoundTrip, AfterEveryPadding) {
  // A first frame padded by 0..15 bytes puts the sample at every offset modulo 8 (and 16).
  for (size_t pad = 0; pad < 16; ++pad) {
    FrameDecoder d(kMax);
    d.Append(Padded(SampleFrame(Body::Credit), pad) + SampleFrame(GetParam()));
    const Frame* frame = nullptr;
    Status error;
    ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kFrame) << error.ToString();
    ExpectSample(frame, Body::Credit);
    ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kFrame)
        << "pad " << pad << ": " << error.ToString();
    ExpectSample(frame, GetParam());
  }
}

INSTANTIATE_TEST_SUITE_P(AllBodies, CodecRoundTrip, ::testing::ValuesIn(AllBodies()),
                         [](const ::testing::TestParamInfo<Body>& param_info) {
                           return std::string(BodyName(param_info.param));
                         });

TEST(Codec, SamplesCoverEveryBodyType) {
  EXPECT_EQ(AllBodies().size(), static_cast<size_t>(Body::MAX));
  for (Body b : AllBodies()) EXPECT_FALSE(SampleFrame(b).empty()) << BodyName(b);
}

TEST(Codec, ManyFramesInOneChunkAtOddOffsets) {
  std::string chunk;
  std::vector<Body> expected;
  size_t pad = 0;
  for (int round = 0; round < 3; ++round) {
    for (Body b : AllBodies()) {
      chunk += Padded(SampleFrame(b), pad++ % 7);
      expected.push_back(b);
    }
  }
  FrameDecoder d(kMax);
  d.Append(chunk);
  const Frame* frame = nullptr;
  Status error;
  for (Body b : expected) {
    ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kFrame) << error.ToString();
    ExpectSample(frame, b);
  }
  EXPECT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kNeedMore);
  EXPECT_EQ(d.buffered_bytes(), 0u);
}

TEST(Codec, RandomChunksThroughWritableTail) {
  std::string stream;
  std::vector<Body> expected;
  std::mt19937 rng(7);
  for (int round = 0; round < 4; ++round) {
    for (Body b : AllBodies()) {
      stream += Padded(SampleFrame(b), rng() % 8);
      expected.push_back(b);
    }
  }
  FrameDecoder d(kMax);
  size_t fed = 0;
  size_t next = 0;
  const Frame* frame = nullptr;
  Status error;
  while (fed < stream.size()) {
    size_t n = std::min<size_t>(1 + rng() % 97, stream.size() - fed);
    auto tail = d.WritableTail(n);
    ASSERT_GE(tail.size(), n);
    std::memcpy(tail.data(), stream.data() + fed, n);
    d.Commit(n);
    fed += n;
    FrameDecoder::Outcome outcome;
    while ((outcome = d.Next(&frame, &error)) == FrameDecoder::Outcome::kFrame) {
      ASSERT_LT(next, expected.size());
      ExpectSample(frame, expected[next++]);
    }
    ASSERT_EQ(outcome, FrameDecoder::Outcome::kNeedMore) << error.ToString();
  }
  EXPECT_EQ(next, expected.size());
}

TEST(Codec, OversizedLengthFailsBeforeTheBodyArrives) {
  FrameDecoder d(1024);
  d.Append(Prefix(1025));
  const Frame* frame = nullptr;
  Status error;
  ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kError);
  EXPECT_EQ(error.code(), StatusCode::kProtocol);
  EXPECT_EQ(error.message(), "frame of 1025 bytes exceeds max_frame_bytes (1024)");
  EXPECT_EQ(frame, nullptr);

  Status huge = DecodeError(Prefix(0xffffffffu));
  EXPECT_THAT(huge.message(), HasSubstr("frame of 4294967295 bytes exceeds max_frame_bytes"));
}

TEST(Codec, MaxFrameBytesIsInclusiveAndAdjustable) {
  std::string bytes = SampleFrame(Body::Publish);
  size_t body = bytes.size() - kLengthPrefixBytes;
  FrameDecoder d(body);
  d.Append(bytes);
  const Frame* frame = nullptr;
  Status error;
  ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kFrame) << error.ToString();
  d.set_max_frame_bytes(body - 1);
  EXPECT_EQ(d.max_frame_bytes(), body - 1);
  d.Append(bytes);
  ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kError);
  EXPECT_THAT(error.message(), HasSubstr("exceeds max_frame_bytes"));
}

TEST(Codec, ZeroAndShortLengths) {
  EXPECT_EQ(DecodeError(Prefix(0)).message(), "frame of 0 bytes is too short");
  EXPECT_EQ(DecodeError(Prefix(4) + "SLF1").message(), "frame of 4 bytes is too short");
  EXPECT_EQ(DecodeError(Prefix(7) + std::string(7, '\0')).code(), StatusCode::kProtocol);
}

TEST(Codec, WrongFileIdentifier) {
  std::string bytes = SampleFrame(Body::Hello);
  ASSERT_EQ(bytes.substr(8, 4), "SLF1");
  bytes[11] = '2';
  EXPECT_EQ(DecodeError(bytes).message(), "frame does not carry the sluice identifier \"SLF1\"");
}

TEST(Codec, CorruptRootOffsetFailsVerification) {
  std::string bytes = SampleFrame(Body::Publish);
  // The root offset (bytes 4..7) now points past the end of the frame.
  std::string bad = bytes;
  std::memcpy(bad.data() + 4, Prefix(0x7ffffff0).data(), 4);
  Status error = DecodeError(bad);
  EXPECT_EQ(error.code(), StatusCode::kProtocol);
  EXPECT_THAT(error.message(), HasSubstr("failed FlatBuffers verification"));
}

TEST(Codec, EveryCorruptedByteIsVerifiedOrRefused) {
  // Overwriting any one byte after the identifier must either still verify (a scalar changed) or fail
  // verification: never crash, never hand out a frame that points outside itself (ASan checks).
  for (Body type : AllBodies()) {
    std::string bytes = SampleFrame(type);
    int refused = 0;
    for (size_t i = 12; i < bytes.size(); ++i) {
      for (char v : {'\xff', '\x7f', '\x00', '\x80'}) {
        std::string bad = bytes;
        if (bad[i] == v) continue;
        bad[i] = v;
        FrameDecoder d(kMax);
        d.Append(bad);
        const Frame* frame = nullptr;
        Status error;
        auto outcome = d.Next(&frame, &error);
        if (outcome == FrameDecoder::Outcome::kError) {
          ++refused;
          EXPECT_EQ(error.code(), StatusCode::kProtocol);
        } else {
          ASSERT_EQ(outcome, FrameDecoder::Outcome::kFrame);
        }
      }
    }
    EXPECT_GT(refused, 0) << BodyName(type);
  }
}

TEST(Codec, UnknownBodyType) {
  for (uint8_t type : {uint8_t{0}, static_cast<uint8_t>(static_cast<uint8_t>(Body::MAX) + 1),
                       uint8_t{200}}) {
    flatbuffers::FlatBufferBuilder fbb;
    auto credit = CreateCredit(fbb, 1, 2);
    FinishFrame(fbb, static_cast<Body>(type), credit.Union());
    std::string bytes = ToBytes(fbb);
    EXPECT_EQ(DecodeError(bytes).message(),
              "frame has unknown body type " + std::to_string(type));
  }
}

TEST(Codec, RequiredFieldMissingFailsVerification) {
  // Publish.envelope is required; a builder that skips it gives a frame the verifier refuses.
  flatbuffers::FlatBufferBuilder fbb;
  PublishBuilder pb(fbb);
  pb.add_request_id(1);
  auto publish = flatbuffers::Offset<Publish>(pb.fbb_.EndTable(pb.start_));
  FinishFrame(fbb, Body::Publish, publish.Union());
  EXPECT_THAT(DecodeError(ToBytes(fbb)).message(), HasSubstr("failed FlatBuffers verification"));
}

TEST(Codec, DeliverWithCorruptNestedEnvelope) {
  std::string stored = StoredEnvelope();
  // The nested envelope's root offset points past its end.
  std::string bad = stored;
  std::memcpy(bad.data(), Prefix(0x00ffff00).data(), 4);
  for (const std::string& envelope : {bad, std::string(16, '\xff'), std::string(3, '\0')}) {
    flatbuffers::FlatBufferBuilder fbb;
    auto nested = CreateNestedEnvelope(fbb, envelope);
    FinishFrame(fbb, Body::Deliver, CreateDeliver(fbb, 1, 2, 1, nested).Union());
    EXPECT_THAT(DecodeError(ToBytes(fbb)).message(), HasSubstr("failed FlatBuffers verification"));
  }
}

TEST(Codec, DeliverWithMisalignedNestedEnvelope) {
  std::string stored = StoredEnvelope();
  ASSERT_EQ(stored.size() % 8, 0u);
  flatbuffers::FlatBufferBuilder fbb;
  // Align the vector's end, then 4 bytes of padding behind it: its data starts at 4 modulo 8.
  fbb.ForceVectorAlignment(stored.size(), 1, 8);
  fbb.Pad(4);
  auto nested = fbb.CreateVector(reinterpret_cast<const uint8_t*>(stored.data()), stored.size());
  FinishFrame(fbb, Body::Deliver, CreateDeliver(fbb, 1, 2, 1, nested).Union());
  EXPECT_EQ(DecodeError(ToBytes(fbb)).message(), "Deliver envelope is not 8-byte aligned in the frame");
}

TEST(Codec, RandomBytesAreRefused) {
  std::mt19937 rng(12345);
  for (int i = 0; i < 2000; ++i) {
    std::string bytes(4 + rng() % 256, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    // Half the inputs get a plausible length so the body, not just the prefix, is random.
    if (i % 2 == 0) {
      std::string prefix = Prefix(static_cast<uint32_t>(bytes.size() - 4));
      std::memcpy(bytes.data(), prefix.data(), 4);
    }
    FrameDecoder d(kMax);
    d.Append(bytes);
    const Frame* frame = nullptr;
    Status error;
    auto outcome = d.Next(&frame, &error);
    ASSERT_NE(outcome, FrameDecoder::Outcome::kFrame) << "input " << i;
    if (outcome == FrameDecoder::Outcome::kError) {
      EXPECT_EQ(error.code(), StatusCode::kProtocol);
    }
  }
}

TEST(Codec, StaysFailedAfterAnError) {
  FrameDecoder d(kMax);
  d.Append(Prefix(0));
  const Frame* frame = nullptr;
  Status error;
  ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kError);
  Status first = error;
  d.Append(SampleFrame(Body::Hello));
  for (int i = 0; i < 3; ++i) {
    error = Status();
    ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kError);
    EXPECT_EQ(error.message(), first.message());
    EXPECT_EQ(frame, nullptr);
  }
}

TEST(Codec, EmptyAppendIsHarmless) {
  FrameDecoder d(kMax);
  d.Append("");
  const Frame* frame = nullptr;
  Status error;
  EXPECT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kNeedMore);
  EXPECT_EQ(d.buffered_bytes(), 0u);
}

TEST(Codec, VerifyFrameChecksPrefixAndAlignment) {
  std::string bytes = SampleFrame(Body::Hello);
  // An 8-aligned copy: std::string's own storage gives no alignment promise.
  std::vector<uint64_t> storage(bytes.size() / 8 + 2);
  auto* aligned = reinterpret_cast<uint8_t*>(storage.data());
  std::memcpy(aligned, bytes.data(), bytes.size());
  auto ok = VerifyFrame(aligned, bytes.size(), kMax);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  ExpectSample(*ok, Body::Hello);

  auto mismatch = VerifyFrame(aligned, bytes.size() - 1, kMax);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_THAT(mismatch.status().message(), HasSubstr("length prefix says"));

  auto no_prefix = VerifyFrame(aligned, 3, kMax);
  ASSERT_FALSE(no_prefix.ok());
  EXPECT_THAT(no_prefix.status().message(), HasSubstr("has no length prefix"));

  std::memmove(aligned + 4, aligned, bytes.size());
  auto misaligned = VerifyFrame(aligned + 4, bytes.size(), kMax);
  ASSERT_FALSE(misaligned.ok());
  EXPECT_EQ(misaligned.status().code(), StatusCode::kInternal);
}

TEST(Codec, BuildErrorRoundTrips) {
  flatbuffers::FlatBufferBuilder fbb;
  BuildError(fbb, 77, ErrorCode::UnsupportedVersion, "protocol version 9 is not supported (1)", true);
  FrameDecoder d(kMax);
  d.Append(ToBytes(fbb));
  const Frame* frame = nullptr;
  Status error;
  ASSERT_EQ(d.Next(&frame, &error), FrameDecoder::Outcome::kFrame) << error.ToString();
  ASSERT_EQ(frame->body_type(), Body::Error);
  EXPECT_EQ(BodyName(frame->body_type()), "Error");
  const Error* e = frame->body_as_Error();
  EXPECT_EQ(e->request_id(), 77u);
  EXPECT_EQ(e->code(), ErrorCode::UnsupportedVersion);
  EXPECT_EQ(Str(e->message()), "protocol version 9 is not supported (1)");
  EXPECT_TRUE(e->fatal());
  // The smallest max_frame_bytes a config may set still fits an Error with a long message.
  flatbuffers::FlatBufferBuilder big;
  BuildError(big, 0, ErrorCode::Malformed, std::string(800, 'x'), false);
  EXPECT_LE(big.GetSize(), kMinMaxFrameBytes);
}

TEST(Codec, BodyNames) {
  EXPECT_EQ(BodyName(Body::Publish), "Publish");
  EXPECT_EQ(BodyName(Body::AdminResponse), "AdminResponse");
  EXPECT_EQ(BodyName(Body::NONE), "unknown");
  EXPECT_EQ(BodyName(static_cast<Body>(200)), "unknown");
}

TEST(Codec, ErrorCodeForEveryStatusCode) {
  struct Case {
    StatusCode status;
    ErrorCode wire;
  };
  const Case cases[] = {
      {StatusCode::kOk, ErrorCode::Ok},
      {StatusCode::kInvalidArgument, ErrorCode::InvalidArgument},
      {StatusCode::kNotFound, ErrorCode::NotFound},
      {StatusCode::kAlreadyExists, ErrorCode::InvalidArgument},
      {StatusCode::kLimitExceeded, ErrorCode::LimitExceeded},
      {StatusCode::kStorageFull, ErrorCode::StorageFull},
      {StatusCode::kUnavailable, ErrorCode::Unavailable},
      {StatusCode::kPermissionDenied, ErrorCode::PermissionDenied},
      {StatusCode::kTimeout, ErrorCode::Timeout},
      {StatusCode::kProtocol, ErrorCode::Malformed},
      {StatusCode::kCorruption, ErrorCode::Internal},
      {StatusCode::kIoError, ErrorCode::Internal},
      {StatusCode::kConflict, ErrorCode::Unavailable},
      {StatusCode::kInternal, ErrorCode::Internal},
  };
  static_assert(std::size(cases) == static_cast<size_t>(StatusCode::kCodeCount));
  for (const Case& c : cases) {
    EXPECT_EQ(ErrorCodeFor(Status(c.status, "m")), c.wire) << StatusCodeName(c.status);
  }
  EXPECT_EQ(ErrorCodeFor(Status::Ok()), ErrorCode::Ok);
}

TEST(Codec, StatusForEveryErrorCode) {
  struct Case {
    ErrorCode wire;
    StatusCode status;
  };
  const Case cases[] = {
      {ErrorCode::Ok, StatusCode::kOk},
      {ErrorCode::Malformed, StatusCode::kProtocol},
      {ErrorCode::FrameTooLarge, StatusCode::kProtocol},
      {ErrorCode::UnsupportedVersion, StatusCode::kProtocol},
      {ErrorCode::HelloRequired, StatusCode::kProtocol},
      {ErrorCode::InvalidArgument, StatusCode::kInvalidArgument},
      {ErrorCode::NotFound, StatusCode::kNotFound},
      {ErrorCode::LimitExceeded, StatusCode::kLimitExceeded},
      {ErrorCode::StorageFull, StatusCode::kStorageFull},
      {ErrorCode::Unavailable, StatusCode::kUnavailable},
      {ErrorCode::PermissionDenied, StatusCode::kPermissionDenied},
      {ErrorCode::Timeout, StatusCode::kTimeout},
      {ErrorCode::Internal, StatusCode::kInternal},
  };
  static_assert(std::size(cases) == static_cast<size_t>(ErrorCode::MAX) + 1);
  for (const Case& c : cases) {
    Status s = StatusFor(c.wire, "the message");
    EXPECT_EQ(s.code(), c.status) << EnumNameErrorCode(c.wire);
    if (!s.ok()) {
      EXPECT_EQ(s.message(), "the message");
    }
  }
  // A code from a newer peer is still an error, never OK.
  EXPECT_EQ(StatusFor(static_cast<ErrorCode>(999), "x").code(), StatusCode::kInternal);
  // Wire codes that name a status survive the trip back.
  for (const Case& c : cases) {
    if (c.wire == ErrorCode::Ok || c.status == StatusCode::kProtocol) continue;
    EXPECT_EQ(ErrorCodeFor(StatusFor(c.wire, "m")), c.wire) << EnumNameErrorCode(c.wire);
  }
}

}  // namespace
}  // namespace sluice::wire

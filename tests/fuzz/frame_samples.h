// SPDX-License-Identifier: MIT
//
// Sample frames: one valid frame of every body type, every field set to a distinctive value (the k*
// constants below), so codec_test can check each field after a round trip and make_frame_seeds can
// write them out as the frame fuzzer's seed corpus. Header-only test support; plain functions with no
// shared state, safe from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "broker/wire/codec.h"

namespace sluice::wire::samples {

inline constexpr uint64_t kRequestId = 0x0102030405060708ull;
inline constexpr uint64_t kConsumerId = 0x1112131415161718ull;
inline constexpr uint64_t kDeliveryId = 0x2122232425262728ull;
inline constexpr uint64_t kReplyToken = 0x3132333435363738ull;
inline constexpr uint64_t kSeq = 99;
inline constexpr uint64_t kIdHi = 0x0192f1e48c3a7b2eull;
inline constexpr uint64_t kIdLo = 0x9f001a2b3c4d5e6full;
inline constexpr int64_t kPublishTimeUs = 1700000000123456;
inline constexpr std::string_view kTopic = "orders";
inline constexpr std::string_view kKey = "order-42";
inline constexpr std::string_view kType = "orders.OrderCreated";
inline constexpr std::string_view kCausationId = "cmd-7";
inline constexpr uint8_t kPayload[] = {0x10, 0x00, 0xff, 0x7f, 0x01};

// Every real body type, in schema order (NONE excluded).
inline std::vector<Body> AllBodies() {
  std::vector<Body> bodies;
  for (Body b : EnumValuesBody()) {
    if (b != Body::NONE) bodies.push_back(b);
  }
  return bodies;
}

inline flatbuffers::Offset<Envelope> AddEnvelope(flatbuffers::FlatBufferBuilder& fbb) {
  Uuid id(kIdHi, kIdLo);
  std::vector<flatbuffers::Offset<Header>> headers = {
      CreateHeaderDirect(fbb, "traceparent", "00-abc-01"),
      CreateHeaderDirect(fbb, "no-value"),
  };
  std::vector<uint8_t> payload(std::begin(kPayload), std::end(kPayload));
  std::string topic(kTopic), key(kKey), type(kType), causation(kCausationId);
  return CreateEnvelopeDirect(fbb, &id, topic.c_str(), key.c_str(), type.c_str(), key.c_str(),
                              causation.c_str(), kPublishTimeUs, &headers, &payload, kSeq);
}

// A stored Envelope as the broker keeps it: a standalone FlatBuffer with root Envelope, no identifier.
inline std::string StoredEnvelope() {
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(AddEnvelope(fbb));
  return std::string(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize());
}

inline std::string ToBytes(const flatbuffers::FlatBufferBuilder& fbb) {
  return std::string(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize());
}

// One complete frame (length prefix included) of body type `type`; empty for Body::NONE.
inline std::string SampleFrame(Body type) {
  flatbuffers::FlatBufferBuilder fbb;
  Uuid id(kIdHi, kIdLo);
  flatbuffers::Offset<void> body;
  switch (type) {
    case Body::Hello:
      body = CreateHelloDirect(fbb, kProtocolVersion, "sluicectl 0.1.0", 65536, "sluiced 0.1.0").Union();
      break;
    case Body::Publish:
      body = CreatePublish(fbb, kRequestId, AddEnvelope(fbb)).Union();
      break;
    case Body::PublishAck:
      body = CreatePublishAck(fbb, kRequestId, kSeq, &id, true).Union();
      break;
    case Body::Subscribe:
      body = CreateSubscribeDirect(fbb, kRequestId, "orders", "inventory", StartKind::Time, kSeq,
                                   kPublishTimeUs, Ordering::Key, 5, 30000, 64)
                 .Union();
      break;
    case Body::SubscribeOk:
      body = CreateSubscribeOk(fbb, kRequestId, kConsumerId).Union();
      break;
    case Body::Deliver: {
      auto envelope = CreateNestedEnvelope(fbb, StoredEnvelope());
      body = CreateDeliver(fbb, kConsumerId, kDeliveryId, 3, envelope, kReplyToken).Union();
      break;
    }
    case Body::Ack: {
      std::vector<uint64_t> ids = {kDeliveryId, kDeliveryId + 1, kDeliveryId + 2};
      body = CreateAckDirect(fbb, kConsumerId, &ids).Union();
      break;
    }
    case Body::Nack:
      body = CreateNackDirect(fbb, kConsumerId, kDeliveryId, 1500, true, "out of stock").Union();
      break;
    case Body::Credit:
      body = CreateCredit(fbb, kConsumerId, 32).Union();
      break;
    case Body::Request:
      body = CreateRequest(fbb, kRequestId, AddEnvelope(fbb), 2500).Union();
      break;
    case Body::Reply:
      body = CreateReplyDirect(fbb, kRequestId, kReplyToken, AddEnvelope(fbb), "handler failed")
                 .Union();
      break;
    case Body::Error:
      BuildError(fbb, kRequestId, ErrorCode::LimitExceeded, "topic 'orders' is full", true);
      return ToBytes(fbb);
    case Body::AdminRequest:
      body = CreateAdminRequestDirect(fbb, kRequestId, "status", R"({"verbose":true})").Union();
      break;
    case Body::AdminResponse:
      body = CreateAdminResponseDirect(fbb, kRequestId, 2, "bad arguments", R"({"uptime_s":7})")
                 .Union();
      break;
    case Body::Bundle: {
      std::vector<uint8_t> key = {'s', 't', 'o', 'c', 'k'};
      std::vector<uint8_t> value = {'4', '2'};
      std::vector<flatbuffers::Offset<KvRead>> reads = {CreateKvReadDirect(fbb, &key, 7)};
      std::vector<flatbuffers::Offset<KvWrite>> writes = {CreateKvWriteDirect(fbb, &key, &value, false)};
      std::vector<flatbuffers::Offset<Envelope>> publishes = {AddEnvelope(fbb)};
      body = CreateBundleDirect(fbb, kRequestId, kConsumerId, kDeliveryId, 9, &reads, &writes, &publishes,
                                AddEnvelope(fbb), nullptr, kReplyToken)
                 .Union();
      break;
    }
    case Body::BundleAck:
      body = CreateBundleAckDirect(fbb, kRequestId, BundleStatus::Conflict, "key 'stock' changed").Union();
      break;
    case Body::NONE:
      // A Frame must have a body: there is no valid frame of this type.
      return {};
  }
  FinishFrame(fbb, type, body);
  return ToBytes(fbb);
}

}  // namespace sluice::wire::samples

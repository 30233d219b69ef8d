// SPDX-License-Identifier: MIT
//
// Tests of the canonical stored envelope (broker/envelope.h): every field survives, seq is present and
// settable in place, and a buffer not built here is refused instead of corrupted.
#include "broker/envelope.h"

#include <gtest/gtest.h>

namespace sluice::broker {
namespace {

EnvelopeFields Sample() {
  EnvelopeFields f;
  f.topic = "orders";
  f.key = "order-17";
  f.type = "orders.OrderCreated";
  f.correlation_id = "corr";
  f.causation_id = "cause";
  f.headers = {{"h1", "v1"}, {"h2", ""}};
  f.payload = std::string("pay\0load", 8);
  return f;
}

TEST(EnvelopeTest, BuildFromFieldsRoundTrips) {
  std::string buf;
  EnvelopeFields f = Sample();
  f.id = Uuid{1, 2};
  f.publish_time_us = 42;
  BuildEnvelope(f, &buf);
  auto env = ReadEnvelope(buf);
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  EXPECT_EQ((*env)->topic()->str(), "orders");
  EXPECT_EQ((*env)->key()->str(), "order-17");
  EXPECT_EQ((*env)->type()->str(), "orders.OrderCreated");
  EXPECT_EQ((*env)->correlation_id()->str(), "corr");
  EXPECT_EQ((*env)->causation_id()->str(), "cause");
  EXPECT_EQ(FromWire((*env)->id()), (Uuid{1, 2}));
  EXPECT_EQ((*env)->publish_time_us(), 42);
  ASSERT_EQ((*env)->headers()->size(), 2u);
  EXPECT_EQ((*env)->headers()->Get(1)->name()->str(), "h2");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*env)->payload()->data()), (*env)->payload()->size()),
            f.payload);
}

TEST(EnvelopeTest, StoredEnvelopeCopiesFieldsAndSetsIdAndTime) {
  std::string client;
  BuildEnvelope(Sample(), &client);  // no id, as a publisher may send it
  auto in = ReadEnvelope(client);
  ASSERT_TRUE(in.ok());
  EXPECT_EQ((*in)->id(), nullptr);
  std::string stored;
  BuildStoredEnvelope(**in, Uuid{7, 8}, 123456, "test-client", &stored);
  auto env = ReadEnvelope(stored);
  ASSERT_TRUE(env.ok());
  EXPECT_EQ(FromWire((*env)->id()), (Uuid{7, 8}));
  EXPECT_EQ((*env)->publish_time_us(), 123456);
  EXPECT_EQ((*env)->key()->str(), "order-17");
  EXPECT_EQ((*env)->headers()->size(), 2u);
  EXPECT_EQ((*env)->payload()->size(), 8u);
  EXPECT_EQ((*env)->seq(), 0u);
  // The broker, not the publisher, says who published it.
  EXPECT_EQ((*env)->source()->str(), "test-client");
}

TEST(EnvelopeTest, SeqIsSetInPlace) {
  std::string client, stored;
  BuildEnvelope(Sample(), &client);
  BuildStoredEnvelope(**ReadEnvelope(client), Uuid{1, 1}, 1, "test-client", &stored);
  size_t size = stored.size();
  ASSERT_TRUE(SetEnvelopeSeq(&stored, 0x0123456789abcdefull));
  EXPECT_EQ(stored.size(), size);
  auto env = ReadEnvelope(stored);
  ASSERT_TRUE(env.ok());
  EXPECT_EQ((*env)->seq(), 0x0123456789abcdefull);
  EXPECT_EQ((*env)->key()->str(), "order-17");
}

TEST(EnvelopeTest, SeqCannotBeSetWhenAbsent) {
  // A minimal envelope built without ForceDefaults has no seq field.
  flatbuffers::FlatBufferBuilder fbb;
  auto topic = fbb.CreateString("t");
  wire::EnvelopeBuilder b(fbb);
  b.add_topic(topic);
  fbb.Finish(b.Finish());
  std::string buf(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize());
  std::string before = buf;
  EXPECT_FALSE(SetEnvelopeSeq(&buf, 5));
  EXPECT_EQ(buf, before);
}

TEST(EnvelopeTest, GarbageIsRejected) {
  std::string junk(64, '\x7f');
  EXPECT_FALSE(ReadEnvelope(junk).ok());
  std::string tiny = "ab";
  EXPECT_FALSE(SetEnvelopeSeq(&tiny, 1));
}

}  // namespace
}  // namespace sluice::broker

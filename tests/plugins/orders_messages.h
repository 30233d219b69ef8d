// SPDX-License-Identifier: MIT
//
// Test helpers for the order pipeline plugins: builders for every orders.* payload, a verified reader
// for the payloads the plugins produce, and InMessage shorthands for requests and events. Header-only;
// plain functions, safe on any thread.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "orders_generated.h"
#include "plugins/testing/fake_host.h"

namespace sluice::testing {

struct ItemSpec {
  std::string sku;
  int64_t quantity = 1;
  std::optional<int64_t> unit_price_cents;
};

inline std::string Finish(flatbuffers::FlatBufferBuilder& fbb) {
  return {reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize()};
}

inline flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<orders::LineItem>>> BuildItems(
    flatbuffers::FlatBufferBuilder& fbb, const std::vector<ItemSpec>& items) {
  std::vector<flatbuffers::Offset<orders::LineItem>> out;
  for (const auto& item : items) {
    auto sku = fbb.CreateString(item.sku);
    out.push_back(orders::CreateLineItem(fbb, sku, item.quantity,
                                         item.unit_price_cents
                                             ? flatbuffers::Optional<int64_t>(*item.unit_price_cents)
                                             : flatbuffers::nullopt));
  }
  return fbb.CreateVector(out);
}

inline int64_t Total(const std::vector<ItemSpec>& items) {
  int64_t total = 0;
  for (const auto& i : items) total += i.quantity * i.unit_price_cents.value_or(0);
  return total;
}

inline std::string PlaceOrderPayload(const std::string& email, const std::vector<ItemSpec>& items,
                                     const std::string& idempotency_key = "") {
  flatbuffers::FlatBufferBuilder fbb;
  auto e = fbb.CreateString(email);
  auto lines = BuildItems(fbb, items);
  auto key = idempotency_key.empty() ? 0 : fbb.CreateString(idempotency_key);
  orders::FinishPlaceOrderBuffer(fbb, orders::CreatePlaceOrder(fbb, e, lines, key));
  return Finish(fbb);
}

inline std::string GetOrderPayload(const std::string& id) {
  flatbuffers::FlatBufferBuilder fbb;
  auto s = fbb.CreateString(id);
  orders::FinishGetOrderBuffer(fbb, orders::CreateGetOrder(fbb, s));
  return Finish(fbb);
}

inline std::string ListOrdersPayload(orders::OrderStatus status, uint32_t limit = 0,
                                     const std::string& after = "") {
  flatbuffers::FlatBufferBuilder fbb;
  auto a = after.empty() ? 0 : fbb.CreateString(after);
  orders::FinishListOrdersBuffer(fbb, orders::CreateListOrders(fbb, status, limit, a));
  return Finish(fbb);
}

inline std::string OrderCreatedPayload(const std::string& id, const std::string& email,
                                       const std::vector<ItemSpec>& items, int64_t created_us) {
  flatbuffers::FlatBufferBuilder fbb;
  auto i = fbb.CreateString(id);
  auto e = fbb.CreateString(email);
  auto lines = BuildItems(fbb, items);
  orders::FinishOrderCreatedBuffer(fbb,
                                   orders::CreateOrderCreated(fbb, i, e, lines, Total(items), created_us));
  return Finish(fbb);
}

inline std::string OrderConfirmedPayload(const std::string& id, const std::string& email,
                                         const std::vector<ItemSpec>& items) {
  flatbuffers::FlatBufferBuilder fbb;
  auto i = fbb.CreateString(id);
  auto e = fbb.CreateString(email);
  auto lines = BuildItems(fbb, items);
  orders::FinishOrderConfirmedBuffer(fbb, orders::CreateOrderConfirmed(fbb, i, e, lines, Total(items), 1));
  return Finish(fbb);
}

inline std::string OrderCancelledPayload(const std::string& id, const std::string& email,
                                         const std::vector<ItemSpec>& items, const std::string& reason) {
  flatbuffers::FlatBufferBuilder fbb;
  auto i = fbb.CreateString(id);
  auto e = fbb.CreateString(email);
  auto lines = BuildItems(fbb, items);
  auto r = fbb.CreateString(reason);
  orders::FinishOrderCancelledBuffer(fbb, orders::CreateOrderCancelled(fbb, i, e, lines, Total(items), r, 1));
  return Finish(fbb);
}

inline std::string InventoryReservedPayload(const std::string& id) {
  flatbuffers::FlatBufferBuilder fbb;
  auto i = fbb.CreateString(id);
  orders::FinishInventoryReservedBuffer(fbb, orders::CreateInventoryReserved(fbb, i));
  return Finish(fbb);
}

inline std::string InventoryFailedPayload(const std::string& id, const std::string& reason) {
  flatbuffers::FlatBufferBuilder fbb;
  auto i = fbb.CreateString(id);
  auto r = fbb.CreateString(reason);
  orders::FinishInventoryFailedBuffer(fbb, orders::CreateInventoryFailed(fbb, i, 0, r));
  return Finish(fbb);
}

inline std::string SetStockPayload(const std::string& sku, int64_t quantity) {
  flatbuffers::FlatBufferBuilder fbb;
  auto s = fbb.CreateString(sku);
  orders::FinishSetStockBuffer(fbb, orders::CreateSetStock(fbb, s, quantity));
  return Finish(fbb);
}

inline std::string ShowStockPayload(const std::string& sku = "") {
  flatbuffers::FlatBufferBuilder fbb;
  auto s = sku.empty() ? 0 : fbb.CreateString(sku);
  orders::FinishShowStockBuffer(fbb, orders::CreateShowStock(fbb, s));
  return Finish(fbb);
}

inline std::string AnalyticsQueryPayload(uint32_t minutes) {
  flatbuffers::FlatBufferBuilder fbb;
  orders::FinishAnalyticsQueryBuffer(fbb, orders::CreateAnalyticsQuery(fbb, minutes));
  return Finish(fbb);
}

// A payload a plugin produced, copied to aligned storage and verified with its file identifier.
template <typename T>
class Parsed {
 public:
  Parsed(const std::string& bytes, const char* identifier) {
    storage_.reset(new uint64_t[(bytes.size() + 7) / 8 + 1]);
    std::memcpy(storage_.get(), bytes.data(), bytes.size());
    const auto* data = reinterpret_cast<const uint8_t*>(storage_.get());
    flatbuffers::Verifier verifier(data, bytes.size());
    if (verifier.VerifyBuffer<T>(identifier)) root_ = flatbuffers::GetRoot<T>(data);
  }
  const T* operator->() const { return root_; }
  const T* get() const { return root_; }
  explicit operator bool() const { return root_ != nullptr; }

 private:
  std::unique_ptr<uint64_t[]> storage_;
  const T* root_ = nullptr;
};

inline InMessage Request(const std::string& topic, const std::string& type, std::string payload) {
  InMessage m;
  m.topic = topic;
  m.type = type;
  m.payload = std::move(payload);
  m.is_request = true;
  return m;
}

inline InMessage Event(const std::string& topic, const std::string& type, const std::string& order_id,
                       std::string payload) {
  InMessage m;
  m.topic = topic;
  m.type = type;
  m.key = order_id;
  m.correlation_id = order_id;
  m.payload = std::move(payload);
  return m;
}

inline std::string Str(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

}  // namespace sluice::testing

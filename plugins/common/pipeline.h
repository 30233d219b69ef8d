// SPDX-License-Identifier: MIT
//
// Helpers shared by the first-party order pipeline plugins (order, inventory, notification): topic and
// type names, the input checks they agree on (email address, SKU, order id), money formatting,
// verified access to FlatBuffers read from the keyspace, and the all-or-nothing effect and reply
// helpers over sluice::sdk::Context. Header-only; the free functions are pure and safe on any thread,
// Effects lives inside one handle() call like the Context it wraps. The analytics plugin deliberately
// does not include this file: it is built from the installed SDK alone, as a third party would.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/plugin.hpp"

namespace sluice::pipeline {

namespace sdk = ::sluice::sdk;

// Prefetch of the pipeline's subscriptions. A worker returns credit when a message's bundle commits,
// so a subscription moves at most `prefetch` messages per commit round trip: with the SDK's 64, the
// confirmation path fell behind placement at 128 clients (7,300-8,300 orders/s to CONFIRMED against
// 9,600-11,000 placed, and a growing backlog); with 256 it keeps up (bench/README.md). The price is
// that more messages come back at once after a worker crash.
inline constexpr uint32_t kPipelinePrefetch = 256;

// Topics (fixed: the daemon config and sluicectl use the same names).
inline constexpr std::string_view kOrderCommands = "order.commands";
inline constexpr std::string_view kOrderEvents = "order.events";
inline constexpr std::string_view kInventoryCommands = "inventory.commands";
inline constexpr std::string_view kInventoryEvents = "inventory.events";

// Envelope types: "orders." + the table name.
inline constexpr std::string_view kPlaceOrder = "orders.PlaceOrder";
inline constexpr std::string_view kPlaceOrderReply = "orders.PlaceOrderReply";
inline constexpr std::string_view kGetOrder = "orders.GetOrder";
inline constexpr std::string_view kOrderView = "orders.OrderView";
inline constexpr std::string_view kListOrders = "orders.ListOrders";
inline constexpr std::string_view kOrderList = "orders.OrderList";
inline constexpr std::string_view kOrderCreated = "orders.OrderCreated";
inline constexpr std::string_view kOrderConfirmed = "orders.OrderConfirmed";
inline constexpr std::string_view kOrderCancelled = "orders.OrderCancelled";
inline constexpr std::string_view kInventoryReserved = "orders.InventoryReserved";
inline constexpr std::string_view kInventoryFailed = "orders.InventoryFailed";
inline constexpr std::string_view kSetStock = "orders.SetStock";
inline constexpr std::string_view kShowStock = "orders.ShowStock";
inline constexpr std::string_view kStockList = "orders.StockList";

// Subscription `index` delivers only messages of `types`; the broker acks the others unseen, so the
// plugin does not wake up for events it ignores. A host that cannot (older than ABI 1.2) delivers every
// type, which the handlers skip anyway: a failure is only logged.
inline void DeliverOnly(const sdk::InitInfo& info, size_t index, const std::vector<std::string>& types) {
  if (int rc = info.SetSubscriptionTypes(index, types); rc != 0) {
    info.Log(SLUICE_LOG_WARNING, "the host delivers every event type (set_subscription_types: " +
                                     std::string(std::strerror(-rc)) + ")");
  }
}

inline constexpr size_t kMaxEmailBytes = 254;  // RFC 5321's path limit, less the angle brackets
inline constexpr size_t kMaxSkuBytes = 64;

// Returns "" when `email` is a plain address (local@domain.tld), else why it is not. Deliberately
// narrower than RFC 5322: no quoted local parts, comments or address literals, ASCII only (no
// SMTPUTF8), at least two domain labels. Whatever passes is safe to put in a mail header as is (no
// spaces, CR or LF).
inline std::string CheckEmail(std::string_view email) {
  if (email.empty()) return "required";
  if (email.size() > kMaxEmailBytes) return "longer than 254 bytes";
  size_t at = email.find('@');
  if (at == std::string_view::npos || email.find('@', at + 1) != std::string_view::npos) {
    return "must contain exactly one '@'";
  }
  std::string_view local = email.substr(0, at);
  std::string_view domain = email.substr(at + 1);
  if (local.empty() || local.size() > 64) return "the part before '@' must be 1 to 64 characters";
  if (local.front() == '.' || local.back() == '.' || local.find("..") != std::string_view::npos) {
    return "the part before '@' has a misplaced '.'";
  }
  static constexpr std::string_view kLocalSpecials = "!#$%&'*+/=?^_`{|}~.-";
  for (char c : local) {
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && kLocalSpecials.find(c) == std::string_view::npos) {
      return "the part before '@' has a character that is not allowed";
    }
  }
  if (domain.empty()) return "the domain after '@' is missing";
  int labels = 0;
  size_t start = 0;
  while (start <= domain.size()) {
    size_t dot = domain.find('.', start);
    std::string_view label =
        domain.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63) return "the domain has an empty or overlong label";
    if (label.front() == '-' || label.back() == '-') return "a domain label starts or ends with '-'";
    for (char c : label) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
      if (!ok) return "the domain has a character that is not allowed";
    }
    ++labels;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  if (labels < 2) return "the domain needs at least two labels (example.com)";
  return "";
}

// [A-Za-z0-9._-]{1,max}: SKUs and order ids, which become parts of keyspace keys and mail text.
inline bool IsToken(std::string_view s, size_t max = kMaxSkuBytes) {
  if (s.empty() || s.size() > max) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// 1250 -> "12.50"; money is currency-free cents.
inline std::string FormatCents(int64_t cents) {
  char buf[48];
  uint64_t magnitude = cents < 0 ? 0 - static_cast<uint64_t>(cents) : static_cast<uint64_t>(cents);
  std::snprintf(buf, sizeof(buf), "%s%llu.%02llu", cents < 0 ? "-" : "",
                static_cast<unsigned long long>(magnitude / 100),
                static_cast<unsigned long long>(magnitude % 100));
  return buf;
}

inline std::string Str(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

// A FlatBuffer from the keyspace or a payload, copied to 8-byte aligned storage (LMDB values and
// payload bytes carry no alignment promise) and verified with `identifier`. get() is nullptr when the
// bytes are not a valid T. The root lives as long as this object.
template <typename T>
class Verified {
 public:
  Verified(std::string_view bytes, const char* identifier) {
    if (bytes.size() < sizeof(flatbuffers::uoffset_t) + flatbuffers::kFileIdentifierLength) return;
    storage_.reset(new uint64_t[(bytes.size() + 7) / 8]);
    std::memcpy(storage_.get(), bytes.data(), bytes.size());
    const auto* data = reinterpret_cast<const uint8_t*>(storage_.get());
    flatbuffers::Verifier verifier(data, bytes.size());
    if (verifier.VerifyBuffer<T>(identifier)) root_ = flatbuffers::GetRoot<T>(data);
  }
  const T* get() const { return root_; }
  const T* operator->() const { return root_; }
  explicit operator bool() const { return root_ != nullptr; }

 private:
  std::unique_ptr<uint64_t[]> storage_;
  const T* root_ = nullptr;
};

// Collects a handler's writes and publishes, remembering the first failure: the handler then returns
// Retry, which discards everything it did (the host's bundle), so nothing is half-applied.
class Effects {
 public:
  explicit Effects(sdk::Context& ctx) : ctx_(ctx) {}
  void Put(std::string_view key, std::string_view value) { Note(ctx_.Put(key, value), "put"); }
  void Delete(std::string_view key) { Note(ctx_.Delete(key), "delete"); }
  void Publish(const sdk::Out& out) { Note(ctx_.Publish(out), "publish"); }
  bool failed() const { return !failure_.empty(); }
  sdk::Result Retry() const { return sdk::Result::Retry(std::chrono::milliseconds(0), failure_); }

 private:
  void Note(int rc, const char* what) {
    if (rc != 0 && failure_.empty()) failure_ = std::string(what) + " failed: error " + std::to_string(-rc);
  }
  sdk::Context& ctx_;
  std::string failure_;
};

// Answers the request being handled; a host refusal becomes a Retry (the bundle is discarded).
inline sdk::Result Reply(sdk::Context& ctx, std::string_view type, std::string_view payload) {
  int rc = ctx.Reply({.type = type, .payload = payload});
  if (rc != 0) {
    return sdk::Result::Retry(std::chrono::milliseconds(0), "reply failed: error " + std::to_string(-rc));
  }
  return sdk::Result::Ok();
}

// A config value that must be an integer in [lo, hi].
inline std::optional<int64_t> IntIn(const nlohmann::json& v, int64_t lo, int64_t hi) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(hi)) return std::nullopt;
    auto i = static_cast<int64_t>(u);
    return i >= lo ? std::optional<int64_t>(i) : std::nullopt;
  }
  if (!v.is_number_integer()) return std::nullopt;
  auto i = v.get<int64_t>();
  if (i < lo || i > hi) return std::nullopt;
  return i;
}

}  // namespace sluice::pipeline

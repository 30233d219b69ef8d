// SPDX-License-Identifier: MIT
//
// The C++ layer over the sluice plugin ABI (sluice/plugin.h): RAII, std::string_view access, typed
// FlatBuffers payloads, and exceptions caught at the boundary. A plugin is a class deriving from
// sluice::sdk::Plugin plus one SLUICE_PLUGIN(...) line:
//
//   class Greeter : public sluice::sdk::Plugin {
//    public:
//     sluice::sdk::Result Handle(const sluice::sdk::Message& m, sluice::sdk::Context& ctx) override {
//       auto seen = ctx.Get("count");
//       ctx.Put("count", std::to_string(seen ? std::stoi(*seen) + 1 : 1));
//       ctx.Publish({.topic = "greetings", .type = "text", .payload = "hello"});
//       return sluice::sdk::Result::Ok();
//     }
//   };
//   static const sluice_subscription kSubs[] = {{"names", "greeter", SLUICE_START_EARLIEST}};
//   static const char* const kPublishes[] = {"greetings"};
//   SLUICE_PLUGIN(Greeter, "greeter", "1.0", kSubs, kPublishes)
//
// A class that also declares `int Sync()` gets the ABI's sync() callback: the host calls it before it
// commits the bundles of the messages handled since the last call, so a plugin can make the outside
// effects of many messages durable at once (0, or a negative errno to retry them all).
//
// Threading and lifetimes are those of plugin.h: one call at a time per instance; a Message and a
// Context are valid only during Handle(). Header-only, so the SDK has no library to link.
#pragma once

#include <array>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <flatbuffers/flatbuffers.h>
#include <nlohmann/json.hpp>

#include "sluice/plugin.h"

namespace sluice::sdk {

inline std::string_view View(sluice_str s) { return {s.data ? s.data : "", s.size}; }
inline std::string_view View(sluice_bytes b) {
  return {b.data ? static_cast<const char*>(b.data) : "", b.size};
}
inline sluice_str CStr(std::string_view s) { return {s.data(), s.size()}; }
inline sluice_bytes CBytes(std::string_view s) { return {s.data(), s.size()}; }

class Result {
 public:
  static Result Ok() { return Result(SLUICE_OK, 0, {}); }
  // Redeliver later: after `after`, or after the subscription's backoff when zero.
  static Result Retry(std::chrono::milliseconds after = std::chrono::milliseconds(0),
                      std::string reason = {}) {
    return Result(SLUICE_RETRY, static_cast<uint32_t>(after.count()), std::move(reason));
  }
  // Dead-letter the message now with `reason` (a permanent failure: bad input).
  static Result Reject(std::string reason) { return Result(SLUICE_REJECT, 0, std::move(reason)); }

  sluice_outcome outcome() const { return outcome_; }
  uint32_t retry_after_ms() const { return retry_after_ms_; }
  const std::string& reason() const { return reason_; }

 private:
  Result(sluice_outcome o, uint32_t ms, std::string reason)
      : outcome_(o), retry_after_ms_(ms), reason_(std::move(reason)) {}
  sluice_outcome outcome_;
  uint32_t retry_after_ms_;
  std::string reason_;
};

class Message {
 public:
  explicit Message(const sluice_message* m) : m_(m) {}

  std::string_view topic() const { return View(m_->topic); }
  std::string_view key() const { return View(m_->key); }
  std::string_view type() const { return View(m_->type); }
  std::string_view correlation_id() const { return View(m_->correlation_id); }
  std::string_view causation_id() const { return View(m_->causation_id); }
  std::string_view subscription() const { return m_->subscription ? m_->subscription : ""; }
  std::string_view payload() const { return View(m_->payload); }
  int64_t publish_time_us() const { return m_->publish_time_us; }
  uint64_t seq() const { return m_->seq; }
  uint32_t delivery_count() const { return m_->delivery_count; }
  bool is_request() const { return m_->is_request != 0; }
  const uint8_t* id_bytes() const { return m_->id; }

  // "0192f1e4-8c3a-7b2e-9f00-1a2b3c4d5e6f"
  std::string id() const {
    static const char* kHex = "0123456789abcdef";
    std::string out;
    for (int i = 0; i < 16; ++i) {
      if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
      out.push_back(kHex[m_->id[i] >> 4]);
      out.push_back(kHex[m_->id[i] & 15]);
    }
    return out;
  }

  std::optional<std::string_view> header(std::string_view name) const {
    for (size_t i = 0; i < m_->n_headers; ++i) {
      if (View(m_->headers[i].name) == name) return View(m_->headers[i].value);
    }
    return std::nullopt;
  }

  // The payload as a verified FlatBuffer of root type T, or nullptr when it is not one (or does not
  // carry `identifier`, when given). The payload is copied to aligned storage that lives as long as
  // this Message object.
  template <typename T>
  const T* As(const char* identifier = nullptr) const {
    std::string_view p = payload();
    if (p.size() < sizeof(flatbuffers::uoffset_t)) return nullptr;
    aligned_.reset(new uint64_t[(p.size() + 7) / 8]);
    std::memcpy(aligned_.get(), p.data(), p.size());
    const auto* data = reinterpret_cast<const uint8_t*>(aligned_.get());
    flatbuffers::Verifier verifier(data, p.size());
    if (!verifier.VerifyBuffer<T>(identifier)) return nullptr;
    return flatbuffers::GetRoot<T>(data);
  }

  const sluice_message* raw() const { return m_; }

 private:
  const sluice_message* m_;
  mutable std::unique_ptr<uint64_t[]> aligned_;
};

// What to publish or reply. Empty correlation_id: the input message's.
struct Out {
  std::string_view topic{};
  std::string_view key{};
  std::string_view type{};
  std::string_view payload{};
  std::string_view correlation_id{};
  std::vector<std::pair<std::string, std::string>> headers{};
};

// The payload bytes of a finished FlatBufferBuilder.
inline std::string_view Bytes(const flatbuffers::FlatBufferBuilder& fbb) {
  return {reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize()};
}

class Context {
 public:
  Context(sluice_context* ctx, const sluice_host_api* api) : ctx_(ctx), api_(api) {}

  std::optional<std::string> Get(std::string_view key) {
    sluice_bytes value{nullptr, 0};
    if (api_->kv_get(ctx_, CBytes(key), &value) != 0) return std::nullopt;
    return std::string(View(value));
  }
  // 0 or a negative errno (a key or value over the limits).
  int Put(std::string_view key, std::string_view value) {
    return api_->kv_put(ctx_, CBytes(key), CBytes(value));
  }
  int Delete(std::string_view key) { return api_->kv_delete(ctx_, CBytes(key)); }
  // Calls fn(key, value) for keys starting with `prefix` in order, until it returns false.
  int Scan(std::string_view prefix, size_t limit,
           const std::function<bool(std::string_view, std::string_view)>& fn) {
    auto thunk = [](void* user, sluice_bytes k, sluice_bytes v) -> int {
      auto* f = static_cast<const std::function<bool(std::string_view, std::string_view)>*>(user);
      return (*f)(View(k), View(v)) ? 0 : 1;
    };
    return api_->kv_scan(ctx_, CBytes(prefix), limit, thunk,
                         const_cast<std::function<bool(std::string_view, std::string_view)>*>(&fn));
  }
  // 0, or -EPERM for an undeclared topic.
  int Publish(const Out& m) {
    auto c = ToC(m);
    return api_->publish(ctx_, &c.msg);
  }
  // 0, or -EINVAL when the input is not a request.
  int Reply(const Out& m) {
    auto c = ToC(m);
    return api_->reply(ctx_, &c.msg);
  }
  int64_t NowUs() { return api_->now_us(ctx_); }
  void Log(int level, const std::string& message) { api_->log(ctx_, level, message.c_str()); }
  void Info(const std::string& message) { Log(SLUICE_LOG_INFO, message); }
  void Warning(const std::string& message) { Log(SLUICE_LOG_WARNING, message); }

 private:
  struct CMessage {
    sluice_out_message msg;
    std::string topic;
    std::vector<sluice_header> headers;
  };
  static CMessage ToC(const Out& m) {
    CMessage c{};
    c.topic = std::string(m.topic);
    for (const auto& [k, v] : m.headers) c.headers.push_back({CStr(k), CStr(v)});
    c.msg.topic = c.topic.c_str();
    c.msg.key = CStr(m.key);
    c.msg.type = CStr(m.type);
    c.msg.correlation_id = CStr(m.correlation_id);
    c.msg.headers = c.headers.data();
    c.msg.n_headers = c.headers.size();
    c.msg.payload = CBytes(m.payload);
    return c;
  }
  sluice_context* ctx_;
  const sluice_host_api* api_;
};

struct InitInfo {
  nlohmann::json config;       // the plugin's `config` table
  std::string data_dir;        // private directory for files
  uint32_t instance = 0;
  // The host kills a Handle() or Sync() that runs longer (0: an older host did not say).
  std::chrono::milliseconds handler_timeout{0};
  const sluice_host_api* api = nullptr;
  const sluice_plugin_init* raw = nullptr;  // the host's, valid only during Init()
  void Log(int level, const std::string& message) const { api->log(nullptr, level, message.c_str()); }
  // Subscription `index` (of the descriptor's) delivers only messages of these envelope types; the
  // broker acks the others unseen (sluice_plugin_init.set_subscription_types). Only during Init().
  // 0, or -EINVAL when the host refused (logged), or -ENOSYS when the host is older than ABI 1.2.
  int SetSubscriptionTypes(size_t index, const std::vector<std::string>& types) const {
    if (raw == nullptr || raw->struct_size < offsetof(sluice_plugin_init, set_subscription_types) +
                                                 sizeof raw->set_subscription_types ||
        raw->set_subscription_types == nullptr) {
      return -38;  // ENOSYS
    }
    std::vector<const char*> names;
    names.reserve(types.size());
    for (const std::string& t : types) names.push_back(t.c_str());
    return raw->set_subscription_types(raw, index, names.data(), names.size());
  }
};

class Plugin {
 public:
  virtual ~Plugin() = default;
  // 0, or a negative errno to refuse to start (logged by the host with the plugin's name).
  virtual int Init(const InitInfo& /*info*/) { return 0; }
  virtual Result Handle(const Message& message, Context& ctx) = 0;
};

namespace detail {

struct Instance {
  std::unique_ptr<Plugin> plugin;
  const sluice_host_api* api = nullptr;
  std::string reason;  // keeps Result::reason alive until the host has copied it
};

template <typename T>
int InitThunk(const sluice_plugin_init* init, void** state) {
  try {
    auto inst = std::make_unique<Instance>();
    inst->plugin = std::make_unique<T>();
    inst->api = init->api;
    InitInfo info;
    info.config = nlohmann::json::parse(init->config_json ? init->config_json : "{}");
    info.data_dir = init->data_dir ? init->data_dir : "";
    info.instance = init->instance;
    if (init->struct_size >= offsetof(sluice_plugin_init, handler_timeout_ms) + sizeof init->handler_timeout_ms) {
      info.handler_timeout = std::chrono::milliseconds(init->handler_timeout_ms);
    }
    info.api = init->api;
    info.raw = init;
    int rc = inst->plugin->Init(info);
    if (rc != 0) return rc;
    *state = inst.release();
    return 0;
  } catch (const std::exception& e) {
    init->api->log(nullptr, SLUICE_LOG_ERROR, (std::string("init failed: ") + e.what()).c_str());
    return -22;  // EINVAL
  }
}

inline sluice_result HandleThunk(void* state, const sluice_message* message, sluice_context* ctx) {
  auto* inst = static_cast<Instance*>(state);
  try {
    Message m(message);
    Context c(ctx, inst->api);
    Result r = inst->plugin->Handle(m, c);
    inst->reason = r.reason();
    return {r.outcome(), r.retry_after_ms(), inst->reason.empty() ? nullptr : inst->reason.c_str()};
  } catch (const std::exception& e) {
    // A throwing handler is a bug, not a verdict on the message: retry, and let max_deliveries
    // dead-letter it if it keeps throwing.
    inst->reason = std::string("handler threw: ") + e.what();
    return {SLUICE_RETRY, 0, inst->reason.c_str()};
  } catch (...) {
    inst->reason = "handler threw a non-standard exception";
    return {SLUICE_RETRY, 0, inst->reason.c_str()};
  }
}

inline void ShutdownThunk(void* state) { delete static_cast<Instance*>(state); }

// A plugin class opts into sync() by declaring `int Sync()` (plugin.h): only then does the host hold
// its bundles back for it.
template <typename T>
int SyncThunk(void* state) {
  try {
    return static_cast<T&>(*static_cast<Instance*>(state)->plugin).Sync();
  } catch (const std::exception& e) {
    static_cast<Instance*>(state)->api->log(nullptr, SLUICE_LOG_ERROR,
                                            (std::string("sync failed: ") + e.what()).c_str());
    return -5;  // EIO
  } catch (...) {
    static_cast<Instance*>(state)->api->log(nullptr, SLUICE_LOG_ERROR,
                                            "sync failed: a non-standard exception");
    return -5;
  }
}

// Must be public and return int exactly (a bool would read as failure); a plugin that depends on it can
// static_assert(sluice::sdk::detail::kHasSync<MyPlugin>).
template <typename T>
inline constexpr bool kHasSync = requires(T& t) {
  { t.Sync() } -> std::same_as<int>;
};

template <typename T>
constexpr int (*SyncFor())(void*) {
  if constexpr (kHasSync<T>) {
    return &SyncThunk<T>;
  } else {
    return nullptr;
  }
}

// The lowest minor the plugin needs: 1.0 unless it has Sync (1.1), so it still loads on a 1.0 host.
template <typename T>
constexpr uint32_t AbiMinorFor() {
  return kHasSync<T> ? 1u : 0u;
}

}  // namespace detail
}  // namespace sluice::sdk

// Defines the plugin's entry point. SUBS is an array of sluice_subscription, PUBLISHES an array of
// const char* (topics); use SLUICE_PLUGIN_NO_PUBLISHES when the plugin publishes nothing.
#define SLUICE_PLUGIN(CLASS, NAME, VERSION, SUBS, PUBLISHES)                                        \
  extern "C" SLUICE_PLUGIN_EXPORT const sluice_plugin* sluice_plugin_entry(void) {                  \
    static const sluice_plugin kDescriptor = {                                                      \
        SLUICE_PLUGIN_ABI_MAJOR, ::sluice::sdk::detail::AbiMinorFor<CLASS>(), sizeof(sluice_plugin), \
        NAME, VERSION,                                                                              \
        SUBS, sizeof(SUBS) / sizeof((SUBS)[0]), PUBLISHES, sizeof(PUBLISHES) / sizeof((PUBLISHES)[0]), \
        &::sluice::sdk::detail::InitThunk<CLASS>, &::sluice::sdk::detail::HandleThunk,              \
        &::sluice::sdk::detail::ShutdownThunk, ::sluice::sdk::detail::SyncFor<CLASS>()};             \
    return &kDescriptor;                                                                            \
  }

#define SLUICE_PLUGIN_NO_PUBLISHES(CLASS, NAME, VERSION, SUBS)                                      \
  extern "C" SLUICE_PLUGIN_EXPORT const sluice_plugin* sluice_plugin_entry(void) {                  \
    static const sluice_plugin kDescriptor = {                                                      \
        SLUICE_PLUGIN_ABI_MAJOR, ::sluice::sdk::detail::AbiMinorFor<CLASS>(), sizeof(sluice_plugin), \
        NAME, VERSION,                                                                              \
        SUBS, sizeof(SUBS) / sizeof((SUBS)[0]), nullptr, 0,                                          \
        &::sluice::sdk::detail::InitThunk<CLASS>, &::sluice::sdk::detail::HandleThunk,              \
        &::sluice::sdk::detail::ShutdownThunk, ::sluice::sdk::detail::SyncFor<CLASS>()};             \
    return &kDescriptor;                                                                            \
  }

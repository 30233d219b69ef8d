// SPDX-License-Identifier: MIT
//
// FakeHost (fake_host.h): the host API callbacks, the bundle rules and the dlopen life cycle. The C
// callbacks reach their FakeHost through the sluice_context of the call, or, for log() outside
// handle() (ctx NULL), through the thread-local host of the call in progress.
#include "plugins/testing/fake_host.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "broker/backend.h"

namespace sluice::testing {

struct FakeHost::Bundle {
  bool is_request = false;
  Uuid input_id;
  std::string input_correlation;
  std::map<std::string, std::optional<std::string>> writes;
  std::vector<OutMessage> publishes;
  std::optional<OutMessage> reply;
  std::string get_buffer;  // what kv_get lends until the next call on the context
};

}  // namespace sluice::testing

// The ABI's opaque context: this host's definition of it.
struct sluice_context {
  sluice::testing::FakeHost* host;
  sluice::testing::FakeHost::Bundle bundle;
};

namespace sluice::testing {
namespace {

constexpr size_t kMaxKey = 400;
constexpr size_t kMaxValue = 1 << 20;

thread_local FakeHost* current_host = nullptr;

std::string_view View(sluice_bytes b) { return {b.data ? static_cast<const char*>(b.data) : "", b.size}; }
std::string_view View(sluice_str s) { return {s.data ? s.data : "", s.size}; }

int ApiKvGet(sluice_context* ctx, sluice_bytes key, sluice_bytes* value) {
  if (ctx == nullptr || value == nullptr) return -EINVAL;
  return ctx->host->KvGet(&ctx->bundle, View(key), value);
}
int ApiKvPut(sluice_context* ctx, sluice_bytes key, sluice_bytes value) {
  if (ctx == nullptr) return -EINVAL;
  return ctx->host->KvPut(&ctx->bundle, View(key), View(value));
}
int ApiKvDelete(sluice_context* ctx, sluice_bytes key) {
  if (ctx == nullptr) return -EINVAL;
  return ctx->host->KvDelete(&ctx->bundle, View(key));
}
int ApiKvScan(sluice_context* ctx, sluice_bytes prefix, size_t limit, sluice_scan_fn fn, void* user) {
  if (ctx == nullptr || fn == nullptr) return -EINVAL;
  return ctx->host->KvScan(&ctx->bundle, View(prefix), limit, fn, user);
}
int ApiPublish(sluice_context* ctx, const sluice_out_message* m) {
  if (ctx == nullptr || m == nullptr) return -EINVAL;
  return ctx->host->Publish(&ctx->bundle, m, false);
}
int ApiReply(sluice_context* ctx, const sluice_out_message* m) {
  if (ctx == nullptr || m == nullptr) return -EINVAL;
  return ctx->host->Publish(&ctx->bundle, m, true);
}
int64_t ApiNowUs(sluice_context* ctx) {
  FakeHost* host = ctx != nullptr ? ctx->host : current_host;
  return host != nullptr ? host->now_us() : 0;
}
void ApiLog(sluice_context* ctx, int level, const char* message) {
  FakeHost* host = ctx != nullptr ? ctx->host : current_host;
  if (host != nullptr) host->Log(level, message != nullptr ? message : "");
}

int ApiSetSubscriptionTypes(const sluice_plugin_init*, size_t index, const char* const* types, size_t n_types) {
  if (current_host == nullptr) return -EINVAL;
  return current_host->SetSubscriptionTypes(index, types, n_types);
}

const sluice_host_api kApi = {
    sizeof(sluice_host_api),
    ApiKvGet,
    ApiKvPut,
    ApiKvDelete,
    ApiKvScan,
    ApiPublish,
    ApiReply,
    ApiNowUs,
    ApiLog,
};

bool ValidPluginName(const char* name) {
  if (name == nullptr) return false;
  size_t n = std::strlen(name);
  if (n == 0 || n > 64) return false;
  for (size_t i = 0; i < n; ++i) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  }
  return true;
}

class CurrentHost {
 public:
  explicit CurrentHost(FakeHost* host) : saved_(current_host) { current_host = host; }
  ~CurrentHost() { current_host = saved_; }

 private:
  FakeHost* saved_;
};

}  // namespace

Result<std::unique_ptr<FakeHost>> FakeHost::Load(const std::string& path, std::string config_json,
                                                 std::string data_dir) {
  std::unique_ptr<FakeHost> host(new FakeHost());
  host->path_ = path;
  host->config_json_ = std::move(config_json);
  dlerror();
  host->handle_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (host->handle_ == nullptr) {
    const char* err = dlerror();
    return InvalidArgument(path + ": " + (err ? err : "dlopen failed"));
  }
  void* sym = dlsym(host->handle_, SLUICE_PLUGIN_ENTRY_SYMBOL);
  if (sym == nullptr) return InvalidArgument(path + ": no " SLUICE_PLUGIN_ENTRY_SYMBOL " symbol");
  sluice_plugin_entry_fn entry;
  std::memcpy(&entry, &sym, sizeof(entry));
  const sluice_plugin* d = entry();
  if (d == nullptr) return InvalidArgument(path + ": " SLUICE_PLUGIN_ENTRY_SYMBOL " returned NULL");
  if (d->abi_major != SLUICE_PLUGIN_ABI_MAJOR || d->abi_minor > SLUICE_PLUGIN_ABI_MINOR) {
    return InvalidArgument(path + ": built for plugin ABI " + std::to_string(d->abi_major) + "." +
                           std::to_string(d->abi_minor) + ", this host speaks " +
                           std::to_string(SLUICE_PLUGIN_ABI_MAJOR) + "." +
                           std::to_string(SLUICE_PLUGIN_ABI_MINOR));
  }
  if (d->struct_size < sizeof(sluice_plugin)) return InvalidArgument(path + ": descriptor too small");
  if (!ValidPluginName(d->name)) return InvalidArgument(path + ": plugin name is not [a-z0-9_-]{1,64}");
  if (d->handle == nullptr) return InvalidArgument(path + ": descriptor has no handle callback");
  if (d->n_subscriptions > 0 && d->subscriptions == nullptr) {
    return InvalidArgument(path + ": n_subscriptions without subscriptions");
  }
  for (size_t i = 0; i < d->n_subscriptions; ++i) {
    if (d->subscriptions[i].topic == nullptr || d->subscriptions[i].name == nullptr) {
      return InvalidArgument(path + ": subscription " + std::to_string(i) + " lacks a topic or name");
    }
  }
  for (size_t i = 0; i < d->n_publishes; ++i) {
    if (d->publishes == nullptr || d->publishes[i] == nullptr) {
      return InvalidArgument(path + ": publishes[" + std::to_string(i) + "] is NULL");
    }
  }
  host->descriptor_ = d;

  if (data_dir.empty()) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sluice-fake-host-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) return ErrnoStatus(errno, "mkdtemp " + tmpl);
    data_dir = tmpl;
    host->owns_data_dir_ = true;
  }
  host->data_dir_ = std::move(data_dir);
  SLUICE_RETURN_IF_ERROR(host->CallInit());
  return host;
}

FakeHost::~FakeHost() {
  CurrentHost current(this);
  if (initialized_ && descriptor_->shutdown != nullptr) descriptor_->shutdown(state_);
  if (handle_ != nullptr) dlclose(handle_);
  if (owns_data_dir_) {
    std::error_code ec;
    std::filesystem::remove_all(data_dir_, ec);
  }
}

Status FakeHost::CallInit() {
  CurrentHost current(this);
  sluice_plugin_init init{};
  init.struct_size = sizeof(init);
  init.api = &kApi;
  init.config_json = config_json_.c_str();
  init.data_dir = data_dir_.c_str();
  init.instance = 0;
  init.handler_timeout_ms = 30'000;  // the daemon's default handler_timeout
  init.set_subscription_types = ApiSetSubscriptionTypes;
  subscription_types_.clear();
  state_ = nullptr;
  if (descriptor_->init != nullptr) {
    in_init_ = true;
    int rc = descriptor_->init(&init, &state_);
    in_init_ = false;
    if (rc != 0) {
      return InvalidArgument(path_ + ": init failed: " + std::strerror(rc < 0 ? -rc : rc));
    }
  }
  initialized_ = true;
  return Status::Ok();
}

int FakeHost::SetSubscriptionTypes(size_t index, const char* const* types, size_t n_types) {
  // The daemon's rules (daemon/worker.cc), without its messages.
  if (!in_init_ || index >= descriptor_->n_subscriptions || types == nullptr || n_types == 0) return -EINVAL;
  std::vector<std::string> names;
  for (size_t i = 0; i < n_types; ++i) {
    if (types[i] == nullptr) return -EINVAL;
    names.emplace_back(types[i]);
  }
  if (!broker::CheckSubscribeTypes(names).ok()) return -EINVAL;
  subscription_types_[index] = std::move(names);
  return 0;
}

Status FakeHost::Restart() {
  {
    CurrentHost current(this);
    if (initialized_ && descriptor_->shutdown != nullptr) descriptor_->shutdown(state_);
  }
  initialized_ = false;
  return CallInit();
}

Uuid FakeHost::NextId() {
  ++next_id_;
  auto ms = static_cast<uint64_t>(now_us_ / 1000);
  Uuid id;
  id.hi = (ms << 16) | (0x7ull << 12) | (next_id_ & 0xfff);
  id.lo = (0x2ull << 62) | (next_id_ & 0x3fffffffffffffffull);
  return id;
}

Outcome FakeHost::Handle(const InMessage& in, Commit commit) {
  Outcome out;
  out.input_id = in.id ? *in.id : NextId();
  std::string subscription = in.subscription;
  if (subscription.empty()) {
    for (size_t i = 0; i < descriptor_->n_subscriptions; ++i) {
      if (in.topic == descriptor_->subscriptions[i].topic) {
        subscription = descriptor_->subscriptions[i].name;
        break;
      }
    }
  }
  if (!initialized_ || subscription.empty()) {
    out.outcome = SLUICE_REJECT;
    out.reason = !initialized_ ? "fake host: plugin not initialized"
                               : "fake host: the plugin has no subscription on topic '" + in.topic + "'";
    return out;
  }

  sluice_message msg{};
  for (int i = 0; i < 8; ++i) {
    msg.id[i] = static_cast<uint8_t>(out.input_id.hi >> (56 - 8 * i));
    msg.id[8 + i] = static_cast<uint8_t>(out.input_id.lo >> (56 - 8 * i));
  }
  auto str = [](const std::string& s) { return sluice_str{s.data(), s.size()}; };
  msg.topic = str(in.topic);
  msg.key = str(in.key);
  msg.type = str(in.type);
  msg.correlation_id = str(in.correlation_id);
  msg.causation_id = str(in.causation_id);
  msg.publish_time_us = in.publish_time_us != 0 ? in.publish_time_us : now_us_;
  msg.seq = in.seq;
  msg.delivery_count = in.delivery_count;
  msg.is_request = in.is_request ? 1 : 0;
  std::vector<sluice_header> headers;
  for (const auto& [name, value] : in.headers) headers.push_back({str(name), str(value)});
  msg.headers = headers.data();
  msg.n_headers = headers.size();
  msg.payload = sluice_bytes{in.payload.data(), in.payload.size()};
  msg.subscription = subscription.c_str();

  sluice_context ctx{this, {}};
  ctx.bundle.is_request = in.is_request;
  ctx.bundle.input_id = out.input_id;
  ctx.bundle.input_correlation = in.correlation_id;
  sluice_result r;
  {
    CurrentHost current(this);
    r = descriptor_->handle(state_, &msg, &ctx);
  }
  out.outcome = r.outcome;
  out.retry_after_ms = r.retry_after_ms;
  out.reason = r.reason != nullptr ? r.reason : "";
  if (r.outcome != SLUICE_OK && r.outcome != SLUICE_RETRY && r.outcome != SLUICE_REJECT) {
    out.outcome = SLUICE_REJECT;
    out.reason = "fake host: handle() returned outcome " + std::to_string(static_cast<int>(r.outcome));
  }
  out.attempted_publishes = ctx.bundle.publishes.size();
  out.attempted_writes = ctx.bundle.writes.size();
  if (out.outcome != SLUICE_OK || commit == Commit::kCrashBeforeSync) return out;
  // As the worker does for a pass of one message: sync() before the commit, a failure retries it.
  if (descriptor_->struct_size >= offsetof(sluice_plugin, sync) + sizeof descriptor_->sync &&
      descriptor_->sync != nullptr) {
    int rc;
    {
      CurrentHost current(this);
      rc = descriptor_->sync(state_);
    }
    if (rc != 0) {
      out.outcome = SLUICE_RETRY;
      out.reason = "sync() failed: " + std::string(std::strerror(rc < 0 ? -rc : rc));
      return out;
    }
  }
  if (commit == Commit::kCrashBeforeCommit) return out;

  for (const auto& [key, value] : ctx.bundle.writes) {
    if (value) {
      kv_[key] = *value;
    } else {
      kv_.erase(key);
    }
  }
  published_.insert(published_.end(), ctx.bundle.publishes.begin(), ctx.bundle.publishes.end());
  out.committed = true;
  out.writes = std::move(ctx.bundle.writes);
  out.published = std::move(ctx.bundle.publishes);
  out.reply = std::move(ctx.bundle.reply);
  return out;
}

int FakeHost::KvGet(Bundle* b, std::string_view key, sluice_bytes* value) {
  if (key.empty() || key.size() > kMaxKey) return -EINVAL;
  std::string k(key);
  if (auto w = b->writes.find(k); w != b->writes.end()) {
    if (!w->second) return -ENOENT;
    b->get_buffer = *w->second;
  } else {
    auto it = kv_.find(k);
    if (it == kv_.end()) return -ENOENT;
    b->get_buffer = it->second;
  }
  *value = sluice_bytes{b->get_buffer.data(), b->get_buffer.size()};
  return 0;
}

int FakeHost::KvPut(Bundle* b, std::string_view key, std::string_view value) {
  if (key.empty() || key.size() > kMaxKey || value.size() > kMaxValue) return -E2BIG;
  b->writes[std::string(key)] = std::string(value);
  return 0;
}

int FakeHost::KvDelete(Bundle* b, std::string_view key) {
  if (key.empty() || key.size() > kMaxKey) return -EINVAL;
  b->writes[std::string(key)] = std::nullopt;
  return 0;
}

int FakeHost::KvScan(Bundle* b, std::string_view prefix, size_t limit, sluice_scan_fn fn, void* user) {
  // A snapshot of committed state overlaid with this handler's writes, so a callback that writes
  // cannot disturb the walk.
  auto in_prefix = [&](const std::string& k) { return k.compare(0, prefix.size(), prefix) == 0; };
  std::map<std::string, std::string> view;
  for (auto it = kv_.lower_bound(std::string(prefix)); it != kv_.end() && in_prefix(it->first); ++it) {
    view.emplace(it->first, it->second);
  }
  for (auto it = b->writes.lower_bound(std::string(prefix)); it != b->writes.end() && in_prefix(it->first);
       ++it) {
    if (it->second) {
      view[it->first] = *it->second;
    } else {
      view.erase(it->first);
    }
  }
  size_t n = 0;
  for (const auto& [k, v] : view) {
    if (limit != 0 && n == limit) break;
    ++n;
    if (fn(user, sluice_bytes{k.data(), k.size()}, sluice_bytes{v.data(), v.size()}) != 0) break;
  }
  return 0;
}

int FakeHost::Publish(Bundle* b, const sluice_out_message* m, bool reply) {
  OutMessage out;
  if (reply) {
    if (!b->is_request) return -EINVAL;
    if (b->reply) return -EALREADY;
    out.id = DeriveUuid(b->input_id, "reply");
  } else {
    if (m->topic == nullptr) return -EINVAL;
    bool declared = false;
    for (size_t i = 0; i < descriptor_->n_publishes; ++i) {
      if (std::strcmp(descriptor_->publishes[i], m->topic) == 0) declared = true;
    }
    if (!declared) return -EPERM;
    out.topic = m->topic;
    // As the host does (daemon/handler_run.cc): the plugin's name, then the publish's position.
    out.id = DeriveUuid(b->input_id,
                        std::string(descriptor_->name) + "/publish/" + std::to_string(b->publishes.size()));
  }
  out.key = std::string(View(m->key));
  out.type = std::string(View(m->type));
  out.correlation_id =
      m->correlation_id.size != 0 ? std::string(View(m->correlation_id)) : b->input_correlation;
  out.causation_id = FormatUuid(b->input_id);
  out.payload = std::string(View(m->payload));
  for (size_t i = 0; i < m->n_headers; ++i) {
    out.headers.emplace_back(std::string(View(m->headers[i].name)), std::string(View(m->headers[i].value)));
  }
  if (reply) {
    b->reply = std::move(out);
  } else {
    b->publishes.push_back(std::move(out));
  }
  return 0;
}

void FakeHost::Log(int level, const char* message) {
  logs_.push_back({level, message});
  if (std::getenv("SLUICE_FAKE_HOST_LOG") != nullptr) {
    std::fprintf(stderr, "[%s %d] %s\n", descriptor_ ? descriptor_->name : "?", level, message);
  }
}

std::optional<std::string> FakeHost::Committed(std::string_view key) const {
  auto it = kv_.find(std::string(key));
  if (it == kv_.end()) return std::nullopt;
  return it->second;
}

std::vector<OutMessage> FakeHost::PublishedOn(std::string_view topic) const {
  std::vector<OutMessage> out;
  for (const auto& m : published_) {
    if (m.topic == topic) out.push_back(m);
  }
  return out;
}

bool FakeHost::Logged(std::string_view needle) const {
  for (const auto& line : logs_) {
    if (line.message.find(needle) != std::string::npos) return true;
  }
  return false;
}

}  // namespace sluice::testing

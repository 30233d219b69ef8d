// SPDX-License-Identifier: MIT
#include "daemon/handler_run.h"

#include <cerrno>
#include <chrono>

#include <fmt/format.h>

namespace sluice {
namespace {

const RunHost* g_default_host = nullptr;

HandlerRun* RunOf(sluice_context* ctx) { return ctx != nullptr ? ctx->run : nullptr; }

std::string_view View(sluice_bytes b) {
  return b.data == nullptr ? std::string_view() : std::string_view(static_cast<const char*>(b.data), b.size);
}
std::string_view View(sluice_str s) {
  return s.data == nullptr ? std::string_view() : std::string_view(s.data, s.size);
}

bool ValidKey(sluice_bytes key) {
  return key.data != nullptr && key.size >= 1 && key.size <= kMaxPluginKeyBytes;
}

int ApiKvGet(sluice_context* ctx, sluice_bytes key, sluice_bytes* value) {
  HandlerRun* run = RunOf(ctx);
  return run != nullptr ? run->KvGet(key, value) : -EINVAL;
}
int ApiKvPut(sluice_context* ctx, sluice_bytes key, sluice_bytes value) {
  HandlerRun* run = RunOf(ctx);
  return run != nullptr ? run->KvPut(key, value) : -EINVAL;
}
int ApiKvDelete(sluice_context* ctx, sluice_bytes key) {
  HandlerRun* run = RunOf(ctx);
  return run != nullptr ? run->KvDelete(key) : -EINVAL;
}
int ApiKvScan(sluice_context* ctx, sluice_bytes prefix, size_t limit, sluice_scan_fn fn, void* user) {
  HandlerRun* run = RunOf(ctx);
  return run != nullptr ? run->KvScan(prefix, limit, fn, user) : -EINVAL;
}
int ApiPublish(sluice_context* ctx, const sluice_out_message* message) {
  HandlerRun* run = RunOf(ctx);
  return run != nullptr ? run->Publish(message) : -EINVAL;
}
int ApiReply(sluice_context* ctx, const sluice_out_message* message) {
  HandlerRun* run = RunOf(ctx);
  return run != nullptr ? run->Reply(message) : -EINVAL;
}
int64_t ApiNowUs(sluice_context* ctx) {
  if (HandlerRun* run = RunOf(ctx)) return run->NowUs();
  if (g_default_host != nullptr && g_default_host->now_us) return g_default_host->now_us();
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
void ApiLog(sluice_context* ctx, int level, const char* message) {
  if (HandlerRun* run = RunOf(ctx)) {
    run->Log(level, message);
  } else if (g_default_host != nullptr && g_default_host->log) {
    g_default_host->log(level, message != nullptr ? message : "");
  }
}

const sluice_host_api kApi = {
    sizeof(sluice_host_api), ApiKvGet, ApiKvPut, ApiKvDelete, ApiKvScan, ApiPublish, ApiReply, ApiNowUs, ApiLog,
};

}  // namespace

// ---- PendingWrites ----

void PendingWrites::Add(uint64_t version, const std::vector<client::KvWriteRecord>& writes) {
  if (writes.empty()) return;
  std::vector<std::string>& keys = keys_by_version_[version];
  for (const client::KvWriteRecord& w : writes) {
    Entry& e = entries_[w.key];
    e.version = version;
    e.erased = w.erase;
    e.value = w.erase ? std::string() : w.value;
    keys.push_back(w.key);
  }
}

void PendingWrites::Remove(uint64_t version) {
  auto it = keys_by_version_.find(version);
  if (it == keys_by_version_.end()) return;
  for (const std::string& key : it->second) {
    auto e = entries_.find(key);
    // A later bundle that wrote the key again owns the entry now.
    if (e != entries_.end() && e->second.version == version) entries_.erase(e);
  }
  keys_by_version_.erase(it);
}

const PendingWrites::Entry* PendingWrites::Find(std::string_view key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : &it->second;
}

// ---- HandlerRun ----

HandlerRun::HandlerRun(const RunHost& host, const RunInput& input, KvSnapshot* snapshot,
                       const PendingWrites* pending)
    : host_(host), input_(input), snapshot_(snapshot), pending_(pending) {
  context_.run = this;
}

HandlerRun::~HandlerRun() { context_.run = nullptr; }

const sluice_host_api* HandlerRun::Api() { return &kApi; }

void HandlerRun::SetDefaultHost(const RunHost* host) { g_default_host = host; }

int HandlerRun::Fail(Status status) {
  if (failure_.ok()) failure_ = std::move(status);
  return -EIO;
}

void HandlerRun::RecordRead(std::string_view key, uint64_t version) {
  // The first read of a key is the one the bundle must be checked against; within one run the
  // snapshot does not change, so later reads of it see the same version.
  reads_.try_emplace(std::string(key), version);
}

int HandlerRun::KvGet(sluice_bytes key, sluice_bytes* value) {
  if (!ValidKey(key) || value == nullptr) return -EINVAL;
  std::string_view k = View(key);
  if (auto own = writes_.find(k); own != writes_.end()) {
    if (!own->second.has_value()) return -ENOENT;
    *value = {own->second->data(), own->second->size()};
    return 0;
  }
  if (pending_ != nullptr) {
    if (const PendingWrites::Entry* p = pending_->Find(k)) {
      RecordRead(k, p->erased ? 0 : p->version);
      if (p->erased) return -ENOENT;
      *value = {p->value.data(), p->value.size()};
      return 0;
    }
  }
  if (snapshot_ == nullptr) {
    RecordRead(k, 0);
    return -ENOENT;
  }
  auto got = snapshot_->Get(k);
  if (!got.ok()) return Fail(got.status());
  if (!got->has_value()) {
    RecordRead(k, 0);
    return -ENOENT;
  }
  RecordRead(k, (*got)->version);
  *value = {(*got)->value.data(), (*got)->value.size()};
  return 0;
}

int HandlerRun::KvPut(sluice_bytes key, sluice_bytes value) {
  if (!ValidKey(key) || (value.data == nullptr && value.size != 0)) return -EINVAL;
  if (value.size > kMaxPluginValueBytes) return -E2BIG;
  writes_.insert_or_assign(std::string(View(key)), std::string(View(value)));
  return 0;
}

int HandlerRun::KvDelete(sluice_bytes key) {
  if (!ValidKey(key)) return -EINVAL;
  writes_.insert_or_assign(std::string(View(key)), std::nullopt);
  return 0;
}

int HandlerRun::KvScan(sluice_bytes prefix, size_t limit, sluice_scan_fn fn, void* user) {
  if (fn == nullptr || (prefix.data == nullptr && prefix.size != 0) || prefix.size > kMaxPluginKeyBytes) {
    return -EINVAL;
  }
  const std::string_view p = View(prefix);
  struct Item {
    std::string_view value;  // into the snapshot or PendingWrites, both stable during the run
    std::string own;         // a copy of an own write (the plugin may write while it scans)
    uint64_t version = 0;
    bool present = true;
    bool is_own = false;
  };
  std::map<std::string, Item, std::less<>> merged;
  if (snapshot_ != nullptr) {
    Status st = snapshot_->Scan(p, [&merged](std::string_view key, const KvSnapshot::Entry& e) {
      merged[std::string(key)] = Item{e.value, {}, e.version, true, false};
      return true;
    });
    if (!st.ok()) return Fail(st);
  }
  if (pending_ != nullptr) {
    pending_->ForEachWithPrefix(p, [&merged](const std::string& key, const PendingWrites::Entry& e) {
      merged[key] = Item{e.value, {}, e.version, !e.erased, false};
    });
  }
  for (auto it = writes_.lower_bound(p); it != writes_.end() && std::string_view(it->first).starts_with(p);
       ++it) {
    Item item;
    item.present = it->second.has_value();
    item.is_own = true;
    if (item.present) item.own = *it->second;
    merged[it->first] = std::move(item);
  }
  size_t returned = 0;
  for (auto& [key, item] : merged) {
    if (!item.present) continue;
    if (limit != 0 && returned == limit) break;
    if (!item.is_own) RecordRead(key, item.version);
    std::string_view v = item.is_own ? std::string_view(item.own) : item.value;
    ++returned;
    if (fn(user, {key.data(), key.size()}, {v.data(), v.size()}) != 0) break;
  }
  return 0;
}

client::OutMessage HandlerRun::ToOut(const sluice_out_message& m, Uuid id) const {
  client::OutMessage out;
  out.key = std::string(View(m.key));
  out.type = std::string(View(m.type));
  std::string_view corr = View(m.correlation_id);
  out.correlation_id = std::string(corr.empty() ? std::string_view(input_.correlation_id) : corr);
  out.causation_id = input_.id_text;
  if (m.headers != nullptr) {
    for (size_t i = 0; i < m.n_headers; ++i) {
      out.headers.emplace_back(std::string(View(m.headers[i].name)), std::string(View(m.headers[i].value)));
    }
  }
  out.payload = std::string(View(m.payload));
  out.id = id;
  return out;
}

int HandlerRun::Publish(const sluice_out_message* message) {
  if (message == nullptr || message->topic == nullptr) return -EINVAL;
  if ((message->headers == nullptr && message->n_headers != 0) ||
      (message->payload.data == nullptr && message->payload.size != 0)) {
    return -EINVAL;
  }
  std::string_view topic(message->topic);
  bool declared = false;
  if (host_.publishes != nullptr) {
    for (const std::string& t : *host_.publishes) declared = declared || t == topic;
  }
  if (!declared) return -EPERM;
  // The plugin's name is in the label: two plugins that handle one message and publish to one topic
  // must not get the same ids, or dedupe would drop the second as a repeat of the first.
  Uuid id = DeriveUuid(input_.id, fmt::format("{}/publish/{}", host_.plugin, publishes_.size()));
  client::OutMessage out = ToOut(*message, id);
  out.topic = std::string(topic);
  publishes_.push_back(std::move(out));
  return 0;
}

int HandlerRun::Reply(const sluice_out_message* message) {
  if (message == nullptr || input_.reply_token == 0) return -EINVAL;
  if ((message->headers == nullptr && message->n_headers != 0) ||
      (message->payload.data == nullptr && message->payload.size != 0)) {
    return -EINVAL;
  }
  if (reply_.has_value()) return -EALREADY;
  reply_ = ToOut(*message, DeriveUuid(input_.id, "reply"));
  return 0;
}

void HandlerRun::Log(int level, const char* message) const {
  if (host_.log) host_.log(level, message != nullptr ? message : "");
}

client::BundleMessage HandlerRun::TakeBundle() {
  client::BundleMessage b;
  b.reads.reserve(reads_.size());
  for (auto& [key, version] : reads_) b.reads.push_back({key, version});
  b.writes.reserve(writes_.size());
  for (auto& [key, value] : writes_) {
    b.writes.push_back({key, value.value_or(std::string()), !value.has_value()});
  }
  b.publishes = std::move(publishes_);
  if (input_.reply_token != 0) {
    b.reply_token = input_.reply_token;
    b.reply = std::move(reply_);
  }
  reads_.clear();
  writes_.clear();
  publishes_.clear();
  reply_.reset();
  return b;
}

}  // namespace sluice

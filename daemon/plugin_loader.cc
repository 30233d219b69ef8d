// SPDX-License-Identifier: MIT
#include "daemon/plugin_loader.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace sluice {
namespace {

constexpr size_t kMaxTopicName = 200;
constexpr size_t kMaxPluginName = 64;
// The descriptor of ABI 1.0 ends with `shutdown`; later minors only add fields after it.
constexpr size_t kAbi10DescriptorSize = offsetof(sluice_plugin, shutdown) + sizeof(sluice_plugin::shutdown);

bool IsTopicName(const char* s) {
  if (s == nullptr) return false;
  size_t n = strnlen(s, kMaxTopicName + 1);
  if (n == 0 || n > kMaxTopicName) return false;
  return std::all_of(s, s + n, [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

bool IsPluginName(const char* s) {
  if (s == nullptr) return false;
  size_t n = strnlen(s, kMaxPluginName + 1);
  if (n == 0 || n > kMaxPluginName) return false;
  return std::all_of(s, s + n, [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

// A string from the plugin, shortened for an error message.
std::string Shown(const char* s) {
  if (s == nullptr) return "(null)";
  size_t n = strnlen(s, 80);
  std::string out(s, n);
  if (n == 80) out += "...";
  return fmt::format("\"{}\"", out);
}

// dlerror() usually starts with the path again ("/x/y.so: cannot open shared object file: ..."); the
// message names the file once.
std::string DlError(const std::string& path) {
  const char* e = dlerror();
  std::string text = e != nullptr ? e : "unknown dlopen error";
  if (text.starts_with(path + ": ")) text.erase(0, path.size() + 2);
  return text;
}

}  // namespace

Status CheckDescriptor(const sluice_plugin* raw, std::string_view file, PluginDescriptor* out) {
  auto refuse = [file](std::string problem) {
    return InvalidArgument(fmt::format("{}: {}", file, problem));
  };
  if (raw == nullptr) return refuse("sluice_plugin_entry() returned no descriptor");
  if (raw->abi_major != SLUICE_PLUGIN_ABI_MAJOR || raw->abi_minor > SLUICE_PLUGIN_ABI_MINOR) {
    return refuse(fmt::format("plugin ABI {}.{} is not supported (host speaks {}.{})", raw->abi_major,
                              raw->abi_minor, SLUICE_PLUGIN_ABI_MAJOR, SLUICE_PLUGIN_ABI_MINOR));
  }
  if (raw->struct_size < kAbi10DescriptorSize) {
    return refuse(fmt::format("descriptor struct_size {} is smaller than the {} bytes of ABI 1.0 "
                              "(set it to sizeof(sluice_plugin))",
                              raw->struct_size, kAbi10DescriptorSize));
  }
  // Fields past the plugin's struct_size read as zero; fields past ours are ignored.
  sluice_plugin d{};
  std::memcpy(&d, raw, std::min<size_t>(raw->struct_size, sizeof d));

  if (d.name == nullptr) return refuse("the descriptor has no name");
  if (!IsPluginName(d.name)) {
    return refuse(fmt::format("plugin name {} is not valid (1 to {} characters of a-z 0-9 _ -)",
                              Shown(d.name), kMaxPluginName));
  }
  if (d.handle == nullptr) return refuse("the descriptor has no handle() callback");
  if (d.n_subscriptions == 0 || d.subscriptions == nullptr) {
    return refuse("the plugin declares no subscription (it would never be called)");
  }
  if (d.n_subscriptions > kMaxPluginSubscriptions) {
    return refuse(fmt::format("the plugin declares {} subscriptions, more than the {} allowed",
                              d.n_subscriptions, kMaxPluginSubscriptions));
  }
  if (d.n_publishes > 0 && d.publishes == nullptr) {
    return refuse(fmt::format("n_publishes is {} but publishes is NULL", d.n_publishes));
  }
  if (d.n_publishes > kMaxPluginPublishes) {
    return refuse(fmt::format("the plugin declares {} publish topics, more than the {} allowed",
                              d.n_publishes, kMaxPluginPublishes));
  }

  PluginDescriptor desc;
  desc.name = d.name;
  desc.version = d.version != nullptr ? std::string(d.version, strnlen(d.version, 200)) : "";
  desc.abi_major = d.abi_major;
  desc.abi_minor = d.abi_minor;
  for (size_t i = 0; i < d.n_subscriptions; ++i) {
    const sluice_subscription& s = d.subscriptions[i];
    const std::string which = fmt::format("subscription {}", i + 1);
    if (s.topic == nullptr) return refuse(which + " has no topic");
    if (!IsTopicName(s.topic)) {
      return refuse(fmt::format("{}: topic {} is not a valid topic name", which, Shown(s.topic)));
    }
    if (s.name == nullptr) return refuse(which + " has no subscription name");
    if (!IsTopicName(s.name)) {
      return refuse(fmt::format("{}: name {} is not a valid subscription name", which, Shown(s.name)));
    }
    // The plugin may have stored any integer in these C enums: read them as integers, since loading
    // an out-of-range value through the enum type is undefined behaviour.
    int start = 0, ordering = 0;
    static_assert(sizeof start == sizeof s.start && sizeof ordering == sizeof s.ordering);
    std::memcpy(&start, &s.start, sizeof start);
    std::memcpy(&ordering, &s.ordering, sizeof ordering);
    if (start != SLUICE_START_LATEST && start != SLUICE_START_EARLIEST) {
      return refuse(fmt::format("{}: unknown start {}", which, start));
    }
    if (ordering != SLUICE_ORDERING_NONE && ordering != SLUICE_ORDERING_KEY) {
      return refuse(fmt::format("{}: unknown ordering {}", which, ordering));
    }
    for (const PluginSubscription& seen : desc.subscriptions) {
      if (seen.topic == s.topic && seen.name == s.name) {
        return refuse(fmt::format("{} repeats {}/{}", which, s.topic, s.name));
      }
    }
    PluginSubscription sub;
    sub.topic = s.topic;
    sub.name = s.name;
    sub.start = s.start;
    sub.ordering = s.ordering;
    sub.max_deliveries = s.max_deliveries;
    sub.ack_wait_ms = s.ack_wait_ms;
    sub.prefetch = s.prefetch == 0 ? 64 : s.prefetch;
    desc.subscriptions.push_back(std::move(sub));
  }
  for (size_t i = 0; i < d.n_publishes; ++i) {
    if (!IsTopicName(d.publishes[i])) {
      return refuse(fmt::format("publish topic {} {} is not a valid topic name", i + 1, Shown(d.publishes[i])));
    }
    desc.publishes.emplace_back(d.publishes[i]);
  }
  *out = std::move(desc);
  return Status::Ok();
}

Result<std::unique_ptr<LoadedPlugin>> LoadedPlugin::Load(const std::filesystem::path& path) {
  const std::string file = path.string();
  std::unique_ptr<LoadedPlugin> p(new LoadedPlugin());
  p->path_ = path;
  dlerror();
  p->handle_ = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (p->handle_ == nullptr) return InvalidArgument(fmt::format("{}: cannot load: {}", file, DlError(file)));
  dlerror();
  void* sym = dlsym(p->handle_, SLUICE_PLUGIN_ENTRY_SYMBOL);
  if (sym == nullptr) {
    return InvalidArgument(fmt::format("{}: no {} symbol (export it with SLUICE_PLUGIN_EXPORT)", file,
                                       SLUICE_PLUGIN_ENTRY_SYMBOL));
  }
  auto entry = reinterpret_cast<sluice_plugin_entry_fn>(sym);
  const sluice_plugin* raw = entry();
  SLUICE_RETURN_IF_ERROR(CheckDescriptor(raw, file, &p->descriptor_));
  std::memcpy(&p->callbacks_, raw, std::min<size_t>(raw->struct_size, sizeof p->callbacks_));
  return p;
}

LoadedPlugin::~LoadedPlugin() {
  if (handle_ != nullptr) dlclose(handle_);
}

}  // namespace sluice

// SPDX-License-Identifier: MIT
//
// Loading a plugin library and checking its descriptor (sluice/plugin.h) the way the host accepts it.
// Every refusal is one Status whose message names the file and the problem, so the worker can log it
// and the supervisor can show it in `sluicectl plugins` as it is:
//   /x/bad.so: plugin ABI 2.0 is not supported (host speaks 1.1)
//   /x/y.so: no sluice_plugin_entry symbol (export it with SLUICE_PLUGIN_EXPORT)
// The rules: ABI major equal to the host's and minor not above it; struct_size at least the size of
// the ABI 1.0 descriptor (fields past it are read as zero); a name of [a-z0-9_-]{1,64}; a handle()
// callback; 1 to 64 subscriptions, each with a valid topic and subscription name and known enum
// values; at most 256 publish topics, each a valid topic name.
//
// Loading runs code of the plugin (its static constructors and its entry function), so it happens only
// in worker processes, never in the daemon. Thread-compatible.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "broker/status.h"
#include "sluice/plugin.h"

namespace sluice {

inline constexpr size_t kMaxPluginSubscriptions = 64;
inline constexpr size_t kMaxPluginPublishes = 256;

// The descriptor's contents, checked and copied.
struct PluginSubscription {
  std::string topic;
  std::string name;
  sluice_start start = SLUICE_START_LATEST;
  sluice_ordering ordering = SLUICE_ORDERING_NONE;
  uint32_t max_deliveries = 0;
  uint32_t ack_wait_ms = 0;
  uint32_t prefetch = 64;  // the descriptor's 0 is the documented default, 64
};

struct PluginDescriptor {
  std::string name;
  std::string version;
  uint32_t abi_major = 0;
  uint32_t abi_minor = 0;
  std::vector<PluginSubscription> subscriptions;
  std::vector<std::string> publishes;
};

// Checks `raw` (as returned by the entry point of `file`) and copies it into *out (untouched on
// failure). At most the host's sizeof(sluice_plugin) bytes of `raw` are read.
Status CheckDescriptor(const sluice_plugin* raw, std::string_view file, PluginDescriptor* out);

// A dlopen()ed plugin with a checked descriptor. The library stays loaded as long as this lives.
class LoadedPlugin {
 public:
  // dlopen(RTLD_NOW | RTLD_LOCAL), find sluice_plugin_entry, call it, check the descriptor.
  static Result<std::unique_ptr<LoadedPlugin>> Load(const std::filesystem::path& path);
  ~LoadedPlugin();
  LoadedPlugin(const LoadedPlugin&) = delete;
  LoadedPlugin& operator=(const LoadedPlugin&) = delete;

  const PluginDescriptor& descriptor() const { return descriptor_; }
  // The descriptor's callbacks, read as zero past the plugin's struct_size.
  const sluice_plugin& callbacks() const { return callbacks_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  LoadedPlugin() = default;

  void* handle_ = nullptr;
  std::filesystem::path path_;
  PluginDescriptor descriptor_;
  sluice_plugin callbacks_{};
};

}  // namespace sluice

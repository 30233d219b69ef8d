// SPDX-License-Identifier: MIT
//
// sluiced: parse the command line, load the configuration, choose a mode (run, --check-config,
// --check-plugin, or the internal --worker mode the supervisor starts plugin workers in) and hand off.
// Everything else lives in daemon.cc, worker.cc and below.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/log.h"
#include "daemon/worker.h"
#include "sluice_build_config.h"

int main(int argc, char** argv) {
  const std::string default_config = std::string(SLUICE_SYSCONFDIR) + "/sluice.toml";
  CLI::App app{"sluiced: the sluice event broker and service runtime (see sluiced(8))", "sluiced"};
  std::string config_path = default_config;
  bool check_config = false;
  bool version = false;
  app.add_option("-c,--config", config_path,
                 "configuration file; drop-ins are read from conf.d/ beside it")
      ->capture_default_str();
  app.add_flag("--check-config", check_config,
               "validate the configuration, print the effective configuration and exit");
  app.add_flag("-V,--version", version, "print the version and exit");
  std::string check_plugin;
  app.add_option("--check-plugin", check_plugin,
                 "load a plugin library, check its descriptor, print it and exit");

  // Worker mode: internal, started by the supervisor only, so hidden from --help (group "").
  bool worker = false;
  sluice::WorkerOptions w;
  int log_level = static_cast<int>(w.log_level);
  int64_t handler_timeout_ms = w.handler_timeout.count();
  app.add_flag("--worker", worker, "run one plugin instance (internal)")->group("");
  app.add_option("--fd", w.broker_fd)->group("");
  app.add_option("--status-fd", w.status_fd)->group("");
  app.add_option("--in-hand-fd", w.in_hand_fd)->group("");
  std::vector<std::string> suspects;
  app.add_option("--suspect", suspects)->group("");
  app.add_option("--plugin", w.plugin_path)->group("");
  app.add_option("--name", w.name)->group("");
  app.add_option("--instance", w.instance)->group("");
  app.add_option("--data-dir", w.data_dir)->group("");
  app.add_option("--handler-timeout-ms", handler_timeout_ms)->group("");
  app.add_option("--max-crashes", w.max_crashes)->group("");
  app.add_option("--log-level", log_level)->check(CLI::Range(3, 7))->group("");
  CLI11_PARSE(app, argc, argv);

  if (worker) {
    w.log_level = static_cast<sluice::LogLevel>(log_level);
    w.handler_timeout = sluice::Duration(handler_timeout_ms);
    if (const char* config = std::getenv(sluice::kPluginConfigEnv)) w.config_json = config;
    for (const std::string& s : suspects) {
      if (auto id = sluice::ParseUuid(s)) w.suspects.push_back(*id);
    }
    return sluice::RunWorker(w);
  }
  if (!check_plugin.empty()) return sluice::CheckPluginFile(check_plugin);

  if (version) {
    std::printf("sluiced %s\n", SLUICE_VERSION);
    return 0;
  }
  // Only the built-in default may be absent (then the documented defaults apply); a path the operator
  // named must exist.
  bool allow_missing = app.count("--config") == 0;
  auto config = sluice::LoadConfig(config_path, allow_missing);
  if (!config.ok()) {
    sluice::log::Error("{}", config.status().message());
    return 1;
  }
  if (check_config) {
    std::fputs(sluice::FormatConfig(*config).c_str(), stdout);
    // Not an error: the library may be installed later, and the daemon runs without it (the plugin
    // is marked failed). But the operator checking a file wants to know now.
    for (const sluice::PluginConfig& p : config->plugins) {
      std::error_code ec;
      if (p.enabled && !std::filesystem::exists(p.path, ec)) {
        sluice::log::Warning("plugin {}: {} does not exist", p.name, p.path.string());
      }
    }
    std::fprintf(stderr, "configuration OK\n");
    return 0;
  }
  sluice::Daemon daemon(std::filesystem::absolute(config_path), std::move(*config));
  return daemon.Run();
}

// SPDX-License-Identifier: MIT
//
// sluiced: parse the command line, load the configuration, choose a mode (run, --check-config) and hand
// off. Everything else lives in daemon.cc and below.
#include <cstdio>
#include <filesystem>
#include <string>

#include <CLI/CLI.hpp>

#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/log.h"
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
  CLI11_PARSE(app, argc, argv);

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
    std::fprintf(stderr, "configuration OK\n");
    return 0;
  }
  sluice::Daemon daemon(std::filesystem::absolute(config_path), std::move(*config));
  return daemon.Run();
}

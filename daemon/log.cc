// SPDX-License-Identifier: MIT
#include "daemon/log.h"

#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>

namespace sluice::log {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::mutex g_identity_mu;
std::string g_identity = "sluiced";
const bool g_tty = isatty(STDERR_FILENO) == 1;

}  // namespace

void SetLevel(LogLevel level) { g_level.store(static_cast<int>(level), std::memory_order_relaxed); }

LogLevel Level() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }

void SetIdentity(std::string_view identity) {
  std::lock_guard lock(g_identity_mu);
  g_identity = identity;
}

void Write(LogLevel level, std::string_view message) {
  std::string lines;
  {
    std::lock_guard lock(g_identity_mu);
    // A message of several lines (every error of a config file) gets the prefix on each, so journald
    // keeps the priority of all of them.
    for (size_t start = 0;;) {
      const size_t end = message.find('\n', start);
      const std::string_view line = message.substr(start, end - start);  // to the end when npos
      lines += g_tty ? fmt::format("{}: {}: {}\n", g_identity, LogLevelName(level), line)
                     : fmt::format("<{}>{}: {}\n", static_cast<int>(level), g_identity, line);
      if (end == std::string_view::npos || end + 1 == message.size()) break;
      start = end + 1;
    }
  }
  // One write per message keeps lines from different threads and worker processes whole.
  ssize_t unused = ::write(STDERR_FILENO, lines.data(), lines.size());
  (void)unused;
}

}  // namespace sluice::log

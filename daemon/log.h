// SPDX-License-Identifier: MIT
//
// The daemon's logger: one line per event on stderr, prefixed with the syslog level in the form
// journald understands ("<6>sluiced: listening on ..."), so `journalctl -p warning` filters correctly.
// When stderr is a terminal the prefix is dropped and the level is spelled out instead. Only the daemon
// layer logs; libraries return Status and the caller decides (STYLE.md).
//
// Thread-safe: each line is written with one write(2); the level is an atomic.
#pragma once

#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "daemon/config.h"

namespace sluice::log {

void SetLevel(LogLevel level);
LogLevel Level();
// Prepended to every line after the level: "sluiced" by default, the plugin name in workers.
void SetIdentity(std::string_view identity);

void Write(LogLevel level, std::string_view message);

template <typename... Args>
void Error(fmt::format_string<Args...> f, Args&&... args) {
  Write(LogLevel::kError, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void Warning(fmt::format_string<Args...> f, Args&&... args) {
  if (Level() >= LogLevel::kWarning) Write(LogLevel::kWarning, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void Notice(fmt::format_string<Args...> f, Args&&... args) {
  if (Level() >= LogLevel::kNotice) Write(LogLevel::kNotice, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void Info(fmt::format_string<Args...> f, Args&&... args) {
  if (Level() >= LogLevel::kInfo) Write(LogLevel::kInfo, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void Debug(fmt::format_string<Args...> f, Args&&... args) {
  if (Level() >= LogLevel::kDebug) Write(LogLevel::kDebug, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace sluice::log

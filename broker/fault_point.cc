// SPDX-License-Identifier: MIT
#include "broker/fault_point.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

namespace sluice::fault {
namespace internal {
bool g_armed = false;
}  // namespace internal

namespace {

constexpr std::string_view kNames[] = {
    "worker.before_handle", "worker.after_handle", "worker.after_send", "worker.before_ack", "daemon.after_commit",
};
static_assert(std::size(kNames) == static_cast<size_t>(Point::kNone));

bool g_initialized = false;
Point g_point = Point::kNone;
uint64_t g_nth = 0;
std::string g_once_file;
std::atomic<uint64_t> g_seen{0};

}  // namespace

std::string_view PointName(Point point) {
  size_t i = static_cast<size_t>(point);
  return i < std::size(kNames) ? kNames[i] : std::string_view();
}

void Init(Process process) {
  if (g_initialized) return;
  g_initialized = true;
  if (const char* env = std::getenv(kFaultEnv)) Arm(env, process);
}

bool Arm(std::string_view spec, Process process) {
  internal::g_armed = false;
  g_point = Point::kNone;
  g_nth = 0;
  g_once_file.clear();
  g_seen.store(0, std::memory_order_relaxed);
  size_t colon = spec.find(':');
  if (colon == std::string_view::npos) return false;
  std::string_view name = spec.substr(0, colon);
  std::string_view rest = spec.substr(colon + 1);
  size_t colon2 = rest.find(':');
  std::string_view nth_text = rest.substr(0, colon2);
  uint64_t nth = 0;
  auto [end, ec] = std::from_chars(nth_text.data(), nth_text.data() + nth_text.size(), nth);
  if (ec != std::errc() || end != nth_text.data() + nth_text.size() || nth == 0) return false;
  std::string_view once_file = colon2 == std::string_view::npos ? std::string_view() : rest.substr(colon2 + 1);
  if (colon2 != std::string_view::npos && once_file.empty()) return false;
  std::string_view prefix = process == Process::kWorker ? "worker." : "daemon.";
  if (!name.starts_with(prefix)) return false;
  for (size_t i = 0; i < std::size(kNames); ++i) {
    if (kNames[i] != name) continue;
    g_point = static_cast<Point>(i);
    g_nth = nth;
    g_once_file = std::string(once_file);
    internal::g_armed = true;
    return true;
  }
  return false;
}

bool internal::DueSlow(Point point) {
  if (point != g_point) return false;
  if (g_seen.fetch_add(1, std::memory_order_relaxed) + 1 != g_nth) return false;
  if (g_once_file.empty()) return true;
  int fd = ::open(g_once_file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  // Taken by an earlier process (or not creatable): this one goes on.
  if (fd < 0) return false;
  std::string note = fmt::format("{} {} {}\n", PointName(point), g_nth, ::getpid());
  (void)!::write(fd, note.data(), note.size());
  ::close(fd);
  return true;
}

void Die() {
  ::raise(SIGKILL);
  ::_exit(137);  // not reached: SIGKILL cannot be caught
}

}  // namespace sluice::fault

// SPDX-License-Identifier: MIT
//
// Fault points: a test-only hook that kills this process (SIGKILL) at a named step of a plugin
// handler's life, so the integration tests (tests/integration/fault_injection_test.cc) can show that a
// crash at any step leaves exactly one effect. It is armed by the environment variable
//
//   SLUICE_FAULT=<point>:<nth>[:<once-file>]
//
// read once by Init() at the start of a process. <point> is one of the names below; its prefix says
// which process acts on it ("worker." points only in plugin workers, "daemon." points only in the
// daemon), because the supervisor passes the daemon's environment on to its workers. The process dies
// at the nth time (from 1) it reaches the point. With <once-file>, the fault fires once across restarts:
// the process that gets to create the file (O_EXCL) dies, and records "<point> <nth> <pid>" in it; any
// later process finds the file and goes on. A variable that does not parse arms nothing (the tests check
// the once-file, so a typo fails them rather than passing silently). Nothing is logged: library code.
//
// Cost when unset: Due() tests one cached bool. Threads: Init() runs before any other thread starts;
// Due() may be called from any thread (the occurrence count is atomic).
#pragma once

#include <string_view>

namespace sluice::fault {

enum class Point {
  kWorkerBeforeHandle,  // "worker.before_handle": a delivery taken, handle() not yet called
  kWorkerAfterHandle,   // "worker.after_handle": handle() returned, its effects only in memory
  kWorkerAfterSend,     // "worker.after_send": the bundle written to the broker socket
  kWorkerBeforeAck,     // "worker.before_ack": a Committed BundleAck received, not yet acted on
  kDaemonAfterCommit,   // "daemon.after_commit": a bundle committed, its BundleAck not yet sent
  kNone,                // sentinel: armed for nothing
};

enum class Process { kWorker, kDaemon };

inline constexpr const char* kFaultEnv = "SLUICE_FAULT";

// The point's name as the variable spells it; "" for kNone.
std::string_view PointName(Point point);

// Reads SLUICE_FAULT (once; later calls do nothing) and arms the point if it belongs to `process`.
void Init(Process process);

// Arms from `spec` as SLUICE_FAULT spells it, replacing any earlier arming and its count; false (and
// nothing armed) when the spec does not parse or names another process's point. Init() uses it; unit
// tests call it directly. Not thread-safe: call before Due() runs anywhere.
bool Arm(std::string_view spec, Process process);

namespace internal {
extern bool g_armed;
bool DueSlow(Point point);
}  // namespace internal

// True when this is the occurrence of `point` at which the process must die; the caller finishes what
// the point means (e.g. flushes a buffered frame) and then calls Die(). Counts the occurrence.
inline bool Due(Point point) { return internal::g_armed && internal::DueSlow(point); }

// SIGKILL to this process: no destructors, no buffered output, as a power cut would leave it.
[[noreturn]] void Die();

// Due() then Die(), for points that need nothing in between.
inline void Hit(Point point) {
  if (Due(point)) Die();
}

}  // namespace sluice::fault

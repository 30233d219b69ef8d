// SPDX-License-Identifier: MIT
//
// Worker mode (`sluiced --worker`, started only by the supervisor): one process runs one instance of one
// plugin. It loads the plugin and checks its descriptor, reports it to the supervisor, calls init(),
// connects to the broker over the socket it inherited, subscribes every declared subscription with its
// prefetch, then runs handle() for each delivery and sends the outcome: a Bundle of the run's effects on
// SLUICE_OK (pipelined, up to kMaxBundlesInFlight unanswered), or a plain Ack when the run had no
// effects and read nothing (no commit of its own), a Nack on RETRY or REJECT. Outcomes leave in few
// writes: the queued output is written at the end of a pass, once a frame has waited 2 ms, and before
// every run while runs are slow (2 ms or more), so a handled message's lease never waits on a slow run
// after it. For a plugin with a sync() callback, the bundles of the runs of one pass over the queued
// deliveries (up to 256, and 50 ms after the first) wait until sync() has returned 0 for all of them;
// when it fails, their messages are retried. A bundle refused as a conflict is run again with fresh
// reads once every earlier bundle is answered; one whose lease was lost is dropped (the message went to
// another consumer).
//
// Talking to the supervisor: besides the broker socket, the worker writes one JSON object per line to
// `status_fd`: {"event":"loaded", name, version, publishes, subscriptions} once the descriptor checked
// out (the supervisor then attaches the broker end of the socket with that identity),
// {"event":"refused", error} when it did not, {"event":"ready"} once subscribed, and
// {"event":"stats", handled, retried, rejected, conflicts, lease_lost, refused, in_flight} at most once a
// second while counts change. Its log lines go to stderr ("<6>order[0]: ..."), which the supervisor
// reads and logs.
//
// Exit codes: 0 after SIGTERM (the message in hand is finished, its bundle sent and answered within
// kDrainTimeout, shutdown() called); kExitRefused (78) for a plugin that cannot be loaded or whose
// descriptor is refused (not restarted); kExitSetup (75) when setup failed before any message was
// taken (init() failed, the store or the broker could not be reached, the connection was lost); a
// handler that runs longer than handler_timeout is killed with SIGKILL by the watchdog thread, and a
// crashing handler dies by its signal: both count as crashes of the messages in hand.
// For tests only, SLUICE_FAULT can kill it at the worker.* steps of a run (broker/fault_point.h).
//
// Threads: the main thread runs everything; the watchdog thread only reads two atomics and may kill
// the process.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "broker/uuid.h"

#include "daemon/config.h"

namespace sluice {

inline constexpr int kExitSetup = 75;    // EX_TEMPFAIL
inline constexpr int kExitRefused = 78;  // EX_CONFIG
// The environment variable that carries the plugin's config table (JSON) to the worker: argv is
// visible to every user in ps, and a table can be large.
inline constexpr const char* kPluginConfigEnv = "SLUICE_PLUGIN_CONFIG";

// A small page of shared memory (a memfd the supervisor creates, fd 5 in the worker) where the worker
// notes the message its handle() is running. When the worker dies, the supervisor reads it to name the
// message that killed it in the log, and passes its id to the next workers of the plugin as a suspect:
// they run a suspect alone, holding no other message (WorkerOptions::suspects), so that another crash
// counts against the suspect only and not against innocent messages that happened to be prefetched.
// Written only by the worker's handler thread, read by the supervisor after the worker has exited.
inline constexpr uint32_t kInHandHandle = 1;  // handle() runs; seq and id name the message
inline constexpr uint32_t kInHandSync = 2;    // sync() runs; seq is how many messages it covers
struct InHandPage {
  std::atomic<uint32_t> busy;  // 0, kInHandHandle or kInHandSync
  uint32_t reserved;
  uint64_t seq;
  uint64_t id_hi;
  uint64_t id_lo;
};
static_assert(std::atomic<uint32_t>::is_always_lock_free, "InHandPage is shared between processes");
inline constexpr size_t kInHandPageBytes = 4096;

struct WorkerOptions {
  int broker_fd = 3;                 // the worker's end of the socket pair to the broker
  int status_fd = -1;                // JSON lines to the supervisor; -1: none
  int in_hand_fd = -1;               // the InHandPage; -1: none
  std::vector<Uuid> suspects;        // messages that were in hand when earlier workers died
  std::filesystem::path plugin_path;
  std::string name;                  // the configured name; the descriptor must carry the same
  uint32_t instance = 0;
  std::filesystem::path data_dir;    // the daemon's data_dir: the store is <data_dir>/store
  Duration handler_timeout = std::chrono::seconds(30);
  uint32_t max_crashes = 0;          // for the subscriptions it creates; 0: the broker's default
  LogLevel log_level = LogLevel::kInfo;
  std::string config_json = "{}";
};

// Runs the worker until SIGTERM or a fatal error; returns the process exit code.
int RunWorker(const WorkerOptions& options);

// `sluiced --check-plugin PATH`: loads the library, checks its descriptor and prints it (stdout) or the
// refusal (stderr). Returns 0 or 1. Runs the plugin's entry point in this process.
int CheckPluginFile(const std::filesystem::path& path);

}  // namespace sluice

// SPDX-License-Identifier: MIT
//
// The embedded LMDB backend: the Backend (broker/backend.h) over one LMDB environment in
// `<data_dir>/store/`, with group commit on a writer thread (broker/store/writer.h). This is where
// delivery lives: per subscription, a bounded read-ahead window over the topic's log (the backlog stays
// in LMDB), credit-limited round-robin push to the consumers, leases, nack backoff, dead-lettering,
// per-key ordering with parked keys, and the ack cursor (broker/STORE_FORMAT.md).
//
// Threading: as Backend says, every method runs on the loop thread given to OpenLmdbBackend and every
// callback runs there, from a uv_async_t that the writer also uses to hand back committed batches.
// Close() must finish (its callback run) before the backend is destroyed and the loop closed.
//
// Notes for callers: Ack() ignores delivery ids that are no longer leased (expired, already acked,
// redelivered to someone else): a late ack is an ordinary race. Nack() of such an id is kNotFound.
// Redrive() and Purge() return their counts at once; the change is committed with the next batch.
// With durability "batch" a PublishAck may precede the fsync by up to batch_interval; with "none"
// only the OS decides when data reaches the disk.
#pragma once

#include <uv.h>

#include <filesystem>
#include <memory>
#include <vector>

#include "broker/backend.h"
#include "broker/options.h"
#include "broker/status.h"

namespace sluice::broker {

struct StoreOptions {
  std::filesystem::path data_dir;
  BrokerConfig broker;
  std::vector<TopicConfig> topics;                // created at open when missing
  std::vector<SubscriptionConfig> subscriptions;  // created at open; their options replace stored ones
};

// Opens (creating when missing) the store and starts its writer. Failure modes: the data directory is
// not writable or not an LMDB store (kIoError), the store was written by a newer format
// (kInvalidArgument), a configured subscription names a topic that cannot be created (kNotFound).
Result<std::unique_ptr<Backend>> OpenLmdbBackend(uv_loop_t* loop, const StoreOptions& options,
                                                 const Clock& clock);

}  // namespace sluice::broker

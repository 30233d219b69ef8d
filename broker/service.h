// SPDX-License-Identifier: MIT
//
// BrokerService: the protocol layer of the broker socket. It owns the client connections, runs the
// Hello handshake (protocol version check), and turns frames into Backend calls: Publish → PublishAck
// after the commit, Subscribe → a consumer whose deliveries become Deliver frames, Ack/Nack/Credit, and
// Request/Reply routing (a Request is published with a reply token; the consumer's Reply is sent back
// to the requester, or the requester gets a Timeout error).
//
// Failure modes: a frame that fails verification closes only its own connection (Connection does
// that); a semantic error (unknown consumer, empty topic, message too large, a storage limit) gets an
// Error frame for that request_id and the connection stays open.
//
// Loop thread only. Backend callbacks may arrive after the connection they belong to has closed; they
// find it by id and drop the answer if it is gone.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/backend.h"
#include "broker/net/connection.h"
#include "broker/net/listener.h"

namespace sluice::broker {

struct ServiceOptions {
  size_t max_frame_bytes = wire::kDefaultMaxFrameBytes;
  size_t max_message_bytes = 1u << 20;
  uint32_t max_connections = 1024;
  uint32_t max_credit = 65536;  // per consumer: bounds what one consumer may hold in flight
  // For subscriptions a Subscribe frame creates without saying (broker.default_*).
  uint32_t default_max_deliveries = 5;
  Duration default_ack_wait = std::chrono::seconds(30);
  std::string server_version;
};

// Who is at the other end of a plugin connection: set by the supervisor, which created the socket pair,
// so a worker cannot claim another plugin's identity.
struct PluginIdentity {
  std::string name;                      // also the plugin's keyspace
  uint32_t instance = 0;
  std::vector<std::string> publishes;    // topics it may publish to
};

struct ServiceStats {
  uint64_t connections = 0;          // open now
  uint64_t connections_total = 0;    // accepted since start
  uint64_t protocol_errors = 0;      // connections closed for a bad frame
  uint64_t frames_in = 0;
  uint64_t publishes = 0;
  uint64_t requests = 0;
  // Plugin bundles by their outcome: committed, refused as a conflict (run again), lease lost
  // (dropped), refused (not allowed as sent, or a storage error).
  uint64_t bundles_committed = 0;
  uint64_t bundles_conflict = 0;
  uint64_t bundles_lease_lost = 0;
  uint64_t bundles_refused = 0;
};

class BrokerService : public net::FrameHandler {
 public:
  BrokerService(uv_loop_t* loop, Backend* backend, const Clock& clock, ServiceOptions options);
  ~BrokerService() override;

  // Accepts a connection from the listener.
  void Accept(uv_pipe_t* client);
  // Adopts the daemon's end of a plugin worker's socket pair; returns the connection id.
  uint64_t AttachPlugin(uv_pipe_t* pipe, PluginIdentity identity);
  // The worker behind connection `conn_id` exited; `crashed` when by a signal or a failure status. Its
  // in-flight messages return to their subscriptions, and when crashed each counts a crash (poison
  // detection). Either order of this call and the connection's close is fine.
  void PluginExited(uint64_t conn_id, bool crashed);
  // Closes every connection; in-flight deliveries return to their subscriptions.
  void CloseAll();
  // Applies new limits (reload); existing connections keep their frame limit.
  void set_options(const ServiceOptions& options) { options_ = options; }

  const ServiceStats& stats() const { return stats_; }
  // From a Publish frame's arrival to its PublishAck being queued: the broker's share of a publish.
  const Histogram& publish_ack_seconds() const { return publish_ack_seconds_; }
  const Histogram& request_seconds() const { return request_seconds_; }
  const Histogram& bundle_seconds() const { return bundle_seconds_; }
  size_t connection_count() const { return conns_.size(); }
  // Publishes (not Requests) whose PublishAck has not been sent yet (graceful shutdown waits for zero).
  size_t in_flight_publishes() const { return in_flight_publishes_; }

  void OnFrame(net::Connection& conn, const wire::Frame& frame) override;
  void OnWritable(net::Connection& conn) override;
  void OnClosed(net::Connection& conn, const Status& reason) override;

 private:
  class Consumer;
  struct Session;
  struct PendingRequest {
    uint64_t conn_id;
    uint64_t request_id;
    int64_t deadline_us;
    std::chrono::steady_clock::time_point received;  // for request_seconds
    std::string topic;                                 // for the timeout's error message
  };

  // Into request_seconds: every request that ends here, answered, failed or timed out.
  void ObserveRequest(const PendingRequest& req);
  void OnHello(net::Connection& conn, Session& s, const wire::Hello& hello);
  void OnPublish(net::Connection& conn, Session& s, const wire::Publish& publish);
  void OnSubscribe(net::Connection& conn, Session& s, const wire::Subscribe& sub);
  void OnRequest(net::Connection& conn, Session& s, const wire::Request& request);
  void OnReply(net::Connection& conn, const wire::Reply& reply);
  void OnBundle(net::Connection& conn, Session& s, const wire::Bundle& bundle);
  // Sends a Reply frame with `env`/`error` to whoever waits on `reply_token`; false if nobody does.
  bool RouteReply(uint64_t reply_token, const wire::Envelope* env, std::string_view error);
  void DetachSession(Session& s, bool crashed);
  // Validates and publishes an envelope; `done` gets the backend's answer.
  void PublishEnvelope(const wire::Envelope& env, uint64_t reply_token, std::string_view source,
                       PublishCallback done);
  static std::string_view SourceName(const Session& s);
  void SendErrorTo(uint64_t conn_id, uint64_t request_id, const Status& status);
  static void OnRequestTimer(uv_timer_t* timer);

  uv_loop_t* loop_;
  Backend* backend_;
  const Clock& clock_;
  ServiceOptions options_;
  net::ConnectionSet conns_;
  std::unordered_map<uint64_t, std::unique_ptr<Session>> sessions_;  // by connection id
  std::unordered_map<uint64_t, PendingRequest> requests_;            // by reply token
  // Plugin connections whose worker exit status is not known yet (closed first) and exits not yet
  // matched to a close (exited first), by connection id.
  std::unordered_map<uint64_t, std::unique_ptr<Session>> closed_plugins_;
  std::unordered_map<uint64_t, bool> exited_plugins_;
  uint64_t next_reply_token_;
  uv_timer_t* request_timer_;
  ServiceStats stats_;
  Histogram publish_ack_seconds_{Histogram::LatencyBounds()};
  Histogram request_seconds_{Histogram::LatencyBounds()};  // Request arrival to its Reply sent
  Histogram bundle_seconds_{Histogram::LatencyBounds()};   // Bundle arrival to its BundleAck sent
  size_t in_flight_publishes_ = 0;
};

}  // namespace sluice::broker

// SPDX-License-Identifier: MIT
#include "broker/service.h"

#include <algorithm>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "broker/envelope.h"
#include "broker/fault_point.h"

namespace sluice::broker {
namespace {

constexpr uint64_t kRequestSweepMs = 50;
constexpr uint32_t kDefaultRequestTimeoutMs = 30000;
// Plugin keys are stored as keyspace + NUL + key under LMDB's 511-byte key limit.
constexpr size_t kMaxKeyBytes = 400;

}  // namespace

// One consumer of one subscription, attached to one connection.
class BrokerService::Consumer : public ConsumerSink {
 public:
  Consumer(std::weak_ptr<net::Connection> conn) : conn_(std::move(conn)) {}

  void Deliver(const Delivery& d) override {
    auto conn = conn_.lock();
    // The backend detaches this consumer when the connection closes; until then, drop nothing: a
    // delivery to a closing connection is returned on Detach like any other in-flight message.
    if (!conn || conn->closed()) return;
    fbb_.Clear();
    fbb_.ForceVectorAlignment(d.envelope.size(), 1, 8);
    auto env = fbb_.CreateVector(reinterpret_cast<const uint8_t*>(d.envelope.data()), d.envelope.size());
    auto del = wire::CreateDeliver(fbb_, d.consumer_id, d.delivery_id, d.delivery_count, env,
                                   d.reply_token);
    wire::FinishFrame(fbb_, wire::Body::Deliver, del.Union());
    conn->Send(fbb_);
  }

  uint64_t id = 0;

 private:
  std::weak_ptr<net::Connection> conn_;
  flatbuffers::FlatBufferBuilder fbb_{1024};
};

struct BrokerService::Session {
  bool hello_done = false;
  std::optional<PluginIdentity> plugin;
  std::string client_name;
  std::weak_ptr<net::Connection> conn;
  std::unordered_map<uint64_t, std::unique_ptr<Consumer>> consumers;  // by consumer id
  flatbuffers::FlatBufferBuilder fbb{256};
};

BrokerService::BrokerService(uv_loop_t* loop, Backend* backend, const Clock& clock,
                             ServiceOptions options)
    : loop_(loop),
      backend_(backend),
      clock_(clock),
      options_(std::move(options)),
      conns_(loop),
      // Tokens of this run never collide with tokens stored by an earlier run (a Request redelivered
      // after a restart has no requester any more and its Reply must not reach a new one).
      next_reply_token_(static_cast<uint64_t>(clock.NowUs()) << 8),
      request_timer_(new uv_timer_t) {
  fault::Init(fault::Process::kDaemon);
  uv_timer_init(loop_, request_timer_);
  request_timer_->data = this;
  uv_timer_start(request_timer_, OnRequestTimer, kRequestSweepMs, kRequestSweepMs);
  uv_unref(reinterpret_cast<uv_handle_t*>(request_timer_));
}

BrokerService::~BrokerService() {
  uv_timer_stop(request_timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(request_timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
}

void BrokerService::Accept(uv_pipe_t* client) {
  if (conns_.size() >= options_.max_connections) {
    auto conn = conns_.Add(client, options_.max_frame_bytes, this);
    sessions_.emplace(conn->id(), std::make_unique<Session>());
    conn->SendError(0, wire::ErrorCode::LimitExceeded,
                    fmt::format("too many connections (max_connections = {})", options_.max_connections),
                    /*fatal=*/true);
    return;
  }
  auto conn = conns_.Add(client, options_.max_frame_bytes, this);
  auto session = std::make_unique<Session>();
  session->conn = conn;
  sessions_.emplace(conn->id(), std::move(session));
  ++stats_.connections_total;
  stats_.connections = conns_.size();
}

uint64_t BrokerService::AttachPlugin(uv_pipe_t* pipe, PluginIdentity identity) {
  auto conn = conns_.Add(pipe, options_.max_frame_bytes, this);
  auto session = std::make_unique<Session>();
  session->conn = conn;
  session->plugin = std::move(identity);
  sessions_.emplace(conn->id(), std::move(session));
  ++stats_.connections_total;
  stats_.connections = conns_.size();
  return conn->id();
}

void BrokerService::PluginExited(uint64_t conn_id, bool crashed) {
  auto it = closed_plugins_.find(conn_id);
  if (it != closed_plugins_.end()) {
    DetachSession(*it->second, crashed);
    closed_plugins_.erase(it);
    return;
  }
  exited_plugins_[conn_id] = crashed;
  // Deliveries queued for the dead worker can never be read. What it sent before it died (a last
  // bundle, its Nacks) is still read, and its end-of-file closes the connection.
  if (auto conn = conns_.Find(conn_id)) conn->DropOutput();
}

void BrokerService::DetachSession(Session& s, bool crashed) {
  for (auto& [id, consumer] : s.consumers) backend_->Detach(id, crashed);
  s.consumers.clear();
}

void BrokerService::CloseAll() { conns_.CloseAll(Status::Ok()); }

void BrokerService::OnFrame(net::Connection& conn, const wire::Frame& frame) {
  ++stats_.frames_in;
  auto it = sessions_.find(conn.id());
  if (it == sessions_.end()) return;
  Session& s = *it->second;
  if (!s.hello_done) {
    if (frame.body_type() != wire::Body::Hello) {
      conn.SendError(0, wire::ErrorCode::HelloRequired,
                     fmt::format("expected Hello as the first frame, got {}",
                                 wire::BodyName(frame.body_type())),
                     /*fatal=*/true);
      return;
    }
    OnHello(conn, s, *frame.body_as_Hello());
    return;
  }
  switch (frame.body_type()) {
    case wire::Body::Publish:
      OnPublish(conn, s, *frame.body_as_Publish());
      break;
    case wire::Body::Subscribe:
      OnSubscribe(conn, s, *frame.body_as_Subscribe());
      break;
    case wire::Body::Ack: {
      const auto* ack = frame.body_as_Ack();
      if (!s.consumers.count(ack->consumer_id())) {
        conn.SendError(0, wire::ErrorCode::NotFound,
                       fmt::format("Ack for unknown consumer {}", ack->consumer_id()), false);
        break;
      }
      if (ack->delivery_ids()) {
        std::span<const uint64_t> ids(ack->delivery_ids()->data(), ack->delivery_ids()->size());
        Status st = backend_->Ack(ack->consumer_id(), ids);
        if (!st.ok()) conn.SendError(0, wire::ErrorCode::NotFound, st.message(), false);
      }
      break;
    }
    case wire::Body::Nack: {
      const auto* nack = frame.body_as_Nack();
      if (!s.consumers.count(nack->consumer_id())) {
        conn.SendError(0, wire::ErrorCode::NotFound,
                       fmt::format("Nack for unknown consumer {}", nack->consumer_id()), false);
        break;
      }
      NackOptions opts;
      opts.delay_us = nack->delay_ms() > 0 ? static_cast<int64_t>(nack->delay_ms()) * 1000 : -1;
      opts.reject = nack->reject();
      if (nack->error()) opts.error = nack->error()->str();
      Status st = backend_->Nack(nack->consumer_id(), nack->delivery_id(), opts);
      if (!st.ok()) conn.SendError(0, wire::ErrorCode::NotFound, st.message(), false);
      break;
    }
    case wire::Body::Credit: {
      const auto* credit = frame.body_as_Credit();
      if (!s.consumers.count(credit->consumer_id())) {
        conn.SendError(0, wire::ErrorCode::NotFound,
                       fmt::format("Credit for unknown consumer {}", credit->consumer_id()), false);
        break;
      }
      backend_->AddCredit(credit->consumer_id(), std::min(credit->credit(), options_.max_credit));
      break;
    }
    case wire::Body::Request:
      OnRequest(conn, s, *frame.body_as_Request());
      break;
    case wire::Body::Reply:
      OnReply(conn, *frame.body_as_Reply());
      break;
    case wire::Body::Bundle:
      OnBundle(conn, s, *frame.body_as_Bundle());
      break;
    case wire::Body::Hello:
      conn.SendError(0, wire::ErrorCode::Malformed, "Hello sent twice", /*fatal=*/true);
      break;
    default:
      conn.SendError(0, wire::ErrorCode::Malformed,
                     fmt::format("{} is not a frame a client may send on the broker socket",
                                 wire::BodyName(frame.body_type())),
                     /*fatal=*/true);
      break;
  }
}

void BrokerService::OnHello(net::Connection& conn, Session& s, const wire::Hello& hello) {
  Status st = wire::CheckClientHello(hello);
  if (!st.ok()) {
    conn.SendError(0, wire::ErrorCode::UnsupportedVersion, st.message(), /*fatal=*/true);
    return;
  }
  s.hello_done = true;
  if (hello.name()) s.client_name = hello.name()->str();
  s.fbb.Clear();
  wire::BuildServerHello(s.fbb, options_.max_frame_bytes, options_.server_version);
  conn.Send(s.fbb);
}

void BrokerService::PublishEnvelope(const wire::Envelope& env, uint64_t reply_token, std::string_view source,
                                    PublishCallback done) {
  if (!env.topic() || env.topic()->size() == 0) {
    done(InvalidArgument("envelope has no topic"));
    return;
  }
  size_t size = env.payload() ? env.payload()->size() : 0;
  if (size > options_.max_message_bytes) {
    done(InvalidArgument(fmt::format("payload of {} bytes exceeds max_message_bytes ({})", size,
                                     options_.max_message_bytes)));
    return;
  }
  PublishRequest req;
  req.topic = env.topic()->str();
  req.publish_time_us = clock_.NowUs();
  req.reply_token = reply_token;
  const wire::Uuid* id = env.id();
  if (id && (id->hi() != 0 || id->lo() != 0)) {
    req.id = Uuid{id->hi(), id->lo()};
    req.dedupe = true;
  } else {
    req.id = NewUuidV7(req.publish_time_us / 1000);
  }
  BuildStoredEnvelope(env, req.id, req.publish_time_us, source, &req.envelope);
  // The shutdown drain waits for publishes. Not for Requests: one handed straight to a consumer is
  // answered when that consumer settles it, and one that is not is stored by the backend's Close.
  const bool counted = reply_token == 0;
  if (counted) ++in_flight_publishes_;
  backend_->Publish(std::move(req), [this, counted, done = std::move(done)](Result<PublishResult> r) {
    if (counted) --in_flight_publishes_;
    done(std::move(r));
  });
}

namespace {

// A plugin may publish only to the topics its descriptor declared; Ok for any other client.
Status CheckPublishAllowed(const std::optional<PluginIdentity>& plugin, const wire::Envelope& env) {
  if (!plugin) return Status::Ok();
  std::string_view topic = env.topic() ? env.topic()->string_view() : std::string_view();
  if (std::find(plugin->publishes.begin(), plugin->publishes.end(), topic) != plugin->publishes.end()) {
    return Status::Ok();
  }
  return Status(StatusCode::kPermissionDenied,
                fmt::format("plugin '{}' may not publish to '{}' (declared: {})", plugin->name, topic,
                            plugin->publishes.empty() ? "none" : fmt::format("{}", fmt::join(plugin->publishes, ", "))));
}

}  // namespace

// The name a message's `source` records: the plugin's, or what the client said in Hello.
std::string_view BrokerService::SourceName(const Session& s) {
  return s.plugin ? std::string_view(s.plugin->name) : std::string_view(s.client_name);
}

void BrokerService::OnPublish(net::Connection& conn, Session& s, const wire::Publish& publish) {
  ++stats_.publishes;
  uint64_t conn_id = conn.id();
  uint64_t request_id = publish.request_id();
  Status allowed = CheckPublishAllowed(s.plugin, *publish.envelope());
  if (!allowed.ok()) {
    SendErrorTo(conn_id, request_id, allowed);
    return;
  }
  auto received = std::chrono::steady_clock::now();
  PublishEnvelope(*publish.envelope(), 0, SourceName(s),
                  [this, conn_id, request_id, received](Result<PublishResult> r) {
                    publish_ack_seconds_.Observe(
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - received).count());
                    if (!r.ok()) {
                      SendErrorTo(conn_id, request_id, r.status());
                      return;
                    }
                    auto c = conns_.Find(conn_id);
                    if (!c || c->closed()) return;
                    auto sit = sessions_.find(conn_id);
                    if (sit == sessions_.end()) return;
                    auto& fbb = sit->second->fbb;
                    fbb.Clear();
                    wire::Uuid id(r->id.hi, r->id.lo);
                    auto ack = wire::CreatePublishAck(fbb, request_id, r->seq, &id, r->duplicate);
                    wire::FinishFrame(fbb, wire::Body::PublishAck, ack.Union());
                    c->Send(fbb);
                  });
}

void BrokerService::OnSubscribe(net::Connection& conn, Session& s, const wire::Subscribe& sub) {
  SubscribeSpec spec;
  spec.sub.topic = sub.topic()->str();
  spec.sub.name = sub.subscription()->str();
  if (spec.sub.topic.empty() || spec.sub.name.empty()) {
    conn.SendError(sub.request_id(), wire::ErrorCode::InvalidArgument,
                   "Subscribe needs a topic and a subscription name", false);
    return;
  }
  switch (sub.start()) {
    case wire::StartKind::Earliest: spec.sub.start = StartPointKind::kEarliest; break;
    case wire::StartKind::Sequence: spec.sub.start = StartPointKind::kSequence; break;
    case wire::StartKind::Time: spec.sub.start = StartPointKind::kTime; break;
    default: spec.sub.start = StartPointKind::kLatest; break;
  }
  spec.sub.start_seq = sub.start_seq();
  spec.sub.start_time_us = sub.start_time_us();
  spec.sub.ordering = sub.ordering() == wire::Ordering::Key ? OrderingMode::kKey : OrderingMode::kNone;
  spec.sub.max_deliveries = sub.max_deliveries() > 0 ? sub.max_deliveries() : options_.default_max_deliveries;
  spec.sub.ack_wait = sub.ack_wait_ms() > 0 ? Duration(sub.ack_wait_ms()) : options_.default_ack_wait;
  if (sub.max_crashes() > 0) spec.sub.max_crashes = sub.max_crashes();
  spec.credit = std::min(sub.credit(), options_.max_credit);
  if (sub.types() != nullptr) {
    for (const auto* type : *sub.types()) spec.types.push_back(type != nullptr ? type->str() : std::string());
  }

  auto consumer = std::make_unique<Consumer>(s.conn);
  Consumer* sink = consumer.get();
  uint64_t conn_id = conn.id();
  uint64_t request_id = sub.request_id();
  // The consumer object must exist before the backend may deliver to it; it is keyed once the id is
  // known and freed if the subscription fails.
  auto pending = std::make_shared<std::unique_ptr<Consumer>>(std::move(consumer));
  backend_->Subscribe(spec, sink, [this, conn_id, request_id, pending](Result<uint64_t> r) {
    auto sit = sessions_.find(conn_id);
    if (!r.ok()) {
      SendErrorTo(conn_id, request_id, r.status());
      return;
    }
    if (sit == sessions_.end()) {
      // The connection closed while the subscription was being created.
      backend_->Detach(*r, /*crashed=*/false);
      return;
    }
    (*pending)->id = *r;
    sit->second->consumers.emplace(*r, std::move(*pending));
    auto c = conns_.Find(conn_id);
    if (!c) return;
    auto& fbb = sit->second->fbb;
    fbb.Clear();
    auto ok = wire::CreateSubscribeOk(fbb, request_id, *r);
    wire::FinishFrame(fbb, wire::Body::SubscribeOk, ok.Union());
    c->Send(fbb);
  });
}

void BrokerService::OnRequest(net::Connection& conn, Session& s, const wire::Request& request) {
  ++stats_.requests;
  uint64_t token = ++next_reply_token_;
  uint32_t timeout_ms = request.timeout_ms() > 0 ? request.timeout_ms() : kDefaultRequestTimeoutMs;
  const auto* topic = request.envelope()->topic();
  requests_[token] = {conn.id(), request.request_id(), clock_.NowUs() + static_cast<int64_t>(timeout_ms) * 1000,
                      std::chrono::steady_clock::now(), topic ? topic->str() : std::string()};
  uint64_t conn_id = conn.id();
  uint64_t request_id = request.request_id();
  PublishEnvelope(*request.envelope(), token, SourceName(s),
                  [this, conn_id, request_id, token](Result<PublishResult> r) {
                    // A request that was answered (or timed out) already gets nothing more: it can
                    // fail to be stored after its consumer replied and rejected it.
                    if (r.ok()) return;
                    auto it = requests_.find(token);
                    if (it == requests_.end()) return;
                    ObserveRequest(it->second);
                    requests_.erase(it);
                    SendErrorTo(conn_id, request_id, r.status());
                  });
}

void BrokerService::OnReply(net::Connection& /*conn*/, const wire::Reply& reply) {
  // Nobody waiting (timed out, gone, or a request from before a restart) is not an error.
  RouteReply(reply.reply_token(), reply.envelope(), reply.error() ? reply.error()->string_view() : "");
}

void BrokerService::ObserveRequest(const PendingRequest& req) {
  request_seconds_.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - req.received).count());
}

bool BrokerService::RouteReply(uint64_t reply_token, const wire::Envelope* env, std::string_view error) {
  auto it = requests_.find(reply_token);
  if (it == requests_.end()) return false;
  PendingRequest req = std::move(it->second);
  requests_.erase(it);
  ObserveRequest(req);
  auto target = conns_.Find(req.conn_id);
  if (!target || target->closed()) return false;
  auto sit = sessions_.find(req.conn_id);
  if (sit == sessions_.end()) return false;
  auto& fbb = sit->second->fbb;
  fbb.Clear();
  flatbuffers::Offset<wire::Envelope> out_env = env ? CopyEnvelope(fbb, *env) : 0;
  auto err = error.empty() ? 0 : fbb.CreateString(error.data(), error.size());
  auto out = wire::CreateReply(fbb, req.request_id, 0, out_env, err);
  wire::FinishFrame(fbb, wire::Body::Reply, out.Union());
  target->Send(fbb);
  return true;
}

void BrokerService::OnBundle(net::Connection& conn, Session& s, const wire::Bundle& bundle) {
  uint64_t conn_id = conn.id();
  uint64_t request_id = bundle.request_id();
  auto received = std::chrono::steady_clock::now();
  auto ack = [this, conn_id, request_id, received](wire::BundleStatus status, std::string_view message) {
    bundle_seconds_.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - received).count());
    switch (status) {
      case wire::BundleStatus::Committed: ++stats_.bundles_committed; break;
      case wire::BundleStatus::Conflict: ++stats_.bundles_conflict; break;
      case wire::BundleStatus::LeaseLost: ++stats_.bundles_lease_lost; break;
      default: ++stats_.bundles_refused; break;
    }
    auto c = conns_.Find(conn_id);
    auto sit = sessions_.find(conn_id);
    if (!c || c->closed() || sit == sessions_.end()) return;
    auto& fbb = sit->second->fbb;
    fbb.Clear();
    auto msg = message.empty() ? 0 : fbb.CreateString(message.data(), message.size());
    auto a = wire::CreateBundleAck(fbb, request_id, status, msg);
    wire::FinishFrame(fbb, wire::Body::BundleAck, a.Union());
    c->Send(fbb);
  };
  if (!s.plugin) {
    conn.SendError(request_id, wire::ErrorCode::PermissionDenied,
                   "Bundle is only accepted on a plugin worker's connection", false);
    return;
  }
  if (!s.consumers.count(bundle.consumer_id())) {
    ack(wire::BundleStatus::Refused, fmt::format("unknown consumer {}", bundle.consumer_id()));
    return;
  }
  if (bundle.version() == 0) {
    ack(wire::BundleStatus::Refused, "bundle version must be non-zero");
    return;
  }
  BundleRequest req;
  req.consumer_id = bundle.consumer_id();
  req.delivery_id = bundle.delivery_id();
  req.keyspace = s.plugin->name;
  req.version = bundle.version();
  auto bytes = [](const flatbuffers::Vector<uint8_t>* v) {
    return v ? std::string(reinterpret_cast<const char*>(v->data()), v->size()) : std::string();
  };
  if (bundle.reads()) {
    for (const auto* r : *bundle.reads()) req.reads.push_back({bytes(r->key()), r->version()});
  }
  if (bundle.writes()) {
    for (const auto* w : *bundle.writes()) {
      std::string key = bytes(w->key());
      if (key.empty() || key.size() > kMaxKeyBytes) {
        ack(wire::BundleStatus::Refused,
            fmt::format("keys must be 1..{} bytes, got {}", kMaxKeyBytes, key.size()));
        return;
      }
      req.writes.push_back({std::move(key), bytes(w->value()), w->delete_()});
    }
  }
  int64_t now = clock_.NowUs();
  if (bundle.publishes()) {
    for (const auto* env : *bundle.publishes()) {
      Status allowed = CheckPublishAllowed(s.plugin, *env);
      if (!allowed.ok()) {
        ack(wire::BundleStatus::Refused, allowed.message());
        return;
      }
      const wire::Uuid* id = env->id();
      if (!id || (id->hi() == 0 && id->lo() == 0)) {
        ack(wire::BundleStatus::Refused, "a bundle's publishes need ids (derived from the input's id)");
        return;
      }
      PublishRequest p;
      p.topic = env->topic()->str();
      p.id = Uuid{id->hi(), id->lo()};
      p.dedupe = true;
      p.publish_time_us = now;
      BuildStoredEnvelope(*env, p.id, now, s.plugin->name, &p.envelope);
      req.publishes.push_back(std::move(p));
    }
  }
  // The reply is routed only after the commit, so a requester never sees an answer that a crash
  // could take back.
  uint64_t reply_token = bundle.reply_token();
  std::shared_ptr<std::string> reply_env;
  if (bundle.reply()) {
    flatbuffers::FlatBufferBuilder rb(256);
    rb.Finish(CopyEnvelope(rb, *bundle.reply()));
    reply_env = std::make_shared<std::string>(reinterpret_cast<const char*>(rb.GetBufferPointer()), rb.GetSize());
  }
  std::string reply_error = bundle.reply_error() ? bundle.reply_error()->str() : "";
  ++in_flight_publishes_;
  backend_->CommitBundle(std::move(req), [this, ack, reply_token, reply_env, reply_error](Result<BundleResult> r) {
    --in_flight_publishes_;
    if (!r.ok()) {
      ack(wire::BundleStatus::Refused, r.status().message());
      return;
    }
    switch (r->outcome) {
      case BundleOutcome::kCommitted: {
        // Test-only (broker/fault_point.h): the bundle is in the store, the worker will never hear so.
        fault::Hit(fault::Point::kDaemonAfterCommit);
        if (reply_token != 0 && (reply_env || !reply_error.empty())) {
          const wire::Envelope* env = nullptr;
          if (reply_env) {
            // Heap storage is aligned for FlatBuffers; the buffer was built above, so it verifies.
            env = flatbuffers::GetRoot<wire::Envelope>(reply_env->data());
          }
          RouteReply(reply_token, env, reply_error);
        }
        ack(wire::BundleStatus::Committed, "");
        break;
      }
      case BundleOutcome::kConflict:
        ack(wire::BundleStatus::Conflict, r->message);
        break;
      default:
        ack(wire::BundleStatus::LeaseLost, r->message);
        break;
    }
  });
}

void BrokerService::SendErrorTo(uint64_t conn_id, uint64_t request_id, const Status& status) {
  auto c = conns_.Find(conn_id);
  if (!c || c->closed()) return;
  c->SendError(request_id, wire::ErrorCode(wire::ErrorCodeFor(status)), status.message(), false);
}

void BrokerService::OnRequestTimer(uv_timer_t* timer) {
  auto* self = static_cast<BrokerService*>(timer->data);
  int64_t now = self->clock_.NowUs();
  // Which topics some subscription reads: looked up once per sweep, and only when a request expired.
  std::optional<std::set<std::string>> read;
  for (auto it = self->requests_.begin(); it != self->requests_.end();) {
    if (it->second.deadline_us <= now) {
      if (!read) {
        read.emplace();
        if (auto topics = self->backend_->ListTopics(); topics.ok()) {
          for (const TopicInfo& t : *topics) {
            if (!t.subscriptions.empty()) read->insert(t.name);
          }
        }
      }
      // The common cause, said at once: the service that answers this topic was never started.
      std::string message =
          read->count(it->second.topic) > 0
              ? "no reply to the request within its timeout"
              : fmt::format("no reply to the request within its timeout: no subscription reads topic '{}'",
                            it->second.topic);
      self->ObserveRequest(it->second);
      self->SendErrorTo(it->second.conn_id, it->second.request_id, Status(StatusCode::kTimeout, message));
      it = self->requests_.erase(it);
    } else {
      ++it;
    }
  }
}

void BrokerService::OnWritable(net::Connection& /*conn*/) {}

void BrokerService::OnClosed(net::Connection& conn, const Status& reason) {
  if (!reason.ok() && reason.code() == StatusCode::kProtocol) ++stats_.protocol_errors;
  auto it = sessions_.find(conn.id());
  if (it != sessions_.end()) {
    if (it->second->plugin) {
      // Whether the worker crashed is known only from its exit status (PluginExited).
      auto exited = exited_plugins_.find(conn.id());
      if (exited != exited_plugins_.end()) {
        DetachSession(*it->second, exited->second);
        exited_plugins_.erase(exited);
      } else {
        closed_plugins_.emplace(conn.id(), std::move(it->second));
      }
    } else {
      DetachSession(*it->second, /*crashed=*/false);
    }
    sessions_.erase(it);
  }
  for (auto rit = requests_.begin(); rit != requests_.end();) {
    rit = rit->second.conn_id == conn.id() ? requests_.erase(rit) : std::next(rit);
  }
  stats_.connections = conns_.size() > 0 ? conns_.size() - 1 : 0;
}

}  // namespace sluice::broker

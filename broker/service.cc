// SPDX-License-Identifier: MIT
#include "broker/service.h"

#include <fmt/format.h>

#include "broker/envelope.h"

namespace sluice::broker {
namespace {

constexpr uint64_t kRequestSweepMs = 50;
constexpr uint32_t kDefaultRequestTimeoutMs = 30000;

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
      OnPublish(conn, *frame.body_as_Publish());
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
      OnRequest(conn, *frame.body_as_Request());
      break;
    case wire::Body::Reply:
      OnReply(conn, *frame.body_as_Reply());
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

void BrokerService::PublishEnvelope(const wire::Envelope& env, uint64_t reply_token,
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
  BuildStoredEnvelope(env, req.id, req.publish_time_us, &req.envelope);
  ++in_flight_publishes_;
  backend_->Publish(std::move(req), [this, done = std::move(done)](Result<PublishResult> r) {
    --in_flight_publishes_;
    done(std::move(r));
  });
}

void BrokerService::OnPublish(net::Connection& conn, const wire::Publish& publish) {
  ++stats_.publishes;
  uint64_t conn_id = conn.id();
  uint64_t request_id = publish.request_id();
  PublishEnvelope(*publish.envelope(), 0,
                  [this, conn_id, request_id](Result<PublishResult> r) {
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
  if (sub.max_deliveries() > 0) spec.sub.max_deliveries = sub.max_deliveries();
  if (sub.ack_wait_ms() > 0) spec.sub.ack_wait = Duration(sub.ack_wait_ms());
  spec.credit = std::min(sub.credit(), options_.max_credit);

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

void BrokerService::OnRequest(net::Connection& conn, const wire::Request& request) {
  ++stats_.requests;
  uint64_t token = ++next_reply_token_;
  uint32_t timeout_ms = request.timeout_ms() > 0 ? request.timeout_ms() : kDefaultRequestTimeoutMs;
  requests_[token] = {conn.id(), request.request_id(),
                      clock_.NowUs() + static_cast<int64_t>(timeout_ms) * 1000};
  uint64_t conn_id = conn.id();
  uint64_t request_id = request.request_id();
  PublishEnvelope(*request.envelope(), token,
                  [this, conn_id, request_id, token](Result<PublishResult> r) {
                    if (!r.ok()) {
                      requests_.erase(token);
                      SendErrorTo(conn_id, request_id, r.status());
                    }
                  });
}

void BrokerService::OnReply(net::Connection& conn, const wire::Reply& reply) {
  auto it = requests_.find(reply.reply_token());
  if (it == requests_.end()) {
    // The requester timed out or went away, or the request predates a restart: nothing to route to.
    return;
  }
  PendingRequest req = it->second;
  requests_.erase(it);
  auto target = conns_.Find(req.conn_id);
  if (!target || target->closed()) return;
  auto sit = sessions_.find(req.conn_id);
  if (sit == sessions_.end()) return;
  (void)conn;
  auto& fbb = sit->second->fbb;
  fbb.Clear();
  flatbuffers::Offset<wire::Envelope> env = reply.envelope() ? CopyEnvelope(fbb, *reply.envelope()) : 0;
  auto err = reply.error() ? fbb.CreateString(reply.error()->c_str(), reply.error()->size()) : 0;
  auto out = wire::CreateReply(fbb, req.request_id, 0, env, err);
  wire::FinishFrame(fbb, wire::Body::Reply, out.Union());
  target->Send(fbb);
}

void BrokerService::SendErrorTo(uint64_t conn_id, uint64_t request_id, const Status& status) {
  auto c = conns_.Find(conn_id);
  if (!c || c->closed()) return;
  c->SendError(request_id, wire::ErrorCode(wire::ErrorCodeFor(status)), status.message(), false);
}

void BrokerService::OnRequestTimer(uv_timer_t* timer) {
  auto* self = static_cast<BrokerService*>(timer->data);
  int64_t now = self->clock_.NowUs();
  for (auto it = self->requests_.begin(); it != self->requests_.end();) {
    if (it->second.deadline_us <= now) {
      self->SendErrorTo(it->second.conn_id, it->second.request_id,
                        Status(StatusCode::kTimeout, "no reply to the request within its timeout"));
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
    for (auto& [id, consumer] : it->second->consumers) backend_->Detach(id, /*crashed=*/false);
    sessions_.erase(it);
  }
  for (auto rit = requests_.begin(); rit != requests_.end();) {
    rit = rit->second.conn_id == conn.id() ? requests_.erase(rit) : std::next(rit);
  }
  stats_.connections = conns_.size() > 0 ? conns_.size() - 1 : 0;
}

}  // namespace sluice::broker

// SPDX-License-Identifier: MIT
#include "daemon/admin.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "broker/uuid.h"

namespace sluice {
namespace {

using nlohmann::json;

AdminResult Ok(json result) { return {AdminCode::kOk, "", std::move(result)}; }
AdminResult Failed(const Status& st) { return {AdminCode::kFailed, st.message(), json::object()}; }
AdminResult BadArgs(std::string message) { return {AdminCode::kBadArguments, std::move(message), json::object()}; }

// Reads a required string argument; empty when missing (the caller reports it).
std::string StringArg(const json& args, const char* name) {
  auto it = args.find(name);
  return it != args.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// The stored envelope as JSON for dead-letter peeks. The bytes come from storage unaligned: copy them
// to aligned memory and verify before reading.
json EnvelopeJson(std::string_view bytes) {
  std::vector<uint64_t> aligned((bytes.size() + 7) / 8);
  std::memcpy(aligned.data(), bytes.data(), bytes.size());
  const auto* data = reinterpret_cast<const uint8_t*>(aligned.data());
  flatbuffers::Verifier verifier(data, bytes.size());
  if (!verifier.VerifyBuffer<wire::Envelope>(nullptr)) return json{{"error", "stored envelope is corrupt"}};
  const auto* e = flatbuffers::GetRoot<wire::Envelope>(data);
  auto str = [](const flatbuffers::String* s) { return s ? s->str() : std::string(); };
  json headers = json::object();
  if (e->headers()) {
    for (const auto* h : *e->headers()) headers[str(h->name())] = str(h->value());
  }
  json j = {{"seq", e->seq()},
            {"topic", str(e->topic())},
            {"key", str(e->key())},
            {"type", str(e->type())},
            {"correlation_id", str(e->correlation_id())},
            {"causation_id", str(e->causation_id())},
            {"publish_time_us", e->publish_time_us()},
            {"headers", headers},
            {"payload_bytes", e->payload() ? e->payload()->size() : 0},
            {"source", str(e->source())}};
  if (e->id()) j["id"] = FormatUuid(Uuid{e->id()->hi(), e->id()->lo()});
  return j;
}

AdminResult CmdPing(AdminHost&, const json&) { return Ok({{"pong", true}}); }

AdminResult CmdStatus(AdminHost& host, const json&) { return Ok(host.StatusInfo()); }

AdminResult CmdTopics(AdminHost& host, const json&) {
  auto topics = host.backend().ListTopics();
  if (!topics.ok()) return Failed(topics.status());
  json out = json::array();
  for (const auto& t : *topics) {
    out.push_back({{"name", t.name},
                   {"messages", t.messages},
                   {"bytes", t.bytes},
                   {"first_seq", t.first_seq},
                   {"last_seq", t.last_seq},
                   {"published", t.published},
                   {"publish_rate", t.publish_rate},
                   {"subscriptions", t.subscriptions}});
  }
  return Ok({{"topics", out}});
}

AdminResult CmdSubs(AdminHost& host, const json&) {
  auto subs = host.backend().ListSubscriptions();
  if (!subs.ok()) return Failed(subs.status());
  json out = json::array();
  for (const auto& s : *subs) {
    out.push_back({{"topic", s.topic},
                   {"name", s.name},
                   {"pending", s.pending},
                   {"in_flight", s.in_flight},
                   {"dead_lettered", s.dead_lettered},
                   {"skipped", s.skipped},
                   {"parked_keys", s.parked_keys},
                   {"consumers", s.consumers},
                   {"delivered", s.delivered},
                   {"acked", s.acked},
                   {"redelivered", s.redelivered},
                   {"filtered", s.filtered},
                   {"types", s.types},
                   {"ack_rate", s.ack_rate},
                   {"oldest_unacked_age_us", s.oldest_unacked_age_us},
                   {"drain_eta_us", s.drain_eta_us}});
  }
  return Ok({{"subscriptions", out}});
}

// dlq.* commands name a subscription as {"topic": T, "subscription": S}.
bool SubArgs(const json& args, std::string* topic, std::string* sub, AdminResult* error) {
  *topic = StringArg(args, "topic");
  *sub = StringArg(args, "subscription");
  if (topic->empty() || sub->empty()) {
    *error = BadArgs("needs \"topic\" and \"subscription\"");
    return false;
  }
  return true;
}

AdminResult DeadLetters(AdminHost& host, const json& args, bool with_envelopes) {
  std::string topic, sub;
  AdminResult err;
  if (!SubArgs(args, &topic, &sub, &err)) return err;
  size_t limit = args.value("limit", static_cast<size_t>(100));
  auto dl = host.backend().ListDeadLetters(topic, sub, limit);
  if (!dl.ok()) return Failed(dl.status());
  json out = json::array();
  for (const auto& d : *dl) {
    json j = {{"seq", d.seq},
              {"delivery_count", d.delivery_count},
              {"reason", d.reason},
              {"last_error", d.last_error},
              {"dead_lettered_at_us", d.dead_lettered_at_us}};
    if (with_envelopes) j["envelope"] = EnvelopeJson(d.envelope);
    out.push_back(std::move(j));
  }
  return Ok({{"dead_letters", out}});
}

AdminResult CmdDlqList(AdminHost& host, const json& args) { return DeadLetters(host, args, false); }
AdminResult CmdDlqPeek(AdminHost& host, const json& args) { return DeadLetters(host, args, true); }

AdminResult CmdDlqRedrive(AdminHost& host, const json& args) {
  std::string topic, sub;
  AdminResult err;
  if (!SubArgs(args, &topic, &sub, &err)) return err;
  std::vector<uint64_t> seqs;
  if (auto it = args.find("seqs"); it != args.end()) {
    if (!it->is_array()) return BadArgs("\"seqs\" must be an array of sequence numbers");
    for (const auto& v : *it) {
      if (!v.is_number_unsigned()) return BadArgs("\"seqs\" must be an array of sequence numbers");
      seqs.push_back(v.get<uint64_t>());
    }
  }
  std::sort(seqs.begin(), seqs.end());
  seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());
  auto n = host.backend().Redrive(topic, sub, seqs);
  if (!n.ok()) return Failed(n.status());
  if (*n < seqs.size()) {
    // Like rm with a missing file: the others are done, and the command still fails.
    return Failed(NotFound(fmt::format("{} of the {} seqs given are not dead letters of {}/{} ({} redriven)",
                                       seqs.size() - *n, seqs.size(), topic, sub, *n)));
  }
  return Ok({{"redriven", *n}});
}

AdminResult CmdDlqPurge(AdminHost& host, const json& args) {
  std::string topic, sub;
  AdminResult err;
  if (!SubArgs(args, &topic, &sub, &err)) return err;
  auto n = host.backend().Purge(topic, sub);
  if (!n.ok()) return Failed(n.status());
  return Ok({{"purged", *n}});
}

AdminResult CmdParked(AdminHost& host, const json& args) {
  std::string topic, sub;
  AdminResult err;
  if (!SubArgs(args, &topic, &sub, &err)) return err;
  auto keys = host.backend().ListParkedKeys(topic, sub);
  if (!keys.ok()) return Failed(keys.status());
  json out = json::array();
  for (const auto& k : *keys) {
    out.push_back({{"key", k.key}, {"parked_at_seq", k.parked_at_seq}, {"backlog", k.backlog}});
  }
  return Ok({{"parked_keys", out}});
}

AdminResult CmdReload(AdminHost& host, const json&) {
  auto r = host.Reload();
  if (!r.ok()) return Failed(r.status());
  return Ok(*r);
}

AdminResult CmdPlugins(AdminHost& host, const json&) {
  auto r = host.Plugins();
  if (!r.ok()) return Failed(r.status());
  return Ok(*r);
}

AdminResult PluginAction(AdminHost& host, const json& args, std::string_view action) {
  std::string name = StringArg(args, "name");
  if (name.empty()) return BadArgs("needs \"name\": the plugin's name");
  Status st = host.PluginAction(action, name);
  if (st.code() == StatusCode::kNotFound || st.code() == StatusCode::kInvalidArgument) {
    return {AdminCode::kRefused, st.message(), json::object()};
  }
  if (!st.ok()) return Failed(st);
  return Ok({{"name", name}, {"action", action}});
}

AdminResult CmdPluginLoad(AdminHost& host, const json& args) { return PluginAction(host, args, "load"); }
AdminResult CmdPluginUnload(AdminHost& host, const json& args) { return PluginAction(host, args, "unload"); }
AdminResult CmdPluginRestart(AdminHost& host, const json& args) { return PluginAction(host, args, "restart"); }

json StoredJson(const broker::StoredMessage& m) {
  json j = EnvelopeJson(m.envelope);
  j["topic"] = m.topic;
  j["seq"] = m.seq;
  if (m.dead_lettered) {
    j["dead_lettered"] = true;
    j["subscription"] = m.subscription;
  }
  return j;
}

AdminResult CmdPeek(AdminHost& host, const json& args) {
  std::string topic = StringArg(args, "topic");
  if (topic.empty()) return BadArgs("needs \"topic\"");
  uint64_t from = args.value("from_seq", uint64_t{0});
  size_t limit = args.value("limit", size_t{10});
  auto msgs = host.backend().Peek(topic, from, limit);
  if (!msgs.ok()) return Failed(msgs.status());
  json out = json::array();
  for (const auto& m : *msgs) out.push_back(StoredJson(m));
  return Ok({{"messages", out}});
}

AdminResult CmdTrace(AdminHost& host, const json& args) {
  std::string id = StringArg(args, "correlation_id");
  if (id.empty()) return BadArgs("needs \"correlation_id\"");
  auto msgs = host.backend().Trace(id, args.value("limit", size_t{1000}));
  if (!msgs.ok()) return Failed(msgs.status());
  json out = json::array();
  for (const auto& m : *msgs) out.push_back(StoredJson(m));
  return Ok({{"correlation_id", id}, {"messages", out}});
}

AdminResult CmdMetrics(AdminHost& host, const json&) { return Ok({{"text", host.MetricsText()}}); }

AdminResult CmdCommands(AdminHost&, const json&) {
  json out = json::array();
  for (const auto& c : AdminCommands()) out.push_back({{"name", c.name}, {"summary", c.summary}});
  return Ok({{"commands", out}});
}

}  // namespace

const std::vector<AdminCommand>& AdminCommands() {
  static const std::vector<AdminCommand> kCommands = {
      {"ping", "check that the daemon answers", CmdPing},
      {"status", "version, uptime, sockets, data directory, connections", CmdStatus},
      {"topics", "topics with message counts, sizes and rates", CmdTopics},
      {"subs", "subscriptions with pending, in-flight, dead letters and drain estimate", CmdSubs},
      {"dlq.list", "dead letters of a subscription", CmdDlqList},
      {"dlq.peek", "dead letters with their envelopes", CmdDlqPeek},
      {"dlq.redrive", "move dead letters back to their subscription (all, or \"seqs\")", CmdDlqRedrive},
      {"dlq.purge", "delete the dead letters of a subscription", CmdDlqPurge},
      {"parked", "keys parked by a dead letter on a subscription with ordering = \"key\"", CmdParked},
      {"reload", "re-read the configuration (as SIGHUP)", CmdReload},
      {"plugins", "plugins with state, workers, restarts, in-flight and handled counts", CmdPlugins},
      {"plugin.load", "re-read the configuration and drop-ins and start plugin \"name\"", CmdPluginLoad},
      {"plugin.unload", "stop the workers of plugin \"name\" (its messages return to the subscription)",
       CmdPluginUnload},
      {"plugin.restart", "restart plugin \"name\", clearing a failed state", CmdPluginRestart},
      {"peek", "stored messages of a topic without consuming them (\"topic\", \"from_seq\", \"limit\")", CmdPeek},
      {"trace", "every stored message of one correlation id, in time order (\"correlation_id\")", CmdTrace},
      {"metrics", "every metric in the Prometheus text format (\"text\")", CmdMetrics},
      {"commands", "list the admin commands", CmdCommands},
  };
  return kCommands;
}

AdminServer::AdminServer(uv_loop_t* loop, AdminHost* host, size_t max_frame_bytes,
                         std::string admin_group, std::string server_version)
    : host_(host),
      max_frame_bytes_(max_frame_bytes),
      admin_group_(std::move(admin_group)),
      server_version_(std::move(server_version)),
      conns_(loop) {}

AdminServer::~AdminServer() = default;

bool AdminServer::Allowed(const net::PeerCredentials& peer) const {
  if (peer.uid == 0 || peer.uid == geteuid()) return true;
  if (admin_group_.empty()) return false;
  struct group* gr = getgrnam(admin_group_.c_str());
  if (gr == nullptr) return false;
  if (peer.gid == gr->gr_gid) return true;
  // Supplementary groups of the peer's user.
  struct passwd* pw = getpwuid(peer.uid);
  if (pw == nullptr) return false;
  int n = 64;
  std::vector<gid_t> groups(static_cast<size_t>(n));
  if (getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &n) < 0) {
    groups.resize(static_cast<size_t>(n));
    if (getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &n) < 0) return false;
  }
  for (int i = 0; i < n; ++i) {
    if (groups[static_cast<size_t>(i)] == gr->gr_gid) return true;
  }
  return false;
}

void AdminServer::Accept(uv_pipe_t* client) {
  auto conn = conns_.Add(client, max_frame_bytes_, this);
  if (!Allowed(conn->peer())) {
    conn->SendError(0, wire::ErrorCode::PermissionDenied,
                    fmt::format("uid {} may not use the admin socket (allowed: root, uid {}{})",
                                conn->peer().uid, geteuid(),
                                admin_group_.empty() ? "" : ", group " + admin_group_),
                    /*fatal=*/true);
    return;
  }
  hello_done_[conn->id()] = false;
}

void AdminServer::CloseAll() { conns_.CloseAll(Status::Ok()); }

void AdminServer::OnFrame(net::Connection& conn, const wire::Frame& frame) {
  auto it = hello_done_.find(conn.id());
  if (it == hello_done_.end()) return;
  flatbuffers::FlatBufferBuilder fbb(512);
  if (!it->second) {
    if (frame.body_type() != wire::Body::Hello) {
      conn.SendError(0, wire::ErrorCode::HelloRequired, "expected Hello as the first frame", true);
      return;
    }
    Status st = wire::CheckClientHello(*frame.body_as_Hello());
    if (!st.ok()) {
      conn.SendError(0, wire::ErrorCode::UnsupportedVersion, st.message(), true);
      return;
    }
    it->second = true;
    wire::BuildServerHello(fbb, max_frame_bytes_, server_version_);
    conn.Send(fbb);
    return;
  }
  if (frame.body_type() != wire::Body::AdminRequest) {
    conn.SendError(0, wire::ErrorCode::Malformed,
                   fmt::format("{} is not a frame a client may send on the admin socket",
                               wire::BodyName(frame.body_type())),
                   true);
    return;
  }
  const auto* req = frame.body_as_AdminRequest();
  AdminResult result;
  json args = json::object();
  if (req->args_json() && req->args_json()->size() > 0) {
    args = json::parse(req->args_json()->str(), nullptr, /*allow_exceptions=*/false);
  }
  std::string_view name = req->command()->string_view();
  const AdminCommand* cmd = nullptr;
  for (const auto& c : AdminCommands()) {
    if (c.name == name) cmd = &c;
  }
  if (args.is_discarded() || !args.is_object()) {
    result = BadArgs("args_json is not a JSON object");
  } else if (cmd == nullptr) {
    result = {AdminCode::kUnknownCommand, fmt::format("unknown command \"{}\"", name), json::object()};
  } else {
    result = cmd->run(*host_, args);
  }
  auto message = fbb.CreateString(result.message);
  // Envelope fields are client bytes and need not be UTF-8: replace, never throw.
  auto body = fbb.CreateString(result.result.dump(-1, ' ', false, json::error_handler_t::replace));
  auto resp = wire::CreateAdminResponse(fbb, req->request_id(), static_cast<int>(result.code), message, body);
  wire::FinishFrame(fbb, wire::Body::AdminResponse, resp.Union());
  conn.Send(fbb);
}

void AdminServer::OnClosed(net::Connection& conn, const Status& /*reason*/) { hello_done_.erase(conn.id()); }

}  // namespace sluice

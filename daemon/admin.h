// SPDX-License-Identifier: MIT
//
// The admin server: the daemon's second socket, for sluicectl. After the Hello handshake a client sends
// AdminRequest frames {command, args_json} and gets AdminResponse {code, message, result_json}. The
// commands live in one table (AdminCommands()), which sluicectl, sluicectl(1) and the tests are checked
// against. Result codes: 0 ok, 1 the operation failed, 2 bad arguments, 3 unknown command, 4 refused.
//
// Access: the peer's credentials (SO_PEERCRED) are checked on accept: root, the daemon's own user and
// members of `admin_group` may administer; anyone else gets a PermissionDenied error and is closed.
//
// Loop thread only.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "broker/backend.h"
#include "broker/net/connection.h"

namespace sluice {

enum class AdminCode { kOk = 0, kFailed = 1, kBadArguments = 2, kUnknownCommand = 3, kRefused = 4 };

// What the admin commands need from the daemon.
class AdminHost {
 public:
  virtual ~AdminHost() = default;
  // version, uptime, pid, sockets, data dir, connections, ...
  virtual nlohmann::json StatusInfo() = 0;
  virtual broker::Backend& backend() = 0;
  // Re-reads the configuration; the result lists what changed and what needs a restart.
  virtual Result<nlohmann::json> Reload() = 0;
  // The plugins and their workers (`sluicectl plugins`). A host without a supervisor has none.
  // Prometheus text (daemon/metrics.h).
  virtual std::string MetricsText() { return {}; }
  virtual Result<nlohmann::json> Plugins() { return nlohmann::json{{"plugins", nlohmann::json::array()}}; }
  // "load" (re-reads the configuration and its drop-ins, starts NAME), "unload" or "restart" NAME.
  virtual Status PluginAction(std::string_view action, std::string_view name) {
    (void)action;
    (void)name;
    return Unavailable("this daemon runs no plugins");
  }
};

struct AdminResult {
  AdminCode code = AdminCode::kOk;
  std::string message;
  nlohmann::json result = nlohmann::json::object();
};

struct AdminCommand {
  std::string_view name;
  std::string_view summary;
  AdminResult (*run)(AdminHost& host, const nlohmann::json& args);
};

const std::vector<AdminCommand>& AdminCommands();

class AdminServer : public net::FrameHandler {
 public:
  AdminServer(uv_loop_t* loop, AdminHost* host, size_t max_frame_bytes, std::string admin_group,
              std::string server_version);
  ~AdminServer() override;

  void Accept(uv_pipe_t* client);
  void CloseAll();
  size_t connection_count() const { return conns_.size(); }
  void set_admin_group(std::string group) { admin_group_ = std::move(group); }

  void OnFrame(net::Connection& conn, const wire::Frame& frame) override;
  void OnClosed(net::Connection& conn, const Status& reason) override;

 private:
  bool Allowed(const net::PeerCredentials& peer) const;

  AdminHost* host_;
  size_t max_frame_bytes_;
  std::string admin_group_;
  std::string server_version_;
  net::ConnectionSet conns_;
  std::unordered_map<uint64_t, bool> hello_done_;
};

}  // namespace sluice

// SPDX-License-Identifier: MIT
//
// Metrics in the Prometheus text exposition format (version 0.0.4): per topic and subscription
// counters and gauges, the publish-to-ack latency histogram, group-commit batch sizes and commit/sync
// latency, per-plugin counts, and the process's resident memory and open file descriptors. The series
// and their meaning are listed in sluicectl(1) under `metrics`.
//
// RenderMetrics runs on the loop thread (it reads the backend's and the supervisor's state).
// MetricsHttpServer serves the last rendered text from libmicrohttpd's own thread: the loop refreshes
// that text every second while the listener is on, so a scrape never touches loop state and sees
// values at most a second old.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "broker/backend.h"
#include "broker/service.h"
#include "broker/status.h"

struct MHD_Daemon;

namespace sluice {

struct MetricsSources {
  broker::Backend* backend = nullptr;
  const broker::BrokerService* service = nullptr;
  nlohmann::json plugins = nlohmann::json::array();  // the `plugins` admin command's list
};

std::string RenderMetrics(const MetricsSources& sources);

class MetricsHttpServer {
 public:
  // Listens on `listen` ("127.0.0.1:9464", "[::1]:9464"); the error names the key and the address.
  static Result<std::unique_ptr<MetricsHttpServer>> Start(const std::string& listen);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Replaces what GET /metrics answers. Any thread.
  void SetText(std::string text);
  std::string Text();
  uint16_t port() const { return port_; }

 private:
  MetricsHttpServer() = default;

  MHD_Daemon* daemon_ = nullptr;
  uint16_t port_ = 0;
  std::mutex mu_;
  std::string text_;
};

}  // namespace sluice
